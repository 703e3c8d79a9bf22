"""Waiting for a gateway's standard gRPC health status, or for any state a test or a run waits on."""

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
POLL_S = 0.05


async def wait_for_health(channel: grpc.aio.Channel, status: int = SERVING, timeout_s: float = 20.0,
                          process: "subprocess.Popen[bytes] | None" = None) -> float:
    """Polls the overall health over `channel` until it is `status`; returns the seconds it took.

    TimeoutError after `timeout_s`; RuntimeError at once if `process` (the server's, when it is a child) exits.
    """
    stub = health_pb2_grpc.HealthStub(channel)
    start = time.monotonic()
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before its health was "
                               f"{health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")
        try:
            current = (await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)).status
        except grpc.aio.AioRpcError:
            current = None
        if current == status:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"health was {current}, not {status}, after {timeout_s:g} s")
        await asyncio.sleep(POLL_S)


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout_s: float, what: str) -> float:
    """Polls `check` (a function, or a coroutine function) until it is true; returns the seconds that took.

    TimeoutError naming `what` after `timeout_s`. For waiting on a state the test cannot be told of, instead of
    sleeping for as long as it might take.
    """
    start = time.monotonic()
    while True:
        answer = check()
        if await answer if isinstance(answer, Awaitable) else answer:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{what} did not happen within {timeout_s:g} s")
        await asyncio.sleep(POLL_S)
