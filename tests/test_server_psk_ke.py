"""PSK key exchange modes on the server (RFC 8446 §4.2.9): psk_dhe_ke and psk_ke.

A ticket comes from a full handshake with our own ClientConnection; the
resumption is then offered by the scripted MiniClient, which can list any
psk_key_exchange_modes and leave out supported_groups/key_share.  MiniClient
runs the real key schedule with a zero (EC)DHE input when the ServerHello has no
key_share, so a completed handshake proves the server used the same input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from certs import make_ca, make_leaf
from engine_helpers import MiniClient, pump

from tls13 import events
from tls13.alerts import AlertDescription, TLSError
from tls13.certificates import CertificateChain, CertificateStore
from tls13.client import ClientConnection
from tls13.config import ClientConfig, ServerConfig
from tls13.extensions import PSK_DHE_KE, PSK_KE, ExtensionType
from tls13.groups import BY_NAME as GROUPS
from tls13.messages import ServerHello
from tls13.record import RecordLayer
from tls13.server import ServerConnection
from tls13.tickets import SessionTicket, TicketKeyring

X25519 = GROUPS["x25519"]
P384 = GROUPS["secp384r1"]
NO_KEY_EXCHANGE = (ExtensionType.supported_groups, ExtensionType.key_share)


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    ca = make_ca()
    return {"ca": ca, "leaf": make_leaf(ca, ("localhost",))}


@pytest.fixture(scope="module")
def keyring() -> TicketKeyring:
    return TicketKeyring.generate()


@pytest.fixture
def server_config(pki: dict[str, Any], keyring: TicketKeyring) -> Callable[..., ServerConfig]:
    chain = CertificateChain((pki["leaf"].cert,), pki["leaf"].key)

    def build(**overrides: Any) -> ServerConfig:
        overrides.setdefault("ticket_keys", keyring)
        return ServerConfig(certificates=CertificateStore([chain]), **overrides)

    return build


@pytest.fixture
def ticket(pki: dict[str, Any], server_config: Callable[..., ServerConfig]) -> SessionTicket:
    """A fresh ticket (TLS_AES_128_GCM_SHA256) from a full handshake."""
    client = ClientConnection(
        ClientConfig(ca_certificates=(pki["ca"].cert,), cipher_suites=(0x1301,)),
        server_name="localhost",
    )
    client.start()
    client_events, _ = pump(client, ServerConnection(server_config()))
    tickets = [e.ticket for e in client_events if isinstance(e, events.NewSessionTicketReceived)]
    assert tickets
    return tickets[0]


def resume(
    config: ServerConfig, client: MiniClient
) -> tuple[ServerConnection, ServerHello, events.HandshakeComplete]:
    """Run the MiniClient's handshake (with at most one retry); return the ServerHello."""
    conn = ServerConnection(config)
    conn.receive_data(client.hello_record())
    flight = conn.data_to_send()
    answer = client.handle_server_hello(flight)
    if client.hello_retry_group is not None and not client.app_write_secret:
        conn.receive_data(answer)
        flight = conn.data_to_send()
        answer = client.handle_server_hello(flight)
    done = conn.receive_data(answer)
    (info,) = [e for e in done if isinstance(e, events.HandshakeComplete)]
    return conn, _last_server_hello(flight), info


def _last_server_hello(flight: bytes) -> ServerHello:
    reader = RecordLayer()
    reader.receive(flight)
    record = reader.next_record()
    assert record is not None and record[0] == 22
    return ServerHello.parse(record[1][4:])


def test_psk_ke_only_client_resumes_without_key_exchange(
    server_config: Callable[..., ServerConfig], ticket: SessionTicket
) -> None:
    client = MiniClient(psk_modes=(PSK_KE,), ticket=ticket)
    conn, hello, info = resume(server_config(), client)
    assert hello.selected_identity() == 0
    assert hello.extension(ExtensionType.key_share) is None  # §4.2.9: no (EC)DHE
    assert info.resumed and info.group is None and not info.hello_retry
    assert client.resumed
    # Application keys agree: the zero (EC)DHE input was used on both sides (§7.1).
    assert conn.receive_data(client.protect(23, b"ping")) == [events.ApplicationData(b"ping")]


def test_psk_ke_without_groups_or_key_share(
    server_config: Callable[..., ServerConfig], ticket: SessionTicket
) -> None:
    client = MiniClient(psk_modes=(PSK_KE,), ticket=ticket, drop_extensions=NO_KEY_EXCHANGE)
    _, hello, info = resume(server_config(), client)
    assert hello.key_share() is None and info.resumed and info.group is None


