"""Handshake messages: every message of the example traces round-trips byte for byte,
field values match the traces, and each rule a parser enforces raises the right alert."""

from __future__ import annotations

from dataclasses import replace

import pytest
from cryptography import x509
from msg_helpers import trace_message, trace_messages, truncated_client_hellos

from tls13 import extensions as ext
from tls13.alerts import AlertDescription, TLSError
from tls13.extensions import ExtensionType
from tls13.messages import (
    HELLO_RETRY_REQUEST_RANDOM,
    Certificate,
    CertificateEntry,
    CertificateRequest,
    CertificateVerify,
    ClientHello,
    EncryptedExtensions,
    EndOfEarlyData,
    Finished,
    HandshakeType,
    KeyUpdate,
    NewSessionTicket,
    ServerHello,
    message_hash,
    parse_message,
)

TRACE = trace_messages()
SIMPLE = "Simple 1-RTT"
RESUMED = "Resumed 0-RTT"
HRR = "HelloRetryRequest"
CLIENT_AUTH = "Client Authentication"
COMPAT = "Compatibility Mode"
SV13 = (ExtensionType.supported_versions, b"\x03\x04")


def _alert(excinfo: pytest.ExceptionInfo[TLSError]) -> AlertDescription:
    return excinfo.value.alert


def test_trace_covers_every_message_kind() -> None:
    names = {name for _, name, _ in TRACE}
    assert names == {
        "ClientHello",
        "ServerHello",
        "EncryptedExtensions",
        "CertificateRequest",
        "Certificate",
        "CertificateVerify",
        "Finished",
        "NewSessionTicket",
        "EndOfEarlyData",
    }
    sections = {section.split()[0] for section, _, _ in TRACE}
    assert sections == {"Simple", "Resumed", "HelloRetryRequest", "Client", "Compatibility"}


@pytest.mark.parametrize(
    "section,name,data", TRACE, ids=[f"{s.split()[0]}-{n}-{i}" for i, (s, n, _) in enumerate(TRACE)]
)
def test_trace_message_round_trips(section: str, name: str, data: bytes) -> None:
    message = parse_message(data)
    expected_class = ServerHello if name == "ServerHello" else globals()[name]
    assert type(message) is expected_class
    assert message.serialize() == data


def test_client_hello_fields_of_simple_handshake() -> None:
    ch = parse_message(trace_message(SIMPLE, "ClientHello"))
    assert isinstance(ch, ClientHello)
    assert ch.legacy_version == 0x0303
    assert ch.random == bytes.fromhex(
        "6660261ff947cea49cce6cfad687f457cf1b14531ba14131a0e8f309a1d0b9c4"
    )
    assert ch.legacy_session_id == b""
    assert ch.cipher_suites == (0x1301, 0x1303, 0x1302)
    assert ch.server_name() == "server"
    assert ch.supported_versions() == [0x0304]
    assert ch.supported_groups() == [
        0x001D,
        0x0017,
        0x0018,
        0x0019,
        0x0100,
        0x0101,
        0x0102,
        0x0103,
        0x0104,
    ]
    shares = ch.key_shares()
    assert shares is not None and [s.group for s in shares] == [0x001D]
    assert shares[0].key_exchange == bytes.fromhex(
        "4cfdfcd178b784bf328cae793b136f2aedce005ff183d7bb1495207236647037"
    )
    assert ch.psk_key_exchange_modes() == [ext.PSK_DHE_KE]
    assert ch.record_size_limit() == 0x4001
    assert ch.signature_algorithms() is not None and 0x0804 in ch.signature_algorithms()  # type: ignore[operator]
    assert ch.pre_shared_key() is None and ch.binders_offset() is None
    assert not ch.early_data()
    # TLS 1.2 leftovers (renegotiation_info, session_ticket) are unknown to us and kept.
    assert 0xFF01 in ch.extension_types() and 35 in ch.extension_types()


