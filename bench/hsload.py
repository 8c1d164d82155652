"""A cheap full-handshake TLS 1.3 load generator: one process, one epoll loop.

    python3 bench/hsload.py --port 4433 [--concurrency 32] [--duration 3] [--no-request]

Why it exists: ``openssl s_time`` spends about as much CPU per connection as the server
under test, so on a 2-core machine it starves the target and a 1 → 2 worker comparison
only measures the client.  This generator keeps ``--concurrency`` connections in flight
and makes each one a genuine full TLS 1.3 handshake (RFC 8446 §2, no PSK offered, so
the server must run its whole key exchange, sign a CertificateVerify and check our
Finished), then by default sends one ``GET / HTTP/1.0`` and reads the response to the
end, as ``openssl s_time -new -www /`` does, and closes with a close_notify.

What it does *not* do, to stay cheap, and why that is acceptable for a load generator:

- One X25519 key pair and one ClientHello (random included) serve every connection: the
  server still picks a fresh ServerHello random and key share per connection, so every
  connection has its own secrets, and each server-side handshake costs exactly what a
  fresh client's would.  A real client MUST NOT reuse them this way.
- The certificate and CertificateVerify are not verified (like ``curl -k``), nor is the
  server's Finished: a handshake counts only once a record the server sent after our
  Finished (its NewSessionTicket or its response) decrypts with the application keys,
  which derive from the whole transcript — proof that both sides saw the same
  handshake and that the server accepted our Finished (a wrong one gets its alert).
- Only TLS_AES_128_GCM_SHA256 and x25519 are offered (every TLS 1.3 server implements
  the first, §9.1; all targets here support the second).

Everything that does not depend on the server's key share is computed once: the
ClientHello record, the transcript hash state after it, the early-stage "derived"
secret, the HTTP request, the HkdfLabel of every label.  All primitives come from
``cryptography``: X25519, HKDF-Extract (through ``tls13.keyschedule``), HKDF-Expand
(``HKDFExpand``), HMAC and AES-GCM.

Output: one JSON object on stdout with handshakes completed, HTTP responses read,
failures by reason (alerts named), connections left unfinished at the deadline, wall
time and this process's own CPU time (user + system), so a caller can compare the
generator's CPU per handshake with the server's.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import select
import socket
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

from tls13.alerts import AlertDescription  # noqa: E402
from tls13.keyschedule import derive_secret, empty_hash, hkdf_extract  # noqa: E402

SHA256 = hashes.SHA256()
HASH_LEN = 32
KEY_LEN = 16
IV_LEN = 12
TAG_LEN = 16
SUITE_AES_128_GCM_SHA256 = 0x1301
X25519_GROUP = 0x001D
TLS13 = 0x0304
# RFC 8446 §4.1.3: a ServerHello with this random is a HelloRetryRequest.
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")

# Record content types (§5.1) and handshake message types (§4).
CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA = 20, 21, 22, 23
SERVER_HELLO, FINISHED = 2, 20
CLOSE_NOTIFY_INNER = bytes((1, AlertDescription.close_notify, ALERT))  # warning, 0, + type
RECV_SIZE = 1 << 16  # a whole server flight (certificate chain included) in one call
MAX_RECORD = (1 << 14) + 256  # §5.2: TLSCiphertext.length limit

# Connection states.
CONNECTING, WAIT_SERVER_HELLO, WAIT_FLIGHT, WAIT_RESPONSE = range(4)


def hkdf_label(label: bytes, context: bytes, length: int) -> bytes:
    """The HkdfLabel structure (§7.1), HKDF-Expand's ``info`` in HKDF-Expand-Label."""
    full_label = b"tls13 " + label
    return (
        length.to_bytes(2, "big")
        + bytes((len(full_label),))
        + full_label
        + bytes((len(context),))
        + context
    )


def expand(secret: bytes, info: bytes, length: int = HASH_LEN) -> bytes:
    """HKDF-Expand (``cryptography``'s) with a prebuilt HkdfLabel: the labels and most
    contexts of a handshake never change, so their encoding is not rebuilt each time."""
    return HKDFExpand(SHA256, length, info).derive(secret)


