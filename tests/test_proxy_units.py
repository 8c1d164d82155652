"""Unit tests of the proxy building blocks that need no TLS: routing, self-signed default,
demo backend parsing, backend address parsing and selection, health-check state changes."""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509

from proxy import selfsigned
from proxy.backends import BackendPool, BackendUnavailable, NoHealthyBackend, PoolOptions
from proxy.demo import HTTPError, parse_head, render_page, serve_demo
from proxy.health import HealthChecker, HealthCheckOptions, _status_ok, check_server
from proxy.routing import Route, RouteTable
from proxy.settings import BackendAddress
from proxy.tlsstream import connect_tcp

# -- routing ------------------------------------------------------------------------------


def make_table(default: bool = True) -> RouteTable:
    return RouteTable(
        [
            Route("api-h2", "h2pool", ("api.example.com",), ("h2",)),
            Route("api", "api", ("api.example.com", "API2.example.com.")),
            Route("wild", "wild", ("*.example.com",)),
            Route("echo", "echo", ("echo.test",), ("echo/1",)),
        ],
        Route("default", "fallback") if default else None,
    )


def test_exact_name_beats_wildcard_and_is_case_insensitive() -> None:
    table = make_table()
    assert table.match("API.example.com", None).pool == "api"  # type: ignore[union-attr]
    assert table.match("api2.example.com", None).pool == "api"  # type: ignore[union-attr]
    assert table.match("www.example.com", None).pool == "wild"  # type: ignore[union-attr]


def test_wildcard_matches_one_label_only() -> None:
    table = make_table()
    assert table.match("a.b.example.com", None).pool == "fallback"  # type: ignore[union-attr]
    assert table.match("example.com", None).pool == "fallback"  # type: ignore[union-attr]


def test_alpn_selects_route_within_name() -> None:
    table = make_table()
    assert table.match("api.example.com", "h2").pool == "h2pool"  # type: ignore[union-attr]
    assert table.match("api.example.com", "http/1.1").pool == "api"  # type: ignore[union-attr]
    # ALPN-only route for a name with no ALPN-free route falls through to the default.
    assert table.match("echo.test", "echo/1").pool == "echo"  # type: ignore[union-attr]
    assert table.match("echo.test", None).pool == "fallback"  # type: ignore[union-attr]


def test_unknown_name_without_default() -> None:
    table = make_table(default=False)
    assert table.match("other.org", None) is None
    assert not table.knows_name("other.org")
    assert not table.knows_name(None)
    assert table.knows_name("x.example.com")
    assert table.alpn_protocols() == ("h2", "echo/1")


# -- self-signed default certificate ------------------------------------------------------


def test_selfsigned_generated_once_and_reused(tmp_path: Path) -> None:
    first = selfsigned.ensure_self_signed(tmp_path / "state")
    cert_bytes = first.cert.read_bytes()
    assert os.stat(first.key).st_mode & 0o777 == 0o600
    second = selfsigned.ensure_self_signed(tmp_path / "state")
    assert second.cert.read_bytes() == cert_bytes
    cert = x509.load_pem_x509_certificate(cert_bytes)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)


def test_selfsigned_regenerated_near_expiry_or_when_corrupt(tmp_path: Path) -> None:
    paths = selfsigned.ensure_self_signed(tmp_path)
    original = paths.cert.read_bytes()
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=340)
    selfsigned.ensure_self_signed(tmp_path, now=later)
    renewed = paths.cert.read_bytes()
    assert renewed != original
    paths.key.write_bytes(b"garbage")
    selfsigned.ensure_self_signed(tmp_path)
    assert paths.cert.read_bytes() != renewed


def test_selfsigned_regenerated_for_new_names(tmp_path: Path) -> None:
    paths = selfsigned.ensure_self_signed(tmp_path)
    original = paths.cert.read_bytes()
    selfsigned.ensure_self_signed(tmp_path, names=("localhost", "demo.internal"))
    assert paths.cert.read_bytes() != original


# -- demo backend -------------------------------------------------------------------------


def test_demo_parses_and_renders() -> None:
    request = parse_head(b"GET /x HTTP/1.1\r\nHost: a\r\nAccept: text/plain\r\n\r\n")
    assert request.keep_alive
    body, kind = render_page({"TLS version": "TLSv1.3", "SNI": "<a>"}, request)
    assert kind.startswith("text/plain") and b"TLS version: TLSv1.3" in body
    html_request = parse_head(b"GET / HTTP/1.0\r\n\r\n")
    assert not html_request.keep_alive
    body, kind = render_page({"SNI": "<a>"}, html_request)
    assert kind.startswith("text/html") and b"&lt;a&gt;" in body


@pytest.mark.parametrize(
    "head,status",
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nbad\r\n\r\n", 400),
    ],
)
def test_demo_rejects_malformed(head: bytes, status: int) -> None:
    with pytest.raises(HTTPError) as info:
        parse_head(head)
    assert info.value.status == status


# -- backends -----------------------------------------------------------------------------


