"""HandshakeReassembler: messages split across records, several per record, limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msg_helpers import trace_messages

from tls13.alerts import AlertDescription, TLSError
from tls13.messages import HandshakeReassembler, HandshakeType

FLIGHT = [data for section, _, data in trace_messages() if section.startswith("Simple")]
STREAM = b"".join(FLIGHT)
EXPECTED = [(data[0], data) for data in FLIGHT]


def test_one_record_with_many_messages() -> None:
    reassembler = HandshakeReassembler(65536)
    assert reassembler.feed(STREAM) == EXPECTED
    assert not reassembler.pending


def test_byte_by_byte() -> None:
    reassembler = HandshakeReassembler(65536)
    out = []
    for i in range(len(STREAM)):
        out += reassembler.feed(STREAM[i : i + 1])
        assert reassembler.pending == (i + 1 not in _boundaries())
    assert out == EXPECTED


def _boundaries() -> set[int]:
    ends, pos = set(), 0
    for data in FLIGHT:
        pos += len(data)
        ends.add(pos)
    return ends


def test_pending_after_a_message_that_shares_its_record() -> None:
    # A key-changing message followed by part of the next in the same record (§5.1).
    reassembler = HandshakeReassembler(65536)
    messages = reassembler.feed(FLIGHT[0] + FLIGHT[1][:10])
    assert messages == [(FLIGHT[0][0], FLIGHT[0])]
    assert reassembler.pending


def test_oversized_message_is_illegal_parameter() -> None:
    reassembler = HandshakeReassembler(100)
    with pytest.raises(TLSError) as err:
        reassembler.feed(b"\x0b\x00\x00\x65")
    assert err.value.alert is AlertDescription.illegal_parameter
    # Exactly the limit is fine.
    ok = HandshakeReassembler(100)
    assert ok.feed(b"\x14\x00\x00\x64" + bytes(100)) == [(20, b"\x14\x00\x00\x64" + bytes(100))]


@pytest.mark.parametrize("msg_type", [0, 3, 6, 7, 9, 25, 67, 254, 255])
def test_unknown_type_is_unexpected_message(msg_type: int) -> None:
    with pytest.raises(TLSError) as err:
        HandshakeReassembler(65536).feed(bytes([msg_type, 0, 0, 0]))
    assert err.value.alert is AlertDescription.unexpected_message
    # Detected as soon as the type byte arrives.
    with pytest.raises(TLSError) as err:
        HandshakeReassembler(65536).feed(bytes([msg_type]))
    assert err.value.alert is AlertDescription.unexpected_message


def test_every_wire_type_is_accepted() -> None:
    for msg_type in HandshakeType:
        if msg_type is HandshakeType.message_hash:
            continue
        assert HandshakeReassembler(10).feed(bytes([msg_type, 0, 0, 0])) == [
            (msg_type, bytes([msg_type, 0, 0, 0]))
        ]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM)), max_size=12))
def test_any_record_split_gives_the_same_messages(cuts: list[int]) -> None:
    points = sorted(set(cuts) | {len(STREAM)})
    reassembler = HandshakeReassembler(65536)
    out, start = [], 0
    for point in points:
        out += reassembler.feed(STREAM[start:point])
        start = point
    assert out == EXPECTED
    assert not reassembler.pending


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=64), max_size=8), st.integers(0, 2000))
def test_random_records_raise_only_tls_errors(records: list[bytes], limit: int) -> None:
    reassembler = HandshakeReassembler(limit)
    try:
        for record in records:
            for msg_type, message in reassembler.feed(record):
                assert message[0] == msg_type
                assert len(message) - 4 == int.from_bytes(message[1:4], "big") <= limit
    except TLSError:
        pass
