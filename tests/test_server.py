"""ServerConnection in memory: negotiation, HelloRetryRequest, the RFC's MUSTs, alerts.

A small scripted client (engine_helpers.MiniClient) drives the server so every
field of the ClientHello and every record can be broken on purpose.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace

import pytest
from certs import Issued, make_ca, make_leaf
from engine_helpers import MiniClient, plaintext_record, store_for
from interop_helpers import ocsp_response, utcnow

from tls13 import events
from tls13 import extensions as ext
from tls13.alerts import AlertDescription, TLSError
from tls13.certificates import CertificateChain, CertificateStore
from tls13.config import Limits, ServerConfig
from tls13.connection import ConnectionStateError
from tls13.extensions import ExtensionType
from tls13.groups import BY_NAME as GROUPS
from tls13.groups import GROUPS as GROUP_TABLE
from tls13.messages import (
    Certificate,
    ClientHello,
    EncryptedExtensions,
    HandshakeReassembler,
    KeyUpdate,
    NewSessionTicket,
)
from tls13.record import RecordLayer
from tls13.server import ServerConnection
from tls13.suites import SUITES
from tls13.tickets import TicketKeyring

X25519 = GROUPS["x25519"]
P256 = GROUPS["secp256r1"]
P384 = GROUPS["secp384r1"]
HYBRID = GROUPS["X25519MLKEM768"]
CCS_RECORD = bytes.fromhex("140303000101")
HOUR = datetime.timedelta(hours=1)


@pytest.fixture(scope="module")
def pki() -> tuple[Issued, Issued]:
    ca = make_ca()
    return ca, make_leaf(ca, ("localhost",), kind="p256")


@pytest.fixture
def make_config(pki: tuple[Issued, Issued]) -> Callable[..., ServerConfig]:
    ca, leaf = pki
    store = store_for([(leaf.cert_pem() + ca.cert_pem(), leaf.key_pem())])

    def build(**overrides: object) -> ServerConfig:
        return ServerConfig(certificates=store, **overrides)  # type: ignore[arg-type]

    return build


@pytest.fixture
def server(make_config: Callable[..., ServerConfig]) -> ServerConnection:
    return ServerConnection(make_config(alpn_protocols=("h2", "http/1.1")))


def handshake(conn: ServerConnection, client: MiniClient) -> events.HandshakeComplete:
    """Run a full handshake; return the server's HandshakeComplete."""
    conn.receive_data(client.hello_record())
    answer = client.handle_server_hello(conn.data_to_send())
    if client.hello_retry_group is not None and not client.app_write_secret:
        conn.receive_data(answer)
        answer = client.handle_server_hello(conn.data_to_send())
    done = conn.receive_data(answer)
    infos = [e for e in done if isinstance(e, events.HandshakeComplete)]
    assert len(infos) == 1
    return infos[0]


def expect_alert(conn: ServerConnection, data: bytes, alert: AlertDescription) -> TLSError:
    with pytest.raises(TLSError) as caught:
        conn.receive_data(data)
    assert caught.value.alert == alert, caught.value
    assert not caught.value.sent_by_peer
    return caught.value


def alert_record_sent(conn: ServerConnection, alert: AlertDescription) -> None:
    """The plaintext fatal alert the server queued before raising."""
    assert conn.data_to_send().endswith(bytes((2, alert)))


# ----------------------------------------------------------------------------- full handshakes


def test_injected_random_is_asked_once_per_value(make_config: Callable[..., ServerConfig]) -> None:
    sizes: list[int] = []

    def recording(n: int) -> bytes:
        sizes.append(n)
        return os.urandom(n)

    config = make_config(random=recording, ticket_keys=TicketKeyring.generate(), tickets=2)
    sizes.clear()  # the config drew its cookie_secret
    handshake(ServerConnection(config), MiniClient(psk_modes=(ext.PSK_DHE_KE,)))
    # X25519 share, server random, then age_add and nonce per ticket: as a trace scripts them.
    assert sizes == [32, 32, 4, 12, 4, 12]


