"""Signature schemes, certificate chains, selection by name/scheme, and chain verification."""

from __future__ import annotations

import datetime
import subprocess
import time
from pathlib import Path

import pytest
from certs import Issued, make_ca, make_leaf
from core_helpers import SIMPLE_1RTT, load_trace, make_cn_only_leaf, make_intermediate
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from tls13.alerts import AlertDescription, TLSError
from tls13.certificates import CertificateChain, CertificateError, CertificateStore, verify_chain
from tls13.messages import Certificate, HandshakeType
from tls13.signatures import (
    BY_NAME,
    HANDSHAKE_SCHEMES,
    SCHEMES,
    certificate_key_kind,
    certificate_verify_input,
    check_certificate_fits,
    schemes_for_kind,
)
from tls13.transcript import transcript_hash

ECDSA_P256 = BY_NAME["ecdsa_secp256r1_sha256"]
ECDSA_P384 = BY_NAME["ecdsa_secp384r1_sha384"]
RSAE_256 = BY_NAME["rsa_pss_rsae_sha256"]
PSS_256 = BY_NAME["rsa_pss_pss_sha256"]
ED25519 = BY_NAME["ed25519"]


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca("core test CA")


def _chain(leaf: Issued, *extra: Issued) -> CertificateChain:
    pem = leaf.cert_pem() + b"".join(e.cert_pem() for e in extra)
    return CertificateChain.from_pem(pem, leaf.key_pem())


def _alert(fn: object, *args: object, **kwargs: object) -> AlertDescription:
    with pytest.raises(TLSError) as excinfo:
        fn(*args, **kwargs)  # type: ignore[operator]
    return excinfo.value.alert


# --- signatures ------------------------------------------------------------------------------


def test_certificate_verify_input_layout() -> None:
    th = bytes(range(32))
    data = certificate_verify_input(b"TLS 1.3, server CertificateVerify", th)
    assert data == b" " * 64 + b"TLS 1.3, server CertificateVerify\x00" + th
    assert certificate_verify_input(True, th) == data
    assert certificate_verify_input(False, th).startswith(b" " * 64 + b"TLS 1.3, client")


def test_trace_certificate_verify_signature_verifies() -> None:
    """The RSA-PSS signature in the simple 1-RTT trace verifies over §4.4.3's input."""
    t = load_trace(SIMPLE_1RTT)
    pre = "construct a"
    messages = [
        t[f"client {pre} ClientHello handshake message: ClientHello"],
        t[f"server {pre} ServerHello handshake message: ServerHello"],
        t[f"server {pre} EncryptedExtensions handshake message: EncryptedExtensions"],
        t[f"server {pre} Certificate handshake message: Certificate"],
    ]
    cert_msg = messages[-1]
    cert_len = int.from_bytes(cert_msg[8:11], "big")
    leaf = x509.load_der_x509_certificate(cert_msg[11 : 11 + cert_len])
    cv = t[f"server {pre} CertificateVerify handshake message: CertificateVerify"]
    scheme, signature = int.from_bytes(cv[4:6], "big"), cv[8:]
    assert scheme == RSAE_256
    signed = certificate_verify_input(True, transcript_hash(hashes.SHA256(), *messages))
    SCHEMES[scheme].verify(leaf.public_key(), signature, signed)  # type: ignore[arg-type]
    tampered = signed[:-1] + bytes((signed[-1] ^ 1,))
    assert _alert(SCHEMES[scheme].verify, leaf.public_key(), signature, tampered) == (
        AlertDescription.decrypt_error
    )


@pytest.mark.parametrize(
    ("kind", "scheme_names"),
    [
        ("p256", ["ecdsa_secp256r1_sha256"]),
        ("p384", ["ecdsa_secp384r1_sha384"]),
        ("p521", ["ecdsa_secp521r1_sha512"]),
        ("rsa2048", ["rsa_pss_rsae_sha256", "rsa_pss_rsae_sha384", "rsa_pss_rsae_sha512"]),
        ("ed25519", ["ed25519"]),
        ("ed448", ["ed448"]),
    ],
)
def test_sign_verify_and_fit(ca: Issued, kind: str, scheme_names: list[str]) -> None:
    leaf = make_leaf(ca, ("sig.test",), kind=kind)
    chain = _chain(leaf)
    fitting = [BY_NAME[n] for n in scheme_names]
    assert chain.schemes(HANDSHAKE_SCHEMES) == fitting
    assert schemes_for_kind(chain.key_kind, list(HANDSHAKE_SCHEMES)) == fitting
    for code in fitting:
        sig = SCHEMES[code].sign(chain.private_key, b"data")
        SCHEMES[code].verify(leaf.cert.public_key(), sig, b"data")  # type: ignore[arg-type]
        assert _alert(SCHEMES[code].verify, leaf.cert.public_key(), sig, b"other") == (
            AlertDescription.decrypt_error
        )
        check_certificate_fits(SCHEMES[code], leaf.cert)
    for code in HANDSHAKE_SCHEMES:
        if code not in fitting and SCHEMES[code].name.startswith(("ecdsa", "ed")):
            # TLS 1.3 binds ECDSA schemes to their curve: P-256 key with P-384 scheme is wrong.
            assert _alert(SCHEMES[code].verify, leaf.cert.public_key(), b"x", b"d") == (
                AlertDescription.illegal_parameter
            )
            assert _alert(SCHEMES[code].sign, chain.private_key, b"d") == (
                AlertDescription.internal_error
            )


