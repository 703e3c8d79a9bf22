"""Load generation against a running gateway: timed calls and a fixed-rate (open-loop) driver.

Shared by the soak command and the reliability tests. Calls that fail are outcomes, not exceptions,
so a driver can count status codes and latencies however the gateway behaves.
"""

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np


@dataclass(frozen=True)
class Outcome:
    """One call: what kind it was, its status code name, when it started (monotonic s) and how long it took."""

    kind: str
    code: str
    started: float
    seconds: float
    degraded: tuple[str, ...] = ()

    @property
    def ended(self) -> float:
        return self.started + self.seconds


async def timed(kind: str, call: Awaitable[object]) -> Outcome:
    """Awaits a gRPC call and describes how it went."""
    started = time.monotonic()
    try:
        response = await call
    except grpc.aio.AioRpcError as error:
        return Outcome(kind, error.code().name, started, time.monotonic() - started)
    return Outcome(kind, "OK", started, time.monotonic() - started, tuple(getattr(response, "degraded", ())))


async def closed_loop(send: Callable[[], Awaitable[Outcome]], workers: int, seconds: float) -> list[Outcome]:
    """`workers` callers, each sending its next request as soon as the previous one is answered."""
    deadline = time.monotonic() + seconds

    async def worker() -> list[Outcome]:
        outcomes = []
        while time.monotonic() < deadline:
            outcomes.append(await send())
        return outcomes

    return [outcome for outcomes in await asyncio.gather(*(worker() for _ in range(workers)))
            for outcome in outcomes]


async def open_loop(send: Callable[[], Awaitable[Outcome]], rate: float, seconds: float,
                    max_outstanding: int = 256) -> list[Outcome]:
    """Starts requests at a fixed rate whatever the answers, as independent callers do.

    A request that would exceed max_outstanding is not sent and counts as CLIENT_BACKLOG, so an
    unresponsive server cannot make the driver itself grow without bound.
    """
    start = time.monotonic()
    tasks: set[asyncio.Task[Outcome]] = set()
    outcomes: list[Outcome] = []
    for number in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + number / rate - time.monotonic()))
        if len(tasks) >= max_outstanding:
            outcomes.append(Outcome("backlog", "CLIENT_BACKLOG", time.monotonic(), 0.0))
            continue
        task = asyncio.create_task(send())
        tasks.add(task)
        task.add_done_callback(lambda done: (tasks.discard(done), outcomes.append(done.result())))
    await asyncio.gather(*tasks)
    return outcomes


def percentiles(seconds: list[float], points: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
    """Latency percentiles in milliseconds, e.g. {"p50": 12.3, ...}; empty when there is nothing to measure."""
    if not seconds:
        return {}
    values = np.percentile(np.asarray(seconds) * 1000, points)
    return {f"p{point}": round(float(value), 1) for point, value in zip(points, values)}


def write_report_files(report: dict, markdown: list[str], report_dir: Path, name: str) -> Path:
    """Writes report_dir/<name>-<UTC time>.json (the report) and .md (the lines); returns the JSON path."""
    report_dir.mkdir(parents=True, exist_ok=True)
    stem = report_dir / f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text("\n".join(markdown) + "\n")
    return stem.with_suffix(".json")
