"""The benchmark (`make bench`): its pure parts, and the whole command in smoke mode against real servers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest

from bench import triton_sweep
from bench.efficiency import NATIVE, stage_cpu_ms
from bench.model import op_breakdown, served_config, served_version
from bench.processes import place, placements
from bench.profiling import Profile, Share, summarize_stacks
from bench.serving import stage_means_ms, stage_seconds
from bench.variants import Variant
from bench.vectors import K, _merge_top
from bench.workload import catalog_chunks, perturbed_embeddings
from gateway.metrics import Metrics
from model_export.efficientnet_lite import same_conv2d
from model_export.triton_config import ALLOCATOR_ENV, CPU_PROFILE, local_config, parse_config, render_config

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("## 1. The TorchScript model in-process", "## 2-3. Triton alone and the gateway end to end",
            "## Gateway profile (py-spy)", "## 4. Vector search", "## 5. History fetch and bulk ingestion",
            "## 6. The gateway's CPU per request", "## Settings measured")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="splitting cores needs two of them")
def test_the_split_placement_pins_triton_apart_from_everything_else() -> None:
    split, shared = placements()
    assert (split.name, shared.name) == ("split", "shared")
    assert split.triton_cpus and split.other_cpus and not split.triton_cpus & split.other_cpus
    assert split.triton_cpus | split.other_cpus == shared.triton_cpus == shared.other_cpus
    triton, other = (subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2))
    try:
        place(split, triton.pid)
        assert os.sched_getaffinity(triton.pid) == split.triton_cpus
        assert os.sched_getaffinity(other.pid) == os.sched_getaffinity(0) == split.other_cpus
    finally:
        place(shared, triton.pid)
        for process in (triton, other):
            process.kill()
            process.wait()
    assert os.sched_getaffinity(0) == shared.other_cpus


def test_generated_vectors_are_unit_length_near_their_seed_and_reproducible() -> None:
    rng = np.random.default_rng(0)
    seeds = rng.standard_normal((20, 64)).astype(np.float32)
    seeds /= np.linalg.norm(seeds, axis=1, keepdims=True)
    vectors, origin = perturbed_embeddings(seeds, 500, np.random.default_rng(1))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    closeness = np.einsum("ij,ij->i", vectors, seeds[origin])
    assert closeness.min() > 0.5 and np.mean(closeness > (vectors @ seeds.T).mean(axis=1)) == 1.0
    first = [chunk.copy() for _, chunk, _ in catalog_chunks(seeds, 250, 100)]
    again = [chunk for _, chunk, _ in catalog_chunks(seeds, 250, 100)]
    assert [len(chunk) for chunk in first] == [100, 100, 50]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_running_top_k_over_chunks_equals_one_exact_search() -> None:
    rng = np.random.default_rng(2)
    queries, points = rng.standard_normal((7, 16)), rng.standard_normal((95, 16))
    best = (np.full((7, 0), -np.inf), np.zeros((7, 0), dtype=np.int64))
    for offset in range(0, len(points), 30):
        best = _merge_top(best, queries @ points[offset:offset + 30].T, offset)
    expected = np.argsort(-(queries @ points.T), axis=1)[:, :K]
    assert np.array_equal(best[1], expected)


def test_stacks_are_charged_to_the_first_matching_group() -> None:
    collapsed = (
        "main (stack/run.py:1);Pipeline._search (gateway/pipeline.py:2);_search (gateway/catalog/edge.py:3) 6\n"
        "main (stack/run.py:1);preprocess (gateway/images.py:4);resize (PIL/Image.py:5) 3\n"
        "Thread._bootstrap (threading.py:1);_worker (concurrent/futures/thread.py:2);run (x.py:3) 1\n"
        "Thread._bootstrap (threading.py:1);_worker (concurrent/futures/thread.py:81) 5\n")
    samples, groups, hottest = summarize_stacks(collapsed, duration_s=1.0)
    assert samples == 10, "a worker waiting for work is not running"
    assert [(share.name, share.share) for share in groups] == [
        ("catalog search and lookup (Qdrant engine)", 0.6), ("image decode", 0.3),
        ("event loop and thread hand-offs", 0.1)]
    assert hottest[0].name == "_search (gateway/catalog/edge.py:3)"


def test_stage_cpu_splits_the_python_threads_cpu_by_group_and_charges_the_rest_to_native_threads() -> None:
    groups = [Share("catalog search and lookup (Qdrant engine)", 0.75), Share("image decode", 0.25)]
    profile = Profile(samples=400, duration_s=2.0, busy_cores=0.4, groups=groups, hottest_functions=[],
                      flame_graph_input="")
    # 0.4 busy cores at 50 requests/s: 8 ms of Python per request, of a process's 10 ms.
    assert stage_cpu_ms(profile, process_cpu_ms=10.0, requests_per_s=50.0) == pytest.approx(
        {"catalog search and lookup (Qdrant engine)": 6.0, "image decode": 2.0, NATIVE: 2.0})
    assert stage_cpu_ms(profile, process_cpu_ms=6.0, requests_per_s=50.0)[NATIVE] == 0.0, "never below zero"


@pytest.mark.parametrize(("kernel", "size", "stride"), [(3, 8, 2), (5, 8, 2), (3, 8, 1)])
def test_model_flops_leave_out_the_zero_taps_of_widened_kernels(kernel: int, size: int, stride: int) -> None:
    """Asymmetric SAME padding runs as a kernel one larger with zeros in front; it is the same arithmetic."""
    conv = torch.jit.freeze(torch.jit.script(same_conv2d(4, 6, kernel, size, stride=stride).eval()))
    output_side = -(-size // stride)
    multiply_adds = 6 * output_side ** 2 * 4 * kernel ** 2
    flops_per_image, _ = op_breakdown(conv, torch.randn(2, 4, size, size))
    assert flops_per_image == pytest.approx(2 * multiply_adds)


def test_stage_means_come_from_the_gateways_histogram_deltas() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.stage_seconds.labels("embed").observe(0.5)
    before = stage_seconds(generate_latest(metrics.registry).decode())
    for seconds in (0.02, 0.04):
        metrics.stage_seconds.labels("embed").observe(seconds)
    metrics.stage_seconds.labels("search").observe(0.003)
    after = stage_seconds(generate_latest(metrics.registry).decode())
    assert stage_means_ms(before, after) == {"embed": pytest.approx(30.0), "search": pytest.approx(3.0)}


def test_a_variant_changes_only_instances_and_threads_of_the_served_profile() -> None:
    production = render_config("m", "tiny", 8)
    served, variant = (parse_config(local_config(production, profile))
                       for profile in (CPU_PROFILE, Variant.parse("3x2").profile()))
    assert [group.count for group in variant.instance_group] == [3]
    assert variant.parameters["INTRA_OP_THREAD_COUNT"].string_value == "2"
    del served.instance_group[:], variant.instance_group[:]
    del served.parameters["INTRA_OP_THREAD_COUNT"], variant.parameters["INTRA_OP_THREAD_COUNT"]
    assert variant == served


def test_every_layer_measures_the_served_cpu_profile_of_the_production_config(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text(render_config("m", "tiny", 8))
    config = served_config(tmp_path / "config.pbtxt")
    assert config.backend == "python" and config.max_batch_size == CPU_PROFILE.max_batch_size
    assert config.parameters["INTRA_OP_THREAD_COUNT"].string_value == str(CPU_PROFILE.cpu_threads)


def test_the_serving_allocator_keeps_freed_activations_instead_of_faulting_them_in_again() -> None:
    """Three 16 MiB blocks at once, freed and taken again, as a forward pass's activations are: glibc's default
    gives the 48 MiB back on every free (about 1,000 page faults per pass); the serving settings keep them."""
    script = ("import resource, numpy as np\n"
              "from bench.model import use_serving_allocator\n"
              "use_serving_allocator()\n"
              "def activations(): return [np.ones(16 * 2**20, dtype=np.uint8) for _ in range(3)]\n"
              "activations()\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
              "for _ in range(10): activations()\n"
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=120, check=True)
    assert int(result.stdout) < 500  # without the settings: 10,602 here


def test_every_layer_measures_the_latest_exported_version_unless_one_is_asked_for(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run `make model`"):
        served_version(tmp_path)
    for version in ("1", "2", "10", "notes"):
        (tmp_path / version).mkdir()
    for version in ("1", "2", "notes"):
        (tmp_path / version / "model.pt").touch()  # "10" is a version directory without its model
    assert served_version(tmp_path) == "2"
    assert served_version(tmp_path, "1") == "1"
    with pytest.raises(FileNotFoundError, match=r"version 10 is not exported .*; exported: 1, 2"):
        served_version(tmp_path, "10")


@pytest.mark.slow
def test_the_smoke_run_writes_every_layer_into_json_and_markdown(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--baseline", "HEAD", "--out", str(tmp_path)],
                            cwd=ROOT, check=False,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    markdown = (tmp_path / "bench.md").read_text()
    for section in SECTIONS:
        assert section in markdown
    document = json.loads((tmp_path / "bench.json").read_text())
    assert [batch["batch_size"] for batch in document["model"]["batches"]] == [1, 4]
    assert document["model"]["gflops_per_image"] > 0.1
    assert document["settings"]["Triton's allocator (glibc)"] == ALLOCATOR_ENV
    assert document["settings"]["model version"] == served_version(ROOT / "model_repository" / "product_embedder")
    assert [(c["placement"], c["concurrency"]) for c in document["serving"]] == [
        (placement.name, concurrency) for placement in placements() for concurrency in (1, 2)]
    for comparison in document["serving"]:
        assert comparison["triton"]["requests"] > 0 and comparison["gateway"]["requests"] > 0
        assert comparison["gateway"]["stage_ms"]["embed"] > 0 and not comparison["triton"]["stage_ms"]
        assert (comparison["round_trip_p50_ms"] > 0) if comparison["concurrency"] == 1 else \
            comparison["round_trip_p50_ms"] is None
    assert document["vectors"]["points"] == 300 and 0 <= document["vectors"]["recall_at_10"] <= 1
    assert document["history"]["samples"] == 50 and document["ingestion"]["images"] == 16
    assert len(document["targets"]) == 8 and all("met" in target for target in document["targets"])
    assert document["targets"][-1]["name"].startswith("gateway CPU per history-aware request ÷ commit ")
    variants = [(s["variant"].split()[0], s["history"], s["concurrency"]) for s in document["efficiency"]]
    assert variants == [(variant, history, concurrency) for variant in ("this", "commit", "no", "decode")
                        for history, concurrency in ((True, 1), (True, 2), (False, 2))]
    for summary in document["efficiency"]:
        assert summary["throughput_per_s"] > 0 and summary["errors"] == 0
        assert summary["gateway_cpu_ms"] > 0
        if summary["concurrency"] == 2:
            assert sum(summary["stage_cpu_ms"].values()) == pytest.approx(summary["gateway_cpu_ms"])
    assert document["profile"]["samples"] > 0
    assert (tmp_path / "bench-gateway-stacks.txt").read_text().strip()


def test_the_triton_sweep_reports_each_concurrency_with_triton_s_batch_statistics(triton_server, tmp_path: Path
                                                                                 ) -> None:
    argv = ["--url", triton_server.grpc_url, "--concurrency", "1,4", "--duration", "1", "--images", "4",
            "--out", str(tmp_path)]
    triton_sweep.main(argv)
    document = json.loads((tmp_path / "triton-sweep.json").read_text())
    assert document["version"] == "1"
    assert [step["concurrency"] for step in document["steps"]] == [1, 4]
    for step in document["steps"]:
        assert step["throughput_per_s"] > 0 and step["errors"] == 0
        assert 1.0 <= step["mean_batch"] <= 4.0, "one image per request, at most the CPU profile's batch of 4"
        assert step["compute_ms_per_execution"] > 0
    assert document["steps"][0]["mean_batch"] == pytest.approx(1.0), "alone, every request is its own batch"
    assert "--concurrency-range $c:$c" in document["perf_analyzer_command"]
    assert "| 4 |" in (tmp_path / "triton-sweep.md").read_text()
