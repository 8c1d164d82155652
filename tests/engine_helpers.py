"""Helpers for the engine's server tests: trace keys, in-memory pairs and a TCP harness.

* :func:`trace_rsa_key` rebuilds the RSA server key printed in section 2 of the
  example traces; :func:`trace_records` lists the records each side sends.
* :class:`EngineServer` runs :class:`tls13.ServerConnection` behind a real
  loopback TCP socket in a thread, so command-line clients (openssl, gnutls-cli,
  curl) and Python's ``ssl`` can talk to it.  Each connection greets the client,
  echoes what it receives and records its events and its error, if any.
"""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core_helpers import TRACE_FILE, trace_steps
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tls13 import events
from tls13 import extensions as ext
from tls13.alerts import TLSError
from tls13.certificates import CertificateChain, CertificateStore
from tls13.config import ServerConfig
from tls13.connection import Connection
from tls13.extensions import ExtensionType, KeyShareEntry
from tls13.groups import GROUPS
from tls13.keyschedule import KeySchedule, finished_verify_data, next_traffic_secret
from tls13.messages import ClientHello, Finished, HandshakeReassembler, ServerHello
from tls13.record import RecordLayer
from tls13.server import ServerConnection
from tls13.suites import SUITES
from tls13.tickets import SessionTicket
from tls13.transcript import Transcript

GREETING = b"hello from tls13\n"

# --------------------------------------------------------------------------- traces


def _private_key_fields() -> dict[str, int]:
    """The RSA fields of section 2 ("Private Keys") as integers."""
    text = TRACE_FILE.read_text()
    start = text.index("\n2.  Private Keys\n")  # the heading, not the table of contents
    end = text.index("\n3.  Simple 1-RTT Handshake\n", start)
    fields: dict[str, int] = {}
    name: str | None = None
    digits = ""
    for line in text[start:end].splitlines():
        m = re.match(r"^   ([a-z0-9 ()]+?):  ([0-9a-f ]+)$", line)
        if m:
            if name is not None:
                fields[name] = int(digits, 16)
            name, digits = m.group(1).split(" (")[0], m.group(2).replace(" ", "")
        elif name is not None and re.match(r"^\s+[0-9a-f]{2}( [0-9a-f]{2})*\s*$", line):
            digits += line.strip().replace(" ", "")
    if name is not None:
        fields[name] = int(digits, 16)
    return fields


def trace_rsa_key() -> rsa.RSAPrivateKey:
    """The server's RSA key from the traces (RFC 8448 §2 format)."""
    f = _private_key_fields()
    public = rsa.RSAPublicNumbers(f["public exponent"], f["modulus"])
    private = rsa.RSAPrivateNumbers(
        p=f["prime1"],
        q=f["prime2"],
        d=f["private exponent"],
        dmp1=f["exponent1"],
        dmq1=f["exponent2"],
        iqmp=f["coefficient"],
        public_numbers=public,
    )
    return private.private_key()


def pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class TraceRecord:
    role: str  # "client" or "server"
    kind: str  # "handshake", "application_data", "alert"
    record: bytes


def trace_records(section: str) -> list[TraceRecord]:
    """Every complete record each side sends, in trace order."""
    out: list[TraceRecord] = []
    for step in trace_steps(section):
        m = re.match(r"send (\w+) record", step.step)
        if m:
            out.append(TraceRecord(step.role, m.group(1), step.values["complete record"]))
        elif "complete record" in step.values:
            # A compatibility CCS is printed as its own record without a "send" step.
            out.append(TraceRecord(step.role, "change_cipher_spec", step.values["complete record"]))
    return out


def split_records(data: bytes) -> list[bytes]:
    """Split a byte stream into TLS records (header included)."""
    records = []
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        records.append(data[pos : pos + 5 + length])
        pos += 5 + length
    return records


class ScriptedRandom:
    """An injectable ``random(n)`` that hands out queued values, then fails loudly."""

    def __init__(self, values: Sequence[bytes]) -> None:
        self._values = list(values)

    def __call__(self, n: int) -> bytes:
        if not self._values:
            raise AssertionError(f"unexpected request for {n} random bytes")
        value = self._values.pop(0)
        if len(value) != n:
            raise AssertionError(f"scripted random value has {len(value)} bytes, wanted {n}")
        return value


