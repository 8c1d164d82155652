"""The one-step application-data calls (issue 9): ``RecordLayer.seal_application_data``,
``Connection.send_data_now`` and the copy-free ``RecordLayer.receive``.

Each fast call must put on the wire exactly what the queued path does, and keep every rule
of that path: record size limits, padding, the AEAD limit's automatic KeyUpdate, errors.
"""

from __future__ import annotations

import pytest
from certs import make_ca, make_leaf
from engine_helpers import MiniClient, store_for
from hypothesis import given, settings
from hypothesis import strategies as st

from tls13 import events
from tls13.alerts import AlertDescription, TLSError
from tls13.config import ServerConfig
from tls13.connection import ConnectionStateError
from tls13.messages import KeyUpdate
from tls13.record import APPLICATION_DATA, HANDSHAKE, MAX_PLAINTEXT, RecordLayer
from tls13.server import ServerConnection
from tls13.suites import SUITES

SECRET = bytes(range(48))


def _layers(code: int = 0x1301) -> tuple[RecordLayer, RecordLayer, RecordLayer]:
    """Two writers with the same key (fast and queued path) and a reader for them."""
    suite = SUITES[code]
    secret = SECRET[: suite.hash_len]
    fast, queued, reader = RecordLayer(), RecordLayer(), RecordLayer()
    fast.set_write_key(suite, secret)
    queued.set_write_key(suite, secret)
    reader.set_read_key(suite, secret)
    return fast, queued, reader


def _drain(layer: RecordLayer) -> list[tuple[int, bytes]]:
    records = []
    while (record := layer.next_record()) is not None:
        records.append(record)
    return records


# --- RecordLayer.seal_application_data ---------------------------------------------------------


@pytest.mark.parametrize("code", sorted(SUITES))
@pytest.mark.parametrize(
    "size", [1, 64, MAX_PLAINTEXT - 1, MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 70000]
)
def test_seal_matches_write_then_take_output(code: int, size: int) -> None:
    fast, queued, reader = _layers(code)
    payload = bytes(i % 251 for i in range(size))
    for _ in range(2):  # the second call uses the next sequence number on both
        sealed = fast.seal_application_data(payload)
        queued.write(APPLICATION_DATA, payload)
        assert bytes(sealed) == queued.take_output()
        assert fast.pending_output == 0
        reader.receive(bytes(sealed))
        assert b"".join(content for _, content in _drain(reader)) == payload
    assert fast.write_sequence == queued.write_sequence


@pytest.mark.parametrize(
    ("padding", "limit"), [(0, 1 << 10), (64, MAX_PLAINTEXT + 1), (1000, 1 << 11)]
)
def test_seal_keeps_padding_and_the_peer_record_limit(padding: int, limit: int) -> None:
    fast, queued, reader = _layers()
    for layer in (fast, queued, reader):
        layer.padding_to = padding
        layer.peer_record_limit = limit
    payload = b"p" * 5000
    sealed = fast.seal_application_data(payload)
    queued.write(APPLICATION_DATA, payload)
    assert bytes(sealed) == queued.take_output()
    reader.receive(bytes(sealed))
    records = _drain(reader)
    assert all(len(content) + 1 <= limit for _, content in records)
    assert b"".join(content for _, content in records) == payload


def test_seal_returns_queued_output_first() -> None:
    fast, queued, reader = _layers()
    fast.write(HANDSHAKE, b"key update")
    queued.write(HANDSHAKE, b"key update")
    sealed = fast.seal_application_data(b"data")
    queued.write(APPLICATION_DATA, b"data")
    assert bytes(sealed) == queued.take_output()
    assert fast.pending_output == 0
    reader.receive(bytes(sealed))
    assert _drain(reader) == [(HANDSHAKE, b"key update"), (APPLICATION_DATA, b"data")]


