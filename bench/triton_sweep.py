"""`python -m bench.triton_sweep` (`make triton-sweep`): Triton alone at rising concurrency, as perf_analyzer's
`--concurrency-range` measures it, with Triton's own statistics of each step: the mean batch its dynamic batcher
formed, the time requests queued and the time per execution.

With `--url` it measures a running server (the GPU replica to size: docs/performance.md, "On a GPU"); without, it
starts the local CPU tritonserver over `model_repository/`. One image per request, as the gateway sends. It also
prints the equivalent perf_analyzer command for NGC's Triton SDK image. Writes `triton-sweep.json` and
`triton-sweep.md` into `--out` (default `reports/`).
"""

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import service_pb2
from tritonclient.grpc.aio import InferenceServerClient

from bench.serving import WARMUP_ROUNDS, TritonLoad
from bench.workload import load_images
from gateway.embedder import TritonEmbedder
from harness.load import measure, warm_up
from model_export.triton_config import IMAGE_SIZE, INPUT_NAME
from stack.triton import TritonServer

log = logging.getLogger("bench.triton_sweep")


@dataclass(frozen=True)
class SweepStep:
    """One concurrency: the client's view, and Triton's statistics over the same requests."""

    concurrency: int
    throughput_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    mean_batch: float
    queue_ms: float
    compute_ms_per_execution: float


@dataclass(frozen=True)
class Sweep:
    url: str
    model: str
    version: str
    perf_analyzer_command: str
    steps: list[SweepStep]


def perf_analyzer_command(url: str, model: str, version: str, concurrencies: list[int]) -> str:
    """The same sweep with perf_analyzer (NGC's Triton SDK image), one image per request."""
    shape = f"{INPUT_NAME}:{IMAGE_SIZE},{IMAGE_SIZE},3"
    return (f"for c in {' '.join(map(str, concurrencies))}; do perf_analyzer -m {model} -x {version} -u {url} -i grpc "
            f"-b 1 --shape {shape} --concurrency-range $c:$c --measurement-interval 10000 --percentile 99; done")


def _step(before: service_pb2.ModelStatistics, after: service_pb2.ModelStatistics) -> tuple[float, float, float]:
    """(mean batch, queue ms per request, compute ms per execution) between two statistics readings."""
    executions = max(after.execution_count - before.execution_count, 1)
    inferences = after.inference_count - before.inference_count
    stats, previous = after.inference_stats, before.inference_stats
    requests = max(stats.success.count - previous.success.count, 1)
    compute_ns = sum(getattr(stats, part).ns - getattr(previous, part).ns
                     for part in ("compute_input", "compute_infer", "compute_output"))
    return inferences / executions, (stats.queue.ns - previous.queue.ns) / requests / 1e6, compute_ns / executions / 1e6


async def sweep(url: str, model: str, version: str, concurrencies: list[int], duration_s: float, images: int
                ) -> Sweep:
    """Triton at `url` at each concurrency in turn, after a warm-up."""
    async with await TritonEmbedder.connect(url, model, version) as embedder:
        info = embedder.info
    image_set = load_images(images)
    load = TritonLoad(url, info, image_set)
    client = InferenceServerClient(url)
    steps = []
    try:
        for concurrency in concurrencies:
            await warm_up(load.send, concurrency, WARMUP_ROUNDS)
            before = (await client.get_inference_statistics(info.name, info.version)).model_stats[0]
            result = await measure(load.send, concurrency, duration_s)
            after = (await client.get_inference_statistics(info.name, info.version)).model_stats[0]
            mean_batch, queue_ms, compute_ms = _step(before, after)
            steps.append(SweepStep(concurrency, result.throughput_per_s, result.latency.p50_ms,
                                   result.latency.p99_ms, result.errors, mean_batch, queue_ms, compute_ms))
            log.info("concurrency %d: %.1f images/s, p50 %.1f ms, mean batch %.2f", concurrency,
                     result.throughput_per_s, result.latency.p50_ms, mean_batch)
    finally:
        await load.close()
        await client.close()
    return Sweep(url, info.name, info.version, perf_analyzer_command(url, info.name, info.version, concurrencies),
                 steps)


def to_markdown(result: Sweep) -> str:
    rows = [f"| {s.concurrency} | {s.throughput_per_s:,.1f} | {s.p50_ms:,.1f} | {s.p99_ms:,.1f} | {s.errors} | "
            f"{s.mean_batch:.2f} | {s.queue_ms:,.2f} | {s.compute_ms_per_execution:,.1f} |" for s in result.steps]
    return "\n".join([
        "# Triton concurrency sweep", "",
        f"Model `{result.model}` version {result.version} at `{result.url}`, one image per request. Triton's "
        "statistics: the mean batch its dynamic batcher formed, queue time per request, compute time per execution.",
        "",
        "| concurrency | images/s | p50 ms | p99 ms | errors | mean batch | queue ms | compute ms per execution |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |", *rows, "",
        "The same sweep with perf_analyzer (NGC's Triton SDK image):", "", f"    {result.perf_analyzer_command}", ""])


@contextlib.asynccontextmanager
async def _server(url: str, repository: Path) -> AsyncIterator[str]:
    """`url`, or the local CPU tritonserver over `repository` while the block runs."""
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="triton-sweep-") as work, TritonServer(repository, Path(work)) as server:
        yield server.grpc_url


async def _main(args: argparse.Namespace) -> Sweep:
    async with _server(args.url, args.repository) as url:
        return await sweep(url, args.model, args.model_version, args.concurrency, args.duration, args.images)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.triton_sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="", help="Triton's gRPC address, e.g. triton:8001 (default: start the "
                                                   "local CPU server)")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="product_embedder")
    parser.add_argument("--model-version", default="", help="default: the latest served")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32,64",
                        type=lambda text: [int(value) for value in text.split(",")])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per step")
    parser.add_argument("--images", type=int, default=64, help="Fashion-MNIST test images sent in turn")
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = asyncio.run(_main(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "triton-sweep.json").write_text(json.dumps(dataclasses.asdict(result), indent=2))
    (args.out / "triton-sweep.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
