"""Helpers for the robustness tests (issue 10): a blocking client on our own engine that can
also misbehave on purpose, scripted backends that record how each connection ended, and a
/metrics reader. The daemon itself is started with ``proxy_helpers`` (``config_text``,
``launch``); ``robust_config`` only adds a metrics listener and the settings under test."""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from backend_helpers import ThreadedBackend
from proxy_helpers import Site, config_text, pool

from tls13 import ClientConfig, ClientConnection, SessionTicket, TLSError, events
from tls13.certificates import CertificateChain
from tls13.record import ALERT, APPLICATION_DATA

TIMEOUT = 30.0  # a failure bound only: waits return as soon as their condition holds
ROUTE_ALL = '[routes.all]\ndefault = true\npool = "p"\n'


def robust_config(
    site: Site,
    backend_port: int,
    metrics_port: int,
    limits: str = "",
    tls: str = 'alpn = ["http/1.1"]',
    extra: str = "",
    handshake_timeout: float = 5.0,
    backends: str | None = None,
    routes: str = ROUTE_ALL,
) -> str:
    """``proxy_helpers.config_text`` with /metrics on ``metrics_port`` and one pool "p"."""
    text = config_text(
        site,
        routes,
        backends if backends is not None else pool("p", [backend_port]),
        extra=extra,
        tls=tls,
        handshake_timeout=handshake_timeout,
    )
    metrics = f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"'
    return _drop_overridden(text.replace("[metrics]\nenabled = false", metrics), limits)


def _drop_overridden(text: str, limits: str) -> str:
    """Remove config_text's own [limits] timeouts that ``limits`` sets again (TOML forbids
    a key twice)."""
    keys = {line.split("=")[0].strip() for line in limits.splitlines() if "=" in line}
    head, _, rest = text.partition("[limits]\n")
    body, _, tail = rest.partition("\n[tls]")
    kept = [line for line in body.splitlines() if line.split("=")[0].strip() not in keys]
    return head + "[limits]\n" + "\n".join(kept) + "\n" + limits + "\n\n[tls]" + tail


# -- /metrics ------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(metrics_port: int) -> str:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        return str(response.read().decode())


def metric_sum(exposition: str, name: str, **labels: str) -> float:
    """Sum of every sample of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in exposition.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) != name:
            continue
        found = dict(_LABEL.findall(match.group(2) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match.group(3))
    return total


def wait_metric(
    metrics_port: int, name: str, minimum: float, timeout: float = TIMEOUT, **labels: str
) -> float:
    """Poll /metrics until ``name`` (filtered by ``labels``) reaches ``minimum``."""
    deadline = time.monotonic() + timeout
    value = 0.0
    while time.monotonic() < deadline:
        value = metric_sum(scrape(metrics_port), name, **labels)
        if value >= minimum:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{name}{labels} stayed at {value} (< {minimum})")


# -- a client on our engine that may misbehave ---------------------------------------------


@dataclass
class EngineClient:
    """A blocking TLS 1.3 client over ``tls13.ClientConnection`` with full control of what
    goes on the wire: half-close with close_notify, FIN without it, RST, raw records."""

    port: int
    server_name: str | None = "a.test"
    ca_pem: bytes | None = None
    session: SessionTicket | None = None
    certificate: CertificateChain | None = None
    source: str = "127.0.0.1"
    timeout: float = TIMEOUT
    keylog_lines: list[str] = field(default_factory=list)
    tickets: list[SessionTicket] = field(default_factory=list)
    received: bytearray = field(default_factory=bytearray)
    closed_clean: bool | None = None
    info: events.HandshakeComplete | None = None

    def __post_init__(self) -> None:
        from cryptography import x509

        cas = tuple(x509.load_pem_x509_certificates(self.ca_pem)) if self.ca_pem else None
        config = ClientConfig(
            ca_certificates=cas, keylog=self.keylog_lines.append, certificate=self.certificate
        )
        self.conn = ClientConnection(config, self.server_name, ("http/1.1",), self.session)
        self.sock = socket.create_connection(
            ("127.0.0.1", self.port), timeout=self.timeout, source_address=(self.source, 0)
        )

    def __enter__(self) -> EngineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def handshake(self) -> events.HandshakeComplete:
        self.conn.start()
        self.flush()
        while self.info is None:
            if not self.read_once():
                raise ConnectionError("server closed during the handshake")
        return self.info

    def read_once(self) -> bool:
        """One socket read fed to the engine; False at EOF. Raises TLSError on an alert."""
        data = self.sock.recv(65536)
        for event in self.conn.receive_data(data):
            self._on_event(event)
        self.flush()
        return bool(data)

    def _on_event(self, event: events.Event) -> None:
        if isinstance(event, events.HandshakeComplete):
            self.info = event
        elif isinstance(event, events.ApplicationData):
            self.received += event.data
        elif isinstance(event, events.NewSessionTicketReceived):
            self.tickets.append(event.ticket)
        elif isinstance(event, events.ConnectionClosed):
            self.closed_clean = event.clean

    def send(self, data: bytes) -> None:
        self.conn.send_data(data)
        self.flush()

    def receive_until(self, size: int) -> bytes:
        while len(self.received) < size and self.closed_clean is None:
            if not self.read_once():
                break
        return bytes(self.received)

    def receive_to_end(self) -> bytes:
        """Read until close_notify or EOF; ``closed_clean`` says which one it was."""
        while self.closed_clean is None:
            if not self.read_once():
                break
        return bytes(self.received)

    def wait_for_tickets(self, count: int) -> None:
        while len(self.tickets) < count:
            if not self.read_once():
                raise ConnectionError("closed before the session tickets arrived")

    def close_notify(self) -> None:
        """Send close_notify and the TCP FIN: a clean half-close, reading may go on."""
        self.conn.close()
        self.flush()
        self.sock.shutdown(socket.SHUT_WR)

    def fin_without_close_notify(self) -> None:
        """A truncation attack: the TCP stream ends but TLS never said so."""
        self.sock.shutdown(socket.SHUT_WR)

    def reset(self) -> None:
        reset_socket(self.sock)

    # Engine internals on purpose (tests only): records a well-behaved client never sends.
    def raw_record(self, content_type: int, payload: bytes) -> None:
        self.conn._record.write(content_type, payload)
        self.flush()

    def empty_records(self, count: int) -> None:
        for _ in range(count):
            self.conn._record.write(APPLICATION_DATA, b"")
        self.flush()

    def warning_alerts(self, count: int) -> None:
        for _ in range(count):
            self.conn._record.write(ALERT, bytes((1, 90)))  # warning user_canceled
        self.flush()

    def alert_from_server(self, timeout: float = TIMEOUT) -> TLSError | None:
        """Read until the server's fatal alert (returned) or EOF (None)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not self.read_once():
                    return None
        except TLSError as exc:
            return exc
        except OSError:
            return None
        raise AssertionError("the server neither sent an alert nor closed")


