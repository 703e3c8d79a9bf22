"""The shared harness: load drivers, latency summaries, and waiting on health and on state."""

import asyncio
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.health import SERVING, eventually, wait_for_health
from harness.load import OK, Outcome, closed_loop, measure, open_loop, percentiles, summarize, timed
from stack.net import free_port


def answering(code: str = OK, seconds: float = 0.0):
    """A send function whose calls answer `code` after `seconds`, and the request numbers it was given."""
    numbers: list[int] = []

    async def send(number: int) -> Outcome:
        numbers.append(number)
        started = time.monotonic()
        await asyncio.sleep(seconds)
        return Outcome("test", code, started, time.monotonic() - started)

    return send, numbers


def test_percentiles_are_in_milliseconds() -> None:
    latency = summarize([0.001 * value for value in range(1, 101)])
    assert latency.p50_ms == pytest.approx(50.5) and latency.samples == 100
    assert latency.p99_ms == pytest.approx(99.01)
    assert percentiles([0.001 * value for value in range(1, 101)]) == {"p50": 50.5, "p95": 95.0, "p99": 99.0}
    assert percentiles([]) == {}
    with pytest.raises(ValueError, match="no latency"):
        summarize([])


async def test_a_closed_loop_numbers_every_request_and_stops_when_told() -> None:
    send, numbers = answering(seconds=0.001)
    stop = asyncio.Event()
    loop = asyncio.create_task(closed_loop(send, workers=3, seconds=600, stop=stop))
    await eventually(lambda: len(numbers) >= 30, 60, "thirty requests")
    stop.set()
    outcomes = await loop
    assert sorted(numbers) == list(range(len(numbers))) and len(outcomes) == len(numbers)


async def test_a_closed_loop_sends_at_least_once_per_worker_even_after_its_time() -> None:
    send, numbers = answering()
    assert len(await closed_loop(send, workers=4, seconds=0)) == 4 and sorted(numbers) == [0, 1, 2, 3]


async def test_an_open_loop_offers_one_slot_per_tick_whatever_the_answers() -> None:
    send, numbers = answering(seconds=0.05)
    outcomes = await open_loop(send, rate=100, seconds=0.5, max_outstanding=3)
    backlog = [o for o in outcomes if o.code == "CLIENT_BACKLOG"]
    assert len(outcomes) == 50, "one outcome per slot"
    assert backlog and len(numbers) + len(backlog) == 50, "past max_outstanding a slot is not sent"


async def test_a_measured_run_counts_failures_and_refuses_one_with_no_answer() -> None:
    send, _ = answering("UNAVAILABLE")
    with pytest.raises(RuntimeError, match="no request was answered"):
        await measure(send, concurrency=2, seconds=0.01)
    ok, _ = answering(seconds=0.001)
    result = await measure(ok, concurrency=2, seconds=0.05)
    assert result.errors == 0 and result.requests > 2 and result.throughput_per_s > 0


async def test_timed_turns_a_grpc_failure_into_its_status_code() -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as channel:
        outcome = await timed("health", health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                                                   timeout=5))
    assert outcome.code == "UNAVAILABLE" and not outcome.ok and outcome.detail


async def test_eventually_reports_what_did_not_happen() -> None:
    assert await eventually(lambda: True, 1, "nothing") >= 0
    with pytest.raises(TimeoutError, match="the impossible did not happen"):
        await eventually(lambda: False, 0.1, "the impossible")


async def test_waiting_for_health_fails_at_once_when_the_server_process_exits() -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as channel:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="exited with status 3"):
            await wait_for_health(channel, SERVING, timeout_s=600, process=process)
    assert time.monotonic() - started < 600
