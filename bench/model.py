"""Layer 1: the TorchScript model in-process, against the machine's measured matmul ceiling."""

import ctypes
import ctypes.util
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from tritonclient.grpc import model_config_pb2

from model_export.triton_config import ALLOCATOR_ENV, local_config, parse_config

MATMUL_SIZE = 1024
PROFILED_PASSES = 5
# glibc's mallopt parameter for each of its environment variables in ALLOCATOR_ENV.
_MALLOPT_PARAMETERS = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_MMAP_THRESHOLD_": -3}


def served_config(production: Path) -> model_config_pb2.ModelConfig:
    """The config the local tritonserver serves for the production config.pbtxt at `production`: its CPU profile,
    which every layer measures."""
    return parse_config(local_config(production.read_text()))


def served_version(model_dir: Path, requested: str = "") -> str:
    """The model version every layer measures: `requested`, or else the latest one exported under `model_dir`,
    which Triton's version policy and a new catalog serve."""
    exported = {path.parent.name for path in model_dir.glob("*/model.pt") if path.parent.name.isdigit()}
    if not exported:
        raise FileNotFoundError(f"no model exported under {model_dir}; run `make model`")
    if requested and requested not in exported:
        raise FileNotFoundError(f"version {requested} is not exported under {model_dir}; "
                                f"exported: {', '.join(sorted(exported, key=int))}")
    return requested or max(exported, key=int)