def test_pkcs1_is_certificate_only(ca: Issued) -> None:
    leaf = make_leaf(ca, ("rsa.test",), kind="rsa2048")
    pkcs1 = SCHEMES[BY_NAME["rsa_pkcs1_sha256"]]
    assert not pkcs1.for_handshake and pkcs1.code not in HANDSHAKE_SCHEMES
    assert _alert(pkcs1.sign, leaf.key, b"d") == AlertDescription.internal_error
    assert _alert(pkcs1.verify, leaf.cert.public_key(), b"x", b"d") == (
        AlertDescription.illegal_parameter
    )
    assert _alert(check_certificate_fits, pkcs1, leaf.cert) == AlertDescription.illegal_parameter


@pytest.fixture(scope="module")
def rsa_pss_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """A self-signed certificate with an id-RSASSA-PSS key, made by openssl."""
    d: Path = tmp_path_factory.mktemp("pss")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa-pss", "-pkeyopt", "rsa_keygen_bits:2048",
            "-keyout", str(d / "k.pem"), "-out", str(d / "c.pem"), "-nodes", "-days", "2",
            "-subj", "/CN=pss.test", "-addext", "subjectAltName=DNS:pss.test",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return (d / "c.pem").read_bytes(), (d / "k.pem").read_bytes()


def test_rsa_pss_keyed_certificate(rsa_pss_pair: tuple[bytes, bytes], ca: Issued) -> None:
    chain = CertificateChain.from_pem(*rsa_pss_pair)
    assert chain.key_kind == "rsa_pss" == certificate_key_kind(chain.leaf)
    assert chain.schemes(HANDSHAKE_SCHEMES) == [PSS_256, PSS_256 + 1, PSS_256 + 2]
    sig = SCHEMES[PSS_256].sign(chain.private_key, b"m")
    SCHEMES[PSS_256].verify(chain.leaf.public_key(), sig, b"m")  # type: ignore[arg-type]
    check_certificate_fits(SCHEMES[PSS_256], chain.leaf)
    assert _alert(check_certificate_fits, SCHEMES[RSAE_256], chain.leaf) == (
        AlertDescription.illegal_parameter
    )
    rsae_leaf = make_leaf(ca, ("rsa.test",), kind="rsa2048")
    assert _alert(check_certificate_fits, SCHEMES[PSS_256], rsae_leaf.cert) == (
        AlertDescription.illegal_parameter
    )
    store = CertificateStore([chain])
    assert store.select("pss.test", [RSAE_256, PSS_256]) == (chain, PSS_256)
    assert _alert(store.select, "pss.test", [RSAE_256]) == AlertDescription.handshake_failure


# --- chains ----------------------------------------------------------------------------------


def test_chain_from_pem(ca: Issued) -> None:
    inter = make_intermediate(ca)
    leaf = make_leaf(inter, ("Example.COM", "*.example.com", "192.0.2.1"))  # type: ignore[arg-type]
    chain = _chain(leaf, inter)
    assert chain.names == ("example.com", "*.example.com", "192.0.2.1")
    assert chain.der_chain == (
        leaf.cert.public_bytes(serialization.Encoding.DER),
        inter.cert.public_bytes(serialization.Encoding.DER),
    )
    assert chain.key_kind == "secp256r1"
    with_ocsp = CertificateChain.from_pem(leaf.cert_pem(), leaf.key_pem(), b"ocsp")
    assert with_ocsp.ocsp_response == b"ocsp"


