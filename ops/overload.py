"""`make overload`: image queries offered at three times the measured capacity, then a report.

Starts the stack as `make soak` does (its own tritonserver and redis-server, a demo catalog) in a fresh
build/overload/ on free loopback ports. Measures the capacity of image queries with a closed loop of
MAX_CONCURRENT_IMAGES callers (after a warm-up: TorchScript specialises per batch size), then starts
requests at OVERLOAD times that rate whatever the answers. Writes reports/overload-<UTC time>.json
and .md; exits non-zero when a check fails: only OK and RESOURCE_EXHAUSTED answers, admitted p99
within twice the p99 at capacity, refusals within 100 ms, goodput at least 60 % of capacity.

The figures depend on the machine: run it on one that nothing else is using, or say what else ran.
"""

import argparse
import asyncio
import os
import sys
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path

import grpc
import numpy as np

from catalog_sources.fashion_mnist import load_split
from gateway.config import Settings
from gateway.images import encode_png
from harness.load import Outcome, Send, closed_loop, open_loop, percentiles, timed
from ops.reports import write_report_files
from ops.soak import running_stack
from recsys_api.v1 import recsys_pb2 as pb
from recsys_api.v1 import recsys_pb2_grpc as pb_grpc

DATA_DIR = Path("build/overload")
OVERLOAD = 3.0
REQUEST_TIMEOUT_S = 10.0
MIN_REQUESTS = 60


def image_queries(channel: grpc.aio.Channel, photos: list[bytes]) -> Send:
    """A function that sends image query n (the photos in turn) and returns its outcome."""
    stub = pb_grpc.RecommenderStub(channel)

    def send(number: int) -> Awaitable[Outcome]:
        return timed("image", stub.Recommend(pb.RecommendRequest(image=photos[number % len(photos)]),
                                             timeout=REQUEST_TIMEOUT_S))

    return send


def sample_photos(count: int = 50) -> list[bytes]:
    """The first Fashion-MNIST test images as PNG."""
    test = load_split("test")
    return [encode_png(test.images[index]) for index in range(count)]


async def measure_overload(send: Send, workers: int, factor: float = OVERLOAD,
                   warmup_s: float = 2.0, probe_s: float = 5.0) -> dict:
    """Measures capacity with `workers` closed-loop callers, offers `factor` times it; returns the report."""
    await closed_loop(send, workers=workers, seconds=warmup_s)
    at_capacity = await closed_loop(send, workers=workers, seconds=probe_s)
    capacity = sum(o.code == "OK" for o in at_capacity) / probe_s
    if not capacity:
        raise RuntimeError(f"no image query succeeded at capacity: {Counter(o.code for o in at_capacity)}")
    rate = factor * capacity
    seconds = max(5.0, MIN_REQUESTS / rate)
    offered = await open_loop(send, rate=rate, seconds=seconds)
    capacity_s = [o.seconds for o in at_capacity if o.code == "OK"]
    admitted = [o.seconds for o in offered if o.code == "OK"]
    refused = [o.seconds for o in offered if o.code == "RESOURCE_EXHAUSTED"]
    codes = dict(Counter(o.code for o in offered))
    budget_s = 2 * float(np.percentile(capacity_s, 99))
    return {
        "workers": workers, "capacity_rps": round(capacity, 1), "codes_at_capacity": dict(Counter(
            o.code for o in at_capacity)), "latency_ms_at_capacity": percentiles(capacity_s),
        "overload": factor, "offered_rps": round(rate, 1), "seconds": round(seconds, 1), "sent": len(offered),
        "codes": codes, "admitted_latency_ms": percentiles(admitted), "refused_latency_ms": percentiles(refused),
        "goodput_rps": round(len(admitted) / seconds, 1),
        "checks": {
            "only OK and RESOURCE_EXHAUSTED": set(codes) <= {"OK", "RESOURCE_EXHAUSTED"},
            "at least 30 % refused": len(refused) > 0.3 * len(offered),
            "admitted p99 within 2x the p99 at capacity": bool(admitted)
            and float(np.percentile(admitted, 99)) < budget_s,
            "refusals p99 < 100 ms": bool(refused) and float(np.percentile(refused, 99)) < 0.1,
            "goodput >= 60 % of capacity": len(admitted) / seconds >= 0.6 * capacity,
        },
    }


def markdown(report: dict) -> list[str]:
    return [f"# Overload: {report['overload']:g}x the measured capacity of image queries", "",
            f"capacity {report['capacity_rps']} img/s with {report['workers']} callers, latency "
            f"{report['latency_ms_at_capacity']} ms; offered {report['offered_rps']} req/s for "
            f"{report['seconds']} s: {report['sent']} sent, answers {report['codes']}; admitted "
            f"{report['admitted_latency_ms']} ms, refused {report['refused_latency_ms']} ms, goodput "
            f"{report['goodput_rps']} img/s; load average (1, 5, 15 min) {report.get('load_average')}", "",
            *(f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in report["checks"].items())]


async def run(catalog: int, data_dir: Path) -> dict:
    """The overload run over a fresh stack whose data goes to data_dir."""
    workers = Settings.from_env().max_concurrent_images
    load_at_start = os.getloadavg()
    async with running_stack(catalog, data_dir) as (_, target):
        async with grpc.aio.insecure_channel(target) as channel:
            report = await measure_overload(image_queries(channel, sample_photos()), workers)
    report["load_average"] = {"start": load_at_start, "end": os.getloadavg()}  # what else used the machine
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", type=int, default=200, help="demo catalog size")
    parser.add_argument("--report-dir", type=Path, default=Path("reports"))
    args = parser.parse_args()
    report = asyncio.run(run(args.catalog, DATA_DIR))
    path = write_report_files(report, markdown(report), args.report_dir, "overload")
    print(path.with_suffix(".md").read_text())
    sys.exit(0 if all(report["checks"].values()) else 1)


if __name__ == "__main__":
    main()
