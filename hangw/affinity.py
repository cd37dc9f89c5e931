"""Keeping hangwd's threads on one CPU, and its CPU-heavy helper processes off it.

CPython runs the Python code of a process on one core at a time (the GIL). hangwd's reactor
thread and its store writer hand the GIL to each other many times a request: every SQLite or
socket call releases it. When the two threads run on different CPUs, each hand-over wakes a
thread on the other CPU, which costs far more than the switch itself (an inter-processor
interrupt; on a virtual machine, a trip through the hypervisor). Held on one CPU, the threads
take turns on it cheaply, and the other CPUs are left to the rest of the machine: the database
server, the head-end, TLS clients, the usage store's parsing processes.

``gateway.cpu`` chooses: ``"auto"`` (the default) pins the daemon to the CPU it started on when
it may run on more than one; a number pins it to that CPU; ``"off"`` leaves scheduling to the
kernel. The daemon pins itself first thing, so every thread it starts inherits the one CPU;
work that runs for seconds mostly outside Python (the LSE parsing processes, gpg, a bulk usage
report job's thread) is given back every CPU the daemon was allowed at start (``release``).
"""

from __future__ import annotations

import os
from collections.abc import Set

#: The CPUs this process was allowed before ``pin`` narrowed them (None: never pinned).
_allowed_before_pin: frozenset[int] | None = None

#: Can this system pin threads at all (Linux can; macOS cannot)?
SUPPORTED = hasattr(os, "sched_setaffinity")


def allowed() -> frozenset[int]:
    """The CPUs the calling thread may run on."""
    if not SUPPORTED:
        return frozenset(range(os.cpu_count() or 1))
    return frozenset(os.sched_getaffinity(0))


def current_cpu() -> int | None:
    """The CPU the process runs on at this moment (field 39 of /proc/self/stat), if known."""
    try:
        with open("/proc/self/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return int(fields[36])
    except (OSError, IndexError, ValueError):
        return None


def choose(setting: str | int, cpus: Set[int], running_on: int | None) -> int | None:
    """The CPU to pin to for ``gateway.cpu`` = ``setting``, or None to leave the kernel to it.

    ``cpus``: the CPUs allowed; ``running_on``: the CPU the daemon runs on now, if known.
    Raises ValueError for a number outside ``cpus``.
    """
    if setting == "off":
        return None
    if setting == "auto":
        if len(cpus) < 2:
            return None
        return running_on if running_on in cpus else min(cpus)
    cpu = int(setting)
    if cpu not in cpus:
        raise ValueError(
            f"CPU {cpu} is not one this process may run on "
            f"(allowed: {', '.join(map(str, sorted(cpus)))})"
        )
    return cpu


def pin(setting: str | int) -> int | None:
    """Pin every thread of the process to one CPU; threads and processes started later inherit it.

    Call it early, before the daemon starts threads of its own (libraries may have started some,
    numpy's for one: those are pinned too). Returns the CPU, or None when nothing was pinned.
    """
    global _allowed_before_pin
    cpus = allowed()
    cpu = choose(setting, cpus, current_cpu())
    if cpu is None or not SUPPORTED:
        return None
    _allowed_before_pin = cpus
    for tid in os.listdir("/proc/self/task"):  # the calling thread is one of them
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except OSError:  # a thread that ended meanwhile
            pass
    return cpu


def unpinned() -> frozenset[int]:
    """The CPUs a helper process should have: those allowed before ``pin``, else the current."""
    return _allowed_before_pin if _allowed_before_pin is not None else allowed()


def release(pid: int = 0, cpus: Set[int] | None = None) -> None:
    """Give process ``pid`` (0: the caller) ``cpus`` (default: ``unpinned()``) to run on.

    A helper that may already have exited is left alone.
    """
    if not SUPPORTED:
        return
    try:
        os.sched_setaffinity(pid, cpus if cpus is not None else unpinned())
    except OSError:  # it has exited, or may not have these CPUs: it runs where it was
        pass
