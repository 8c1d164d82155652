"""Configuration problems and the checks that need files: certificates, keys, CAs, ticket keys.

Every problem names the file it comes from, the key path inside it and what is wrong, so an
operator can fix a broken configuration in one pass: loading collects every problem before it
raises ``ConfigError``. Warnings (expired certificates, world-readable keys, a keylog file...)
are collected the same way but never stop a load.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from tls13.certificates import CertificateChain
from tls13.tickets import KEY_RECORD_LEN, TicketKeyring

#: tls13.tickets key file format: N records of 16-byte key name + 32-byte key, first = current.
TICKET_KEY_RECORD_SIZE = KEY_RECORD_LEN
#: Below this an RSA key is too weak to serve (NIST SP 800-57: 2048-bit minimum).
MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a configuration: where (file, key path) and what."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every error found (warnings separately)."""

    def __init__(
        self, problems: Sequence[ConfigProblem], warnings: Sequence[ConfigProblem] = ()
    ) -> None:
        self.problems = list(problems)
        self.warnings = list(warnings)
        count = len(self.problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{count} configuration error{'s' if count != 1 else ''}:\n{lines}")


@dataclass
class Problems:
    """Collects errors and warnings while a configuration loads."""

    errors: list[ConfigProblem] = field(default_factory=list)
    warnings: list[ConfigProblem] = field(default_factory=list)
    #: (file, key path) of values that failed to convert: later checks skip "X is required".
    invalid: set[tuple[str, str]] = field(default_factory=set)

    def error(self, file: str, key: str, message: str) -> None:
        self.errors.append(ConfigProblem(file, key, message))

    def warn(self, file: str, key: str, message: str) -> None:
        self.warnings.append(ConfigProblem(file, key, message))


@dataclass(frozen=True)
class Where:
    """A place in the configuration (file + key path) that problems are reported against."""

    problems: Problems
    file: str
    key: str

    def at(self, suffix: str) -> Where:
        """The key path extended by ``.name`` or ``[index]``."""
        if not suffix:
            return self
        joined = (
            self.key + suffix if suffix.startswith("[") or not self.key else f"{self.key}.{suffix}"
        )
        return Where(self.problems, self.file, joined)

    def error(self, message: str) -> None:
        self.problems.error(self.file, self.key, message)

    def mark_invalid(self) -> None:
        """Remember that the value here was rejected (so it is not also reported missing)."""
        self.problems.invalid.add((self.file, self.key))

    def is_invalid(self) -> bool:
        return (self.file, self.key) in self.problems.invalid

    def warn(self, message: str) -> None:
        self.problems.warn(self.file, self.key, message)


def _read(path: Path, where: Where) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:
        where.error(f"cannot read {path}: {exc.strerror or exc}")
        return None


def load_pem_certificates(path: Path, where: Where) -> tuple[x509.Certificate, ...]:
    """The certificates in a PEM file, reporting unreadable files and files holding none."""
    data = _read(path, where)
    if data is None:
        return ()
    try:
        return tuple(x509.load_pem_x509_certificates(data))
    except ValueError:
        where.error(f"{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")
        return ()


def check_ca_file(path: Path, where: Where) -> None:
    """A client-auth CA file must hold at least one certificate, each of them a CA."""
    certs = load_pem_certificates(path, where)
    now = datetime.datetime.now(datetime.timezone.utc)
    for index, cert in enumerate(certs):
        if cert.not_valid_after_utc < now:
            where.warn(f"CA certificate #{index + 1} in {path} ({_subject(cert)}) has expired")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            continue
        if not constraints.ca:
            where.warn(f"certificate #{index + 1} in {path} ({_subject(cert)}) is not a CA")


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "empty subject"


def _load_private_key(path: Path, where: Where) -> object | None:
    data = _read(path, where)
    if data is None:
        return None
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        where.error(f"{path} is encrypted with a passphrase; store the key unencrypted (mode 0600)")
    except (ValueError, UnsupportedAlgorithm):
        where.error(f"{path} holds no usable PEM private key")
    return None


def _check_key_type(key: object, path: Path, where: Where) -> bool:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            where.error(
                f"{path}: RSA key of {key.key_size} bits is too weak (minimum {MIN_RSA_BITS})"
            )
            return False
        return True
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
            where.error(f"{path}: EC curve {key.curve.name} has no TLS 1.3 signature scheme")
            return False
        return True
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return True
    where.error(f"{path}: {type(key).__name__} keys cannot sign TLS 1.3 handshakes")
    return False


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def warn_if_world_readable(path: Path, where: Where) -> None:
    """A private key (or ticket key) readable by every local user is a leak waiting to happen."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        where.warn(
            f"{path} is world-readable (mode {stat.S_IMODE(mode):04o}): "
            f"run chmod 600 {path} (or 640 with a dedicated group)"
        )


def certificate_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The DNS names and IP addresses a certificate is for (SAN; CN only when there is no SAN)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(str(a.value).lower() for a in common)
    dns = [name.lower() for name in san.get_values_for_type(x509.DNSName)]
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return tuple(dns + ips)


def name_covered(name: str, cert_names: Sequence[str]) -> bool:
    """Whether ``name`` is matched by one of the certificate's names (RFC 6125 one-label wildcard)."""
    name = name.lower()
    for pattern in cert_names:
        if pattern == name:
            return True
        if pattern.startswith("*.") and "." in name and name.split(".", 1)[1] == pattern[2:]:
            return True
        if name.startswith("*.") and pattern == name:
            return True
    return False


@dataclass(frozen=True)
class CertificateInfo:
    """What validation learnt from a certificate: its names and the schemes its key can sign."""

    names: tuple[str, ...]
    signature_schemes: frozenset[str]
    key_description: str


_EC_SCHEMES = {
    "secp256r1": "ecdsa_secp256r1_sha256",
    "secp384r1": "ecdsa_secp384r1_sha384",
    "secp521r1": "ecdsa_secp521r1_sha512",
}
_RSAE_SCHEMES = frozenset({"rsa_pss_rsae_sha256", "rsa_pss_rsae_sha384", "rsa_pss_rsae_sha512"})
_PSS_SCHEMES = frozenset({"rsa_pss_pss_sha256", "rsa_pss_pss_sha384", "rsa_pss_pss_sha512"})
_RSASSA_PSS_OID = x509.ObjectIdentifier("1.2.840.113549.1.1.10")


def signing_profile(cert: x509.Certificate) -> tuple[frozenset[str], str]:
    """TLS 1.3 signature schemes the certificate's key can sign with (RFC 8446 §4.2.3)."""
    public = cert.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        scheme = _EC_SCHEMES.get(public.curve.name)
        return frozenset({scheme} if scheme else ()), f"ECDSA {public.curve.name} key"
    if isinstance(public, rsa.RSAPublicKey):
        if cert.public_key_algorithm_oid == _RSASSA_PSS_OID:
            return _PSS_SCHEMES, f"RSASSA-PSS {public.key_size}-bit key"
        return _RSAE_SCHEMES, f"RSA {public.key_size}-bit key"
    if isinstance(public, ed25519.Ed25519PublicKey):
        return frozenset({"ed25519"}), "Ed25519 key"
    if isinstance(public, ed448.Ed448PublicKey):
        return frozenset({"ed448"}), "Ed448 key"
    return frozenset(), f"{type(public).__name__}"


def check_certificate(
    chain_path: Path, key_path: Path, ocsp_path: Path | None, where: Where
) -> CertificateInfo | None:
    """Load a chain + key, check they belong together and are current; describe the leaf.

    Errors: unreadable or unparsable files, a key that does not match the leaf, a weak or
    unusable key type, a bad OCSP response. Warnings: expired / not yet valid certificates,
    world-readable key files. None when the chain could not be read.
    """
    errors_before = len(where.problems.errors)
    chain = load_pem_certificates(chain_path, where.at("chain"))
    key = _load_private_key(key_path, where.at("key"))
    if key is not None:
        warn_if_world_readable(key_path, where.at("key"))
    if not chain:
        return None
    leaf = chain[0]
    if key is not None and _check_key_type(key, key_path, where.at("key")):
        if _spki(leaf.public_key()) != _spki(key.public_key()):  # type: ignore[attr-defined]
            where.at("key").error(
                f"{key_path} does not match the certificate {_subject(leaf)} "
                f"(the first certificate in {chain_path})"
            )
    _check_validity(chain, chain_path, where.at("chain"))
    if ocsp_path is not None:
        _check_ocsp(ocsp_path, where.at("ocsp"))
    if len(where.problems.errors) == errors_before:
        _check_with_engine(chain_path, key_path, ocsp_path, where)
    schemes, description = signing_profile(leaf)
    return CertificateInfo(certificate_names(leaf), schemes, description)


def _check_with_engine(
    chain_path: Path, key_path: Path, ocsp_path: Path | None, where: Where
) -> None:
    """Load the files exactly as the daemon will (tls13.CertificateChain), so that nothing
    `check` accepts can fail at start; the checks above only give more precise messages."""
    try:
        CertificateChain.from_pem(
            chain_path.read_bytes(),
            key_path.read_bytes(),
            ocsp=ocsp_path.read_bytes() if ocsp_path is not None else None,
        )
    except (OSError, ValueError) as exc:
        where.error(f"the TLS engine cannot use {chain_path} with {key_path}: {exc}")


def _check_validity(chain: Sequence[x509.Certificate], path: Path, where: Where) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    for index, cert in enumerate(chain):
        label = "the certificate" if index == 0 else f"chain certificate #{index + 1}"
        if cert.not_valid_after_utc < now:
            when = cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
            where.warn(f"{label} {_subject(cert)} in {path} expired on {when}")
        elif cert.not_valid_before_utc > now:
            when = cert.not_valid_before_utc.strftime("%Y-%m-%d %H:%M UTC")
            where.warn(f"{label} {_subject(cert)} in {path} is not valid before {when}")
    for index in range(len(chain) - 1):
        if chain[index].issuer != chain[index + 1].subject:
            where.warn(
                f"{path}: certificate #{index + 2} did not issue certificate #{index + 1}: "
                "list the leaf first, then each issuer in order"
            )
            break


def _check_ocsp(path: Path, where: Where) -> None:
    data = _read(path, where)
    if data is None:
        return
    try:
        response = ocsp.load_der_ocsp_response(data)
    except ValueError:
        where.error(f"{path} is not a DER-encoded OCSP response")
        return
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        where.error(f"{path}: OCSP response status is {response.response_status.name}")
        return
    next_update = response.next_update_utc
    if next_update is not None and next_update < datetime.datetime.now(datetime.timezone.utc):
        where.warn(f"{path}: OCSP response is stale (nextUpdate {next_update:%Y-%m-%d %H:%M} UTC)")


def check_ticket_key_file(path: Path, where: Where) -> None:
    """A ticket key file holds whole 48-byte records (tls13.tickets key file format)."""
    data = _read(path, where)
    if data is None:
        return
    warn_if_world_readable(path, where)
    size = len(data)
    if size == 0 or size % TICKET_KEY_RECORD_SIZE:
        where.error(
            f"{path} holds {size} bytes: a ticket key file must hold one or more "
            f"{TICKET_KEY_RECORD_SIZE}-byte keys (16-byte name + 32-byte AES key; the first is "
            f"current); create one with: head -c {TICKET_KEY_RECORD_SIZE} /dev/urandom > {path.name}"
        )
        return
    try:
        TicketKeyring.from_bytes(data)
    except ValueError as exc:
        where.error(f"{path}: {exc}")


def check_writable_parent(path: Path, where: Where) -> None:
    """A file we will create (keylog) needs an existing, writable directory."""
    parent = path.parent
    if not parent.is_dir():
        where.error(f"directory {parent} does not exist")
    elif not os.access(parent, os.W_OK):
        where.warn(f"directory {parent} is not writable by this user")


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
