"""End to end: the daemon as a subprocess, real backends (threaded echo and HTTP servers),
real clients (Python ssl, curl, openssl s_client). Loopback only, bounded in time."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from certs import Issued, make_leaf, write_pair
from cryptography import x509
from proxy_helpers import (
    REPO,
    Daemon,
    Site,
    ThreadedEcho,
    ThreadedHTTP,
    client_context,
    config_text,
    free_port,
    launch,
    make_site,
    pattern,
    pool,
    recv_exactly,
    tls_client,
    tls_exchange,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def site(tmp_path: Path, test_ca: Issued) -> Site:
    return make_site(tmp_path, test_ca)


@pytest.fixture
def echo_pair() -> Iterator[tuple[ThreadedEcho, ThreadedEcho]]:
    with ThreadedEcho(b"A") as a, ThreadedEcho(b"B") as b:
        yield a, b


def test_sni_routing_two_pools_and_unknown_name(
    site: Site, echo_pair: tuple[ThreadedEcho, ThreadedEcho], processes: list
) -> None:
    a, b = echo_pair
    routes = """
[routes.a]
server_names = ["a.test"]
pool = "pa"

[routes.b]
server_names = ["b.test", "*.wild.test"]
pool = "pb"
"""
    daemon = launch(
        site, config_text(site, routes, pool("pa", [a.port]) + pool("pb", [b.port])), processes
    )
    context = client_context(site.ca_pem)
    assert tls_exchange(site.port, "a.test", context, b"hello", 6) == b"Ahello"
    assert tls_exchange(site.port, "b.test", context, b"hello", 6) == b"Bhello"
    assert tls_exchange(site.port, "x.wild.test", context, b"hi", 3) == b"Bhi"
    with pytest.raises(ssl.SSLError, match="(?i)unrecognized.name"):
        tls_exchange(site.port, "other.test", client_context(), b"x", 1)
    daemon.wait_for_log("end=ok", count=3)
    assert daemon.stop() == 0


def test_alpn_routing_with_openssl_s_client(site: Site, processes: list) -> None:
    with ThreadedEcho(b"H2") as h2, ThreadedEcho(b"H1") as h1:
        routes = """
[routes.h2]
server_names = ["a.test"]
alpn = ["h2"]
pool = "h2"

