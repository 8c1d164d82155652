"""Record layer: byte-exact trace records, framing rules, limits, padding, fuzzing."""

from __future__ import annotations

import os

import pytest
from core_helpers import RESUMED_0RTT, SIMPLE_1RTT, load_trace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tls13.alerts import AlertDescription, TLSError
from tls13.record import (
    ALERT,
    APPLICATION_DATA,
    CHANGE_CIPHER_SPEC,
    HANDSHAKE,
    MAX_PLAINTEXT,
    RecordLayer,
)
from tls13.suites import SUITES

AES128 = SUITES[0x1301]
T = load_trace(SIMPLE_1RTT)
S_HS = T['server derive secret "tls13 s hs traffic": expanded']
C_HS = T['server derive secret "tls13 c hs traffic": expanded']
S_AP = T['server derive secret "tls13 s ap traffic": expanded']
C_AP = T['server derive secret "tls13 c ap traffic": expanded']
SECRET = bytes(range(32))


def _pair(suite_code: int = 0x1301, secret: bytes = SECRET) -> tuple[RecordLayer, RecordLayer]:
    suite = SUITES[suite_code]
    secret = secret[: suite.hash_len].ljust(suite.hash_len, b"s")
    writer, reader = RecordLayer(), RecordLayer()
    writer.set_write_key(suite, secret)
    reader.set_read_key(suite, secret)
    return writer, reader


def _drain(layer: RecordLayer) -> list[tuple[int, bytes]]:
    records = []
    while (record := layer.next_record()) is not None:
        records.append(record)
    return records


def _alert_of(excinfo: pytest.ExceptionInfo[TLSError]) -> AlertDescription:
    return excinfo.value.alert


# --- known answers ---------------------------------------------------------------------------

# (step prefix, secret, sequence number of that record under the secret)
PROTECTED = [
    ("server send handshake record #2", S_HS, 0),
    ("client send handshake record #2", C_HS, 0),
    ("server send handshake record #3", S_AP, 0),
    ("client send application_data record", C_AP, 0),
    ("server send application_data record", S_AP, 1),
    ("client send alert record", C_AP, 1),
    ("server send alert record", S_AP, 2),
]


def _content_type(step: str) -> int:
    if "alert" in step:
        return ALERT
    return APPLICATION_DATA if "application_data" in step else HANDSHAKE


@pytest.mark.parametrize(("step", "secret", "seq"), PROTECTED)
def test_protected_records_match_trace(step: str, secret: bytes, seq: int) -> None:
    payload, record = T[f"{step}: payload"], T[f"{step}: complete record"]
    content_type = _content_type(step)
    writer = RecordLayer()
    writer.set_write_key(AES128, secret)
    for _ in range(seq):  # advance the sequence number as the trace did
        writer.write(APPLICATION_DATA, b"x")
    writer.take_output()
    writer.write(content_type, payload)
    assert writer.take_output() == record

    reader = RecordLayer()
    reader.set_read_key(AES128, secret)
    reader._read.seq = seq  # type: ignore[union-attr]
    reader.receive(record)
    assert reader.next_record() == (content_type, payload)
    assert reader.next_record() is None


def test_plaintext_records_match_trace() -> None:
    client = RecordLayer()
    client.plaintext_version = 0x0301  # §5.1: allowed for the initial ClientHello
    client.write(HANDSHAKE, T["client send handshake record: payload"])
    assert client.take_output() == T["client send handshake record: complete record"]
    server = RecordLayer()
    server.write(HANDSHAKE, T["server send handshake record: payload"])
    assert server.take_output() == T["server send handshake record: complete record"]

    reader = RecordLayer()
    reader.receive(T["client send handshake record: complete record"])
    reader.receive(T["server send handshake record: complete record"])
    assert _drain(reader) == [
        (HANDSHAKE, T["client send handshake record: payload"]),
        (HANDSHAKE, T["server send handshake record: payload"]),
    ]


def test_early_data_record_matches_resumed_trace() -> None:
    r = load_trace(RESUMED_0RTT)
    secret = r['client derive secret "tls13 c e traffic": expanded']
    writer = RecordLayer()
    writer.set_write_key(AES128, secret)
    writer.write(APPLICATION_DATA, r["client send application_data record: payload"])
    assert writer.take_output() == r["client send application_data record: complete record"]


# --- round trips, fragmentation, padding -----------------------------------------------------


