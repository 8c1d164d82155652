"""Property tests: whatever bytes arrive, ServerConnection raises only TLSError.

Random streams, mutated ClientHellos (bit flips, truncations, splices) and
mutated second flights all go through ``receive_data``; any other exception
type would be an engine bug escaping the public API.
"""

from __future__ import annotations

from functools import cache

import pytest
from certs import make_ca, make_leaf
from engine_helpers import MiniClient, plaintext_record, store_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tls13.alerts import TLSError
from tls13.config import ServerConfig
from tls13.groups import BY_NAME as GROUPS
from tls13.server import ServerConnection

pytestmark = pytest.mark.timeout(300)

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@cache
def config() -> ServerConfig:
    ca = make_ca()
    leaf = make_leaf(ca, ("localhost",))
    return ServerConfig(
        certificates=store_for([(leaf.cert_pem(), leaf.key_pem())]),
        groups=(GROUPS["x25519"], GROUPS["secp256r1"]),
        alpn_protocols=("h2",),
    )


@cache
def sample_hello() -> bytes:
    client = MiniClient(
        groups=(GROUPS["x25519"], GROUPS["secp256r1"]),
        alpn=("h2", "http/1.1"),
        session_id=b"s" * 32,
    )
    return client.hello()


def feed(chunks: list[bytes]) -> None:
    """Feed chunks one by one; only TLSError may escape, and the failure must stick."""
    conn = ServerConnection(config())
    for chunk in chunks:
        try:
            conn.receive_data(chunk)
        except TLSError:
            conn.data_to_send()
            with pytest.raises(TLSError):
                conn.receive_data(b"\x16\x03\x03\x00\x01\x01")
            return
        conn.data_to_send()


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_random_bytes(chunks: list[bytes]) -> None:
    feed(chunks)


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from([20, 21, 22, 23, 24, 0]), st.binary(max_size=120)), max_size=6
    )
)
def test_random_records(records: list[tuple[int, bytes]]) -> None:
    feed([plaintext_record(kind, payload) for kind, payload in records])


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 10_000),
)
def test_mutated_client_hello(flips: list[tuple[int, int]], cut: int) -> None:
    hello = bytearray(sample_hello())
    for position, value in flips:
        hello[position % len(hello)] = value
    mutated = bytes(hello[: max(1, len(hello) - cut % 40)])
    feed([plaintext_record(22, mutated)])


@FUZZ
@given(st.integers(1, 400), st.binary(max_size=64))
def test_client_hello_split_with_junk(split: int, junk: bytes) -> None:
    record = plaintext_record(22, sample_hello())
    split %= len(record)
    feed([record[:split], record[split:] + junk])


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=3))
def test_mutated_second_flight(flips: list[tuple[int, int]]) -> None:
    client = MiniClient()
    conn = ServerConnection(config())
    conn.receive_data(client.hello_record())
    answer = bytearray(client.handle_server_hello(conn.data_to_send()))
    for position, value in flips:
        answer[position % len(answer)] = value
    try:
        conn.receive_data(bytes(answer))
    except TLSError:
        return
