"""Deterministic fuzz targets shared by the atheris drivers and the regression tests.

Every target takes one byte string and either returns normally or raises
:class:`Crash`.  A crash is any exception other than :class:`TLSError`, and
also a ``TLSError`` carrying ``internal_error`` that we raised ourselves: the
connection wraps unexpected Python exceptions into exactly that alert, so an
``internal_error`` out of ``receive_data`` means a bug was hit, not that bad
input was judged.

Input format of the connection targets: byte 0 selects how the rest is cut
into ``receive_data`` chunks (0 = one call, 0xFF = one record per call, the
events of each answered before the next, otherwise pseudo-random sizes), so
the fuzzer explores record and handshake-message fragmentation while a corpus
file stays a readable "chunking byte + raw wire bytes" pair.

Everything the engine would draw from the outside world is fixed: random
bytes come from a counter-mode SHAKE stream, the clock is frozen, the server
signs with Ed25519 (deterministic signatures) and key shares are derived from
the random stream.  Hence a recorded flight of a real client replays through a
fresh server to the very end of the handshake (its Finished verifies), which
is what lets the corpus reach the deep states.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

from cryptography import x509

from tls13 import events
from tls13.alerts import AlertDescription, TLSError
from tls13.certificates import CertificateChain, CertificateStore
from tls13.client import ClientConnection
from tls13.config import ClientConfig, ServerConfig
from tls13.connection import Connection, ConnectionStateError
from tls13.extensions import PSK_KE
from tls13.groups import BY_NAME as GROUP_CODES
from tls13.groups import GROUPS, PrivateShare
from tls13.record import RecordLayer
from tls13.server import ServerConnection
from tls13.suites import SUITES
from tls13.tickets import SessionTicket, TicketKeyring

# A fixed moment inside the validity of the certificates in fuzz/pki (2025..2045).
FROZEN_TIME = 1_800_000_000.0  # 2027-01-15

# Groups whose server side is deterministic given the random stream: the hybrid
# ML-KEM groups encapsulate with the library's own randomness, so they are left
# out; a client offering X25519MLKEM768 plus x25519 then gets x25519.
FUZZ_GROUPS = tuple(
    GROUP_CODES[name] for name in ("x25519", "secp256r1", "x448", "secp384r1", "ffdhe2048")
)
ALPN = ("h2", "http/1.1")
SERVER_NAME = "localhost"
# Names of the two fixed ticket keys (16-byte name + 32-byte key records).
_TICKET_KEYS = hashlib.shake_256(b"tls13-proxy fuzz ticket keys").digest(96)


class Crash(Exception):
    """The engine failed in a way that is a bug, not a judgement of the input."""


class StreamRandom:
    """``random(n)`` from a SHAKE-256 counter stream: reproducible, never repeating."""

    def __init__(self, label: bytes) -> None:
        self._label = label
        self._counter = 0

    def __call__(self, n: int) -> bytes:
        self._counter += 1
        seed = self._label + self._counter.to_bytes(8, "big")
        return hashlib.shake_256(seed).digest(n)


def _frozen_clock() -> float:
    return FROZEN_TIME


PKI_DIR = Path(__file__).resolve().parent / "pki"


@dataclass(frozen=True)
class FixedPKI:
    """The committed test PKI in fuzz/pki (made by fuzz/make_pki.py, never regenerated
    casually: the corpus replays only while these bytes stay the same).

    ``server`` is an Ed25519 leaf, because Ed25519 signatures are deterministic and
    so is then the server's whole flight; ``server_ecdsa`` (P-256) is for recording
    client-side corpus, since the client verifies chains with the Web PKI profile,
    which refuses Ed25519; ``client`` (P-256) authenticates clients.
    """

    ca: x509.Certificate
    server: CertificateChain
    server_ecdsa: CertificateChain
    client: CertificateChain

    @staticmethod
    def path(name: str) -> Path:
        return PKI_DIR / name


@cache
def fixed_pki() -> FixedPKI:
    def chain(stem: str) -> CertificateChain:
        return CertificateChain.from_pem(
            (PKI_DIR / f"{stem}.pem").read_bytes(), (PKI_DIR / f"{stem}.key").read_bytes()
        )

    ca = x509.load_pem_x509_certificate((PKI_DIR / "ca.pem").read_bytes())
    return FixedPKI(ca, chain("server"), chain("server-ecdsa"), chain("client"))


def _key_shares(random: Callable[[int], bytes]) -> Callable[[int], PrivateShare | None]:
    """Ephemeral shares drawn from the connection's random stream (never the library's)."""

    def factory(code: int) -> PrivateShare | None:
        group = GROUPS[code]
        # 32 bytes suit every deterministic group here (X448 wants 56, FFDHE any size).
        size = 56 if group.name == "x448" else 32
        return group.private_from_bytes(random(size))

    return factory


def server_config(label: bytes = b"server", ecdsa: bool = False) -> ServerConfig:
    """A fresh, fully deterministic server configuration (one per connection).

    ``ecdsa`` serves the P-256 leaf instead (not deterministic: for recording
    server flights that our verifying client accepts).
    """
    pki = fixed_pki()
    random = StreamRandom(b"tls13-proxy fuzz " + label)
    chain = pki.server_ecdsa if ecdsa else pki.server
    return ServerConfig(
        certificates=CertificateStore([chain], chain),
        groups=FUZZ_GROUPS,
        alpn_protocols=ALPN,
        ticket_keys=TicketKeyring.from_bytes(_TICKET_KEYS),
        max_early_data=16384,
        tickets=2,
        client_auth="optional",
        client_ca=(pki.ca,),
        random=random,
        clock=_frozen_clock,
        key_share_factory=_key_shares(random),
        cookie_secret=hashlib.sha256(b"tls13-proxy fuzz cookie").digest(),
        # Tickets carry the issuer, and 0-RTT needs it to be us in every process.
        instance_id=hashlib.sha256(b"tls13-proxy fuzz instance").digest()[:16],
    )


def client_config(label: bytes = b"client") -> ClientConfig:
    """A fresh, fully deterministic client configuration (one per connection)."""
    pki = fixed_pki()
    random = StreamRandom(b"tls13-proxy fuzz " + label)
    return ClientConfig(
        groups=FUZZ_GROUPS,
        key_share_groups=(GROUP_CODES["x25519"],),
        ca_certificates=(pki.ca,),
        certificate=pki.client,
        random=random,
        clock=_frozen_clock,
        key_share_factory=_key_shares(random),
    )


# --------------------------------------------------------------------------- chunking


RECORD_BY_RECORD = 0xFF


def _records(stream: bytes) -> Iterator[bytes]:
    """One TLS record per piece (by the header's length field; a torn tail comes last)."""
    pos = 0
    while pos < len(stream):
        end = pos + 5 + int.from_bytes(stream[pos + 3 : pos + 5], "big")
        yield stream[pos:end]
        pos = end


def chunks(data: bytes) -> Iterator[bytes]:
    """Cut ``data[1:]`` into the pieces byte 0 asks for (see the module docstring)."""
    if not data:
        return
    mode, rest = data[0], data[1:]
    if mode == 0:
        if rest:
            yield rest
        return
    if mode == RECORD_BY_RECORD:
        yield from _records(rest)
        return
    state = mode
    pos = 0
    while pos < len(rest):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        size = 1 + (state >> 8) % (mode * 8)
        yield rest[pos : pos + size]
        pos += size


# --------------------------------------------------------------------------- connection driving


AUTH_REQUEST = b"auth"


def react(conn: Connection, event: events.Event) -> None:
    """What a proxy would do: greet, echo, answer close_notify (exercises the send side).

    A server that receives application data starting with ``AUTH_REQUEST`` asks
    for a client certificate after the handshake (RFC 8446 §4.6.2), when it may.
    """
    if isinstance(event, events.HandshakeComplete):
        _send(conn, b"hello")
    elif isinstance(event, (events.ApplicationData, events.EarlyData)):
        if conn.handshake_complete:
            _send(conn, event.data[:64])
        if isinstance(conn, ServerConnection) and event.data.startswith(AUTH_REQUEST):
            _request_certificate(conn)
    elif isinstance(event, events.ConnectionClosed):
        conn.close()


def _send(conn: Connection, data: bytes) -> None:
    try:
        conn.send_data(data)
    except ConnectionStateError:
        return  # we already sent close_notify: nothing more goes out (RFC 8446 §6.1)


def _request_certificate(conn: ServerConnection) -> None:
    try:
        conn.request_client_certificate()
    except ConnectionStateError:
        return  # not offered by the client, or a request is already outstanding


def _check_error(error: TLSError) -> None:
    if error.alert is AlertDescription.internal_error and not error.sent_by_peer:
        cause = error.__cause__
        raise Crash(f"internal_error: {error.message}") from (cause or error)


def drive(conn: Connection, data: bytes) -> list[events.Event]:
    """Feed the chunks of ``data`` then EOF; return every event; raise Crash on a bug."""
    seen: list[events.Event] = []
    try:
        for piece in [*chunks(data), b""]:
            for event in conn.receive_data(piece):
                seen.append(event)
                react(conn, event)
            conn.data_to_send()
    except TLSError as error:
        _check_error(error)
        conn.data_to_send()
        _check_sticky(conn, error)
    except Exception as error:  # noqa: BLE001 - any other exception is the finding
        raise Crash(f"{type(error).__name__}: {error}") from error
    return seen


def _check_sticky(conn: Connection, error: TLSError) -> None:
    """After a failure every later receive_data must raise the same error."""
    try:
        conn.receive_data(b"\x17\x03\x03\x00\x01\x00")
    except TLSError as again:
        if again is not error:
            raise Crash("a failed connection raised a different error later") from again
        return
    raise Crash("a failed connection accepted more data")


def run_server(data: bytes) -> list[events.Event]:
    """Target: a deterministic ServerConnection fed a client's byte stream."""
    return drive(ServerConnection(server_config()), data)


# Bits of the variant byte of run_server_variants: each turns on one configuration knob.
VARIANT_STATELESS_RETRY = 0x01
VARIANT_CLIENT_AUTH_REQUIRED = 0x02
VARIANT_PSK_KE_ONLY = 0x04
VARIANT_STRICT_GROUPS = 0x08
VARIANT_PADDING = 0x10
VARIANT_SMALL_RECORDS = 0x20
VARIANT_CLIENT_SUITE_ORDER = 0x40
VARIANT_NO_TICKETS = 0x80


def variant_config(flags: int) -> ServerConfig:
    """The deterministic server configuration with the knobs ``flags`` selects."""
    config = server_config()
    changes: dict[str, object] = {}
    if flags & VARIANT_STATELESS_RETRY:
        changes["stateless_retry"] = True
    if flags & VARIANT_CLIENT_AUTH_REQUIRED:
        changes["client_auth"] = "required"
    if flags & VARIANT_PSK_KE_ONLY:
        changes["psk_modes"] = (PSK_KE,)
    if flags & VARIANT_STRICT_GROUPS:
        changes["strict_group_preference"] = True
        changes["groups"] = tuple(reversed(FUZZ_GROUPS))
    if flags & VARIANT_PADDING:
        changes["record_padding"] = 64
    if flags & VARIANT_SMALL_RECORDS:
        changes["record_size_limit"] = 512
    if flags & VARIANT_CLIENT_SUITE_ORDER:
        changes["prefer_client_suites"] = True
    if flags & VARIANT_NO_TICKETS:
        changes.update(ticket_keys=None, max_early_data=0, tickets=0, anti_replay=None)
    return replace(config, **changes)  # type: ignore[arg-type]


def run_server_variants(data: bytes) -> list[events.Event]:
    """Target: like run_server, but byte 0 picks configuration knobs (VARIANT_* bits)."""
    if not data:
        return []
    return drive(ServerConnection(variant_config(data[0])), data[1:])


def new_client() -> ClientConnection:
    """A started deterministic client; its ClientHello is always the same bytes."""
    client = ClientConnection(client_config(), server_name=SERVER_NAME, alpn_protocols=ALPN)
    client.start()
    client.data_to_send()
    return client


def exchange(client: Connection, server: Connection, limit: int = 12) -> bytes:
    """Pump two in-memory connections until both are quiet; return all the server sent."""
    sent = bytearray()
    for _ in range(limit):
        to_server = client.data_to_send()
        if to_server:
            server.receive_data(to_server)
        to_client = server.data_to_send()
        if to_client:
            sent += to_client
            client.receive_data(to_client)
        if not to_server and not to_client:
            break
    return bytes(sent)


@cache
def resumption_ticket() -> SessionTicket:
    """A ticket (0-RTT allowed, ALPN h2) from a full handshake with the deterministic
    server: fixed ticket keys and a frozen clock make it valid for every later run."""
    # Every byte of that handshake must be reproducible, since the PSK hangs on its
    # transcript: the Ed25519 server (so no verification: the Web PKI profile refuses
    # Ed25519) and no client certificate (an ECDSA CertificateVerify is randomized).
    config = replace(client_config(b"ticket client"), ca_certificates=None, certificate=None)
    client = ClientConnection(config, server_name=SERVER_NAME, alpn_protocols=ALPN)
    client.start()
    server = ServerConnection(server_config(b"ticket server"))
    tickets: list[SessionTicket] = []
    for _ in range(6):
        to_server = client.data_to_send()
        if to_server:
            server.receive_data(to_server)
        to_client = server.data_to_send()
        if not to_client and not to_server:
            break
        for event in client.receive_data(to_client):
            if isinstance(event, events.NewSessionTicketReceived):
                tickets.append(event.ticket)
    return tickets[0]


EARLY_DATA = b"GET /early HTTP/1.1\r\n\r\n"


def start_resuming_client() -> tuple[ClientConnection, bytes]:
    """A started deterministic client offering the ticket, and its first flight
    (ClientHello, compatibility CCS, 0-RTT data)."""
    client = ClientConnection(
        client_config(b"resuming client"),
        server_name=SERVER_NAME,
        alpn_protocols=ALPN,
        session=resumption_ticket(),
    )
    client.start()
    client.send_early_data(EARLY_DATA)
    return client, client.data_to_send()


def new_resuming_client() -> ClientConnection:
    return start_resuming_client()[0]


def run_client_resumed(data: bytes) -> list[events.Event]:
    """Target: a resuming client (PSK + 0-RTT offered) fed a server's byte stream."""
    return drive(new_resuming_client(), data)


def run_client(data: bytes) -> list[events.Event]:
    """Target: a started deterministic ClientConnection fed a server's byte stream."""
    return drive(new_client(), data)


# --------------------------------------------------------------------------- record layer

_RECORD_SECRET = hashlib.sha256(b"tls13-proxy fuzz record secret").digest()
_SUITE_CODES = tuple(sorted(SUITES))


def run_record(data: bytes) -> None:
    """Target: RecordLayer parsing of arbitrary bytes, plus a write/read round trip.

    Byte 0: bit 0 protected or not, bits 1-2 the suite, bit 3 early-data skipping,
    bits 4-7 padding (multiples of 32).  The rest is fed (a) as received bytes
    and (b) as a payload written by one layer and read back by another, which
    must give the same content back (a differential check of the write path).
    """
    if not data:
        return
    flags, rest = data[0], data[1:]
    suite = SUITES[_SUITE_CODES[(flags >> 1) % len(_SUITE_CODES)]]
    try:
        _parse_records(flags, suite.code, rest)
        _round_trip(flags, suite.code, rest)
    except TLSError as error:
        if error.alert is AlertDescription.internal_error:
            raise Crash(f"internal_error: {error.message}") from error
    except Crash:
        raise
    except Exception as error:  # noqa: BLE001 - any other exception is the finding
        raise Crash(f"{type(error).__name__}: {error}") from error


def _parse_records(flags: int, suite_code: int, rest: bytes) -> None:
    layer = RecordLayer()
    if flags & 1:
        layer.set_read_key(SUITES[suite_code], _RECORD_SECRET)
    if flags & 8:
        layer.skip_early_data(4096)
    for piece in chunks(bytes((flags >> 4,)) + rest):
        layer.receive(piece)
        while layer.next_record() is not None:
            pass


def _round_trip(flags: int, suite_code: int, payload: bytes) -> None:
    suite = SUITES[suite_code]
    writer, reader = RecordLayer(), RecordLayer()
    writer.padding_to = 32 * (flags >> 4)
    if flags & 1:
        writer.set_write_key(suite, _RECORD_SECRET)
        reader.set_read_key(suite, _RECORD_SECRET)
    content_type = 23 if flags & 1 else 22
    if not payload:
        return
    writer.write(content_type, payload)
    reader.receive(writer.take_output())
    received = bytearray()
    while (record := reader.next_record()) is not None:
        if record[0] != content_type:
            raise Crash(f"round trip changed the content type to {record[0]}")
        received += record[1]
    if bytes(received) != payload:
        raise Crash("round trip changed the payload")