def pool_of(n: int, balance: str = "round_robin", clock: list[float] | None = None) -> BackendPool:
    now = clock or [0.0]
    addresses = [BackendAddress("tcp", "127.0.0.1", 1000 + i) for i in range(n)]
    return BackendPool(
        "p",
        addresses,
        PoolOptions(balance=balance, max_fails=2, eject_seconds=10),  # type: ignore[arg-type]
        clock=lambda: now[0],
    )


def test_round_robin_rotates() -> None:
    pool = pool_of(3)
    firsts = [pool.pick_order()[0].address.port for _ in range(6)]
    assert firsts == [1000, 1001, 1002, 1000, 1001, 1002]


def test_least_connections_prefers_idle() -> None:
    pool = pool_of(3, "least_connections")
    pool.servers[0].active = 5
    pool.servers[1].active = 1
    assert [pool.pick_order()[0].address.port for _ in range(3)] == [1002] * 3


def test_passive_ejection_and_return() -> None:
    clock = [100.0]
    pool = pool_of(2, clock=clock)
    bad = pool.servers[0]
    pool.record_failure(bad, "refused")
    assert bad in pool.usable_servers()
    pool.record_failure(bad, "refused")
    assert pool.usable_servers() == [pool.servers[1]]
    clock[0] += 11
    assert bad in pool.usable_servers()


def test_health_rise_fall() -> None:
    pool = pool_of(1)
    changes: list[bool] = []
    checker = HealthChecker(
        pool, HealthCheckOptions(rise=2, fall=2), lambda p, s, up: changes.append(up)
    )
    server = pool.servers[0]
    for ok in (False, True, False, False, True, True):
        checker.observe(server, ok)
    assert changes == [False, True]
    assert server.healthy


def test_http_status_check() -> None:
    assert _status_ok(b"HTTP/1.1 204 No Content", (200, 399))
    assert not _status_ok(b"HTTP/1.1 503 Unavailable", (200, 399))
    assert not _status_ok(b"SSH-2.0-OpenSSH", (200, 399))


def test_no_healthy_backend_fails_fast() -> None:
    pool = pool_of(2)
    for server in pool.servers:
        server.healthy = False

    async def attempt() -> None:
        with trio.fail_after(1):
            with pytest.raises(NoHealthyBackend):
                await pool.connect()

    trio.run(attempt)


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _fill_backlog(listener: socket.socket) -> list[socket.socket]:
    """Make ``listener`` a server that never answers: listen(0) and never accept, then fill
    its accept queue, so the kernel drops every later SYN (the client retransmits, waiting)."""
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    held = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        held.append(filler)
    return held


def test_connect_tcp_connects_refuses_and_times_out() -> None:
    """The backend connect: a connect the kernel finished inline is usable at once, a refusal
    is the errno's OSError, and a SYN nobody answers ends in TooSlowError at the timeout."""

    async def main() -> None:
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(8)
            stream = await connect_tcp(socket.AF_INET, server.getsockname(), 5.0)
            peer, _ = server.accept()
            with peer:
                await stream.send_all(b"ping")
                assert peer.recv(4) == b"ping"
            await stream.aclose()
        with pytest.raises(ConnectionRefusedError):
            await connect_tcp(socket.AF_INET, ("127.0.0.1", _closed_port()), 5.0)
        with socket.socket() as full:
            held = _fill_backlog(full)
            started = trio.current_time()
            with pytest.raises(trio.TooSlowError):
                await connect_tcp(socket.AF_INET, full.getsockname(), 0.3)
            assert trio.current_time() - started >= 0.3
            for sock in held:
                sock.close()

    trio.run(main)


def test_pool_counts_a_connect_timeout_as_a_failure() -> None:
    """A timed-out attempt moves to the next server and is reported as a connect timeout."""

    async def main() -> None:
        with socket.socket() as full:
            held = _fill_backlog(full)
            port = full.getsockname()[1]
            pool = BackendPool(
                "slow",
                [BackendAddress("tcp", "127.0.0.1", port)],
                PoolOptions(connect_timeout=0.2, retries=0, max_fails=0),
            )
            with pytest.raises(BackendUnavailable, match="connect timeout"):
                await pool.connect()
            assert pool.servers[0].active == 0
            for sock in held:
                sock.close()

    trio.run(main)


def test_demo_serves_keep_alive_head_and_close_over_a_stream() -> None:
    async def main() -> None:
        ours, theirs = trio.testing.memory_stream_pair()
        info = {"TLS version": "TLSv1.3", "SNI": "demo.test"}

        async def backend() -> None:
            async with theirs:  # as the in-process wrapper does: close when the demo returns
                await serve_demo(theirs, info)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend)
            await ours.send_all(
                b"GET /a HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n"
                b"HEAD /b HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
            )
            received = b""
            with trio.fail_after(5):
                while chunk := await ours.receive_some(65536):
                    received += chunk
        responses = received.split(b"HTTP/1.1 200 OK")
        assert len(responses) == 4  # three responses, then the server closed
        assert b"TLS version: TLSv1.3" in responses[1] and b"SNI: demo.test" in responses[1]
        assert responses[2].endswith(b"\r\n\r\n")  # HEAD: headers only
        assert b"Connection: close" in responses[3] and b"<h1>" in responses[3]

    trio.run(main)


