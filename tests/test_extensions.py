"""Extension framing (§4.2 placement, duplicates, pre_shared_key last) and every body codec."""

from __future__ import annotations

import pytest

from tls13 import extensions as ext
from tls13.alerts import AlertDescription, TLSError
from tls13.codec import Reader, Writer
from tls13.extensions import ExtContext, ExtensionType, KeyShareEntry, parse_extensions


def _block(*pairs: tuple[int, bytes]) -> Reader:
    w = Writer()
    ext.write_extensions(w, pairs)
    return Reader(w.getvalue())


def _fails(alert: AlertDescription, func: object, *args: object) -> None:
    with pytest.raises(TLSError) as err:
        func(*args)  # type: ignore[operator]
    assert err.value.alert is alert, err.value


# --- framing ------------------------------------------------------------------


def test_parse_keeps_order_and_raw_bodies() -> None:
    pairs = [
        (ExtensionType.supported_versions, ext.encode_supported_versions_ch([0x0304])),
        (0x1234, b"opaque unknown"),
        (ExtensionType.padding, b"\x00" * 5),
    ]
    assert parse_extensions(_block(*pairs), ExtContext.CH) == pairs


def test_duplicate_extension_is_illegal_parameter() -> None:
    body = ext.encode_supported_versions_ch([0x0304])
    reader = _block(
        (ExtensionType.supported_versions, body), (ExtensionType.supported_versions, body)
    )
    _fails(AlertDescription.illegal_parameter, parse_extensions, reader, ExtContext.CH)


def test_duplicate_unknown_extension_is_illegal_parameter() -> None:
    reader = _block((0x5555, b""), (0x5555, b""))
    _fails(AlertDescription.illegal_parameter, parse_extensions, reader, ExtContext.CH)


@pytest.mark.parametrize(
    "ext_type,context",
    [
        (ExtensionType.padding, ExtContext.EE),
        (ExtensionType.key_share, ExtContext.EE),
        (ExtensionType.cookie, ExtContext.SH),
        (ExtensionType.supported_versions, ExtContext.EE),
        (ExtensionType.early_data, ExtContext.SH),
        (ExtensionType.pre_shared_key, ExtContext.HRR),
        (ExtensionType.signature_algorithms, ExtContext.EE),
        (ExtensionType.post_handshake_auth, ExtContext.CR),
        (ExtensionType.server_name, ExtContext.NST),
        (ExtensionType.oid_filters, ExtContext.CH),
        (ExtensionType.supported_groups, ExtContext.CT),
    ],
)
def test_misplaced_extension_is_illegal_parameter(ext_type: int, context: ExtContext) -> None:
    _fails(AlertDescription.illegal_parameter, parse_extensions, _block((ext_type, b"")), context)


@pytest.mark.parametrize("context", [ExtContext.CH, ExtContext.CR, ExtContext.NST])
def test_unknown_extensions_are_ignored_where_the_rfc_says(context: ExtContext) -> None:
    assert parse_extensions(_block((0x7777, b"x")), context) == [(0x7777, b"x")]


@pytest.mark.parametrize("context", [ExtContext.SH, ExtContext.HRR, ExtContext.EE, ExtContext.CT])
def test_unknown_extension_in_server_answer_is_unsupported(context: ExtContext) -> None:
    _fails(
        AlertDescription.unsupported_extension,
        parse_extensions,
        _block((0x7777, b"")),
        context,
    )


def test_grease_values_are_tolerated_in_client_hello() -> None:
    greases = [0x0A0A, 0x1A1A, 0xFAFA]
    assert all(ext.is_grease(v) for v in greases)
    assert not ext.is_grease(0x0A1A) and not ext.is_grease(0x1301)
    pairs = [(g, b"") for g in greases[:2]] + [(greases[2], b"\x00")]
    assert parse_extensions(_block(*pairs), ExtContext.CH) == pairs
    # GREASE inside lists is just another value.
    assert ext.decode_uint16_list(ext.encode_uint16_list([0x2A2A, 0x001D])) == [0x2A2A, 0x001D]


def test_pre_shared_key_must_be_last_in_client_hello() -> None:
    psk = ext.encode_offered_psks(ext.OfferedPsks((ext.PskIdentity(b"id", 7),), (bytes(32),)))
    ok = parse_extensions(
        _block((ExtensionType.early_data, b""), (ExtensionType.pre_shared_key, psk)), ExtContext.CH
    )
    assert ok[-1][0] == ExtensionType.pre_shared_key
    _fails(
        AlertDescription.illegal_parameter,
        parse_extensions,
        _block((ExtensionType.pre_shared_key, psk), (ExtensionType.early_data, b"")),
        ExtContext.CH,
    )


