"""Helpers for proxy tests: test backends (echo, HTTP, slow reader, PROXY-header parser),
a plain-TCP terminator for exercising the relay without TLS, and an observer that records."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import socketserver
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import trio
from certs import Issued, make_leaf, write_pair

from proxy.connection import ConnectionRecord, EarlyDataHandler, Established, SessionInfo


class PlainTerminator:
    """No TLS: the transport is the client stream; the 'SNI' is fixed per test."""

    def __init__(self, server_name: str | None = None, alpn: str | None = None) -> None:
        self.info = SessionInfo(server_name=server_name, alpn=alpn, version="plain")

    async def establish(
        self, transport: trio.SocketStream, early: EarlyDataHandler | None = None
    ) -> Established:
        return Established(transport, self.info)


class SlowTerminator:
    """Never finishes its 'handshake' until the client sends a full line (slowloris target)."""

    async def establish(
        self, transport: trio.SocketStream, early: EarlyDataHandler | None = None
    ) -> Established:
        data = b""
        while not data.endswith(b"\n"):
            chunk = await transport.receive_some(1)
            if not chunk:
                raise trio.BrokenResourceError("eof in handshake")
            data += chunk
        return Established(transport, SessionInfo(server_name=data.strip().decode() or None))


@dataclass
class RecordingObserver:
    finished: list[ConnectionRecord] = field(default_factory=list)
    handshakes: int = 0
    opened: int = 0

    def connection_opened(self, record: ConnectionRecord) -> None:
        self.opened += 1

    def handshake_done(self, record: ConnectionRecord) -> None:
        self.handshakes += 1

    def connection_finished(self, record: ConnectionRecord) -> None:
        self.finished.append(record)


@dataclass
class EchoServer:
    """Echoes everything; half-closes after its peer does; counts connections."""

    tag: bytes = b""
    connections: int = 0
    port: int = 0

    async def handler(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        async with stream:
            try:
                if self.tag:
                    await stream.send_all(self.tag)
                while data := await stream.receive_some(65536):
                    await stream.send_all(data)
                await stream.send_eof()
            except trio.BrokenResourceError:
                pass

    async def start(self, nursery: trio.Nursery) -> int:
        listeners = await nursery.start(partial(trio.serve_tcp, self.handler, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]
        return self.port


@dataclass
class SlowReader:
    """Reads slowly and records how much arrived; used to check bounded buffering."""

    delay: float = 0.05
    chunk: int = 4096
    received: int = 0
    port: int = 0

    async def handler(self, stream: trio.SocketStream) -> None:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        async with stream:
            try:
                while data := await stream.receive_some(self.chunk):
                    self.received += len(data)
                    await trio.sleep(self.delay)
            except trio.BrokenResourceError:
                pass

    async def start(self, nursery: trio.Nursery) -> int:
        listeners = await nursery.start(partial(trio.serve_tcp, self.handler, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]
        return self.port


def parse_proxy_header(data: bytes) -> tuple[dict[str, object], bytes]:
    """Parse a PROXY v1 or v2 header (proxy-protocol.txt §2.1, §2.2); return fields and rest."""
    if data.startswith(b"PROXY "):
        line, _, rest = data.partition(b"\r\n")
        parts = line.decode("ascii").split(" ")
        fields: dict[str, object] = {"version": 1, "family": parts[1]}
        if parts[1] != "UNKNOWN":
            fields.update(src=parts[2], dst=parts[3], sport=int(parts[4]), dport=int(parts[5]))
        return fields, rest
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    if not data.startswith(signature):
        raise ValueError("no PROXY header")
    ver_cmd, fam, length = struct.unpack("!BBH", data[12:16])
    body, rest = data[16 : 16 + length], data[16 + length :]
    fields = {"version": 2, "command": ver_cmd & 0x0F, "family": fam}
    if fam == 0x11:
        src, dst, sport, dport = struct.unpack("!4s4sHH", body[:12])
        fields.update(
            src=socket.inet_ntop(socket.AF_INET, src),
            dst=socket.inet_ntop(socket.AF_INET, dst),
            sport=sport,
            dport=dport,
        )
        tlv_data = body[12:]
    elif fam == 0x21:
        src, dst, sport, dport = struct.unpack("!16s16sHH", body[:36])
        fields.update(
            src=socket.inet_ntop(socket.AF_INET6, src),
            dst=socket.inet_ntop(socket.AF_INET6, dst),
            sport=sport,
            dport=dport,
        )
        tlv_data = body[36:]
    else:
        tlv_data = b""
    fields["tlvs"] = _parse_tlvs(tlv_data)
    return fields, rest


def _parse_tlvs(data: bytes) -> dict[int, bytes]:
    tlvs: dict[int, bytes] = {}
    while len(data) >= 3:
        kind, length = struct.unpack("!BH", data[:3])
        tlvs[kind] = data[3 : 3 + length]
        data = data[3 + length :]
    return tlvs


def pattern(seed: int, size: int) -> bytes:
    """Deterministic, connection-specific bytes so any mix-up or corruption shows."""
    block = hashlib.sha256(seed.to_bytes(8, "big")).digest() * 64
    return (block * (size // len(block) + 1))[:size]


# -- end-to-end helpers: backends in threads, the daemon as a subprocess -------------------


REPO = Path(__file__).resolve().parent.parent
# How long to wait for something the daemon will do (start, log a line) before calling it a
# failure. Only a failing test waits this long, so it is sized for a loaded 2-CPU machine
# (workers took over 3 s to start there), not for the usual case.
WAIT = 60.0


class _ThreadingTCP(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


class ThreadedEcho:
    """A raw TCP echo server (its own thread per connection) prefixed by a tag."""

    def __init__(self, tag: bytes = b"", proxy_header: bool = False) -> None:
        self.tag = tag
        self.proxy_header = proxy_header
        self.headers: list[dict[str, object]] = []
        self.connections = 0
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.connections += 1
                sock: socket.socket = self.request
                try:
                    pending = outer._read_header(sock) if outer.proxy_header else b""
                    if outer.tag:
                        sock.sendall(outer.tag)
                    if pending:
                        sock.sendall(pending)
                    while data := sock.recv(262144):
                        sock.sendall(data)
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        self.server = _ThreadingTCP(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _read_header(self, sock: socket.socket) -> bytes:
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                raise OSError("eof before PROXY header")
            data += chunk
            try:
                fields, rest = parse_proxy_header(data)
            except (ValueError, struct.error, IndexError):
                if len(data) > 65536:
                    raise
                continue
            if fields.get("version") == 2 and len(data) < 16 + struct.unpack("!H", data[14:16])[0]:
                continue
            if fields.get("version") == 1 and b"\r\n" not in data:
                continue
            self.headers.append(fields)
            return rest

    def __enter__(self) -> ThreadedEcho:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ThreadedHTTP:
    """A Python HTTP server answering every GET with ``name path`` (to see who served it)."""

    def __init__(self, name: str) -> None:
        server_name = name

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                body = f"{server_name} {self.path}\n".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ThreadedHTTP:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def toml_list(items: list[str] | tuple[str, ...]) -> str:
    return json.dumps(list(items))


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    """The proxy running as ``python -m proxy --config FILE`` in a subprocess."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    config_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait_for_log(self, text: str, timeout: float = WAIT, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged {count}x; log:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = WAIT) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"proxy exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} never opened")


