"""Server session tickets, PSK resumption (RFC 8446 §4.6.1, §4.2.11) and 0-RTT (§4.2.10, §8).

Driven by our own ClientConnection in memory; the binder, replay and limit
failures are produced by tampering with the client's bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from certs import make_ca, make_leaf
from engine_helpers import MiniClient, pump

from tls13 import events
from tls13 import extensions as ext
from tls13.alerts import AlertDescription, TLSError
from tls13.certificates import CertificateChain, CertificateStore
from tls13.client import ClientConnection
from tls13.config import ClientConfig, ServerConfig
from tls13.extensions import ExtensionType
from tls13.groups import BY_NAME as GROUP_CODES
from tls13.server import ServerConnection
from tls13.tickets import ReplayRegister, SessionTicket, TicketKeyring


class Clock:
    """A settable clock shared by both ends."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    ca = make_ca()
    return {"ca": ca, "leaf": make_leaf(ca, ("localhost",))}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keyring() -> TicketKeyring:
    return TicketKeyring.generate()


@pytest.fixture
def server_config(
    pki: dict[str, Any], clock: Clock, keyring: TicketKeyring
) -> Callable[..., ServerConfig]:
    chain = CertificateChain((pki["leaf"].cert,), pki["leaf"].key)

    def build(**overrides: Any) -> ServerConfig:
        # Every config built here is one server instance: same ticket keys, same issuer id.
        overrides.setdefault("ticket_keys", keyring)
        overrides.setdefault("instance_id", INSTANCE)
        return ServerConfig(certificates=CertificateStore([chain]), clock=clock, **overrides)

    return build


INSTANCE = b"instance-1"


@pytest.fixture
def client_config(pki: dict[str, Any], clock: Clock) -> ClientConfig:
    return ClientConfig(ca_certificates=(pki["ca"].cert,), clock=clock)


def connect(
    client_config: ClientConfig,
    server_config: ServerConfig,
    session: SessionTicket | None = None,
    early: bytes = b"",
) -> tuple[list[events.Event], list[events.Event]]:
    client = ClientConnection(client_config, server_name="localhost", session=session)
    server = ServerConnection(server_config)
    client.start()
    if early:
        client.send_early_data(early)
    return pump(client, server)


def tickets_from(client_events: list[events.Event]) -> list[SessionTicket]:
    return [e.ticket for e in client_events if isinstance(e, events.NewSessionTicketReceived)]


def info_of(evs: list[events.Event]) -> events.HandshakeComplete:
    (info,) = [e for e in evs if isinstance(e, events.HandshakeComplete)]
    return info


def test_full_handshake_issues_configured_tickets(
    client_config: ClientConfig, server_config: Callable[..., ServerConfig]
) -> None:
    client_events, server_events = connect(client_config, server_config(tickets=3))
    tickets = tickets_from(client_events)
    assert len(tickets) == 3 and len({t.ticket for t in tickets}) == 3
    assert sum(isinstance(e, events.SessionTicketIssued) for e in server_events) == 3
    assert all(t.lifetime == 7200 and t.max_early_data == 0 for t in tickets)


def test_no_tickets_without_keys(
    client_config: ClientConfig, server_config: Callable[..., ServerConfig]
) -> None:
    client_events, _ = connect(client_config, server_config(ticket_keys=None))
    assert tickets_from(client_events) == []


def test_resumption_skips_certificates(
    client_config: ClientConfig, server_config: Callable[..., ServerConfig]
) -> None:
    config = server_config()
    first, _ = connect(client_config, config)
    client_events, server_events = connect(client_config, config, tickets_from(first)[0])
    server_info, client_info = info_of(server_events), info_of(client_events)
    assert server_info.resumed and client_info.resumed
    assert server_info.signature_scheme is None
    assert tickets_from(client_events)  # fresh tickets on the resumed connection too