def test_resumption_client_hello_binders() -> None:
    pairs = truncated_client_hellos()
    assert pairs, "the resumption trace prints the binder input"
    for prefix, full in pairs:
        ch = parse_message(full)
        assert isinstance(ch, ClientHello)
        assert ch.truncated() == prefix
        assert ch.binders_offset() == len(prefix)
        offered = ch.pre_shared_key()
        assert offered is not None and len(offered.identities) == 1
        assert ch.early_data()
        # Replacing the binders keeps the prefix and re-creates the message.
        original = offered.binders
        zeroed = ch.with_binders([bytes(len(b)) for b in original])
        assert zeroed.truncated() == prefix
        assert zeroed.serialize() != full
        assert zeroed.with_binders(original).serialize() == full


def test_binder_helpers_need_pre_shared_key_last() -> None:
    psk = ext.encode_offered_psks(ext.OfferedPsks((ext.PskIdentity(b"id", 1),), (bytes(32),)))
    hello = ClientHello(bytes(32), b"", (0x1301,), [(ExtensionType.pre_shared_key, psk), SV13])
    with pytest.raises(ValueError):
        hello.binders_offset()
    with pytest.raises(ValueError):
        hello.with_binders([bytes(32)])


def test_with_binders_refuses_a_client_hello_without_psk() -> None:
    ch = parse_message(trace_message(SIMPLE, "ClientHello"))
    assert isinstance(ch, ClientHello)
    with pytest.raises(ValueError):
        ch.with_binders([bytes(32)])
    with pytest.raises(ValueError):
        ch.truncated()


def test_server_hello_fields() -> None:
    sh = parse_message(trace_message(SIMPLE, "ServerHello"))
    assert isinstance(sh, ServerHello)
    assert not sh.is_hello_retry_request
    assert sh.cipher_suite == 0x1301
    assert sh.selected_version() == 0x0304
    share = sh.key_share()
    assert share is not None and share.group == 0x001D and len(share.key_exchange) == 32
    assert sh.selected_group() is None and sh.cookie() is None
    resumed = parse_message(trace_message(RESUMED, "ServerHello"))
    assert isinstance(resumed, ServerHello) and resumed.selected_identity() == 0


def test_hello_retry_request_detection() -> None:
    hrr = parse_message(trace_message(HRR, "ServerHello", 0))
    assert isinstance(hrr, ServerHello)
    assert hrr.is_hello_retry_request and hrr.random == HELLO_RETRY_REQUEST_RANDOM
    assert hrr.selected_group() == 0x0017
    assert hrr.key_share() is None
    cookie = hrr.cookie()
    assert cookie is not None and len(cookie) == 0x72
    ch2 = parse_message(trace_message(HRR, "ClientHello", 1))
    assert isinstance(ch2, ClientHello) and ch2.cookie() == cookie
    shares = ch2.key_shares()
    assert shares is not None and [s.group for s in shares] == [0x0017]


def test_hrr_rejects_a_key_share_entry_and_sh_a_bare_group() -> None:
    # In an HRR key_share is a bare group; a full entry there is a decode error,
    # and the bare group form in a real ServerHello is one too.
    hrr = ServerHello(
        HELLO_RETRY_REQUEST_RANDOM,
        b"",
        0x1301,
        [SV13, (ExtensionType.key_share, b"\x00\x1d\x00\x01\x01")],
    )
    with pytest.raises(TLSError) as err:
        parse_message(hrr.serialize())
    assert _alert(err) is AlertDescription.decode_error
    sh = ServerHello(bytes(32), b"", 0x1301, [SV13, (ExtensionType.key_share, b"\x00\x1d")])
    with pytest.raises(TLSError) as err:
        parse_message(sh.serialize())
    assert _alert(err) is AlertDescription.decode_error


def test_cookie_not_allowed_in_server_hello() -> None:
    sh = ServerHello(bytes(32), b"", 0x1301, [SV13, (ExtensionType.cookie, b"\x00\x01\x00")])
    with pytest.raises(TLSError) as err:
        parse_message(sh.serialize())
    assert _alert(err) is AlertDescription.illegal_parameter