def test_chain_rejects_wrong_key_and_garbage(ca: Issued) -> None:
    a, b = make_leaf(ca, ("a.test",)), make_leaf(ca, ("b.test",))
    with pytest.raises(CertificateError, match="does not match"):
        CertificateChain.from_pem(a.cert_pem(), b.key_pem())
    with pytest.raises(CertificateError):
        CertificateChain.from_pem(b"not pem", a.key_pem())
    with pytest.raises(CertificateError):
        CertificateChain.from_pem(a.cert_pem(), b"not a key")


def test_common_name_used_only_without_san(ca: Issued) -> None:
    assert _chain(make_cn_only_leaf(ca, "cn-only.test")).names == ("cn-only.test",)
    assert _chain(make_leaf(ca, ("san.test",))).names == ("san.test",)  # CN equals SAN here


# --- selection -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store_chains(ca: Issued) -> dict[str, CertificateChain]:
    return {
        "default": _chain(make_leaf(ca, ("default.test",))),
        "exact_ec": _chain(make_leaf(ca, ("www.example.com",), kind="p384")),
        "exact_rsa": _chain(make_leaf(ca, ("www.example.com",), kind="rsa2048")),
        "wild": _chain(make_leaf(ca, ("*.example.com",))),
        "ed": _chain(make_leaf(ca, ("ed.test",), kind="ed25519")),
    }


def test_select_by_name_tiers(store_chains: dict[str, CertificateChain]) -> None:
    c = store_chains
    store = CertificateStore(list(c.values()), default=c["default"])
    all_schemes = list(HANDSHAKE_SCHEMES)
    assert store.select("www.example.com", all_schemes) == (c["exact_ec"], ECDSA_P384)
    assert store.select("WWW.Example.Com.", all_schemes)[0] is c["exact_ec"]
    assert store.select("api.example.com", all_schemes) == (c["wild"], ECDSA_P256)
    # One-label wildcard only, and no apex match.
    assert store.select("a.b.example.com", all_schemes)[0] is c["default"]
    assert store.select("example.com", all_schemes)[0] is c["default"]
    assert store.select(None, all_schemes)[0] is c["default"]
    assert store.has_name("www.example.com") and store.has_name("x.example.com")
    assert not store.has_name("a.b.example.com") and not store.has_name("nothing.test")


def test_select_by_offered_schemes(store_chains: dict[str, CertificateChain]) -> None:
    c = store_chains
    store = CertificateStore(list(c.values()), default=c["default"])
    # Only RSA offered: the RSA chain of the same name wins over the ECDSA one.
    assert store.select("www.example.com", [RSAE_256]) == (c["exact_rsa"], RSAE_256)
    # Nothing in the exact tier fits ed25519: fall through to the default, then any chain.
    assert store.select("www.example.com", [ED25519]) == (c["ed"], ED25519)
    # Server preference decides the scheme, not the client's order.
    assert store.select("www.example.com", [RSAE_256, ECDSA_P384])[1] == ECDSA_P384
    assert _alert(store.select, "www.example.com", [0x0401]) == AlertDescription.handshake_failure
    assert _alert(store.select, "x", []) == AlertDescription.handshake_failure


def test_select_prefers_chains_the_client_can_validate(ca: Issued) -> None:
    ecdsa_ca_chain = _chain(make_leaf(ca, ("both.test",)))  # signed with ecdsa-with-SHA256
    rsa_ca = make_ca("rsa CA", kind="rsa2048")
    rsa_ca_chain = _chain(make_leaf(rsa_ca, ("both.test",)))  # signed with sha256WithRSA
    store = CertificateStore([ecdsa_ca_chain, rsa_ca_chain])
    assert store.select("both.test", [ECDSA_P256], [0x0401])[0] is rsa_ca_chain
    assert store.select("both.test", [ECDSA_P256], [ECDSA_P256])[0] is ecdsa_ca_chain
    # No chain satisfies signature_algorithms_cert: still answer (§4.4.2.2).
    assert store.select("both.test", [ECDSA_P256], [ED25519])[0] is ecdsa_ca_chain