[routes.h1]
server_names = ["a.test"]
pool = "h1"
"""
        text = config_text(
            site,
            routes,
            pool("h2", [h2.port]) + pool("h1", [h1.port]),
            tls='alpn = ["h2", "http/1.1"]',
        )
        launch(site, text, processes)
        context = client_context(site.ca_pem, ["h2"])
        assert tls_exchange(site.port, "a.test", context, b"x", 3) == b"H2x"
        context = client_context(site.ca_pem, ["http/1.1"])
        assert tls_exchange(site.port, "a.test", context, b"x", 3) == b"H1x"
        (site.root / "ca.pem").write_bytes(site.ca_pem)
        command = [
            "openssl", "s_client", "-connect", f"127.0.0.1:{site.port}",
            "-servername", "a.test", "-alpn", "h2", "-tls1_3", "-quiet",
            "-verify_return_error", "-CAfile", str(site.root / "ca.pem"),
        ]  # fmt: skip
        client = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        processes.append(client)
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(b"ping\n")
        client.stdin.flush()
        assert client.stdout.read(6) == b"H2ping"
        client.kill()


def test_round_robin_spread_and_failover(site: Site, processes: list) -> None:
    with ThreadedEcho(b"1") as e1, ThreadedEcho(b"2") as e2, ThreadedEcho(b"3") as e3:
        routes = '[routes.all]\ndefault = true\npool = "rr"\n'
        launch(site, config_text(site, routes, pool("rr", [e1.port, e2.port, e3.port])), processes)
        context = client_context(site.ca_pem)
        tags = [tls_exchange(site.port, "a.test", context, b"x", 2)[:1] for _ in range(9)]
        assert sorted(tags) == [b"1"] * 3 + [b"2"] * 3 + [b"3"] * 3
        e2.stop()  # a backend dies mid-test: every following connection must still succeed
        tags = [tls_exchange(site.port, "a.test", context, b"y", 2) for _ in range(12)]
        assert all(t in (b"1y", b"3y") for t in tags), tags


def proxy_rss_kib(daemon: Daemon) -> int:
    status = Path(f"/proc/{daemon.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


def test_slow_backend_reader_keeps_proxy_memory_bounded(site: Site, processes: list) -> None:
    received = [0]
    stop = threading.Event()

    def slow_backend(server: socket.socket) -> None:
        conn, _ = server.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        with conn:
            while not stop.is_set():
                data = conn.recv(4096)
                if not data:
                    break
                received[0] += len(data)
                time.sleep(0.01)

    server = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=slow_backend, args=(server,), daemon=True)
    thread.start()
    routes = '[routes.all]\ndefault = true\npool = "slow"\n'
    daemon = launch(
        site, config_text(site, routes, pool("slow", [server.getsockname()[1]])), processes
    )
    before = proxy_rss_kib(daemon)
    sent = 0
    with tls_client(site.port, "a.test", client_context(site.ca_pem), timeout=0.5) as tls:
        deadline = time.monotonic() + 3
        block = b"s" * 65536
        while time.monotonic() < deadline:
            try:
                sent += tls.send(block)
            except (TimeoutError, ssl.SSLWantWriteError):
                continue
        growth = proxy_rss_kib(daemon) - before
    stop.set()
    server.close()
    # The client could push only what the pipeline holds (socket buffers plus one chunk in
    # the proxy): far less than it would if the proxy read without waiting for the backend.
    assert sent - received[0] < 16 * 1024 * 1024, (sent, received[0])
    assert growth < 20 * 1024, f"proxy RSS grew by {growth} KiB"


def test_stalled_handshake_is_dropped_at_timeout(site: Site, processes: list) -> None:
    with ThreadedEcho() as echo:
        routes = '[routes.all]\ndefault = true\npool = "p"\n'
        text = config_text(site, routes, pool("p", [echo.port]), handshake_timeout=1.0)
        daemon = launch(site, text, processes)
        with socket.create_connection(("127.0.0.1", site.port), timeout=60) as sock:
            sock.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then silence
            started = time.monotonic()
            try:
                answer = sock.recv(100)
            except ConnectionResetError:
                answer = b""
            assert answer == b""
            elapsed = time.monotonic() - started
        # Not before the timeout (its clock started at accept, a little before ours); how
        # much later depends on the machine's load, and the log line below names the cause.
        assert elapsed > 0.8, elapsed
        daemon.wait_for_log("end=handshake_timeout")
        assert echo.connections == 0


def test_thousand_concurrent_connections_every_byte_checked(site: Site, processes: list) -> None:
    count, size = 1000, 16 * 1024
    with ThreadedEcho() as echo:
        routes = '[routes.all]\ndefault = true\npool = "p"\n'
        launch(
            site,
            config_text(
                site,
                routes,
                pool("p", [echo.port]),
                limits="max_connections = 2000\nmax_connections_per_client = 0",
                handshake_timeout=60.0,
            ),
            processes,
        )
        context = client_context(site.ca_pem)
        failures: list[str] = []

        async def one(i: int, limiter: trio.CapacityLimiter) -> None:
            payload = pattern(i, size)
            try:
                tcp = await trio.open_tcp_stream("127.0.0.1", site.port)
                stream = trio.SSLStream(tcp, context, server_hostname="a.test")
                async with limiter:
                    await stream.do_handshake()
                await stream.send_all(payload)
                received = bytearray()
                while len(received) < size:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    received += chunk
                await stream.aclose()
                if bytes(received) != payload:
                    failures.append(f"{i}: mismatch ({len(received)} bytes)")
            except Exception as exc:  # collected and reported below
                failures.append(f"{i}: {exc!r}")

        async def main() -> None:
            limiter = trio.CapacityLimiter(1000)
            with trio.fail_after(150):
                async with trio.open_nursery() as nursery:
                    for i in range(count):
                        nursery.start_soon(one, i, limiter)

        trio.run(main)
        assert failures == []
        assert echo.connections == count


BIG_SIZE = int(os.environ.get("TLS13_PROXY_E2E_BYTES", str(64 * 1024 * 1024)))


def test_bulk_transfer_each_way_checksums_match(site: Site, processes: list) -> None:
    """64 MiB each way by default; TLS13_PROXY_E2E_BYTES=1073741824 for the full 1 GiB."""
    with ThreadedEcho() as echo:
        routes = '[routes.all]\ndefault = true\npool = "p"\n'
        launch(site, config_text(site, routes, pool("p", [echo.port])), processes)
        sent_hash, got_hash = hashlib.sha256(), hashlib.sha256()
        block = pattern(7, 1 << 20)
        received = [0]

        async def writer(stream: trio.SSLStream[trio.SocketStream]) -> None:
            remaining = BIG_SIZE
            while remaining:
                piece = block[: min(len(block), remaining)]
                await stream.send_all(piece)
                sent_hash.update(piece)
                remaining -= len(piece)

        async def reader(stream: trio.SSLStream[trio.SocketStream]) -> None:
            while received[0] < BIG_SIZE:
                chunk = await stream.receive_some(1 << 20)
                if not chunk:
                    break
                got_hash.update(chunk)
                received[0] += len(chunk)

        async def main() -> None:
            tcp = await trio.open_tcp_stream("127.0.0.1", site.port)
            stream = trio.SSLStream(tcp, client_context(site.ca_pem), server_hostname="a.test")
            await stream.do_handshake()
            with trio.fail_after(170):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(writer, stream)
                    nursery.start_soon(reader, stream)
            await stream.aclose()

        started = time.monotonic()
        trio.run(main)
        elapsed = time.monotonic() - started
        assert received[0] == BIG_SIZE
        assert got_hash.hexdigest() == sent_hash.hexdigest()
        rate = 2 * BIG_SIZE / elapsed / 1e6
        print(f"bulk: {BIG_SIZE >> 20} MiB each way in {elapsed:.1f}s ({rate:.0f} MB/s total)")


def test_proxy_protocol_v1_and_v2_headers(site: Site, processes: list) -> None:
    with ThreadedEcho(proxy_header=True) as v1, ThreadedEcho(proxy_header=True) as v2:
        routes = """
