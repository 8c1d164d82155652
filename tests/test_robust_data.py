"""Issue 10, no data lost: every byte sent before close_notify arrives, in both directions and
across half-closes; a truncation (TCP FIN without close_notify) reaches the backend as a TCP
reset, never as a clean FIN that would let a cut-short request pass for a complete one.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from certs import Issued
from proxy_helpers import Daemon, Site, free_port, launch, make_site, pattern
from robust_helpers import (
    BackendConnection,
    EngineClient,
    ScriptedBackend,
    count_access_lines,
    read_to_end,
    respond_after_eof,
    robust_config,
)

pytestmark = pytest.mark.timeout(120)

Processes = list[subprocess.Popen[bytes]]
REQUEST = pattern(11, 1_500_000)
RESPONSE = pattern(12, 2_000_000)


@pytest.fixture
def site(tmp_path: Path, test_ca: Issued) -> Site:
    return make_site(tmp_path, test_ca)


def start(site: Site, backend: ScriptedBackend, processes: Processes) -> Daemon:
    return launch(site, robust_config(site, backend.port, free_port()), processes)


@pytest.fixture
def answering() -> Iterator[ScriptedBackend]:
    with ScriptedBackend(respond_after_eof(RESPONSE)) as backend:
        yield backend


def test_client_half_close_still_receives_the_full_response(
    site: Site, answering: ScriptedBackend, processes: Processes
) -> None:
    """Request, close_notify + FIN, then the backend answers: nothing lost either way."""
    start(site, answering, processes)
    with EngineClient(site.port, ca_pem=site.ca_pem) as client:
        client.handshake()
        for offset in range(0, len(REQUEST), 100_000):  # many writes, uneven with records
            client.send(REQUEST[offset : offset + 100_000])
        client.close_notify()
        assert client.receive_to_end() == RESPONSE
        assert client.closed_clean is True
    seen = answering.wait(1)[0]
    assert seen.ended == "fin"
    assert bytes(seen.data) == REQUEST


def backend_speaks_first(sock: socket.socket, seen: BackendConnection) -> None:
    """The backend sends everything and half-closes first, then reads the client to its end."""
    sock.sendall(RESPONSE)
    sock.shutdown(socket.SHUT_WR)
    read_to_end(sock, seen)


def test_backend_half_close_first_then_the_client_keeps_sending(
    site: Site, processes: Processes
) -> None:
    with ScriptedBackend(backend_speaks_first) as backend:
        start(site, backend, processes)
        with EngineClient(site.port, ca_pem=site.ca_pem) as client:
            client.handshake()
            assert client.receive_to_end() == RESPONSE  # sealed by the proxy's close_notify
            assert client.closed_clean is True
            client.send(REQUEST)  # our direction is still open
            client.close_notify()
            assert client.sock.recv(100) == b""  # the proxy has nothing more to say
        seen = backend.wait(1)[0]
    assert seen.ended == "fin"
    assert bytes(seen.data) == REQUEST


def test_truncation_attack_reaches_the_backend_as_a_reset(site: Site, processes: Processes) -> None:
    with ScriptedBackend(read_to_end) as backend:
        start(site, backend, processes)
        with EngineClient(site.port, ca_pem=site.ca_pem) as client:
            client.handshake()
            client.send(b"DELETE /everything?confirm=")
            client.fin_without_close_notify()  # an attacker cuts the stream here
            client.receive_to_end()
            assert client.closed_clean is not True
        seen = backend.wait(1)[0]
    assert seen.ended == "reset"


def test_parallel_connections_with_half_closes_lose_nothing(
    site: Site, answering: ScriptedBackend, processes: Processes
) -> None:
    """Thirty connections at once, each its own request, every byte checked."""
    daemon = start(site, answering, processes)

    def one(index: int) -> str | None:
        request = pattern(100 + index, 50_000 + index * 997)
        try:
            with EngineClient(site.port, ca_pem=site.ca_pem, timeout=60) as client:
                client.handshake()
                client.send(request)
                client.close_notify()
                if client.receive_to_end() != RESPONSE or client.closed_clean is not True:
                    return f"{index}: {len(client.received)} bytes, clean={client.closed_clean}"
        except Exception as exc:  # reported together below
            return f"{index}: {exc!r}"
        return None

    with ThreadPoolExecutor(max_workers=30) as executor:
        failures = [f for f in executor.map(one, range(30)) if f is not None]
    assert failures == []
    requests = sorted(bytes(c.data) for c in answering.wait(30, timeout=30))
    assert requests == sorted(pattern(100 + i, 50_000 + i * 997) for i in range(30))
    daemon.wait_for_log("end=ok", count=30)
    assert count_access_lines(daemon.log(), "ok") == 30