# --------------------------------------------------------------------------- certificates


def store_for(pairs: Sequence[tuple[bytes, bytes]]) -> CertificateStore:
    """A CertificateStore over (chain PEM, key PEM) pairs; the first is the default."""
    chains = [CertificateChain.from_pem(chain, key) for chain, key in pairs]
    return CertificateStore(chains, chains[0])


# --------------------------------------------------------------------------- TCP harness


@dataclass
class ConnectionRecord:
    """What one accepted connection saw."""

    events: list[events.Event] = field(default_factory=list)
    error: TLSError | None = None
    info: events.HandshakeComplete | None = None
    received: bytearray = field(default_factory=bytearray)
    done: threading.Event = field(default_factory=threading.Event)


Behaviour = Callable[[ServerConnection, events.Event], None]


def echo_behaviour(conn: ServerConnection, event: events.Event) -> None:
    """Greet after the handshake, echo data, answer close_notify with close_notify."""
    if isinstance(event, events.HandshakeComplete):
        conn.send_data(GREETING)
    elif isinstance(event, events.ApplicationData):
        conn.send_data(event.data)
    elif isinstance(event, events.ConnectionClosed):
        conn.close()


HTTP_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"


def http_behaviour(conn: ServerConnection, event: events.Event) -> None:
    """Answer the first HTTP request with a tiny 200 response, then close."""
    if isinstance(event, events.ApplicationData) and b"\r\n\r\n" in event.data:
        conn.send_data(HTTP_RESPONSE)
        conn.close()
    elif isinstance(event, events.ConnectionClosed):
        conn.close()


