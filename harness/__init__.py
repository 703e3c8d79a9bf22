"""Shared by the tests, the benchmark, the evaluation and the operator commands: start a gateway (in this process
or as its own), wait for its health, and drive load at it."""