@pytest.mark.parametrize("code", sorted(SUITES))
def test_every_suite_round_trips_large_writes(code: int) -> None:
    writer, reader = _pair(code)
    data = os.urandom(3 * MAX_PLAINTEXT + 123)
    writer.write(APPLICATION_DATA, data)
    wire = writer.take_output()
    reader.receive(wire)
    records = _drain(reader)
    assert [len(p) for _, p in records] == [MAX_PLAINTEXT] * 3 + [123]
    assert b"".join(p for _, p in records) == data
    assert writer.write_sequence == reader.read_sequence == 4


def test_fragmentation_respects_peer_record_limit() -> None:
    writer, reader = _pair()
    writer.peer_record_limit = 513  # RFC 8449: inner plaintext (content + type) <= 513
    writer.write(HANDSHAKE, b"h" * 1500)
    reader.receive(writer.take_output())
    assert [len(p) for _, p in _drain(reader)] == [512, 512, 476]


def test_padding_to_a_multiple() -> None:
    writer, reader = _pair()
    writer.padding_to = 256
    writer.write(APPLICATION_DATA, b"abc")
    writer.write(HANDSHAKE, b"h" * 300)
    wire = writer.take_output()
    first_len = int.from_bytes(wire[3:5], "big")
    assert first_len == 256 + 16  # inner plaintext padded to 256, plus the tag
    second = wire[5 + first_len :]
    assert int.from_bytes(second[3:5], "big") == 512 + 16
    reader.receive(wire)
    assert _drain(reader) == [(APPLICATION_DATA, b"abc"), (HANDSHAKE, b"h" * 300)]


def test_padding_never_exceeds_the_limit() -> None:
    writer, reader = _pair()
    writer.padding_to = 4096
    writer.write(APPLICATION_DATA, b"z" * MAX_PLAINTEXT)
    wire = writer.take_output()
    assert int.from_bytes(wire[3:5], "big") == MAX_PLAINTEXT + 1 + 16
    reader.receive(wire)
    assert _drain(reader) == [(APPLICATION_DATA, b"z" * MAX_PLAINTEXT)]


def test_zero_length_application_data_is_allowed() -> None:
    writer, reader = _pair()
    writer.write(APPLICATION_DATA, b"")
    reader.receive(writer.take_output())
    assert _drain(reader) == [(APPLICATION_DATA, b"")]


def test_byte_at_a_time_delivery() -> None:
    writer, reader = _pair()
    writer.write(HANDSHAKE, b"hello")
    writer.write(APPLICATION_DATA, b"world")
    got = []
    for byte in writer.take_output():
        reader.receive(bytes((byte,)))
        got.extend(_drain(reader))
    assert got == [(HANDSHAKE, b"hello"), (APPLICATION_DATA, b"world")]


def test_key_change_between_records_of_one_read() -> None:
    """Records are deprotected lazily, so a key switch applies from the next record."""
    writer, reader = RecordLayer(), RecordLayer()
    writer.write(HANDSHAKE, b"plain")
    writer.set_write_key(AES128, S_HS)
    writer.write(HANDSHAKE, b"secret")
    reader.receive(writer.take_output())
    assert reader.next_record() == (HANDSHAKE, b"plain")
    reader.set_read_key(AES128, S_HS)
    assert reader.next_record() == (HANDSHAKE, b"secret")


def test_ccs_is_returned_in_plaintext_even_when_protected() -> None:
    reader = RecordLayer()
    reader.set_read_key(AES128, SECRET)
    reader.receive(b"\x14\x03\x03\x00\x01\x01")
    assert reader.next_record() == (CHANGE_CIPHER_SPEC, b"\x01")


# --- errors ----------------------------------------------------------------------------------


def _inner_record(inner: bytes, secret: bytes = SECRET) -> bytes:
    """A protected record around an arbitrary TLSInnerPlaintext (bypassing write())."""
    writer = RecordLayer()
    writer.set_write_key(AES128, secret)
    writer._seal(writer._write, inner)  # type: ignore[arg-type]
    return writer.take_output()


def _read_error(wire: bytes, protected: bool = True) -> AlertDescription:
    reader = RecordLayer()
    if protected:
        reader.set_read_key(AES128, SECRET)
    reader.receive(wire)
    with pytest.raises(TLSError) as excinfo:
        _drain(reader)
    return _alert_of(excinfo)


