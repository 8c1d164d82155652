"""Section 6 "Client Authentication" of the example traces, replayed byte for byte.

The trace's server (ECDSA P-256 certificate) requests a client certificate and the
client answers with an RSA one; neither private key is printed.  What the trace
leaves to chance or keeps secret is injected, and every injection checks what our
engine computed before handing back the trace's value:

* randoms and ephemeral x25519 keys: the printed ones (``random``,
  ``key_share_factory``);
* private keys: a stand-in object that carries only the certificate's public key
  (enough for ``CertificateChain`` and for verifying), never asked to sign;
* signatures (ECDSA and RSA-PSS are randomized): a scheme whose ``sign`` first
  *verifies* the trace's signature over the CertificateVerify input our engine
  built, then returns it, so a transcript differing by one bit fails;
* the clock: inside the certificates' 2016-2026 validity;
* trust in the client certificate: the trace's certificate (1024-bit RSA, no
  authorityKeyIdentifier) is rejected by the web PKI profile of ``verify_chain``,
  so the server's verifier is replaced by one accepting exactly that self-signed
  certificate, after checking its own signature and its validity at our clock.

Two engine behaviours differ from the trace (NSS) and are asserted precisely:

* Server: our CertificateRequest adds ``certificate_authorities`` naming the
  ``client_ca`` subjects (unless ``send_ca_names=False``), and ``ServerConfig`` insists on
  ``client_ca`` for client authentication; the trace's request has only
  ``signature_algorithms``.  The byte-exact test sets ``send_ca_names=False``, and
  :func:`test_certificate_request_names_client_ca_otherwise_same_flight` pins
  that extension as the only difference in the server's flight.
* Client: our ClientHello orders ``supported_versions`` second, sends no
  ``renegotiation_info`` (a TLS 1.2 mechanism, RFC 5746) and adds
  ``post_handshake_auth`` when it holds a certificate; every other byte matches.
  The client test checks that, then continues from the trace's ClientHello.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, NoReturn

import pytest
from core_helpers import CLIENT_AUTH, load_trace
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from engine_helpers import ScriptedRandom, split_records, trace_records

from tls13 import events
from tls13 import server as server_module
from tls13.alerts import AlertDescription, TLSError
from tls13.certificates import CertificateChain, CertificateStore
from tls13.client import ClientConnection
from tls13.config import ClientConfig, ServerConfig
from tls13.extensions import ExtensionType, encode_certificate_authorities
from tls13.groups import BY_NAME as GROUP_CODES
from tls13.groups import GROUPS
from tls13.keyschedule import export, finished_verify_data
from tls13.messages import (
    Certificate,
    CertificateRequest,
    CertificateVerify,
    ClientHello,
    EncryptedExtensions,
    HandshakeReassembler,
    HandshakeType,
)
from tls13.record import RecordLayer
from tls13.server import ServerConnection
from tls13.signatures import SCHEMES, certificate_verify_input
from tls13.suites import SUITES
from tls13.transcript import transcript_hash

ECDSA_SECP256R1_SHA256 = 0x0403
RSA_PSS_RSAE_SHA256 = 0x0804
AES_128_GCM_SHA256 = SUITES[0x1301]
RENEGOTIATION_INFO = 0xFF01  # RFC 5746: TLS 1.2 and older only; the trace's client sends it

# Inside both certificates' validity (2016-07-30 .. 2026-07-30): the draft's date.
TRACE_TIME = datetime.datetime(2018, 9, 27, tzinfo=datetime.timezone.utc).timestamp()


# --------------------------------------------------------------------------- trace access


def _trace() -> dict[str, bytes]:
    return load_trace(CLIENT_AUTH)


def _message(role: str, name: str) -> bytes:
    """A full handshake message (with its 4-byte header) as the trace constructs it."""
    return _trace()[f"{role} construct a {name} handshake message: {name}"]


def _records(role: str) -> list[bytes]:
    return [r.record for r in trace_records(CLIENT_AUTH) if r.role == role]


def _leaf(role: str) -> x509.Certificate:
    entries = Certificate.parse(_message(role, "Certificate")[4:]).certificate_list
    assert len(entries) == 1
    return x509.load_der_x509_certificate(entries[0].cert_data)


def _signature(role: str) -> tuple[int, bytes]:
    verify = CertificateVerify.parse(_message(role, "CertificateVerify")[4:])
    return verify.algorithm, verify.signature


def _ephemeral(role: str) -> bytes:
    return _trace()[f"{role} create an ephemeral x25519 key pair: private key"]


def _secret(label: str) -> bytes:
    return _trace()[f'server derive secret "{label}": expanded']


def _client_random() -> bytes:
    return ClientHello.parse(_message("client", "ClientHello")[4:]).random


def _server_random() -> bytes:
    return _message("server", "ServerHello")[6:38]


# --------------------------------------------------------------------------- injections


class _PublicOnly:
    """The unpublished private key of a trace certificate: it knows the public half
    (so ``CertificateChain`` accepts it and replayed signatures can be checked) and
    refuses every private operation, which the replaying signer never needs."""

    def __init__(self, public: Any) -> None:
        self._public = public

    def public_key(self) -> Any:
        return self._public

    @property
    def key_size(self) -> int:
        return int(self._public.key_size)

    def _unavailable(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AssertionError("the trace does not publish this private key")

    sign = exchange = decrypt = private_numbers = private_bytes = _unavailable

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: dict[Any, Any]) -> Any:
        return self


class _PublicOnlyEcKey(_PublicOnly, ec.EllipticCurvePrivateKey):
    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve  # type: ignore[no-any-return]


class _PublicOnlyRsaKey(_PublicOnly, rsa.RSAPrivateKey):
    pass


def _trace_chain(role: str) -> CertificateChain:
    leaf = _leaf(role)
    public = leaf.public_key()
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if isinstance(public, ec.EllipticCurvePublicKey):
        key = _PublicOnlyEcKey(public)
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        key = _PublicOnlyRsaKey(public)
    return CertificateChain((leaf,), key)


@dataclass
class _ReplaySigner:
    """Stands in for a signature scheme: verify the trace's signature over the input
    our engine built, then return it.  ``signed`` keeps every input it was given."""

    real: Any
    signature: bytes
    check: bool = True

    def __post_init__(self) -> None:
        self.signed: list[bytes] = []

    @property
    def name(self) -> str:
        return str(self.real.name)

    def sign(self, private_key: Any, data: bytes) -> bytes:
        self.signed.append(data)
        if self.check:
            self.real.verify(private_key.public_key(), self.signature, data)
        return self.signature

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.real, attr)


def _replay(monkeypatch: pytest.MonkeyPatch, role: str, check: bool = True) -> _ReplaySigner:
    code, signature = _signature(role)
    signer = _ReplaySigner(SCHEMES[code], signature, check)
    monkeypatch.setitem(SCHEMES, code, signer)
    return signer


def _trust_trace_client(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Replace the server's chain verification by acceptance of exactly the trace's
    self-signed client certificate; returns the times it was asked about."""
    expected = _leaf("client")
    asked: list[float] = []

    def verify(
        certificates: Sequence[x509.Certificate],
        roots: Sequence[x509.Certificate] | None,
        now: float,
        *,
        server_name: str | None = None,
        client: bool = False,
    ) -> list[x509.Certificate]:
        assert client and server_name is None
        asked.append(now)
        if list(certificates) != [expected]:
            raise TLSError(AlertDescription.unknown_ca, "not the trace's client certificate")
        when = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        if not expected.not_valid_before_utc <= when <= expected.not_valid_after_utc:
            raise TLSError(AlertDescription.certificate_expired, "outside the trace's validity")
        expected.verify_directly_issued_by(expected)  # its own signature must hold
        return [expected]

    monkeypatch.setattr(server_module, "verify_chain", verify)
    return asked


