"""Issue 10, resource bounds: every peer-controlled quantity has a bound that ends only the
offending connection, with the proper alert and a ``tls13proxy_limit_hits_total`` count.

Each test runs the real daemon (``python3 -m proxy``) on loopback with a scripted echo backend,
keeps a well-behaved "bystander" connection open across the abuse, and checks it still echoes.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from certs import Issued, make_leaf
from proxy_helpers import Daemon, Site, free_port, launch, make_site
from robust_helpers import (
    EngineClient,
    ScriptedBackend,
    alerts_in,
    client_hello_bytes,
    count_access_lines,
    echo_script,
    metric_sum,
    plaintext_record,
    raw_exchange,
    robust_config,
    scrape,
    wait_metric,
)

from tls13 import AlertDescription, TLSError
from tls13.certificates import CertificateChain
from tls13.record import CHANGE_CIPHER_SPEC, HANDSHAKE

pytestmark = pytest.mark.timeout(120)

Processes = list[subprocess.Popen[bytes]]


@pytest.fixture
def site(tmp_path: Path, test_ca: Issued) -> Site:
    return make_site(tmp_path, test_ca)


@pytest.fixture
def echo() -> Iterator[ScriptedBackend]:
    with ScriptedBackend(echo_script) as backend:
        yield backend


class Proxy:
    """A running daemon with its /metrics port."""

    def __init__(self, daemon: Daemon, metrics_port: int, site: Site) -> None:
        self.daemon, self.metrics_port, self.site = daemon, metrics_port, site

    @property
    def port(self) -> int:
        return self.site.port

    def client(self, **options: object) -> EngineClient:
        return EngineClient(self.port, ca_pem=self.site.ca_pem, **options)  # type: ignore[arg-type]

    def limit_hits(self, limit: str) -> float:
        return metric_sum(scrape(self.metrics_port), "tls13proxy_limit_hits_total", limit=limit)

    def wait_limit(self, limit: str, minimum: float = 1) -> float:
        return wait_metric(self.metrics_port, "tls13proxy_limit_hits_total", minimum, limit=limit)


def start(site: Site, backend: ScriptedBackend, processes: Processes, **options: object) -> Proxy:
    metrics_port = free_port()
    text = robust_config(site, backend.port, metrics_port, **options)  # type: ignore[arg-type]
    return Proxy(launch(site, text, processes), metrics_port, site)


@contextmanager
def bystander(proxy: Proxy) -> Iterator[EngineClient]:
    """A healthy connection that must keep working while another one hits a limit."""
    with proxy.client() as client:
        client.handshake()
        client.send(b"before")
        assert client.receive_until(6) == b"before"
        yield client
        client.send(b"-after")
        assert client.receive_until(12) == b"before-after"


def fatal_alert(client: EngineClient) -> AlertDescription:
    error = client.alert_from_server()
    assert isinstance(error, TLSError), "the server closed without an alert"
    assert error.sent_by_peer
    return error.alert


# -- record-level counts: empty records, warning alerts, CCS, KeyUpdate ---------------------


def test_empty_records_within_bound_pass_beyond_it_are_cut_off(
    site: Site, echo: ScriptedBackend, processes: Processes
) -> None:
    proxy = start(site, echo, processes, limits="max_empty_records = 5")
    with bystander(proxy):
        with proxy.client() as client:
            client.handshake()
            client.empty_records(5)  # at the bound: still tolerated
            client.send(b"ok")
            assert client.receive_until(2) == b"ok"
            client.empty_records(5)  # the count is of empty records in a row
            client.send(b"ok")
            assert client.receive_until(4) == b"okok"
        with proxy.client() as client:
            client.handshake()
            client.empty_records(6)
            assert fatal_alert(client) == AlertDescription.unexpected_message
    assert proxy.wait_limit("max_empty_records") == 1
    assert echo.wait(3)[0].data == b"before-after"


def test_warning_alert_flood_is_cut_off(
    site: Site, echo: ScriptedBackend, processes: Processes
) -> None:
    proxy = start(site, echo, processes, limits="max_warning_alerts = 2")
    with bystander(proxy):
        with proxy.client() as client:
            client.handshake()
            client.warning_alerts(2)
            client.send(b"still")
            assert client.receive_until(5) == b"still"
        with proxy.client() as client:
            client.handshake()
            client.warning_alerts(3)
            assert fatal_alert(client) == AlertDescription.unexpected_message
    assert proxy.wait_limit("max_warning_alerts") == 1


def test_change_cipher_spec_flood_during_handshake_is_cut_off(
    site: Site, echo: ScriptedBackend, processes: Processes
) -> None:
    proxy = start(site, echo, processes, limits="max_change_cipher_spec = 8")
    flood = client_hello_bytes() + plaintext_record(CHANGE_CIPHER_SPEC, b"\x01") * 9
    with bystander(proxy):
        answer = raw_exchange(proxy.port, flood)
    # The ServerHello flight may precede the alert; the alert after it is protected, so we
    # check the metric and the access log rather than decrypting.
    assert answer, "the proxy closed without answering"
    assert proxy.wait_limit("max_change_cipher_spec") == 1
    proxy.daemon.wait_for_log("too many change_cipher_spec")


def test_key_update_rate_is_configurable_and_enforced(
    site: Site, echo: ScriptedBackend, processes: Processes
) -> None:
    proxy = start(site, echo, processes, limits="key_updates_per_minute = 3")
    with bystander(proxy):
        with proxy.client() as client:
            client.handshake()
            for round_ in range(3):  # at the bound: every update is honoured
                client.conn.update_keys(request_peer=True)
                client.send(b"%d" % round_)
            assert client.receive_until(3) == b"012"
            client.conn.update_keys(request_peer=False)
            client.flush()
            assert fatal_alert(client) == AlertDescription.unexpected_message
    assert proxy.wait_limit("key_updates_per_minute") == 1


# -- handshake sizes ------------------------------------------------------------------------


def handshake_header(declared_length: int) -> bytes:
    return b"\x01" + declared_length.to_bytes(3, "big")  # a ClientHello that long


def test_oversized_handshake_message_is_refused_from_its_header(
    site: Site, echo: ScriptedBackend, processes: Processes
) -> None:
    proxy = start(site, echo, processes, limits='max_handshake_size = "16KiB"')
    with bystander(proxy):
        # Only the 4-byte header of a 17 KiB message: refused before any body is buffered.
        answer = raw_exchange(proxy.port, plaintext_record(HANDSHAKE, handshake_header(17 * 1024)))
        assert alerts_in(answer) == [AlertDescription.illegal_parameter]
        # Within the bound the same trick only waits for the rest (then the timeout ends it).
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(plaintext_record(HANDSHAKE, handshake_header(15 * 1024)))
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(100)
    assert proxy.wait_limit("max_handshake_size") == 1
    assert count_access_lines(proxy.daemon.log(), "tls_error") == 1


def test_large_client_certificate_chain_is_refused(
    site: Site, echo: ScriptedBackend, processes: Processes, test_ca: Issued
) -> None:
    (site.root / "ca.pem").write_bytes(site.ca_pem)
    extra = 'client_auth = "optional"\nclient_ca = "ca.pem"\n'
    proxy = start(site, echo, processes, limits='max_handshake_size = "4KiB"')
    text = proxy.daemon.config_path.read_text()
    assert proxy.daemon.stop() == 0
    text = text.replace("[listeners.main]\n", "[listeners.main]\n" + extra)
    proxy = Proxy(launch(site, text, processes), proxy.metrics_port, site)
    leaf = make_leaf(test_ca, ("client.test",), client=True)
    # A chain padded with the CA repeated: about 8 KiB of Certificate message.
    padded = leaf.cert_pem() + site.ca_pem * 16
    chain = CertificateChain.from_pem(padded, leaf.key_pem())
    with bystander(proxy):
        with proxy.client(certificate=chain) as client:
            # TLS 1.3: the client completes on its side and learns of the refusal after.
            client.handshake()
            assert fatal_alert(client) == AlertDescription.illegal_parameter
        small = CertificateChain.from_pem(leaf.cert_pem(), leaf.key_pem())
        with proxy.client(certificate=small) as client:
            client.handshake()
            client.send(b"small chain")
            assert client.receive_until(11) == b"small chain"
    assert proxy.wait_limit("max_handshake_size") == 1


def test_junk_before_the_handshake_completes_is_not_buffered(
    site: Site, echo: ScriptedBackend, processes: Processes
) -> None:
    """A ClientHello followed by 4 MiB the server cannot use: the connection ends at the
    first record it cannot accept, not after buffering the lot."""
    proxy = start(site, echo, processes)
    rss_before = rss_kib(proxy.daemon)
    junk = plaintext_record(23, b"\x00" * 16384) * 256  # application_data before any key
    with bystander(proxy):
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(client_hello_bytes())
            try:
                sock.sendall(junk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the proxy stopped reading and closed: what we want
    proxy.daemon.wait_for_log("end=tls_error")
    line = next(x for x in proxy.daemon.log().splitlines() if "end=tls_error" in x)
    assert "bad_record_mac" in line  # the junk cannot be deprotected with the handshake key
    assert rss_kib(proxy.daemon) - rss_before < 4 * 1024


# -- connections: total, per client, concurrent handshakes, buffers -------------------------


def refused_at_once(port: int, source: str = "127.0.0.1") -> bool:
    """The proxy closed a fresh connection before any handshake (a refusal)."""
    with socket.create_connection(("127.0.0.1", port), 5, source_address=(source, 0)) as sock:
        sock.sendall(client_hello_bytes())
        try:
            return sock.recv(100) == b""
        except ConnectionResetError:
            return True


def test_total_connection_limit_refuses_only_new_connections(
    site: Site, echo: ScriptedBackend, processes: Processes
) -> None:
    proxy = start(site, echo, processes, limits="max_connections = 3")
    time.sleep(0.3)  # the startup probe connection must be gone before we count
    with bystander(proxy), proxy.client() as second, proxy.client() as third:
        second.handshake()
        third.handshake()
        assert refused_at_once(proxy.port)
        second.send(b"2")
        assert second.receive_until(1) == b"2"
    assert proxy.wait_limit("max_connections") == 1
    with proxy.client() as again:  # capacity is back once connections end
        again.handshake()


def test_per_client_limit_counts_each_address(
    site: Site, echo: ScriptedBackend, processes: Processes
) -> None:
    limits = "max_connections = 100\nmax_connections_per_client = 2"
    proxy = start(site, echo, processes, limits=limits)
    time.sleep(0.3)
    with bystander(proxy), proxy.client() as second:
        second.handshake()
        assert refused_at_once(proxy.port)
        with proxy.client(source="127.0.0.2") as other_address:
            other_address.handshake()
            other_address.send(b"other")
            assert other_address.receive_until(5) == b"other"
    assert proxy.wait_limit("max_connections_per_client") == 1


def stalled_hello(port: int) -> socket.socket:
    """A connection that sends half a ClientHello and waits: it holds a handshake slot."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(client_hello_bytes()[:50])
    return sock