def label_prefix(label: bytes) -> bytes:
    """HkdfLabel for Derive-Secret up to the transcript hash, which is appended."""
    return hkdf_label(label, bytes(HASH_LEN), HASH_LEN)[:-HASH_LEN]


INFO_KEY = hkdf_label(b"key", b"", KEY_LEN)
INFO_IV = hkdf_label(b"iv", b"", IV_LEN)
INFO_FINISHED = hkdf_label(b"finished", b"", HASH_LEN)
INFO_DERIVED = hkdf_label(b"derived", empty_hash(SHA256), HASH_LEN)
PREFIX_C_HS = label_prefix(b"c hs traffic")
PREFIX_S_HS = label_prefix(b"s hs traffic")
PREFIX_C_AP = label_prefix(b"c ap traffic")
PREFIX_S_AP = label_prefix(b"s ap traffic")
ZEROS = bytes(HASH_LEN)


def _extension(kind: int, body: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body


def _vector(body: bytes, length_bytes: int) -> bytes:
    return len(body).to_bytes(length_bytes, "big") + body


def build_client_hello(public_key: bytes, server_name: str) -> bytes:
    """The ClientHello handshake message (§4.1.2) every connection sends.

    psk_key_exchange_modes is offered without a pre_shared_key: no resumption is
    attempted, but servers still issue tickets as they do for ordinary clients (so their
    per-handshake cost includes ticket sealing, as with s_time), and the first ticket is
    the handshake's completion proof when no request is sent.
    """
    name = server_name.encode("idna")
    extensions = b"".join(
        (
            _extension(0x0000, _vector(b"\x00" + _vector(name, 2), 2)),  # server_name
            _extension(0x000A, _vector(X25519_GROUP.to_bytes(2, "big"), 2)),  # groups
            # ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, ed25519, rsa_pss_rsae_sha384,
            # ecdsa_secp384r1_sha384, rsa_pkcs1_sha256 (certificate signatures only)
            _extension(0x000D, _vector(bytes.fromhex("040308040807080505030401"), 2)),
            _extension(0x002B, _vector(TLS13.to_bytes(2, "big"), 1)),  # supported_versions
            _extension(0x002D, _vector(b"\x01", 1)),  # psk_key_exchange_modes: psk_dhe_ke
            _extension(  # key_share: one x25519 share
                0x0033,
                _vector(X25519_GROUP.to_bytes(2, "big") + _vector(public_key, 2), 2),
            ),
        )
    )
    body = (
        b"\x03\x03"  # legacy_version
        + os.urandom(32)
        + b"\x00"  # empty legacy_session_id: no middlebox-compatibility CCS needed
        + _vector(SUITE_AES_128_GCM_SHA256.to_bytes(2, "big"), 2)
        + b"\x01\x00"  # legacy_compression_methods: null
        + _vector(extensions, 2)
    )
    return bytes((1,)) + _vector(body, 3)


class HandshakeFailure(Exception):
    """A connection failed; the message is the reason counted in the report."""


@dataclass
class Template:
    """What every connection shares: computed once, before the clock starts."""

    private_key: X25519PrivateKey
    hello_record: bytes
    hello_transcript: hashes.Hash  # copied per connection, never updated itself
    derived_early: bytes  # Derive-Secret(Early Secret without PSK, "derived", "")
    request_inner: bytes  # the HTTP request + inner content type, or b"" for none

    @classmethod
    def create(cls, server_name: str, request: bytes | None) -> Template:
        private_key = X25519PrivateKey.generate()
        hello = build_client_hello(private_key.public_key().public_bytes_raw(), server_name)
        transcript = hashes.Hash(SHA256)
        transcript.update(hello)
        early = hkdf_extract(SHA256, b"", bytes(HASH_LEN))
        return cls(
            private_key=private_key,
            hello_record=b"\x16\x03\x01" + len(hello).to_bytes(2, "big") + hello,
            hello_transcript=transcript,
            derived_early=derive_secret(SHA256, early, b"derived", empty_hash(SHA256)),
            request_inner=(request + bytes((APPLICATION_DATA,))) if request else b"",
        )


class RecordKey:
    """One direction's AEAD key and IV with its record sequence number (§5.3)."""

    __slots__ = ("aead", "iv", "seq")

    def __init__(self, secret: bytes) -> None:
        self.aead = AESGCM(expand(secret, INFO_KEY, KEY_LEN))
        self.iv = int.from_bytes(expand(secret, INFO_IV, IV_LEN), "big")
        self.seq = 0

    def seal(self, inner: bytes) -> bytes:
        """TLSInnerPlaintext (content + type, no padding) → one TLSCiphertext record."""
        header = b"\x17\x03\x03" + (len(inner) + TAG_LEN).to_bytes(2, "big")
        nonce = (self.iv ^ self.seq).to_bytes(IV_LEN, "big")
        self.seq += 1
        return header + self.aead.encrypt(nonce, inner, header)

    def open(self, header: bytes, fragment: bytes) -> tuple[int, bytes]:
        """(inner content type, content) of one record; raises on a bad tag."""
        nonce = (self.iv ^ self.seq).to_bytes(IV_LEN, "big")
        self.seq += 1
        try:
            inner = self.aead.decrypt(nonce, fragment, header)
        except Exception:  # cryptography's InvalidTag
            raise HandshakeFailure("record failed to decrypt") from None
        inner = inner.rstrip(b"\x00")  # §5.4: zero padding after the content type
        if not inner:
            raise HandshakeFailure("record with no content type")
        return inner[-1], inner[:-1]


def alert_name(description: int) -> str:
    try:
        return f"alert {AlertDescription(description).name}"
    except ValueError:
        return f"alert {description}"


def parse_server_hello(message: bytes) -> bytes:
    """The server's x25519 public key from a ServerHello (§4.1.3), checking what we need."""
    if message[0] != SERVER_HELLO:
        raise HandshakeFailure(f"expected ServerHello, got handshake type {message[0]}")
    if message[6:38] == HRR_RANDOM:
        raise HandshakeFailure("HelloRetryRequest (x25519 refused)")
    pos = 38
    pos += 1 + message[pos]  # legacy_session_id_echo
    suite = int.from_bytes(message[pos : pos + 2], "big")
    if suite != SUITE_AES_128_GCM_SHA256:
        raise HandshakeFailure(f"server chose cipher suite {suite:#06x}")
    pos += 3  # suite + legacy_compression_method
    end = pos + 2 + int.from_bytes(message[pos : pos + 2], "big")
    pos += 2
    share = version = None
    while pos + 4 <= end:
        kind = int.from_bytes(message[pos : pos + 2], "big")
        size = int.from_bytes(message[pos + 2 : pos + 4], "big")
        body = message[pos + 4 : pos + 4 + size]
        if kind == 0x002B:
            version = int.from_bytes(body, "big")
        elif kind == 0x0033 and int.from_bytes(body[:2], "big") == X25519_GROUP:
            share = body[4:]
        pos += 4 + size
    if version != TLS13:
        raise HandshakeFailure("server did not select TLS 1.3")
    if share is None or len(share) != 32:
        raise HandshakeFailure("ServerHello without an x25519 key_share")
    return bytes(share)


class Connection:
    """One client connection's state machine, driven by the event loop."""

    __slots__ = (
        "sock",
        "state",
        "started",
        "buffer",
        "transcript",
        "handshake_secret",
        "client_hs_secret",
        "server_key",
        "client_key",
        "flight",
        "flight_scanned",
        "completed",
        "response",
    )

    transcript: hashes.Hash  # CH..(server messages so far), set at the ServerHello
    handshake_secret: bytes
    client_hs_secret: bytes
    server_key: RecordKey  # handshake key, then the server's application key
    client_key: RecordKey  # our application key, once our Finished is sent

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.state = CONNECTING
        self.started = now
        self.buffer = b""
        self.flight = bytearray()  # decrypted server handshake messages after ServerHello
        self.flight_scanned = 0
        self.completed = False  # a post-handshake record decrypted: the handshake counts
        self.response = b""


@dataclass
class Report:
    """What one run did; ``cpu_seconds`` is this process's own user + system time."""

    handshakes: int = 0
    responses: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    unfinished: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    system_seconds: float = 0.0  # the kernel's share of cpu_seconds (TCP over loopback)
    concurrency: int = 0
    request: bool = True

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def as_json(self) -> str:
        data = asdict(self)
        data["handshakes_per_second"] = self.handshakes / self.seconds if self.seconds else 0.0
        data["cpu_ms_per_handshake"] = (
            self.cpu_seconds / self.handshakes * 1e3 if self.handshakes else None
        )
        return json.dumps(data)


def cpu_now() -> tuple[float, float]:
    """(user, system) CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


class LoadGenerator:
    """Keeps ``concurrency`` handshakes in flight against one address until a deadline."""

    def __init__(
        self,
        host: str,
        port: int,
        concurrency: int,
        template: Template,
        timeout: float = 10.0,
        keep_response: int = 64,
    ) -> None:
        self.address = (host, port)
        self.concurrency = concurrency
        self.template = template
        self.timeout = timeout
        # Response bytes kept per connection: enough for the status line by default.
        self.keep_response = keep_response
        self.last_response = b""  # the last connection's kept response, for inspection
        self.epoll = select.epoll()
        self.receive_buffer = bytearray(RECV_SIZE)
        self.receive_view = memoryview(self.receive_buffer)
        self.connections: dict[int, Connection] = {}
        self.failures: Counter[str] = Counter()
        self.handshakes = 0
        self.responses = 0

    # -- connection lifecycle ------------------------------------------------------------

    def open(self, now: float) -> None:
        """Start a connection and, when loopback has already completed the TCP handshake
        inside connect() (the usual case), send the ClientHello at once: no EPOLLOUT
        round through the loop."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self.failures[f"connect: {os.strerror(code)}"] += 1
            return
        conn = Connection(sock, now)
        fd = sock.fileno()
        self.connections[fd] = conn
        try:
            sock.send(self.template.hello_record)
        except (BlockingIOError, InterruptedError):
            self.epoll.register(fd, select.EPOLLOUT)  # still connecting: wait for it
            return
        except OSError as failure:
            self.close(fd, conn, f"connect: {failure.strerror or failure}")
            return
        conn.state = WAIT_SERVER_HELLO
        self.epoll.register(fd, select.EPOLLIN)

    def close(self, fd: int, conn: Connection, failure: str | None = None) -> None:
        if failure is not None:
            self.failures[failure] += 1
        del self.connections[fd]
        conn.sock.close()  # also leaves the epoll set

    # -- protocol steps ------------------------------------------------------------------

    def connected(self, fd: int, conn: Connection) -> None:
        error = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self.close(fd, conn, f"connect: {os.strerror(error)}")
            return
        try:
            conn.sock.send(self.template.hello_record)
        except OSError as failure:
            self.close(fd, conn, f"connect: {failure.strerror or failure}")
            return
        conn.state = WAIT_SERVER_HELLO
        self.epoll.modify(fd, select.EPOLLIN)

    def readable(self, fd: int, conn: Connection) -> None:
        try:
            # One large preallocated buffer: recv(n) would allocate n bytes per call.
            size = conn.sock.recv_into(self.receive_buffer)
        except BlockingIOError:
            return
        except OSError as error:
            self.close(fd, conn, self.ended_early(conn, error.strerror or str(error)))
            return
        data = self.receive_view[:size].tobytes()
        if not data:
            if conn.state == WAIT_RESPONSE and conn.completed:
                self.finish(fd, conn)
            else:
                self.close(fd, conn, self.ended_early(conn, "connection closed"))
            return
        buffer = conn.buffer + data if conn.buffer else data
        pos, end = 0, len(buffer)
        try:
            while end - pos >= 5:  # every complete record (§5.1 header: type, version, length)
                length = (buffer[pos + 3] << 8) | buffer[pos + 4]
                if length > MAX_RECORD:
                    raise HandshakeFailure("record too long (not TLS?)")
                stop = pos + 5 + length
                if stop > end:
                    break
                if self.record(conn, buffer[pos : pos + 5], buffer[pos + 5 : stop]):
                    self.finish(fd, conn)
                    return
                pos = stop
        except HandshakeFailure as failure:
            self.close(fd, conn, str(failure))
            return
        conn.buffer = buffer[pos:]

    @staticmethod
    def ended_early(conn: Connection, why: str) -> str:
        stage = ("connect", "ServerHello", "server flight", "response")[conn.state]
        return f"{why} while waiting for the {stage}"

    def finish(self, fd: int, conn: Connection) -> None:
        """The connection is done: its response (if one was asked for) was read.  Close it
        as a well-behaved client does, with our close_notify first (RFC 8446 §6.1), so the
        server sees an orderly end, not a truncation."""
        if self.template.request_inner:
            if conn.response.startswith(b"HTTP/1.") and b" 200 " in conn.response[:16]:
                self.responses += 1
                self.last_response = conn.response
            else:
                self.failures[f"bad response {conn.response[:24]!r}"] += 1
        try:
            conn.sock.send(conn.client_key.seal(CLOSE_NOTIFY_INNER))
        except OSError:
            pass  # the server may already have closed both directions: nothing to tell it
        self.close(fd, conn)

    def record(self, conn: Connection, header: bytes, fragment: bytes) -> bool:
        """Handle one record; True once the connection has nothing more to wait for."""
        kind = header[0]
        if conn.state == WAIT_SERVER_HELLO:
            if kind == ALERT:
                raise HandshakeFailure(alert_name(fragment[1]))
            if kind != HANDSHAKE:
                raise HandshakeFailure(f"record type {kind} before the ServerHello")
            self.server_hello(conn, fragment)
            return False
        if kind == CHANGE_CIPHER_SPEC and conn.state == WAIT_FLIGHT:
            return False  # §5: a middlebox-compatibility CCS is skipped
        if kind == ALERT:
            raise HandshakeFailure(alert_name(fragment[1]) + " (plaintext)")
        if kind != APPLICATION_DATA:
            raise HandshakeFailure(f"unexpected record type {kind}")
        content_type, content = conn.server_key.open(header, fragment)
        if content_type == ALERT:
            if content[1] == AlertDescription.close_notify and conn.completed:
                return True
            raise HandshakeFailure(alert_name(content[1]))
        if conn.state == WAIT_FLIGHT:
            if content_type != HANDSHAKE:
                raise HandshakeFailure(f"content type {content_type} inside the server flight")
            conn.flight += content
            self.scan_flight(conn)
            return False
        return self.after_handshake(conn, content_type, content)

    def after_handshake(self, conn: Connection, content_type: int, content: bytes) -> bool:
        """A record protected with the server's application key: the server accepted our
        Finished (it sends tickets and responses only after checking it, §4.6.1)."""
        if not conn.completed:
            conn.completed = True
            self.handshakes += 1
        if not self.template.request_inner:
            return True  # handshake-only mode: its first ticket is all we wait for
        if content_type == APPLICATION_DATA and len(conn.response) < self.keep_response:
            conn.response += content
        return False

    def server_hello(self, conn: Connection, fragment: bytes) -> None:
        """Derive the handshake secrets from the server's share (§7.1)."""
        if len(fragment) < 4 or len(fragment) != 4 + int.from_bytes(fragment[1:4], "big"):
            raise HandshakeFailure("ServerHello not alone in its record")
        peer = X25519PublicKey.from_public_bytes(parse_server_hello(fragment))
        shared = self.template.private_key.exchange(peer)
        transcript = self.template.hello_transcript.copy()
        transcript.update(fragment)
        hello_hash = transcript.copy().finalize()
        handshake_secret = hkdf_extract(SHA256, self.template.derived_early, shared)
        conn.transcript = transcript
        conn.handshake_secret = handshake_secret
        conn.client_hs_secret = expand(handshake_secret, PREFIX_C_HS + hello_hash)
        conn.server_key = RecordKey(expand(handshake_secret, PREFIX_S_HS + hello_hash))
        conn.state = WAIT_FLIGHT

    def scan_flight(self, conn: Connection) -> None:
        """Find the server's Finished among its decrypted messages (EncryptedExtensions,
        Certificate, CertificateVerify: hashed, not verified)."""
        flight, pos = conn.flight, conn.flight_scanned
        while len(flight) - pos >= 4:
            size = int.from_bytes(flight[pos + 1 : pos + 4], "big")
            if len(flight) - pos - 4 < size:
                break
            if flight[pos] == FINISHED:
                if pos + 4 + size != len(flight):
                    raise HandshakeFailure("data after the server Finished")
                self.server_finished(conn)
                return
            pos += 4 + size
        conn.flight_scanned = pos

    def server_finished(self, conn: Connection) -> None:
        """Send our Finished (+ the request) in one write, and switch to the server's
        application key (§7.1: both derive from the transcript through its Finished).

        The server's Finished is hashed but not checked: any disagreement about the
        transcript shows anyway, as its next record failing to decrypt."""
        transcript = conn.transcript
        transcript.update(bytes(conn.flight))
        flight_hash = transcript.finalize()
        mac = hmac.HMAC(expand(conn.client_hs_secret, INFO_FINISHED), SHA256)
        mac.update(flight_hash)
        finished = b"\x14\x00\x00" + bytes((HASH_LEN,)) + mac.finalize()  # §4.4.4
        out = RecordKey(conn.client_hs_secret).seal(finished + bytes((HANDSHAKE,)))
        master = hkdf_extract(SHA256, expand(conn.handshake_secret, INFO_DERIVED), ZEROS)
        conn.server_key = RecordKey(expand(master, PREFIX_S_AP + flight_hash))
        conn.client_key = RecordKey(expand(master, PREFIX_C_AP + flight_hash))
        if self.template.request_inner:
            out += conn.client_key.seal(self.template.request_inner)
        try:
            conn.sock.send(out)  # a few hundred bytes: always fits the empty send buffer
        except OSError as failure:
            raise HandshakeFailure(f"sending Finished: {failure.strerror or failure}") from None
        conn.state = WAIT_RESPONSE

    # -- the loop --------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        for fd, conn in list(self.connections.items()):
            if now - conn.started > self.timeout:
                self.close(fd, conn, self.ended_early(conn, f"timeout ({self.timeout:.0f}s)"))

    def run(self, duration: float) -> Report:
        cpu_start = cpu_now()
        started = now = time.monotonic()
        deadline = started + duration
        next_expiry = started + 1.0
        connections = self.connections
        poll = self.epoll.poll
        while now < deadline:
            while len(connections) < self.concurrency:
                self.open(now)
            for fd, events in poll(min(0.2, deadline - now)):
                conn = connections.get(fd)
                if conn is None:
                    continue
                if conn.state == CONNECTING:
                    self.connected(fd, conn)
                elif events & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                    self.readable(fd, conn)
            now = time.monotonic()
            if now >= next_expiry:
                self.expire(now)
                next_expiry = now + 1.0
        elapsed = time.monotonic() - started
        user_end, system_end = cpu_now()
        unfinished = len(connections)
        for fd, conn in list(connections.items()):
            self.close(fd, conn)
        self.epoll.close()
        return Report(
            handshakes=self.handshakes,
            responses=self.responses,
            failures=dict(self.failures.most_common()),
            unfinished=unfinished,
            seconds=elapsed,
            cpu_seconds=user_end - cpu_start[0] + system_end - cpu_start[1],
            system_seconds=system_end - cpu_start[1],
            concurrency=self.concurrency,
            request=bool(self.template.request_inner),
        )


def raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-name", default="localhost", help="SNI host name")
    parser.add_argument("--concurrency", type=int, default=32, help="connections in flight")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of load")
    parser.add_argument(
        "--no-request",
        action="store_true",
        help="handshake only: wait for the server's first ticket instead of a GET response",
    )
    parser.add_argument("--path", default="/", help="what the GET asks for")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-connection limit")
    parser.add_argument(
        "--wait-for-go",
        action="store_true",
        help='print "ready" once set up, then start on a line from stdin (lets a caller '
        "sample CPU counters around the load alone, without interpreter start-up)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile_limit()
    request = None if args.no_request else f"GET {args.path} HTTP/1.0\r\n\r\n".encode()
    template = Template.create(args.server_name, request)
    generator = LoadGenerator(args.host, args.port, args.concurrency, template, args.timeout)
    if args.wait_for_go:
        print("ready", flush=True)
        sys.stdin.readline()
    report = generator.run(args.duration)
    print(report.as_json(), flush=True)
    return 0 if report.handshakes and not report.failed else 1


if __name__ == "__main__":
    sys.exit(main())