def test_seal_without_keys_and_at_the_aead_limit_is_an_error() -> None:
    with pytest.raises(TLSError) as excinfo:
        RecordLayer().seal_application_data(b"x")
    assert excinfo.value.alert == AlertDescription.internal_error
    fast, _, _ = _layers()
    fast._write.seq = int(2**24.5)  # type: ignore[union-attr]
    with pytest.raises(TLSError) as excinfo:
        fast.seal_application_data(b"x")
    assert excinfo.value.alert == AlertDescription.internal_error


def test_take_output_with_nothing_queued_is_empty() -> None:
    assert RecordLayer().take_output() == b""


# --- RecordLayer.receive without copies --------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=6),
    cuts=st.lists(st.integers(1, 4000), max_size=8),
    mutable=st.booleans(),
)
def test_any_split_of_the_input_yields_the_same_records(
    sizes: list[int], cuts: list[int], mutable: bool
) -> None:
    _, writer, reader = _layers()
    payloads = [bytes([n % 256]) * n for n in sizes]
    for payload in payloads:
        writer.write(APPLICATION_DATA, payload)
    wire = writer.take_output()
    got: list[tuple[int, bytes]] = []
    pos = 0
    for cut in [*cuts, len(wire)]:
        piece = wire[pos : pos + cut]
        pos += len(piece)
        if mutable:
            buffer = bytearray(piece)
            reader.receive(buffer)
            buffer[:] = b"\xff" * len(buffer)  # the caller reuses its buffer at once
        else:
            reader.receive(piece)
        got += _drain(reader)
    assert got == [(APPLICATION_DATA, payload) for payload in payloads]
    assert reader.buffered == 0


def test_kept_read_with_a_partial_record_then_the_rest() -> None:
    _, writer, reader = _layers()
    writer.write(APPLICATION_DATA, b"one")
    writer.write(APPLICATION_DATA, b"two")
    wire = writer.take_output()
    reader.receive(wire[:-3])  # kept as is; the second record is incomplete
    assert _drain(reader) == [(APPLICATION_DATA, b"one")]
    assert reader.buffered == len(wire) // 2 - 3
    reader.receive(wire[-3:])
    assert _drain(reader) == [(APPLICATION_DATA, b"two")]


def test_a_read_completing_a_record_is_kept_behind_it() -> None:
    """Only the completed record is copied; the rest of the read stays where it is, and
    receiving again before it was read still yields every record in order."""
    _, writer, reader = _layers()
    payloads = [bytes([n]) * 3000 for n in range(6)]
    for payload in payloads:
        writer.write(APPLICATION_DATA, payload)
    wire = writer.take_output()
    record_len = len(wire) // 6
    reader.receive(wire[: record_len + 100])  # one record and a part of the next
    assert reader.next_record() == (APPLICATION_DATA, payloads[0])
    assert reader.next_record() is None
    reader.receive(wire[record_len + 100 : 4 * record_len + 50])
    assert reader.buffered == 3 * record_len + 50
    assert len(reader._in) == record_len  # only the completed record was copied
    assert reader.next_record() == (APPLICATION_DATA, payloads[1])  # the carried record
    reader.receive(wire[4 * record_len + 50 :])  # before the kept rest was read
    assert _drain(reader) == [(APPLICATION_DATA, payload) for payload in payloads[2:]]
    assert reader.buffered == 0


def test_keys_change_between_a_carried_record_and_the_rest_of_the_read() -> None:
    _, old, reader = _layers()
    new = RecordLayer()
    new.set_write_key(SUITES[0x1301], b"n" * 32)
    old.write(HANDSHAKE, b"finished" * 100)
    first = old.take_output()
    new.write(APPLICATION_DATA, b"under the new key")
    wire = first + new.take_output()
    reader.receive(wire[:50])
    assert reader.next_record() is None
    reader.receive(wire[50:])
    assert reader.next_record() == (HANDSHAKE, b"finished" * 100)
    reader.set_read_key(SUITES[0x1301], b"n" * 32)  # §5.1: on the record boundary
    assert _drain(reader) == [(APPLICATION_DATA, b"under the new key")]


