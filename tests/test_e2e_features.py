"""End to end, continued: resumption across workers, 0-RTT per route, client certificates per
route, health checks and Unix-socket backends, reload that adds a listener, metrics."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from certs import Issued, make_leaf, write_pair
from proxy_helpers import (
    Site,
    ThreadedEcho,
    client_context,
    config_text,
    free_port,
    launch,
    make_site,
    pool,
    recv_exactly,
    tls_exchange,
)

from proxy.workers import REPLAY_WINDOW

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def site(tmp_path: Path, test_ca: Issued) -> Site:
    return make_site(tmp_path, test_ca)


ROUTES_AB = """
[routes.a]
server_names = ["a.test"]
pool = "pa"
{a_extra}

[routes.b]
server_names = ["b.test"]
pool = "pb"
{b_extra}
"""


def resumed_exchange(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[bool, ssl.SSLSession | None]:
    """One echo round trip; returns whether the session was resumed and the newest session."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw, server_hostname="a.test", session=session) as tls:
        tls.sendall(b"r")
        assert recv_exactly(tls, 1) == b"r"
        return tls.session_reused, tls.session


def test_session_tickets_resume_across_workers(site: Site, processes: list) -> None:
    with ThreadedEcho() as echo:
        routes = '[routes.all]\ndefault = true\npool = "p"\n'
        text = config_text(site, routes, pool("p", [echo.port]), extra="workers = 2")
        daemon = launch(site, text, processes)
        daemon.wait_for_log("accepting on", count=2)  # both workers serve
        context = client_context(site.ca_pem)
        reused, session = resumed_exchange(site.port, context, None)
        assert not reused and session is not None and session.has_ticket
        # SO_REUSEPORT spreads connections over both workers by their source port: with 12
        # fresh connections both workers are all but certain to be hit.
        results = [resumed_exchange(site.port, context, session)[0] for _ in range(12)]
        assert all(results), results
        daemon.wait_for_log("resumed=true", count=12)


def openssl_session(site: Site, server_name: str, session_file: Path) -> None:
    """Full handshake with openssl s_client, saving the session ticket to ``session_file``."""
    command = [
        "openssl", "s_client", "-connect", f"127.0.0.1:{site.port}", "-servername", server_name,
        "-tls1_3", "-quiet", "-no_ign_eof", "-sess_out", str(session_file),
    ]  # fmt: skip
    client = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write(b"full\n")
    client.stdin.flush()
    assert client.stdout.read(5) == b"full\n"
    client.stdin.close()
    client.wait(timeout=10)


def openssl_early(site: Site, server_name: str, session_file: Path, data: Path) -> bytes:
    """Resume offering ``data`` as 0-RTT early data, then send ``late`` normally; return
    what came back (the early bytes are only sent if the session allows 0-RTT)."""
    command = [
        "openssl", "s_client", "-connect", f"127.0.0.1:{site.port}", "-servername", server_name,
        "-tls1_3", "-quiet", "-no_ign_eof", "-sess_in", str(session_file),
        "-early_data", str(data),
    ]  # fmt: skip
    client = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert client.stdout is not None and client.stdin is not None
    client.stdin.write(b"late\n")
    client.stdin.flush()
    echoed = b""
    while not echoed.endswith(b"late\n"):
        chunk = client.stdout.read1(100)
        if not chunk:
            break
        echoed += chunk
    client.stdin.close()
    client.wait(timeout=10)
    return echoed