def test_block_minimum_length_and_truncation() -> None:
    _fails(AlertDescription.decode_error, parse_extensions, Reader(b"\x00\x00"), ExtContext.CR, 2)
    _fails(
        AlertDescription.decode_error, parse_extensions, Reader(b"\x00\x05\x00\x00"), ExtContext.CH
    )
    _fails(
        AlertDescription.decode_error,
        parse_extensions,
        Reader(b"\x00\x04\x00\x00\x00\x01"),
        ExtContext.CH,
    )


def test_check_offered() -> None:
    ext.check_offered([(ExtensionType.server_name, b"")], [ExtensionType.server_name])
    ext.check_offered([(ExtensionType.cookie, b"\x00\x01\x00")], [])
    _fails(
        AlertDescription.unsupported_extension,
        ext.check_offered,
        [(ExtensionType.application_layer_protocol_negotiation, b"")],
        [ExtensionType.server_name],
    )


# --- server_name ------------------------------------------------------------------


def test_server_name_round_trip_and_normalization() -> None:
    assert ext.decode_server_name(ext.encode_server_name("example.com")) == "example.com"
    assert ext.decode_server_name(ext.encode_server_name("Example.COM.")) == "example.com"
    assert ext.decode_server_name(ext.encode_server_name("_srv.a-b.example")) == "_srv.a-b.example"


def _sni(*entries: tuple[int, bytes]) -> bytes:
    w = Writer()
    with w.prefixed(2):
        for name_type, name in entries:
            w.uint8(name_type)
            w.vector(2, name)
    return w.getvalue()


@pytest.mark.parametrize(
    "body,alert",
    [
        (_sni((0, b"")), AlertDescription.decode_error),
        (b"\x00\x00", AlertDescription.decode_error),
        (_sni((0, b"a.example"), (0, b"b.example")), AlertDescription.decode_error),
        (_sni((1, b"a.example")), AlertDescription.decode_error),
        (_sni((0, b".")), AlertDescription.illegal_parameter),
        (_sni((0, b"a..b")), AlertDescription.illegal_parameter),
        (_sni((0, b"a.b..")), AlertDescription.illegal_parameter),
        (_sni((0, "bücher.example".encode())), AlertDescription.illegal_parameter),
        (_sni((0, b"a\x00b")), AlertDescription.illegal_parameter),
        (_sni((0, b"with space")), AlertDescription.illegal_parameter),
        (_sni((0, b"x" * 64 + b".example")), AlertDescription.illegal_parameter),
        (_sni((0, b"a." * 127 + b"ab")), AlertDescription.illegal_parameter),
        # An IP literal is only ignored when it is well formed.
        (_sni((0, b"192.0.2.1"), (0, b"a.example")), AlertDescription.decode_error),
        (_sni((0, b"::g")), AlertDescription.illegal_parameter),
    ],
)
def test_server_name_rejections(body: bytes, alert: AlertDescription) -> None:
    _fails(alert, ext.decode_server_name, body)


@pytest.mark.parametrize(
    "literal", [b"192.0.2.1", b"192.0.2.1.", b"::1", b"2001:DB8::7", b"[::1]", b"fe80::1%eth0"]
)
def test_ip_literal_server_name_counts_as_absent(literal: bytes) -> None:
    # RFC 6066 §3: clients must not send IP literals; servers (OpenSSL, nginx) ignore them.
    assert ext.decode_server_name(_sni((0, literal))) is None
    assert parse_extensions(_block((ExtensionType.server_name, _sni((0, literal)))), ExtContext.CH)
    with pytest.raises(TLSError):
        ext.encode_server_name(literal.decode())  # but we never send one


def test_ip_literal_detection() -> None:
    assert ext.is_ip_literal(b"10.0.0.1") and ext.is_ip_literal(b"[2001:db8::1]")
    for name in (b"10.0.0", b"a.example", b"cafe.beef", b"", b"1.2.3.4.5", b"[a.example]"):
        assert not ext.is_ip_literal(name), name