[routes.a]
server_names = ["a.test"]
pool = "v1"

[routes.b]
server_names = ["b.test"]
pool = "v2"
"""
        backends = pool("v1", [v1.port], "proxy_protocol = 1") + pool(
            "v2", [v2.port], "proxy_protocol = 2"
        )
        launch(site, config_text(site, routes, backends), processes)
        context = client_context(site.ca_pem, ["http/1.1"])
        for name, expected in (("a.test", v1), ("b.test", v2)):
            with tls_client(site.port, name, context) as tls:
                local_port = tls.getsockname()[1]
                tls.sendall(b"data")
                assert recv_exactly(tls, 4) == b"data"
            header = expected.headers[-1]
            assert header["src"] == "127.0.0.1" and header["sport"] == local_port
            assert header["dport"] == site.port
        tlvs = v2.headers[-1]["tlvs"]
        assert isinstance(tlvs, dict)
        assert tlvs[0x01] == b"http/1.1"  # PP2_TYPE_ALPN
        assert tlvs[0x02] == b"b.test"  # PP2_TYPE_AUTHORITY
        assert b"TLSv1.3" in tlvs[0x20]  # PP2_TYPE_SSL with the version sub-TLV


def rewrite_certificate(site: Site, stem: str, names: tuple[str, ...]) -> x509.Certificate:
    leaf = make_leaf(site.ca, names)
    write_pair(site.root, stem, leaf, site.ca)
    return leaf.cert


def test_sighup_swaps_certificate_while_old_connection_works(site: Site, processes: list) -> None:
    metrics_port = free_port()
    with ThreadedEcho() as echo:
        routes = '[routes.all]\ndefault = true\npool = "p"\n'
        text = config_text(site, routes, pool("p", [echo.port])).replace(
            "[metrics]\nenabled = false", f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"'
        )
        daemon = launch(site, text, processes)
        context = client_context(site.ca_pem)
        with tls_client(site.port, "a.test", context) as old:
            first_serial = x509.load_der_x509_certificate(old.getpeercert(True)).serial_number
            new_cert = rewrite_certificate(site, "a", ("a.test",))
            daemon.signal(signal.SIGHUP)
            daemon.wait_for_log("configuration reloaded")
            with tls_client(site.port, "a.test", context) as fresh:
                serial = x509.load_der_x509_certificate(fresh.getpeercert(True)).serial_number
                assert serial == new_cert.serial_number != first_serial
            old.sendall(b"still here")
            assert recv_exactly(old, 10) == b"still here"
            # An invalid configuration is rejected and the running one keeps serving.
            daemon.config_path.write_text("this is [not valid toml")
            daemon.signal(signal.SIGHUP)
            daemon.wait_for_log("reload rejected")
            old.sendall(b"again")
            assert recv_exactly(old, 5) == b"again"
        assert tls_exchange(site.port, "a.test", context, b"ok", 2) == b"ok"
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            exposition = response.read().decode()
        assert "tls13proxy_config_reloads_total 2.0" in exposition
        assert "tls13proxy_config_reload_failures_total 1.0" in exposition
        assert "tls13proxy_config_last_reload_successful 0.0" in exposition


def wait_until_refused(port: int, timeout: float = 15) -> None:
    """Until the listening socket is closed: a connect is refused."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError(f"port {port} still accepts connections")


