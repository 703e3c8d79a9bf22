"""py-spy over the gateway under load: where its CPU goes, from the sampled stacks (a flame graph's input)."""

import asyncio
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SAMPLES_PER_S = 100
# Samples are charged to the first group, in this order, with a frame in one of these source paths.
GROUPS = (
    ("image decode", ("gateway/images.py",)),
    ("catalog search and lookup (Qdrant engine)", ("gateway/catalog/",)),
    ("re-ranking", ("ranker/",)),
    ("history (redis-py)", ("gateway/history.py", "redis/")),
    ("Triton client", ("tritonclient/",)),
    ("metrics", ("prometheus_client/",)),
    ("pipeline, servicer, interceptor", ("gateway/",)),
    ("gRPC server", ("grpc/",)),
    ("event loop and thread hand-offs", ("asyncio/", "selectors.py", "concurrent/futures/", "threading.py")),
)

# py-spy counts these threads as running while they wait (an empty work queue, a poll with no events): a leaf frame
# here is a thread blocked in C, so its samples are left out.
IDLE_LEAVES = ("_worker (concurrent/futures/thread.py", "Thread.run (threading.py",
               "EpollSelector.select (selectors.py", "_PollLikeSelector.select (selectors.py")


@dataclass(frozen=True)
class Share:
    name: str
    share: float


@dataclass(frozen=True)
class Profile:
    """Sampled stacks of the gateway process: busy cores on average, shares by group and by leaf function."""

    samples: int
    duration_s: float
    busy_cores: float
    groups: list[Share]
    hottest_functions: list[Share]
    flame_graph_input: str


def _group(frames: list[str]) -> str:
    for name, paths in GROUPS:
        if any(path in frame for frame in frames for path in paths):
            return name
    return "other"


def summarize_stacks(collapsed: str, duration_s: float, top: int = 10) -> tuple[int, list[Share], list[Share]]:
    """(samples, share by group, share by leaf function) of py-spy's raw (collapsed-stack) output, threads waiting
    in C left out."""
    groups: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        if frames[-1].startswith(IDLE_LEAVES):
            continue
        groups[_group(frames)] += int(count)
        leaves[frames[-1]] += int(count)
    total = sum(groups.values())
    if not total:
        raise RuntimeError("py-spy recorded no samples of the gateway")
    return (total, [Share(name, count / total) for name, count in groups.most_common()],
            [Share(name, count / total) for name, count in leaves.most_common(top)])


async def record(pid: int, duration_s: int, output: Path) -> asyncio.subprocess.Process:
    """Starts py-spy on `pid` for `duration_s` seconds (without pausing it), writing collapsed stacks."""
    py_spy = Path(sys.executable).parent / "py-spy"
    return await asyncio.create_subprocess_exec(
        str(py_spy), "record", "--pid", str(pid), "--duration", str(duration_s), "--rate", str(SAMPLES_PER_S),
        "--nonblocking", "--format", "raw", "--output", str(output),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)


async def finish(process: asyncio.subprocess.Process, output: Path, duration_s: float) -> Profile:
    _, stderr = await process.communicate()
    if process.returncode != 0 or not output.exists():
        raise RuntimeError(f"py-spy failed ({process.returncode}): {stderr.decode(errors='replace').strip()}")
    samples, groups, leaves = summarize_stacks(output.read_text(), duration_s)
    return Profile(samples, duration_s, samples / SAMPLES_PER_S / duration_s, groups, leaves, str(output))
