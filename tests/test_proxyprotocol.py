"""PROXY protocol v1/v2: the spec's examples, exact encodings, strict parsing, fuzzing."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
import trio
import trio.testing
from certs import Issued, make_leaf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.proxyprotocol import (
    TLV,
    V2_SIGNATURE,
    IncompleteHeader,
    ProxyProtocolError,
    SSLClientFlags,
    SSLInfo,
    TLVType,
    certificate_common_name,
    certificate_key_alg,
    certificate_sig_alg,
    crc32c,
    encode_v1,
    encode_v2,
    parse,
    parse_v1,
    parse_v2,
    receive_header,
    tls_tlvs,
    tlvs_for_handshake,
)

# --- version 1 ------------------------------------------------------------------------------


def test_v1_spec_example_line() -> None:
    # proxy-protocol.txt §2.1: the example before an HTTP request.
    stream = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n"
    assert encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443)) == stream[:47]
    header = parse_v1(stream)
    assert header.version == 1 and header.command == "PROXY"
    assert header.family == socket.AF_INET and header.transport == "stream"
    assert header.source == ("192.168.0.1", 56324)
    assert header.destination == ("192.168.0.11", 443)
    assert stream[header.length :] == b"GET / HTTP/1.1\r\n"


def test_v1_maximum_lengths_from_spec() -> None:
    v4 = encode_v1(("255.255.255.255", 65535), ("255.255.255.255", 65535))
    assert len(v4) == 56
    full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    v6_line = f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode()
    assert len(v6_line) == 104
    header = parse_v1(v6_line)
    assert header.source == (full, 65535) and header.family == socket.AF_INET6
    assert parse_v1(b"PROXY UNKNOWN\r\n").length == 15
    worst = f"PROXY UNKNOWN {full} {full} 65535 65535\r\n".encode()
    assert len(worst) == 107
    unknown = parse_v1(worst)
    assert unknown.command == "LOCAL" and unknown.source is None and unknown.length == 107


def test_v1_ipv6_is_compressed_canonically() -> None:
    line = encode_v1(("2001:db8::1", 1234, 0, 0), ("2001:db8::2", 443, 0, 0))
    assert line == b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 443\r\n"


def test_v1_mixed_families_map_ipv4_into_ipv6() -> None:
    line = encode_v1(("10.0.0.1", 1), ("2001:db8::2", 443))
    assert line == b"PROXY TCP6 ::ffff:a00:1 2001:db8::2 1 443\r\n"
    # Both sides v4-mapped (dual-stack listener): present plain IPv4.
    mapped = encode_v1(("::ffff:10.0.0.1", 1), ("::ffff:10.0.0.2", 2))
    assert mapped == b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n"


def test_v1_unknown_for_non_inet() -> None:
    assert encode_v1("/run/sock", "/run/other") == b"PROXY UNKNOWN\r\n"
    assert encode_v1(None, None) == b"PROXY UNKNOWN\r\n"


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n",  # bare LF
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\r\n",  # stray CR
        b"PROXY TCP4 192.168.0.01 192.168.0.11 56324 443\r\n",  # heading zero
        b"PROXY TCP4 192.168.0.1 192.168.0.11 056324 443\r\n",  # heading zero port
        b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",  # port range
        b"PROXY TCP4 256.168.0.1 192.168.0.11 1 443\r\n",  # octet range
        b"PROXY TCP4 ::1 ::1 1 443\r\n",  # family mismatch
        b"PROXY TCP6 1.2.3.4 1.2.3.4 1 443\r\n",
        b"PROXY TCP6 fe80::1%eth0 ::1 1 443\r\n",  # zone ids are not addresses
        b"PROXY TCP4  192.168.0.1 192.168.0.11 1 443\r\n",  # two spaces
        b"PROXY TCP4 192.168.0.1 192.168.0.11 1 443 \r\n",  # trailing space
        b"PROXY TCP4 192.168.0.1 192.168.0.11 1\r\n",  # missing field
        b"PROXY UDP4 192.168.0.1 192.168.0.11 1 443\r\n",  # unknown protocol
        b"PROXY tcp4 192.168.0.1 192.168.0.11 1 443\r\n",  # case matters
        b"PROXY TCP4 192.168.0.1 192.168.0.11 +1 443\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 \xd9\xa1 443\r\n",  # non-ASCII digit
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 443" + b" " * 80 + b"\r\n",  # over 107 bytes
        b"PROXYTCP4 1.2.3.4 1.2.3.4 1 2\r\n",
        b"GET / HTTP/1.1\r\n",
    ],
)
def test_v1_rejects_malformed_lines(line: bytes) -> None:
    with pytest.raises(ProxyProtocolError) as info:
        parse_v1(line)
    assert not isinstance(info.value, IncompleteHeader)
    with pytest.raises(ProxyProtocolError):
        parse(line)


def test_v1_incomplete_line_waits_for_more() -> None:
    full = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    for cut in range(len(full)):
        assert parse(full[:cut]) is None, cut
        if cut >= 6:
            with pytest.raises(IncompleteHeader):
                parse_v1(full[:cut])
    with pytest.raises(ProxyProtocolError):
        parse(b"PROXY TCP4 " + b"1" * 120)


# --- version 2 ------------------------------------------------------------------------------


def test_v2_ipv4_exact_bytes() -> None:
    header = encode_v2(("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert header == (
        V2_SIGNATURE
        + b"\x21\x11\x00\x0c"  # v2 PROXY, TCP over IPv4, 12 address bytes
        + bytes([192, 168, 0, 1, 192, 168, 0, 11])
        + struct.pack("!HH", 56324, 443)
    )
    parsed = parse_v2(header + b"payload")
    assert parsed.source == ("192.168.0.1", 56324)
    assert parsed.destination == ("192.168.0.11", 443)
    assert parsed.length == 28 and parsed.transport == "stream"


def test_v2_ipv6_and_unix_and_dgram_family_bytes() -> None:
    v6 = encode_v2(("2001:db8::1", 1), ("2001:db8::2", 2))
    assert v6[12:16] == b"\x21\x21\x00\x24" and len(v6) == 16 + 36
    udp = encode_v2(("10.0.0.1", 1), ("10.0.0.2", 2), transport="dgram")
    assert udp[13] == 0x12
    assert parse_v2(udp).transport == "dgram"
    unix = encode_v2("/run/client.sock", "\0abstract")
    assert unix[12:16] == b"\x21\x31\x00\xd8" and len(unix) == 16 + 216
    parsed = parse_v2(unix)
    assert parsed.family == socket.AF_UNIX
    assert parsed.source == "/run/client.sock" and parsed.destination == "\0abstract"


def test_v2_local_command_for_health_checks() -> None:
    local = encode_v2(None, None, command="LOCAL")
    assert local == V2_SIGNATURE + b"\x20\x00\x00\x00"
    parsed = parse_v2(local)
    assert parsed.command == "LOCAL" and parsed.source is None and parsed.length == 16
    # Receivers must honour the length even for LOCAL (spec §2.2): skip an address block.
    with_addresses = V2_SIGNATURE + b"\x20\x11\x00\x0c" + bytes(12) + b"rest"
    parsed = parse_v2(with_addresses)
    assert parsed.command == "LOCAL" and parsed.source is None and parsed.length == 28
    short = V2_SIGNATURE + b"\x20\x11\x00\x04" + bytes(4)
    assert parse_v2(short).length == 20


def test_v2_unspec_family_for_unknown_addresses() -> None:
    header = encode_v2(None, ("1.2.3.4", 5))
    assert header[12:16] == b"\x21\x00\x00\x00"
    parsed = parse_v2(header)
    assert parsed.family == socket.AF_UNSPEC and parsed.source is None


def test_crc32c_reference_vectors() -> None:
    # RFC 3720 §B.4 / the common check value for CRC-32C.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43


def test_v2_checksum_round_trip_and_detects_corruption() -> None:
    header = encode_v2(("10.0.0.1", 1000), ("10.0.0.2", 443), tls_tlvs(alpn="h2"), checksum=True)
    parsed = parse_v2(header)
    assert parsed.crc32c_verified and parsed.alpn == b"h2"
    crc_tlv = header[-7:]
    assert crc_tlv[:3] == b"\x03\x00\x04"
    zeroed = header[:-4] + b"\0\0\0\0"
    assert struct.unpack("!I", header[-4:])[0] == crc32c(zeroed)
    corrupted = bytearray(header)
    corrupted[20] ^= 0x01  # flip a bit of the source address
    with pytest.raises(ProxyProtocolError, match="CRC32C"):
        parse_v2(bytes(corrupted))
    with pytest.raises(ProxyProtocolError):
        encode_v2(("10.0.0.1", 1), ("10.0.0.2", 2), [TLV(TLVType.CRC32C, bytes(4))])


def test_v2_tls_tlvs_encoding_and_decoding() -> None:
    ssl = SSLInfo(
        client=SSLClientFlags.CLIENT_SSL | SSLClientFlags.CLIENT_CERT_CONN,
        verify=0,
        version="TLSv1.3",
        cn="client.example",
        cipher="TLS_AES_256_GCM_SHA384",
        sig_alg="ecdsa-with-SHA256",
        key_alg="EC256",
        group="X25519MLKEM768",
        sig_scheme="ecdsa_secp256r1_sha256",
        client_cert=b"\x30\x03\x02\x01\x00",
    )
    tlvs = tls_tlvs(
        alpn="http/1.1", authority="www.example.com", ssl=ssl, early_data=True, unique_id=b"id-1"
    )
    header = encode_v2(("2001:db8::1", 40000), ("2001:db8::443", 443), tlvs)
    body = header[16 + 36 :]
    assert body.startswith(b"\x01\x00\x08http/1.1\x02\x00\x0fwww.example.com")
    ssl_at = body.index(b"\x20")
    ssl_value_length = struct.unpack_from("!H", body, ssl_at + 1)[0]
    ssl_value = body[ssl_at + 3 : ssl_at + 3 + ssl_value_length]
    assert ssl_value[:5] == b"\x03\x00\x00\x00\x00"  # client bits, verify=0
    assert b"\x21\x00\x07TLSv1.3" in ssl_value
    assert body.endswith(b"\xe0\x00\x01\x01")  # our early-data TLV, flag 0x01
    parsed = parse_v2(header)
    assert parsed.alpn == b"http/1.1"
    assert parsed.authority == "www.example.com"
    assert parsed.unique_id == b"id-1"
    assert parsed.early_data is True
    assert parsed.ssl == ssl


def test_v2_no_early_data_tlv_unless_flagged() -> None:
    header = encode_v2(("10.0.0.1", 1), ("10.0.0.2", 2), tls_tlvs(early_data=False))
    assert len(header) == 28
    assert parse_v2(header).early_data is False


def test_v2_unknown_tlvs_are_kept_and_noop_ignored() -> None:
    tlvs = [TLV(0xE5, b"custom"), TLV(TLVType.NOOP, b"\0\0"), TLV(0xF0, b"")]
    parsed = parse_v2(encode_v2(("10.0.0.1", 1), ("10.0.0.2", 2), tlvs))
    assert parsed.extra == {0xE5: b"custom", 0xF0: b""}
    assert parsed.tlvs == tuple(tlvs)


def _v2(fam: int, body: bytes, ver_cmd: int = 0x21) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", ver_cmd, fam, len(body)) + body


@pytest.mark.parametrize(
    "header",
    [
        _v2(0x11, bytes(12), ver_cmd=0x11),  # version 1 in the binary format
        _v2(0x11, bytes(12), ver_cmd=0x22),  # unassigned command
        _v2(0x41, bytes(12)),  # unknown family
        _v2(0x13, bytes(12)),  # unknown transport
        _v2(0x10, bytes(12)),  # AF_INET with UNSPEC transport
        _v2(0x11, bytes(8)),  # short address block for PROXY
        _v2(0x11, bytes(12) + b"\x01\x00"),  # truncated TLV header
        _v2(0x11, bytes(12) + b"\x01\x00\x05h2"),  # TLV overruns
        _v2(0x11, bytes(12) + b"\x02\x00\x02\xff\xfe"),  # AUTHORITY not UTF-8
        _v2(0x11, bytes(12) + b"\x01\x00\x00"),  # empty ALPN
        _v2(0x11, bytes(12) + b"\x20\x00\x03\x01\x00\x00"),  # SSL TLV too short
        _v2(0x11, bytes(12) + b"\x20\x00\x08\x01\x00\x00\x00\x00\x21\x00\x05"),  # bad sub-TLV
        _v2(0x11, bytes(12) + b"\x03\x00\x02\x00\x00"),  # CRC32C wrong size
        _v2(0x11, bytes(12) + b"\x03\x00\x04\x00\x00\x00\x00"),  # CRC32C mismatch
        _v2(0x11, bytes(12) + b"\x05\x00\x81" + bytes(129)),  # UNIQUE_ID > 128
        _v2(0x11, bytes(12) + b"\xe0\x00\x02\x01\x00"),  # early-data TLV size
        _v2(0x11, bytes(12) + b"\x01\x00\x02h2\x01\x00\x02h2"),  # duplicate ALPN
        b"\r\n\r\n\x00\r\nQUIX\n" + bytes(4),  # broken signature
    ],
)
def test_v2_rejects_malformed_headers(header: bytes) -> None:
    with pytest.raises(ProxyProtocolError) as info:
        parse_v2(header)
    assert not isinstance(info.value, IncompleteHeader)
    with pytest.raises(ProxyProtocolError):
        parse(header)


def test_v2_incomplete_header_waits_for_more() -> None:
    full = encode_v2(("10.0.0.1", 1), ("10.0.0.2", 2), tls_tlvs(alpn="h2"))
    for cut in range(len(full)):
        assert parse(full[:cut]) is None, cut
        with pytest.raises(IncompleteHeader):
            parse_v2(full[:cut])
    # A bad version byte is rejected before the rest of the fixed header arrives.
    with pytest.raises(ProxyProtocolError):
        parse(V2_SIGNATURE + b"\x31")


def test_parse_rejects_other_protocols_immediately() -> None:
    for data in (b"\x16\x03\x01\x02\x00", b"GET / HTTP/1.1\r\n", b"\r\n\r\nX"):
        with pytest.raises(ProxyProtocolError):
            parse(data)


def test_encoder_rejects_bad_input() -> None:
    with pytest.raises(ProxyProtocolError):
        encode_v2(("10.0.0.1", 70000), ("10.0.0.2", 2))
    with pytest.raises(ProxyProtocolError):
        encode_v2(("not-an-ip", 1), ("10.0.0.2", 2))
    with pytest.raises(ProxyProtocolError):
        encode_v2("/x" * 60, "/y")
    with pytest.raises(ProxyProtocolError):
        encode_v2(("10.0.0.1", 1), "/y")
    with pytest.raises(ProxyProtocolError):
        encode_v2(("10.0.0.1", 1), ("10.0.0.2", 2), [TLV(0xE1, bytes(70000))])
    with pytest.raises(ProxyProtocolError):
        encode_v2(("10.0.0.1", 1), ("10.0.0.2", 2), [TLV(0xE1, bytes(65000))] * 2)
    with pytest.raises(ProxyProtocolError):
        tls_tlvs(unique_id=bytes(129))
    with pytest.raises(ProxyProtocolError):
        encode_v2(None, None, command="BOGUS")


# --- streams --------------------------------------------------------------------------------


def test_receive_header_from_a_byte_at_a_time_stream() -> None:
    header = encode_v2(("10.0.0.1", 1), ("10.0.0.2", 2), tls_tlvs(authority="a.example"))

    async def main() -> None:
        send, receive = trio.testing.memory_stream_one_way_pair()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:

                async def sender() -> None:
                    for byte in header + b"hello":
                        await send.send_all(bytes([byte]))
                    await send.aclose()

                nursery.start_soon(sender)
                parsed, rest = await receive_header(receive, max_chunk=1)
                assert parsed.authority == "a.example"
                following = bytearray(rest)
                while chunk := await receive.receive_some(10):
                    following += chunk
                assert following == b"hello"

    trio.run(main)


def test_receive_header_reports_eof_and_garbage() -> None:
    async def feed(data: bytes) -> None:
        send, receive = trio.testing.memory_stream_one_way_pair()
        await send.send_all(data)
        await send.aclose()
        with trio.fail_after(5):
            await receive_header(receive)

    with pytest.raises(ProxyProtocolError, match="closed"):
        trio.run(feed, b"PROXY TCP4 1.2.3.4")
    with pytest.raises(ProxyProtocolError):
        trio.run(feed, b"\x16\x03\x01")


# --- property-based -------------------------------------------------------------------------

ports = st.integers(0, 65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
unix_paths = st.text(
    st.characters(min_codepoint=1, max_codepoint=0x7E), min_size=1, max_size=100
).map(lambda s: "/" + s)
custom_tlvs = st.lists(st.builds(TLV, st.integers(0xE1, 0xEF), st.binary(max_size=64)), max_size=4)
tls_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_categories=("Cs",)),
    min_size=1,
    max_size=40,
)


@st.composite
def inet_pairs(draw: st.DrawFn) -> tuple[tuple[str, int], tuple[str, int]]:
    addresses = draw(st.sampled_from([v4, v6]))
    return (draw(addresses), draw(ports)), (draw(addresses), draw(ports))


@settings(deadline=None)  # shared 2-CPU runners: timing is not what is tested
@given(inet_pairs())
def test_v1_round_trip(pair: tuple[tuple[str, int], tuple[str, int]]) -> None:
    src, dst = pair
    line = encode_v1(src, dst)
    header = parse(line + b"rest")
    assert header is not None and header.length == len(line)
    assert header.source is not None and header.destination is not None
    assert _same_endpoint(header.source, src) and _same_endpoint(header.destination, dst)


def _same_endpoint(parsed: object, original: tuple[str, int]) -> bool:
    """Equal up to the IPv4-mapped normalisation the encoder performs."""
    assert isinstance(parsed, tuple)
    host, port = parsed
    ip = ipaddress.ip_address(host)
    want = ipaddress.ip_address(original[0])
    unmapped = [
        a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped else a
        for a in (ip, want)
    ]
    return port == original[1] and unmapped[0] == unmapped[1]


@settings(deadline=None)
@given(
    inet_pairs(),
    st.one_of(st.none(), st.sampled_from(["h2", "http/1.1"])),
    st.one_of(st.none(), tls_text),
    st.booleans(),
    st.booleans(),
    custom_tlvs,
)
def test_v2_round_trip(
    pair: tuple[tuple[str, int], tuple[str, int]],
    alpn: str | None,
    authority: str | None,
    early: bool,
    checksum: bool,
    extra: list[TLV],
) -> None:
    src, dst = pair
    ssl = SSLInfo(version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", cn=authority)
    tlvs = tls_tlvs(alpn=alpn, authority=authority, ssl=ssl, early_data=early) + extra
    header = encode_v2(src, dst, tlvs, checksum=checksum)
    parsed = parse(header + b"\x16\x03\x01")
    assert parsed is not None and parsed.length == len(header)
    assert parsed.source is not None and _same_endpoint(parsed.source, src)
    assert parsed.destination is not None and _same_endpoint(parsed.destination, dst)
    assert parsed.alpn == (alpn.encode() if alpn else None)
    assert parsed.authority == authority
    assert parsed.ssl == ssl
    assert parsed.early_data is early
    assert parsed.crc32c_verified is checksum
    assert [t for t in parsed.tlvs if 0xE1 <= t.type <= 0xEF] == extra


@settings(deadline=None)
@given(unix_paths, unix_paths)
def test_v2_unix_round_trip(src: str, dst: str) -> None:
    parsed = parse_v2(encode_v2(src, dst))
    assert (parsed.source, parsed.destination) == (src, dst)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_parsers_raise_only_proxy_protocol_error_on_random_input(data: bytes) -> None:
    for parser in (parse, parse_v1, parse_v2):
        try:
            parser(data)
        except ProxyProtocolError:
            pass


@st.composite
def mutated_headers(draw: st.DrawFn) -> bytes:
    """Valid headers with a few bytes changed, truncated or extended: near misses."""
    pair = draw(inet_pairs())
    tlvs = tls_tlvs(
        alpn=draw(st.sampled_from(["h2", "x"])),
        authority=draw(tls_text),
        ssl=SSLInfo(version="TLSv1.3", client_cert=draw(st.binary(max_size=8))),
        early_data=draw(st.booleans()),
    )
    version = draw(st.sampled_from([1, 2]))
    base = bytearray(encode_v1(*pair) if version == 1 else encode_v2(*pair, tlvs))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(base) - 1))
        base[position] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(base)))
    return bytes(base[:cut]) + draw(st.binary(max_size=8))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_headers())
def test_parsers_raise_only_proxy_protocol_error_on_near_misses(data: bytes) -> None:
    for parser in (parse, parse_v1, parse_v2):
        try:
            result = parser(data)
        except ProxyProtocolError:
            continue
        if result is not None:
            assert 0 < result.length <= len(data)


# --- from a completed handshake -------------------------------------------------------------


def _handshake(**changes: object) -> object:
    from tls13.events import HandshakeComplete

    fields: dict[str, object] = dict(
        version="TLSv1.3",
        cipher_suite="TLS_AES_128_GCM_SHA256",
        group="X25519MLKEM768",
        signature_scheme="ecdsa_secp256r1_sha256",
        server_name="www.example.com",
        alpn_protocol="h2",
        hello_retry=False,
        resumed=False,
        early_data_accepted=False,
    )
    fields.update(changes)
    return HandshakeComplete(**fields)  # type: ignore[arg-type]


def test_tlvs_for_handshake_without_client_certificate(localhost_leaf: Issued) -> None:
    info = _handshake()
    header = encode_v2(
        ("192.0.2.1", 5000),
        ("192.0.2.2", 443),
        tlvs_for_handshake(info, server_certificate=localhost_leaf.cert),  # type: ignore[arg-type]
    )
    parsed = parse_v2(header)
    assert parsed.alpn == b"h2" and parsed.authority == "www.example.com"
    assert parsed.early_data is False
    assert parsed.ssl == SSLInfo(
        client=SSLClientFlags.CLIENT_SSL,
        verify=1,  # no client certificate: non-zero (spec §2.2.6)
        version="TLSv1.3",
        cipher="TLS_AES_128_GCM_SHA256",
        sig_alg="ecdsa-with-SHA256",
        key_alg="EC256",
        group="X25519MLKEM768",
        sig_scheme="ecdsa_secp256r1_sha256",
    )


def test_tlvs_for_handshake_with_client_certificate(test_ca: Issued) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    client = make_leaf(test_ca, ("alice.example",), client=True)
    fresh = _handshake(peer_certificates=(client.cert,), alpn_protocol=None, server_name=None)
    tlvs = tlvs_for_handshake(fresh, early_data=True, include_client_certificate=True)  # type: ignore[arg-type]
    parsed = parse_v2(encode_v2(("192.0.2.1", 5000), ("192.0.2.2", 443), tlvs))
    assert parsed.ssl is not None and parsed.alpn is None and parsed.authority is None
    assert parsed.ssl.client == 0x07 and parsed.ssl.verify == 0
    assert parsed.ssl.cn == "alice.example"
    assert parsed.ssl.client_cert == client.cert.public_bytes(Encoding.DER)
    assert parsed.early_data is True

    from tls13.events import ClientIdentity

    identity = ClientIdentity("CN=alice.example", ("alice.example",), (client.cert,), "ed25519")
    resumed = _handshake(resumed=True, client_identity=identity)
    parsed = parse_v2(encode_v2(None, None, tlvs_for_handshake(resumed)))  # type: ignore[arg-type]
    assert parsed.ssl is not None
    assert parsed.ssl.client == SSLClientFlags.CLIENT_SSL | SSLClientFlags.CLIENT_CERT_SESS
    assert parsed.ssl.cn == "alice.example" and parsed.ssl.client_cert is None


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("rsa2048", "RSA2048"), ("p384", "EC384"), ("ed25519", "ED25519"), ("ed448", "ED448")],
)
def test_certificate_key_alg_names(kind: str, expected: str, test_ca: Issued) -> None:
    leaf = make_leaf(test_ca, ("k.example",), kind=kind)
    assert certificate_key_alg(leaf.cert) == expected
    assert certificate_sig_alg(leaf.cert) == "ecdsa-with-SHA256"  # signed by the P-256 CA
    assert certificate_common_name(leaf.cert) == "k.example"