def test_server_name_in_encrypted_extensions_must_be_empty() -> None:
    assert parse_extensions(_block((ExtensionType.server_name, b"")), ExtContext.EE)
    _fails(
        AlertDescription.decode_error,
        parse_extensions,
        _block((ExtensionType.server_name, ext.encode_server_name("a.example"))),
        ExtContext.EE,
    )


def test_encode_server_name_refuses_bad_names() -> None:
    with pytest.raises(TLSError):
        ext.encode_server_name("bad name")
    with pytest.raises(UnicodeEncodeError):
        ext.encode_server_name("bücher.example")


# --- versions, groups, schemes -------------------------------------------------------


def test_supported_versions() -> None:
    body = ext.encode_supported_versions_ch([0x0304, 0x0303, 0x7A7A])
    assert ext.decode_supported_versions_ch(body) == [0x0304, 0x0303, 0x7A7A]
    _fails(AlertDescription.decode_error, ext.decode_supported_versions_ch, b"\x00")
    _fails(AlertDescription.decode_error, ext.decode_supported_versions_ch, b"\x03\x03\x04\x03")
    assert ext.decode_selected_version(b"\x03\x04") == 0x0304
    _fails(AlertDescription.decode_error, ext.decode_selected_version, b"\x03\x04\x00")


def test_uint16_lists() -> None:
    assert ext.decode_uint16_list(ext.encode_uint16_list([0x0403, 0x0804])) == [0x0403, 0x0804]
    _fails(AlertDescription.decode_error, ext.decode_uint16_list, b"\x00\x00")
    _fails(AlertDescription.decode_error, ext.decode_uint16_list, b"\x00\x03\x04\x03\x08")
    _fails(AlertDescription.decode_error, ext.decode_uint16_list, b"\x00\x02\x04\x03\x00")


# --- key_share ---------------------------------------------------------------------


def test_key_share_client_and_server_forms() -> None:
    entries = [KeyShareEntry(0x001D, bytes(32)), KeyShareEntry(0x0017, b"\x04" + bytes(64))]
    assert ext.decode_key_share_ch(ext.encode_key_share_ch(entries)) == entries
    assert ext.decode_key_share_ch(ext.encode_key_share_ch([])) == []
    assert ext.decode_key_share_sh(ext.encode_key_share_sh(entries[0])) == entries[0]
    assert ext.decode_selected_group(ext.encode_uint16_body(0x0017)) == 0x0017


def test_key_share_duplicate_group_and_empty_share() -> None:
    dup = ext.encode_key_share_ch([KeyShareEntry(0x001D, b"a"), KeyShareEntry(0x001D, b"b")])
    _fails(AlertDescription.illegal_parameter, ext.decode_key_share_ch, dup)
    _fails(AlertDescription.decode_error, ext.decode_key_share_ch, b"\x00\x04\x00\x1d\x00\x00")
    _fails(AlertDescription.decode_error, ext.decode_key_share_sh, b"\x00\x1d\x00\x00")


# --- ALPN ---------------------------------------------------------------------------


def test_alpn() -> None:
    body = ext.encode_alpn(["h2", "http/1.1", "\xff\x00"])
    assert body == b"\x00\x0f\x02h2\x08http/1.1\x02\xff\x00"
    assert ext.decode_alpn(body) == ["h2", "http/1.1", "\xff\x00"]
    assert ext.decode_alpn_selected(ext.encode_alpn(["h2"])) == "h2"
    _fails(AlertDescription.decode_error, ext.decode_alpn_selected, body)
    _fails(AlertDescription.decode_error, ext.decode_alpn, b"\x00\x00")
    _fails(AlertDescription.decode_error, ext.decode_alpn, b"\x00\x03\x02h2\x00")
    _fails(AlertDescription.decode_error, ext.decode_alpn, b"\x00\x02\x00\x00")
    with pytest.raises(ValueError):
        ext.encode_alpn([])
    with pytest.raises(ValueError):
        ext.encode_alpn([""])


# --- small bodies -------------------------------------------------------------------


def test_cookie() -> None:
    assert ext.decode_cookie(ext.encode_cookie(b"state")) == b"state"
    _fails(AlertDescription.decode_error, ext.decode_cookie, b"\x00\x00")


@pytest.mark.parametrize("limit", [64, 16385, 65535])
def test_record_size_limit_accepted(limit: int) -> None:
    assert ext.decode_record_size_limit(ext.encode_record_size_limit(limit)) == limit


