"""CPU time of the processes the benchmark started, by role, read from /proc (Linux only)."""

import os
from collections.abc import Mapping
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