# --------------------------------------------------------------------------- server side


def _server_config(keylog: list[str] | None = None) -> ServerConfig:
    """Our server as the trace's: its groups (listed in its EncryptedExtensions), its
    CertificateRequest schemes, random, ephemeral key and certificate."""
    encrypted = EncryptedExtensions.parse(_message("server", "EncryptedExtensions")[4:])
    request = CertificateRequest.parse(_message("server", "CertificateRequest")[4:])
    groups = encrypted.supported_groups()
    assert groups is not None
    private = _ephemeral("server")
    chain = _trace_chain("server")
    return ServerConfig(
        certificates=CertificateStore([chain], chain),
        groups=tuple(groups),
        signature_schemes=tuple(request.signature_algorithms()),
        client_auth="required",
        client_ca=(_leaf("client"),),
        random=ScriptedRandom([_server_random()]),
        key_share_factory=lambda code: GROUPS[code].private_from_bytes(private),
        cookie_secret=bytes(32),
        clock=lambda: TRACE_TIME,
        keylog=keylog.append if keylog is not None else None,
    )


def _without_ca_names(config: ServerConfig) -> ServerConfig:
    """The trace's server names no CAs: ours must not either (RFC 8446 §4.2.4 optional)."""
    return replace(config, send_ca_names=False)


