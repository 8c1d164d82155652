"""Stateless HelloRetryRequest (RFC 8446 §4.2.2, §4.4.1; config ``stateless_retry``).

ClientHello1 goes to one ServerConnection and ClientHello2 to a fresh one with
the same configuration: the second can only succeed if the cookie carries
everything (Hash(ClientHello1), suite, group, what CH2 must repeat).  Tampered,
foreign, stale and future cookies, and a changed ClientHello2, are refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from certs import make_ca, make_leaf
from engine_helpers import MiniClient, plaintext_record, pump, split_records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tls13 import events
from tls13.alerts import AlertDescription, TLSError
from tls13.certificates import CertificateChain, CertificateStore
from tls13.client import ClientConnection
from tls13.config import ClientConfig, ServerConfig
from tls13.groups import BY_NAME as GROUPS
from tls13.server import ServerConnection
from tls13.tickets import SessionTicket, TicketKeyring

X25519 = GROUPS["x25519"]
P384 = GROUPS["secp384r1"]
SECRET = bytes(range(32))
CCS_RECORD = bytes.fromhex("140303000101")


class Clock:
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
def make_config(pki: dict[str, Any], clock: Clock) -> Callable[..., ServerConfig]:
    chain = CertificateChain((pki["leaf"].cert,), pki["leaf"].key)

    def build(**overrides: Any) -> ServerConfig:
        settings: dict[str, Any] = {
            "groups": (P384,),
            "stateless_retry": True,
            "cookie_secret": SECRET,
            "clock": clock,
        }
        settings.update(overrides)
        return ServerConfig(certificates=CertificateStore([chain]), **settings)

    return build


def first_flight(config: ServerConfig, client: MiniClient) -> bytes:
    """ClientHello1 to a throw-away connection; the client's ClientHello2 record."""
    conn = ServerConnection(config)
    conn.receive_data(client.hello_record())
    answer = client.handle_server_hello(conn.data_to_send())
    assert client.hello_retry_group == P384 and client.cookie is not None
    return answer


def finish(conn: ServerConnection, client: MiniClient, ch2: bytes) -> events.HandshakeComplete:
    conn.receive_data(ch2)
    done = conn.receive_data(client.handle_server_hello(conn.data_to_send()))
    (info,) = [e for e in done if isinstance(e, events.HandshakeComplete)]
    return info


def expect_alert(conn: ServerConnection, data: bytes, alert: AlertDescription) -> None:
    with pytest.raises(TLSError) as caught:
        conn.receive_data(data)
    assert caught.value.alert == alert, caught.value
    assert conn.data_to_send().endswith(bytes((2, alert)))


def test_second_hello_completes_on_a_fresh_connection(
    make_config: Callable[..., ServerConfig],
) -> None:
    config = make_config()
    client = MiniClient(groups=(X25519, P384), share_groups=(X25519,))
    ch2 = first_flight(config, client)
    info = finish(ServerConnection(config), client, ch2)
    assert info.hello_retry and info.group == "secp384r1"


def test_same_connection_also_works_statelessly(
    make_config: Callable[..., ServerConfig],
) -> None:
    config = make_config()
    conn = ServerConnection(config)
    client = MiniClient(groups=(X25519, P384), share_groups=(X25519,))
    conn.receive_data(client.hello_record())
    ch2 = client.handle_server_hello(conn.data_to_send())
    assert finish(conn, client, ch2).hello_retry


def test_stateless_retry_with_our_client_and_resumption(
    make_config: Callable[..., ServerConfig], pki: dict[str, Any], clock: Clock
) -> None:
    keyring = TicketKeyring.generate()
    config = make_config(ticket_keys=keyring)
    client_config = ClientConfig(ca_certificates=(pki["ca"].cert,), clock=clock)

    def split_handshake(session: SessionTicket | None) -> list[events.Event]:
        client = ClientConnection(client_config, server_name="localhost", session=session)
        client.start()
        first = ServerConnection(config)
        first.receive_data(client.data_to_send())
        client.receive_data(first.data_to_send())  # the HelloRetryRequest (+ CCS)
        client_events, server_events = pump(client, ServerConnection(config))
        return client_events + server_events

    evs = split_handshake(None)
    tickets = [e.ticket for e in evs if isinstance(e, events.NewSessionTicketReceived)]
    infos = [e for e in evs if isinstance(e, events.HandshakeComplete)]
    assert len(infos) == 2 and all(i.hello_retry for i in infos) and tickets
    resumed = [e for e in split_handshake(tickets[0]) if isinstance(e, events.HandshakeComplete)]
    assert len(resumed) == 2 and all(i.resumed and i.hello_retry for i in resumed)