def test_early_data_reaches_only_routes_that_allow_it(site: Site, processes: list) -> None:
    with ThreadedEcho(proxy_header=True) as allowed, ThreadedEcho(proxy_header=True) as denied:
        routes = ROUTES_AB.format(a_extra="early_data = true", b_extra="")
        backends = pool("pa", [allowed.port], "proxy_protocol = 2") + pool(
            "pb", [denied.port], "proxy_protocol = 2"
        )
        text = config_text(site, routes, backends, tls="max_early_data = 16384")
        daemon = launch(site, text, processes)
        data = site.root / "early.txt"
        data.write_bytes(b"early!\n")
        sessions = {name: site.root / f"{name}.session" for name in ("a.test", "b.test")}
        for name, session in sessions.items():
            openssl_session(site, name, session)
        assert openssl_early(site, "a.test", sessions["a.test"], data) == b"early!\nlate\n"
        # b.test's tickets do not allow 0-RTT, so the client sends its data after the handshake.
        assert openssl_early(site, "b.test", sessions["b.test"], data) == b"late\n"
        daemon.wait_for_log("resumed=true", count=2)
        log = daemon.log()
        assert "sni=a.test" in log and "sni=b.test" in log
        lines = [line for line in log.splitlines() if "resumed=true" in line]
        assert any("sni=a.test" in line and "early_data=true" in line for line in lines), log
        assert all("early_data=false" in line for line in lines if "sni=b.test" in line), log
        # The 0-RTT marker TLV (tls13-proxy custom type) only on the route that allows it,
        # sent before the handshake finished: the SSL TLV has the version but no cipher yet.
        early = [h["tlvs"] for h in allowed.headers if 0xE0 in h["tlvs"]]  # type: ignore[operator]
        assert len(early) == 1, allowed.headers
        assert early[0][0x02] == b"a.test" and b"TLSv1.3" in early[0][0x20]  # type: ignore[index]
        assert b"TLS_AES" not in early[0][0x20]  # type: ignore[index]
        assert not any(0xE0 in h["tlvs"] for h in denied.headers)  # type: ignore[operator]


def test_route_requiring_client_certificate(site: Site, processes: list) -> None:
    (site.root / "ca.pem").write_bytes(site.ca_pem)
    client_leaf = make_leaf(site.ca, ("client.test",), client=True)
    cert, key = write_pair(site.root, "client", client_leaf)
    with ThreadedEcho(b"A") as a, ThreadedEcho(b"B") as b:
        routes = ROUTES_AB.format(a_extra="client_certificate_required = true", b_extra="")
        text = config_text(site, routes, pool("pa", [a.port]) + pool("pb", [b.port]))
        text = text.replace(
            "[listeners.main]\n",
            '[listeners.main]\nclient_auth = "optional"\nclient_ca = "ca.pem"\n',
        )
        daemon = launch(site, text, processes)
        anonymous = client_context(site.ca_pem)
        assert tls_exchange(site.port, "b.test", anonymous, b"x", 2) == b"Bx"
        with pytest.raises((ssl.SSLError, OSError, AssertionError)):
            assert tls_exchange(site.port, "a.test", anonymous, b"x", 2) == b"Ax"
        authenticated = client_context(site.ca_pem)
        authenticated.load_cert_chain(cert, key)
        assert tls_exchange(site.port, "a.test", authenticated, b"x", 2) == b"Ax"
        daemon.wait_for_log("end=client_certificate_required")
        daemon.wait_for_log("client_cn=")