def test_http_health_check_against_real_servers() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    def server(status: int) -> ThreadingHTTPServer:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        return httpd

    good, bad = server(200), server(503)
    addresses = [BackendAddress("tcp", "127.0.0.1", s.server_address[1]) for s in (good, bad)]
    pool = BackendPool("h", addresses, PoolOptions())
    opts = HealthCheckOptions(http_path="/health", expect_status=(200, 200), timeout=2)

    async def main() -> list[bool]:
        return [await check_server(pool, server, opts) for server in pool.servers]

    try:
        assert trio.run(main) == [True, False]
    finally:
        for httpd in (good, bad):
            httpd.shutdown()
            httpd.server_close()


def test_worker_keyring_follows_the_supervisors_rotation() -> None:
    from proxy.tlsconfig import adopt_keys, keyring_from_text, keyring_to_text
    from tls13 import TicketKeyring

    parent = TicketKeyring.generate()
    worker = keyring_from_text(keyring_to_text(parent))
    old_ticket = worker.seal(b"issued before rotation")
    parent.rotate()
    adopt_keys(worker, keyring_to_text(parent))
    assert worker.current_name == parent.current_name
    assert worker.names == parent.names
    assert worker.open(parent.seal(b"state")) == b"state"  # sealed by another worker
    assert parent.open(old_ticket) == b"issued before rotation"  # previous key still opens
    adopt_keys(worker, keyring_to_text(parent))  # repeated message: no change
    assert worker.names == parent.names


def test_reload_keeps_the_0rtt_strike_register(tmp_path: Path) -> None:
    from proxy.backends import InProcessBackends
    from proxy.daemon import DaemonObserver, build_generation
    from proxy.settings import load_settings_text
    from proxy.tlsconfig import make_keyring

    text = f"""
[global]
state_dir = "{tmp_path}"
[tls]
max_early_data = 4096
[certificates.c]
self_signed = true
[listeners.l]
addresses = ["127.0.0.1:1"]
[routes.r]
default = true
pool = "p"
early_data = true
[backends.p]
servers = ["demo"]
health = {{ enabled = false }}
"""
    settings = load_settings_text(text, "test", tmp_path)
    keys = make_keyring(settings)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            backends = InProcessBackends(nursery)
            observer = DaemonObserver(None)
            first = build_generation(settings, backends, observer, keys)
            second = build_generation(settings, backends, observer, keys, previous=first)
            fresh = build_generation(settings, backends, observer, keys)
        register = first.replay_register("l")
        assert register is not None
        assert second.replay_register("l") is register
        assert fresh.replay_register("l") is not register

    trio.run(main)


def test_file_limit_is_raised_to_the_hard_limit() -> None:
    import resource

    from proxy.daemon import raise_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"hard open file limit {hard} leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        raise_file_limit(100)
        raised, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert raised == hard if hard != resource.RLIM_INFINITY else raised >= 256
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_shared_replay_register_admits_a_ticket_once_across_processes() -> None:
    import os
    import subprocess
    import sys

    from proxy.workers import SharedReplayRegister

    first = SharedReplayRegister.create(slots=1024, window=10.0)
    other_view = SharedReplayRegister(os.dup(first.fd), slots=1024, window=10.0)
    assert first.check_and_add(b"ticket-1", 1000.0)
    assert not other_view.check_and_add(b"ticket-1", 1001.0)  # the same memory
    assert other_view.check_and_add(b"ticket-2", 1001.0)
    assert first.check_and_add(b"ticket-1", 1011.0)  # past the window: fresh again
    code = (
        "import sys; from proxy.workers import SharedReplayRegister as R; "
        "r = R(int(sys.argv[1]), slots=1024, window=10.0); "
        "print(r.check_and_add(b'ticket-2', 1002.0), r.check_and_add(b'ticket-3', 1002.0))"
    )
    child = subprocess.run(
        [sys.executable, "-c", code, str(first.fd)],
        pass_fds=[first.fd],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    assert child.stdout.split() == ["False", "True"], child.stderr
    assert not first.check_and_add(b"ticket-3", 1003.0)  # the child's entry is seen here


def test_shared_replay_register_refuses_when_the_neighbourhood_is_full() -> None:
    from proxy.workers import REPLAY_PROBE, SharedReplayRegister

    register = SharedReplayRegister.create(slots=REPLAY_PROBE, window=10.0)
    admitted = [register.check_and_add(b"k%d" % i, 5.0) for i in range(REPLAY_PROBE)]
    assert all(admitted)
    assert not register.check_and_add(b"one more", 5.0)  # full of live entries: refuse
    assert register.check_and_add(b"one more", 16.0)  # once they expire there is room