def start_daemon(
    config_path: Path, port: int, processes: list[subprocess.Popen[bytes]], log_name: str = "proxy"
) -> Daemon:
    log_path = config_path.parent / f"{log_name}.log"
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    for name in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "WATCHDOG_USEC"):
        env.pop(name, None)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--config", str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(config_path.parent),
            start_new_session=True,
        )
    processes.append(process)
    wait_for_port(port, process)
    return Daemon(process, port, log_path, config_path)


def client_context(ca_pem: bytes | None = None, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem.decode() if ca_pem else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if ca_pem is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


@contextmanager
def tls_client(
    port: int, server_name: str, context: ssl.SSLContext, timeout: float = 10
) -> Iterator[ssl.SSLSocket]:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    tls = context.wrap_socket(raw, server_hostname=server_name)
    try:
        yield tls
    finally:
        tls.close()


def tls_exchange(
    port: int, server_name: str, context: ssl.SSLContext, payload: bytes, expect: int
) -> bytes:
    """Send ``payload`` over TLS, read ``expect`` bytes back, then close cleanly: our
    close_notify travels to the backend as EOF and its EOF comes back as close_notify."""
    with tls_client(port, server_name, context) as tls:
        tls.sendall(payload)
        received = recv_exactly(tls, expect)
        tls.unwrap()
        return received


def recv_exactly(sock: socket.socket, expect: int) -> bytes:
    received = bytearray()
    while len(received) < expect:
        try:
            chunk = sock.recv(min(262144, expect - len(received)))
        except ssl.SSLZeroReturnError:
            break
        if not chunk:
            break
        received += chunk
    return bytes(received)


# -- configurations for end-to-end tests ---------------------------------------------------


@dataclass
class Site:
    """A test directory with certificates for a.test, b.test and *.wild.test."""

    root: Path
    ca: Issued
    port: int

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem()


def make_site(tmp_path: Path, test_ca: Issued) -> Site:
    """Certificates for a.test and b.test + *.wild.test, and a free port for the proxy."""
    for stem, names in (("a", ("a.test",)), ("b", ("b.test", "*.wild.test"))):
        write_pair(tmp_path, stem, make_leaf(test_ca, names), test_ca)
    return Site(tmp_path, test_ca, free_port())


def config_text(
    site: Site,
    routes: str,
    backends: str,
    extra: str = "",
    tls: str = 'alpn = ["http/1.1"]',
    limits: str = "",
    handshake_timeout: float = 20.0,
    drain_timeout: float = 3.0,
) -> str:
    return f"""
[global]
state_dir = "{site.root / "state"}"
log_level = "info"
{extra}

[metrics]
enabled = false

[limits]
handshake_timeout = {handshake_timeout}
idle_timeout = 20.0
drain_timeout = {drain_timeout}
{limits}

[tls]
{tls}

[certificates.a]
chain = "a.crt"
key = "a.key"

[certificates.b]
chain = "b.crt"
key = "b.key"

[listeners.main]
addresses = ["127.0.0.1:{site.port}"]

{routes}

{backends}
"""


def pool(name: str, ports: list[int], extra: str = "") -> str:
    servers = toml_list([f"127.0.0.1:{p}" for p in ports])
    return f"""
[backends.{name}]
servers = {servers}
connect_timeout = 1.0
health = {{ enabled = false }}
{extra}
"""


def launch(site: Site, text: str, processes: list[subprocess.Popen[bytes]]) -> Daemon:
    path = site.root / "proxy.toml"
    path.write_text(text)
    return start_daemon(path, site.port, processes)
