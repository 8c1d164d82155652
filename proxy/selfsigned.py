"""The embedded default certificate: a self-signed localhost certificate kept in the state dir.

It is generated once and reused on later starts (regenerating each time would make every
client's pinned exception stale and slow startup); it is replaced only when it is missing,
unreadable, does not cover the requested names, or is close to expiry.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
CERT_FILE = "selfsigned.crt"
KEY_FILE = "selfsigned.key"
VALIDITY = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class SelfSignedPaths:
    """Where the certificate and its key live; the key file is mode 0600."""

    cert: Path
    key: Path


def ensure_self_signed(
    state_dir: Path, names: tuple[str, ...] = DEFAULT_NAMES, now: datetime.datetime | None = None
) -> SelfSignedPaths:
    """Return paths to a usable self-signed certificate for ``names``, creating it if needed."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = SelfSignedPaths(state_dir / CERT_FILE, state_dir / KEY_FILE)
    moment = now or datetime.datetime.now(datetime.timezone.utc)
    if _is_usable(paths, names, moment):
        return paths
    log.info("generating self-signed certificate for %s in %s", ", ".join(names), state_dir)
    cert_pem, key_pem = generate(names, moment)
    _write_atomically(paths.key, key_pem, 0o600)
    _write_atomically(paths.cert, cert_pem, 0o644)
    return paths


def generate(names: tuple[str, ...], now: datetime.datetime) -> tuple[bytes, bytes]:
    """A P-256 key and a self-signed certificate naming ``names`` in its SAN (PEM both)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _general_names(names: tuple[str, ...]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


def _is_usable(paths: SelfSignedPaths, names: tuple[str, ...], now: datetime.datetime) -> bool:
    """True when both files load, match each other, cover ``names`` and are not near expiry."""
    try:
        cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
        key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        if paths.cert.exists() or paths.key.exists():
            log.warning("stored self-signed certificate unusable (%s); regenerating", exc)
        return False
    if cert.public_key() != key.public_key():
        return False
    if cert.not_valid_after_utc - RENEW_BEFORE < now:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return set(_general_names(names)) <= set(san)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file and rename so a crash never leaves half a key behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