@pytest.mark.parametrize(
    ("tickets", "after_resumption", "expected"), [(2, 1, 1), (3, 3, 3), (2, 5, 2), (2, 0, 0)]
)
def test_tickets_after_resumption(
    client_config: ClientConfig,
    server_config: Callable[..., ServerConfig],
    tickets: int,
    after_resumption: int,
    expected: int,
) -> None:
    config = server_config(tickets=tickets, tickets_after_resumption=after_resumption)
    first, _ = connect(client_config, config)
    assert len(tickets_from(first)) == tickets
    client_events, server_events = connect(client_config, config, tickets_from(first)[0])
    assert info_of(server_events).resumed
    assert len(tickets_from(client_events)) == expected
    assert sum(isinstance(e, events.SessionTicketIssued) for e in server_events) == expected


def test_tickets_after_resumption_is_validated(
    server_config: Callable[..., ServerConfig],
) -> None:
    for bad in (-1, 17):
        with pytest.raises(ValueError, match="tickets_after_resumption"):
            server_config(tickets_after_resumption=bad)


def test_resumption_after_hello_retry(
    client_config: ClientConfig, server_config: Callable[..., ServerConfig]
) -> None:
    first, _ = connect(client_config, server_config())
    retry_config = server_config(groups=(GROUP_CODES["secp384r1"],))
    _, server_events = connect(client_config, retry_config, tickets_from(first)[0])
    info = info_of(server_events)
    assert info.resumed and info.hello_retry and info.group == "secp384r1"


def test_foreign_ticket_falls_back_to_full_handshake(
    client_config: ClientConfig, server_config: Callable[..., ServerConfig]
) -> None:
    first, _ = connect(client_config, server_config())
    other = server_config(ticket_keys=TicketKeyring.generate())
    _, server_events = connect(client_config, other, tickets_from(first)[0])
    assert not info_of(server_events).resumed


def test_expired_ticket_falls_back(
    client_config: ClientConfig,
    server_config: Callable[..., ServerConfig],
    clock: Clock,
) -> None:
    config = server_config(ticket_lifetime=60)
    first, _ = connect(client_config, config)
    ticket = tickets_from(first)[0]
    clock.now += 61  # past the lifetime for both ends
    client = ClientConnection(client_config, server_name="localhost", session=ticket)
    server = ServerConnection(config)
    client.start()
    _, server_events = pump(client, server)
    assert not info_of(server_events).resumed


def test_bad_binder_is_decrypt_error(
    client_config: ClientConfig, server_config: Callable[..., ServerConfig]
) -> None:
    config = server_config()
    first, _ = connect(client_config, config)
    client = ClientConnection(
        client_config, server_name="localhost", session=tickets_from(first)[0]
    )
    client.start()
    hello = bytearray(client.data_to_send())
    hello[-1] ^= 0x01  # the binder ends the ClientHello (pre_shared_key is last)
    with pytest.raises(TLSError) as caught:
        ServerConnection(config).receive_data(bytes(hello))
    assert caught.value.alert == AlertDescription.decrypt_error


def test_psk_without_key_exchange_modes(server_config: Callable[..., ServerConfig]) -> None:
    offer = ext.OfferedPsks((ext.PskIdentity(b"ticket", 0),), (bytes(32),))
    client = MiniClient(
        extra_extensions=[(ExtensionType.pre_shared_key, ext.encode_offered_psks(offer))]
    )
    with pytest.raises(TLSError) as caught:
        ServerConnection(server_config()).receive_data(client.hello_record())
    assert caught.value.alert == AlertDescription.missing_extension


# ----------------------------------------------------------------------------- 0-RTT


def _early_ticket(client_config: ClientConfig, config: ServerConfig) -> SessionTicket:
    first, _ = connect(client_config, config)
    ticket = tickets_from(first)[0]
    assert ticket.max_early_data == config.max_early_data
    return ticket