@pytest.mark.parametrize(
    ("inner", "alert"),
    [
        (bytes(20), AlertDescription.unexpected_message),  # all-zero: no content type
        (b"\x16", AlertDescription.unexpected_message),  # empty handshake
        (b"\x15\x00\x00", AlertDescription.unexpected_message),  # empty alert, padded
        (b"\x01\x14", AlertDescription.unexpected_message),  # protected CCS
        (b"abc\x63", AlertDescription.unexpected_message),  # unknown inner type
        (b"z" * (MAX_PLAINTEXT + 1) + b"\x17", AlertDescription.record_overflow),
    ],
)
def test_bad_inner_plaintext(inner: bytes, alert: AlertDescription) -> None:
    assert _read_error(_inner_record(inner)) == alert


def test_padding_is_stripped_on_receive() -> None:
    reader = RecordLayer()
    reader.set_read_key(AES128, SECRET)
    reader.receive(_inner_record(b"data\x17" + bytes(100)))
    assert reader.next_record() == (APPLICATION_DATA, b"data")


def test_read_record_limit_enforced() -> None:
    """RFC 8449: our advertised limit covers the whole TLSInnerPlaintext."""
    writer, reader = _pair()
    reader.read_record_limit = 1025
    writer.write(APPLICATION_DATA, b"a" * 1024)  # inner plaintext 1025: allowed
    writer.write(APPLICATION_DATA, b"a" * 1025)  # inner plaintext 1026: too long
    reader.receive(writer.take_output())
    assert reader.next_record() == (APPLICATION_DATA, b"a" * 1024)
    with pytest.raises(TLSError) as excinfo:
        reader.next_record()
    assert _alert_of(excinfo) == AlertDescription.record_overflow


def test_tampered_record_is_bad_record_mac() -> None:
    writer, _ = _pair()
    writer.write(APPLICATION_DATA, b"payload")
    wire = bytearray(writer.take_output())
    wire[-1] ^= 1
    assert _read_error(bytes(wire)) == AlertDescription.bad_record_mac
    wire[-1] ^= 1
    wire[2] = 1  # header is the AAD: changing it breaks the tag (and the version rule)
    assert _read_error(bytes(wire)) == AlertDescription.protocol_version


def test_replayed_record_fails_sequence_check() -> None:
    writer, reader = _pair()
    writer.write(APPLICATION_DATA, b"once")
    wire = writer.take_output()
    reader.receive(wire + wire)
    assert reader.next_record() == (APPLICATION_DATA, b"once")
    with pytest.raises(TLSError) as excinfo:
        reader.next_record()
    assert _alert_of(excinfo) == AlertDescription.bad_record_mac


@pytest.mark.parametrize(
    ("wire", "alert"),
    [
        (b"\x16\x03\x03\x40\x01" + bytes(0x4001), AlertDescription.record_overflow),
        (b"\x16\x03\x03\x00\x00", AlertDescription.unexpected_message),
        (b"\x15\x03\x03\x00\x00", AlertDescription.unexpected_message),
        (b"\x14\x03\x03\x00\x00", AlertDescription.unexpected_message),
        (b"\x17\x03\x03\x00\x05hello", AlertDescription.unexpected_message),
        (b"\x18\x03\x03\x00\x01x", AlertDescription.unexpected_message),
        (b"GET / HTTP/1.1\r\n", AlertDescription.unexpected_message),
    ],
)
def test_bad_plaintext_records(wire: bytes, alert: AlertDescription) -> None:
    assert _read_error(wire, protected=False) == alert


@pytest.mark.parametrize("version", [b"\x03\x00", b"\x03\x01", b"\x03\x02", b"\x03\x04"])
def test_plaintext_record_version_is_ignored(version: bytes) -> None:
    """rfc8446bis §5.1: TLSPlaintext.legacy_record_version MUST be ignored."""
    reader = RecordLayer()
    reader.receive(b"\x16" + version + b"\x00\x02hi")
    assert reader.next_record() == (HANDSHAKE, b"hi")


def test_ciphertext_overflow() -> None:
    wire = b"\x17\x03\x03\x41\x01" + bytes(0x4101)
    assert _read_error(wire) == AlertDescription.record_overflow


def test_plaintext_handshake_after_keys_is_unexpected() -> None:
    assert _read_error(b"\x16\x03\x03\x00\x01x") == AlertDescription.unexpected_message


def test_input_buffer_is_bounded() -> None:
    reader = RecordLayer()
    with pytest.raises(TLSError):
        reader.receive(bytes(4 << 20))


def test_write_without_keys() -> None:
    layer = RecordLayer()
    with pytest.raises(TLSError):
        layer.write(APPLICATION_DATA, b"x")
    with pytest.raises(TLSError):
        layer.write(HANDSHAKE, b"")


# --- sequence numbers and AEAD limits --------------------------------------------------------


