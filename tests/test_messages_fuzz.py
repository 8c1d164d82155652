"""Hypothesis over every message parser and extension decoder: arbitrary bytes,
truncations and mutations of the trace messages may only raise TLSError, and
whatever parses re-serializes to exactly the bytes it came from."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msg_helpers import trace_messages

from tls13 import extensions as ext
from tls13.alerts import TLSError
from tls13.codec import Reader, Writer
from tls13.extensions import ExtContext
from tls13.messages import (
    Certificate,
    CertificateRequest,
    CertificateVerify,
    ClientHello,
    EncryptedExtensions,
    EndOfEarlyData,
    Finished,
    KeyUpdate,
    NewSessionTicket,
    ServerHello,
    parse_message,
)

TRACE = [data for _, _, data in trace_messages()]
WITH_BODY = [data for data in TRACE if len(data) > 4]  # EndOfEarlyData has no body to mutate
PARSERS = [
    ClientHello,
    ServerHello,
    EncryptedExtensions,
    CertificateRequest,
    Certificate,
    CertificateVerify,
    Finished,
    NewSessionTicket,
    EndOfEarlyData,
    KeyUpdate,
]
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse_round_trip(data: bytes) -> None:
    """Parse a full message; if it parses it must serialize back to the same bytes."""
    try:
        message = parse_message(data)
    except TLSError:
        return
    assert message.serialize() == data


@pytest.mark.parametrize("cls", PARSERS, ids=lambda c: c.__name__)
@FUZZ
@given(body=st.binary(max_size=300))
def test_parser_on_random_bodies(cls: type, body: bytes) -> None:
    try:
        message = cls.parse(body)
    except TLSError:
        return
    assert message.serialize()[4:] == body


@FUZZ
@given(index=st.integers(0, len(TRACE) - 1), data=st.data())
def test_truncated_trace_messages(index: int, data: st.DataObject) -> None:
    message = TRACE[index]
    cut = data.draw(st.integers(0, len(message) - 1))
    body = message[4:cut] if cut > 4 else b""
    # Keep the header consistent with the shortened body so the body parser runs.
    _parse_round_trip(message[:1] + len(body).to_bytes(3, "big") + body)


@FUZZ
@given(
    index=st.integers(0, len(WITH_BODY) - 1),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_mutated_trace_messages(index: int, edits: list[tuple[int, int]]) -> None:
    message = bytearray(WITH_BODY[index])
    for position, value in edits:
        message[4 + position % (len(message) - 4)] = value
    _parse_round_trip(bytes(message))


@FUZZ
@given(
    index=st.integers(0, len(TRACE) - 1),
    position=st.integers(0, 10**6),
    inserted=st.binary(min_size=1, max_size=8),
    delete=st.booleans(),
)
def test_spliced_trace_messages(index: int, position: int, inserted: bytes, delete: bool) -> None:
    body = TRACE[index][4:]
    at = position % (len(body) + 1)
    body = body[:at] + body[at + len(inserted) :] if delete else body[:at] + inserted + body[at:]
    _parse_round_trip(TRACE[index][:1] + len(body).to_bytes(3, "big") + body)


DECODERS: list[Callable[[bytes], object]] = [
    ext.decode_server_name,
    ext.decode_supported_versions_ch,
    ext.decode_uint16_body,
    ext.decode_uint16_list,
    ext.decode_key_share_ch,
    ext.decode_key_share_sh,
    ext.decode_alpn,
    ext.decode_alpn_selected,
    ext.decode_cookie,
    ext.decode_record_size_limit,
    ext.decode_psk_modes,
    ext.decode_offered_psks,
    ext.decode_max_early_data,
    ext.decode_status_request,
    ext.decode_certificate_status,
    ext.decode_certificate_authorities,
]


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.__name__)
@FUZZ
@given(body=st.binary(max_size=120))
def test_extension_decoders_on_random_bodies(
    decoder: Callable[[bytes], object], body: bytes
) -> None:
    try:
        decoder(body)
    except TLSError:
        pass


@pytest.mark.parametrize("context", list(ExtContext), ids=lambda c: c.name)
@FUZZ
@given(
    pairs=st.lists(
        st.tuples(
            st.sampled_from([*ext.ALLOWED, 0x0A0A, 0xFF01, 0x9999]),
            st.binary(max_size=40),
        ),
        max_size=6,
    )
)
def test_parse_extensions_on_random_blocks(
    context: ExtContext, pairs: list[tuple[int, bytes]]
) -> None:
    w = Writer()
    ext.write_extensions(w, pairs)
    try:
        parsed = parse_ext(w.getvalue(), context)
    except TLSError:
        return
    assert parsed == pairs


def parse_ext(block: bytes, context: ExtContext) -> list[tuple[int, bytes]]:
    reader = Reader(block)
    parsed = ext.parse_extensions(reader, context)
    reader.expect_end()
    return parsed


@FUZZ
@given(
    names=st.lists(
        st.text(alphabet=st.characters(max_codepoint=255), min_size=1, max_size=20),
        min_size=1,
        max_size=5,
    )
)
def test_alpn_round_trip(names: list[str]) -> None:
    if any(len(n.encode("latin-1")) > 255 for n in names):
        return
    assert ext.decode_alpn(ext.encode_alpn(names)) == names


@FUZZ
@given(
    labels=st.lists(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20),
        min_size=1,
        max_size=6,
    )
)
def test_server_name_round_trip(labels: list[str]) -> None:
    name = ".".join(labels)
    if _is_ip_literal(name):
        # RFC 6066 §3: an IP address literal is not a host name.
        with pytest.raises(TLSError):
            ext.encode_server_name(name)
        return
    assert ext.decode_server_name(ext.encode_server_name(name)) == name
    assert ext.decode_server_name(ext.encode_server_name(name.upper() + ".")) == name


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


_OPAQUE_EXTENSIONS = st.lists(
    st.tuples(
        st.one_of(st.integers(0x1000, 0x9FFF), st.sampled_from([0x0A0A, 0x5A5A, 0xFF01])),
        st.binary(max_size=30),
    ),
    max_size=5,
    unique_by=lambda pair: pair[0],
)


@FUZZ
@given(
    random=st.binary(min_size=32, max_size=32),
    session_id=st.binary(max_size=32),
    suites=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=10).map(tuple),
    extensions=_OPAQUE_EXTENSIONS,
    block=st.booleans(),
    version=st.integers(0, 0xFFFF),
)
def test_built_client_hellos_round_trip(
    random: bytes,
    session_id: bytes,
    suites: tuple[int, ...],
    extensions: list[tuple[int, bytes]],
    block: bool,
    version: int,
) -> None:
    hello = ClientHello(
        random, session_id, suites, extensions, version, b"\x00", block or bool(extensions)
    )
    data = hello.serialize()
    parsed = parse_message(data)
    assert parsed == hello and parsed.serialize() == data


@FUZZ
@given(
    random=st.binary(min_size=32, max_size=32),
    session_id=st.binary(max_size=32),
    suite=st.integers(0, 0xFFFF),
    extensions=_OPAQUE_EXTENSIONS,
    block=st.booleans(),
)
def test_built_pre_tls13_server_hellos_round_trip(
    random: bytes, session_id: bytes, suite: int, extensions: list[tuple[int, bytes]], block: bool
) -> None:
    # Without supported_versions the block is framed only, so any extension survives.
    hello = ServerHello(
        random, session_id, suite, extensions, extensions_block=block or bool(extensions)
    )
    data = hello.serialize()
    parsed = parse_message(data)
    assert parsed == hello and parsed.serialize() == data
