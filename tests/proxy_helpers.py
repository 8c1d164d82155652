"""Helpers for proxy tests: test backends (echo, HTTP, slow reader, PROXY-header parser),
a plain-TCP terminator for exercising the relay without TLS, and an observer that records."""

from __future__ import annotations

import hashlib
import socket
import struct
from dataclasses import dataclass, field
from functools import partial

import trio

from proxy.connection import ConnectionRecord, Established, SessionInfo


class PlainTerminator:
    """No TLS: the transport is the client stream; the 'SNI' is fixed per test."""

    def __init__(self, server_name: str | None = None, alpn: str | None = None) -> None:
        self.info = SessionInfo(server_name=server_name, alpn=alpn, version="plain")

    async def establish(self, transport: trio.SocketStream) -> Established:
        return Established(transport, self.info)


class SlowTerminator:
    """Never finishes its 'handshake' until the client sends a full line (slowloris target)."""

    async def establish(self, transport: trio.SocketStream) -> Established:
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
