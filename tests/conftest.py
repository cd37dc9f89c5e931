"""Shared fixtures: a running gateway on loopback with real TLS and a real SQLite file."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import structlog
from twisted.internet import reactor

from tests.gateway_harness import Harness, make_test_config, prepare_state


@pytest.fixture(autouse=True)
def logging_left_as_found() -> Any:
    """A test that configures logging (a command's main, in-process) leaves it as it found it:
    its stream is pytest's capture of that test, closed once the test ends."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


async def start_gateway(state_dir: Path, **provisioning: object) -> Harness:
    from hangw.gateway import Gateway

    config = make_test_config(state_dir, **provisioning)
    issued = prepare_state(config)
    gateway = Gateway(config, reactor)
    gateway.startService()
    api_port = (await gateway.api_service._waitingForPort).getHost().port
    ops_port = (await gateway.ops_service._waitingForPort).getHost().port
    await gateway.registry.refresh()
    running = Harness(config, gateway, api_port, ops_port, issued)
    if gateway.adapter_service is not None:
        running.adapter_port = (await gateway.adapter_service._waitingForPort).getHost().port
    return running


@pytest_twisted.async_yield_fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    running = await start_gateway(tmp_path / "state")
    yield running
    running.close()
    await running.gateway.stopService()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture(scope="session")
def tshark() -> str:
    """The tshark binary; skips without it, or fails when HANGW_REQUIRE_TSHARK is set (bin/test)."""
    path = shutil.which("tshark")
    if path is None:
        if os.environ.get("HANGW_REQUIRE_TSHARK", "0") != "0":
            pytest.fail("HANGW_REQUIRE_TSHARK is set but tshark is not installed")
        pytest.skip("tshark is not installed (bin/test installs it; HANGW_REQUIRE_TSHARK=1 fails)")
    return path


@pytest.fixture(scope="session")
def gnupg() -> None:
    """GnuPG 2.2+ is installed; skips without it, or fails when HANGW_REQUIRE_GNUPG is set."""
    if shutil.which("gpg") is None or shutil.which("gpgconf") is None:
        if os.environ.get("HANGW_REQUIRE_GNUPG", "0") != "0":
            pytest.fail("HANGW_REQUIRE_GNUPG is set but GnuPG is not installed")
        pytest.skip("GnuPG is not installed (bin/test installs it; HANGW_REQUIRE_GNUPG=1 fails)")
