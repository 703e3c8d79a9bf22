"""Python stubs of the recsys API, generated from protos/ by `make protos` (tools/protos.py); never edit them."""
