"""CPU time and resident memory of a target's whole process tree, read from /proc.

A terminator may be one process (the trio reference), a manager plus workers (hitch,
our daemon with ``workers > 1``) or a wrapper such as ``taskset``: we always sum over the
root pid and every live descendant, so each target is charged for all of its processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the ``(comm)`` field (which may contain spaces)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2 :].split()


def _all_parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents[int(entry)] = int(fields[1])  # field 4 of stat: ppid
    return parents


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _all_parents().items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime (fields 14 and 15 of /proc/PID/stat) summed, in seconds.

    Counts every thread of each process; children that already exited are not included,
    which is why the harness samples the tree while the target runs.
    """
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def rss_bytes(pids: Iterable[int]) -> int:
    """Resident set size summed over ``pids`` (shared pages count once per process)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * PAGE_SIZE
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


@dataclass
class TreeSample:
    """CPU and RSS of a process tree at one moment."""

    cpu: float
    rss: int
    processes: int


def sample(root: int) -> TreeSample:
    pids = process_tree(root)
    return TreeSample(cpu_seconds(pids), rss_bytes(pids), len(pids))


def core_times(cpu: int | None) -> tuple[float, float]:
    """(busy, total) jiffies of one CPU (None: all CPUs together) from /proc/stat: all
    time that was not idle/iowait."""
    prefix = "cpu " if cpu is None else f"cpu{cpu} "
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith(prefix):
                values = [float(v) for v in line.split()[1:]]
                idle = values[3] + values[4]
                total = sum(values[:8])  # guest time is already inside user time
                return total - idle, total
    raise ValueError(f"cpu{cpu} not in /proc/stat")


def core_busy(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Fraction of the interval a CPU was busy (with anything, not only our processes)."""
    elapsed = after[1] - before[1]
    return (after[0] - before[0]) / elapsed if elapsed > 0 else float("nan")


def busy_cores(before: tuple[float, float], after: tuple[float, float]) -> float:
    """How many CPUs' worth of work the whole machine did between two ``core_times(None)``
    samples (2.0 = both cores of a 2-CPU machine fully busy)."""
    return core_busy(before, after) * (os.cpu_count() or 1)


def set_nice(pids: Iterable[int], nice: int) -> None:
    """Give ``pids`` (their main threads) the scheduling priority ``nice``, and the same to
    their autogroups: with kernel.sched_autogroup_enabled the scheduler first shares the
    CPUs between sessions, so a process's own nice counts only within its session (each
    target, the backend and the generator run in sessions of their own).  Below 0 needs
    CAP_SYS_NICE.  A process that exited meanwhile is skipped."""
    for pid in pids:
        try:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
        except ProcessLookupError:
            continue
        try:
            with open(f"/proc/{pid}/autogroup", "w") as autogroup:
                autogroup.write(str(nice))
        except (FileNotFoundError, ProcessLookupError):
            continue  # no autogroups in this kernel, or the process is gone
