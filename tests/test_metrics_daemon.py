"""Every metric in docs/metrics.md moves in the real daemon when its event happens.

One daemon (two workers, so the multi-process aggregation is in play) sees: clean HTTPS
requests with close_notify both ways, a TLS 1.2 client, a client offering only an ALPN we
do not speak, a client that rejects our certificate, a protocol error after the handshake,
a silent client (handshake timeout), a route whose backend refuses connections, 0-RTT
accepted and the same ticket's 0-RTT replayed, a good and a broken reload, and a killed
worker. Then /metrics is scraped until each expectation holds.
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from certs import Issued, make_leaf, write_pair
from conftest import free_port
from interop_helpers import ocsp_response, utcnow
from metrics_helpers import Exposition, child_env, parse_exposition, scrape
from proxy_helpers import ThreadedHTTP

from proxy import metrics
from proxy.workers import REPLAY_WINDOW

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl s_client drives 0-RTT"),
]

WAIT = 40.0  # a cold start of three processes on a 2-CPU machine
HANDSHAKE_TIMEOUT = 5.0  # every handshake here must finish within it, however loaded the machine
EARLY = b"GET /early HTTP/1.1\r\nHost: localhost\r\n\r\n"
WORKERS = 2
RELOADED = "configuration reloaded"  # each worker, once it serves the new configuration
REJECTED = "configuration reload rejected"  # the parent, which validates first


@dataclass
class Proxy:
    process: subprocess.Popen[bytes]
    config: Path
    log: Path
    tls_port: int
    metrics_port: int
    site: Issued

    def scrape(self) -> Exposition:
        return parse_exposition(scrape(self.metrics_port))

    def diagnose(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def log_count(self, text: str) -> int:
        return self.log.read_text(errors="replace").count(text)

    def wait_for_log(self, text: str, count: int) -> None:
        """Until ``text`` is in the daemon's log ``count`` times (the event happened)."""
        deadline = time.monotonic() + WAIT
        while self.log_count(text) < count:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged {count}x:\n{self.diagnose()}")
            time.sleep(0.1)


def _config(root: Path, tls_port: int, metrics_port: int, app_port: int, down_port: int) -> str:
    return f"""
[global]
state_dir = "{root / "state"}"
workers = {WORKERS}
access_log = false

[limits]
handshake_timeout = {HANDSHAKE_TIMEOUT}
drain_timeout = 2.0

[metrics]
listen = "127.0.0.1:{metrics_port}"

[tls]
alpn = ["http/1.1"]
alpn_required = true
max_early_data = "16KiB"

[certificates.site]
chain = "site.crt"
key = "site.key"
ocsp = "site.ocsp"

[certificates.fallback]
self_signed = true
names = ["fallback.test"]

[listeners.public]
addresses = ["127.0.0.1:{tls_port}"]

[routes.down]
server_names = ["down.test"]
pool = "down"

[routes.main]
default = true
pool = "app"
early_data = true

[backends.app]
servers = ["127.0.0.1:{app_port}"]
health = {{ enabled = true, type = "tcp", interval = "300ms", timeout = "200ms" }}

[backends.down]
servers = ["127.0.0.1:{down_port}"]
retries = 0
connect_timeout = 1.0
health = {{ enabled = false }}
"""


def _wait_port(port: int, proxy: Proxy) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if proxy.process.poll() is not None:
            raise AssertionError(f"proxy exited:\n{proxy.diagnose()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"port {port} not open within {WAIT}s:\n{proxy.diagnose()}")


@pytest.fixture
def proxy(tmp_path: Path, test_ca: Issued) -> Iterator[Proxy]:
    site = make_leaf(test_ca, ("localhost", "down.test"))
    write_pair(tmp_path, "site", site, test_ca)
    now = utcnow()
    (tmp_path / "site.ocsp").write_bytes(
        ocsp_response(
            test_ca, site, now - datetime.timedelta(hours=1), now + datetime.timedelta(days=3)
        )
    )
    tls_port, metrics_port, down_port = free_port(), free_port(), free_port()
    with ThreadedHTTP("app") as app:
        config = tmp_path / "proxy.toml"
        config.write_text(_config(tmp_path, tls_port, metrics_port, app.port, down_port))
        log = tmp_path / "proxy.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "proxy", "run", "--config", str(config)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=str(tmp_path),
                start_new_session=True,
            )
        running = Proxy(process, config, log, tls_port, metrics_port, site)
        try:
            _wait_port(tls_port, running)
            _wait_port(metrics_port, running)
            yield running
        finally:
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


# -- clients ------------------------------------------------------------------------------