def test_client_auth_server_records_match_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    server_signer = _replay(monkeypatch, "server")
    asked = _trust_trace_client(monkeypatch)
    keylog: list[str] = []
    conn = ServerConnection(_without_ca_names(_server_config(keylog)))
    client = _records("client")
    server = _records("server")
    assert len(client) == 3 and len(server) == 3  # hello, second flight, close_notify

    hello_events = conn.receive_data(client[0])
    assert hello_events == [events.ClientHelloReceived("server", (), False)]
    # ServerHello, then EE + CertificateRequest + Certificate + CV + Finished in one record.
    assert split_records(conn.data_to_send()) == server[:2]
    assert len(server_signer.signed) == 1

    done = conn.receive_data(client[1])
    assert [type(e) for e in done] == [events.HandshakeComplete]
    info = done[0]
    assert isinstance(info, events.HandshakeComplete)
    client_cert = _leaf("client")
    assert info.peer_certificates == (client_cert,)
    assert info.client_identity == events.ClientIdentity(
        "CN=client", (), (client_cert,), "rsa_pss_rsae_sha256"
    )
    assert (info.cipher_suite, info.group, info.signature_scheme) == (
        "TLS_AES_128_GCM_SHA256",
        "x25519",
        "ecdsa_secp256r1_sha256",
    )
    assert info.server_name == "server" and not info.resumed and not info.hello_retry
    assert asked == [TRACE_TIME]
    assert conn.data_to_send() == b""  # the trace's server issues no ticket

    assert conn.receive_data(client[2]) == [events.ConnectionClosed(clean=True)]
    conn.close()
    assert conn.data_to_send() == server[2]  # close_notify, byte for byte

    exporter = _secret("tls13 exp master")
    assert conn.export_keying_material(b"EXPERIMENTAL test", b"", 32) == export(
        AES_128_GCM_SHA256.hash, exporter, b"EXPERIMENTAL test", b"", 32
    )
    random_hex = _client_random().hex()
    assert keylog == [
        f"{label} {random_hex} {_secret(name).hex()}"
        for label, name in (
            ("CLIENT_HANDSHAKE_TRAFFIC_SECRET", "tls13 c hs traffic"),
            ("SERVER_HANDSHAKE_TRAFFIC_SECRET", "tls13 s hs traffic"),
            ("CLIENT_TRAFFIC_SECRET_0", "tls13 c ap traffic"),
            ("SERVER_TRAFFIC_SECRET_0", "tls13 s ap traffic"),
            ("EXPORTER_SECRET", "tls13 exp master"),
        )
    ]