def test_input_bound_holds_for_a_kept_read() -> None:
    reader = RecordLayer()
    reader.set_buffer_limit(0)  # raised to two full records
    reader.receive(b"\x17\x03\x03\x40")  # an incomplete header, kept
    with pytest.raises(TLSError) as excinfo:
        reader.receive(b"\x00" * (2 * (5 + MAX_PLAINTEXT + 256)))
    assert excinfo.value.alert == AlertDescription.internal_error


# --- Connection.send_data_now --------------------------------------------------------------------


@pytest.fixture(scope="module")
def store() -> object:
    ca = make_ca()
    leaf = make_leaf(ca, ("localhost",), kind="p256")
    return store_for([(leaf.cert_pem() + ca.cert_pem(), leaf.key_pem())])


def _connected(store: object, **overrides: object) -> tuple[ServerConnection, MiniClient]:
    config = ServerConfig(certificates=store, tickets=0, **overrides)  # type: ignore[arg-type]
    server, client = ServerConnection(config), MiniClient()
    server.receive_data(client.hello_record())
    answer = client.handle_server_hello(server.data_to_send())
    done = server.receive_data(answer)
    assert any(isinstance(event, events.HandshakeComplete) for event in done)
    assert server.data_to_send() == b""
    return server, client


def _read(client: MiniClient, wire: bytes | bytearray) -> list[tuple[int, bytes]]:
    client.record.receive(bytes(wire))
    return _drain(client.record)


def test_send_data_now_delivers_the_data(store: object) -> None:
    server, client = _connected(store)
    assert _read(client, server.send_data_now(b"hello")) == [(APPLICATION_DATA, b"hello")]
    big = bytes(range(256)) * 300
    records = _read(client, server.send_data_now(memoryview(big)))
    assert b"".join(content for _, content in records) == big
    assert all(len(content) <= MAX_PLAINTEXT for _, content in records)
    assert server.send_data_now(b"") == b""  # no empty record, as send_data
    assert server.data_to_send() == b""


def test_send_data_now_sends_the_owed_key_update_first(store: object) -> None:
    server, client = _connected(store)
    server.receive_data(client.protect(HANDSHAKE, KeyUpdate(request_update=True).serialize()))
    client.rekey_write()
    client.record.receive(bytes(server.send_data_now(b"after")))
    answer = (HANDSHAKE, KeyUpdate(request_update=False).serialize())
    assert client.record.next_record() == answer
    client.rekey_read()
    assert _drain(client.record) == [(APPLICATION_DATA, b"after")]


def test_send_data_now_rekeys_near_the_aead_limit(
    store: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, client = _connected(store)
    # RFC 8446 §5.5: near the AEAD usage limit the sender rekeys on its own.
    monkeypatch.setattr(RecordLayer, "write_needs_update", property(lambda self: True))
    client.record.receive(bytes(server.send_data_now(b"data")))
    assert client.record.next_record() == (HANDSHAKE, KeyUpdate(request_update=False).serialize())
    client.rekey_read()
    assert _drain(client.record) == [(APPLICATION_DATA, b"data")]


def test_send_data_now_keeps_padding(store: object) -> None:
    server, client = _connected(store, record_padding=256)
    client.record.padding_to = 0
    wire = server.send_data_now(b"x")
    assert len(wire) == 5 + 256 + 16
    assert _read(client, wire) == [(APPLICATION_DATA, b"x")]


def test_send_data_now_refuses_what_send_data_refuses(store: object) -> None:
    server = ServerConnection(ServerConfig(certificates=store))  # type: ignore[arg-type]
    with pytest.raises(ConnectionStateError):
        server.send_data_now(b"early")
    server, client = _connected(store)
    server.close()
    with pytest.raises(ConnectionStateError):
        server.send_data_now(b"late")