def test_compatibility_ccs_before_second_hello_is_ignored(
    make_config: Callable[..., ServerConfig],
) -> None:
    config = make_config()
    client = MiniClient(groups=(X25519, P384), share_groups=(X25519,), session_id=bytes(32))
    ch2 = first_flight(config, client)
    fresh = ServerConnection(config)
    assert fresh.receive_data(CCS_RECORD) == []  # rfc8446bis §4.2.2: MUST ignore
    fresh.receive_data(ch2)
    flight = fresh.data_to_send()
    # Our CCS already followed the HelloRetryRequest: none again (Appendix D.4).
    assert CCS_RECORD not in split_records(flight)
    done = fresh.receive_data(client.handle_server_hello(flight))
    assert any(isinstance(e, events.HandshakeComplete) for e in done)


def test_ccs_before_hello_is_unexpected_without_stateless_retry(
    make_config: Callable[..., ServerConfig],
) -> None:
    conn = ServerConnection(make_config(stateless_retry=False))
    expect_alert(conn, CCS_RECORD, AlertDescription.unexpected_message)


def test_second_hello_without_cookie_after_our_retry(
    make_config: Callable[..., ServerConfig],
) -> None:
    conn = ServerConnection(make_config())
    client = MiniClient(groups=(X25519, P384), share_groups=(X25519,))
    conn.receive_data(client.hello_record())
    client.handle_server_hello(conn.data_to_send())
    client.cookie = None
    expect_alert(conn, plaintext_record(22, client.hello()), AlertDescription.missing_extension)


def _tamper(cookie: bytes, index: int) -> bytes:
    return cookie[:index] + bytes((cookie[index] ^ 0x01,)) + cookie[index + 1 :]


@pytest.mark.parametrize("index", [0, 2, 6, 12, -40, -1], ids=lambda i: f"byte{i}")
def test_tampered_cookie_is_illegal_parameter(
    make_config: Callable[..., ServerConfig], index: int
) -> None:
    config = make_config()
    client = MiniClient(groups=(X25519, P384), share_groups=(X25519,))
    first_flight(config, client)
    assert client.cookie is not None
    client.cookie = _tamper(client.cookie, index)
    expect_alert(
        ServerConnection(config),
        plaintext_record(22, client.hello()),
        AlertDescription.illegal_parameter,
    )


@pytest.mark.parametrize("cookie", [b"\x01", bytes(32), bytes(200)], ids=["1", "32", "200"])
def test_forged_cookie_is_illegal_parameter(
    make_config: Callable[..., ServerConfig], cookie: bytes
) -> None:
    client = MiniClient(groups=(X25519, P384), share_groups=(P384,))
    client.cookie = cookie
    expect_alert(
        ServerConnection(make_config()), client.hello_record(), AlertDescription.illegal_parameter
    )


def test_cookie_from_another_secret_is_illegal_parameter(
    make_config: Callable[..., ServerConfig],
) -> None:
    client = MiniClient(groups=(X25519, P384), share_groups=(X25519,))
    ch2 = first_flight(make_config(), client)
    other = ServerConnection(make_config(cookie_secret=bytes(32)))
    expect_alert(other, ch2, AlertDescription.illegal_parameter)


