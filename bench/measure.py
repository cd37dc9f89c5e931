"""What the benchmarks share: a free port, hangw-sim, progress lines, CPU time used.

Imports no reactor: a benchmark installs the asyncio reactor first, as hangwd does.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from twisted.internet.task import deferLater

ROOT = Path(__file__).resolve().parent.parent


def start_hangw_sim(
    adapter_port: int, cert_dir: Path, tdsp_duns: str, log_path: Path, *options: str
) -> subprocess.Popen[bytes]:
    """hangw-sim dialling the adapter port on loopback as ``demo-tdsp`` (its certificate from
    ``cert_dir``), ``options`` after those; its output goes to ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "simulators.headend",
                "--gateway",
                f"127.0.0.1:{adapter_port}",
                "--cert-dir",
                str(cert_dir),
                "--party",
                "demo-tdsp",
                "--tdsp-duns",
                tdsp_duns,
                *options,
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Progress:
    """Prints a line each time another tenth of ``count`` is done."""

    def __init__(self, what: str, count: int) -> None:
        self.what = what
        self.count = count
        self.tenth = 1

    def update(self, done: int, detail: str = "") -> None:
        if done * 10 >= self.tenth * self.count:
            self.tenth = done * 10 // self.count + 1
            print(f"  {self.what}: {done:,} of {self.count:,}{detail}", flush=True)


async def wait_exit(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait for a child process without blocking the reactor; kill it after ``timeout``."""
    from twisted.internet import reactor  # the one the benchmark installed

    deadline = time.monotonic() + timeout
    while process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
        await deferLater(reactor, 0.05)


def _cpu_seconds(stat_path: str) -> float:
    """utime + stime of a process or thread, from its /proc stat file (Linux); nan elsewhere."""
    try:
        fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (user, nice, system, irq, softirq, steal)."""
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU time used during a window by named threads or processes, and by the rest of the machine.

    ``parts`` maps a name to a /proc stat file; ``processes`` are the whole processes of the run
    (this one and its child), subtracted from the machine's busy time to tell what other
    programs took: on a shared machine they slow both measurements unevenly.
    """

    def __init__(self, parts: dict[str, str], processes: list[str]) -> None:
        self.parts = parts
        self.processes = processes
        self._start = self._sample()
        self._started_at = time.perf_counter()

    def _sample(self) -> tuple[list[float], float, float]:
        return (
            [_cpu_seconds(path) for path in self.parts.values()],
            sum(_cpu_seconds(path) for path in self.processes),
            _machine_busy_seconds(),
        )

    def used(self) -> dict[str, float]:
        """CPU seconds each part has used since the meter was made."""
        now = [_cpu_seconds(path) for path in self.parts.values()]
        started = self._start[0]
        return {
            name: end - start for name, start, end in zip(self.parts, started, now, strict=True)
        }

    def report(self) -> str:
        parts, ours, machine = self._sample()
        elapsed = time.perf_counter() - self._started_at
        used = [
            f"{name} {end - start:.1f} s"
            for name, start, end in zip(self.parts, self._start[0], parts, strict=True)
        ]
        other = (machine - self._start[2]) - (ours - self._start[1])
        line = f"  CPU in {elapsed:.1f} s: " + ", ".join(used)
        line += f"; other programs on this machine {other:.1f} s ({other / elapsed:.2f} cores)"
        if other / elapsed > 0.25:
            line += "\n  warning: other programs were busy meanwhile; the rates are lower than on"
            line += " a quiet machine"
        return line