def test_repeated_selection_answers_alike_and_failures_are_not_remembered(
    store_chains: dict[str, CertificateChain],
) -> None:
    c = store_chains
    store = CertificateStore(list(c.values()), default=c["default"])
    offers: list[tuple[str | None, list[int]]] = [
        ("www.example.com", [RSAE_256]),
        ("www.example.com", [RSAE_256, ECDSA_P384]),
        ("api.example.com", list(HANDSHAKE_SCHEMES)),
        (None, [ED25519]),
    ]
    first = [store.select(name, schemes) for name, schemes in offers]
    assert [store.select(name, schemes) for name, schemes in offers] == first
    assert first[0] == (c["exact_rsa"], RSAE_256) and first[1][1] == ECDSA_P384
    for _ in range(2):  # a refused offer is refused again, not answered from a cache
        assert _alert(store.select, "www.example.com", [0x0401]) == (
            AlertDescription.handshake_failure
        )
    # Many different names (SNI is the client's choice) never grow the cache without bound.
    for index in range(3000):
        assert store.select(f"n{index}.test", [ECDSA_P256])[0] is c["default"]
    assert len(store._selected) <= 1024  # the bound of the private answer cache
    assert store.select("www.example.com", [RSAE_256]) == first[0]


def test_certificate_message_per_staple(ca: Issued) -> None:
    leaf, intermediate = make_leaf(ca, ("msg.test",)), make_ca("msg intermediate")
    chain = _chain(leaf, intermediate)
    plain = chain.certificate_message(None)
    stapled = chain.certificate_message(b"ocsp-response")
    assert chain.certificate_message(None) is plain  # encoded once, then reused
    parsed = Certificate.parse(plain[4:])
    assert plain[0] == HandshakeType.certificate and parsed.certificate_request_context == b""
    assert [e.cert_data for e in parsed.certificate_list] == list(chain.der_chain)
    assert all(not e.extensions for e in parsed.certificate_list)
    entries = Certificate.parse(stapled[4:]).certificate_list
    # RFC 8446 §4.4.2.1: the staple rides in the leaf's entry only.
    assert entries[0].ocsp_response() == b"ocsp-response" and not entries[1].extensions
    other = chain.certificate_message(b"a newer response")
    assert Certificate.parse(other[4:]).certificate_list[0].ocsp_response() == b"a newer response"
    assert chain.certificate_message(None) == plain


# --- verification ----------------------------------------------------------------------------


def test_verify_server_chain(ca: Issued) -> None:
    inter = make_intermediate(ca)
    leaf = make_leaf(inter, ("svc.test", "192.0.2.7"))  # type: ignore[arg-type]
    path = verify_chain([leaf.cert, inter.cert], [ca.cert], time.time(), server_name="svc.test")
    assert path[0] == leaf.cert and path[-1] == ca.cert
    verify_chain([leaf.cert, inter.cert], [ca.cert], time.time(), server_name="192.0.2.7")
    verify_chain([leaf.cert, inter.cert], [ca.cert], time.time())  # no name: path only
    now = datetime.datetime.now(datetime.timezone.utc)
    verify_chain([leaf.cert, inter.cert], [ca.cert], now, server_name="SVC.test")


def test_verify_failures_map_to_alerts(ca: Issued) -> None:
    now = time.time()
    leaf = make_leaf(ca, ("svc.test",))
    other_ca = make_ca("stranger CA")
    expired = make_leaf(ca, ("svc.test",), days=-1, not_before_days=-10)
    client_leaf = make_leaf(ca, ("user",), client=True)
    inter = make_intermediate(ca)
    orphan = make_leaf(inter, ("svc.test",))  # type: ignore[arg-type]
    cases = [
        (([leaf.cert], [other_ca.cert], now), {"server_name": "svc.test"}, "unknown_ca"),
        (([orphan.cert], [ca.cert], now), {"server_name": "svc.test"}, "unknown_ca"),
        (([expired.cert], [ca.cert], now), {"server_name": "svc.test"}, "certificate_expired"),
        (
            ([leaf.cert], [ca.cert], now + 400 * 86400),
            {"server_name": "svc.test"},
            "certificate_expired",
        ),
        (([leaf.cert], [ca.cert], now), {"server_name": "other.test"}, "bad_certificate"),
        (([client_leaf.cert], [ca.cert], now), {"server_name": "user"}, "unsupported_certificate"),
        (([leaf.cert], [ca.cert], now), {"client": True}, "unsupported_certificate"),
        (([], [ca.cert], now), {"client": True}, "certificate_required"),
        (([leaf.cert], [], now), {"server_name": "svc.test"}, "unknown_ca"),
    ]
    for args, kwargs, alert in cases:
        assert _alert(verify_chain, *args, **kwargs) == AlertDescription[alert], (args, kwargs)


def test_verify_client_chain(ca: Issued) -> None:
    client_leaf = make_leaf(ca, ("alice",), client=True)
    path = verify_chain([client_leaf.cert], [ca.cert], time.time(), client=True)
    assert path[0] == client_leaf.cert