def test_pre_tls13_server_hello_is_framed_not_judged() -> None:
    # No supported_versions: TLS 1.2 extensions and no extensions at all both parse,
    # so the client can answer protocol_version or spot a downgrade sentinel.
    bare = ServerHello(bytes(32), b"", 0xC02F, [], extensions_block=False)
    assert parse_message(bare.serialize()) == bare
    assert len(bare.serialize()) == 4 + 2 + 32 + 1 + 2 + 1
    empty_block = ServerHello(bytes(32), b"", 0xC02F, [])
    assert parse_message(empty_block.serialize()) == empty_block
    assert empty_block.serialize() != bare.serialize()
    tls12 = ServerHello(bytes(32), b"", 0xC02F, [(0xFF01, b"\x00"), (11, b"\x01\x00")])
    parsed = parse_message(tls12.serialize())
    assert isinstance(parsed, ServerHello) and parsed.selected_version() is None
    assert parsed.serialize() == tls12.serialize()
    with pytest.raises(TLSError) as err:
        parse_message(ServerHello(bytes(32), b"", 0x1301, [SV13, (0xFF01, b"\x00")]).serialize())
    assert _alert(err) is AlertDescription.unsupported_extension


def test_encrypted_extensions_fields() -> None:
    ee = parse_message(trace_message(SIMPLE, "EncryptedExtensions"))
    assert isinstance(ee, EncryptedExtensions)
    assert ee.server_name_acknowledged()
    assert ee.record_size_limit() == 0x4001
    assert ee.supported_groups() is not None
    assert ee.alpn_protocol() is None and not ee.early_data()
    resumed = parse_message(trace_message(RESUMED, "EncryptedExtensions"))
    assert isinstance(resumed, EncryptedExtensions) and resumed.early_data()


def test_certificate_and_verify_fields() -> None:
    cert = parse_message(trace_message(SIMPLE, "Certificate"))
    assert isinstance(cert, Certificate)
    assert cert.certificate_request_context == b""
    assert len(cert.certificate_list) == 1
    entry = cert.certificate_list[0]
    parsed = x509.load_der_x509_certificate(entry.cert_data)
    assert parsed.subject.rfc4514_string() == "CN=rsa"
    assert entry.ocsp_response() is None
    cv = parse_message(trace_message(SIMPLE, "CertificateVerify"))
    assert isinstance(cv, CertificateVerify) and cv.algorithm == 0x0804
    assert len(cv.signature) == 128


def test_certificate_request_fields() -> None:
    cr = parse_message(trace_message(CLIENT_AUTH, "CertificateRequest"))
    assert isinstance(cr, CertificateRequest)
    assert cr.certificate_request_context == b""
    assert 0x0403 in cr.signature_algorithms()
    assert cr.certificate_authorities() is None


def test_certificate_request_without_signature_algorithms() -> None:
    cr = CertificateRequest(b"", [(ExtensionType.signature_algorithms_cert, b"\x00\x02\x04\x03")])
    with pytest.raises(TLSError) as err:
        parse_message(cr.serialize())
    assert _alert(err) is AlertDescription.missing_extension


def test_certificate_entry_with_ocsp_status() -> None:
    status = ext.encode_certificate_status(b"\x30\x03\x0a\x01\x00")
    cert = Certificate(
        b"\x01", (CertificateEntry(b"\x30\x00", [(ExtensionType.status_request, status)]),)
    )
    parsed = parse_message(cert.serialize())
    assert parsed == cert
    assert isinstance(parsed, Certificate)
    assert parsed.certificate_list[0].ocsp_response() == b"\x30\x03\x0a\x01\x00"


def test_certificate_entry_rejects_misplaced_extension() -> None:
    cert = Certificate(b"", (CertificateEntry(b"\x30\x00", [(ExtensionType.key_share, b"")]),))
    with pytest.raises(TLSError) as err:
        parse_message(cert.serialize())
    assert _alert(err) is AlertDescription.illegal_parameter


def test_new_session_ticket_fields() -> None:
    nst = parse_message(trace_message(SIMPLE, "NewSessionTicket"))
    assert isinstance(nst, NewSessionTicket)
    assert nst.ticket_lifetime == 0x1E
    assert nst.ticket_nonce == b"\x00\x00"
    assert nst.max_early_data_size() == 0x400
    assert len(nst.ticket) == 0xB2


def test_finished_and_end_of_early_data() -> None:
    fin = parse_message(trace_message(SIMPLE, "Finished"))
    assert isinstance(fin, Finished) and len(fin.verify_data) == 32
    assert parse_message(b"\x05\x00\x00\x00") == EndOfEarlyData()
    with pytest.raises(TLSError) as err:
        EndOfEarlyData.parse(b"\x00")
    assert _alert(err) is AlertDescription.decode_error


