"""Our client against our server, in memory: every suite and group, HelloRetryRequest,
ALPN, certificate verification, client authentication, data, KeyUpdate, close."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from certs import Issued, make_ca, make_leaf
from msg_helpers import pump

from tls13 import events
from tls13.alerts import AlertDescription, TLSError
from tls13.certificates import CertificateChain, CertificateStore
from tls13.client import ClientConnection, ClientState
from tls13.config import ClientConfig, ServerConfig
from tls13.groups import BY_NAME as GROUP_CODES
from tls13.server import ServerConnection
from tls13.suites import SUITES

X25519 = GROUP_CODES["x25519"]
P256 = GROUP_CODES["secp256r1"]
ALL_GROUPS = sorted(GROUP_CODES.items())


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    ca = make_ca()
    return {
        "ca": ca,
        "p256": make_leaf(ca, ("localhost", "127.0.0.1")),
        "rsa": make_leaf(ca, ("rsa.example",), kind="rsa2048"),
        "ed25519": make_leaf(ca, ("ed.example",), kind="ed25519"),
        "client": make_leaf(ca, ("client.example",), client=True),
        "other_ca": make_ca("someone else"),
    }


def _chain(issued: Issued) -> CertificateChain:
    return CertificateChain((issued.cert,), issued.key)  # type: ignore[arg-type]


def _server_config(pki: dict[str, Any], **overrides: Any) -> ServerConfig:
    chains = [_chain(pki["p256"]), _chain(pki["rsa"]), _chain(pki["ed25519"])]
    return ServerConfig(certificates=CertificateStore(chains), **overrides)


def _client_config(pki: dict[str, Any], **overrides: Any) -> ClientConfig:
    overrides.setdefault("ca_certificates", (pki["ca"].cert,))
    return ClientConfig(**overrides)


def _connect(
    client_config: ClientConfig,
    server_config: ServerConfig,
    server_name: str | None = "localhost",
    alpn: tuple[str, ...] = (),
) -> tuple[ClientConnection, ServerConnection, list[Any], list[Any]]:
    client = ClientConnection(client_config, server_name=server_name, alpn_protocols=alpn)
    server = ServerConnection(server_config)
    client.start()
    client_events, server_events = pump(client, server)
    return client, server, client_events, server_events


def _complete(evs: list[Any]) -> events.HandshakeComplete:
    found = [e for e in evs if isinstance(e, events.HandshakeComplete)]
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("suite", sorted(SUITES), ids=lambda code: SUITES[code].name)
def test_every_cipher_suite(pki: dict[str, Any], suite: int) -> None:
    client, server, client_events, _ = _connect(
        _client_config(pki, cipher_suites=(suite,)),
        _server_config(pki, cipher_suites=tuple(SUITES)),
    )
    info = _complete(client_events)
    assert info.cipher_suite == SUITES[suite].name
    assert client.state is ClientState.CONNECTED and server.handshake_complete
    assert info.version == "TLSv1.3" and not info.resumed and not info.hello_retry
    # Application data both ways and equal exporters prove both sides share keys.
    client.send_data(b"ping")
    assert [
        e.data
        for e in server.receive_data(client.data_to_send())
        if isinstance(e, events.ApplicationData)
    ] == [b"ping"]
    server.send_data(b"pong")
    assert client.receive_data(server.data_to_send()) == [events.ApplicationData(b"pong")]
    assert client.export_keying_material(b"label", b"ctx", 32) == server.export_keying_material(
        b"label", b"ctx", 32
    )


@pytest.mark.parametrize("name,code", ALL_GROUPS, ids=[name for name, _ in ALL_GROUPS])
def test_every_group(pki: dict[str, Any], name: str, code: int) -> None:
    client, _, client_events, _ = _connect(
        _client_config(pki, groups=(code,), key_share_groups=(code,)),
        _server_config(pki, groups=tuple(GROUP_CODES.values())),
    )
    info = _complete(client_events)
    assert info.group == name and not info.hello_retry


def test_hello_retry_request_round_trip(pki: dict[str, Any]) -> None:
    client, server, client_events, _ = _connect(
        _client_config(pki, groups=(X25519, P256), key_share_groups=(X25519,)),
        _server_config(pki, groups=(P256,)),
    )
    info = _complete(client_events)
    assert info.hello_retry and info.group == "secp256r1"
    assert server.info is not None and server.info.hello_retry


def test_hello_retry_without_middlebox_compat(pki: dict[str, Any]) -> None:
    _, _, client_events, _ = _connect(
        _client_config(
            pki, groups=(X25519, P256), key_share_groups=(X25519,), middlebox_compat=False
        ),
        _server_config(pki, groups=(P256,)),
    )
    assert _complete(client_events).hello_retry


@pytest.mark.parametrize(
    "scheme,expected",
    [(0x0403, "ecdsa_secp256r1_sha256"), (0x0804, "rsa_pss_rsae_sha256"), (0x0807, "ed25519")],
)
def test_server_signature_schemes(pki: dict[str, Any], scheme: int, expected: str) -> None:
    _, _, client_events, _ = _connect(
        _client_config(pki, signature_schemes=(scheme,)), _server_config(pki), server_name=None
    )
    info = _complete(client_events)
    assert info.signature_scheme == expected
    assert len(info.peer_certificates) == 1


def test_alpn_and_sni(pki: dict[str, Any]) -> None:
    _, server, client_events, server_events = _connect(
        _client_config(pki),
        _server_config(pki, alpn_protocols=("h2", "http/1.1")),
        alpn=("http/1.1", "h2"),
    )
    info = _complete(client_events)
    assert info.alpn_protocol == "h2" and info.server_name == "localhost"
    hello = [e for e in server_events if isinstance(e, events.ClientHelloReceived)][0]
    assert hello.server_name == "localhost" and hello.alpn_protocols == ("http/1.1", "h2")


@pytest.mark.parametrize("required", [False, True])
def test_no_common_alpn_is_no_application_protocol(pki: dict[str, Any], required: bool) -> None:
    # RFC 7301 §3.2: an ALPN offer we share nothing with is fatal, alpn_required or not.
    with pytest.raises(TLSError) as err:
        _connect(
            _client_config(pki),
            _server_config(pki, alpn_protocols=("h2",), alpn_required=required),
            alpn=("http/1.1",),
        )
    assert err.value.alert is AlertDescription.no_application_protocol
    peer_error = getattr(err.value, "peer_error", None)
    assert peer_error is not None and peer_error.sent_by_peer


def test_no_alpn_offer_is_fine_unless_required(pki: dict[str, Any]) -> None:
    _, _, client_events, _ = _connect(
        _client_config(pki), _server_config(pki, alpn_protocols=("h2",))
    )
    assert _complete(client_events).alpn_protocol is None
    with pytest.raises(TLSError) as err:
        _connect(
            _client_config(pki), _server_config(pki, alpn_protocols=("h2",), alpn_required=True)
        )
    assert err.value.alert is AlertDescription.no_application_protocol


def test_alpn_offer_is_ignored_without_a_list_of_ours(pki: dict[str, Any]) -> None:
    _, _, client_events, _ = _connect(_client_config(pki), _server_config(pki), alpn=("x",))
    assert _complete(client_events).alpn_protocol is None


def test_unknown_ca_is_rejected(pki: dict[str, Any]) -> None:
    with pytest.raises(TLSError) as err:
        _connect(_client_config(pki, ca_certificates=(pki["other_ca"].cert,)), _server_config(pki))
    assert err.value.alert is AlertDescription.unknown_ca
    peer_error = getattr(err.value, "peer_error", None)
    assert peer_error is not None and peer_error.alert is AlertDescription.unknown_ca


def test_wrong_name_is_rejected(pki: dict[str, Any]) -> None:
    with pytest.raises(TLSError) as err:
        _connect(_client_config(pki), _server_config(pki), server_name="elsewhere.example")
    assert err.value.alert in (
        AlertDescription.bad_certificate,
        AlertDescription.certificate_unknown,
    )


def test_verification_can_be_disabled(pki: dict[str, Any]) -> None:
    _, _, client_events, _ = _connect(
        _client_config(pki, ca_certificates=None),
        _server_config(pki),
        server_name="elsewhere.example",
    )
    assert _complete(client_events).server_name == "elsewhere.example"


def test_client_certificate_required(pki: dict[str, Any]) -> None:
    client_chain = _chain(pki["client"])
    _, server, client_events, server_events = _connect(
        _client_config(pki, certificate=client_chain),
        _server_config(pki, client_auth="required", client_ca=(pki["ca"].cert,)),
    )
    _complete(client_events)
    identity = _complete(server_events).client_identity
    assert identity is not None and "client.example" in identity.names


def test_client_without_certificate_when_required(pki: dict[str, Any]) -> None:
    with pytest.raises(TLSError) as err:
        _connect(
            _client_config(pki),
            _server_config(pki, client_auth="required", client_ca=(pki["ca"].cert,)),
        )
    assert err.value.alert is AlertDescription.certificate_required


def test_client_without_certificate_when_optional(pki: dict[str, Any]) -> None:
    _, _, client_events, server_events = _connect(
        _client_config(pki),
        _server_config(pki, client_auth="optional", client_ca=(pki["ca"].cert,)),
    )
    _complete(client_events)
    assert _complete(server_events).client_identity is None


def test_post_handshake_authentication(pki: dict[str, Any]) -> None:
    client, server, _, _ = _connect(
        _client_config(pki, certificate=_chain(pki["client"])),
        _server_config(pki, client_ca=(pki["ca"].cert,), client_auth="optional"),
    )
    server.request_client_certificate()
    client_events, server_events = pump(client, server)
    received = [e for e in server_events if isinstance(e, events.ClientCertificateReceived)]
    assert len(received) == 1 and received[0].identity is not None
    # The connection still works afterwards.
    client.send_data(b"after")
    assert events.ApplicationData(b"after") in server.receive_data(client.data_to_send())


def test_key_update_both_ways(pki: dict[str, Any]) -> None:
    client, server, _, _ = _connect(_client_config(pki), _server_config(pki))
    client.update_keys(request_peer=True)
    client.send_data(b"one")
    client_events, server_events = pump(client, server)
    assert events.KeyUpdated(peer_requested=True) in server_events
    assert events.KeyUpdated(peer_requested=False) in client_events
    server.send_data(b"two")
    client.send_data(b"three")
    client_events, server_events = pump(client, server)
    assert events.ApplicationData(b"two") in client_events
    assert events.ApplicationData(b"three") in server_events


def test_close_notify(pki: dict[str, Any]) -> None:
    client, server, _, _ = _connect(_client_config(pki), _server_config(pki))
    client.close()
    assert server.receive_data(client.data_to_send()) == [events.ConnectionClosed(clean=True)]
    server.close()
    assert client.receive_data(server.data_to_send()) == [events.ConnectionClosed(clean=True)]
    with pytest.raises(TLSError):
        client.send_data(b"late")


def test_truncation_after_handshake(pki: dict[str, Any]) -> None:
    client, _, _, _ = _connect(_client_config(pki), _server_config(pki))
    assert client.receive_data(b"") == [events.ConnectionClosed(clean=False)]


def test_tampered_server_flight_fails(pki: dict[str, Any]) -> None:
    client = ClientConnection(_client_config(pki), server_name="localhost")
    server = ServerConnection(_server_config(pki))
    client.start()
    server.receive_data(client.data_to_send())
    flight = bytearray(server.data_to_send())
    flight[-5] ^= 0x01  # inside the last protected record (the server Finished)
    with pytest.raises(TLSError) as err:
        client.receive_data(bytes(flight))
    assert err.value.alert is AlertDescription.bad_record_mac


def test_keylog_lines(pki: dict[str, Any]) -> None:
    lines: list[str] = []
    client, _, _, _ = _connect(_client_config(pki, keylog=lines.append), _server_config(pki))
    labels = [line.split()[0] for line in lines]
    assert labels == [
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
        "SERVER_HANDSHAKE_TRAFFIC_SECRET",
        "CLIENT_TRAFFIC_SECRET_0",
        "SERVER_TRAFFIC_SECRET_0",
        "EXPORTER_SECRET",
    ]
    assert all(len(line.split()) == 3 for line in lines)


def test_over_tcp_with_large_transfers(pki: dict[str, Any]) -> None:
    """Real sockets: segmentation, 1 MiB each way, a KeyUpdate and a clean close."""
    from engine_helpers import GREETING, EngineServer
    from msg_helpers import SocketClient

    payload = bytes(range(256)) * 4096
    with EngineServer(_server_config(pki)) as server:
        client = SocketClient(
            ClientConnection(_client_config(pki), server_name="localhost"), server.port
        )
        try:
            info = client.handshake()
            assert info.server_name == "localhost"
            client.until(lambda: bytes(client.received).startswith(GREETING))
            client.received.clear()
            client.conn.send_data(payload)
            client.conn.update_keys(request_peer=True)
            client.conn.send_data(b"tail")
            client.until(lambda: len(client.received) >= len(payload) + 4, timeout=30)
            assert bytes(client.received) == payload + b"tail"
            client.conn.close()
            client.read_to_eof()
        finally:
            client.close()
        (record,) = server.wait_for(1)
    assert record.error is None and bytes(record.received) == payload + b"tail"
    assert events.ConnectionClosed(clean=True) in client.events
    assert any(isinstance(e, events.KeyUpdated) for e in record.events)


# --------------------------------------------------------------------- resumption with our server


def _ticket_server(pki: dict[str, Any], **overrides: Any) -> ServerConfig:
    from tls13.tickets import TicketKeyring

    overrides.setdefault("ticket_keys", TicketKeyring.generate())
    return _server_config(pki, **overrides)


def _tickets_from(client_events: list[Any]) -> list[Any]:
    return [e.ticket for e in client_events if isinstance(e, events.NewSessionTicketReceived)]


def _first_session(
    pki: dict[str, Any], server_config: ServerConfig, **client: Any
) -> tuple[ClientConfig, Any]:
    config = _client_config(pki, **client)
    _, _, client_events, _ = _connect(config, server_config)
    tickets = _tickets_from(client_events)
    assert len(tickets) == server_config.tickets
    return config, tickets[0]


def _resume(
    config: ClientConfig, server_config: ServerConfig, ticket: Any, early: bytes = b""
) -> tuple[ClientConnection, ServerConnection, list[Any], list[Any]]:
    client = ClientConnection(config, server_name="localhost", session=ticket)
    server = ServerConnection(server_config)
    client.start()
    if early:
        client.send_early_data(early)
    client_events, server_events = pump(client, server)
    return client, server, client_events, server_events


def test_resumption_with_our_server(pki: dict[str, Any]) -> None:
    server_config = _ticket_server(pki)
    config, ticket = _first_session(pki, server_config)
    client, server, client_events, _ = _resume(config, server_config, ticket)
    info = _complete(client_events)
    assert info.resumed and not info.early_data_accepted and info.peer_certificates == ()
    assert server.info is not None and server.info.resumed
    assert client.export_keying_material(b"x", b"", 16) == server.export_keying_material(
        b"x", b"", 16
    )
    # A resumed session issues fresh tickets that resume again.
    (next_ticket, *_) = _tickets_from(client_events)
    _, _, again, _ = _resume(config, server_config, next_ticket)
    assert _complete(again).resumed


def test_early_data_with_our_server(pki: dict[str, Any]) -> None:
    server_config = _ticket_server(pki, max_early_data=4096)
    config, ticket = _first_session(pki, server_config)
    assert ticket.max_early_data == 4096
    client, server, client_events, server_events = _resume(
        config, server_config, ticket, early=b"zero round trip"
    )
    assert _complete(client_events).early_data_accepted
    assert events.EarlyData(b"zero round trip") in server_events
    client.send_data(b"then 1-RTT")
    assert events.ApplicationData(b"then 1-RTT") in server.receive_data(client.data_to_send())


def test_early_data_replay_is_refused(pki: dict[str, Any]) -> None:
    # The same ClientHello twice: the second gets 1-RTT only (RFC 8446 §8.2).
    server_config = _ticket_server(pki, max_early_data=4096)
    config, ticket = _first_session(pki, server_config)
    fixed = ClientConfig(
        ca_certificates=config.ca_certificates, random=lambda n: b"\x42" * n, clock=lambda: 1e9 + 1
    )
    replay_ticket = dataclasses.replace(ticket, received_at=1e9)
    _, _, first_events, _ = _resume(fixed, server_config, replay_ticket, early=b"once")
    assert _complete(first_events).early_data_accepted
    _, _, second_events, server_events = _resume(fixed, server_config, replay_ticket, early=b"once")
    assert not _complete(second_events).early_data_accepted
    assert any(isinstance(e, events.EarlyDataRejected) for e in second_events)
    assert not any(isinstance(e, events.EarlyData) for e in server_events)


def test_early_data_declined_by_our_server(pki: dict[str, Any]) -> None:
    generous = _ticket_server(pki, max_early_data=4096)
    config, ticket = _first_session(pki, generous)
    strict = _server_config(pki, ticket_keys=generous.ticket_keys)  # same keys, 0-RTT off
    _, _, client_events, server_events = _resume(config, strict, ticket, early=b"skipped")
    info = _complete(client_events)
    assert info.resumed and not info.early_data_accepted
    assert any(isinstance(e, events.EarlyDataRejected) for e in client_events)
    assert not any(isinstance(e, events.EarlyData) for e in server_events)


def test_resumption_after_hello_retry_with_our_server(pki: dict[str, Any]) -> None:
    server_config = _ticket_server(pki, groups=(P256,), max_early_data=4096)
    _, ticket = _first_session(pki, server_config, groups=(P256,), key_share_groups=(P256,))
    config = _client_config(pki, groups=(X25519, P256), key_share_groups=(X25519,))
    _, _, client_events, server_events = _resume(config, server_config, ticket, early=b"lost")
    info = _complete(client_events)
    assert info.hello_retry and info.resumed and not info.early_data_accepted
    assert not any(isinstance(e, events.EarlyData) for e in server_events)


def test_ticket_of_another_server_is_ignored(pki: dict[str, Any]) -> None:
    config, ticket = _first_session(pki, _ticket_server(pki))
    _, _, client_events, _ = _resume(config, _ticket_server(pki), ticket)
    info = _complete(client_events)
    assert not info.resumed and len(info.peer_certificates) == 1
