"""Handshake messages printed in the RFC 8448-format example traces.

A small reader of /work/shared/specs/tls13-example-traces.txt: every
``Name (N octets):  hex...`` block whose name is a handshake message, with the
hex gathered across continuation lines and page breaks until N octets are read.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

TRACE_FILE = Path("/work/shared/specs/tls13-example-traces.txt")

MESSAGE_NAMES = (
    "ClientHello",
    "ServerHello",
    "EncryptedExtensions",
    "CertificateRequest",
    "Certificate",
    "CertificateVerify",
    "Finished",
    "NewSessionTicket",
    "EndOfEarlyData",
)

_SECTION = re.compile(r"^(\d+)\.\s+(\S.*)$")
_LABEL = re.compile(r"^\s+(\w[\w ]*?) \((\d+) octets\):\s+((?:[0-9a-f]{2}\s*)+)$")
_HEX_LINE = re.compile(r"^\s+((?:[0-9a-f]{2} ?)+)\s*$")


def _collect(lines: list[str], start: int, first_hex: str, size: int) -> bytes:
    tokens = first_hex.split()
    i = start + 1
    while len(tokens) < size and i < len(lines):
        match = _HEX_LINE.match(lines[i])
        if match:
            tokens += match.group(1).split()
        i += 1
    if len(tokens) != size:
        raise ValueError(f"trace block at line {start + 1} has {len(tokens)} of {size} octets")
    return bytes.fromhex("".join(tokens))


@lru_cache(maxsize=1)
def trace_blocks() -> tuple[tuple[str, str, bytes], ...]:
    """Every labelled byte block as (section title, label, bytes), in file order."""
    lines = TRACE_FILE.read_text().splitlines()
    section = ""
    blocks = []
    for index, line in enumerate(lines):
        heading = _SECTION.match(line)
        if heading:
            section = heading.group(2).strip()
            continue
        label = _LABEL.match(line)
        if label:
            name, size, hex_part = label.group(1), int(label.group(2)), label.group(3)
            blocks.append((section, name, _collect(lines, index, hex_part, size)))
    return tuple(blocks)


def _declared_size(message: bytes) -> int:
    return 4 + int.from_bytes(message[1:4], "big")


def trace_messages() -> list[tuple[str, str, bytes]]:
    """The handshake messages of all sections as (section, message name, bytes).

    The resumption trace prints its ClientHello truncated before the binders
    (the binder input); the complete message is the record payload sent next,
    so that payload stands in for it.
    """
    blocks = trace_blocks()
    messages = []
    for index, (section, name, data) in enumerate(blocks):
        if name not in MESSAGE_NAMES:
            continue
        if len(data) < _declared_size(data):
            data = _completion(blocks[index + 1 :], data)
        messages.append((section, name, data))
    return messages


def _completion(later: tuple[tuple[str, str, bytes], ...], prefix: bytes) -> bytes:
    for _, name, data in later:
        if name == "payload" and data.startswith(prefix) and len(data) == _declared_size(prefix):
            return data
    raise ValueError("no complete payload for a truncated trace message")


def truncated_client_hellos() -> list[tuple[bytes, bytes]]:
    """(binder input prefix, complete ClientHello) pairs printed in the traces."""
    pairs = []
    blocks = trace_blocks()
    for index, (_, name, data) in enumerate(blocks):
        if name == "ClientHello" and len(data) < _declared_size(data):
            pairs.append((data, _completion(blocks[index + 1 :], data)))
    return pairs


def trace_message(section_prefix: str, name: str, index: int = 0) -> bytes:
    """The ``index``-th message called ``name`` in the section starting with ``section_prefix``."""
    found = [
        data
        for section, label, data in trace_messages()
        if section.startswith(section_prefix) and label == name
    ]
    return found[index]


# ----------------------------------------------------------------------------- driving connections
# (engine modules are imported inside the functions so the trace helpers above
# work even while parts of the engine are still missing)

OPENSSL = "openssl"


def record(content_type: int, payload: bytes, version: int = 0x0303) -> bytes:
    """One unprotected TLS record."""
    return (
        bytes([content_type])
        + version.to_bytes(2, "big")
        + len(payload).to_bytes(2, "big")
        + payload
    )


def split_records(data: bytes) -> list[tuple[int, bytes]]:
    """Split wire bytes into (content type, payload) records (payloads still protected)."""
    records, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        records.append((data[pos], data[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    return records


def pump(client: Any, server: Any, rounds: int = 50) -> tuple[list[Any], list[Any]]:
    """Shuttle bytes between two in-memory connections until both are quiet.

    Returns the events each side produced.  A TLSError on either side is
    re-raised after the alert it queued has been delivered to the other side
    (whose own resulting error, if any, is attached as ``peer_error``).
    """
    from tls13.alerts import TLSError

    client_events: list[Any] = []
    server_events: list[Any] = []
    for _ in range(rounds):
        to_server = client.data_to_send()
        to_client = b""
        if to_server:
            try:
                server_events += server.receive_data(to_server)
            except TLSError as error:
                _deliver(client, server.data_to_send(), error)
                raise
        to_client = server.data_to_send()
        if to_client:
            try:
                client_events += client.receive_data(to_client)
            except TLSError as error:
                _deliver(server, client.data_to_send(), error)
                raise
        if not to_server and not to_client:
            return client_events, server_events
    raise AssertionError("connections did not settle")


def _deliver(peer: Any, data: bytes, error: Exception) -> None:
    from tls13.alerts import TLSError

    try:
        if data:
            peer.receive_data(data)
    except TLSError as peer_error:
        error.peer_error = peer_error  # type: ignore[attr-defined]


class SocketClient:
    """Runs a sans-IO client connection over a blocking loopback socket."""

    def __init__(self, connection: Any, port: int, host: str = "127.0.0.1", timeout: float = 15):
        self.conn = connection
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.events: list[Any] = []
        self.received = bytearray()
        self.eof = False

    def close(self) -> None:
        self.sock.close()

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def step(self) -> None:
        """Send what is queued, then read once and feed it to the engine."""
        from tls13 import events
        from tls13.alerts import TLSError

        self.flush()
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
        try:
            new = self.conn.receive_data(data)
        except TLSError:
            try:
                self.flush()
            except OSError:
                pass
            raise
        for event in new:
            if isinstance(event, events.ApplicationData):
                self.received += event.data
        self.events += new
        self.flush()

    def until(self, done: Callable[[], bool], timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if self.eof:
                raise AssertionError("connection ended before the condition held")
            if time.monotonic() > deadline:
                raise AssertionError("timed out")
            self.step()

    def handshake(self) -> Any:
        self.conn.start()
        self.until(lambda: self.conn.handshake_complete)
        return self.conn.info

    def read_to_eof(self, timeout: float = 15) -> bytes:
        from tls13 import events

        deadline = time.monotonic() + timeout
        while not self.eof and not any(isinstance(e, events.ConnectionClosed) for e in self.events):
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for the end of the stream")
            self.step()
        return bytes(self.received)


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"server exited early: {process.stderr.read() if process.stderr else ''!r}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server did not start listening")


def start_openssl_server(
    port: int,
    cert: str,
    key: str,
    extra: Sequence[str] = (),
    mode: str = "-www",
    naccept: int = 2,
    stdout: Any = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """``openssl s_server`` for TLS 1.3 on loopback; the readiness probe counts as one accept.

    ``mode`` is -www, -rev... or "" for the plain mode that prints what it
    receives to ``stdout`` (the only mode that accepts 0-RTT).
    """
    command = [
        OPENSSL,
        "s_server",
        "-accept",
        f"127.0.0.1:{port}",
        "-cert",
        cert,
        "-key",
        key,
        "-tls1_3",
        "-naccept",
        str(naccept),
        *([mode] if mode else ["-quiet"]),
        *extra,
    ]
    # In plain mode s_server stops serving when its stdin ends, so keep a pipe open.
    stdin = subprocess.PIPE if not mode else subprocess.DEVNULL
    process = subprocess.Popen(command, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
    wait_for_port(port, process)
    return process


class ScriptedServer:
    """A hand-driven TLS 1.3 server side for negative client tests.

    It answers one ClientHello with x25519 and TLS_AES_128_GCM_SHA256, then
    lets the test send any handshake messages it likes under the right keys,
    so a single field can be wrong while everything around it is valid.
    """

    def __init__(self, client_hello: bytes, suite_code: int = 0x1301) -> None:
        import os

        from tls13 import extensions as ext
        from tls13.groups import BY_NAME, GROUPS
        from tls13.keyschedule import KeySchedule
        from tls13.messages import ClientHello, ServerHello
        from tls13.record import RecordLayer
        from tls13.suites import SUITES
        from tls13.transcript import Transcript

        hello = ClientHello.parse(client_hello[4:])
        x25519 = BY_NAME["x25519"]
        shares = {entry.group: entry for entry in hello.key_shares() or []}
        public, shared = GROUPS[x25519].respond(shares[x25519].key_exchange, os.urandom)
        self.suite = SUITES[suite_code]
        server_hello = ServerHello(
            random=os.urandom(32),
            legacy_session_id_echo=hello.legacy_session_id,
            cipher_suite=suite_code,
            extensions=[
                (
                    ext.ExtensionType.key_share,
                    ext.encode_key_share_sh(ext.KeyShareEntry(x25519, public)),
                ),
                (ext.ExtensionType.supported_versions, ext.encode_uint16_body(0x0304)),
            ],
        ).serialize()
        self.transcript = Transcript(self.suite.hash)
        self.transcript.update(client_hello)
        self.transcript.update(server_hello)
        self.record = RecordLayer()
        self.record.write(22, server_hello)
        self.schedule = KeySchedule(self.suite)
        self.schedule.set_psk(None)
        self.schedule.set_shared_secret(shared)
        digest = self.transcript.digest()
        self.client_hs = self.schedule.client_handshake_traffic_secret(digest)
        self.server_hs = self.schedule.server_handshake_traffic_secret(digest)
        self.record.set_write_key(self.suite, self.server_hs)

    def send(self, message: bytes) -> None:
        """One handshake message in its own protected record, added to the transcript."""
        self.transcript.update(message)
        self.record.write(22, message)

    def send_certificate(self, issued: Any, scheme: int = 0x0403) -> None:
        from tls13.messages import Certificate, CertificateEntry, CertificateVerify
        from tls13.signatures import SCHEMES, certificate_verify_input

        der = issued.cert.public_bytes(Encoding.DER)
        self.send(Certificate(b"", (CertificateEntry(der),)).serialize())
        signed = certificate_verify_input(True, self.transcript.digest())
        self.send(CertificateVerify(scheme, SCHEMES[scheme].sign(issued.key, signed)).serialize())

    def finished_message(self) -> bytes:
        from tls13.keyschedule import finished_verify_data
        from tls13.messages import Finished

        verify_data = finished_verify_data(
            self.suite.hash, self.server_hs, self.transcript.digest()
        )
        return Finished(verify_data).serialize()

    def send_finished(self) -> None:
        """Finished, then switch to the server application keys (for post-handshake messages)."""
        self.send(self.finished_message())
        self.schedule.set_master()
        secret = self.schedule.server_application_traffic_secret(self.transcript.digest())
        self.record.set_write_key(self.suite, secret)

    def output(self) -> bytes:
        return self.record.take_output()