def test_os_random_is_drawn_once_per_handshake(
    make_config: Callable[..., ServerConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    draws: list[int] = []
    real = os.urandom

    def counting(n: int) -> bytes:
        draws.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", counting)
    config = make_config(random=os.urandom, ticket_keys=TicketKeyring.generate(), tickets=2)
    randoms = set()
    for _ in range(2):
        client = MiniClient(psk_modes=(ext.PSK_DHE_KE,))
        conn = ServerConnection(config)
        hello = client.hello_record()
        draws.clear()  # the client's own
        conn.receive_data(hello)
        flight = conn.data_to_send()
        randoms.add(flight[11:43])  # record header, handshake header, legacy_version: random
        conn.receive_data(client.handle_server_hello(flight))
        assert conn.handshake_complete
        assert draws == [128]  # 32 + 32 + 2 x (4 + 12) bytes fit one batch
        reassembler = HandshakeReassembler(1 << 16)
        tickets = [
            NewSessionTicket.parse(message[4:])
            for _, payload in client.read_records(conn.data_to_send())
            for _, message in reassembler.feed(payload)
        ]
        assert len(tickets) == 2 and tickets[0].ticket != tickets[1].ticket
        assert len({tickets[0].ticket_age_add, tickets[1].ticket_age_add}) == 2
    assert len(randoms) == 2


def test_full_handshake_and_application_data(server: ServerConnection) -> None:
    client = MiniClient(alpn=("http/1.1", "h2"))
    info = handshake(server, client)
    assert client.message_types() == [8, 11, 15, 20]
    assert (info.version, info.cipher_suite, info.group) == (
        "TLSv1.3",
        "TLS_AES_128_GCM_SHA256",
        "x25519",
    )
    assert info.signature_scheme == "ecdsa_secp256r1_sha256"
    assert info.alpn_protocol == "h2" and info.server_name == "localhost"
    assert server.handshake_complete and server.info == info

    assert server.receive_data(client.protect(23, b"ping")) == [events.ApplicationData(b"ping")]
    server.send_data(b"pong")
    assert client.read_records(server.data_to_send()) == [(23, b"pong")]

    server.close()
    assert client.read_records(server.data_to_send()) == [(21, b"\x01\x00")]
    assert server.receive_data(client.protect(21, b"\x01\x00")) == [
        events.ConnectionClosed(clean=True)
    ]
    assert server.closed
    with pytest.raises(ConnectionStateError):
        server.send_data(b"late")


def test_encrypted_extensions_content(server: ServerConnection) -> None:
    client = MiniClient(
        alpn=("http/1.1",),
        extra_extensions=[(ExtensionType.record_size_limit, ext.encode_uint16_body(512))],
    )
    handshake(server, client)
    encrypted = EncryptedExtensions.parse(client.messages[0][1][4:])
    assert encrypted.alpn_protocol() == "http/1.1"
    assert encrypted.record_size_limit() == 16385
    assert encrypted.server_name_acknowledged()
    assert encrypted.supported_groups() is not None
    # RFC 8449: our records now carry at most 511 content bytes + the type byte.
    server.send_data(bytes(2000))
    out = server.data_to_send()
    records = client.read_records(out)
    assert sum(len(p) for _, p in records) == 2000
    assert max(len(p) for _, p in records) <= 511


def test_middlebox_compatibility_ccs_and_session_echo(server: ServerConnection) -> None:
    client = MiniClient(session_id=bytes(range(32)))
    server.receive_data(client.hello_record())
    flight = server.data_to_send()
    sh_len = 5 + int.from_bytes(flight[3:5], "big")
    assert flight[sh_len : sh_len + 6] == CCS_RECORD
    assert bytes(range(32)) in flight[:sh_len]
    answer = client.handle_server_hello(flight)
    # The client may send one CCS of its own before its Finished.
    assert server.receive_data(CCS_RECORD) == []
    assert any(isinstance(e, events.HandshakeComplete) for e in server.receive_data(answer))


def test_no_ccs_without_session_id(server: ServerConnection) -> None:
    client = MiniClient()
    server.receive_data(client.hello_record())
    assert CCS_RECORD not in server.data_to_send()


def test_every_handshake_ccs_is_dropped_up_to_the_limit(server: ServerConnection) -> None:
    # rfc8446bis §5 / Appendix D.4: each compatibility CCS MUST be dropped; only a
    # flood beyond Limits.max_ccs (32 by default) is unexpected_message.
    client = MiniClient()
    server.receive_data(client.hello_record())
    assert server.receive_data(CCS_RECORD * 32) == []
    error = expect_alert(server, CCS_RECORD, AlertDescription.unexpected_message)
    assert error.limit == "max_ccs"


def test_ccs_limit_is_configurable(make_config: Callable[..., ServerConfig]) -> None:
    conn = ServerConnection(make_config(limits=Limits(max_ccs=1)))
    conn.receive_data(MiniClient().hello_record())
    conn.receive_data(CCS_RECORD)
    expect_alert(conn, CCS_RECORD, AlertDescription.unexpected_message)


def test_bad_ccs_payload_is_unexpected(server: ServerConnection) -> None:
    server.receive_data(MiniClient().hello_record())
    error = expect_alert(server, bytes.fromhex("140303000102"), AlertDescription.unexpected_message)
    assert error.limit is None  # a protocol violation, not a bound


def test_ccs_before_client_hello_is_unexpected(server: ServerConnection) -> None:
    expect_alert(server, CCS_RECORD, AlertDescription.unexpected_message)
    alert_record_sent(server, AlertDescription.unexpected_message)


def test_ccs_after_handshake_is_unexpected(server: ServerConnection) -> None:
    handshake(server, MiniClient())
    expect_alert(server, CCS_RECORD, AlertDescription.unexpected_message)


# ----------------------------------------------------------------------------- ClientHello checks


@pytest.mark.parametrize(
    ("client", "alert"),
    [
        (MiniClient(versions=None), AlertDescription.protocol_version),
        (MiniClient(versions=(0x0303,)), AlertDescription.protocol_version),
        (MiniClient(drop_extensions=[ExtensionType.key_share]), AlertDescription.missing_extension),
        (
            MiniClient(drop_extensions=[ExtensionType.supported_groups]),
            AlertDescription.missing_extension,
        ),
        (MiniClient(schemes=None), AlertDescription.missing_extension),
        (MiniClient(suites=(0x1304,)), AlertDescription.handshake_failure),
        (MiniClient(groups=(0x0A0A,), share_groups=()), AlertDescription.handshake_failure),
        (MiniClient(schemes=(0x0804,)), AlertDescription.handshake_failure),
        (MiniClient(groups=(P256,), share_groups=(X25519,)), AlertDescription.illegal_parameter),
        (
            MiniClient(groups=(X25519, P256), share_groups=(P256, X25519)),
            AlertDescription.illegal_parameter,
        ),
    ],
    ids=[
        "no-supported-versions",
        "tls12-only",
        "no-key-share",
        "no-supported-groups",
        "no-signature-algorithms",
        "no-common-suite",
        "no-common-group",
        "no-common-signature",
        "share-outside-groups",
        "shares-out-of-order",
    ],
)
def test_client_hello_rejections(
    server: ServerConnection, client: MiniClient, alert: AlertDescription
) -> None:
    expect_alert(server, client.hello_record(), alert)
    alert_record_sent(server, alert)
    with pytest.raises(TLSError):  # the connection stays failed
        server.receive_data(b"\x16")


@pytest.mark.parametrize(
    ("legacy_version", "versions", "alert"),
    [
        # rfc8446bis §4.1.2: TLS 1.3 offered, legacy_version not 0x0303 -> illegal_parameter.
        (0x0301, (0x0304,), AlertDescription.illegal_parameter),
        (0x0304, (0x0304,), AlertDescription.illegal_parameter),
        # Appendix E.5: 0x0300 or less -> protocol_version, whatever else is offered.
        (0x0300, (0x0304,), AlertDescription.protocol_version),
        (0x0200, (0x0304,), AlertDescription.protocol_version),
        # No TLS 1.3 in supported_versions -> protocol_version before legacy_version counts.
        (0x0301, (0x0303, 0x0302), AlertDescription.protocol_version),
        (0x0301, None, AlertDescription.protocol_version),
    ],
    ids=["tls10-legacy", "tls13-legacy", "ssl3", "ssl2", "tls12-client", "no-versions"],
)
def test_legacy_version_checks(
    server: ServerConnection,
    legacy_version: int,
    versions: tuple[int, ...] | None,
    alert: AlertDescription,
) -> None:
    record = bytearray(MiniClient(versions=versions).hello_record())
    record[9:11] = legacy_version.to_bytes(2, "big")  # ClientHello.legacy_version
    expect_alert(server, bytes(record), alert)
    alert_record_sent(server, alert)


def test_unknown_and_grease_versions_are_ignored(server: ServerConnection) -> None:
    client = MiniClient(versions=(0x7A7A, 0x0305, 0x0304, 0x0303))
    assert handshake(server, client).version == "TLSv1.3"


def test_duplicate_key_share_groups(server: ServerConnection) -> None:
    client = MiniClient()
    hello = bytearray(client.hello())
    share = client.privates[X25519].public
    entry = X25519.to_bytes(2, "big") + len(share).to_bytes(2, "big") + share
    old = ext.encode_key_share_ch([ext.KeyShareEntry(X25519, share)])
    new = (2 * len(entry)).to_bytes(2, "big") + entry + entry
    start = hello.index(old)
    patched = hello[:start] + new + hello[start + len(old) :]
    # fix the extension, extensions-block and handshake lengths
    ext_len_at = start - 2
    patched[ext_len_at : ext_len_at + 2] = len(new).to_bytes(2, "big")
    grow = len(new) - len(old)
    patched[1:4] = (int.from_bytes(patched[1:4], "big") + grow).to_bytes(3, "big")
    block_at = _extensions_block_offset(bytes(hello))
    block_len = int.from_bytes(patched[block_at : block_at + 2], "big") + grow
    patched[block_at : block_at + 2] = block_len.to_bytes(2, "big")
    expect_alert(server, plaintext_record(22, bytes(patched)), AlertDescription.illegal_parameter)


def _extensions_block_offset(hello: bytes) -> int:
    pos = 4 + 2 + 32
    pos += 1 + hello[pos]
    pos += 2 + int.from_bytes(hello[pos : pos + 2], "big")
    pos += 1 + hello[pos]
    return pos


def test_key_change_must_end_the_record(server: ServerConnection) -> None:
    client = MiniClient()
    hello = client.hello()
    # A ClientHello followed by more handshake bytes in the same record.
    expect_alert(
        server,
        plaintext_record(22, hello + b"\x14\x00\x00\x00"),
        AlertDescription.unexpected_message,
    )


def test_fragmented_client_hello_is_reassembled(server: ServerConnection) -> None:
    client = MiniClient()
    hello = client.hello()
    assert server.receive_data(plaintext_record(22, hello[:50])) == []
    got = server.receive_data(plaintext_record(22, hello[50:]))
    assert isinstance(got[0], events.ClientHelloReceived)


def test_interleaved_record_during_fragmented_message(server: ServerConnection) -> None:
    hello = MiniClient().hello()
    server.receive_data(plaintext_record(22, hello[:50]))
    expect_alert(server, plaintext_record(21, b"\x01\x5a"), AlertDescription.unexpected_message)


# ----------------------------------------------------------------------------- group selection


def test_uses_existing_share_instead_of_retry(make_config: Callable[..., ServerConfig]) -> None:
    conn = ServerConnection(make_config(groups=(X25519, P256)))
    info = handshake(conn, MiniClient(groups=(X25519, P256), share_groups=(P256,)))
    assert info.group == "secp256r1" and not info.hello_retry


def test_strict_preference_forces_retry(make_config: Callable[..., ServerConfig]) -> None:
    conn = ServerConnection(make_config(groups=(X25519, P256), strict_group_preference=True))
    info = handshake(conn, MiniClient(groups=(X25519, P256), share_groups=(P256,)))
    assert info.group == "x25519" and info.hello_retry


def test_hybrid_group_preferred(make_config: Callable[..., ServerConfig]) -> None:
    conn = ServerConnection(make_config(groups=(X25519, HYBRID)))
    info = handshake(conn, MiniClient(groups=(HYBRID, X25519), share_groups=(HYBRID, X25519)))
    assert info.group == "X25519MLKEM768"


def test_hello_retry_request_round_trip(make_config: Callable[..., ServerConfig]) -> None:
    conn = ServerConnection(make_config(groups=(P384,)))
    client = MiniClient(groups=(X25519, P384), share_groups=(X25519,))
    info = handshake(conn, client)
    assert info.hello_retry and info.group == "secp384r1"
    assert client.cookie is not None


def _after_retry(
    make_config: Callable[..., ServerConfig],
) -> tuple[ServerConnection, MiniClient]:
    conn = ServerConnection(make_config(groups=(P384,)))
    client = MiniClient(groups=(X25519, P384), share_groups=(X25519,))
    conn.receive_data(client.hello_record())
    client.handle_server_hello(conn.data_to_send())
    assert client.hello_retry_group == P384
    return conn, client


def test_retry_with_changed_suites(make_config: Callable[..., ServerConfig]) -> None:
    conn, client = _after_retry(make_config)
    client.suites = (0x1301,)
    expect_alert(conn, plaintext_record(22, client.hello()), AlertDescription.illegal_parameter)


def test_retry_with_wrong_share(make_config: Callable[..., ServerConfig]) -> None:
    conn, client = _after_retry(make_config)
    client.privates = {X25519: GROUP_TABLE[X25519].generate(os.urandom)}
    expect_alert(conn, plaintext_record(22, client.hello()), AlertDescription.illegal_parameter)


def test_retry_without_cookie(make_config: Callable[..., ServerConfig]) -> None:
    conn, client = _after_retry(make_config)
    client.cookie = None
    expect_alert(conn, plaintext_record(22, client.hello()), AlertDescription.missing_extension)


def test_retry_with_tampered_cookie(make_config: Callable[..., ServerConfig]) -> None:
    conn, client = _after_retry(make_config)
    assert client.cookie is not None
    client.cookie = client.cookie[:-1] + bytes((client.cookie[-1] ^ 1,))
    expect_alert(conn, plaintext_record(22, client.hello()), AlertDescription.illegal_parameter)


def test_retry_with_changed_extension(make_config: Callable[..., ServerConfig]) -> None:
    conn, client = _after_retry(make_config)
    client.alpn = ("h2",)
    expect_alert(conn, plaintext_record(22, client.hello()), AlertDescription.illegal_parameter)


def test_retry_with_early_data(make_config: Callable[..., ServerConfig]) -> None:
    conn, client = _after_retry(make_config)
    client.extra_extensions = [(ExtensionType.early_data, b"")]
    expect_alert(conn, plaintext_record(22, client.hello()), AlertDescription.illegal_parameter)


# ----------------------------------------------------------------------------- ALPN


def test_alpn_required_without_overlap(make_config: Callable[..., ServerConfig]) -> None:
    conn = ServerConnection(make_config(alpn_protocols=("h2",), alpn_required=True))
    client = MiniClient(alpn=("spdy/3",))
    expect_alert(conn, client.hello_record(), AlertDescription.no_application_protocol)


def test_alpn_without_overlap_is_no_application_protocol(
    make_config: Callable[..., ServerConfig],
) -> None:
    # RFC 7301 §3.2 (review R4): fatal even when alpn_required is off.
    conn = ServerConnection(make_config(alpn_protocols=("h2",)))
    client = MiniClient(alpn=("spdy/3",))
    expect_alert(conn, client.hello_record(), AlertDescription.no_application_protocol)


def test_client_without_alpn_is_tolerated(make_config: Callable[..., ServerConfig]) -> None:
    conn = ServerConnection(make_config(alpn_protocols=("h2",)))
    assert handshake(conn, MiniClient()).alpn_protocol is None


def test_client_without_alpn_refused_when_required(
    make_config: Callable[..., ServerConfig],
) -> None:
    conn = ServerConnection(make_config(alpn_protocols=("h2",), alpn_required=True))
    expect_alert(conn, MiniClient().hello_record(), AlertDescription.no_application_protocol)


# ----------------------------------------------------------------------------- client Finished


def test_corrupted_finished_record_is_bad_record_mac(server: ServerConnection) -> None:
    client = MiniClient()
    server.receive_data(client.hello_record())
    answer = bytearray(client.handle_server_hello(server.data_to_send()))
    answer[-20] ^= 0x01  # inside the ciphertext: the record fails to deprotect
    expect_alert(server, bytes(answer), AlertDescription.bad_record_mac)


def test_bad_verify_data_is_decrypt_error(server: ServerConnection) -> None:
    client = MiniClient()
    server.receive_data(client.hello_record())
    client.handle_server_hello(server.data_to_send())
    forged = bytearray(client.finished_message)
    forged[-1] ^= 0x01
    layer = RecordLayer()
    layer.set_write_key(SUITES[client.suite_code], client.client_handshake_secret)
    layer.write(22, bytes(forged))
    expect_alert(server, layer.take_output(), AlertDescription.decrypt_error)


# ----------------------------------------------------------------------------- post-handshake


def test_key_update_requested_is_answered_once(server: ServerConnection) -> None:
    client = MiniClient()
    handshake(server, client)
    got = server.receive_data(client.protect(22, KeyUpdate(True).serialize()))
    assert got == [events.KeyUpdated(peer_requested=True)]
    client.rekey_write()
    records = client.read_records(server.data_to_send())
    assert records == [(22, KeyUpdate(False).serialize())]
    client.rekey_read()
    assert server.receive_data(client.protect(23, b"after")) == [events.ApplicationData(b"after")]
    server.send_data(b"reply")
    assert client.read_records(server.data_to_send()) == [(23, b"reply")]


def test_key_update_not_requested_gets_no_answer(server: ServerConnection) -> None:
    client = MiniClient()
    handshake(server, client)
    got = server.receive_data(client.protect(22, KeyUpdate(False).serialize()))
    assert got == [events.KeyUpdated(peer_requested=False)]
    assert server.data_to_send() == b""


def test_server_initiated_key_update(server: ServerConnection) -> None:
    client = MiniClient()
    handshake(server, client)
    server.update_keys(request_peer=True)
    server.send_data(b"new keys")
    client.record.receive(server.data_to_send())
    assert client.record.next_record() == (22, KeyUpdate(True).serialize())
    client.rekey_read()
    assert client.record.next_record() == (23, b"new keys")


def test_key_update_rate_limit(make_config: Callable[..., ServerConfig]) -> None:
    conn = ServerConnection(make_config(limits=Limits(max_key_updates_per_minute=2)))
    client = MiniClient()
    handshake(conn, client)
    for _ in range(2):
        conn.receive_data(client.protect(22, KeyUpdate(False).serialize()))
        client.rekey_write()
    error = expect_alert(
        conn, client.protect(22, KeyUpdate(False).serialize()), AlertDescription.unexpected_message
    )
    assert error.limit == "max_key_updates_per_minute"


def test_key_update_with_trailing_data_in_record(server: ServerConnection) -> None:
    client = MiniClient()
    handshake(server, client)
    data = KeyUpdate(False).serialize() + KeyUpdate(False).serialize()
    expect_alert(server, client.protect(22, data), AlertDescription.unexpected_message)


def test_aead_limit_triggers_key_update(
    server: ServerConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = MiniClient()
    handshake(server, client)
    # RFC 8446 §5.5: near the AEAD usage limit the sender rekeys on its own.
    monkeypatch.setattr(RecordLayer, "write_needs_update", property(lambda self: True))
    server.send_data(b"data")
    client.record.receive(server.data_to_send())
    assert client.record.next_record() == (22, KeyUpdate(False).serialize())
    client.rekey_read()
    assert client.record.next_record() == (23, b"data")


@pytest.mark.parametrize(
    "message",
    [
        NewSessionTicket(7200, 1, b"n", b"ticket").serialize(),
        bytes.fromhex("0b000004") + b"\x00\x00\x00\x00",  # an empty Certificate
        bytes.fromhex("01000000"),  # a ClientHello after the handshake
    ],
    ids=["new-session-ticket", "certificate", "client-hello"],
)
def test_unexpected_post_handshake_messages(server: ServerConnection, message: bytes) -> None:
    client = MiniClient()
    handshake(server, client)
    expect_alert(server, client.protect(22, message), AlertDescription.unexpected_message)


# ----------------------------------------------------------------------------- alerts and closure


def test_user_canceled_is_reported_then_limited(make_config: Callable[..., ServerConfig]) -> None:
    conn = ServerConnection(make_config(limits=Limits(max_warning_alerts=1)))
    client = MiniClient()
    handshake(conn, client)
    warning = bytes((1, AlertDescription.user_canceled))
    assert conn.receive_data(client.protect(21, warning)) == [
        events.AlertReceived(1, AlertDescription.user_canceled)  # type: ignore[arg-type]
    ]
    error = expect_alert(conn, client.protect(21, warning), AlertDescription.unexpected_message)
    assert error.limit == "max_warning_alerts"


def test_warning_level_error_alert_is_fatal(server: ServerConnection) -> None:
    client = MiniClient()
    handshake(server, client)
    with pytest.raises(TLSError) as caught:
        server.receive_data(client.protect(21, bytes((1, AlertDescription.bad_certificate))))
    assert caught.value.sent_by_peer and caught.value.alert == AlertDescription.bad_certificate
    assert server.data_to_send() == b""  # no alert in reply to the peer's alert


def test_fatal_alert_during_handshake(server: ServerConnection) -> None:
    client = MiniClient()
    server.receive_data(client.hello_record())
    client.handle_server_hello(server.data_to_send())
    layer = RecordLayer()  # the client rejects our flight under its handshake key
    layer.set_write_key(SUITES[client.suite_code], client.client_handshake_secret)
    layer.write(21, bytes((2, AlertDescription.bad_certificate)))
    with pytest.raises(TLSError) as caught:
        server.receive_data(layer.take_output())
    assert caught.value.sent_by_peer and caught.value.alert == AlertDescription.bad_certificate
    assert server.data_to_send() == b""


def test_cleartext_alert_during_handshake(server: ServerConnection) -> None:
    """rfc8446bis Appendix A.1: a client may send alerts about post-ServerHello
    messages in the clear; it is the peer's alert, not unexpected_message."""
    client = MiniClient()
    server.receive_data(client.hello_record())
    client.handle_server_hello(server.data_to_send())
    with pytest.raises(TLSError) as caught:
        server.receive_data(plaintext_record(21, bytes((2, AlertDescription.illegal_parameter))))
    assert caught.value.sent_by_peer and caught.value.alert == AlertDescription.illegal_parameter
    assert server.data_to_send() == b""


def test_cleartext_handshake_after_key_change_is_unexpected(server: ServerConnection) -> None:
    client = MiniClient()
    server.receive_data(client.hello_record())
    client.handle_server_hello(server.data_to_send())
    finished = plaintext_record(22, client.finished_message)
    expect_alert(server, finished, AlertDescription.unexpected_message)


def test_cleartext_alert_after_handshake_is_unexpected(server: ServerConnection) -> None:
    handshake(server, MiniClient())
    cleartext = plaintext_record(21, bytes((2, AlertDescription.bad_certificate)))
    expect_alert(server, cleartext, AlertDescription.unexpected_message)


def test_malformed_alert_is_decode_error(server: ServerConnection) -> None:
    client = MiniClient()
    handshake(server, client)
    expect_alert(server, client.protect(21, b"\x01\x00\x00"), AlertDescription.decode_error)


def test_data_after_close_notify_is_ignored(server: ServerConnection) -> None:
    client = MiniClient()
    handshake(server, client)
    closing = client.protect(21, b"\x01\x00") + client.protect(23, b"ignored")
    assert server.receive_data(closing) == [events.ConnectionClosed(clean=True)]
    assert server.receive_data(client.protect(23, b"also ignored")) == []
    server.send_data(b"we may still send")  # half-closed: our direction is open


def test_eof_during_handshake(server: ServerConnection) -> None:
    server.receive_data(MiniClient().hello_record())
    expect_alert(server, b"", AlertDescription.handshake_failure)


def test_eof_after_handshake_is_unclean_close(server: ServerConnection) -> None:
    handshake(server, MiniClient())
    assert server.receive_data(b"") == [events.ConnectionClosed(clean=False)]


def test_empty_record_limit(make_config: Callable[..., ServerConfig]) -> None:
    conn = ServerConnection(make_config(limits=Limits(max_empty_records=3)))
    client = MiniClient()
    handshake(conn, client)
    for _ in range(3):
        assert conn.receive_data(client.protect(23, b"")) == []
    error = expect_alert(conn, client.protect(23, b""), AlertDescription.unexpected_message)
    assert error.limit == "max_empty_records"


def test_application_data_before_finished(server: ServerConnection) -> None:
    client = MiniClient()
    server.receive_data(client.hello_record())
    client.handle_server_hello(server.data_to_send())
    early = RecordLayer()
    early.set_write_key(SUITES[client.suite_code], client.app_write_secret)
    early.write(23, b"too early")
    expect_alert(server, early.take_output(), AlertDescription.bad_record_mac)


def test_api_misuse_raises_state_errors(server: ServerConnection) -> None:
    with pytest.raises(ConnectionStateError):
        server.send_data(b"x")
    with pytest.raises(ConnectionStateError):
        server.export_keying_material(b"label", b"", 16)
    with pytest.raises(ConnectionStateError):
        server.update_keys()
    with pytest.raises(ConnectionStateError):
        server.request_client_certificate()


def test_exporter_matches_between_calls(server: ServerConnection) -> None:
    handshake(server, MiniClient())
    first = server.export_keying_material(b"EXPORTER-test", b"ctx", 48)
    assert len(first) == 48
    assert first == server.export_keying_material(b"EXPORTER-test", b"ctx", 48)
    assert first != server.export_keying_material(b"EXPORTER-test", b"other", 48)


def test_config_for_name_swaps_configuration(
    make_config: Callable[..., ServerConfig],
) -> None:
    special = make_config(alpn_protocols=("special",))
    seen: list[str | None] = []

    def choose(name: str | None) -> ServerConfig | None:
        seen.append(name)
        return special if name == "localhost" else None

    conn = ServerConnection(make_config(config_for_name=choose))
    info = handshake(conn, MiniClient(alpn=("special",)))
    assert seen == ["localhost"] and info.alpn_protocol == "special"


def test_config_for_name_swaps_limits(make_config: Callable[..., ServerConfig]) -> None:
    strict = make_config(limits=Limits(max_empty_records=1, max_record_buffer=40_000))
    conn = ServerConnection(make_config(config_for_name=lambda name: strict))
    client = MiniClient()
    handshake(conn, client)
    assert conn.receive_data(client.protect(23, b"")) == []
    expect_alert(conn, client.protect(23, b""), AlertDescription.unexpected_message)
    conn = ServerConnection(make_config(config_for_name=lambda name: strict))
    client = MiniClient()
    handshake(conn, client)
    partial = b"".join(client.protect(23, bytes(16384)) for _ in range(3))  # ~49 KiB at once
    expect_alert(conn, partial[:-1], AlertDescription.internal_error)


def test_base_limits_apply_without_a_per_name_config(
    make_config: Callable[..., ServerConfig],
) -> None:
    conn = ServerConnection(make_config(config_for_name=lambda name: None))
    client = MiniClient()
    handshake(conn, client)
    assert conn.receive_data(client.protect(23, b"") + client.protect(23, b"")) == []
    got = conn.receive_data(b"".join(client.protect(23, bytes(16384)) for _ in range(3)))
    assert sum(len(e.data) for e in got if isinstance(e, events.ApplicationData)) == 3 * 16384


def test_keylog_lines(make_config: Callable[..., ServerConfig]) -> None:
    lines: list[str] = []
    conn = ServerConnection(make_config(keylog=lines.append))
    client = MiniClient()
    handshake(conn, client)
    labels = [line.split()[0] for line in lines]
    assert labels == [
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
        "SERVER_HANDSHAKE_TRAFFIC_SECRET",
        "CLIENT_TRAFFIC_SECRET_0",
        "SERVER_TRAFFIC_SECRET_0",
        "EXPORTER_SECRET",
    ]
    assert all(line.split()[1] == client.random.hex() for line in lines)
    assert lines[2].split()[2] == client.app_write_secret.hex()


def test_skips_declined_early_data(server: ServerConnection) -> None:
    client = MiniClient(extra_extensions=[(ExtensionType.early_data, b"")])
    hello = client.hello_record()
    junk_early = bytes.fromhex("1703030020") + bytes(32)  # undecryptable 0-RTT record
    server.receive_data(hello + junk_early)
    answer = client.handle_server_hello(server.data_to_send())
    assert any(isinstance(e, events.HandshakeComplete) for e in server.receive_data(answer))


def test_oversized_handshake_message(make_config: Callable[..., ServerConfig]) -> None:
    conn = ServerConnection(make_config(limits=Limits(max_handshake_message=4096)))
    header = b"\x01" + (5000).to_bytes(3, "big")
    with pytest.raises(TLSError) as caught:
        conn.receive_data(plaintext_record(22, header + bytes(100)))
    assert caught.value.limit == "max_handshake_message"
    assert conn.data_to_send()[-2] == 2  # a fatal alert went out


def test_record_buffer_limit(make_config: Callable[..., ServerConfig]) -> None:
    conn = ServerConnection(make_config(limits=Limits(max_record_buffer=40_000)))
    flood = plaintext_record(22, MiniClient().hello()) * 1000  # far beyond the buffer limit
    error = expect_alert(conn, flood, AlertDescription.internal_error)
    assert error.limit == "max_record_buffer"


def test_skips_early_data_after_hello_retry(make_config: Callable[..., ServerConfig]) -> None:
    conn = ServerConnection(make_config(groups=(P384,)))
    client = MiniClient(
        groups=(X25519, P384),
        share_groups=(X25519,),
        extra_extensions=[(ExtensionType.early_data, b"")],
    )
    junk_early = bytes.fromhex("1703030020") + bytes(32)
    conn.receive_data(client.hello_record() + junk_early)
    client.extra_extensions = []  # RFC 8446 §4.1.2: CH2 drops early_data
    answer = client.handle_server_hello(conn.data_to_send())
    conn.receive_data(junk_early + answer)
    done = conn.receive_data(client.handle_server_hello(conn.data_to_send()))
    info = done[0]
    assert isinstance(info, events.HandshakeComplete) and info.hello_retry


def _stapling_server(ca: Issued, leaf: Issued, response: bytes) -> ServerConnection:
    chain = CertificateChain.from_pem(leaf.cert_pem() + ca.cert_pem(), leaf.key_pem(), response)
    return ServerConnection(ServerConfig(certificates=CertificateStore([chain])))


def _asking_client() -> MiniClient:
    return MiniClient(
        extra_extensions=[(ExtensionType.status_request, ext.encode_status_request_ocsp())]
    )


def test_ocsp_staple_in_leaf_entry(pki: tuple[Issued, Issued]) -> None:
    ca, leaf = pki
    now = utcnow()
    staple = ocsp_response(ca, leaf, now - HOUR, now + HOUR)
    asking = _asking_client()
    handshake(_stapling_server(ca, leaf, staple), asking)
    certificate = Certificate.parse(asking.messages[1][1][4:])
    assert certificate.certificate_list[0].ocsp_response() == staple
    assert certificate.certificate_list[1].ocsp_response() is None
    silent = MiniClient()
    handshake(_stapling_server(ca, leaf, staple), silent)
    assert Certificate.parse(silent.messages[1][1][4:]).certificate_list[0].ocsp_response() is None


def test_stale_ocsp_response_is_not_stapled(pki: tuple[Issued, Issued]) -> None:
    """Review R21: RFC 6960 §4.2.2.1: past nextUpdate the response is worthless."""
    ca, leaf = pki
    now = utcnow()
    stale = ocsp_response(ca, leaf, now - 48 * HOUR, now - 24 * HOUR)
    asking = _asking_client()
    handshake(_stapling_server(ca, leaf, stale), asking)
    assert Certificate.parse(asking.messages[1][1][4:]).certificate_list[0].ocsp_response() is None


def test_record_padding_hides_lengths(make_config: Callable[..., ServerConfig]) -> None:
    conn = ServerConnection(make_config(record_padding=256))
    client = MiniClient()
    handshake(conn, client)
    for size in (1, 100, 255):
        conn.send_data(bytes(size))
        record = conn.data_to_send()
        assert len(record) == 5 + 256 + 16  # header + padded inner plaintext + tag
        assert client.read_records(record) == [(23, bytes(size))]


def test_public_api_exports_resolve() -> None:
    import tls13

    for name in tls13.__all__:
        assert getattr(tls13, name) is not None, name
    assert tls13.ServerConnection is ServerConnection
    assert issubclass(tls13.ConnectionStateError, tls13.TLSError)
    with pytest.raises(AttributeError):
        tls13.NotAThing  # noqa: B018


@pytest.mark.parametrize(
    ("group", "share"),
    [(X25519, bytes(32)), (P256, b"\x04" + bytes(64)), (P256, b"\x02" + bytes(32))],
    ids=["x25519-zero", "p256-not-on-curve", "p256-compressed-length"],
)
def test_invalid_key_share_is_illegal_parameter(
    make_config: Callable[..., ServerConfig], group: int, share: bytes
) -> None:
    conn = ServerConnection(make_config(groups=(group,)))
    client = MiniClient(groups=(group,))
    client.privates = {group: SimpleNamespace(public=share)}  # type: ignore[dict-item]
    expect_alert(conn, client.hello_record(), AlertDescription.illegal_parameter)


def test_no_early_data_skipping_after_the_second_hello(
    make_config: Callable[..., ServerConfig],
) -> None:
    """Declined 0-RTT is skipped only until ClientHello2 (RFC 8446 §4.2.10); afterwards a
    record that does not deprotect is bad_record_mac (§5.2), not silently dropped."""
    conn = ServerConnection(make_config(groups=(P384,)))
    client = MiniClient(
        groups=(X25519, P384),
        share_groups=(X25519,),
        extra_extensions=[(ExtensionType.early_data, b"")],
    )
    conn.receive_data(client.hello_record())
    client.extra_extensions = []
    conn.receive_data(client.handle_server_hello(conn.data_to_send()))
    conn.data_to_send()
    junk = bytes.fromhex("1703030020") + bytes(32)
    expect_alert(conn, junk, AlertDescription.bad_record_mac)


def _with_compression(client: MiniClient, methods: bytes) -> bytes:
    hello = ClientHello.parse(client.hello()[4:])
    return plaintext_record(22, replace(hello, legacy_compression_methods=methods).serialize())


def test_tls12_hello_with_compression_is_protocol_version(server: ServerConnection) -> None:
    # RFC 8446 §4.1.2: only a TLS 1.3 hello must offer [null] alone; an older one is
    # judged by its version first, and we speak only TLS 1.3 (§4.2.1).
    record = _with_compression(MiniClient(versions=None), b"\x01\x00")
    expect_alert(server, record, AlertDescription.protocol_version)


@pytest.mark.parametrize("methods", [b"\x01\x00", b"\x01", b"\x00\x00"])
def test_tls13_hello_with_compression_is_illegal_parameter(
    server: ServerConnection, methods: bytes
) -> None:
    expect_alert(
        server, _with_compression(MiniClient(), methods), AlertDescription.illegal_parameter
    )


@pytest.mark.parametrize("name", [b"127.0.0.1", b"10.0.0.1.", b"::1", b"[2001:db8::7]"])
@pytest.mark.parametrize("unknown_name", ["default", "reject"])
def test_ip_literal_server_name_is_ignored(
    make_config: Callable[..., ServerConfig], name: bytes, unknown_name: str
) -> None:
    # RFC 6066 §3 forbids clients to send IP literals but names no server reaction; like
    # OpenSSL and nginx we treat the extension as absent (review R10), so even
    # unknown_name="reject" serves the default certificate instead of unrecognized_name.
    entry = b"\x00" + len(name).to_bytes(2, "big") + name
    body = len(entry).to_bytes(2, "big") + entry
    client = MiniClient(server_name=None, extra_extensions=[(ExtensionType.server_name, body)])
    conn = ServerConnection(make_config(unknown_name=unknown_name))
    hellos = conn.receive_data(client.hello_record())
    assert [e.server_name for e in hellos if isinstance(e, events.ClientHelloReceived)] == [None]
    done = conn.receive_data(client.handle_server_hello(conn.data_to_send()))
    info = [e for e in done if isinstance(e, events.HandshakeComplete)][0]
    assert info.server_name is None and conn.handshake_complete


def test_handshake_bytes_before_completion_are_bounded(
    make_config: Callable[..., ServerConfig],
) -> None:
    # Each ClientHello fits max_handshake_message, but the two around a HelloRetryRequest do
    # not fit max_handshake_buffer together: the second one ends the handshake.
    limits = Limits(max_handshake_message=4096, max_handshake_buffer=4096)
    conn = ServerConnection(make_config(groups=(P384,), limits=limits))
    padding = (ExtensionType.padding, bytes(2500))
    client = MiniClient(groups=(X25519, P384), share_groups=(X25519,), extra_extensions=[padding])
    conn.receive_data(client.hello_record())
    client.handle_server_hello(conn.data_to_send())
    assert client.hello_retry_group == P384
    with pytest.raises(TLSError) as err:
        conn.receive_data(client.hello_record())
    assert err.value.alert is AlertDescription.illegal_parameter
    assert err.value.limit == "max_handshake_buffer"


def test_handshake_buffer_bound_leaves_a_normal_retry_alone(
    make_config: Callable[..., ServerConfig],
) -> None:
    limits = Limits(max_handshake_message=4096, max_handshake_buffer=8192)
    conn = ServerConnection(make_config(groups=(P384,), limits=limits))
    client = MiniClient(groups=(X25519, P384), share_groups=(X25519,))
    info = handshake(conn, client)
    assert info.hello_retry
