"""Hypothesis against the client's input side: random and mutated server flights.

The connection turns any unexpected Python exception into internal_error, so
"only TLSError comes out" is checked more strictly: the alert must never be
internal_error, which would mean a bug was hit rather than bad input judged.
"""

from __future__ import annotations

import pytest
from certs import make_ca, make_leaf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msg_helpers import record

from tls13.alerts import AlertDescription, TLSError
from tls13.certificates import CertificateChain, CertificateStore
from tls13.client import ClientConnection
from tls13.config import ClientConfig, ServerConfig
from tls13.groups import BY_NAME as GROUP_CODES
from tls13.server import ServerConnection

X25519 = GROUP_CODES["x25519"]
P256 = GROUP_CODES["secp256r1"]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_CA = make_ca()
_LEAF = make_leaf(_CA, ("localhost",))
_SERVER_CONFIG = ServerConfig(
    certificates=CertificateStore([CertificateChain((_LEAF.cert,), _LEAF.key)])  # type: ignore[arg-type]
)
_CLIENT_CONFIG = ClientConfig(
    ca_certificates=(_CA.cert,), groups=(X25519, P256), key_share_groups=(X25519,)
)


def _client() -> ClientConnection:
    client = ClientConnection(_CLIENT_CONFIG, server_name="localhost")
    client.start()
    return client


def _server_flight() -> tuple[ClientConnection, bytes]:
    client = _client()
    server = ServerConnection(_SERVER_CONFIG)
    server.receive_data(client.data_to_send())
    return client, server.data_to_send()


def _feed(client: ClientConnection, data: bytes) -> None:
    try:
        client.receive_data(data)
        client.receive_data(b"")
    except TLSError as error:
        # internal_error would be our own bug; a peer may send that alert (and we report it).
        assert error.sent_by_peer or error.alert is not AlertDescription.internal_error, error


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes_as_server_answer(data: bytes) -> None:
    _feed(_client(), data)


@FUZZ
@given(
    content_type=st.sampled_from([20, 21, 22, 23]),
    payloads=st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=4),
)
def test_random_records_as_server_answer(content_type: int, payloads: list[bytes]) -> None:
    _feed(_client(), b"".join(record(content_type, payload) for payload in payloads))


@FUZZ
@given(
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mutated_server_flight(edits: list[tuple[int, int]]) -> None:
    client, flight = _server_flight()
    mutated = bytearray(flight)
    for position, value in edits:
        mutated[position % len(mutated)] = value
    _feed(client, bytes(mutated))


@FUZZ
@given(cut=st.integers(0, 10**6), extra=st.binary(max_size=40))
def test_truncated_or_extended_server_flight(cut: int, extra: bytes) -> None:
    client, flight = _server_flight()
    _feed(client, flight[: cut % (len(flight) + 1)] + extra)


@FUZZ
@given(chunks=st.lists(st.integers(1, 300), min_size=1, max_size=30))
def test_server_flight_in_any_segmentation_completes(chunks: list[int]) -> None:
    client, flight = _server_flight()
    position = 0
    for size in chunks:
        piece = flight[position : position + size]
        if piece:  # b"" would mean EOF
            client.receive_data(piece)
        position += size
    if flight[position:]:
        client.receive_data(flight[position:])
    assert client.handshake_complete


def test_an_internal_error_alert_from_the_server_is_reported_as_the_peers() -> None:
    """Hypothesis found this: the server's internal_error alert is not our internal error."""
    client = _client()
    with pytest.raises(TLSError) as raised:
        client.receive_data(record(21, b"\x02\x50"))
    assert raised.value.sent_by_peer and raised.value.alert is AlertDescription.internal_error
    _feed(_client(), record(21, b"\x00\x50"))
