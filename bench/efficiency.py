"""Layer 6: the gateway's CPU per request by stage, for variants of its code and settings, history on and off.

Each variant is a gateway process (`python -m gateway`) started in turn over the same catalog, Triton and Redis,
round after round: this tree with its defaults, optionally another commit's code (`--baseline REF`, checked out
with `git archive`), and this tree with one efficiency setting changed (search batching off, decode in Triton). Each
start measures Recommend at concurrency 1 with history, then at the highest concurrency with history (a shopper
with recorded views) and without (no user id), with py-spy sampling the gateway during the high-concurrency runs.
The images are 800 x 800 JPEG photos (`bench.workload.as_photos`), so that decoding costs what it costs in
service.

CPU by stage: py-spy samples the gateway's Python threads while they run; each group of `bench.profiling` gets its
share of those samples times the Python threads' CPU (samples ÷ rate), and what the process spent beyond that
(/proc) is charged to "native threads" (the engine's search threads, gRPC's core, OpenBLAS).
"""

import logging
import statistics
import subprocess
import tarfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

from bench import profiling, serving
from bench.workload import ImageSet
from harness.load import LoadResult, warm_up

log = logging.getLogger(__name__)
NATIVE = "native threads (engine search threads, gRPC core)"
GATEWAY_ROLE = "gateway"


@dataclass(frozen=True)
class GatewayVariant:
    """A gateway to measure: `code` is a checkout of other code (None: this tree), `env` its settings changed."""

    name: str
    env: Mapping[str, str] = field(default_factory=dict)
    code: Path | None = None


SETTING_VARIANTS = (GatewayVariant("no search batching", {"SEARCH_BATCH_WINDOW_MS": "0"}),
                    GatewayVariant("decode in Triton", {"IMAGE_PREPROCESSING": "triton"}))


def checkout(ref: str, target: Path) -> GatewayVariant:
    """The code of git commit `ref` (the gateway, its API stubs and what they import) under `target`."""
    target.mkdir(parents=True)
    archive = target.with_suffix(".tar")
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), ref], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    archive.unlink()
    commit = subprocess.run(["git", "rev-parse", "--short", ref], check=True, capture_output=True, text=True)
    return GatewayVariant(f"commit {commit.stdout.strip()}", code=target)


@dataclass(frozen=True)
class EfficiencyRun:
    """One load run of one variant: the CPU milliseconds each process spent per request and, at high concurrency,
    the gateway's by stage."""

    variant: str
    history: bool
    concurrency: int
    round: int
    load: LoadResult
    cpu_ms_per_request: dict[str, float]
    stage_cpu_ms: dict[str, float]


@dataclass(frozen=True)
class EfficiencySummary:
    """Medians over rounds of one variant at one concurrency, with or without history."""

    variant: str
    history: bool
    concurrency: int
    throughput_per_s: float
    p50_ms: float
    errors: int
    first_error: str
    gateway_cpu_ms: float
    triton_cpu_ms: float
    stage_cpu_ms: dict[str, float]


def stage_cpu_ms(profile: profiling.Profile, process_cpu_ms: float, requests_per_s: float) -> dict[str, float]:
    """CPU milliseconds per request by stage at `requests_per_s`: the Python threads' sampled CPU split by the
    profile's group shares, and the rest of the process's CPU per request (`process_cpu_ms`) as native threads."""
    python_ms = min(profile.busy_cores * 1000 / requests_per_s, process_cpu_ms)
    by_stage = {share.name: share.share * python_ms for share in profile.groups}
    by_stage[NATIVE] = process_cpu_ms - python_ms
    return by_stage


async def _run(variant: str, history: bool, round_: int, load: serving.GatewayLoad, concurrency: int,
               duration_s: int, roles: Mapping[int, str], profile_to: Path | None
               ) -> tuple[EfficiencyRun, profiling.Profile | None]:
    send = load.send if history else load.send_anonymous
    await warm_up(send, concurrency, serving.WARMUP_ROUNDS)
    gateway_pid = next(pid for pid, role in roles.items() if role == GATEWAY_ROLE)
    spy = await profiling.record(gateway_pid, duration_s, profile_to) if profile_to else None
    result, cpu = await serving.measured_with_cpu(send, concurrency, duration_s, roles)
    profile = await profiling.finish(spy, profile_to, duration_s) if spy and profile_to else None
    stages = stage_cpu_ms(profile, cpu[GATEWAY_ROLE], result.throughput_per_s) if profile else {}
    log.info("%s, history %s, concurrency %d: %.1f requests/s, p50 %.1f ms, gateway CPU %.1f ms per request",
             variant, "on" if history else "off", concurrency, result.throughput_per_s, result.latency.p50_ms,
             cpu.get(GATEWAY_ROLE, 0.0))
    return EfficiencyRun(variant, history, concurrency, round_, result, cpu, stages), profile


GatewayStarter = Callable[[GatewayVariant, Path], AbstractAsyncContextManager[serving.GatewayProcess]]


async def bench_efficiency(variants: Sequence[GatewayVariant], rounds: int, concurrency: int, duration_s: int,
                           start: GatewayStarter, images: ImageSet, users: int, roles: Mapping[int, str],
                           out: Path, work: Path) -> tuple[list[EfficiencySummary], profiling.Profile]:
    """Every variant in turn, round after round (see the module's docstring); also the last profile of the first
    variant with history at `concurrency`, whose stacks are kept in out/bench-gateway-stacks.txt."""
    runs: list[EfficiencyRun] = []
    kept: profiling.Profile | None = None
    for round_ in range(rounds):
        for variant in variants if round_ % 2 == 0 else reversed(variants):
            async with start(variant, out / f"bench-gateway-{_slug(variant.name)}.log") as gateway:
                load = serving.GatewayLoad(gateway.address, images, users)
                measured_roles = {**roles, gateway.pid: GATEWAY_ROLE}
                try:
                    for history, callers in ((True, 1), (True, concurrency), (False, concurrency)):
                        first = variant is variants[0] and history
                        profile_to = None if callers != concurrency else \
                            out / "bench-gateway-stacks.txt" if first else work / "stacks.txt"
                        run, profile = await _run(variant.name, history, round_, load, callers, duration_s,
                                                  measured_roles, profile_to)
                        runs.append(run)
                        kept = profile if first and profile else kept
                finally:
                    await load.close()
    if kept is None:
        raise RuntimeError("no variant was profiled")
    return summarize(runs), kept


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def summarize(runs: Sequence[EfficiencyRun]) -> list[EfficiencySummary]:
    """Medians over rounds, per variant, history and concurrency, in the order first measured."""
    keys = list(dict.fromkeys((run.variant, run.history, run.concurrency) for run in runs))
    summaries = []
    for variant, history, concurrency in keys:
        same = [run for run in runs if (run.variant, run.history, run.concurrency) == (variant, history, concurrency)]
        stages = list(dict.fromkeys(stage for run in same for stage in run.stage_cpu_ms))
        summaries.append(EfficiencySummary(
            variant, history, concurrency,
            statistics.median(run.load.throughput_per_s for run in same),
            statistics.median(run.load.latency.p50_ms for run in same),
            sum(run.load.errors for run in same),
            next((run.load.first_error for run in same if run.load.errors), ""),
            statistics.median(run.cpu_ms_per_request.get(GATEWAY_ROLE, 0.0) for run in same),
            statistics.median(run.cpu_ms_per_request.get("Triton", 0.0) for run in same),
            {stage: statistics.median(run.stage_cpu_ms.get(stage, 0.0) for run in same) for stage in stages}))
    return summaries