@pytest.mark.parametrize("limit", [0, 1, 63])
def test_record_size_limit_below_64(limit: int) -> None:
    _fails(
        AlertDescription.illegal_parameter, ext.decode_record_size_limit, limit.to_bytes(2, "big")
    )
    _fails(
        AlertDescription.illegal_parameter,
        parse_extensions,
        _block((ExtensionType.record_size_limit, limit.to_bytes(2, "big"))),
        ExtContext.EE,
    )


def test_psk_modes() -> None:
    assert ext.decode_psk_modes(ext.encode_psk_modes([ext.PSK_DHE_KE, ext.PSK_KE])) == [1, 0]
    _fails(AlertDescription.decode_error, ext.decode_psk_modes, b"\x00")


def test_pre_shared_key_offered() -> None:
    offered = ext.OfferedPsks(
        (ext.PskIdentity(b"ticket-1", 1000), ext.PskIdentity(b"t2", 0xFFFFFFFF)),
        (bytes(32), bytes(48)),
    )
    body = ext.encode_offered_psks(offered)
    assert ext.decode_offered_psks(body) == offered
    assert body.endswith(ext.encode_binders(offered.binders))


def test_pre_shared_key_rejections() -> None:
    mismatched = ext.encode_offered_psks(
        ext.OfferedPsks((ext.PskIdentity(b"a", 0), ext.PskIdentity(b"b", 0)), (bytes(32),))
    )
    _fails(AlertDescription.illegal_parameter, ext.decode_offered_psks, mismatched)
    short_binder = ext.encode_offered_psks(
        ext.OfferedPsks((ext.PskIdentity(b"a", 0),), (bytes(31),))
    )
    _fails(AlertDescription.decode_error, ext.decode_offered_psks, short_binder)
    empty_identity = ext.encode_offered_psks(
        ext.OfferedPsks((ext.PskIdentity(b"", 0),), (bytes(32),))
    )
    _fails(AlertDescription.decode_error, ext.decode_offered_psks, empty_identity)
    assert ext.decode_selected_identity(b"\x00\x01") == 1


def test_early_data_forms() -> None:
    assert ext.decode_max_early_data(ext.encode_max_early_data(16384)) == 16384
    _fails(AlertDescription.decode_error, ext.decode_max_early_data, b"\x00\x00")
    _fails(
        AlertDescription.decode_error,
        parse_extensions,
        _block((ExtensionType.early_data, b"\x00")),
        ExtContext.CH,
    )
    _fails(
        AlertDescription.decode_error,
        parse_extensions,
        _block((ExtensionType.post_handshake_auth, b"\x00")),
        ExtContext.CH,
    )


def test_status_request() -> None:
    request = ext.decode_status_request(ext.encode_status_request_ocsp())
    assert request == ext.StatusRequest(ext.STATUS_TYPE_OCSP, (), b"")
    with_ids = b"\x01\x00\x05\x00\x03abc\x00\x02\x30\x00"
    assert ext.decode_status_request(with_ids).responder_ids == (b"abc",)
    # Other status types are opaque to us but not an error.
    assert ext.decode_status_request(b"\x02xyz").status_type == 2
    _fails(AlertDescription.decode_error, ext.decode_status_request, b"\x01\x00\x00")
    status = ext.encode_certificate_status(b"\x30\x00")
    assert ext.decode_certificate_status(status) == b"\x30\x00"
    _fails(AlertDescription.decode_error, ext.decode_certificate_status, b"\x02\x00\x00\x01\x00")
    _fails(AlertDescription.decode_error, ext.decode_certificate_status, b"\x01\x00\x00\x00")


def test_certificate_authorities() -> None:
    names = [b"\x30\x01\x00", b"\x30\x00"]
    assert ext.decode_certificate_authorities(ext.encode_certificate_authorities(names)) == names
    _fails(AlertDescription.decode_error, ext.decode_certificate_authorities, b"\x00\x00")
    _fails(AlertDescription.decode_error, ext.decode_certificate_authorities, b"\x00\x02\x00\x00")


def test_status_request_in_certificate_request_is_empty() -> None:
    empty = _block((ExtensionType.status_request, b""))
    assert parse_extensions(empty, ExtContext.CR) == [(ExtensionType.status_request, b"")]
    _fails(
        AlertDescription.decode_error,
        parse_extensions,
        _block((ExtensionType.status_request, ext.encode_status_request_ocsp())),
        ExtContext.CR,
    )
