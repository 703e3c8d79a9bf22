"""Latency summaries and a closed-loop load generator shared by every layer of the benchmark."""

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Latency:
    """Percentiles of a set of latencies, in milliseconds, and how many were measured."""

    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    samples: int


def summarize(seconds: Sequence[float]) -> Latency:
    """The percentiles of latencies given in seconds."""
    if not seconds:
        raise ValueError("no latency was measured")
    ms = np.asarray(seconds) * 1000
    p50, p95, p99 = np.percentile(ms, (50, 95, 99))
    return Latency(float(p50), float(p95), float(p99), float(ms.mean()), len(ms))


@dataclass(frozen=True)
class LoadResult:
    """One closed-loop run: `concurrency` callers, each sending its next request when the last answered.

    Throughput and latency count answered requests only; `errors` failed (e.g. past their deadline on an
    overloaded machine), and `first_error` says how.
    """

    concurrency: int
    requests: int
    errors: int
    first_error: str
    duration_s: float
    throughput_per_s: float
    latency: Latency


async def warm_up(call: Callable[[int], Awaitable[object]], concurrency: int, rounds: int) -> None:
    """`rounds` times `concurrency` concurrent calls, whose outcome does not matter."""
    for round_ in range(rounds):
        await asyncio.gather(*(call(round_ * concurrency + index) for index in range(concurrency)),
                             return_exceptions=True)


async def closed_loop(call: Callable[[int], Awaitable[object]], concurrency: int, duration_s: float,
                      failures: tuple[type[Exception], ...] = ()) -> LoadResult:
    """Runs `call(i)` from `concurrency` callers for `duration_s` seconds, and at least once per caller.

    Exceptions of the `failures` types are counted as errors; RuntimeError if no request was answered.
    """
    counter = itertools.count()
    latencies: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    deadline = started + duration_s

    async def caller() -> None:
        while True:
            sent = time.perf_counter()
            try:
                await call(next(counter))
                latencies.append(time.perf_counter() - sent)
            except failures as error:
                errors.append(" ".join(f"{type(error).__name__}: {error}".split())[:300])
            if time.perf_counter() >= deadline:
                return

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    if not latencies:
        raise RuntimeError(f"no request was answered in {elapsed:.1f} s; first error: {errors[0]}")
    return LoadResult(concurrency, len(latencies), len(errors), errors[0] if errors else "", elapsed,
                      len(latencies) / elapsed, summarize(latencies))