def test_sigterm_drains_open_connections(site: Site, processes: list) -> None:
    drain = 8.0  # long enough for the echo below on a loaded machine
    with ThreadedEcho() as echo:
        routes = '[routes.all]\ndefault = true\npool = "p"\n'
        text = config_text(site, routes, pool("p", [echo.port]), drain_timeout=drain)
        daemon = launch(site, text, processes)
        context = client_context(site.ca_pem)
        with tls_client(site.port, "a.test", context) as tls:
            tls.sendall(b"before")
            assert recv_exactly(tls, 6) == b"before"
            signalled = time.monotonic()
            daemon.signal(signal.SIGTERM)
            wait_until_refused(site.port)  # new connections are no longer accepted
            tls.sendall(b"during drain")  # the established connection keeps working
            assert recv_exactly(tls, 12) == b"during drain"
            assert daemon.process.wait(timeout=drain + 30) == 0
            # It was still open, so the daemon waited the whole drain timeout, then closed it.
            assert time.monotonic() - signalled >= drain
        daemon.wait_for_log("end=shutdown")


def worker_pids(daemon: Daemon) -> set[int]:
    """Children of the supervisor, whichever of its threads started them."""
    tasks = Path(f"/proc/{daemon.process.pid}/task")
    return {int(p) for task in tasks.iterdir() for p in (task / "children").read_text().split()}


