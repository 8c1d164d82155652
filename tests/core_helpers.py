"""Reading the RFC 8448-format example traces (/work/shared/specs/tls13-example-traces.txt).

The traces are a sequence of steps such as::

    {server}  derive secret "tls13 c hs traffic":

       PRK (32 octets):  f2 c6 ...
       hash (32 octets):  3d 35 ...

:func:`trace_steps` returns them in order as :class:`TraceStep` objects;
:func:`load_trace` flattens one section into a dict keyed
``'{role} {step}: {label}'`` (e.g. ``'server derive secret "tls13 c hs traffic": expanded'``);
when the same step text appears again its keys get a ``' #2'``, ``' #3'``… suffix
on the step (``'server send handshake record #2: payload'``).  Values that are
not hex (``salt:  0 (all zero octets)``) are stored as HashLen zero bytes when
they say "all zero octets" and ``b""`` for ``(empty)``.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from certs import Issued
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TRACE_FILE = Path("/work/shared/specs/tls13-example-traces.txt")

SIMPLE_1RTT = "Simple 1-RTT Handshake"
RESUMED_0RTT = "Resumed 0-RTT Handshake"
HELLO_RETRY = "HelloRetryRequest"
CLIENT_AUTH = "Client Authentication"
COMPATIBILITY = "Compatibility Mode"

_SECTION = re.compile(r"^(\d+)\.  (\S.*)$")
_STEP = re.compile(r"^   \{(client|server)\}  (.*)$")
_FIELD = re.compile(r"^      (\S.*?)(?: \((\d+) octets\))?:  (.*)$")
_HEX_LINE = re.compile(r"^ {9}([0-9a-f]{2}(?: [0-9a-f]{2})*)\s*$")
_PAGE_NOISE = re.compile(r"^(Thomson\s.*\[Page \d+\]|Internet-Draft\s.*)$")


@dataclass
class TraceStep:
    role: str
    step: str
    values: dict[str, bytes] = field(default_factory=dict)


def _clean_lines(text: str) -> list[str]:
    return [ln for ln in text.replace("\f", "").splitlines() if not _PAGE_NOISE.match(ln)]


def _section_lines(section: str) -> list[str]:
    lines = _clean_lines(TRACE_FILE.read_text())
    start = None
    for i, line in enumerate(lines):
        m = _SECTION.match(line)
        if m and start is None and (m.group(2) == section or m.group(1) == section):
            start = i + 1
        elif m and start is not None:
            return lines[start:i]
    if start is None:
        raise KeyError(f"no trace section {section!r}")
    return lines[start:]


def _value(raw: str, octets: str | None) -> bytes:
    raw = raw.strip()
    if raw == "(empty)":
        return b""
    if "all zero octets" in raw:
        return b""  # length is implicit (HashLen); callers treat b"" as "zeros"
    return bytes.fromhex(raw)


@cache
def trace_steps(section: str) -> tuple[TraceStep, ...]:
    """All steps of one section (by title or number) in order."""
    steps: list[TraceStep] = []
    current: TraceStep | None = None
    label: str | None = None
    octets: str | None = None
    hex_text = ""

    def flush() -> None:
        nonlocal label, hex_text
        if current is not None and label is not None:
            value = _value(hex_text, octets)
            if octets is not None and len(value) != int(octets):
                raise ValueError(f"{current.step}: {label}: {len(value)} != {octets} octets")
            current.values[label] = value
        label, hex_text = None, ""

    for line in _section_lines(section):
        if m := _STEP.match(line):
            flush()
            current = TraceStep(m.group(1), m.group(2).strip())
            steps.append(current)
        elif m := _FIELD.match(line):
            flush()
            label, octets, hex_text = m.group(1), m.group(2), m.group(3)
        elif label is not None and (m := _HEX_LINE.match(line)):
            hex_text += " " + m.group(1)
        elif line.startswith("      ") and label is None and current is not None and line.strip():
            current.step += " " + line.strip()  # a step description wrapped onto two lines
        elif not line.strip():
            continue
    flush()
    for step in steps:
        step.step = step.step.rstrip(":").strip()
    return tuple(steps)


@cache
def load_trace(section: str) -> dict[str, bytes]:
    """One section flattened to ``{'<role> <step>[ #n]: <label>': value}``."""
    out: dict[str, bytes] = {}
    seen: dict[str, int] = {}
    for step in trace_steps(section):
        name = f"{step.role} {step.step}"
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name} #{seen[name]}"
        for label, value in step.values.items():
            out[f"{name}: {label}"] = value
    return out


def hexs(text: str) -> bytes:
    """Bytes from a hex string with arbitrary whitespace."""
    return bytes.fromhex("".join(text.split()))


def make_intermediate(root: Issued, name: str = "tls13-proxy test intermediate") -> Issued:
    """A CA certificate signed by ``root`` (for chains with an intermediate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=100))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root.cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(root.key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return Issued(cert, key)


def make_cn_only_leaf(ca: Issued, common_name: str) -> Issued:
    """A leaf without subjectAltName (names then come from the CN)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=10))
        .sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return Issued(cert, key)