def test_early_data_accepted(
    client_config: ClientConfig, server_config: Callable[..., ServerConfig]
) -> None:
    config = server_config(max_early_data=4096)
    ticket = _early_ticket(client_config, config)
    client_events, server_events = connect(client_config, config, ticket, early=b"GET /0rtt")
    assert events.EarlyData(b"GET /0rtt") in server_events
    assert info_of(server_events).early_data_accepted
    assert info_of(client_events).early_data_accepted
    # Early data is reported before the handshake completes.
    kinds = [type(e) for e in server_events]
    assert kinds.index(events.EarlyData) < kinds.index(events.HandshakeComplete)


def test_replayed_client_hello_gets_no_early_data(
    client_config: ClientConfig, server_config: Callable[..., ServerConfig]
) -> None:
    config = server_config(max_early_data=4096)
    ticket = _early_ticket(client_config, config)
    client = ClientConnection(client_config, server_name="localhost", session=ticket)
    client.start()
    client.send_early_data(b"transfer 100")
    first_flight = client.data_to_send()
    original = ServerConnection(config).receive_data(first_flight)
    assert events.EarlyData(b"transfer 100") in original
    replay = ServerConnection(config).receive_data(first_flight)
    assert not any(isinstance(e, events.EarlyData) for e in replay)


def test_ticket_gives_early_data_once(
    client_config: ClientConfig, server_config: Callable[..., ServerConfig]
) -> None:
    """Review R20: RFC 8446 §8.1: a second ClientHello (fresh binder) with the same ticket
    resumes, but its 0-RTT is declined: the register is keyed on the ticket."""
    config = server_config(max_early_data=4096)
    ticket = _early_ticket(client_config, config)
    _, first = connect(client_config, config, ticket, early=b"transfer 100")
    assert info_of(first).early_data_accepted
    client_events, second = connect(client_config, config, ticket, early=b"transfer 100")
    assert events.EarlyDataRejected() in client_events
    assert info_of(second).resumed and not info_of(second).early_data_accepted
    assert not any(isinstance(e, events.EarlyData) for e in second)
    other = tickets_from(client_events)[0]  # a different ticket still gets its own 0-RTT
    _, third = connect(client_config, config, other, early=b"transfer 5")
    assert info_of(third).early_data_accepted


def test_ticket_of_another_instance_resumes_without_early_data(
    client_config: ClientConfig, server_config: Callable[..., ServerConfig]
) -> None:
    """Review R22: a host or process sharing our ticket keys but not our strike register
    resumes the ticket, yet declines its 0-RTT (no alert): only the issuer can refuse a
    replay.  The issuer itself still accepts the ticket's early data afterwards."""
    issuer = server_config(max_early_data=4096)
    ticket = _early_ticket(client_config, issuer)
    other = server_config(max_early_data=4096, instance_id=b"instance-2")
    client_events, server_events = connect(client_config, other, ticket, early=b"transfer 100")
    assert events.EarlyDataRejected() in client_events
    assert info_of(server_events).resumed and not info_of(server_events).early_data_accepted
    assert not any(isinstance(e, events.EarlyData) for e in server_events)
    _, again = connect(client_config, issuer, ticket, early=b"transfer 100")
    assert info_of(again).early_data_accepted  # declining did not burn the ticket


def test_instance_id_is_random_per_config_and_validated(pki: dict[str, Any]) -> None:
    store = CertificateStore([CertificateChain((pki["leaf"].cert,), pki["leaf"].key)])
    first, second = ServerConfig(certificates=store), ServerConfig(certificates=store)
    assert len(first.instance_id) == 16 and first.instance_id != second.instance_id
    assert replace(first, tickets=1).instance_id == first.instance_id  # variants share it
    for bad in (b"short", bytes(256)):
        with pytest.raises(ValueError):
            ServerConfig(certificates=store, instance_id=bad)