def test_killed_worker_is_replaced(site: Site, processes: list) -> None:
    metrics_port = free_port()
    with ThreadedEcho() as echo:
        routes = '[routes.all]\ndefault = true\npool = "p"\n'
        text = config_text(site, routes, pool("p", [echo.port]), extra="workers = 2")
        text = text.replace(
            "[metrics]\nenabled = false", f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"'
        )
        daemon = launch(site, text, processes)
        daemon.wait_for_log("accepting on", count=2)
        before = worker_pids(daemon)
        assert len(before) == 2
        context = client_context(site.ca_pem)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        daemon.wait_for_log("was killed by SIGKILL")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            after = worker_pids(daemon)
            if len(after) == 2 and victim not in after:
                break
            time.sleep(0.05)
        assert len(after) == 2 and victim not in after
        daemon.wait_for_log("accepting on", count=3)
        for i in range(20):
            payload = b"w%d" % i
            assert tls_exchange(site.port, "a.test", context, payload, len(payload)) == payload
        # The parent's endpoint aggregates every worker's counters (which workers write
        # every metrics.WORKER_FLUSH_INTERVAL).
        daemon.wait_for_log("end=ok", count=20)
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                exposition = response.read().decode()
            handshakes = [
                float(line.rsplit(" ", 1)[1])
                for line in exposition.splitlines()
                if line.startswith("tls13proxy_handshakes_total{")
            ]
            if sum(handshakes) >= 20 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert sum(handshakes) >= 20, exposition
        assert "tls13proxy_worker_restarts_total 1.0" in exposition
        assert daemon.stop() == 0


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_gets_demo_page_with_negotiated_parameters(site: Site, processes: list) -> None:
    routes = '[routes.all]\ndefault = true\npool = "demo"\n'
    backends = '[backends.demo]\nservers = ["demo"]\nhealth = { enabled = false }\n'
    launch(site, config_text(site, routes, backends), processes)
    (site.root / "ca.pem").write_bytes(site.ca_pem)
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            str(site.root / "ca.pem"),
            "--resolve",
            f"a.test:{site.port}:127.0.0.1",
            "-H",
            "Accept: text/plain",
            f"https://a.test:{site.port}/",
        ],
        capture_output=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    page = result.stdout.decode()
    assert "TLS version: TLSv1.3" in page
    assert "SNI: a.test" in page
    assert "ALPN: http/1.1" in page


def test_startup_failure_is_reported_plainly(site: Site, processes: list) -> None:
    """A port already in use: a one-line critical message and exit status 1, no traceback."""
    with socket.create_server(("127.0.0.1", site.port)):
        path = site.root / "proxy.toml"
        routes = '[routes.all]\ndefault = true\npool = "p"\n'
        path.write_text(config_text(site, routes, pool("p", [free_port()])))
        result = subprocess.run(
            [sys.executable, "-m", "proxy", "--config", str(path)],
            capture_output=True,
            timeout=30,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
    assert result.returncode == 1
    assert b"cannot start" in result.stderr and b"Traceback" not in result.stderr


def test_curl_through_sni_routes_to_two_http_pools(site: Site, processes: list) -> None:
    """Real HTTP backends (Python's http.server) behind SNI routes, fetched with curl."""
    with ThreadedHTTP("alpha") as alpha, ThreadedHTTP("beta") as beta:
        routes = """
[routes.a]
server_names = ["a.test"]
pool = "alpha"

[routes.b]
server_names = ["b.test", "*.wild.test"]
pool = "beta"
"""
        backends = pool("alpha", [alpha.port]) + pool("beta", [beta.port])
        launch(site, config_text(site, routes, backends), processes)
        (site.root / "ca.pem").write_bytes(site.ca_pem)
        for name, expected in (("a.test", "alpha"), ("b.test", "beta"), ("x.wild.test", "beta")):
            command = [
                "curl", "-sS", "--max-time", "10", "--cacert", str(site.root / "ca.pem"),
                "--resolve", f"{name}:{site.port}:127.0.0.1", f"https://{name}:{site.port}/p?q",
                f"https://{name}:{site.port}/second",  # two requests on one kept-alive connection
            ]  # fmt: skip
            result = subprocess.run(command, capture_output=True, timeout=20)
            assert result.returncode == 0, result.stderr
            assert result.stdout.decode() == f"{expected} /p?q\n{expected} /second\n"