def test_sequence_numbers_and_nonce() -> None:
    writer, reader = _pair()
    for i in range(5):
        writer.write(APPLICATION_DATA, bytes([i]))
    assert writer.write_sequence == 5
    reader.receive(writer.take_output())
    assert [p for _, p in _drain(reader)] == [bytes([i]) for i in range(5)]
    assert reader.read_sequence == 5


def test_aead_limit_flags_write_needs_update() -> None:
    writer, _ = _pair()
    assert not writer.write_needs_update
    direction = writer._write
    assert direction is not None
    direction.seq = int(2**24.5) - 10
    assert writer.write_needs_update
    writer.set_write_key(AES128, SECRET)  # a KeyUpdate installs a fresh key
    assert not writer.write_needs_update
    chacha, _ = _pair(0x1303)
    chacha._write.seq = int(2**24.5)  # type: ignore[union-attr]
    assert not chacha.write_needs_update


def test_aead_limit_is_a_hard_stop_for_writing() -> None:
    writer, _ = _pair()
    writer._write.seq = int(2**24.5)  # type: ignore[union-attr]
    with pytest.raises(TLSError) as excinfo:
        writer.write(APPLICATION_DATA, b"x")
    assert _alert_of(excinfo) == AlertDescription.internal_error


def test_sequence_number_never_wraps() -> None:
    writer, reader = _pair(0x1303)  # ChaCha20: no AEAD limit below the sequence space
    writer._write.seq = 2**64 - 1  # type: ignore[union-attr]
    with pytest.raises(TLSError) as excinfo:
        writer.write(APPLICATION_DATA, b"x")
    assert _alert_of(excinfo) == AlertDescription.internal_error


# --- declined 0-RTT --------------------------------------------------------------------------


def _early_records(n: int, size: int) -> bytes:
    writer = RecordLayer()
    writer.set_write_key(AES128, b"e" * 32)
    for _ in range(n):
        writer.write(APPLICATION_DATA, b"0" * size)
    return writer.take_output()


def test_skip_early_data_then_handshake_record() -> None:
    client_hs, reader = _pair(secret=C_HS)
    reader.skip_early_data(1000)
    client_hs.write(HANDSHAKE, b"finished")
    reader.receive(_early_records(3, 100) + client_hs.take_output())
    assert _drain(reader) == [(HANDSHAKE, b"finished")]
    assert not reader.skipping_early_data


def test_skip_early_data_budget_exceeded() -> None:
    _, reader = _pair()
    reader.skip_early_data(250)
    reader.receive(_early_records(3, 100))
    with pytest.raises(TLSError) as excinfo:
        _drain(reader)
    assert _alert_of(excinfo) == AlertDescription.bad_record_mac


def test_skip_early_data_without_keys_after_hrr() -> None:
    reader = RecordLayer()
    reader.skip_early_data(1000)
    reader.receive(_early_records(2, 50) + b"\x16\x03\x03\x00\x02ch")
    assert _drain(reader) == [(HANDSHAKE, b"ch")]
    reader.receive(_early_records(1, 10))
    with pytest.raises(TLSError) as excinfo:
        _drain(reader)
    assert _alert_of(excinfo) == AlertDescription.unexpected_message


# --- fuzzing: arbitrary input only ever raises TLSError --------------------------------------

_VALID = _pair()[0]
_VALID.write(HANDSHAKE, b"handshake message")
_VALID.write(APPLICATION_DATA, b"application data" * 20)
_VALID.write(ALERT, b"\x01\x00")
VALID_STREAM = _VALID.take_output()


def _consume(wire: bytes, chunk: int, protected: bool) -> None:
    reader = RecordLayer()
    if protected:
        reader.set_read_key(AES128, SECRET.ljust(32, b"s"))
    try:
        for offset in range(0, len(wire), chunk):
            reader.receive(wire[offset : offset + chunk])
            _drain(reader)
    except TLSError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000), st.integers(1, 64), st.booleans())
def test_random_streams_only_raise_tls_error(wire: bytes, chunk: int, protected: bool) -> None:
    _consume(wire, chunk, protected)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, len(VALID_STREAM) - 1),
    st.integers(0, 255),
    st.integers(0, len(VALID_STREAM)),
    st.integers(1, 700),
)
def test_mutated_and_truncated_streams(pos: int, value: int, cut: int, chunk: int) -> None:
    mutated = bytearray(VALID_STREAM)
    mutated[pos] = value
    _consume(bytes(mutated[:cut]), chunk, True)
    _consume(VALID_STREAM[:cut], chunk, True)
