"""Issue 10, CPU protection: under a handshake flood an established connection keeps being
served, handshakes beyond ``max_concurrent_handshakes`` wait (bounded by the connection limit
and the handshake timeout), and the stateless HelloRetryRequest works through the daemon —
even with ClientHello2 arriving on a new TCP connection, which proves no state was kept.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from certs import Issued
from proxy_helpers import Site, client_context, free_port, launch, make_site, tls_exchange
from robust_helpers import (
    EngineClient,
    ScriptedBackend,
    client_hello_bytes,
    echo_script,
    metric_sum,
    robust_config,
    scrape,
    wait_metric,
)

from tls13 import ClientConfig, ClientConnection
from tls13.groups import BY_NAME as GROUPS

pytestmark = pytest.mark.timeout(150)

Processes = list[subprocess.Popen[bytes]]
FLOOD_SECONDS = 6
ECHO_BOUND = 5.0  # generous: "still served", not a latency target


@pytest.fixture
def site(tmp_path: Path, test_ca: Issued) -> Site:
    return make_site(tmp_path, test_ca)


@pytest.fixture
def echo() -> Iterator[ScriptedBackend]:
    with ScriptedBackend(echo_script) as backend:
        yield backend


def raw_hello_flood(port: int, hello: bytes, stop: threading.Event, sent: list[int]) -> None:
    """Open, send a (replayed) ClientHello, read the start of the answer, drop: each one
    costs the server a key exchange and a signature."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(hello)
                sock.recv(4096)
                sent[0] += 1
        except OSError:
            time.sleep(0.01)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_established_connection_is_served_during_a_handshake_flood(
    site: Site, echo: ScriptedBackend, processes: Processes
) -> None:
    metrics_port = free_port()
    limits = "max_concurrent_handshakes = 4\nmax_connections = 200"
    launch(site, robust_config(site, echo.port, metrics_port, limits=limits), processes)
    stop, sent = threading.Event(), [0]
    with EngineClient(site.port, ca_pem=site.ca_pem) as established:
        established.handshake()
        flooders = [
            subprocess.Popen(
                [
                    "openssl",
                    "s_time",
                    "-connect",
                    f"127.0.0.1:{site.port}",
                    "-new",
                    "-tls1_3",
                    "-time",
                    str(FLOOD_SECONDS),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            for _ in range(3)
        ]
        processes.extend(flooders)
        hello = client_hello_bytes()
        threads = [
            threading.Thread(target=raw_hello_flood, args=(site.port, hello, stop, sent))
            for _ in range(6)
        ]
        for thread in threads:
            thread.start()
        try:
            rounds = echo_during(established, FLOOD_SECONDS)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=10)
        outputs = [f.communicate(timeout=30)[0].decode() for f in flooders]
    assert rounds >= 3
    assert sent[0] > 0
    assert any("connections in" in out for out in outputs), outputs
    exposition = scrape(metrics_port)
    assert metric_sum(exposition, "tls13proxy_handshakes_total") > 10
    assert metric_sum(exposition, "tls13proxy_limit_hits_total", limit="max_concurrent_handshakes")
    # After the flood a fresh client is served as usual.
    context = client_context(site.ca_pem)
    assert tls_exchange(site.port, "a.test", context, b"after", 5) == b"after"


def echo_during(client: EngineClient, seconds: float) -> int:
    """Echo round trips for ``seconds``; each must complete within ECHO_BOUND."""
    deadline, rounds = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        payload = b"tick %d;" % rounds
        expected = len(client.received) + len(payload)
        started = time.monotonic()
        client.send(payload)
        assert client.receive_until(expected).endswith(payload)
        assert time.monotonic() - started < ECHO_BOUND
        rounds += 1
        time.sleep(0.2)
    return rounds


HRR_TLS = 'alpn = ["http/1.1"]\nstateless_hrr = true\ngroups = ["secp384r1", "secp256r1"]'


def test_stateless_retry_through_the_daemon(
    site: Site, echo: ScriptedBackend, processes: Processes
) -> None:
    metrics_port = free_port()
    launch(site, robust_config(site, echo.port, metrics_port, tls=HRR_TLS), processes)
    # Python's ssl offers an x25519 share only: the proxy must ask again (with a cookie).
    context = client_context(site.ca_pem)
    assert tls_exchange(site.port, "a.test", context, b"hrr", 3) == b"hrr"
    with EngineClient(site.port, ca_pem=site.ca_pem) as client:
        info = client.handshake()
        assert info.hello_retry and info.group == "secp384r1"
        client.send(b"retried")
        assert client.receive_until(7) == b"retried"
    assert wait_metric(metrics_port, "tls13proxy_handshakes_total", 2, hello_retry="true") == 2


def test_second_client_hello_on_a_new_connection_completes(
    site: Site, echo: ScriptedBackend, processes: Processes
) -> None:
    """Stateless retry (RFC 8446 §4.2.2): the cookie carries everything, so ClientHello2 may
    come on another TCP connection and the proxy still completes the handshake."""
    launch(site, robust_config(site, echo.port, free_port(), tls=HRR_TLS), processes)
    from cryptography import x509

    config = ClientConfig(
        ca_certificates=tuple(x509.load_pem_x509_certificates(site.ca_pem)),
        key_share_groups=(GROUPS["x25519"],),
        middlebox_compat=False,
    )
    conn = ClientConnection(config, "a.test", ("http/1.1",))
    conn.start()
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as first:
        first.sendall(conn.data_to_send())
        retry = read_record(first)
        conn.receive_data(retry)
    second_hello = conn.data_to_send()
    assert second_hello, "the proxy did not send a HelloRetryRequest"
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as second:
        second.sendall(second_hello)
        completed = None
        while completed is None:
            data = second.recv(65536)
            assert data, "the proxy closed the second connection"
            for event in conn.receive_data(data):
                if type(event).__name__ == "HandshakeComplete":
                    completed = event
            out = conn.data_to_send()
            if out:
                second.sendall(out)
        assert completed.hello_retry
        conn.send_data(b"new connection")
        second.sendall(conn.data_to_send())
        echoed = b""
        while len(echoed) < 14:
            for event in conn.receive_data(second.recv(65536)):
                echoed += getattr(event, "data", b"")
        assert echoed == b"new connection"


def read_record(sock: socket.socket) -> bytes:
    """Exactly one TLS record (the HelloRetryRequest)."""
    header = recv_exact(sock, 5)
    return header + recv_exact(sock, int.from_bytes(header[3:5], "big"))


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data
