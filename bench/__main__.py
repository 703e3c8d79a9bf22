"""`python -m bench` (`make bench`): every layer of the serving path, one run, the same images.

1. the TorchScript model in-process, per batch size, against a matmul ceiling;
2. Triton alone and 3. the gateway end to end, alternating at the same concurrency (at concurrency 1 also a bare
   health check of the gateway);
4. vector search on the embedded Qdrant engine (100 k points by default, `--points 1000000` for 1 M);
5. the history fetch from Redis and bulk ingestion;
6. the gateway's CPU per request by stage (py-spy), history on and off, for this code, the commit `--baseline`
   names, and this code without search batching across requests and with photos decoded in Triton;
and, with `--triton-variants 1x2,2x1`, Triton alone under other instance x thread counts.

Writes `bench.json` and `bench.md` (and the gateway's collapsed stacks) into `--out` (default `reports/`).
`--smoke` runs everything at tiny sizes in about a minute, to check that the benchmark works.
"""

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

from bench import efficiency, model, profiling, report, serving, storage, variants, vectors
from bench.processes import child_pid, place, placements
from bench.workload import ImageSet, as_photos, load_images
from gateway.composition import Components
from gateway.config import Settings
from gateway.domain import ModelInfo
from model_export.triton_config import ALLOCATOR_ENV, IMAGE_SIZE
from stack.redis import RedisServer
from stack.triton import TritonServer

log = logging.getLogger("bench")

FULL = {"images": 64, "batch_sizes": "1,4,8,16,32", "rounds": 3, "duration": 10.0, "concurrency": 8,
        "points": 100_000, "queries": 200, "exact_queries": 20, "history_fetches": 2000, "ingest_images": 128,
        "profile_seconds": 10, "users": 32, "efficiency_rounds": 2}
SMOKE = {"images": 8, "batch_sizes": "1,4", "rounds": 1, "duration": 1.0, "concurrency": 2, "points": 300,
         "queries": 10, "exact_queries": 5, "history_fetches": 50, "ingest_images": 32, "profile_seconds": 2,
         "users": 2, "efficiency_rounds": 1}