def test_client_auth_server_rejects_altered_client_signature(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same second flight with one CertificateVerify bit flipped (re-encrypted
    under the trace's keys) is refused: the replay really exercises verification."""
    _replay(monkeypatch, "server")
    _trust_trace_client(monkeypatch)
    conn = ServerConnection(_without_ca_names(_server_config()))
    conn.receive_data(_records("client")[0])
    conn.data_to_send()

    verify = bytearray(_message("client", "CertificateVerify"))
    verify[-1] ^= 0x01
    flight = _message("client", "Certificate") + bytes(verify) + _message("client", "Finished")
    layer = RecordLayer()
    layer.set_write_key(AES_128_GCM_SHA256, _secret("tls13 c hs traffic"))
    layer.write(22, flight)
    with pytest.raises(TLSError) as caught:
        conn.receive_data(layer.take_output())
    assert caught.value.alert == AlertDescription.decrypt_error


def test_client_auth_server_requires_a_client_certificate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """client_auth="required": an empty client Certificate ends the handshake with
    certificate_required (rfc8446bis §4.4.2.4), before any CertificateVerify."""
    _replay(monkeypatch, "server")
    _trust_trace_client(monkeypatch)
    conn = ServerConnection(_without_ca_names(_server_config()))
    conn.receive_data(_records("client")[0])
    conn.data_to_send()
    layer = RecordLayer()
    layer.set_write_key(AES_128_GCM_SHA256, _secret("tls13 c hs traffic"))
    layer.write(22, Certificate(b"", ()).serialize())
    with pytest.raises(TLSError) as caught:
        conn.receive_data(layer.take_output())
    assert caught.value.alert == AlertDescription.certificate_required


def _open_flight(secret: bytes, record: bytes) -> list[tuple[int, bytes]]:
    """Decrypt one handshake record and split it into (type, full message) pairs."""
    layer = RecordLayer()
    layer.set_read_key(AES_128_GCM_SHA256, secret)
    layer.receive(record)
    opened = layer.next_record()
    assert opened is not None and opened[0] == 22
    return HandshakeReassembler(65536).feed(opened[1])


def test_certificate_request_names_client_ca_otherwise_same_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With client_ca left in place our CertificateRequest is the trace's plus
    certificate_authorities (the client CA's subject); every other message is the
    trace's or, for CertificateVerify and Finished, correct for that transcript."""
    server_signer = _replay(monkeypatch, "server", check=False)  # transcript differs
    conn = ServerConnection(_server_config())
    hello = _records("client")[0]
    conn.receive_data(hello)
    ours = split_records(conn.data_to_send())
    server = _records("server")
    assert ours[0] == server[0]  # same ServerHello, so the same handshake secrets

    flight = _open_flight(_secret("tls13 s hs traffic"), ours[1])
    assert [t for t, _ in flight] == [
        HandshakeType.encrypted_extensions,
        HandshakeType.certificate_request,
        HandshakeType.certificate,
        HandshakeType.certificate_verify,
        HandshakeType.finished,
    ]
    (_, ee), (_, cr), (_, certificate), (_, cv), (_, fin) = flight
    assert ee == _message("server", "EncryptedExtensions")
    assert certificate == _message("server", "Certificate")
    trace_request = CertificateRequest.parse(_message("server", "CertificateRequest")[4:])
    ca_names = encode_certificate_authorities([_leaf("client").subject.public_bytes()])
    assert CertificateRequest.parse(cr[4:]).extensions == [
        *trace_request.extensions,
        (ExtensionType.certificate_authorities, ca_names),
    ]

    client_hello, server_hello = hello[5:], server[0][5:]
    digest = transcript_hash(
        AES_128_GCM_SHA256.hash, client_hello, server_hello, ee, cr, certificate
    )
    assert server_signer.signed == [certificate_verify_input(True, digest)]
    assert cv == CertificateVerify(*_signature("server")).serialize()
    finished_digest = transcript_hash(
        AES_128_GCM_SHA256.hash, client_hello, server_hello, ee, cr, certificate, cv
    )
    expected = finished_verify_data(
        AES_128_GCM_SHA256.hash, _secret("tls13 s hs traffic"), finished_digest
    )
    assert fin[4:] == expected


# --------------------------------------------------------------------------- client side


def _client_config() -> ClientConfig:
    hello = ClientHello.parse(_message("client", "ClientHello")[4:])
    private = _ephemeral("client")
    groups = hello.supported_groups()
    schemes = hello.signature_algorithms()
    assert groups is not None and schemes is not None
    return ClientConfig(
        cipher_suites=hello.cipher_suites,
        groups=tuple(groups),
        key_share_groups=(GROUP_CODES["x25519"],),
        signature_schemes=tuple(schemes),
        ca_certificates=None,  # the web PKI profile rejects the trace's server certificate
        certificate=_trace_chain("client"),
        random=ScriptedRandom([hello.random]),
        key_share_factory=lambda code: GROUPS[code].private_from_bytes(private),
        clock=lambda: TRACE_TIME,
        middlebox_compat=False,  # the trace's ClientHello has an empty legacy_session_id
    )


def _replay_trace_hello(monkeypatch: pytest.MonkeyPatch) -> list[ClientHello]:
    """Check the ClientHello we build against the trace's, then send the trace's.

    Only three things may differ (see the module docstring): the position of
    supported_versions, renegotiation_info (trace only) and post_handshake_auth
    (ours only).  Returns the hellos we built."""
    trace_hello = ClientHello.parse(_message("client", "ClientHello")[4:])
    built: list[ClientHello] = []
    real_build = ClientConnection._build_hello

    def build(self: ClientConnection, session_id: bytes) -> ClientHello:
        ours = real_build(self, session_id)
        built.append(ours)
        return trace_hello

    monkeypatch.setattr(ClientConnection, "_build_hello", build)
    return built


def _assert_hello_differs_only_as_documented(ours: ClientHello) -> None:
    trace_hello = ClientHello.parse(_message("client", "ClientHello")[4:])
    assert (ours.random, ours.legacy_session_id, ours.cipher_suites) == (
        trace_hello.random,
        trace_hello.legacy_session_id,
        trace_hello.cipher_suites,
    )
    assert ours.extension(ExtensionType.post_handshake_auth) == b""  # we hold a certificate
    shared = [e for e in ours.extensions if e[0] != ExtensionType.post_handshake_auth]
    trace_shared = [e for e in trace_hello.extensions if e[0] != RENEGOTIATION_INFO]
    # The same extensions with the same bodies; only supported_versions moved (to second).
    versions = trace_hello.extension(ExtensionType.supported_versions)
    moved = [e for e in trace_shared if e[0] != ExtensionType.supported_versions]
    assert shared == [moved[0], (ExtensionType.supported_versions, versions), *moved[1:]]
    assert moved[0][0] == ExtensionType.server_name


def test_client_auth_client_records_match_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    built = _replay_trace_hello(monkeypatch)
    client_signer = _replay(monkeypatch, "client")
    client = _records("client")
    server = _records("server")
    conn = ClientConnection(_client_config(), server_name="server")

    conn.start()
    assert conn.data_to_send() == client[0]  # the trace's hello in a 0x0301 record
    assert len(built) == 1
    _assert_hello_differs_only_as_documented(built[0])

    assert conn.receive_data(server[0]) == []
    done = conn.receive_data(server[1])
    assert [type(e) for e in done] == [events.HandshakeComplete]
    info = done[0]
    assert isinstance(info, events.HandshakeComplete)
    assert info.peer_certificates == (_leaf("server"),)
    assert (info.cipher_suite, info.group, info.signature_scheme) == (
        "TLS_AES_128_GCM_SHA256",
        "x25519",
        "ecdsa_secp256r1_sha256",
    )
    # Certificate, CertificateVerify (RSA-PSS over our transcript) and Finished.
    assert conn.data_to_send() == client[1]
    assert len(client_signer.signed) == 1

    conn.close()
    assert conn.data_to_send() == client[2]
    assert conn.receive_data(server[2]) == [events.ConnectionClosed(clean=True)]
    assert conn.export_keying_material(b"EXPERIMENTAL test", b"", 32) == export(
        AES_128_GCM_SHA256.hash, _secret("tls13 exp master"), b"EXPERIMENTAL test", b"", 32
    )


def test_client_without_certificate_answers_with_an_empty_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """§4.4.2: asked for a certificate it does not have, our client sends an empty
    Certificate (no CertificateVerify) and a Finished over that transcript."""
    _replay_trace_hello(monkeypatch)
    conn = ClientConnection(replace(_client_config(), certificate=None), server_name="server")
    conn.start()
    conn.data_to_send()
    server = _records("server")
    conn.receive_data(server[0])
    conn.receive_data(server[1])

    flight = _open_flight(_secret("tls13 c hs traffic"), conn.data_to_send())
    empty = Certificate(b"", ()).serialize()
    assert flight[0] == (HandshakeType.certificate, empty)
    assert [t for t, _ in flight] == [HandshakeType.certificate, HandshakeType.finished]
    server_flight = _open_flight(_secret("tls13 s hs traffic"), server[1])
    digest = transcript_hash(
        AES_128_GCM_SHA256.hash,
        _records("client")[0][5:],
        server[0][5:],
        *(message for _, message in server_flight),
        empty,
    )
    expected = finished_verify_data(AES_128_GCM_SHA256.hash, _secret("tls13 c hs traffic"), digest)
    assert flight[1][1][4:] == expected
