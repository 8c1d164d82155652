"""The codec reads exactly what the writer wrote, and every short read is a decode_error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tls13.alerts import AlertDescription, TLSError
from tls13.codec import Reader, Writer


def test_round_trip_of_every_width() -> None:
    w = Writer()
    w.uint8(0xAB)
    w.uint16(0xBEEF)
    w.uint24(0x123456)
    w.uint32(0xDEADBEEF)
    w.vector(1, b"one")
    w.vector(2, b"two")
    w.vector(3, b"three")
    w.uint16_list(2, [0x1301, 0x1302])
    with w.prefixed(2):
        w.uint8(7)
    r = Reader(w.getvalue())
    assert (r.uint8(), r.uint16(), r.uint24(), r.uint32()) == (0xAB, 0xBEEF, 0x123456, 0xDEADBEEF)
    assert (r.vector(1), r.vector(2), r.vector(3)) == (b"one", b"two", b"three")
    assert r.uint16_list(2) == [0x1301, 0x1302]
    sub = r.sub(2)
    assert sub.uint8() == 7
    sub.expect_end()
    r.expect_end()


def test_vector_bounds_are_enforced() -> None:
    with pytest.raises(TLSError) as err:
        Reader(b"\x00").vector(1, minimum=1)
    assert err.value.alert is AlertDescription.decode_error
    with pytest.raises(TLSError):
        Reader(b"\x03abc").vector(1, maximum=2)


def test_trailing_bytes_are_a_decode_error() -> None:
    r = Reader(b"\x01\x02")
    r.uint8()
    with pytest.raises(TLSError) as err:
        r.expect_end()
    assert err.value.alert is AlertDescription.decode_error


def test_odd_uint16_list_is_rejected() -> None:
    with pytest.raises(TLSError):
        Reader(b"\x00\x03\x13\x01\x13").uint16_list(2)


@given(
    st.binary(max_size=64),
    st.lists(
        st.sampled_from(["u8", "u16", "u24", "u32", "v1", "v2", "v3", "l2", "s2"]), max_size=12
    ),
)
def test_any_input_reads_or_raises_decode_error(data: bytes, ops: list[str]) -> None:
    r = Reader(data)
    try:
        for op in ops:
            if op == "u8":
                r.uint8()
            elif op == "u16":
                r.uint16()
            elif op == "u24":
                r.uint24()
            elif op == "u32":
                r.uint32()
            elif op == "l2":
                r.uint16_list(2)
            elif op == "s2":
                r.sub(2)
            else:
                r.vector(int(op[1]))
    except TLSError as err:
        assert err.alert is AlertDescription.decode_error
