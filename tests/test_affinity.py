"""hangwd keeps its threads on one CPU (gateway.cpu) and gives its parsing processes all of them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hangw import affinity
from hangw.config import ConfigError, from_mapping, load
from tests.gateway_harness import prepare_state
from tests.test_daemon_restart import free_port, start

ALLOWED = affinity.allowed()
several_cpus = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs a machine with 2 CPUs or more")


def test_off_leaves_scheduling_to_the_kernel() -> None:
    """gateway.cpu = "off" pins nothing, however many CPUs there are."""
    assert affinity.choose("off", {0, 1, 2, 3}, 2) is None


def test_auto_on_one_cpu_pins_nothing() -> None:
    """ "auto" on a machine (or cgroup) with one CPU leaves things as they are."""
    assert affinity.choose("auto", {3}, 3) is None


def test_auto_takes_the_cpu_the_daemon_runs_on() -> None:
    """ "auto" pins to the CPU the daemon was started on, or the lowest allowed when unknown."""
    assert affinity.choose("auto", {0, 1, 2, 3}, 2) == 2
    assert affinity.choose("auto", {4, 6}, None) == 4
    assert affinity.choose("auto", {4, 6}, 5) == 4


def test_a_cpu_number_must_be_one_allowed() -> None:
    """A configured CPU is used when allowed and refused, naming the allowed ones, when not."""
    assert affinity.choose(1, {0, 1}, 0) == 1
    with pytest.raises(
        ValueError, match=r"CPU 7 is not one this process may run on \(allowed: 0, 1\)"
    ):
        affinity.choose(7, {0, 1}, 0)


@pytest.mark.parametrize("value", ["fast", -1, True, 1.5])
def test_a_wrong_cpu_setting_stops_start_up_naming_the_key(value: object) -> None:
    """gateway.cpu takes "auto", "off" or a CPU number; anything else is a configuration error."""
    with pytest.raises(ConfigError, match=r"^gateway\.cpu: "):
        from_mapping({"gateway": {"cpu": value}})


def test_cpu_setting_defaults_to_auto() -> None:
    """Without gateway.cpu the daemon pins itself when it can; a number is kept as given."""
    assert from_mapping({}).gateway.cpu == "auto"
    assert from_mapping({"gateway": {"cpu": 1}}).gateway.cpu == 1


def thread_cpus(pid: int) -> dict[str, str]:
    """Each thread of ``pid`` with the CPUs it may run on (Cpus_allowed_list of /proc)."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("Cpus_allowed_list:"))
        found[tid] = line.split(":", 1)[1].strip()
    return found


def parse_list(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def daemon_config(tmp_path: Path, cpu: str) -> Path:
    path = tmp_path / "hangw.toml"
    path.write_text(
        f'[gateway]\nstate_dir = "{tmp_path / "state"}"\ncpu = {cpu}\n'
        f"[api]\nport = {free_port()}\nops_port = {free_port()}\n"
        '[logging]\nformat = "json"\n'
    )
    prepare_state(load(path))
    return path


@pytest.mark.slow
@several_cpus
@pytest.mark.parametrize("cpu", ['"auto"', "1"])
def test_every_thread_of_hangwd_runs_on_one_cpu(tmp_path: Path, cpu: str) -> None:
    """A running hangwd has all its threads (reactor, store writer, pools) on the one chosen CPU."""
    process = start(daemon_config(tmp_path, cpu), tmp_path / "hangwd.log")
    try:
        threads = thread_cpus(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert len(threads) >= 2, threads  # the reactor and at least the store writer
    chosen = {parse_list(cpus).pop() for cpus in threads.values() if len(parse_list(cpus)) == 1}
    assert all(len(parse_list(cpus)) == 1 for cpus in threads.values()), threads
    assert len(chosen) == 1 and chosen <= ALLOWED, threads
    if cpu == "1":
        assert chosen == {1}
    assert f'"cpu": {chosen.pop()}' in (tmp_path / "hangwd.log").read_text()


@pytest.mark.slow
@several_cpus
def test_off_leaves_hangwd_on_every_cpu(tmp_path: Path) -> None:
    """With gateway.cpu = "off" hangwd's threads may run on every CPU it was given."""
    process = start(daemon_config(tmp_path, '"off"'), tmp_path / "hangwd.log")
    try:
        threads = thread_cpus(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert all(parse_list(cpus) == set(ALLOWED) for cpus in threads.values()), threads


@pytest.mark.slow
@several_cpus
def test_a_cpu_that_is_not_allowed_stops_hangwd(tmp_path: Path) -> None:
    """A CPU number the daemon may not run on stops start-up with exit 2 and says which."""
    bad = max(ALLOWED) + 1
    result = subprocess.run(
        [sys.executable, "-m", "hangw.daemon", "--config", str(daemon_config(tmp_path, str(bad)))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert f"gateway.cpu: CPU {bad} is not one this process may run on" in result.stderr


def run_probe(tmp_path: Path, script: str) -> str:
    """Run ``script`` in a Python process of its own (pinning this one would pin pytest); its
    standard output."""
    path = tmp_path / "probe.py"
    path.write_text(script)
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
@several_cpus
def test_parsing_workers_of_a_pinned_process_get_every_cpu(tmp_path: Path) -> None:
    """LSE parsing processes started by a pinned daemon run on all the CPUs it had before."""
    script = textwrap.dedent(
        """
        import json
        from hangw import affinity
        from hangw.usage.ingest import Ingest

        if __name__ == "__main__":
            before = affinity.allowed()
            affinity.pin("auto")
            assert len(affinity.allowed()) == 1
            ingest = Ingest(workers=2)
            worker = ingest._workers().submit(affinity.allowed).result(timeout=60)
            ingest.close()
            print(json.dumps([sorted(before), sorted(worker), sorted(affinity.allowed())]))
        """
    )
    result = run_probe(tmp_path, script)
    before, worker, parent = json.loads(result)
    assert len(before) >= 2 and worker == before, result
    assert len(parent) == 1, result


@pytest.mark.slow
@several_cpus
def test_a_thread_released_runs_on_every_cpu_while_the_daemon_stays_pinned(
    tmp_path: Path,
) -> None:
    """A thread that calls release() (as a bulk report job does) gets every CPU; the rest do not."""
    script = textwrap.dedent(
        """
        import json, threading
        from hangw import affinity

        before = affinity.allowed()
        affinity.pin("auto")
        seen = {}

        def job():
            affinity.release()
            seen["job"] = affinity.allowed()
            inner = threading.Thread(target=lambda: seen.update(inner=affinity.allowed()))
            inner.start()
            inner.join()

        thread = threading.Thread(target=job)
        thread.start()
        thread.join()
        print(json.dumps([sorted(before), sorted(seen["job"]), sorted(seen["inner"]),
                          sorted(affinity.allowed())]))
        """
    )
    result = run_probe(tmp_path, script)
    before, job, inner, main = json.loads(result)
    assert job == before and inner == before, result  # read-ahead threads inherit it
    assert len(main) == 1, result