@pytest.mark.parametrize("value", [0, 1])
def test_key_update_values(value: int) -> None:
    message = bytes([24, 0, 0, 1, value])
    parsed = parse_message(message)
    assert parsed == KeyUpdate(bool(value))
    assert parsed.serialize() == message


@pytest.mark.parametrize("value", [2, 255])
def test_key_update_illegal_value(value: int) -> None:
    with pytest.raises(TLSError) as err:
        parse_message(bytes([24, 0, 0, 1, value]))
    assert _alert(err) is AlertDescription.illegal_parameter


def test_key_update_wrong_length() -> None:
    with pytest.raises(TLSError) as err:
        KeyUpdate.parse(b"\x00\x00")
    assert _alert(err) is AlertDescription.decode_error


def test_client_hello_keeps_any_compression_methods() -> None:
    # §4.1.2: the server judges compression after the version (a TLS 1.2 hello with
    # deflate is protocol_version, a TLS 1.3 one illegal_parameter), so parse keeps it.
    ch = parse_message(trace_message(SIMPLE, "ClientHello"))
    assert isinstance(ch, ClientHello)
    for methods in (b"\x01\x00", b"\x01", b"\x00\x00"):
        raw = replace(ch, legacy_compression_methods=methods).serialize()
        parsed = parse_message(raw)
        assert isinstance(parsed, ClientHello) and parsed.legacy_compression_methods == methods
        assert parsed.serialize() == raw


def test_client_hello_needs_a_compression_method() -> None:
    ch = parse_message(trace_message(SIMPLE, "ClientHello"))
    assert isinstance(ch, ClientHello)
    with pytest.raises(TLSError) as err:
        parse_message(replace(ch, legacy_compression_methods=b"").serialize())
    assert _alert(err) is AlertDescription.decode_error


def test_client_hello_session_id_over_32_bytes() -> None:
    ch = ClientHello(
        bytes(32), bytes(33), (0x1301,), [(ExtensionType.supported_versions, b"\x02\x03\x04")]
    )
    with pytest.raises(TLSError) as err:
        parse_message(ch.serialize())
    assert _alert(err) is AlertDescription.decode_error


@pytest.mark.parametrize("block", [True, False])
def test_client_hello_without_extensions_parses(block: bool) -> None:
    # A pre-1.3 ClientHello: the state machine answers protocol_version.
    ch = ClientHello(bytes(32), b"", (0x002F,), [], extensions_block=block)
    parsed = parse_message(ch.serialize())
    assert parsed == ch and parsed.serialize() == ch.serialize()
    assert isinstance(parsed, ClientHello) and parsed.supported_versions() is None


def test_server_hello_compression_must_be_zero() -> None:
    sh = ServerHello(bytes(32), b"", 0x1301, [], legacy_compression_method=1)
    with pytest.raises(TLSError) as err:
        parse_message(sh.serialize())
    assert _alert(err) is AlertDescription.illegal_parameter


def test_parse_message_header_checks() -> None:
    with pytest.raises(TLSError) as err:
        parse_message(b"\x14\x00")
    assert _alert(err) is AlertDescription.decode_error
    with pytest.raises(TLSError) as err:
        parse_message(b"\x14\x00\x00\x05abc")
    assert _alert(err) is AlertDescription.decode_error
    with pytest.raises(TLSError) as err:
        parse_message(b"\x03\x00\x00\x00")
    assert _alert(err) is AlertDescription.unexpected_message
    with pytest.raises(TLSError) as err:
        parse_message(b"\xfe\x00\x00\x00")
    assert _alert(err) is AlertDescription.unexpected_message


def test_message_hash_layout() -> None:
    digest = bytes(range(32))
    assert message_hash(digest) == b"\xfe\x00\x00\x20" + digest
    assert HandshakeType.message_hash == 254


def test_trailing_bytes_are_decode_errors() -> None:
    for _, _, data in TRACE:
        if data[0] == HandshakeType.finished:
            continue  # Finished is all verify_data: its length is checked against the hash
        extended = data[:1] + (len(data) - 3).to_bytes(3, "big") + data[4:] + b"\x00"
        with pytest.raises(TLSError) as err:
            parse_message(extended)
        assert _alert(err) is AlertDescription.decode_error