@pytest.mark.parametrize(
    ("shift", "ok"),
    [(60, True), (61, False), (-5, True), (-6, False)],
    ids=["at-lifetime", "expired", "small-skew", "future"],
)
def test_cookie_lifetime(
    make_config: Callable[..., ServerConfig], clock: Clock, shift: float, ok: bool
) -> None:
    config = make_config(cookie_lifetime=60)
    client = MiniClient(groups=(X25519, P384), share_groups=(X25519,))
    ch2 = first_flight(config, client)
    clock.now += shift
    conn = ServerConnection(config)
    if ok:
        assert finish(conn, client, ch2).hello_retry
    else:
        expect_alert(conn, ch2, AlertDescription.illegal_parameter)


@pytest.mark.parametrize("change", ["alpn", "random", "suites", "session_id"])
def test_changed_second_hello_is_illegal_parameter(
    make_config: Callable[..., ServerConfig], change: str
) -> None:
    config = make_config()
    client = MiniClient(groups=(X25519, P384), share_groups=(X25519,))
    first_flight(config, client)
    if change == "alpn":
        client.alpn = ("h2",)
    elif change == "random":
        client.random = bytes(32)
    elif change == "suites":
        client.suites = (0x1301, 0x1303, 0x1302)
    else:
        client.session_id = b"\x01" * 32
    expect_alert(
        ServerConnection(config),
        plaintext_record(22, client.hello()),
        AlertDescription.illegal_parameter,
    )


def test_second_hello_with_the_wrong_share(make_config: Callable[..., ServerConfig]) -> None:
    config = make_config()
    client = MiniClient(groups=(X25519, P384), share_groups=(X25519,))
    first_flight(config, client)
    client.privates = {X25519: client.privates[P384]}  # a share for x25519 instead
    with pytest.raises(TLSError) as caught:
        ServerConnection(config).receive_data(plaintext_record(22, client.hello()))
    assert caught.value.alert == AlertDescription.illegal_parameter


def test_suite_no_longer_configured(make_config: Callable[..., ServerConfig]) -> None:
    client = MiniClient(groups=(X25519, P384), share_groups=(X25519,), suites=(0x1302, 0x1301))
    ch2 = first_flight(make_config(cipher_suites=(0x1302,)), client)
    reloaded = ServerConnection(make_config(cipher_suites=(0x1301,)))
    expect_alert(reloaded, ch2, AlertDescription.handshake_failure)


def test_stateful_retry_refuses_a_cookie_issued_elsewhere(
    make_config: Callable[..., ServerConfig],
) -> None:
    # Without stateless_retry a connection accepts only the cookie it issued itself.
    config = make_config(stateless_retry=False)
    client = MiniClient(groups=(X25519, P384), share_groups=(X25519,))
    first_flight(config, client)
    cookie = client.cookie
    conn = ServerConnection(config)
    other = MiniClient(groups=(X25519, P384), share_groups=(X25519,), random=client.random)
    conn.receive_data(other.hello_record())
    other.handle_server_hello(conn.data_to_send())
    other.cookie = cookie
    expect_alert(conn, plaintext_record(22, other.hello()), AlertDescription.illegal_parameter)


def test_cookie_lifetime_validated(make_config: Callable[..., ServerConfig]) -> None:
    with pytest.raises(ValueError):
        make_config(cookie_lifetime=0)


def test_stateful_cookie_is_refused_by_a_stateless_server(
    make_config: Callable[..., ServerConfig],
) -> None:
    # The compact stateful cookie (format 1) lacks the time and fingerprint.
    client = MiniClient(groups=(X25519, P384), share_groups=(X25519,))
    ch2 = first_flight(make_config(stateless_retry=False), client)
    expect_alert(ServerConnection(make_config()), ch2, AlertDescription.illegal_parameter)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cookie=st.binary(min_size=1, max_size=300))
def test_arbitrary_cookies_never_crash(
    make_config: Callable[..., ServerConfig], cookie: bytes
) -> None:
    client = MiniClient(groups=(X25519, P384), share_groups=(P384,))
    client.cookie = cookie
    with pytest.raises(TLSError) as caught:
        ServerConnection(make_config()).receive_data(client.hello_record())
    assert caught.value.alert == AlertDescription.illegal_parameter, caught.value
