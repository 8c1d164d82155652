"""The client's checks of the encrypted server flight and of post-handshake messages,
driven by a scripted server so that exactly one thing is wrong in each test."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from certs import make_ca, make_leaf
from msg_helpers import ScriptedServer, split_records

from tls13 import events
from tls13 import extensions as ext
from tls13.alerts import AlertDescription, TLSError
from tls13.certificates import CertificateChain
from tls13.client import ClientConnection, ClientState
from tls13.config import ClientConfig
from tls13.extensions import ExtensionType
from tls13.groups import BY_NAME as GROUP_CODES
from tls13.messages import (
    Certificate,
    CertificateEntry,
    CertificateRequest,
    CertificateVerify,
    EncryptedExtensions,
    Finished,
    NewSessionTicket,
)

X25519 = GROUP_CODES["x25519"]
CA = make_ca()
LEAF = make_leaf(CA, ("localhost",))
CLIENT_LEAF = make_leaf(CA, ("client.example",), client=True)
SIG_ALGS = (ExtensionType.signature_algorithms, ext.encode_uint16_list([0x0403, 0x0804]))


def _setup(alpn: tuple[str, ...] = (), **config: object) -> tuple[ClientConnection, ScriptedServer]:
    config.setdefault("ca_certificates", (CA.cert,))
    config.setdefault("key_share_groups", (X25519,))
    client = ClientConnection(
        ClientConfig(**config),  # type: ignore[arg-type]
        server_name="localhost",
        alpn_protocols=alpn,
    )
    client.start()
    hello = split_records(client.data_to_send())[0][1]
    return client, ScriptedServer(hello)


def _fails(client: ClientConnection, server: ScriptedServer, alert: AlertDescription) -> None:
    with pytest.raises(TLSError) as err:
        client.receive_data(server.output())
    assert err.value.alert is alert, err.value
    assert not err.value.sent_by_peer


def _full_flight(server: ScriptedServer, ee: list[tuple[int, bytes]] | None = None) -> None:
    server.send(EncryptedExtensions(ee or []).serialize())
    server.send_certificate(LEAF)
    server.send_finished()


def test_scripted_server_completes_a_handshake() -> None:
    client, server = _setup(alpn=("h2",))
    _full_flight(
        server,
        [(ExtensionType.application_layer_protocol_negotiation, ext.encode_alpn(["h2"]))],
    )
    evs = client.receive_data(server.output())
    assert client.state is ClientState.CONNECTED
    info = [e for e in evs if isinstance(e, events.HandshakeComplete)][0]
    assert info.alpn_protocol == "h2" and info.signature_scheme == "ecdsa_secp256r1_sha256"
    # Our second flight: CCS then one protected record (Finished), nothing more.
    assert [t for t, _ in split_records(client.data_to_send())] == [20, 23]


# --------------------------------------------------------------------- EncryptedExtensions


@pytest.mark.parametrize(
    "alpn,extension,alert",
    [
        (
            ("h2",),
            (ExtensionType.application_layer_protocol_negotiation, ext.encode_alpn(["http/1.1"])),
            AlertDescription.illegal_parameter,
        ),
        (
            (),
            (ExtensionType.application_layer_protocol_negotiation, ext.encode_alpn(["h2"])),
            AlertDescription.unsupported_extension,
        ),
        ((), (ExtensionType.early_data, b""), AlertDescription.unsupported_extension),
        ((), (ExtensionType.key_share, b""), AlertDescription.illegal_parameter),
        ((), (0x7777, b""), AlertDescription.unsupported_extension),
        ((), (ExtensionType.record_size_limit, b"\x00\x10"), AlertDescription.illegal_parameter),
    ],
)
def test_bad_encrypted_extensions(
    alpn: tuple[str, ...], extension: tuple[int, bytes], alert: AlertDescription
) -> None:
    client, server = _setup(alpn=alpn)
    server.send(EncryptedExtensions([extension]).serialize())
    _fails(client, server, alert)


def test_record_size_limit_of_the_server_is_honoured() -> None:
    client, server = _setup()
    limit = ext.encode_record_size_limit(257)  # 256 bytes of content per record
    _full_flight(server, [(ExtensionType.record_size_limit, limit)])
    client.receive_data(server.output())
    client.data_to_send()
    client.send_data(bytes(1000))
    sizes = [len(payload) for _, payload in split_records(client.data_to_send())]
    # RFC 8449 §4: TLSInnerPlaintext (256 content + 1 type byte) <= 257, plus the 16-byte tag.
    assert sizes == [257 + 16] * 3 + [1000 - 3 * 256 + 1 + 16]


# --------------------------------------------------------------------- Certificate / CV


def test_empty_server_certificate_is_decode_error() -> None:
    client, server = _setup()
    server.send(EncryptedExtensions([]).serialize())
    server.send(Certificate(b"", ()).serialize())
    _fails(client, server, AlertDescription.decode_error)


def test_certificate_with_request_context() -> None:
    client, server = _setup()
    server.send(EncryptedExtensions([]).serialize())
    server.send(Certificate(b"\x01", (CertificateEntry(b"\x30\x00"),)).serialize())
    _fails(client, server, AlertDescription.illegal_parameter)


def test_unrequested_ocsp_status() -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    client, server = _setup()
    server.send(EncryptedExtensions([]).serialize())
    status = (ExtensionType.status_request, ext.encode_certificate_status(b"\x30\x00"))
    entry = CertificateEntry(LEAF.cert.public_bytes(Encoding.DER), [status])
    server.send(Certificate(b"", (entry,)).serialize())
    _fails(client, server, AlertDescription.unsupported_extension)


def test_undecodable_certificate() -> None:
    client, server = _setup()
    server.send(EncryptedExtensions([]).serialize())
    server.send(Certificate(b"", (CertificateEntry(b"not DER"),)).serialize())
    _fails(client, server, AlertDescription.bad_certificate)


def test_untrusted_certificate() -> None:
    client, server = _setup(ca_certificates=(make_ca("other").cert,))
    server.send(EncryptedExtensions([]).serialize())
    server.send_certificate(LEAF)
    _fails(client, server, AlertDescription.unknown_ca)


def _after_certificate(
    tamper: Callable[[ScriptedServer], None],
) -> tuple[ClientConnection, ScriptedServer]:
    from cryptography.hazmat.primitives.serialization import Encoding

    client, server = _setup()
    server.send(EncryptedExtensions([]).serialize())
    server.send(
        Certificate(b"", (CertificateEntry(LEAF.cert.public_bytes(Encoding.DER)),)).serialize()
    )
    tamper(server)
    return client, server


def test_signature_scheme_not_offered() -> None:
    # We offer only RSA-PSS and Ed25519, then receive an ECDSA CertificateVerify.
    client, server = _setup(signature_schemes=(0x0804, 0x0807))
    server.send(EncryptedExtensions([]).serialize())
    server.send_certificate(LEAF)
    _fails(client, server, AlertDescription.illegal_parameter)


def test_scheme_that_does_not_fit_the_key() -> None:
    # ecdsa_secp384r1_sha384 is offered but the certificate holds a P-256 key (§4.4.3).
    client, server = _after_certificate(
        lambda s: s.send(CertificateVerify(0x0503, bytes(70)).serialize())
    )
    _fails(client, server, AlertDescription.illegal_parameter)


def test_bad_signature_is_decrypt_error() -> None:
    client, server = _after_certificate(
        lambda s: s.send(CertificateVerify(0x0403, bytes(70)).serialize())
    )
    _fails(client, server, AlertDescription.decrypt_error)


def test_finished_without_certificate_verify() -> None:
    client, server = _after_certificate(lambda s: s.send(s.finished_message()))
    _fails(client, server, AlertDescription.unexpected_message)


def test_finished_without_certificate() -> None:
    client, server = _setup()
    server.send(EncryptedExtensions([]).serialize())
    server.send(server.finished_message())
    _fails(client, server, AlertDescription.unexpected_message)


def test_wrong_finished_is_decrypt_error() -> None:
    client, server = _setup()
    server.send(EncryptedExtensions([]).serialize())
    server.send_certificate(LEAF)
    server.send(Finished(bytes(32)).serialize())
    _fails(client, server, AlertDescription.decrypt_error)


def test_short_finished_is_decrypt_error() -> None:
    client, server = _setup()
    server.send(EncryptedExtensions([]).serialize())
    server.send_certificate(LEAF)
    server.send(server.finished_message()[:-1].replace(b"\x14\x00\x00\x20", b"\x14\x00\x00\x1f", 1))
    _fails(client, server, AlertDescription.decrypt_error)


def test_certificate_request_with_context_in_handshake() -> None:
    client, server = _setup()
    server.send(EncryptedExtensions([]).serialize())
    server.send(CertificateRequest(b"\x01", [SIG_ALGS]).serialize())
    _fails(client, server, AlertDescription.illegal_parameter)


def test_certificate_request_answered_with_empty_certificate() -> None:
    client, server = _setup()
    server.send(EncryptedExtensions([]).serialize())
    server.send(CertificateRequest(b"", [SIG_ALGS]).serialize())
    server.send_certificate(LEAF)
    server.send_finished()
    client.receive_data(server.output())
    assert client.handshake_complete
    # The client flight now carries an (empty) Certificate before its Finished.
    record_types = [t for t, _ in split_records(client.data_to_send())]
    assert record_types == [20, 23]


def test_client_certificate_sent_when_requested() -> None:
    chain = CertificateChain((CLIENT_LEAF.cert,), CLIENT_LEAF.key)  # type: ignore[arg-type]
    client, server = _setup(certificate=chain)
    server.send(EncryptedExtensions([]).serialize())
    server.send(CertificateRequest(b"", [SIG_ALGS]).serialize())
    server.send_certificate(LEAF)
    server.send_finished()
    client.receive_data(server.output())
    assert client.handshake_complete


# --------------------------------------------------------------------- post-handshake


def _connected() -> tuple[ClientConnection, ScriptedServer]:
    client, server = _setup()
    _full_flight(server)
    client.receive_data(server.output())
    client.data_to_send()
    assert client.handshake_complete
    return client, server


def test_session_ticket_event() -> None:
    client, server = _connected()
    nst = NewSessionTicket(
        3600,
        12345,
        b"\x00",
        b"ticket-bytes",
        [(ExtensionType.early_data, ext.encode_max_early_data(1024))],
    )
    server.record.write(22, nst.serialize())
    evs = client.receive_data(server.output())
    assert len(evs) == 1 and isinstance(evs[0], events.NewSessionTicketReceived)
    ticket = evs[0].ticket
    assert ticket.ticket == b"ticket-bytes" and ticket.lifetime == 3600
    assert ticket.age_add == 12345 and ticket.max_early_data == 1024
    assert ticket.cipher_suite == 0x1301 and ticket.server_name == "localhost"
    assert len(ticket.psk) == 32


def test_session_ticket_with_zero_lifetime_is_dropped() -> None:
    client, server = _connected()
    server.record.write(22, NewSessionTicket(0, 1, b"", b"t").serialize())
    assert client.receive_data(server.output()) == []


def test_session_ticket_over_seven_days() -> None:
    client, server = _connected()
    server.record.write(22, NewSessionTicket(604801, 1, b"", b"t").serialize())
    _fails(client, server, AlertDescription.illegal_parameter)


def test_post_handshake_auth_not_offered() -> None:
    client, server = _connected()
    server.record.write(22, CertificateRequest(b"\x07", [SIG_ALGS]).serialize())
    _fails(client, server, AlertDescription.unexpected_message)


def test_handshake_message_after_finished_is_unexpected() -> None:
    client, server = _connected()
    server.record.write(22, EncryptedExtensions([]).serialize())
    _fails(client, server, AlertDescription.unexpected_message)


def test_our_record_size_limit_binds_the_server() -> None:
    client, server = _setup(record_size_limit=1024)
    _full_flight(server, [(ExtensionType.record_size_limit, ext.encode_record_size_limit(16385))])
    client.receive_data(server.output())
    server.record.write(23, bytes(1024))  # exactly the limit of content: fine
    assert client.receive_data(server.output()) == [events.ApplicationData(bytes(1024))]
    server.record.write(23, bytes(1025))
    _fails(client, server, AlertDescription.record_overflow)


def test_our_record_size_limit_needs_the_server_to_agree() -> None:
    # RFC 8449 §4: without the server's extension the limit is not in force.
    client, server = _setup(record_size_limit=1024)
    _full_flight(server)
    client.receive_data(server.output())
    server.record.write(23, bytes(4000))
    assert client.receive_data(server.output()) == [events.ApplicationData(bytes(4000))]
