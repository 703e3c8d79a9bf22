"""Optional: Triton alone under other instance and thread counts, to tune the served config from measurements."""

import contextlib
import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.serving import WARMUP_ROUNDS, TritonLoad
from bench.workload import ImageSet
from gateway.domain import ModelInfo
from harness.load import LoadResult, measure, warm_up
from model_export.triton_config import CPU_PROFILE, TritonProfile
from stack.triton import TritonServer, with_versions


@dataclass(frozen=True)
class Variant:
    """Model instances, each running torch on `threads` intra-op threads."""

    instances: int
    threads: int

    @classmethod
    def parse(cls, text: str) -> "Variant":
        """`2x1`: two instances of one thread each."""
        instances, _, threads = text.partition("x")
        return cls(int(instances), int(threads))

    def __str__(self) -> str:
        return f"{self.instances}x{self.threads}"

    def profile(self) -> TritonProfile:
        """The served CPU profile with this variant's instances and threads, and nothing else changed."""
        return dataclasses.replace(CPU_PROFILE, instances=self.instances, cpu_threads=self.threads)


@dataclass(frozen=True)
class VariantResult:
    variant: str
    concurrency: int
    throughput_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def _summary(variant: Variant, runs: Sequence[LoadResult]) -> VariantResult:
    return VariantResult(str(variant), runs[0].concurrency, statistics.median(r.throughput_per_s for r in runs),
                         statistics.median(r.latency.p50_ms for r in runs),
                         statistics.median(r.latency.p99_ms for r in runs), sum(r.errors for r in runs))


async def compare_variants(repository: Path, model: ModelInfo, variants: Sequence[Variant], images: ImageSet,
                           concurrencies: Sequence[int], duration_s: float, rounds: int, work: Path
                           ) -> list[VariantResult]:
    """Every variant served at once (an idle server uses no CPU), measured in turns that alternate order
    every round, so that each sees the same machine; medians over rounds."""
    runs: dict[tuple[Variant, int], list[LoadResult]] = {}
    measured_repository = with_versions(repository, work / "variants-repository", (model.version,))
    with contextlib.ExitStack() as stack:
        loads = []
        for variant in variants:
            server = stack.enter_context(TritonServer(measured_repository, work_dir=work / f"triton-{variant}",
                                                      profile=variant.profile()))
            loads.append((variant, TritonLoad(server.grpc_url, model, images)))
        try:
            for round_ in range(rounds):
                for concurrency in concurrencies:
                    for variant, load in loads if round_ % 2 == 0 else reversed(loads):
                        await warm_up(load.send, concurrency, WARMUP_ROUNDS)
                        result = await measure(load.send, concurrency, duration_s)
                        runs.setdefault((variant, concurrency), []).append(result)
        finally:
            for _, load in loads:
                await load.close()
    return [_summary(variant, runs[variant, concurrency]) for concurrency in concurrencies for variant in variants]
