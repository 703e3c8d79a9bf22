"""`make soak`: the whole stack at about 70 % of its measured capacity for a long time, then a report.

Starts `python -m stack.run` (its own tritonserver and redis-server, `python -m gateway` with the embedded Qdrant
engine, a demo catalog of SOAK_CATALOG images) in a fresh build/soak/ on free loopback ports. Fills every user's
history to its cap, measures capacity with a closed loop of the request mix, then offers `--fraction` of
it at a fixed rate: first for a warm-up (the model's first batches are slow to specialise; not counted),
then for SOAK_SECONDS (default 1800), sampling the resident memory and open file descriptors of the
gateway, tritonserver and redis-server every few seconds. Stops the stack and writes
reports/soak-<UTC time>.json and .md. It exits non-zero when a request failed, or when the gateway's
memory or descriptors grew past the bounds below after warm-up.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from pathlib import Path

import grpc
import numpy as np

from catalog_sources.fashion_mnist import load_split
from gateway.history import DEFAULT_MAX_VIEWS
from gateway.images import encode_png
from harness.gateway import spawned
from harness.load import Outcome, Send, closed_loop, open_loop, percentiles, timed
from ops.reports import write_report_files
from recsys_api.v1 import recsys_pb2 as pb
from recsys_api.v1 import recsys_pb2_grpc as pb_grpc
from stack.net import free_port

DATA_DIR = Path("build/soak")  # the stack's data and log (stack.log), kept for a look after the run
MAX_RSS_GROWTH_MIB = 64.0
MAX_FD_GROWTH = 8
SAMPLE_EVERY_S = 5.0
USERS = 100
REQUEST_TIMEOUT_S = 5.0
# The request mix, kind -> share: personalised image queries, neighbours of a product, queries from
# the user's history alone, recorded views, and a user's history listed.
MIX = {"image": 0.45, "product": 0.2, "history": 0.1, "view": 0.2, "list": 0.05}


@dataclasses.dataclass(frozen=True)
class Options:
    seconds: float
    fraction: float = 0.7
    catalog: int = 1000
    probe_seconds: float = 20.0
    history_views: int = DEFAULT_MAX_VIEWS  # views per user before the probe: the cap, as after a long run
    warmup_seconds: float = 30.0
    windows: int = 10
    report_dir: Path = Path("reports")
    env: tuple[tuple[str, str], ...] = ()  # settings for the stack, e.g. (("HISTORY_TIMEOUT_SECONDS", "2"),)


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def _tree(pid: int) -> list[int]:
    return [pid, *(descendant for child in _children(pid) for descendant in _tree(child))]


def process_sample(stack_pid: int) -> dict[str, dict[str, float]]:
    """Resident MiB and open descriptors of the stack's gateway, tritonserver and redis-server, each with its
    children (Triton's python-backend stubs)."""
    groups: dict[str, list[int]] = {"gateway": [], "triton": [], "redis": []}
    for child in _children(stack_pid):
        try:
            name = Path(f"/proc/{child}/comm").read_text().strip()
            tree = _tree(child)
        except FileNotFoundError:
            continue
        groups["redis" if name.startswith("redis") else "triton" if name.startswith("triton") else "gateway"] += tree
    sample = {}
    for group, pids in groups.items():
        rss = fds = 0.0
        for pid in pids:
            try:
                rss += _status_kib(pid, "VmRSS") / 1024
                fds += len(os.listdir(f"/proc/{pid}/fd"))
            except FileNotFoundError:
                pass
        sample[group] = {"rss_mib": round(rss, 1), "fds": fds}
    return sample


def stack_environment(catalog: int, data_dir: Path, port: int, settings: Mapping[str, str] | None = None
                      ) -> dict[str, str]:
    """The environment of a fresh stack on free loopback ports over `data_dir` with a demo catalog of `catalog`
    images, plaintext and open, and with the extra `settings`."""
    env = dict(os.environ, GRPC_ADDRESS=f"127.0.0.1:{port}", METRICS_PORT=str(free_port()), DATA_DIR=str(data_dir),
               DEMO_CATALOG_SIZE=str(catalog), WEBUI_PORT="0")
    for name in ("TRITON_URL", "REDIS_URL", "QDRANT_URL", "AUTH_TOKENS", "AUTH_TOKENS_FILE", "TLS_CERT_FILE",
                 "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE"):
        env.pop(name, None)
    return {**env, **(settings or {})}


@contextlib.asynccontextmanager
async def running_stack(catalog: int, data_dir: Path, settings: Mapping[str, str] | None = None
                        ) -> AsyncIterator[tuple["subprocess.Popen[bytes]", str]]:
    """`python -m stack.run` serving on a free port over data_dir (emptied first), with extra environment
    `settings`, until the block exits; its output goes to data_dir/stack.log."""
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    port = free_port()
    target = f"127.0.0.1:{port}"
    environment = stack_environment(catalog, data_dir, port, settings)
    async with spawned([sys.executable, "-m", "stack.run"], target, environment, data_dir / "stack.log") as process:
        yield process, target


def request_mix(channel: grpc.aio.Channel, catalog: int, seed: int = 0) -> Send:
    """A function that sends the next request of the mix and returns its outcome."""
    stub = pb_grpc.RecommenderStub(channel)
    test, train = load_split("test"), load_split("train")
    photos = [encode_png(test.images[index]) for index in range(200)]
    products = [train.product_id(index) for index in range(catalog)]
    rng = random.Random(seed)
    kinds, weights = list(MIX), list(MIX.values())

    def send(number: int) -> Awaitable[Outcome]:
        kind = rng.choices(kinds, weights)[0]
        user = f"soak-user-{rng.randrange(USERS)}"
        if kind == "image":
            call = stub.Recommend(pb.RecommendRequest(image=rng.choice(photos), user_id=user),
                                  timeout=REQUEST_TIMEOUT_S)
        elif kind == "product":
            call = stub.Recommend(pb.RecommendRequest(product_id=rng.choice(products)), timeout=REQUEST_TIMEOUT_S)
        elif kind == "history":
            call = stub.Recommend(pb.RecommendRequest(user_id=user), timeout=REQUEST_TIMEOUT_S)
        elif kind == "view":
            call = stub.RecordView(pb.RecordViewRequest(user_id=user, product_id=rng.choice(products)),
                                   timeout=REQUEST_TIMEOUT_S)
        else:
            call = stub.GetHistory(pb.GetHistoryRequest(user_id=user), timeout=REQUEST_TIMEOUT_S)
        return timed(kind, call)

    return send


def summarise(outcomes: list[Outcome], samples: list[tuple[float, dict]], start: float, options: Options,
              capacity: float, rate: float) -> dict:
    """The report: totals, per-window latency and errors, resource growth since the start, checks."""
    window_s = options.seconds / options.windows
    windows = []
    for number in range(options.windows):
        low, high = start + number * window_s, start + (number + 1) * window_s
        inside = [o for o in outcomes if low <= o.started < high]
        at_end = [sample for at, sample in samples if at <= high][-1]
        windows.append({"window": number + 1, "requests": len(inside),
                        "errors": sum(o.code != "OK" for o in inside),
                        "latency_ms": percentiles([o.seconds for o in inside]),
                        "gateway_rss_mib": at_end["gateway"]["rss_mib"], "gateway_fds": at_end["gateway"]["fds"]})
    warm, last = samples[0][1], samples[-1][1]
    growth = {group: {"rss_mib": round(last[group]["rss_mib"] - warm[group]["rss_mib"], 1),
                      "fds": last[group]["fds"] - warm[group]["fds"]} for group in last}
    hours = np.array([at - start for at, _ in samples]) / 3600
    rss = np.array([sample["gateway"]["rss_mib"] for _, sample in samples])
    slope = float(np.polyfit(hours, rss, 1)[0]) if len(samples) > 2 else 0.0
    errors: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.code != "OK":
            errors[outcome.code] = errors.get(outcome.code, 0) + 1
    first_p99, last_p99 = windows[0]["latency_ms"].get("p99", 0), windows[-1]["latency_ms"].get("p99", 0)
    return {
        "seconds": options.seconds, "capacity_rps": round(capacity, 1), "offered_rps": round(rate, 1),
        "fraction": options.fraction, "mix": MIX, "catalog": options.catalog,
        # One outcome per slot of the fixed rate: offered counts slots, succeeded the requests answered OK.
        "offered": len(outcomes), "succeeded": sum(o.ok for o in outcomes),
        "errors": errors, "latency_ms": percentiles([o.seconds for o in outcomes]),
        "latency_ms_by_kind": {kind: percentiles([o.seconds for o in outcomes if o.kind == kind]) for kind in MIX},
        "degraded": sum(bool(o.degraded) for o in outcomes), "windows": windows,
        "resources_after_warmup": warm, "resources_at_end": last, "growth_after_warmup": growth,
        "gateway_rss_slope_mib_per_hour": round(slope, 1),
        "checks": {
            "no errors": not errors,
            f"gateway memory grew < {MAX_RSS_GROWTH_MIB:g} MiB": growth["gateway"]["rss_mib"] < MAX_RSS_GROWTH_MIB,
            f"gateway descriptors grew <= {MAX_FD_GROWTH}": growth["gateway"]["fds"] <= MAX_FD_GROWTH,
            "last window p99 <= 2x first window p99 + 50 ms": last_p99 <= 2 * first_p99 + 50,
        },
    }


async def fill_histories(stub: pb_grpc.RecommenderStub, catalog: int, views: int, callers: int = 4) -> None:
    """Records `views` views for every user before capacity is measured, so the probe pays for full
    histories as the soak will once its views have accumulated (a probe over near-empty histories measured
    a capacity that the soak could not hold). A few callers at a time stay under MAX_CONCURRENT_REQUESTS."""
    train, rng = load_split("train"), random.Random(1)
    pending = [pb.RecordViewRequest(user_id=f"soak-user-{user}", product_id=train.product_id(rng.randrange(catalog)))
               for _ in range(views) for user in range(USERS)]

    async def caller() -> None:
        while pending:
            await stub.RecordView(pending.pop(), timeout=30)

    await asyncio.gather(*(caller() for _ in range(callers)))


async def soak(options: Options, data_dir: Path) -> dict:
    """Runs the soak over a stack whose data goes to data_dir (emptied first); returns the report."""
    load_at_start = os.getloadavg()
    async with running_stack(options.catalog, data_dir, dict(options.env)) as (process, target):
        async with grpc.aio.insecure_channel(target) as channel:
            await fill_histories(pb_grpc.RecommenderStub(channel), options.catalog, options.history_views)
            send = request_mix(channel, options.catalog)
            probe = await closed_loop(send, workers=8, seconds=options.probe_seconds)
            capacity = sum(o.code == "OK" for o in probe) / options.probe_seconds
            rate = options.fraction * capacity
            warmup = await open_loop(send, rate=rate, seconds=options.warmup_seconds)
            samples: list[tuple[float, dict]] = []

            async def sample_resources() -> None:
                while True:
                    samples.append((time.monotonic(), process_sample(process.pid)))
                    await asyncio.sleep(SAMPLE_EVERY_S)

            start = time.monotonic()
            sampler = asyncio.create_task(sample_resources())
            outcomes = await open_loop(send, rate=rate, seconds=options.seconds)
            sampler.cancel()
            samples.append((time.monotonic(), process_sample(process.pid)))
    report = summarise(outcomes, samples, start, options, capacity, rate)
    report["stack_settings"] = dict(options.env)
    report["load_average"] = {"start": load_at_start, "end": os.getloadavg()}  # what else used the machine
    report["warmup"] = {"seconds": options.warmup_seconds, "requests": len(warmup),
                        "errors": sum(o.code != "OK" for o in warmup)}
    return report


def write_report(report: dict, report_dir: Path) -> Path:
    """Writes the report as JSON and as a short Markdown table; returns the JSON path."""
    lines = [f"# Soak: {report['seconds']:.0f} s at {report['offered_rps']} req/s "
             f"({report['fraction']:.0%} of {report['capacity_rps']} req/s measured)", "",
             f"{report['offered']} requests offered, {report['succeeded']} succeeded, errors "
             f"{report['errors'] or 'none'}, latency {report['latency_ms']} ms; "
             f"gateway memory growth after warm-up {report['growth_after_warmup']['gateway']['rss_mib']} MiB "
             f"({report['gateway_rss_slope_mib_per_hour']} MiB/h), descriptors "
             f"{report['growth_after_warmup']['gateway']['fds']:+g}; load average (1, 5, 15 min) "
             f"{report.get('load_average')}", "",
             "| window | requests | errors | p50 ms | p95 ms | p99 ms | gateway RSS MiB | gateway fds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {w['window']} | {w['requests']} | {w['errors']} | {w['latency_ms'].get('p50', '')} | "
              f"{w['latency_ms'].get('p95', '')} | {w['latency_ms'].get('p99', '')} | {w['gateway_rss_mib']} | "
              f"{w['gateway_fds']:g} |" for w in report["windows"]]
    lines += ["", *(f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in report["checks"].items())]
    return write_report_files(report, lines, report_dir, "soak")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "1800")))
    parser.add_argument("--fraction", type=float, default=0.7, help="share of the measured capacity to offer")
    parser.add_argument("--catalog", type=int, default=int(os.environ.get("SOAK_CATALOG", "1000")))
    parser.add_argument("--probe-seconds", type=float, default=20.0, help="capacity measurement")
    parser.add_argument("--history-views", type=int, default=Options.history_views,
                        help="views per user before the probe")
    parser.add_argument("--warmup-seconds", type=float, default=30.0, help="at the soak's rate, not counted")
    parser.add_argument("--report-dir", type=Path, default=Path("reports"))
    args = parser.parse_args()
    options = Options(args.seconds, args.fraction, args.catalog, probe_seconds=args.probe_seconds,
                      history_views=args.history_views, warmup_seconds=args.warmup_seconds,
                      report_dir=args.report_dir)
    report = asyncio.run(soak(options, DATA_DIR))
    path = write_report(report, options.report_dir)
    print(path.with_suffix(".md").read_text())
    sys.exit(0 if all(report["checks"].values()) else 1)


if __name__ == "__main__":
    main()