def _context(
    *, maximum: ssl.TLSVersion | None = None, alpn: list[str] | None = None, verify: bool = False
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if maximum is not None:
        context.maximum_version = maximum
    else:
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    if not verify:  # verify=True: the default trust store, which does not know our test CA
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(alpn or ["http/1.1"])  # tls.alpn_required refuses no ALPN
    return context


def https_get_closing_cleanly(port: int) -> bytes:
    """A request; the backend's end arrives as close_notify and ours goes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        tls = _context().wrap_socket(raw, server_hostname="localhost")
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        received = bytearray()
        while chunk := tls.recv(65536):
            received += chunk
        tls.unwrap()
    return bytes(received)


def failed_handshake(port: int, context: ssl.SSLContext, server_name: str = "localhost") -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, OSError)):
            context.wrap_socket(raw, server_hostname=server_name)


def garbage_after_handshake(port: int) -> None:
    """A forged application-data record once the handshake is done: bad_record_mac."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        tls = _context().wrap_socket(raw, server_hostname="localhost")
        with socket.socket(fileno=os.dup(tls.fileno())) as same_connection:
            same_connection.sendall(bytes.fromhex("1703030020") + bytes(32))
            same_connection.settimeout(10)
            try:
                while same_connection.recv(65536):
                    pass
            except OSError:
                pass
        tls.close()


def silent_client(port: int) -> None:
    """Connect and say nothing until the proxy gives up (the handshake timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=HANDSHAKE_TIMEOUT + 10) as raw:
        try:
            while raw.recv(4096):
                pass
        except OSError:
            pass


def _s_client(argv: list[str]) -> str:
    """Run s_client until the proxy closes (the request says Connection: close)."""
    run = subprocess.run(
        [*argv, "-ign_eof"],
        input=b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        capture_output=True,
        timeout=30,
    )
    return run.stdout.decode(errors="replace") + run.stderr.decode(errors="replace")


def zero_rtt_twice(port: int, root: Path) -> tuple[str, str]:
    """A ticket, then 0-RTT with it twice: the second use is a replay (RFC 8446 §8.1).

    The strike register keeps a ticket for REPLAY_WINDOW (§8.2); after that the same ticket
    may carry 0-RTT again. A round whose second use may have reached the daemon later than
    that (a loaded machine) proves nothing, so it is repeated with a fresh ticket.
    """
    session, early = root / "session.pem", root / "early.txt"
    early.write_bytes(EARLY)
    base = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3"]
    base += ["-servername", "localhost", "-alpn", "http/1.1"]
    with_early = [*base, "-sess_in", str(session), "-early_data", str(early)]
    for _ in range(3):
        session.unlink(missing_ok=True)
        first = _s_client([*base, "-sess_out", str(session)])
        assert session.exists(), first
        first_sent = time.monotonic()
        accepted, replayed = _s_client(with_early), _s_client(with_early)
        if time.monotonic() - first_sent < REPLAY_WINDOW:
            return accepted, replayed
    raise AssertionError("no 0-RTT replay within the strike register's window in 3 rounds")


def _worker_pids(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(child) for child in (task / "children").read_text().split())
    return found


def reload(proxy: Proxy, broken: bool = False) -> None:
    """SIGHUP, then wait until the reload has happened before the file changes again.

    The parent reads the file when it handles the signal, and on a good reload each worker
    reads it again: restoring the good file (or writing the broken one) before they did
    would turn the broken reload into a good one, or a good one into a broken one.
    """
    good = proxy.config.read_text()
    if broken:
        proxy.config.write_text(good + "\n[listeners.public]\nnot_a_setting = 1\n")
    try:
        rejected = proxy.log_count(REJECTED)
        reloaded = proxy.log_count(RELOADED)
        proxy.process.send_signal(signal.SIGHUP)
        if broken:
            proxy.wait_for_log(REJECTED, rejected + 1)
        else:
            proxy.wait_for_log(RELOADED, reloaded + WORKERS)
    finally:
        proxy.config.write_text(good)


def kill_one_worker(proxy: Proxy) -> None:
    workers = _worker_pids(proxy.process.pid)
    assert len(workers) == 2, workers
    os.kill(workers[0], signal.SIGKILL)


# -- expectations -------------------------------------------------------------------------

Check = Callable[[Exposition], bool]


def _total(name: str, **labels: str) -> Check:
    return lambda seen: seen.total(name, **labels) > 0


def _expectations(proxy: Proxy) -> dict[str, Check]:
    p = "tls13proxy_"
    not_after = proxy.site.cert.not_valid_after_utc.timestamp()
    return {
        "clean requests": _total(f"{p}handshakes_total", listener="public", resumed="false"),
        "TLS 1.2 client": _total(
            f"{p}handshake_failures_total", reason="protocol_version", origin="local"
        ),
        "no common ALPN": _total(
            f"{p}handshake_failures_total", reason="no_application_protocol", origin="local"
        ),
        "client rejects our certificate": _total(f"{p}handshake_failures_total", origin="peer"),
        "handshake timeout": _total(f"{p}handshake_failures_total", reason="timeout"),
        "timeout limit": _total(f"{p}limit_hits_total", limit="handshake_timeout"),
        "close_notify sent": _total(f"{p}alerts_sent_total", alert="close_notify"),
        "close_notify received": _total(f"{p}alerts_received_total", alert="close_notify"),
        "alert after the handshake": _total(f"{p}alerts_sent_total", alert="bad_record_mac"),
        "alert from the client": lambda seen: any(
            name == f"{p}alerts_received_total" and dict(labels)["alert"] != "close_notify"
            for (name, labels), value in seen.samples.items()
            if value > 0
        ),
        "tickets": _total(f"{p}tickets_issued_total", listener="public"),
        "0-RTT accepted": _total(f"{p}early_data_total", outcome="accepted"),
        "0-RTT replay refused": _total(f"{p}early_data_total", outcome="replay_refused"),
        "resumption": _total(f"{p}handshakes_total", resumed="true"),
        "backend refused": _total(
            f"{p}backend_connect_failures_total", pool="down", reason="refused"
        ),
        "rejected connection": _total(
            f"{p}connections_rejected_total", reason="backend_unavailable"
        ),
        "backend healthy": lambda seen: seen.total(f"{p}backend_up", pool="app") == 1,
        "all connections closed": lambda seen: seen.total(f"{p}connections_active") == 0,
        "certificate expiry": lambda seen: (
            seen.value(f"{p}certificate_not_after_timestamp_seconds", certificate="site")
            == not_after
        ),
        "self-signed expiry": _total(
            f"{p}certificate_not_after_timestamp_seconds", certificate="fallback"
        ),
        # producedAt is when the test signed the response, moments before the daemon started.
        "OCSP staple age": lambda seen: (
            0 < (seen.value(f"{p}ocsp_staple_age_seconds", certificate="site") or 0) < WAIT + 240
        ),
        "OCSP staple fresh": lambda seen: (
            seen.value(f"{p}ocsp_staple_stale", certificate="site") == 0
        ),
        "reload failure": lambda seen: seen.total(f"{p}config_reload_failures_total") == 1,
        "reloads": lambda seen: seen.total(f"{p}config_reloads_total") == 2,
        "worker restarted": lambda seen: seen.total(f"{p}worker_restarts_total") == 1,
        "workers": lambda seen: seen.total(f"{p}worker_processes") == 2,
    }


def _moved(seen: Exposition, described: metrics.MetricDescription) -> bool:
    """Whether the scrape shows this documented metric having seen its event."""
    name = described.name
    if described.type == "histogram":
        return seen.total(f"{name}_count") > 0
    if name.endswith(("_last_reload_successful", "_connections_active")):
        # Back to 0 by now (the broken reload; every connection closed): the test saw
        # them at 1 earlier.
        return seen.value(name) is not None or seen.total(name) == 0
    if name.endswith("_ocsp_staple_stale"):
        return seen.value(name, certificate="site") == 0  # 1 only when stale (test_ocsp_daemon)
    return seen.total(name) > 0


def _wait_for_all(proxy: Proxy, checks: dict[str, Check]) -> Exposition:
    deadline = time.monotonic() + 30
    while True:
        seen = proxy.scrape()
        failing = [label for label, check in checks.items() if not check(seen)]
        if not failing:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never showed: {failing}\nlog:\n{proxy.diagnose()}")
        time.sleep(0.5)


def _active_while_open(proxy: Proxy) -> float:
    """connections_active seen while one established connection stays open."""
    with socket.create_connection(("127.0.0.1", proxy.tls_port), timeout=10) as raw:
        tls = _context().wrap_socket(raw, server_hostname="localhost")
        # Exactly 1 once the workers flushed (metrics.flush): the fixture's port probe
        # may still count as open for up to WORKER_FLUSH_INTERVAL.
        checks = {"open": lambda seen: seen.total("tls13proxy_connections_active") == 1}
        active = _wait_for_all(proxy, checks).total("tls13proxy_connections_active")
        tls.close()
    return active


def test_every_documented_metric_moves_in_the_daemon(proxy: Proxy, tmp_path: Path) -> None:
    port = proxy.tls_port
    assert _active_while_open(proxy) == 1
    for _ in range(3):
        assert https_get_closing_cleanly(port).startswith(b"HTTP/1.1 200")
    failed_handshake(port, _context(maximum=ssl.TLSVersion.TLSv1_2))
    failed_handshake(port, _context(alpn=["h2"]))
    failed_handshake(port, _context(verify=True))
    garbage_after_handshake(port)
    silent_client(port)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        tls = _context().wrap_socket(raw, server_hostname="down.test")
        tls.sendall(b"GET / HTTP/1.1\r\nHost: down.test\r\n\r\n")
        assert tls.recv(65536) == b""  # no backend: the proxy ends the connection
        tls.close()
    first, second = zero_rtt_twice(port, tmp_path)
    assert "Early data was accepted" in first, first
    assert "Early data was rejected" in second, second
    reload(proxy)
    reload(proxy, broken=True)
    # Everything visible first (workers write their counts every WORKER_FLUSH_INTERVAL, and a
    # SIGKILL takes what was not written yet), then the same must survive the kill.
    expected = _expectations(proxy)
    _wait_for_all(proxy, {k: check for k, check in expected.items() if k != "worker restarted"})
    kill_one_worker(proxy)

    seen = _wait_for_all(proxy, expected)

    documented = metrics.describe_metrics()
    still = [d.name for d in documented if not _moved(seen, d)]
    assert still == [], f"documented metrics that never moved: {still}"
    assert seen.value("tls13proxy_config_last_reload_successful") == 0