def test_psk_ke_never_asks_for_a_share(
    server_config: Callable[..., ServerConfig], ticket: SessionTicket
) -> None:
    # The client's only share is for a group the server does not take: with psk_dhe_ke
    # this would need a HelloRetryRequest, with psk_ke it must not.
    client = MiniClient(groups=(X25519, P384), psk_modes=(PSK_KE,), ticket=ticket)
    _, hello, info = resume(server_config(groups=(P384,)), client)
    assert not hello.is_hello_retry_request and not info.hello_retry
    assert info.resumed and info.group is None


def test_server_preference_decides_the_mode(
    server_config: Callable[..., ServerConfig], ticket: SessionTicket
) -> None:
    both = (PSK_DHE_KE, PSK_KE)
    _, hello, info = resume(server_config(), MiniClient(psk_modes=both, ticket=ticket))
    assert hello.key_share() is not None and info.group == "x25519" and info.resumed
    prefers_psk_ke = server_config(psk_modes=(PSK_KE, PSK_DHE_KE))
    _, hello, info = resume(prefers_psk_ke, MiniClient(psk_modes=both, ticket=ticket))
    assert hello.key_share() is None and info.group is None and info.resumed


def test_psk_dhe_ke_falls_back_to_psk_ke_without_a_common_group(
    server_config: Callable[..., ServerConfig], ticket: SessionTicket
) -> None:
    client = MiniClient(psk_modes=(PSK_DHE_KE, PSK_KE), ticket=ticket)
    _, hello, info = resume(server_config(groups=(P384,)), client)
    assert hello.key_share() is None and info.resumed and info.group is None


def test_psk_dhe_ke_after_retry_keeps_the_share(
    server_config: Callable[..., ServerConfig], ticket: SessionTicket
) -> None:
    client = MiniClient(groups=(X25519, P384), psk_modes=(PSK_DHE_KE,), ticket=ticket)
    _, hello, info = resume(server_config(groups=(P384,)), client)
    assert info.hello_retry and info.resumed and info.group == "secp384r1"
    assert hello.key_share() is not None


def test_psk_ke_refused_when_not_configured(
    server_config: Callable[..., ServerConfig], ticket: SessionTicket
) -> None:
    client = MiniClient(psk_modes=(PSK_KE,), ticket=ticket)
    _, hello, info = resume(server_config(psk_modes=(PSK_DHE_KE,)), client)
    assert not info.resumed and hello.selected_identity() is None
    assert info.group == "x25519" and info.signature_scheme is not None


def test_psk_ke_without_groups_needs_a_usable_ticket(
    server_config: Callable[..., ServerConfig], ticket: SessionTicket
) -> None:
    foreign = server_config(ticket_keys=TicketKeyring.generate())
    client = MiniClient(psk_modes=(PSK_KE,), ticket=ticket, drop_extensions=NO_KEY_EXCHANGE)
    conn = ServerConnection(foreign)
    with pytest.raises(TLSError) as caught:
        conn.receive_data(client.hello_record())
    # RFC 8446 §9.2: without the ticket only a full handshake is left, which needs groups.
    assert caught.value.alert == AlertDescription.missing_extension


def test_key_share_without_supported_groups_is_missing_extension(
    server_config: Callable[..., ServerConfig], ticket: SessionTicket
) -> None:
    client = MiniClient(
        psk_modes=(PSK_KE,), ticket=ticket, drop_extensions=(ExtensionType.supported_groups,)
    )
    with pytest.raises(TLSError) as caught:
        ServerConnection(server_config()).receive_data(client.hello_record())
    assert caught.value.alert == AlertDescription.missing_extension


def test_no_tickets_when_no_mode_is_shared(server_config: Callable[..., ServerConfig]) -> None:
    client = MiniClient(psk_modes=(PSK_KE,))
    conn = ServerConnection(server_config(psk_modes=(PSK_DHE_KE,)))
    conn.receive_data(client.hello_record())
    conn.receive_data(client.handle_server_hello(conn.data_to_send()))
    assert conn.data_to_send() == b""  # no NewSessionTicket the client could never use


def test_tickets_issued_on_a_psk_ke_resumption(
    server_config: Callable[..., ServerConfig], ticket: SessionTicket
) -> None:
    client = MiniClient(psk_modes=(PSK_KE,), ticket=ticket)
    conn, _, _ = resume(server_config(tickets=1), client)
    records = client.read_records(conn.data_to_send())
    assert [(kind, payload[0]) for kind, payload in records] == [(22, 4)]  # NewSessionTicket


@pytest.mark.parametrize("modes", [(), (2,), (PSK_KE, PSK_KE)], ids=["empty", "unknown", "dup"])
def test_psk_modes_validated(
    server_config: Callable[..., ServerConfig], modes: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError):
        server_config(psk_modes=modes)