def test_concurrent_handshakes_wait_for_a_slot_and_the_queue_is_bounded(
    site: Site, echo: ScriptedBackend, processes: Processes
) -> None:
    limits = "max_concurrent_handshakes = 2\nmax_connections = 4"
    proxy = start(site, echo, processes, limits=limits, handshake_timeout=4.0)
    time.sleep(0.3)
    holders = [stalled_hello(proxy.port) for _ in range(2)]
    try:
        # The waiting client comes well after the holders: they time out (and free their
        # slots) 1.5 s before its own handshake deadline.
        time.sleep(1.5)
        with proxy.client() as waiting:
            waiting.conn.start()
            waiting.flush()
            waiting.sock.settimeout(0.8)
            with pytest.raises(TimeoutError):  # no slot: not answered while the two stall
                waiting.sock.recv(1, socket.MSG_PEEK)
            waiting.sock.settimeout(10)
            # The 4th connection may wait too; the 5th is over max_connections: the waiting
            # room is bounded by the connection limit, not unbounded.
            with stalled_hello(proxy.port):
                assert refused_at_once(proxy.port)
            started = time.monotonic()
            while waiting.info is None:  # the holders time out and free their slots
                assert waiting.read_once()
            assert time.monotonic() - started < 10
            waiting.send(b"served")
            assert waiting.receive_until(6) == b"served"
    finally:
        for sock in holders:
            sock.close()
    assert proxy.wait_limit("max_concurrent_handshakes") >= 1
    assert proxy.wait_limit("handshake_timeout") >= 2


