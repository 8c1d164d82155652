"""Issue 10, the glue between engine bounds and metrics: every ``tls13.Limits`` bound the
engine enforces names itself on its error (``TLSError.limit``), and
``proxy.connection.engine_limit`` turns that name into the label of
``tls13proxy_limit_hits_total``. Driven in memory, so a bound that stops naming itself fails
here first rather than silently dropping a metric."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace

import pytest
from certs import Issued, make_leaf
from engine_helpers import MiniClient, pump, store_for

from proxy.connection import LIMIT_LABELS, engine_limit
from proxy.settings import DEFAULT_SETTINGS
from proxy.tlsconfig import engine_limits
from tls13 import ClientConfig, ClientConnection, Limits, ServerConfig, ServerConnection, TLSError
from tls13.extensions import ExtensionType
from tls13.groups import BY_NAME as GROUPS
from tls13.record import ALERT, APPLICATION_DATA, CHANGE_CIPHER_SPEC, HANDSHAKE

TIGHT = Limits(
    max_handshake_message=4096,
    max_handshake_buffer=8192,
    max_empty_records=2,
    max_warning_alerts=1,
    max_ccs=1,
    max_key_updates_per_minute=1,
)


@pytest.fixture(scope="module")
def server_config(test_ca: Issued) -> ServerConfig:
    leaf = make_leaf(test_ca, ("a.test",))
    store = store_for([(leaf.cert_pem() + test_ca.cert_pem(), leaf.key_pem())])
    return ServerConfig(certificates=store, limits=TIGHT)


def connected(config: ServerConfig) -> tuple[ClientConnection, ServerConnection]:
    client = ClientConnection(ClientConfig(), "a.test")
    server = ServerConnection(config)
    client.start()
    pump(client, server)
    assert client.handshake_complete and server.handshake_complete
    return client, server


def server_error(server: ServerConnection, data: bytes) -> TLSError:
    with pytest.raises(TLSError) as caught:
        server.receive_data(data)
    return caught.value


def raw(client: ClientConnection, content_type: int, payload: bytes, times: int) -> bytes:
    for _ in range(times):
        client._record.write(content_type, payload)  # engine internals: abuse on purpose
    return client.data_to_send()


Abuse = Callable[[ServerConfig], TLSError]


def empty_records(config: ServerConfig) -> TLSError:
    client, server = connected(config)
    return server_error(server, raw(client, APPLICATION_DATA, b"", 3))


def warning_alerts(config: ServerConfig) -> TLSError:
    client, server = connected(config)
    return server_error(server, raw(client, ALERT, bytes((1, 90)), 2))


def key_updates(config: ServerConfig) -> TLSError:
    client, server = connected(config)
    client.update_keys(request_peer=False)
    client.update_keys(request_peer=False)
    return server_error(server, client.data_to_send())


def change_cipher_specs(config: ServerConfig) -> TLSError:
    client = ClientConnection(ClientConfig(), "a.test")
    client.start()
    server = ServerConnection(config)
    ccs = bytes((CHANGE_CIPHER_SPEC, 3, 3, 0, 1, 1))
    return server_error(server, client.data_to_send() + ccs * 2)


def oversized_message(config: ServerConfig) -> TLSError:
    header = bytes((HANDSHAKE, 3, 1, 0, 4)) + bytes((1,)) + (5000).to_bytes(3, "big")
    return server_error(ServerConnection(config), header)


def handshake_buffer(config: ServerConfig) -> TLSError:
    # Two padded ClientHellos around a HelloRetryRequest: each fits the message bound, together
    # they pass max_handshake_buffer.
    limits = replace(TIGHT, max_handshake_buffer=4096)
    server = ServerConnection(replace(config, limits=limits, groups=(GROUPS["secp384r1"],)))
    client = MiniClient(
        groups=(GROUPS["x25519"], GROUPS["secp384r1"]),
        share_groups=(GROUPS["x25519"],),
        extra_extensions=[(ExtensionType.padding, bytes(2500))],
    )
    server.receive_data(client.hello_record())
    client.handle_server_hello(server.data_to_send())
    return server_error(server, client.hello_record())


def record_buffer(config: ServerConfig) -> TLSError:
    # One read far beyond the 1 MiB backstop: a record header promising more, then bulk.
    return server_error(ServerConnection(config), bytes((HANDSHAKE, 3, 1, 0x40, 0)) * 300_000)


BOUNDS = [
    (empty_records, "max_empty_records", "max_empty_records"),
    (warning_alerts, "max_warning_alerts", "max_warning_alerts"),
    (key_updates, "max_key_updates_per_minute", "key_updates_per_minute"),
    (change_cipher_specs, "max_ccs", "max_change_cipher_spec"),
    (oversized_message, "max_handshake_message", "max_handshake_size"),
    (handshake_buffer, "max_handshake_buffer", "max_handshake_buffer"),
    (record_buffer, "max_record_buffer", "max_record_buffer"),
]


@pytest.mark.parametrize(("abuse", "limit", "label"), BOUNDS)
def test_each_engine_bound_is_named(
    server_config: ServerConfig, abuse: Abuse, limit: str, label: str
) -> None:
    error = abuse(server_config)
    assert not error.sent_by_peer
    assert error.limit == limit
    assert engine_limit(error) == label


def test_every_engine_bound_is_exercised_and_labelled() -> None:
    bounds = {field.name for field in fields(Limits)}
    assert {limit for _, limit, _ in BOUNDS} == bounds
    assert set(LIMIT_LABELS) == bounds


def test_an_alert_from_the_peer_is_never_a_limit_of_ours() -> None:
    from tls13 import AlertDescription

    error = TLSError(
        AlertDescription.unexpected_message,
        "too many empty records",
        sent_by_peer=True,
        limit="max_empty_records",
    )
    assert engine_limit(error) is None
    assert engine_limit(TLSError(AlertDescription.decode_error, "malformed")) is None
    assert engine_limit(None) is None


def test_a_bound_without_a_label_keeps_the_engine_name() -> None:
    from tls13 import AlertDescription

    error = TLSError(AlertDescription.unexpected_message, "x", limit="max_new_bound")
    assert engine_limit(error) == "max_new_bound"


def test_settings_reach_the_engine_limits() -> None:
    limits = engine_limits(DEFAULT_SETTINGS)
    configured = DEFAULT_SETTINGS.limits
    assert limits.max_handshake_message == configured.max_handshake_size
    assert limits.max_empty_records == configured.max_empty_records
    assert limits.max_warning_alerts == configured.max_warning_alerts
    assert limits.max_ccs == configured.max_change_cipher_spec
    assert limits.max_key_updates_per_minute == configured.key_updates_per_minute
