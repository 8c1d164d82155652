"""Shared test fixtures: loopback ports, temporary certificates, process cleanup."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from certs import Issued, make_ca, make_leaf  # noqa: E402


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def test_ca() -> Issued:
    return make_ca()


@pytest.fixture(scope="session")
def localhost_leaf(test_ca: Issued) -> Issued:
    return make_leaf(test_ca, ("localhost", "127.0.0.1", "::1"))


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """Collects started processes and kills whatever is still running at teardown."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