def use_serving_allocator() -> None:
    """Sets this process's glibc allocator as Triton's environment sets it (ALLOCATOR_ENV), so that the
    in-process model allocates as it does when served."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    for name, value in ALLOCATOR_ENV.items():
        if not libc.mallopt(_MALLOPT_PARAMETERS[name], int(value)):
            raise RuntimeError(f"glibc refused {name}={value}")


def serving_threads(config: model_config_pb2.ModelConfig) -> tuple[int, int]:
    """The (intra-op, inter-op) torch threads the config gives the served model."""
    def count(key: str) -> int:
        return int(config.parameters[key].string_value) if key in config.parameters else torch.get_num_threads()

    return count("INTRA_OP_THREAD_COUNT"), count("INTER_OP_THREAD_COUNT")


@dataclass(frozen=True)
class BatchThroughput:
    batch_size: int
    ms_per_batch: float
    images_per_s: float
    fraction_of_ceiling: float


@dataclass(frozen=True)
class OpShare:
    """Where a forward pass spends its time: one group of operators, its share of time and FLOPs."""

    group: str
    time_share: float
    flop_share: float
    gflops_per_s: float


@dataclass(frozen=True)
class ModelReport:
    intra_op_threads: int
    inter_op_threads: int
    gflops_per_image: float
    matmul_gflops_per_s: float
    batches: list[BatchThroughput]
    best: BatchThroughput
    ops: list[OpShare]


def matmul_gflops(repeats: int = 8) -> float:
    """Float32 matmul throughput on the current torch threads: the ceiling the model is held against."""
    a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return 2 * MATMUL_SIZE**3 / statistics.median(times) / 1e9


def _batches(pixels: np.ndarray, batch_size: int) -> list[torch.Tensor]:
    """The image set in batches of `batch_size`, wrapping around so that every batch is full."""
    count = -(-len(pixels) // batch_size) * batch_size
    cycled = pixels[np.arange(count) % len(pixels)]
    return [torch.from_numpy(cycled[start:start + batch_size]) for start in range(0, count, batch_size)]


def _op_group(name: str, shapes: list[list[int]]) -> str:
    if name == "aten::conv2d":
        weight = shapes[1]
        if weight[1] == 1 and shapes[0][1] > 1:
            return "depthwise conv"
        return "1x1 conv" if weight[2:] == [1, 1] else "full conv (stem)"
    return {"aten::pad": "SAME padding (pad)", "aten::relu6": "ReLU6", "aten::hardtanh": "ReLU6",
            "aten::relu6_": "ReLU6", "aten::hardtanh_": "ReLU6",
            "aten::add": "residual add"}.get(name, "other")


def _useful_flops(name: str, shapes: list[list[int]], flops: float) -> float:
    """The FLOPs of an operator without the zero taps of a widened kernel: an even-sized convolution kernel is
    an odd one with a leading row and column of zeros (asymmetric SAME padding, see WidenedConv2d)."""
    if name != "aten::conv2d" or len(shapes) < 2 or len(shapes[1]) != 4:
        return flops
    height, width = shapes[1][2:]
    if height % 2 or width % 2:
        return flops
    return flops * (height - 1) * (width - 1) / (height * width)


def op_breakdown(module: torch.jit.ScriptModule, batch: torch.Tensor) -> tuple[float, list[OpShare]]:
    """Useful FLOPs per image, and the time and FLOPs of forward passes grouped by kind of operator."""
    with torch.inference_mode():
        module(batch)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as profiled:
            for _ in range(PROFILED_PASSES):
                module(batch)
    events = profiled.events()
    roots = {id(event) for event in events if event.cpu_parent is None}  # the passes' "forward" frames
    top_level = [event for event in events if event.cpu_parent is not None and id(event.cpu_parent) in roots]
    time_us: dict[str, float] = {}
    flops: dict[str, float] = {}
    for event in top_level:
        group = _op_group(event.name, event.input_shapes)
        time_us[group] = time_us.get(group, 0.0) + event.cpu_time_total
        counted = sum(child.flops for child in [event, *event.cpu_children])
        flops[group] = flops.get(group, 0.0) + _useful_flops(event.name, event.input_shapes, counted)
    total_time, total_flops = sum(time_us.values()), sum(flops.values())
    shares = [OpShare(group, time_us[group] / total_time, flops[group] / total_flops,
                      flops[group] / time_us[group] / 1e3 if time_us[group] else 0.0)
              for group in sorted(time_us, key=time_us.__getitem__, reverse=True)]
    return total_flops / len(batch) / PROFILED_PASSES, shares


def bench_model(model_path: Path, pixels: np.ndarray, batch_sizes: Sequence[int], threads: tuple[int, int],
                rounds: int) -> tuple[ModelReport, np.ndarray]:
    """Images/s per batch size (median over `rounds` interleaved passes over the image set) on the served torch
    threads and allocator, FLOPs, the matmul ceiling measured between passes, and the embeddings of the image set."""
    intra_op, inter_op = threads
    torch.set_num_threads(intra_op)
    use_serving_allocator()
    module = torch.jit.load(str(model_path), map_location="cpu").eval()
    batches = {size: _batches(pixels, size) for size in batch_sizes}
    seconds: dict[int, list[float]] = {size: [] for size in batch_sizes}
    ceilings = []
    embeddings = np.empty(0)
    with torch.inference_mode():
        for size in batch_sizes:
            module(batches[size][0])  # the profiling executor specialises on the first calls of a shape
        for _ in range(rounds):
            for size in batch_sizes:
                outputs = []
                for batch in batches[size]:
                    started = time.perf_counter()
                    outputs.append(module(batch))
                    seconds[size].append(time.perf_counter() - started)
                embeddings = torch.cat(outputs)[:len(pixels)].numpy()
            ceilings.append(matmul_gflops())
    ceiling = statistics.median(ceilings)
    results = []
    for size in batch_sizes:
        per_batch = statistics.median(seconds[size])
        images_per_s = size / per_batch
        results.append((size, per_batch, images_per_s))
    best_size = max(results, key=lambda result: result[2])[0]
    flops_per_image, ops = op_breakdown(module, batches[best_size][0])
    throughputs = [BatchThroughput(size, per_batch * 1000, images_per_s,
                                   images_per_s * flops_per_image / 1e9 / ceiling)
                   for size, per_batch, images_per_s in results]
    best = max(throughputs, key=lambda result: result.images_per_s)
    report = ModelReport(intra_op, inter_op, flops_per_image / 1e9, ceiling, throughputs, best, ops)
    return report, embeddings
