"""The benchmark's result: targets checked, then written as JSON and as Markdown."""

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.efficiency import EfficiencySummary
from bench.model import ModelReport
from bench.profiling import Profile
from bench.serving import Comparison, LayerSummary
from bench.storage import IngestReport
from bench.variants import VariantResult
from bench.vectors import VectorReport
from harness.load import Latency

TARGET_POINTS = 1_000_000


@dataclass(frozen=True)
class Target:
    name: str
    value: float
    limit: float
    at_least: bool
    unit: str = ""
    note: str = ""

    @property
    def met(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit


@dataclass(frozen=True)
class BenchReport:
    machine: dict[str, Any]
    settings: dict[str, Any]
    model: ModelReport
    serving: list[Comparison]
    profile: Profile
    vectors: VectorReport
    history: Latency
    ingestion: IngestReport
    triton_variants: list[VariantResult]
    efficiency: list[EfficiencySummary]

    def targets(self) -> list[Target]:
        """The issue's targets; the serving ones under the first core placement (Triton on cores of its own
        where there are two or more), with the figures of the others in the note."""
        first = self.serving[0].placement
        low, *_, saturated = [c for c in self.serving if c.placement == first]  # by rising concurrency
        others = [c for c in self.serving if c.placement != first]
        points = self.vectors.points
        at_size = "" if points == TARGET_POINTS else f"measured at {points:,} points; the target is at 1 M"
        return [
            Target(f"gateway ÷ Triton throughput at concurrency {saturated.concurrency}, {first} cores",
                   saturated.throughput_ratio, 0.90, True, "",
                   _elsewhere(others, saturated.concurrency, lambda c: f"{c.throughput_ratio:.2f}")),
            Target(f"gateway − Triton p50 at concurrency {low.concurrency}, {first} cores", low.added_p50_ms, 5.0,
                   False, " ms", _elsewhere(others, low.concurrency, lambda c: f"{c.added_p50_ms:.1f} ms")),
            Target("vector search p99", self.vectors.search.p99_ms, 10.0, False, " ms", at_size),
            Target("vector search recall@10", self.vectors.recall_at_10, 0.95, True, "", at_size),
            Target("history fetch p99", self.history.p99_ms, 1.0, False, " ms"),
            Target(f"ingestion ÷ model at its best batch size ({self.model.best.batch_size})",
                   self.ingestion.images_per_s / self.model.best.images_per_s, 0.90, True),
            Target("model FLOP/s ÷ matmul ceiling at the best batch size",
                   self.model.best.fraction_of_ceiling, 0.50, True),
            *self._cpu_targets(),
        ]

    def _cpu_targets(self) -> list[Target]:
        """Gateway CPU per history-aware request at the highest concurrency against the baseline's, when measured."""
        saturated = max(summary.concurrency for summary in self.efficiency)
        cpu = {s.variant: s.gateway_cpu_ms for s in self.efficiency if s.history and s.concurrency == saturated}
        this, *others = cpu
        baselines = [variant for variant in others if variant.startswith("commit ")]
        return [Target(f"gateway CPU per history-aware request ÷ {baseline}'s", cpu[this] / cpu[baseline], 0.5,
                       False, "", f"{cpu[this]:.1f} vs {cpu[baseline]:.1f} ms at concurrency {saturated}")
                for baseline in baselines]

    def to_json(self) -> str:
        document = dataclasses.asdict(self)
        document["targets"] = [{**dataclasses.asdict(target), "met": target.met} for target in self.targets()]
        return json.dumps(document, indent=2)


def _elsewhere(comparisons: list[Comparison], concurrency: int, value: Callable[[Comparison], str]) -> str:
    return "; ".join(f"{c.placement} cores: {value(c)}" for c in comparisons if c.concurrency == concurrency)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def _f(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def _latency_cells(summary: LayerSummary) -> list[str]:
    return [_f(summary.throughput_per_s), _f(summary.p50_ms), _f(summary.p95_ms), _f(summary.p99_ms)]


def _cpu(summary: LayerSummary) -> str:
    return ", ".join(f"{role} {_f(ms)}" for role, ms in sorted(summary.cpu_ms_per_request.items()))


def _model_section(model: ModelReport) -> list[str]:
    rows = [[str(b.batch_size), _f(b.ms_per_batch), _f(b.images_per_s), f"{b.fraction_of_ceiling:.1%}"]
            for b in model.batches]
    ops = [[op.group, f"{op.time_share:.1%}", f"{op.flop_share:.1%}", _f(op.gflops_per_s)] for op in model.ops]
    return [
        "## 1. The TorchScript model in-process", "",
        (f"Torch threads as served: {model.intra_op_threads} intra-op, {model.inter_op_threads} inter-op. "
         f"{model.gflops_per_image:.3f} GFLOP per image; float32 matmul ceiling measured between passes: "
         f"{_f(model.matmul_gflops_per_s)} GFLOP/s."), "",
        *_table(["batch", "ms per batch", "images/s", "of ceiling"], rows),
        f"Where forward passes at batch {model.best.batch_size} spend their time (torch profiler):", "",
        *_table(["operators", "time", "FLOPs", "GFLOP/s"], ops),
    ]


def _serving_section(report: BenchReport) -> list[str]:
    summaries = [(comparison.placement, summary) for comparison in report.serving
                 for summary in (comparison.triton, comparison.gateway)]
    rows = [[placement, s.layer, str(s.concurrency), *_latency_cells(s), str(s.requests), str(s.errors), _cpu(s)]
            for placement, s in summaries]
    failures = [f"First failure of {s.layer} at concurrency {s.concurrency}, {placement} cores: {s.first_error}"
                for placement, s in summaries if s.errors]
    ratios = [[c.placement, str(c.concurrency), f"{c.throughput_ratio:.3f}", _f(c.added_p50_ms),
               "" if c.round_trip_p50_ms is None else _f(c.round_trip_p50_ms),
               ", ".join(f"{ratio:.3f}" for ratio in c.ratio_by_round)] for c in report.serving]
    stage_names = list(dict.fromkeys(stage for c in report.serving for stage in c.gateway.stage_ms))
    stages = [[c.placement, str(c.concurrency),
               *(_f(c.gateway.stage_ms[stage], 2) if stage in c.gateway.stage_ms else "" for stage in stage_names)]
              for c in report.serving]
    return [
        "## 2-3. Triton alone and the gateway end to end", "",
        ("Closed loop, one image per request; Triton alone gets the tensor the gateway would send, the gateway "
         "gets the PNG and a shopper id with recorded views. The two alternate within each round; values are "
         "medians over rounds, CPU is milliseconds per request by process. Cores: \"split\" runs Triton on "
         "half of the cores and the gateway, Redis and the load client on the other half, as when Triton has "
         "machines of its own (the production layout); \"shared\" lets every process use every core."), "",
        *_table(["cores", "layer", "concurrency", "requests/s", "p50 ms", "p95 ms", "p99 ms", "answered", "failed",
                 "CPU ms/request"], rows),
        *failures, *([""] if failures else []),
        *_table(["cores", "concurrency", "gateway ÷ Triton throughput", "gateway − Triton p50 ms",
                 "gateway health check p50 ms", "ratio by round"], ratios),
        ("The health check is a standard gRPC call to the gateway over the load client's channel that does no "
         "work, sent back to back: a lower bound on what any call to the gateway's Python gRPC server costs here "
         "(a call that follows idle time, as a Recommend does while Triton computes, wakes sleeping threads and "
         "costs more). "
         "The gateway's stage means (ms, from its Prometheus histograms, medians over rounds) show where the "
         "rest goes; `search` averages the taste search (run while Triton embeds), the visual search and the "
         "similarity batch, the last two after the embedding:"), "",
        *_table(["cores", "concurrency", *stage_names], stages),
    ]


def _variants_section(results: list[VariantResult]) -> list[str]:
    if not results:
        return []
    rows = [[r.variant, str(r.concurrency), _f(r.throughput_per_s), _f(r.p50_ms), _f(r.p99_ms), str(r.errors)]
            for r in results]
    return [
        "## Triton instance and thread variants", "",
        ("Triton alone, the served config with only the instance count x intra-op threads changed; all variants "
         "served at once and measured in alternating turns (medians over rounds)."), "",
        *_table(["instances x threads", "concurrency", "requests/s", "p50 ms", "p99 ms", "errors"], rows),
    ]


def _profile_section(profile: Profile) -> list[str]:
    groups = [[share.name, f"{share.share:.1%}"] for share in profile.groups]
    hottest = [[f"`{share.name}`", f"{share.share:.1%}"] for share in profile.hottest_functions]
    return [
        "## Gateway profile (py-spy)", "",
        (f"{profile.samples} samples over {_f(profile.duration_s)} s of layer 6's first variant with history at the "
         f"highest concurrency: the gateway's "
         f"Python threads kept {profile.busy_cores:.2f} cores busy on average. Collapsed stacks (open in "
         f"speedscope.app or flamegraph.pl): `{Path(profile.flame_graph_input).name}`."), "",
        *_table(["where", "samples"], groups),
        *_table(["hottest functions (self)", "samples"], hottest),
    ]


def _efficiency_section(summaries: list[EfficiencySummary]) -> list[str]:
    rows = [[s.variant, "on" if s.history else "off", str(s.concurrency), _f(s.throughput_per_s), _f(s.p50_ms),
             _f(s.gateway_cpu_ms), _f(s.triton_cpu_ms), str(s.errors)] for s in summaries]
    profiled = [s for s in summaries if s.stage_cpu_ms]
    stages = list(dict.fromkeys(stage for s in profiled for stage in s.stage_cpu_ms))
    by_stage = [[stage, *(_f(s.stage_cpu_ms.get(stage, 0.0), 2) for s in profiled)] for stage in stages]
    by_stage.append(["**total**", *(_f(s.gateway_cpu_ms, 2) for s in profiled)])
    return [
        "## 6. The gateway's CPU per request", "",
        ("Each variant is a gateway process started in turn over the same catalog, on the first core placement, sent "
         "800 x 800 JPEG photos of the same products; history \"on\" is a shopper with recorded views, \"off\" no "
         "user id. Medians over rounds; CPU in milliseconds per request."), "",
        *_table(["variant", "history", "concurrency", "requests/s", "p50 ms", "gateway CPU", "Triton CPU", "errors"],
                rows),
        *(f"First failure of {s.variant}, history {'on' if s.history else 'off'}, concurrency {s.concurrency}: "
          f"{s.first_error}\n" for s in summaries if s.errors),
        ("CPU milliseconds per request by stage at the highest concurrency: py-spy's samples of the Python threads "
         "by group, scaled to their CPU; the rest of the process's CPU is native threads."), "",
        *_table(["stage", *(f"{s.variant}, history {'on' if s.history else 'off'}" for s in profiled)], by_stage),
    ]


def _percentiles(latency: Latency) -> str:
    return (f"{_f(latency.p50_ms, 2)} / {_f(latency.p95_ms, 2)} / {_f(latency.p99_ms, 2)} ms "
            f"({latency.samples} queries)")


def _vector_section(vectors: VectorReport) -> list[str]:
    return [
        "## 4. Vector search (embedded Qdrant engine)", "",
        (f"{vectors.points:,} points of dimension {vectors.dim} (perturbed mixtures of the image set's real "
         f"embeddings); {vectors.search_mode} search as shipped (exact up to {vectors.exact_search_max_points:,} "
         f"points, HNSW ef={vectors.hnsw_ef} above)."), "",
        *_table(["measure", "value (latency: p50 / p95 / p99)"], [
            ["upsert", f"{_f(vectors.upsert_points_per_s, 0)} points/s"],
            ["index build (optimize)", f"{_f(vectors.index_build_s)} s"],
            ["top-10 search (catalog adapter, as the gateway calls it)", _percentiles(vectors.search)],
            ["recall@10 against exact (numpy)", f"{vectors.recall_at_10:.3f}"],
            [f"top-{vectors.pool_size} search (the gateway's candidate pool, adapter)",
             _percentiles(vectors.pool_search)],
            ["top-10 search in the engine alone (results not turned into Python objects)",
             _percentiles(vectors.engine_search)],
            ["exact top-10 search", _percentiles(vectors.exact_search)],
            ["resident memory per million vectors", f"{_f(vectors.rss_mib_per_million / 1024, 2)} GiB"],
            ["disk per million vectors", f"{_f(vectors.disk_mib_per_million / 1024, 2)} GiB"],
        ]),
    ]


def _storage_section(history: Latency, ingestion: IngestReport) -> list[str]:
    return [
        "## 5. History fetch and bulk ingestion", "",
        *_table(["measure", "value"], [
            ["history fetch (50 views) p50 / p99",
             f"{history.p50_ms * 1000:,.0f} / {history.p99_ms * 1000:,.0f} µs ({history.samples} fetches)"],
            ["bulk ingestion",
             f"{_f(ingestion.images_per_s)} images/s "
             f"({ingestion.images} PNG images in batches of {ingestion.batch_size})"],
        ]),
    ]


def _targets_section(targets: list[Target]) -> list[str]:
    def value(target: Target) -> str:
        return f"{target.value:.3g}{target.unit}"

    rows = [[target.name, value(target), f"{'≥' if target.at_least else '≤'} {target.limit:g}{target.unit}",
             "met" if target.met else "**not met**", target.note] for target in targets]
    return _table(["target", "measured", "goal", "", "note"], rows)


def to_markdown(report: BenchReport) -> str:
    machine = report.machine
    lines = [
        "# Benchmark", "",
        (f"`{machine['command']}` on {machine['cpu']} ({machine['cores']} cores), {machine['started']}, Python "
         f"{machine['python']}, torch {machine['torch']}. Load average {machine['load_before']} before the run and "
         f"{machine['load_after']} after it: above {machine['cores']}, other processes competed for the cores. "
         "Every layer ran on the same images in this one run."), "",
        *_targets_section(report.targets()),
        *_model_section(report.model),
        *_serving_section(report),
        *_variants_section(report.triton_variants),
        *_vector_section(report.vectors),
        *_storage_section(report.history, report.ingestion),
        *_efficiency_section(report.efficiency),
        *_profile_section(report.profile),
        "## Settings measured", "",
        *_table(["setting", "value"], [[name, f"`{value}`"] for name, value in report.settings.items()]),
    ]
    return "\n".join(lines)


def write(report: BenchReport, folder: Path, name: str = "bench") -> tuple[Path, Path]:
    """Writes `<name>.json` and `<name>.md` into folder; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = folder / f"{name}.json", folder / f"{name}.md"
    json_path.write_text(report.to_json())
    markdown_path.write_text(to_markdown(report))
    return json_path, markdown_path
