"""Issue 10, faults: backends that refuse, reset, stall or stop half-way; clients that reset
or truncate; a ticket key file that vanishes before a reload. Each fault ends only the
connection concerned, is logged once (its access log line names the cause) and is counted.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from certs import Issued
from proxy_helpers import Site, free_port, launch, make_site, pattern, pool
from robust_helpers import (
    BackendConnection,
    EngineClient,
    ScriptedBackend,
    client_hello_bytes,
    count_access_lines,
    echo_script,
    metric_sum,
    read_to_end,
    reset_socket,
    robust_config,
    scrape,
    wait_metric,
)

from tls13 import TLSError
from tls13.tickets import TicketKeyring

pytestmark = pytest.mark.timeout(120)

Processes = list[subprocess.Popen[bytes]]

TWO_ROUTES = """
[routes.good]
server_names = ["a.test"]
pool = "good"

[routes.bad]
server_names = ["b.test"]
pool = "bad"
"""


@pytest.fixture
def site(tmp_path: Path, test_ca: Issued) -> Site:
    return make_site(tmp_path, test_ca)


@pytest.fixture
def echo() -> Iterator[ScriptedBackend]:
    with ScriptedBackend(echo_script) as backend:
        yield backend


class Setup:
    """The daemon with a good pool (a.test → echo) and a bad one (b.test → ``bad_port``)."""

    def __init__(
        self, site: Site, good: int, bad: int, processes: Processes, limits: str = ""
    ) -> None:
        self.site, self.metrics_port = site, free_port()
        backends = pool("good", [good]) + pool("bad", [bad], "retries = 0")
        text = robust_config(
            site, good, self.metrics_port, limits=limits, backends=backends, routes=TWO_ROUTES
        )
        self.daemon = launch(site, text, processes)

    def client(self, name: str = "a.test") -> EngineClient:
        return EngineClient(self.site.port, server_name=name, ca_pem=self.site.ca_pem)

    def metric(self, name: str, **labels: str) -> float:
        return metric_sum(scrape(self.metrics_port), name, **labels)

    def wait_metric(self, name: str, minimum: float = 1, **labels: str) -> float:
        return wait_metric(self.metrics_port, name, minimum, **labels)

    def access_lines(self, end: str) -> int:
        return count_access_lines(self.daemon.log(), end)

    def assert_no_traceback(self) -> None:
        assert "Traceback" not in self.daemon.log(), self.daemon.log()[-3000:]


def healthy_exchange(setup: Setup, payload: bytes = b"still fine") -> None:
    with setup.client() as client:
        client.handshake()
        client.send(payload)
        assert client.receive_until(len(payload)) == payload
        client.close_notify()
        client.receive_to_end()


def test_backend_refusing_ends_only_that_connection(
    site: Site, echo: ScriptedBackend, processes: Processes
) -> None:
    setup = Setup(site, echo.port, free_port(), processes)
    for _ in range(3):
        with setup.client("b.test") as client:
            client.handshake()
            client.send(b"lost?")
            assert client.receive_to_end() == b""
        healthy_exchange(setup)
    assert setup.wait_metric("tls13proxy_backend_connect_failures_total", 3, reason="refused") == 3
    # The client sees its end before the daemon logs and counts it: wait for each, then
    # check that there are no more than expected.
    rejected = "tls13proxy_connections_rejected_total"
    assert setup.wait_metric(rejected, 3, reason="backend_unavailable") == 3
    setup.daemon.wait_for_log("end=backend_unavailable", count=3)
    setup.daemon.wait_for_log("end=ok", count=3)
    assert setup.access_lines("backend_unavailable") == 3
    assert setup.access_lines("ok") == 3
    # The cause is logged once per second at most, not once per failed connection.
    assert setup.daemon.log().count("refusing connections") == 1
    setup.assert_no_traceback()


def reset_after_partial_answer(sock: socket.socket, seen: BackendConnection) -> None:
    seen.data += sock.recv(65536)
    sock.sendall(b"partial answer")
    time.sleep(0.2)
    reset_socket(sock)
    seen.ended = "we reset"


def test_backend_reset_reaches_the_client_as_an_abrupt_end(
    site: Site, echo: ScriptedBackend, processes: Processes
) -> None:
    with ScriptedBackend(reset_after_partial_answer) as bad:
        setup = Setup(site, echo.port, bad.port, processes)
        with setup.client("b.test") as client:
            client.handshake()
            client.send(b"request")
            try:
                received = client.receive_to_end()
            except (TLSError, ConnectionResetError):
                received = bytes(client.received)
            # What arrived before the reset is delivered, but never sealed by close_notify:
            # the client must be able to tell the answer was cut short.
            assert received == b"partial answer"
            assert client.closed_clean is not True
        healthy_exchange(setup)
    setup.daemon.wait_for_log("end=backend_error")
    assert setup.access_lines("backend_error") == 1
    setup.wait_metric("tls13proxy_connections_closed_total", end="backend_error")
    setup.assert_no_traceback()


def stall(sock: socket.socket, seen: BackendConnection) -> None:
    read_to_end(sock, seen)


def test_stalled_backend_is_cut_by_the_idle_timeout(
    site: Site, echo: ScriptedBackend, processes: Processes
) -> None:
    with ScriptedBackend(stall) as bad:
        setup = Setup(site, echo.port, bad.port, processes, limits="idle_timeout = 1.0")
        with setup.client("b.test") as stalled, setup.client() as active:
            stalled.handshake()
            active.handshake()
            stalled.send(b"hello?")
            for i in range(8):  # traffic on another connection does not keep it alive
                active.send(b"%d" % i)
                time.sleep(0.2)
            assert active.receive_until(8) == b"01234567"
            stalled.receive_to_end()  # the idle timeout ends it (its access line below)
        assert bad.wait(1)[0].data == b"hello?"
    setup.daemon.wait_for_log("end=idle_timeout")
    assert setup.access_lines("idle_timeout") == 1
    setup.wait_metric("tls13proxy_limit_hits_total", limit="idle_timeout")


def answer_half_then_close(sock: socket.socket, seen: BackendConnection) -> None:
    seen.data += sock.recv(65536)
    sock.sendall(pattern(3, 300_000))
    sock.shutdown(socket.SHUT_WR)  # done talking, without reading the rest
    read_to_end(sock, seen)


def test_backend_closing_half_way_delivers_every_byte_then_close_notify(
    site: Site, echo: ScriptedBackend, processes: Processes
) -> None:
    with ScriptedBackend(answer_half_then_close) as bad:
        setup = Setup(site, echo.port, bad.port, processes)
        with setup.client("b.test") as client:
            client.handshake()
            client.send(b"start")
            assert client.receive_to_end() == pattern(3, 300_000)
            assert client.closed_clean is True
            client.send(b"more after the backend's FIN")  # the other direction still flows
            client.close_notify()
        seen = bad.wait(1)[0]
        assert seen.data == b"start" + b"more after the backend's FIN"
        assert seen.ended == "fin"
    setup.daemon.wait_for_log("end=ok")


def test_client_reset_mid_handshake_is_logged_once_and_counted(
    site: Site, echo: ScriptedBackend, processes: Processes
) -> None:
    setup = Setup(site, echo.port, free_port(), processes)
    sock = socket.create_connection(("127.0.0.1", site.port), timeout=5)
    client_port = sock.getsockname()[1]
    sock.sendall(client_hello_bytes())
    sock.recv(1)  # the server's flight has started
    reset_socket(sock)
    healthy_exchange(setup)
    # launch's port probe is a client_gone too: wait for this connection's own line (it is
    # written after the connection was counted).
    setup.daemon.wait_for_log(f"client=127.0.0.1:{client_port} ")
    setup.wait_metric("tls13proxy_handshake_failures_total", reason="connection_error")
    setup.wait_metric("tls13proxy_connections_closed_total", end="client_gone")
    ours = [line for line in setup.daemon.log().splitlines() if f":{client_port} " in line]
    assert len(ours) == 1 and "end=client_gone" in ours[0], ours
    assert echo.wait(1)[0].data == b"still fine"
    setup.assert_no_traceback()


def test_client_reset_mid_transfer_reaches_the_backend_as_a_reset(
    site: Site, processes: Processes
) -> None:
    with ScriptedBackend(read_to_end) as recorder:
        setup = Setup(site, recorder.port, free_port(), processes)
        with setup.client() as client:
            client.handshake()
            client.send(b"half a request")
            time.sleep(0.3)
            client.reset()
        seen = recorder.wait(1)[0]
        assert seen.ended == "reset"
    setup.daemon.wait_for_log("end=client_truncated")
    assert setup.access_lines("client_truncated") == 1
    setup.wait_metric("tls13proxy_connections_closed_total", end="client_truncated")


def test_truncated_record_then_fin_is_an_abrupt_end(site: Site, processes: Processes) -> None:
    with ScriptedBackend(read_to_end) as recorder:
        setup = Setup(site, recorder.port, free_port(), processes)
        with setup.client() as client:
            client_port = client.sock.getsockname()[1]
            client.handshake()
            client.send(b"complete record")
            client.conn.send_data(b"this record is cut")
            record = client.conn.data_to_send()
            client.sock.sendall(record[: len(record) // 2])
            time.sleep(0.3)
            client.fin_without_close_notify()
            assert client.receive_to_end() == b""  # this backend never answers
            assert client.closed_clean is not True
        seen = recorder.wait(1)[0]
        assert seen.data == b"complete record"
        assert seen.ended == "reset"
    # The backend sees the reset before the daemon writes its access line: wait for this
    # connection's line (launch's port probe has one of its own, end=client_gone).
    ours = f"client=127.0.0.1:{client_port} "
    setup.daemon.wait_for_log(ours)
    lines = [line for line in setup.daemon.log().splitlines() if ours in line]
    assert len(lines) == 1, lines
    assert "end=client_truncated" in lines[0] or "end=tls_error" in lines[0], lines


def test_ticket_key_file_vanishing_fails_the_reload_and_old_config_serves(
    site: Site, echo: ScriptedBackend, processes: Processes
) -> None:
    keys = site.root / "tickets.key"
    TicketKeyring.generate().save(keys)
    setup_text = robust_config(
        site,
        echo.port,
        free_port(),
        tls='alpn = ["http/1.1"]\n[tls.tickets]\nkey_file = "tickets.key"',
    )
    metrics_port = int(setup_text.split('listen = "127.0.0.1:')[1].split('"')[0])
    daemon = launch(site, setup_text, processes)
    with EngineClient(site.port, ca_pem=site.ca_pem) as first:
        first.handshake()
        first.send(b"new config")
        assert first.receive_until(10) == b"new config"
        first.wait_for_tickets(1)
        ticket = first.tickets[0]
    keys.unlink()
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_log("reload rejected")
    assert "tickets.key" in daemon.log().split("reload rejected", 1)[1].splitlines()[0]
    assert wait_metric(metrics_port, "tls13proxy_config_reload_failures_total", 1) == 1
    with EngineClient(site.port, ca_pem=site.ca_pem, session=ticket) as resumed:
        info = resumed.handshake()
        assert info.resumed  # the keys loaded before the failed reload still open tickets
        resumed.send(b"old config")
        assert resumed.receive_until(10) == b"old config"
    assert daemon.process.poll() is None
