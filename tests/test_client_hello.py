"""The client's ClientHello and its checks of ServerHello / HelloRetryRequest.

The server side is played by hand: ServerHello messages are crafted and fed
as plaintext records, so every rule of RFC 8446 §4.1.3/§4.1.4 that the client
enforces before keys exist can be exercised, including the alert it queues.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from msg_helpers import record, split_records

from tls13 import events
from tls13 import extensions as ext
from tls13.alerts import AlertDescription, TLSError
from tls13.client import ClientConnection, ClientState
from tls13.config import ClientConfig
from tls13.extensions import ExtensionType, KeyShareEntry
from tls13.groups import BY_NAME as GROUP_CODES
from tls13.groups import GROUPS
from tls13.messages import (
    DOWNGRADE_TLS11,
    DOWNGRADE_TLS12,
    HELLO_RETRY_REQUEST_RANDOM,
    ClientHello,
    EncryptedExtensions,
    ServerHello,
    parse_message,
)
from tls13.tickets import SessionTicket

X25519 = GROUP_CODES["x25519"]
P256 = GROUP_CODES["secp256r1"]
P384 = GROUP_CODES["secp384r1"]
HYBRID = GROUP_CODES["X25519MLKEM768"]
HANDSHAKE = 22
ALERT = 21
CCS = 20
APPLICATION_DATA = 23


def _config(**overrides: object) -> ClientConfig:
    return ClientConfig(**overrides)  # type: ignore[arg-type]


def _started(
    server_name: str | None = "example.com",
    alpn: tuple[str, ...] = (),
    **config: object,
) -> tuple[ClientConnection, ClientHello]:
    client = ClientConnection(_config(**config), server_name=server_name, alpn_protocols=alpn)
    client.start()
    records = split_records(client.data_to_send())
    assert records[0][0] == HANDSHAKE
    hello = parse_message(records[0][1])
    assert isinstance(hello, ClientHello)
    return client, hello


def _server_hello(hello: ClientHello, **changes: object) -> ServerHello:
    """A plausible ServerHello answering ``hello`` with an x25519 share."""
    share = GROUPS[X25519].generate(lambda n: bytes(range(n)))
    base = ServerHello(
        random=bytes(range(32)),
        legacy_session_id_echo=hello.legacy_session_id,
        cipher_suite=hello.cipher_suites[0],
        extensions=[
            (ExtensionType.key_share, ext.encode_key_share_sh(KeyShareEntry(X25519, share.public))),
            (ExtensionType.supported_versions, ext.encode_uint16_body(0x0304)),
        ],
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _retry(
    hello: ClientHello, extensions: list[tuple[int, bytes]], suite: int | None = None
) -> ServerHello:
    return ServerHello(
        random=HELLO_RETRY_REQUEST_RANDOM,
        legacy_session_id_echo=hello.legacy_session_id,
        cipher_suite=suite if suite is not None else hello.cipher_suites[0],
        extensions=[
            (ExtensionType.supported_versions, ext.encode_uint16_body(0x0304)),
            *extensions,
        ],
    )


def _expect_alert(
    client: ClientConnection, data: bytes, alert: AlertDescription, protected: bool = False
) -> None:
    with pytest.raises(TLSError) as err:
        client.receive_data(data)
    assert err.value.alert is alert, err.value
    assert not err.value.sent_by_peer
    # The fatal alert we owe the peer is queued: in the clear before the
    # ServerHello, under our handshake keys after it (the server expects those).
    last_type, last_payload = split_records(client.data_to_send())[-1]
    if protected:
        assert last_type == APPLICATION_DATA and len(last_payload) == 2 + 1 + 16
    else:
        assert (last_type, last_payload) == (ALERT, bytes([2, alert]))
    # And the connection stays failed.
    with pytest.raises(TLSError):
        client.receive_data(b"")


# --------------------------------------------------------------------- ClientHello contents


def test_client_hello_contents() -> None:
    client, hello = _started(alpn=("h2", "http/1.1"))
    assert client.state is ClientState.WAIT_SH
    assert hello.legacy_version == 0x0303
    assert len(hello.random) == 32
    assert len(hello.legacy_session_id) == 32  # middlebox compatibility mode (Appendix D.4)
    assert hello.legacy_compression_methods == b"\x00"
    assert hello.cipher_suites == ClientConfig().cipher_suites
    assert hello.server_name() == "example.com"
    assert hello.supported_versions() == [0x0304]
    assert hello.alpn_protocols() == ["h2", "http/1.1"]
    assert hello.psk_key_exchange_modes() == [ext.PSK_DHE_KE]
    assert hello.signature_algorithms() == list(ClientConfig().signature_schemes)
    groups = hello.supported_groups()
    assert groups is not None and groups[:2] == [HYBRID, X25519]
    shares = hello.key_shares()
    assert shares is not None
    assert [s.group for s in shares] == [HYBRID, X25519]
    assert all(len(s.key_exchange) == GROUPS[s.group].client_share_len for s in shares)
    assert hello.record_size_limit() == 16385
    assert hello.pre_shared_key() is None and not hello.early_data()
    assert not hello.post_handshake_auth()


def test_client_hello_key_shares_follow_config() -> None:
    _, hello = _started(groups=(P256, X25519, P384), key_share_groups=(P256, P384))
    shares = hello.key_shares()
    assert shares is not None and [s.group for s in shares] == [P256, P384]
    assert hello.supported_groups() == [P256, X25519, P384]


def test_no_sni_for_ip_literals_or_none() -> None:
    for name in ("127.0.0.1", "::1", None):
        _, hello = _started(server_name=name)
        assert hello.server_name() is None


def test_sni_is_normalized_and_validated() -> None:
    _, hello = _started(server_name="WWW.Example.org.")
    assert hello.server_name() == "www.example.org"
    with pytest.raises(ValueError):
        ClientConnection(ClientConfig(), server_name="not a host")
    with pytest.raises(ValueError):
        ClientConnection(ClientConfig(), alpn_protocols=("",))


def test_no_session_id_without_middlebox_compat() -> None:
    _, hello = _started(middlebox_compat=False)
    assert hello.legacy_session_id == b""


def test_start_twice_is_refused() -> None:
    client, _ = _started()
    with pytest.raises(TLSError):
        client.start()


def test_random_comes_from_config() -> None:
    counter = iter(range(1, 10**6))

    def fake_random(n: int) -> bytes:
        return bytes([next(counter) % 256]) * n

    _, hello = _started(random=fake_random, key_share_groups=(X25519,))
    assert hello.random == bytes([1]) * 32


# --------------------------------------------------------------------- ServerHello checks


def test_version_other_than_tls13_is_illegal_parameter() -> None:
    client, hello = _started()
    sh = _server_hello(
        hello,
        extensions=[(ExtensionType.supported_versions, ext.encode_uint16_body(0x0303))],
    )
    _expect_alert(client, record(HANDSHAKE, sh.serialize()), AlertDescription.illegal_parameter)


@pytest.mark.parametrize("sentinel", [DOWNGRADE_TLS12, DOWNGRADE_TLS11])
def test_downgrade_sentinel_is_illegal_parameter(sentinel: bytes) -> None:
    client, hello = _started()
    sh = ServerHello(bytes(24) + sentinel, hello.legacy_session_id, 0xC02F, [(0xFF01, b"\x00")])
    _expect_alert(client, record(HANDSHAKE, sh.serialize()), AlertDescription.illegal_parameter)


def test_tls12_server_is_protocol_version() -> None:
    client, hello = _started()
    sh = ServerHello(bytes(range(32)), hello.legacy_session_id, 0xC02F, [])
    _expect_alert(client, record(HANDSHAKE, sh.serialize()), AlertDescription.protocol_version)


def test_session_id_echo_must_match() -> None:
    client, hello = _started()
    sh = _server_hello(hello, legacy_session_id_echo=bytes(32))
    _expect_alert(client, record(HANDSHAKE, sh.serialize()), AlertDescription.illegal_parameter)


def test_cipher_suite_must_be_offered() -> None:
    client, hello = _started(cipher_suites=(0x1301,))
    sh = _server_hello(hello, cipher_suite=0x1302)
    _expect_alert(client, record(HANDSHAKE, sh.serialize()), AlertDescription.illegal_parameter)


def test_key_share_for_unsent_group() -> None:
    client, hello = _started(key_share_groups=(X25519,))
    share = GROUPS[P256].generate(lambda n: bytes(n))
    sh = _server_hello(
        hello,
        extensions=[
            (ExtensionType.key_share, ext.encode_key_share_sh(KeyShareEntry(P256, share.public))),
            (ExtensionType.supported_versions, ext.encode_uint16_body(0x0304)),
        ],
    )
    _expect_alert(client, record(HANDSHAKE, sh.serialize()), AlertDescription.illegal_parameter)


def test_missing_key_share() -> None:
    client, hello = _started()
    sh = _server_hello(
        hello, extensions=[(ExtensionType.supported_versions, ext.encode_uint16_body(0x0304))]
    )
    _expect_alert(client, record(HANDSHAKE, sh.serialize()), AlertDescription.missing_extension)


def test_pre_shared_key_not_offered() -> None:
    client, hello = _started()
    sh = _server_hello(hello)
    sh = replace(sh, extensions=[*sh.extensions, (ExtensionType.pre_shared_key, b"\x00\x00")])
    _expect_alert(client, record(HANDSHAKE, sh.serialize()), AlertDescription.unsupported_extension)


def test_bad_server_share_is_illegal_parameter() -> None:
    client, hello = _started(key_share_groups=(P256,), groups=(P256,))
    sh = _server_hello(
        hello,
        extensions=[
            (
                ExtensionType.key_share,
                ext.encode_key_share_sh(KeyShareEntry(P256, b"\x04" + bytes(64))),
            ),
            (ExtensionType.supported_versions, ext.encode_uint16_body(0x0304)),
        ],
    )
    _expect_alert(client, record(HANDSHAKE, sh.serialize()), AlertDescription.illegal_parameter)


def test_message_before_server_hello_is_unexpected() -> None:
    client, _ = _started()
    ee = EncryptedExtensions([]).serialize()
    _expect_alert(client, record(HANDSHAKE, ee), AlertDescription.unexpected_message)


def test_ccs_before_server_hello_is_dropped() -> None:
    # RFC 8446 §5: an unprotected CCS any time after the first ClientHello is dropped.
    client, _ = _started()
    assert client.receive_data(record(CCS, b"\x01")) == []
    assert client.data_to_send() == b""


def test_ccs_with_a_wrong_body_is_unexpected() -> None:
    client, _ = _started()
    _expect_alert(client, record(CCS, b"\x02"), AlertDescription.unexpected_message)


def test_eof_during_handshake() -> None:
    client, _ = _started()
    with pytest.raises(TLSError) as err:
        client.receive_data(b"")
    assert err.value.alert is AlertDescription.handshake_failure


def test_peer_alert_is_reported_as_sent_by_peer() -> None:
    client, _ = _started()
    with pytest.raises(TLSError) as err:
        client.receive_data(record(ALERT, bytes([2, AlertDescription.handshake_failure])))
    assert err.value.sent_by_peer and err.value.alert is AlertDescription.handshake_failure


def test_valid_server_hello_moves_on_and_switches_keys() -> None:
    client, hello = _started(key_share_groups=(X25519,))
    sh = _server_hello(hello)
    assert client.receive_data(record(HANDSHAKE, sh.serialize())) == []
    assert client.state is ClientState.WAIT_EE
    # Handshake keys are on: a plaintext handshake record is no longer acceptable.
    _expect_alert(
        client,
        record(HANDSHAKE, EncryptedExtensions([]).serialize()),
        AlertDescription.unexpected_message,
        protected=True,
    )


def test_server_hello_must_end_its_record() -> None:
    # RFC 8446 §5.1: the key change after ServerHello must happen on a record boundary.
    client, hello = _started(key_share_groups=(X25519,))
    data = _server_hello(hello).serialize() + EncryptedExtensions([]).serialize()
    _expect_alert(
        client, record(HANDSHAKE, data), AlertDescription.unexpected_message, protected=True
    )


# --------------------------------------------------------------------- HelloRetryRequest


def _hrr_for(group: int) -> Callable[[ClientHello], ServerHello]:
    def build(hello: ClientHello) -> ServerHello:
        return _retry(
            hello,
            [
                (ExtensionType.key_share, ext.encode_uint16_body(group)),
                (ExtensionType.cookie, ext.encode_cookie(b"cookie-state")),
            ],
        )

    return build


def test_hello_retry_request_gives_a_second_hello() -> None:
    client, hello = _started(key_share_groups=(X25519,), groups=(X25519, P256))
    out = client.receive_data(record(HANDSHAKE, _hrr_for(P256)(hello).serialize()))
    assert out == []
    assert client.state is ClientState.WAIT_SH2
    records = split_records(client.data_to_send())
    # Appendix D.4: the compatibility CCS goes right before the second ClientHello.
    assert records[0] == (CCS, b"\x01")
    second = parse_message(records[1][1])
    assert isinstance(second, ClientHello)
    assert second.random == hello.random
    assert second.legacy_session_id == hello.legacy_session_id
    assert second.cipher_suites == hello.cipher_suites
    assert second.cookie() == b"cookie-state"
    shares = second.key_shares()
    assert shares is not None and [s.group for s in shares] == [P256]
    # Only key_share and cookie changed (§4.1.2).
    stable = [e for e in hello.extensions if e[0] != ExtensionType.key_share]
    assert [
        e for e in second.extensions if e[0] not in (ExtensionType.key_share, ExtensionType.cookie)
    ] == stable


def test_cookie_only_retry_keeps_the_shares() -> None:
    client, hello = _started(key_share_groups=(X25519,))
    retry = _retry(hello, [(ExtensionType.cookie, ext.encode_cookie(b"c"))])
    client.receive_data(record(HANDSHAKE, retry.serialize()))
    second = parse_message(split_records(client.data_to_send())[-1][1])
    assert isinstance(second, ClientHello)
    assert second.key_shares() == hello.key_shares()
    assert second.cookie() == b"c"


def test_second_hello_retry_request_is_unexpected() -> None:
    client, hello = _started(key_share_groups=(X25519,), groups=(X25519, P256, P384))
    client.receive_data(record(HANDSHAKE, _hrr_for(P256)(hello).serialize()))
    client.data_to_send()
    _expect_alert(
        client,
        record(HANDSHAKE, _hrr_for(P384)(hello).serialize()),
        AlertDescription.unexpected_message,
    )


def test_retry_for_a_group_not_offered() -> None:
    client, hello = _started(key_share_groups=(X25519,), groups=(X25519,))
    _expect_alert(
        client,
        record(HANDSHAKE, _hrr_for(P256)(hello).serialize()),
        AlertDescription.illegal_parameter,
    )


def test_retry_for_a_group_already_shared() -> None:
    client, hello = _started(key_share_groups=(X25519,), groups=(X25519, P256))
    _expect_alert(
        client,
        record(HANDSHAKE, _hrr_for(X25519)(hello).serialize()),
        AlertDescription.illegal_parameter,
    )


def test_retry_that_changes_nothing() -> None:
    client, hello = _started()
    _expect_alert(
        client, record(HANDSHAKE, _retry(hello, []).serialize()), AlertDescription.illegal_parameter
    )


def test_retry_with_unoffered_suite() -> None:
    client, hello = _started(
        cipher_suites=(0x1301,), key_share_groups=(X25519,), groups=(X25519, P256)
    )
    retry = _retry(hello, [(ExtensionType.key_share, ext.encode_uint16_body(P256))], suite=0x1303)
    _expect_alert(client, record(HANDSHAKE, retry.serialize()), AlertDescription.illegal_parameter)


def test_server_hello_after_retry_must_keep_suite_and_group() -> None:
    client, hello = _started(
        cipher_suites=(0x1301, 0x1303), key_share_groups=(X25519,), groups=(X25519, P256)
    )
    client.receive_data(record(HANDSHAKE, _hrr_for(P256)(hello).serialize()))
    second = parse_message(split_records(client.data_to_send())[-1][1])
    assert isinstance(second, ClientHello)
    changed_suite = _server_hello(second, cipher_suite=0x1303)
    _expect_alert(
        client, record(HANDSHAKE, changed_suite.serialize()), AlertDescription.illegal_parameter
    )


def test_server_hello_after_retry_with_other_group() -> None:
    client, hello = _started(key_share_groups=(X25519,), groups=(X25519, P256))
    client.receive_data(record(HANDSHAKE, _hrr_for(P256)(hello).serialize()))
    second = parse_message(split_records(client.data_to_send())[-1][1])
    assert isinstance(second, ClientHello)
    # The x25519 share was dropped from the second hello, so this share is not ours.
    _expect_alert(
        client,
        record(HANDSHAKE, _server_hello(second).serialize()),
        AlertDescription.illegal_parameter,
    )


def test_unsolicited_extension_in_retry() -> None:
    client, hello = _started(key_share_groups=(X25519,), groups=(X25519, P256))
    retry = _retry(hello, [(ExtensionType.key_share, ext.encode_uint16_body(P256))])
    bad = replace(retry, extensions=[*retry.extensions, (0x7777, b"")])
    _expect_alert(
        client, record(HANDSHAKE, bad.serialize()), AlertDescription.unsupported_extension
    )


# --------------------------------------------------------------------- record versions


def test_initial_client_hello_record_says_tls10_and_retry_says_tls12() -> None:
    client = ClientConnection(
        ClientConfig(key_share_groups=(X25519,), groups=(X25519, P256)), server_name="a.example"
    )
    client.start()
    first = client.data_to_send()
    assert first[:3] == b"\x16\x03\x01"  # RFC 8446 §5.1: allowed for the initial ClientHello
    hello = parse_message(split_records(first)[0][1])
    assert isinstance(hello, ClientHello)
    client.receive_data(record(HANDSHAKE, _hrr_for(P256)(hello).serialize()))
    retry_flight = client.data_to_send()
    assert retry_flight[:3] == b"\x14\x03\x03"  # the CCS
    assert retry_flight[6:9] == b"\x16\x03\x03"  # ClientHello2


# --------------------------------------------------------------------- resumption offers

NOW = 1_700_000_000.0


def _ticket(**fields: object) -> SessionTicket:
    values: dict[str, object] = {
        "ticket": b"opaque-ticket",
        "psk": bytes(range(32)),
        "cipher_suite": 0x1301,
        "lifetime": 3600,
        "age_add": 0xFFFFFF00,
        "received_at": NOW - 2.5,
        "max_early_data": 0,
        "server_name": "example.com",
        "alpn_protocol": None,
    }
    values.update(fields)
    return SessionTicket(**values)  # type: ignore[arg-type]


def _resuming(
    ticket: SessionTicket, alpn: tuple[str, ...] = (), **config: object
) -> tuple[ClientConnection, list[tuple[int, bytes]]]:
    config.setdefault("clock", lambda: NOW)
    client = ClientConnection(
        _config(**config), server_name="example.com", alpn_protocols=alpn, session=ticket
    )
    client.start()
    return client, split_records(client.data_to_send())


def test_psk_offer_layout() -> None:
    _, records = _resuming(_ticket())
    hello = parse_message(records[0][1])
    assert isinstance(hello, ClientHello)
    assert hello.extensions[-1][0] == ExtensionType.pre_shared_key  # §4.2.11: last
    offered = hello.pre_shared_key()
    assert offered is not None
    (identity,) = offered.identities
    assert identity.identity == b"opaque-ticket"
    # §4.2.11.1: age in milliseconds plus age_add, modulo 2^32.
    assert identity.obfuscated_ticket_age == (2500 + 0xFFFFFF00) % 2**32
    (binder,) = offered.binders
    assert len(binder) == 32 and binder != bytes(32)
    assert hello.psk_key_exchange_modes() == [ext.PSK_DHE_KE]
    assert not hello.early_data() and len(records) == 1


def test_binder_depends_on_the_psk() -> None:
    _, first = _resuming(_ticket())
    _, second = _resuming(_ticket(psk=bytes(32)))
    binders = []
    for records in (first, second):
        hello = parse_message(records[0][1])
        assert isinstance(hello, ClientHello)
        offered = hello.pre_shared_key()
        assert offered is not None
        binders.append(offered.binders[0])
    assert binders[0] != binders[1]


@pytest.mark.parametrize(
    "ticket,config",
    [
        (_ticket(cipher_suite=0x1302), {"cipher_suites": (0x1301,)}),
        (_ticket(received_at=NOW - 3601), {}),
        (_ticket(received_at=NOW + 10), {}),
        (_ticket(lifetime=10**7, received_at=NOW - 604801), {}),
        (_ticket(server_name="other.example"), {}),
    ],
    ids=["suite-not-offered", "expired", "from-the-future", "over-7-days", "other-server"],
)
def test_unusable_tickets_are_not_offered(ticket: SessionTicket, config: dict[str, object]) -> None:
    _, records = _resuming(ticket, **config)
    hello = parse_message(records[0][1])
    assert isinstance(hello, ClientHello) and hello.pre_shared_key() is None


def test_early_data_offer_and_limits() -> None:
    client, records = _resuming(_ticket(max_early_data=100))
    hello = parse_message(records[0][1])
    assert isinstance(hello, ClientHello) and hello.early_data()
    # Appendix D.4: with 0-RTT the compatibility CCS follows ClientHello1 at once.
    assert records[1] == (CCS, b"\x01")
    assert client.early_data_allowed == 100
    client.send_early_data(b"x" * 60)
    assert client.early_data_allowed == 40
    (protected,) = split_records(client.data_to_send())
    assert protected[0] == APPLICATION_DATA and len(protected[1]) == 60 + 1 + 16
    with pytest.raises(TLSError):
        client.send_early_data(b"y" * 41)  # over max_early_data_size


def test_no_early_data_without_a_ticket_that_allows_it() -> None:
    client, _ = _started()
    assert client.early_data_allowed == 0
    with pytest.raises(TLSError):
        client.send_early_data(b"nope")


@pytest.mark.parametrize(
    "ticket_alpn,offered,expect_early",
    [
        ("h2", ("h2", "http/1.1"), True),
        ("h2", ("http/1.1",), False),
        (None, (), True),
        (None, ("h2",), False),
    ],
)
def test_early_data_only_when_alpn_can_match(
    ticket_alpn: str | None, offered: tuple[str, ...], expect_early: bool
) -> None:
    _, records = _resuming(_ticket(max_early_data=100, alpn_protocol=ticket_alpn), alpn=offered)
    hello = parse_message(records[0][1])
    assert isinstance(hello, ClientHello)
    assert hello.pre_shared_key() is not None
    assert hello.early_data() is expect_early


def test_retry_drops_early_data_and_recomputes_the_binder() -> None:
    client, records = _resuming(
        _ticket(max_early_data=100), key_share_groups=(X25519,), groups=(X25519, P256)
    )
    first = parse_message(records[0][1])
    assert isinstance(first, ClientHello)
    client.send_early_data(b"early")
    client.data_to_send()
    out = client.receive_data(record(HANDSHAKE, _hrr_for(P256)(first).serialize()))
    assert any(isinstance(e, events.EarlyDataRejected) for e in out)
    retry_records = split_records(client.data_to_send())
    # ClientHello2 goes in the clear (no second CCS: one was sent after ClientHello1).
    assert [t for t, _ in retry_records] == [HANDSHAKE]
    second = parse_message(retry_records[0][1])
    assert isinstance(second, ClientHello)
    assert not second.early_data() and second.extensions[-1][0] == ExtensionType.pre_shared_key
    first_psk, second_psk = first.pre_shared_key(), second.pre_shared_key()
    assert first_psk is not None and second_psk is not None
    assert first_psk.identities == second_psk.identities
    # The binder now also covers message_hash(CH1) and the HRR (§4.2.11.2).
    assert first_psk.binders != second_psk.binders
    with pytest.raises(TLSError):
        client.send_early_data(b"more")