VIEWS_PER_USER = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("reports"), help="folder of the reports")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model-version", default="",
                        help="the exported model version every layer measures (default: the latest, as served)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the benchmark runs")
    sizes = parser.add_argument_group("sizes (defaults: the full run, or the smoke run with --smoke)")
    sizes.add_argument("--images", type=int, help=f"Fashion-MNIST test images every layer uses ({FULL['images']})")
    sizes.add_argument("--batch-sizes", help=f"in-process batch sizes ({FULL['batch_sizes']})")
    sizes.add_argument("--rounds", type=int, help=f"passes per batch size, and serving rounds ({FULL['rounds']})")
    sizes.add_argument("--duration", type=float, help=f"seconds per load run ({FULL['duration']:g})")
    sizes.add_argument("--concurrency", type=int, help=f"callers at saturation; low load is 1 ({FULL['concurrency']})")
    sizes.add_argument("--points", type=int, help=f"catalog vectors for the search layer ({FULL['points']:,})")
    sizes.add_argument("--queries", type=int, help=f"search queries ({FULL['queries']})")
    sizes.add_argument("--exact-queries", type=int, help=f"exact search queries ({FULL['exact_queries']})")
    sizes.add_argument("--history-fetches", type=int, help=f"history reads ({FULL['history_fetches']})")
    sizes.add_argument("--ingest-images", type=int, help=f"images ingested ({FULL['ingest_images']})")
    sizes.add_argument("--profile-seconds", type=int,
                       help=f"each py-spy run, and load run of layer 6 ({FULL['profile_seconds']})")
    sizes.add_argument("--efficiency-rounds", type=int, help=f"rounds of layer 6 ({FULL['efficiency_rounds']})")
    sizes.add_argument("--users", type=int, help=f"shoppers with recorded views ({FULL['users']})")
    parser.add_argument("--baseline", default="", metavar="REF",
                        help="also measure the gateway of this git commit in layer 6, e.g. HEAD~1")
    parser.add_argument("--triton-variants", default="",
                        help="also measure Triton alone with these instances x threads, e.g. 1x2,2x1,1x1")
    args = parser.parse_args(argv)
    for name, default in (SMOKE if args.smoke else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.batch_sizes = tuple(int(size) for size in str(args.batch_sizes).split(","))
    args.triton_variants = [variants.Variant.parse(text) for text in args.triton_variants.split(",") if text]
    return args


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


async def _serving(args: argparse.Namespace, triton: TritonServer, redis_url: str, info: ModelInfo, images: ImageSet,
                   work: Path, roles: dict[int, str]) -> list[serving.Comparison]:
    """Layers 2 and 3 in alternating rounds under each core placement (at concurrency 1 also a bare health check
    of the gateway)."""
    concurrencies = sorted({1, args.concurrency})
    triton_pid = next(pid for pid, role in roles.items() if role == "Triton")
    core_placements = placements()
    async with serving.gateway_process(triton.grpc_url, info.version, redis_url, work,
                                       args.out / "bench-gateway.log") as gateway:
        roles = {**roles, gateway.pid: "gateway"}
        triton_load = serving.TritonLoad(triton.grpc_url, info, images)
        gateway_load = serving.GatewayLoad(gateway.address, images, args.users)
        gateway_metrics = functools.partial(_fetch, gateway.metrics_url)
        try:
            await gateway_load.record_views([vectors.product_id(i) for i in range(args.points)], VIEWS_PER_USER)
            runs = []
            for round_ in range(args.rounds):
                for placement in core_placements:  # the last one shares every core, as the steps after expect
                    place(placement, triton_pid)
                    for concurrency in concurrencies:
                        layers = [(serving.TRITON, triton_load.send, None),
                                  (serving.GATEWAY, gateway_load.send, gateway_metrics)]
                        if concurrency == 1:
                            layers.append((serving.ROUND_TRIP, gateway_load.check_health, None))
                        for layer, send, metrics in layers if round_ % 2 == 0 else reversed(layers):
                            measured = await serving.measured(layer, placement.name, round_, send, concurrency,
                                                              args.duration, roles, metrics)
                            log.info("round %d, %s cores, %s at concurrency %d: %.1f requests/s, p50 %.1f ms, "
                                     "%d failed", round_, placement.name, layer, concurrency,
                                     measured.load.throughput_per_s, measured.load.latency.p50_ms,
                                     measured.load.errors)
                            runs.append(measured)
        finally:
            await triton_load.close()
            await gateway_load.close()
    return [serving.compare(runs, placement.name, concurrency)
            for placement in core_placements for concurrency in concurrencies]


async def _efficiency(args: argparse.Namespace, triton: TritonServer, redis_url: str, info: ModelInfo,
                      images: ImageSet, work: Path, roles: dict[int, str]
                      ) -> tuple[list[efficiency.EfficiencySummary], profiling.Profile]:
    """Layer 6 under the first core placement (Triton on cores of its own where there are two or more), then every
    process back on every core."""
    variants = [efficiency.GatewayVariant("this code")]
    if args.baseline:
        variants.append(efficiency.checkout(args.baseline, work / "baseline"))
    variants += efficiency.SETTING_VARIANTS
    triton_pid = next(pid for pid, role in roles.items() if role == "Triton")
    core_placements = placements()
    place(core_placements[0], triton_pid)

    def start(variant: efficiency.GatewayVariant, log_path: Path
              ) -> contextlib.AbstractAsyncContextManager[serving.GatewayProcess]:
        return serving.gateway_process(triton.grpc_url, info.version, redis_url, work, log_path, variant.env,
                                       variant.code)
    try:
        return await efficiency.bench_efficiency(variants, args.efficiency_rounds, args.concurrency,
                                                 args.profile_seconds, start, as_photos(images), args.users, roles,
                                                 args.out, work)
    finally:
        place(core_placements[-1], triton_pid)


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


async def run(args: argparse.Namespace, work: Path) -> report.BenchReport:
    machine = {"command": "python -m bench " + shlex.join(sys.argv[1:]), "cpu": _cpu_name(), "cores": os.cpu_count(),
               "started": time.strftime("%Y-%m-%d %H:%M %Z"), "load_before": _load_average(),
               "python": platform.python_version(), "torch": torch.__version__}
    settings = Settings.from_env()
    config = model.served_config(args.repository / settings.model_name / "config.pbtxt")
    threads = model.serving_threads(config)
    version = model.served_version(args.repository / settings.model_name, args.model_version)
    images = load_images(args.images)
    log.info("1. model version %s in-process: batch sizes %s, threads %s", version, args.batch_sizes, threads)
    model_report, embeddings = model.bench_model(args.repository / settings.model_name / version / "model.pt",
                                                 images.pixels, args.batch_sizes, threads, args.rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    with TritonServer(args.repository, work_dir=work / "triton") as triton, RedisServer(work / "redis") as redis:
        roles = {child_pid("tritonserver"): "Triton", child_pid("redis-server"): "Redis"}
        components = Components(settings.model_copy(update={"triton_url": triton.grpc_url, "redis_url": redis.url,
                                                            "data_dir": work}))
        async with await components.embedder(version) as embedder:
            info = embedder.info
        log.info("4. vector search over %d points", args.points)
        vector_report = await vectors.bench_vectors(components, info, embeddings, images.categories, args.points,
                                                    args.queries, args.exact_queries)
        log.info("5. history fetch")
        history = await storage.bench_history(components, args.history_fetches)
        log.info("2-3. Triton alone and the gateway, concurrency 1 and %d", args.concurrency)
        comparisons = await _serving(args, triton, redis.url, info, images, work, roles)
        log.info("6. the gateway's CPU per request by stage")
        efficiency_report, profile = await _efficiency(args, triton, redis.url, info, images, work, roles)
        variant_results = []
        if args.triton_variants:
            log.info("Triton variants %s", ", ".join(map(str, args.triton_variants)))
            variant_results = await variants.compare_variants(
                args.repository, info, args.triton_variants, images, sorted({1, args.concurrency}), args.duration,
                args.rounds, work)
        log.info("5. bulk ingestion of %d images", args.ingest_images)
        ingestion = await storage.bench_ingestion(components, version, images, args.ingest_images)
    machine["load_after"] = _load_average()
    serving_settings = {
        "model version": version,
        "Triton max_batch_size": config.max_batch_size,
        "Triton preferred_batch_size": list(config.dynamic_batching.preferred_batch_size),
        "Triton max_queue_delay_microseconds": config.dynamic_batching.max_queue_delay_microseconds,
        "Triton instances": sum(group.count for group in config.instance_group),
        "torch threads (intra-op, inter-op)": list(threads),
        "Triton's allocator (glibc)": ALLOCATOR_ENV,
        "gateway decode workers": settings.decode_workers,
        "ingestion batch size": settings.ingest_batch_size,
        "image size": IMAGE_SIZE,
    }
    return report.BenchReport(machine, serving_settings, model_report, comparisons, profile, vector_report,
                              history, ingestion, variant_results, efficiency_report)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        result = asyncio.run(run(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    json_path, markdown_path = report.write(result, args.out)
    print(f"wrote {json_path} and {markdown_path}")


if __name__ == "__main__":
    main()