def reset_socket(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def plaintext_record(content_type: int, payload: bytes) -> bytes:
    return bytes((content_type, 3, 3)) + len(payload).to_bytes(2, "big") + payload


def client_hello_bytes(server_name: str = "a.test") -> bytes:
    """A fresh first flight (one ClientHello record) from our engine."""
    conn = ClientConnection(ClientConfig(), server_name, ("http/1.1",))
    conn.start()
    return conn.data_to_send()


def raw_exchange(port: int, data: bytes, timeout: float = TIMEOUT) -> bytes:
    """Send ``data`` and read until the server closes (or resets); what came back."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except ConnectionResetError:
            pass
    return bytes(received)


def alerts_in(data: bytes) -> list[int]:
    """Alert descriptions in plaintext alert records of ``data`` (records before any key)."""
    found: list[int] = []
    while len(data) >= 5:
        length = int.from_bytes(data[3:5], "big")
        if data[0] == ALERT and length == 2:
            found.append(data[6])
        data = data[5 + length :]
    return found


# -- scripted backends ---------------------------------------------------------------------


@dataclass
class BackendConnection:
    """What one backend connection saw: the bytes and how the client side ended."""

    data: bytearray = field(default_factory=bytearray)
    ended: str = "open"  # "fin", "reset", or "open" (still running / we closed first)
    done: threading.Event = field(default_factory=threading.Event)


Script = Callable[[socket.socket, BackendConnection], None]


def read_to_end(sock: socket.socket, seen: BackendConnection) -> None:
    """Read until FIN or RST, recording which one ended the stream."""
    try:
        while chunk := sock.recv(65536):
            seen.data += chunk
        seen.ended = "fin"
    except ConnectionResetError:
        seen.ended = "reset"


class ScriptedBackend(ThreadedBackend):
    """A TCP backend running ``script`` on every connection in its own thread."""

    def __init__(self, script: Script) -> None:
        super().__init__(backlog=256)
        self.script = script
        self.connections: list[BackendConnection] = []

    def __enter__(self) -> ScriptedBackend:
        super().__enter__()
        return self

    def handle(self, sock: socket.socket) -> None:
        seen = BackendConnection()
        with self._lock:
            self.connections.append(seen)
        sock.settimeout(60)
        try:
            self.script(sock, seen)
        except OSError:
            pass
        finally:
            seen.done.set()
            sock.close()

    def wait(self, count: int = 1, timeout: float = TIMEOUT) -> list[BackendConnection]:
        """The first ``count`` connections, once each script has finished."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                ready = list(self.connections[:count])
            if len(ready) == count and all(c.done.is_set() for c in ready):
                return ready
            time.sleep(0.02)
        raise AssertionError(f"backend did not finish {count} connection(s) in {timeout}s")


def echo_script(sock: socket.socket, seen: BackendConnection) -> None:
    """Echo and record; pass the client's FIN back (half-close aware)."""
    try:
        while chunk := sock.recv(65536):
            seen.data += chunk
            sock.sendall(chunk)
        seen.ended = "fin"
        sock.shutdown(socket.SHUT_WR)
    except ConnectionResetError:
        seen.ended = "reset"


def respond_after_eof(response: bytes) -> Script:
    """Read the whole request (to FIN), then send ``response`` and close: a half-close test."""

    def script(sock: socket.socket, seen: BackendConnection) -> None:
        read_to_end(sock, seen)
        if seen.ended == "fin":
            sock.sendall(response)
            sock.shutdown(socket.SHUT_WR)

    return script


def count_access_lines(log: str, end: str) -> int:
    return sum(1 for line in log.splitlines() if f"end={end}" in line)