def test_ticket_without_issuer_resumes_without_early_data(
    client_config: ClientConfig, server_config: Callable[..., ServerConfig], keyring: TicketKeyring
) -> None:
    """A ticket sealed in the issuer-less format 1 still resumes, with 0-RTT declined."""
    config = server_config(max_early_data=4096)
    ticket = _early_ticket(client_config, config)
    state = keyring.open_state(ticket.ticket)
    assert state is not None and state.issuer == INSTANCE
    old_format = b"\x01" + replace(state, issuer=b"").encode()[1:-1]  # no issuer field
    old_ticket = replace(ticket, ticket=keyring.seal(old_format))
    client_events, server_events = connect(client_config, config, old_ticket, early=b"x")
    assert events.EarlyDataRejected() in client_events
    assert info_of(server_events).resumed and not info_of(server_events).early_data_accepted


def test_stale_ticket_age_declines_early_data(
    client_config: ClientConfig, server_config: Callable[..., ServerConfig], clock: Clock
) -> None:
    config = server_config(max_early_data=4096)
    ticket = _early_ticket(client_config, config)
    client = ClientConnection(client_config, server_name="localhost", session=ticket)
    server = ServerConnection(config)
    client.start()
    client.send_early_data(b"late")
    clock.now += 30  # the ClientHello reaches the server 30 s after it was written
    client_events, server_events = pump(client, server)
    assert events.EarlyDataRejected() in client_events
    info = info_of(server_events)
    assert info.resumed and not info.early_data_accepted
    assert not any(isinstance(e, events.EarlyData) for e in server_events)


def test_too_much_early_data(
    client_config: ClientConfig, server_config: Callable[..., ServerConfig]
) -> None:
    ticket = _early_ticket(client_config, server_config(max_early_data=4096))
    stingy = server_config(max_early_data=16)
    client = ClientConnection(client_config, server_name="localhost", session=ticket)
    client.start()
    client.send_early_data(bytes(100))
    with pytest.raises(TLSError) as caught:
        ServerConnection(stingy).receive_data(client.data_to_send())
    assert caught.value.alert == AlertDescription.unexpected_message


def _fast_clock_flight(
    pki: dict[str, Any], config: ServerConfig, clock: Clock, ahead: float
) -> bytes:
    """A 0-RTT first flight from a client whose clock was stepped ``ahead`` seconds."""
    client_clock = Clock()
    client_clock.now = clock.now
    client_config = ClientConfig(ca_certificates=(pki["ca"].cert,), clock=client_clock)
    ticket = _early_ticket(client_config, config)
    clock.now += 100
    client_clock.now += 100 + ahead
    client = ClientConnection(client_config, server_name="localhost", session=ticket)
    client.start()
    client.send_early_data(b"POST /transfer")
    return client.data_to_send()


def _accepts_early_data(config: ServerConfig, flight: bytes) -> bool:
    got = ServerConnection(config).receive_data(flight)
    return any(isinstance(e, events.EarlyData) for e in got)


def test_fast_client_clock_replay_is_refused_while_fresh(
    pki: dict[str, Any], server_config: Callable[..., ServerConfig], clock: Clock
) -> None:
    """Review R11: rfc8446bis §8.2: a hello is remembered while it could still pass the
    freshness check, even when the client's clock runs ahead (default register)."""
    config = server_config(max_early_data=4096)
    flight = _fast_clock_flight(pki, config, clock, ahead=8.0)
    assert _accepts_early_data(config, flight)
    for delay in (5.0, 5.5, 4.0, 3.0):  # replays up to 17.5 s later: still fresh, refused
        clock.now += delay
        assert not _accepts_early_data(config, flight)


def test_short_register_declines_hellos_from_the_future(
    pki: dict[str, Any], server_config: Callable[..., ServerConfig], clock: Clock
) -> None:
    # A 10 s register cannot outlive a hello 8 s ahead of us: decline its 0-RTT, still resume.
    config = server_config(max_early_data=4096, anti_replay=ReplayRegister(10.0, 100))
    flight = _fast_clock_flight(pki, config, clock, ahead=8.0)
    got = ServerConnection(config).receive_data(flight)
    assert not any(isinstance(e, events.EarlyData) for e in got)
    on_time = _fast_clock_flight(pki, config, clock, ahead=0.0)
    assert _accepts_early_data(config, on_time)
