"""Load against a gateway or a Triton server: timed calls, closed-loop and fixed-rate drivers, latency summaries.

A call that fails is an outcome, not an exception, so a driver counts status codes and latencies however the
server behaves; only errors that are not the server's answer (a bug in the caller) propagate.
"""

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
import numpy as np
from tritonclient.utils import InferenceServerException

OK = "OK"


@dataclass(frozen=True)
class Outcome:
    """One call: its kind, status code name, start (monotonic seconds), duration, degraded stages, error text."""

    kind: str
    code: str
    started: float
    seconds: float
    degraded: tuple[str, ...] = ()
    detail: str = ""

    @property
    def ended(self) -> float:
        return self.started + self.seconds

    @property
    def ok(self) -> bool:
        return self.code == OK


# Sends request number n (n counts from 0 over the whole run) and describes how it went.
Send = Callable[[int], Awaitable[Outcome]]


async def timed(kind: str, call: Awaitable[object]) -> Outcome:
    """Awaits a gRPC call (of grpc.aio or tritonclient's aio client) and describes how it went."""
    started = time.monotonic()
    try:
        response = await call
    except grpc.aio.AioRpcError as error:
        return Outcome(kind, error.code().name, started, time.monotonic() - started, detail=error.details() or "")
    except InferenceServerException as error:
        code = (error.status() or "UNKNOWN").removeprefix("StatusCode.")
        return Outcome(kind, code, started, time.monotonic() - started, detail=error.message() or "")
    return Outcome(kind, OK, started, time.monotonic() - started, tuple(getattr(response, "degraded", ())))


async def closed_loop(send: Send, workers: int, seconds: float, stop: asyncio.Event | None = None
                      ) -> list[Outcome]:
    """`workers` callers, each sending its next request as soon as the last one is answered, at least once each,
    for `seconds` or until `stop` is set, whichever comes first."""
    numbers = itertools.count()
    deadline = time.monotonic() + seconds

    async def caller() -> list[Outcome]:
        outcomes = [await send(next(numbers))]
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            outcomes.append(await send(next(numbers)))
        return outcomes

    return [outcome for outcomes in await asyncio.gather(*(caller() for _ in range(workers)))
            for outcome in outcomes]


async def open_loop(send: Send, rate: float, seconds: float, max_outstanding: int = 256) -> list[Outcome]:
    """Starts requests at a fixed rate whatever the answers, as independent callers do: one outcome per slot.

    A request that would exceed max_outstanding is not sent and counts as CLIENT_BACKLOG, so an unresponsive
    server cannot make the driver itself grow without bound.
    """
    start = time.monotonic()
    tasks: set[asyncio.Task[Outcome]] = set()
    outcomes: list[Outcome] = []

    def finished(task: asyncio.Task[Outcome]) -> None:
        tasks.discard(task)
        outcomes.append(task.result())

    for number in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + number / rate - time.monotonic()))
        if len(tasks) >= max_outstanding:
            outcomes.append(Outcome("backlog", "CLIENT_BACKLOG", time.monotonic(), 0.0))
            continue
        task = asyncio.ensure_future(send(number))
        tasks.add(task)
        task.add_done_callback(finished)
    await asyncio.gather(*tasks)
    return outcomes


async def warm_up(send: Send, concurrency: int, rounds: int) -> None:
    """`rounds` times `concurrency` concurrent calls, whose outcome does not matter."""
    for round_ in range(rounds):
        await asyncio.gather(*(send(round_ * concurrency + index) for index in range(concurrency)))


@dataclass(frozen=True)
class Latency:
    """Percentiles of a set of latencies, in milliseconds, and how many were measured."""

    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    samples: int


def summarize(seconds: Sequence[float]) -> Latency:
    """The percentiles of latencies given in seconds; ValueError when there are none."""
    if not seconds:
        raise ValueError("no latency was measured")
    ms = np.asarray(seconds) * 1000
    p50, p95, p99 = np.percentile(ms, (50, 95, 99))
    return Latency(float(p50), float(p95), float(p99), float(ms.mean()), len(ms))


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p95 and p99 in milliseconds, rounded for a report; empty when nothing was measured."""
    if not seconds:
        return {}
    latency = summarize(seconds)
    return {"p50": round(latency.p50_ms, 1), "p95": round(latency.p95_ms, 1), "p99": round(latency.p99_ms, 1)}


@dataclass(frozen=True)
class LoadResult:
    """One closed-loop run: throughput and latency of the answered requests; `errors` failed, `first_error` how."""

    concurrency: int
    requests: int
    errors: int
    first_error: str
    duration_s: float
    throughput_per_s: float
    latency: Latency


async def measure(send: Send, concurrency: int, seconds: float) -> LoadResult:
    """A closed-loop run summarised; RuntimeError when no request was answered."""
    started = time.monotonic()
    outcomes = await closed_loop(send, concurrency, seconds)
    elapsed = time.monotonic() - started
    answered = [outcome.seconds for outcome in outcomes if outcome.ok]
    failed = [f"{outcome.code}: {' '.join(outcome.detail.split())}"[:300] for outcome in outcomes if not outcome.ok]
    if not answered:
        raise RuntimeError(f"no request was answered in {elapsed:.1f} s; first error: {failed[0]}")
    return LoadResult(concurrency, len(answered), len(failed), failed[0] if failed else "", elapsed,
                      len(answered) / elapsed, summarize(answered))
