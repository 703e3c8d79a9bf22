"""CPU time of the processes the benchmark started, by role, and the cores they run on (Linux only)."""

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
CLIENT_ROLE = "load client"

ProcessStats = dict[int, tuple[str, int, float]]


def _stat(pid: int) -> tuple[str, int, float]:
    """(command name, parent pid, user + system CPU seconds) of a live process."""
    text = Path(f"/proc/{pid}/stat").read_text()
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return name, int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def _live() -> ProcessStats:
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = _stat(int(entry.name))
            except (OSError, ValueError, IndexError):  # exited while we read
                continue
    return stats


def child_pid(command: str) -> int:
    """The pid of this process's child running `command` (its name as the kernel shows it)."""
    me = os.getpid()
    found = [pid for pid, (name, parent, _) in _live().items() if parent == me and name == command]
    if len(found) != 1:
        raise RuntimeError(f"expected one child process named {command!r}, found {len(found)}")
    return found[0]


def _role(pid: int, roles: Mapping[int, str], stats: ProcessStats) -> str | None:
    """The role of the nearest ancestor (or the process itself) listed in roles; None if none is."""
    while pid in stats:
        if pid in roles:
            return roles[pid]
        pid = stats[pid][1]
    return None


def cpu_seconds_by_role(roles: Mapping[int, str]) -> dict[str, float]:
    """CPU seconds used so far by this process and its descendants, summed by role.

    A process counts for its nearest listed ancestor (Triton's python-backend stubs count for
    tritonserver); this process and unlisted children count as the load client.
    """
    stats = _live()
    roles = {os.getpid(): CLIENT_ROLE, **roles}
    totals: dict[str, float] = {}
    for pid, (_, _, cpu_s) in stats.items():
        if (role := _role(pid, roles, stats)) is not None:
            totals[role] = totals.get(role, 0.0) + cpu_s
    return totals


@dataclass(frozen=True)
class Placement:
    """Which cores Triton gets, and which the gateway, Redis and the load client get."""

    name: str
    triton_cpus: frozenset[int]
    other_cpus: frozenset[int]


def placements() -> list[Placement]:
    """"split" (Triton on the upper half of this process's cores, the rest on the lower half, as when Triton
    runs on machines of its own) when there are two cores or more, then "shared" (everything on every core)."""
    cpus = sorted(os.sched_getaffinity(0))
    shared = Placement("shared", frozenset(cpus), frozenset(cpus))
    if len(cpus) < 2:
        return [shared]
    half = len(cpus) // 2
    return [Placement("split", frozenset(cpus[half:]), frozenset(cpus[:half])), shared]


def place(placement: Placement, triton_pid: int) -> None:
    """Pins this process and everything it started to `other_cpus`, then Triton and its children to
    `triton_cpus`; every thread of each process, so that threads started later inherit it."""
    _pin_tree(os.getpid(), placement.other_cpus)
    _pin_tree(triton_pid, placement.triton_cpus)


def _pin_tree(root: int, cpus: frozenset[int]) -> None:
    stats = _live()
    for pid in stats:
        if _role(pid, {root: ""}, stats) is not None:
            with contextlib.suppress(OSError):  # the thread or process ended meanwhile
                for task in Path(f"/proc/{pid}/task").iterdir():
                    os.sched_setaffinity(int(task.name), cpus)