@pytest.fixture
def unix_echo(tmp_path: Path) -> Iterator[Path]:
    """A raw echo server on a Unix socket, tagged U."""
    path = tmp_path / "echo.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(64)
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=echo_one, args=(conn,), daemon=True).start()

    def echo_one(conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(b"U")
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass  # health checks connect and leave at once

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    stop.set()
    thread.join(timeout=5)
    server.close()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def scrape_until(port: int, needed: str, timeout: float = 30.0) -> str:
    """Scrape until ``needed`` shows: the daemon logs a refusal before it counts it."""
    deadline = time.monotonic() + timeout
    while True:
        exposition = scrape(port)
        if needed in exposition or time.monotonic() > deadline:
            return exposition
        time.sleep(0.05)


def test_health_checks_unix_backend_and_empty_pool(
    site: Site, processes: list, unix_echo: Path
) -> None:
    metrics_port = free_port()
    dead_tcp = free_port()
    health = "health = { interval = 0.5, timeout = 0.3, fall = 1, rise = 1 }"
    backends = f"""
[backends.pa]
servers = ["127.0.0.1:{dead_tcp}", "unix:{unix_echo}"]
connect_timeout = 1.0
{health}

[backends.pb]
servers = ["127.0.0.1:{dead_tcp}"]
connect_timeout = 1.0
{health}
"""
    routes = ROUTES_AB.format(a_extra="", b_extra="")
    text = config_text(site, routes, backends).replace(
        "[metrics]\nenabled = false", f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"'
    )
    daemon = launch(site, text, processes)
    daemon.wait_for_log("is now DOWN", count=2)
    context = client_context(site.ca_pem)
    for _ in range(6):  # the dead server is skipped: no failed attempt, no delay
        assert tls_exchange(site.port, "a.test", context, b"u", 2) == b"Uu"
    with pytest.raises((ssl.SSLError, OSError, AssertionError)):
        assert tls_exchange(site.port, "b.test", context, b"x", 1) == b"x"
    # Refused because no server is healthy (reason no_backend below), not after a failed
    # connect attempt to the dead server.
    daemon.wait_for_log("no healthy backend server")
    refused = 'tls13proxy_connections_rejected_total{listener="main",reason="no_backend"} 1.0'
    exposition = scrape_until(metrics_port, refused)
    assert refused in exposition
    assert 'tls13proxy_backend_up{pool="pb",server="127.0.0.1:' in exposition
    daemon.wait_for_log("end=ok", count=6)


def test_reload_adds_listener_and_keeps_serving(site: Site, processes: list) -> None:
    with ThreadedEcho() as echo:
        routes = '[routes.all]\ndefault = true\npool = "p"\n'
        text = config_text(site, routes, pool("p", [echo.port]))
        daemon = launch(site, text, processes)
        context = client_context(site.ca_pem)
        second = free_port()
        daemon.config_path.write_text(
            text + f'\n[listeners.extra]\naddresses = ["127.0.0.1:{second}"]\n'
        )
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_log("configuration reloaded")
        assert tls_exchange(second, "a.test", context, b"new", 3) == b"new"
        assert tls_exchange(site.port, "a.test", context, b"old", 3) == b"old"


def test_sighup_in_worker_mode_swaps_certificate(site: Site, processes: list) -> None:
    from cryptography import x509

    with ThreadedEcho() as echo:
        routes = '[routes.all]\ndefault = true\npool = "p"\n'
        text = config_text(site, routes, pool("p", [echo.port]), extra="workers = 2")
        daemon = launch(site, text, processes)
        daemon.wait_for_log("accepting on", count=2)
        new = make_leaf(site.ca, ("a.test",))
        write_pair(site.root, "a", new, site.ca)
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_log("configuration reloaded", count=2)
        context = client_context(site.ca_pem)
        for _ in range(6):
            raw = socket.create_connection(("127.0.0.1", site.port), timeout=10)
            with context.wrap_socket(raw, server_hostname="a.test") as tls:
                serial = x509.load_der_x509_certificate(tls.getpeercert(True)).serial_number
            assert serial == new.cert.serial_number


def test_worker_mode_reload_with_new_listener_replaces_workers(site: Site, processes: list) -> None:
    with ThreadedEcho() as echo:
        routes = '[routes.all]\ndefault = true\npool = "p"\n'
        # The old workers must still be draining when the new generation is up, however long
        # the new workers take to start on a loaded machine.
        text = config_text(
            site, routes, pool("p", [echo.port]), extra="workers = 2", drain_timeout=60.0
        )
        daemon = launch(site, text, processes)
        daemon.wait_for_log("accepting on", count=2)
        context = client_context(site.ca_pem)
        raw = socket.create_connection(("127.0.0.1", site.port), timeout=10)
        with context.wrap_socket(raw, server_hostname="a.test") as old:
            old.sendall(b"1")
            assert recv_exactly(old, 1) == b"1"
            second = free_port()
            daemon.config_path.write_text(
                text + f'\n[listeners.extra]\naddresses = ["127.0.0.1:{second}"]\n'
            )
            daemon.signal(signal.SIGHUP)
            daemon.wait_for_log("started a new generation of workers")
            daemon.wait_for_log("accepting on", count=6)  # 2 new workers x 2 listeners
            # The old worker drains: its established connection still works.
            old.sendall(b"2")
            assert recv_exactly(old, 1) == b"2"
        assert tls_exchange(second, "a.test", context, b"new", 3) == b"new"
        assert tls_exchange(site.port, "a.test", context, b"old", 3) == b"old"
        assert daemon.stop() == 0


def test_ipv4_and_ipv6_listeners_with_their_own_tls_settings(site: Site, processes: list) -> None:
    v6_port = free_port("::1")
    with ThreadedEcho() as echo:
        routes = '[routes.all]\ndefault = true\npool = "p"\n'
        text = (
            config_text(site, routes, pool("p", [echo.port]))
            + f"""
[listeners.v6]
addresses = ["[::1]:{v6_port}"]

[listeners.v6.tls]
cipher_suites = ["TLS_CHACHA20_POLY1305_SHA256"]
alpn = ["h2"]
"""
        )
        launch(site, text, processes)
        v4 = client_context(site.ca_pem, ["h2", "http/1.1"])
        raw = socket.create_connection(("127.0.0.1", site.port), timeout=10)
        with v4.wrap_socket(raw, server_hostname="a.test") as tls:
            assert tls.cipher()[0] == "TLS_AES_128_GCM_SHA256"
            assert tls.selected_alpn_protocol() == "http/1.1"
        raw = socket.create_connection(("::1", v6_port), timeout=10)
        with v4.wrap_socket(raw, server_hostname="a.test") as tls:
            assert tls.cipher()[0] == "TLS_CHACHA20_POLY1305_SHA256"
            assert tls.selected_alpn_protocol() == "h2"
            tls.sendall(b"six")
            assert recv_exactly(tls, 3) == b"six"


def early_data_outcomes(site: Site, session: Path, data: Path, attempts: int) -> list[bool]:
    """0-RTT with one ticket ``attempts`` times: whether each attempt's early data was
    accepted, for the attempts that surely reached the daemon within REPLAY_WINDOW of the
    first. The strike register keeps a ticket that long (RFC 8446 §8.2), so only those
    say anything about replays; a loaded machine can take longer for a few s_client runs.
    """
    first_sent = time.monotonic()
    outcomes: list[bool] = []
    for _ in range(attempts):
        echoed = openssl_early(site, "a.test", session, data)
        assert echoed in (b"early!\nlate\n", b"late\n"), echoed
        if time.monotonic() - first_sent < REPLAY_WINDOW:  # a prefix of the attempts
            outcomes.append(echoed == b"early!\nlate\n")
    return outcomes


def test_0rtt_ticket_is_single_use_across_workers(site: Site, processes: list) -> None:
    """The strike register is shared: re-using a ticket's 0-RTT is refused on any worker."""
    with ThreadedEcho() as echo:
        routes = '[routes.all]\ndefault = true\npool = "p"\nearly_data = true\n'
        text = config_text(
            site, routes, pool("p", [echo.port]), extra="workers = 2", tls="max_early_data = 16384"
        )
        daemon = launch(site, text, processes)
        daemon.wait_for_log("accepting on", count=2)
        session = site.root / "a.session"
        data = site.root / "early.txt"
        data.write_bytes(b"early!\n")
        resumed = 0
        for _ in range(3):  # a fresh ticket per round, until a round had replays to judge
            openssl_session(site, "a.test", session)
            outcomes = early_data_outcomes(site, session, data, attempts=6)
            resumed += 6
            if len(outcomes) >= 2:
                break
        assert len(outcomes) >= 2, "no replay within the window in three rounds"
        # The same ticket over both workers (SO_REUSEPORT spreads them by source port).
        assert outcomes[0] and not any(outcomes[1:]), outcomes
        daemon.wait_for_log("resumed=true", count=resumed)