class EngineServer:
    """A loopback TCP server running one ServerConnection per accepted socket."""

    def __init__(
        self,
        config: ServerConfig,
        behaviour: Behaviour = echo_behaviour,
        host: str = "127.0.0.1",
        timeout: float = 20.0,
    ) -> None:
        self.config = config
        self.behaviour = behaviour
        self.timeout = timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(16)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self.connections: list[ConnectionRecord] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> EngineServer:
        thread = threading.Thread(target=self._accept_loop, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def wait_for(self, count: int = 1, timeout: float = 15.0) -> list[ConnectionRecord]:
        """Wait until ``count`` connections have finished; return their records."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.connections) >= count and all(
                c.done.is_set() for c in self.connections[:count]
            ):
                return self.connections[:count]
            time.sleep(0.02)
        raise AssertionError(f"only {len(self.connections)} connections finished in time")

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._listener], [], [], 0.1)
            if not ready:
                continue
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            record = ConnectionRecord()
            self.connections.append(record)
            thread = threading.Thread(target=self._serve, args=(sock, record), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, sock: socket.socket, record: ConnectionRecord) -> None:
        conn = ServerConnection(self.config)
        sock.settimeout(self.timeout)
        try:
            self._pump(sock, conn, record)
        except TLSError as error:
            record.error = error
            _send_quietly(sock, conn.data_to_send())
        except OSError:
            pass
        finally:
            record.info = conn.info
            sock.close()
            record.done.set()

    def _pump(self, sock: socket.socket, conn: ServerConnection, record: ConnectionRecord) -> None:
        while True:
            data = sock.recv(65536)
            new_events = conn.receive_data(data)
            record.events.extend(new_events)
            finished = False
            for event in new_events:
                if isinstance(event, events.ApplicationData):
                    record.received += event.data
                self.behaviour(conn, event)
                if isinstance(event, events.ConnectionClosed):
                    finished = True
            sock.sendall(conn.data_to_send())
            if finished or not data:
                return


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        return


# --------------------------------------------------------------------------- subprocess clients


@dataclass
class ClientRun:
    returncode: int | None
    stdout: str
    stderr: str


# openssl s_client reads a lone "k"/"K" line as "send a KeyUpdate (requesting one back)".
_CLIENT_COMMANDS = frozenset({b"k\n", b"K\n"})


def run_client(
    argv: Sequence[str],
    stdin_lines: Sequence[bytes] = (),
    wait_for: bytes | None = GREETING.strip(),
    timeout: float = 20.0,
    settle: float = 0.3,
) -> ClientRun:
    """Run a TLS client subprocess: wait for ``wait_for`` on stdout, then feed stdin lines.

    Each stdin line is written after the previous one was echoed back (so the
    exchange is deterministic; KeyUpdate commands are not echoed), then stdin
    is closed and the process reaped.
    """
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        if wait_for is not None:
            _read_until(proc, out, wait_for, deadline)
        for line in stdin_lines:
            proc.stdin.write(line)
            proc.stdin.flush()
            if line in _CLIENT_COMMANDS:
                time.sleep(settle)  # a command for the client itself (KeyUpdate): no echo
                continue
            _read_until(proc, out, line.strip(), deadline, start=len(out))
        time.sleep(settle)
        try:  # communicate() closes stdin: the client sees EOF and shuts down
            rest, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, err = proc.communicate()
        out += rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    return ClientRun(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def _read_until(
    proc: subprocess.Popen[bytes],
    out: bytearray,
    needle: bytes,
    deadline: float,
    start: int = 0,
) -> None:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    while needle not in out[start:]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            proc.kill()
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise AssertionError(f"timed out waiting for {needle!r}; got {bytes(out)!r}; {err}")
        ready, _, _ = select.select([fd], [], [], min(remaining, 0.2))
        if ready:
            chunk = _os_read(fd)
            if not chunk:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise AssertionError(f"client exited before {needle!r}; got {bytes(out)!r}; {err}")
            out += chunk


def _os_read(fd: int) -> bytes:
    return os.read(fd, 65536)


def write_pem_files(directory: Path, chain_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    crt = directory / "chain.pem"
    key = directory / "key.pem"
    crt.write_bytes(chain_pem)
    key.write_bytes(key_pem)
    return crt, key


# --------------------------------------------------------------------------- in-memory client

X25519_CODE = 0x001D
DEFAULT_TEST_SCHEMES = (0x0403, 0x0503, 0x0804, 0x0807)


def plaintext_record(content_type: int, payload: bytes, version: int = 0x0303) -> bytes:
    return (
        bytes((content_type,))
        + version.to_bytes(2, "big")
        + len(payload).to_bytes(2, "big")
        + payload
    )


class MiniClient:
    """A deliberately small, scriptable TLS 1.3 client for driving ServerConnection in memory.

    It builds ClientHellos from parts (so tests can break any of them), follows
    the server's flight with the real key schedule and record layer, and then
    speaks protected records.  It does not verify certificates: the server,
    not this client, is under test.
    """

    def __init__(
        self,
        groups: Sequence[int] = (X25519_CODE,),
        share_groups: Sequence[int] | None = None,
        suites: Sequence[int] = (0x1301, 0x1302, 0x1303),
        schemes: Sequence[int] | None = DEFAULT_TEST_SCHEMES,
        server_name: str | None = "localhost",
        alpn: Sequence[str] = (),
        session_id: bytes = b"",
        versions: Sequence[int] | None = (0x0304,),
        extra_extensions: Sequence[tuple[int, bytes]] = (),
        drop_extensions: Sequence[int] = (),
        random: bytes | None = None,
        psk_modes: Sequence[int] | None = None,
        ticket: SessionTicket | None = None,
    ) -> None:

        self.groups = tuple(groups)
        share_groups = self.groups[:1] if share_groups is None else tuple(share_groups)
        self.privates = {code: GROUPS[code].generate(_urandom) for code in share_groups}
        self.suites = tuple(suites)
        self.schemes = schemes
        self.server_name = server_name
        self.alpn = tuple(alpn)
        self.session_id = session_id
        self.versions = versions
        self.extra_extensions = list(extra_extensions)
        self.drop_extensions = set(drop_extensions)
        self.random = random if random is not None else _urandom(32)
        # PSK offer (RFC 8446 §4.2.9, §4.2.11): modes to list, and a ticket to resume.
        self.psk_modes = None if psk_modes is None else tuple(psk_modes)
        self.ticket = ticket
        self.resumed = False
        self.record = RecordLayer()
        self.transcript = Transcript()
        self.messages: list[tuple[int, bytes]] = []
        self.app_read_secret = b""
        self.app_write_secret = b""
        self.suite_code = 0
        self.hello_retry_group: int | None = None
        self.cookie: bytes | None = None
        self.client_handshake_secret = b""
        self.finished_message = b""

    # -- ClientHello --------------------------------------------------------------

    def extensions(self) -> list[tuple[int, bytes]]:

        out: list[tuple[int, bytes]] = []
        if self.server_name is not None:
            out.append((ExtensionType.server_name, ext.encode_server_name(self.server_name)))
        out.append((ExtensionType.supported_groups, ext.encode_uint16_list(self.groups)))
        if self.schemes is not None:
            out.append((ExtensionType.signature_algorithms, ext.encode_uint16_list(self.schemes)))
        if self.alpn:
            out.append(
                (ExtensionType.application_layer_protocol_negotiation, ext.encode_alpn(self.alpn))
            )
        shares = [KeyShareEntry(code, p.public) for code, p in self.privates.items()]
        out.append((ExtensionType.key_share, ext.encode_key_share_ch(shares)))
        if self.versions is not None:
            out.append(
                (ExtensionType.supported_versions, ext.encode_supported_versions_ch(self.versions))
            )
        if self.cookie is not None:
            out.append((ExtensionType.cookie, ext.encode_cookie(self.cookie)))
        out += self.extra_extensions
        if self.psk_modes is not None:
            out.append((ExtensionType.psk_key_exchange_modes, ext.encode_psk_modes(self.psk_modes)))
        if self.ticket is not None:
            out.append((ExtensionType.pre_shared_key, self._psk_offer(bytes(self._binder_len()))))
        return [(t, body) for t, body in out if t not in self.drop_extensions]

    def _binder_len(self) -> int:
        assert self.ticket is not None
        return SUITES[self.ticket.cipher_suite].hash_len

    def _psk_offer(self, binder: bytes) -> bytes:
        assert self.ticket is not None
        age = self.ticket.obfuscated_age(time.time())
        identity = ext.PskIdentity(self.ticket.ticket, age)
        return ext.encode_offered_psks(ext.OfferedPsks((identity,), (binder,)))

    def _bind(self, hello: ClientHello) -> ClientHello:
        """§4.2.11.2: the binder is a Finished MAC over the transcript up to the binders."""
        assert self.ticket is not None
        suite = SUITES[self.ticket.cipher_suite]
        schedule = KeySchedule(suite)
        schedule.set_psk(self.ticket.psk)
        partial = self.transcript.copy()
        if partial.hash is None:
            partial.set_hash(suite.hash)
        partial.update(hello.truncated())
        binder = finished_verify_data(suite.hash, schedule.binder_key(True), partial.digest())
        return hello.with_binders([binder])

    def hello(self) -> bytes:
        """The ClientHello message (header included); it joins the transcript."""

        hello = ClientHello(
            random=self.random,
            legacy_session_id=self.session_id,
            cipher_suites=self.suites,
            extensions=self.extensions(),
        )
        if self.ticket is not None and ExtensionType.pre_shared_key not in self.drop_extensions:
            hello = self._bind(hello)
        message = hello.serialize()
        self.transcript.update(message)
        return message

    def hello_record(self) -> bytes:
        return plaintext_record(22, self.hello(), version=0x0301)

    # -- server flight -------------------------------------------------------------

    def read_records(self, data: bytes) -> list[tuple[int, bytes]]:
        self.record.receive(data)
        out = []
        while (rec := self.record.next_record()) is not None:
            out.append(rec)
        return out

    def handle_server_hello(self, data: bytes) -> bytes:
        """Process ServerHello (or HRR) and everything after it; return our answer records."""

        self.record.receive(data)
        first = self.record.next_record()
        while first is not None and first[0] == 20:  # a compatibility CCS (Appendix D.4)
            first = self.record.next_record()
        assert first is not None and first[0] == 22, first
        hello = ServerHello.parse(first[1][4:])
        if hello.is_hello_retry_request:
            self.suite_code = hello.cipher_suite
            self.transcript.set_hash(SUITES[hello.cipher_suite].hash)
            self.transcript.replace_with_message_hash()
            self.transcript.update(first[1])
            group = hello.selected_group()
            assert group is not None
            self.hello_retry_group = group
            self.cookie = hello.cookie()

            self.privates = {group: GROUPS[group].generate(_urandom)}
            return plaintext_record(22, self.hello())
        suite = SUITES[hello.cipher_suite]
        self.suite_code = suite.code
        if self.transcript.hash is None:
            self.transcript.set_hash(suite.hash)
        self.transcript.update(first[1])
        share = hello.key_share()
        # psk_ke (RFC 8446 §4.2.9): no key_share, a zero (EC)DHE input (§7.1).
        shared = None if share is None else self.privates[share.group].exchange(share.key_exchange)
        self.resumed = hello.selected_identity() is not None
        schedule = KeySchedule(suite)
        schedule.set_psk(self.ticket.psk if self.resumed and self.ticket is not None else None)
        schedule.set_shared_secret(shared)
        th = self.transcript.digest()
        c_hs = schedule.client_handshake_traffic_secret(th)
        s_hs = schedule.server_handshake_traffic_secret(th)
        self.record.set_read_key(suite, s_hs)
        reassembler = HandshakeReassembler(1 << 16)
        finished_seen = False
        while not finished_seen:
            rec = self.record.next_record()
            assert rec is not None, "server flight incomplete"
            if rec[0] == 20:
                continue
            assert rec[0] == 22, rec
            for msg_type, raw in reassembler.feed(rec[1]):
                self.messages.append((msg_type, raw))
                if msg_type == 20:
                    expected = finished_verify_data(suite.hash, s_hs, self.transcript.digest())
                    assert Finished.parse(raw[4:]).verify_data == expected
                    finished_seen = True
                self.transcript.update(raw)
        schedule.set_master()
        th = self.transcript.digest()
        self.app_read_secret = schedule.server_application_traffic_secret(th)
        self.app_write_secret = schedule.client_application_traffic_secret(th)
        self.record.set_read_key(suite, self.app_read_secret)
        self.record.set_write_key(suite, c_hs)
        verify = finished_verify_data(suite.hash, c_hs, self.transcript.digest())
        finished = Finished(verify).serialize()
        self.client_handshake_secret = c_hs
        self.finished_message = finished
        self.transcript.update(finished)
        self.record.write(22, finished)
        self.record.set_write_key(suite, self.app_write_secret)
        return self.record.take_output()

    def message_types(self) -> list[int]:
        return [t for t, _ in self.messages]

    # -- protected traffic -----------------------------------------------------------

    def protect(self, content_type: int, payload: bytes) -> bytes:
        self.record.write(content_type, payload)
        return self.record.take_output()

    def rekey_write(self) -> None:

        suite = SUITES[self.suite_code]
        self.app_write_secret = next_traffic_secret(suite.hash, self.app_write_secret)
        self.record.set_write_key(suite, self.app_write_secret)

    def rekey_read(self) -> None:

        suite = SUITES[self.suite_code]
        self.app_read_secret = next_traffic_secret(suite.hash, self.app_read_secret)
        self.record.set_read_key(suite, self.app_read_secret)


def _urandom(n: int) -> bytes:
    return os.urandom(n)


# --------------------------------------------------------------------------- engine pairs


def pump(
    client: Connection, server: Connection, limit: int = 50
) -> tuple[list[events.Event], list[events.Event]]:
    """Shuttle bytes between two in-memory connections until neither has output."""
    client_events: list[events.Event] = []
    server_events: list[events.Event] = []
    for _ in range(limit):
        to_server = client.data_to_send()
        if to_server:
            server_events += server.receive_data(to_server)
        to_client = server.data_to_send()
        if to_client:
            client_events += client.receive_data(to_client)
        if not to_server and not to_client:
            return client_events, server_events
    raise AssertionError("connections kept talking")