def test_client_that_never_reads_cannot_make_the_proxy_buffer(
    site: Site, processes: Processes
) -> None:
    """buffer_size bounds each direction: a backend flooding a client that does not read
    stalls on TCP flow control instead of filling the proxy's memory."""
    pushed = [0]

    def flood(sock: socket.socket, seen: object) -> None:
        sock.settimeout(2)
        block = b"f" * 65536
        try:
            while pushed[0] < 256 << 20:
                pushed[0] += sock.send(block)
        except OSError:
            pass

    with ScriptedBackend(flood) as backend:
        proxy = start(site, backend, processes, limits='buffer_size = "16KiB"')
        rss_before = rss_kib(proxy.daemon)
        with proxy.client() as client:
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            client.handshake()
            client.send(b"go")
            time.sleep(3)
            growth = rss_kib(proxy.daemon) - rss_before
            stalled_at = pushed[0]
        assert stalled_at < 16 << 20, f"the backend pushed {stalled_at} bytes"
        assert growth < 16 * 1024, f"proxy RSS grew by {growth} KiB"


def rss_kib(daemon: Daemon) -> int:
    status = Path(f"/proc/{daemon.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


def test_limits_are_reported_in_metrics_with_their_names(
    site: Site, echo: ScriptedBackend, processes: Processes
) -> None:
    """The limit names are the documented ones, and a healthy run hits none of them."""
    proxy = start(site, echo, processes)
    with proxy.client() as client:
        client.handshake()
        client.send(b"fine")
        assert client.receive_until(4) == b"fine"
    exposition = scrape(proxy.metrics_port)
    assert metric_sum(exposition, "tls13proxy_limit_hits_total") == 0
