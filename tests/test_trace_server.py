"""Our server reproduces the example traces byte for byte (RFC 8448 format).

The trace's randomness is injected: the server random, the server's ephemeral
key, the HelloRetryRequest cookie and the RSA-PSS signature (PSS salts are
random, so the signer is replaced by one that first *verifies* the trace's
signature over the CertificateVerify input our server computed, then returns
it: a wrong transcript fails that verification).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from core_helpers import COMPATIBILITY, HELLO_RETRY, RESUMED_0RTT, SIMPLE_1RTT, load_trace
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from engine_helpers import ScriptedRandom, pem_key, split_records, trace_records, trace_rsa_key

from tls13 import events
from tls13.certificates import CertificateChain, CertificateStore
from tls13.config import ServerConfig
from tls13.groups import BY_NAME as GROUP_CODES
from tls13.groups import GROUPS
from tls13.keyschedule import export
from tls13.messages import (
    Certificate,
    CertificateVerify,
    ClientHello,
    EncryptedExtensions,
    NewSessionTicket,
    ServerHello,
)
from tls13.record import RecordLayer
from tls13.server import ServerConnection
from tls13.signatures import SCHEMES
from tls13.suites import SUITES
from tls13.tickets import SessionState, TicketKeyring

RSA_PSS_RSAE_SHA256 = 0x0804


def _group_codes(*names: str) -> tuple[int, ...]:
    return tuple(GROUP_CODES[name] for name in names)


# The groups each trace's server lists in its EncryptedExtensions, in its order.
ONE_RTT_GROUPS = _group_codes(
    "x25519",
    "secp256r1",
    "secp384r1",
    "secp521r1",
    "ffdhe2048",
    "ffdhe3072",
    "ffdhe4096",
    "ffdhe6144",
    "ffdhe8192",
)
HRR_GROUPS = _group_codes("secp256r1", "secp384r1", "x25519")


@dataclass
class _ReplaySigner:
    """Stands in for a signature scheme: verify the expected signature, then return it."""

    real: Any
    signature: bytes

    @property
    def name(self) -> str:
        return str(self.real.name)

    def sign(self, private_key: Any, data: bytes) -> bytes:
        self.real.verify(private_key.public_key(), self.signature, data)
        return self.signature

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.real, attr)


def _message(trace: dict[str, bytes], step: str, name: str, nth: str = "") -> bytes:
    return trace[f"server construct a {step} handshake message{nth}: {name}"]


def _trace_store(trace: dict[str, bytes]) -> CertificateStore:
    body = _message(trace, "Certificate", "Certificate")[4:]
    der = Certificate.parse(body).certificate_list[0].cert_data
    cert_pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    chain = CertificateChain.from_pem(cert_pem, pem_key(trace_rsa_key()))
    return CertificateStore([chain], chain)


def _replay_signature(monkeypatch: pytest.MonkeyPatch, trace: dict[str, bytes]) -> None:
    verify = CertificateVerify.parse(_message(trace, "CertificateVerify", "CertificateVerify")[4:])
    assert verify.algorithm == RSA_PSS_RSAE_SHA256
    real = SCHEMES[RSA_PSS_RSAE_SHA256]
    monkeypatch.setitem(SCHEMES, RSA_PSS_RSAE_SHA256, _ReplaySigner(real, verify.signature))


def _records(section: str, role: str) -> list[bytes]:
    return [r.record for r in trace_records(section) if r.role == role]


def _open_record(secret: bytes, record: bytes) -> tuple[int, bytes]:
    """Decrypt one record with a traffic secret (sequence number 0)."""
    layer = RecordLayer()
    layer.set_read_key(SUITES[0x1301], secret)
    layer.receive(record)
    opened = layer.next_record()
    assert opened is not None
    return opened


def test_simple_1rtt_server_records_match_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    trace = load_trace(SIMPLE_1RTT)
    _replay_signature(monkeypatch, trace)
    server_hello = ServerHello.parse(_message(trace, "ServerHello", "ServerHello")[4:])
    private = trace["server create an ephemeral x25519 key pair: private key"]
    keylog: list[str] = []
    config = ServerConfig(
        certificates=_trace_store(trace),
        groups=ONE_RTT_GROUPS,
        random=ScriptedRandom([server_hello.random]),
        key_share_factory=lambda code: GROUPS[code].private_from_bytes(private),
        cookie_secret=bytes(32),
        keylog=keylog.append,
    )
    client = _records(SIMPLE_1RTT, "client")
    server = _records(SIMPLE_1RTT, "server")
    conn = ServerConnection(config)

    hello_events = conn.receive_data(client[0])
    assert isinstance(hello_events[0], events.ClientHelloReceived)
    assert hello_events[0].server_name == "server"
    assert split_records(conn.data_to_send()) == server[:2]

    done = conn.receive_data(client[1])
    assert [type(e) for e in done] == [events.HandshakeComplete]
    info = done[0]
    assert isinstance(info, events.HandshakeComplete)
    assert (info.cipher_suite, info.group, info.signature_scheme) == (
        "TLS_AES_128_GCM_SHA256",
        "x25519",
        "rsa_pss_rsae_sha256",
    )
    assert info.server_name == "server" and not info.hello_retry and not info.resumed
    assert conn.data_to_send() == b""  # no ticket keys configured: no NewSessionTicket

    # The client's application data and close_notify (records 2 and 3) are accepted.
    app = conn.receive_data(client[2])
    expected_payload = trace["client send application_data record: payload"]
    assert app == [events.ApplicationData(expected_payload)]
    assert conn.receive_data(client[3]) == [events.ConnectionClosed(clean=True)]

    # Our own application data is protected with the trace's server traffic secret.
    conn.send_data(expected_payload)
    server_app_secret = trace['server derive secret "tls13 s ap traffic": expanded']
    assert _open_record(server_app_secret, conn.data_to_send()) == (23, expected_payload)

    exporter_secret = trace['server derive secret "tls13 exp master": expanded']
    assert conn.export_keying_material(b"EXPERIMENTAL test", b"ctx", 32) == export(
        SUITES[0x1301].hash, exporter_secret, b"EXPERIMENTAL test", b"ctx", 32
    )

    client_random = trace["client construct a ClientHello handshake message: ClientHello"][6:38]
    chts = trace['server derive secret "tls13 c hs traffic": expanded']
    assert f"CLIENT_HANDSHAKE_TRAFFIC_SECRET {client_random.hex()} {chts.hex()}" in keylog
    assert len(keylog) == 5


def test_hello_retry_request_server_records_match_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    trace = load_trace(HELLO_RETRY)
    _replay_signature(monkeypatch, trace)
    retry = ServerHello.parse(_message(trace, "ServerHello", "ServerHello")[4:])
    final = ServerHello.parse(_message(trace, "ServerHello", "ServerHello", " #2")[4:])
    trace_cookie = retry.cookie()
    assert retry.is_hello_retry_request and trace_cookie is not None
    # The cookie is opaque server state: inject the trace's (ours is MAC-protected).
    monkeypatch.setattr(ServerConnection, "_make_cookie", lambda self, *args: trace_cookie)
    private = trace["server create an ephemeral P-256 key pair: private key"]
    config = ServerConfig(
        certificates=_trace_store(trace),
        groups=HRR_GROUPS,
        strict_group_preference=True,
        random=ScriptedRandom([final.random]),
        key_share_factory=lambda code: GROUPS[code].private_from_bytes(private),
        cookie_secret=bytes(32),
    )
    client = _records(HELLO_RETRY, "client")
    server = _records(HELLO_RETRY, "server")
    conn = ServerConnection(config)

    conn.receive_data(client[0])
    assert split_records(conn.data_to_send()) == server[:1]
    conn.receive_data(client[1])
    assert split_records(conn.data_to_send()) == server[1:3]
    done = conn.receive_data(client[2])
    info = done[0]
    assert isinstance(info, events.HandshakeComplete)
    assert info.hello_retry and info.group == "secp256r1"

    assert conn.receive_data(client[3]) == [events.ConnectionClosed(clean=True)]
    conn.close()
    assert conn.data_to_send() == server[3]  # close_notify, byte for byte


def _trace_server(
    section: str, monkeypatch: pytest.MonkeyPatch, **overrides: Any
) -> ServerConnection:
    """A server configured from a trace section: its groups (as listed in its
    EncryptedExtensions), random, ephemeral key and replayed signature."""
    trace = load_trace(section)
    _replay_signature(monkeypatch, trace)
    server_hello = ServerHello.parse(_message(trace, "ServerHello", "ServerHello")[4:])
    encrypted = EncryptedExtensions.parse(
        _message(trace, "EncryptedExtensions", "EncryptedExtensions")[4:]
    )
    groups = encrypted.supported_groups()
    assert groups is not None
    private = trace["server create an ephemeral x25519 key pair: private key"]
    config = ServerConfig(
        certificates=_trace_store(trace),
        groups=tuple(groups),
        random=ScriptedRandom([server_hello.random]),
        key_share_factory=lambda code: GROUPS[code].private_from_bytes(private),
        cookie_secret=bytes(32),
        **overrides,
    )
    return ServerConnection(config)


def test_compatibility_mode_server_records_match_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    # RFC 8446 D.4: a client with a legacy_session_id gets a CCS right after ServerHello.
    conn = _trace_server(COMPATIBILITY, monkeypatch)
    client = _records(COMPATIBILITY, "client")
    server = _records(COMPATIBILITY, "server")
    conn.receive_data(client[0])
    assert split_records(conn.data_to_send()) == server[:3]
    assert conn.receive_data(client[1]) == []  # the client's own compatibility CCS
    assert isinstance(conn.receive_data(client[2])[0], events.HandshakeComplete)
    assert conn.receive_data(client[3]) == [events.ConnectionClosed(clean=True)]
    conn.close()
    assert conn.data_to_send() == server[3]


def _replay_ticket(monkeypatch: pytest.MonkeyPatch, trace: dict[str, bytes]) -> NewSessionTicket:
    """Sealing is ours and opaque: check the state we seal (its PSK and age_add are
    the trace's), then hand out the trace's ticket bytes instead of our ciphertext."""
    ticket = NewSessionTicket.parse(_message(trace, "NewSessionTicket", "NewSessionTicket")[4:])
    psk = trace['server generate resumption secret "tls13 resumption": expanded']

    def seal_state(self: TicketKeyring, state: SessionState, random: Any = None) -> bytes:
        assert state.psk == psk and state.age_add == ticket.ticket_age_add
        assert state.max_early_data == ticket.max_early_data_size()
        return ticket.ticket

    monkeypatch.setattr(TicketKeyring, "seal_state", seal_state)
    return ticket


def test_simple_1rtt_with_ticket_matches_every_server_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trace = load_trace(SIMPLE_1RTT)
    _replay_signature(monkeypatch, trace)
    ticket = _replay_ticket(monkeypatch, trace)
    server_hello = ServerHello.parse(_message(trace, "ServerHello", "ServerHello")[4:])
    private = trace["server create an ephemeral x25519 key pair: private key"]
    config = ServerConfig(
        certificates=_trace_store(trace),
        groups=ONE_RTT_GROUPS,
        random=ScriptedRandom([server_hello.random, ticket.ticket_age_add.to_bytes(4, "big")]),
        key_share_factory=lambda code: GROUPS[code].private_from_bytes(private),
        cookie_secret=bytes(32),
        ticket_keys=TicketKeyring.generate(),
        tickets=1,
        ticket_lifetime=ticket.ticket_lifetime,
        max_early_data=ticket.max_early_data_size(),
    )
    client = _records(SIMPLE_1RTT, "client")
    server = _records(SIMPLE_1RTT, "server")
    conn = ServerConnection(config)
    conn.receive_data(client[0])
    assert split_records(conn.data_to_send()) == server[:2]
    done = conn.receive_data(client[1])
    assert [type(e) for e in done] == [events.HandshakeComplete, events.SessionTicketIssued]
    assert conn.data_to_send() == server[2]  # the NewSessionTicket record
    payload = trace["client send application_data record: payload"]
    assert conn.receive_data(client[2]) == [events.ApplicationData(payload)]
    conn.send_data(trace["server send application_data record: payload"])
    assert conn.data_to_send() == server[3]
    assert conn.receive_data(client[3]) == [events.ConnectionClosed(clean=True)]
    conn.close()
    assert conn.data_to_send() == server[4]


def test_resumed_0rtt_server_records_match_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_trace(SIMPLE_1RTT)
    trace = load_trace(RESUMED_0RTT)
    ticket = NewSessionTicket.parse(_message(first, "NewSessionTicket", "NewSessionTicket")[4:])
    hello = ClientHello.parse(trace["client send handshake record: payload"][4:])
    offered = hello.pre_shared_key()
    assert offered is not None and offered.identities[0].identity == ticket.ticket
    client_age_ms = (offered.identities[0].obfuscated_ticket_age - ticket.ticket_age_add) % 2**32
    now = 1_700_000_000.0
    state = SessionState(
        psk=first['server generate resumption secret "tls13 resumption": expanded'],
        suite=0x1301,
        created=int(now * 1000) - client_age_ms,
        age_add=ticket.ticket_age_add,
        lifetime=ticket.ticket_lifetime,
        max_early_data=ticket.max_early_data_size(),
        sni="server",
        issuer=b"trace instance",  # 0-RTT only on tickets this server issued (R22)
    )
    known = {ticket.ticket: state}
    monkeypatch.setattr(TicketKeyring, "open_state", lambda self, raw: known.get(raw))
    server_hello = ServerHello.parse(_message(trace, "ServerHello", "ServerHello")[4:])
    encrypted = EncryptedExtensions.parse(
        _message(trace, "EncryptedExtensions", "EncryptedExtensions")[4:]
    )
    groups = encrypted.supported_groups()
    assert groups is not None and encrypted.early_data()
    private = trace["server create an ephemeral x25519 key pair: private key"]
    config = ServerConfig(
        certificates=_trace_store(first),
        groups=tuple(groups),
        random=ScriptedRandom([server_hello.random]),
        key_share_factory=lambda code: GROUPS[code].private_from_bytes(private),
        cookie_secret=bytes(32),
        clock=lambda: now,
        ticket_keys=TicketKeyring.generate(),
        tickets=0,  # the trace's server issues no new ticket on this connection
        max_early_data=ticket.max_early_data_size(),
        instance_id=b"trace instance",
    )
    client = _records(RESUMED_0RTT, "client")
    server = _records(RESUMED_0RTT, "server")
    conn = ServerConnection(config)

    got = conn.receive_data(client[0] + client[1])  # ClientHello + 0-RTT data
    early = trace["client send application_data record: payload"]
    assert got[1:] == [events.EarlyData(early)]
    assert split_records(conn.data_to_send()) == server[:2]
    assert conn.receive_data(client[2]) == []  # EndOfEarlyData
    info = conn.receive_data(client[3])[0]
    assert isinstance(info, events.HandshakeComplete)
    assert info.resumed and info.early_data_accepted and info.signature_scheme is None
    payload = trace["client send application_data record #2: payload"]
    assert conn.receive_data(client[4]) == [events.ApplicationData(payload)]
    conn.send_data(trace["server send application_data record: payload"])
    assert conn.data_to_send() == server[2]
    assert conn.receive_data(client[5]) == [events.ConnectionClosed(clean=True)]
    conn.close()
    assert conn.data_to_send() == server[3]
