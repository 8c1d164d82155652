"""Handshake messages printed in the RFC 8448-format example traces.

A small reader of /work/shared/specs/tls13-example-traces.txt: every
``Name (N octets):  hex...`` block whose name is a handshake message, with the
hex gathered across continuation lines and page breaks until N octets are read.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

TRACE_FILE = Path("/work/shared/specs/tls13-example-traces.txt")

MESSAGE_NAMES = (
    "ClientHello",
    "ServerHello",
    "EncryptedExtensions",
    "CertificateRequest",
    "Certificate",
    "CertificateVerify",
    "Finished",
    "NewSessionTicket",
    "EndOfEarlyData",
)

_SECTION = re.compile(r"^(\d+)\.\s+(\S.*)$")
_LABEL = re.compile(r"^\s+(\w[\w ]*?) \((\d+) octets\):\s+((?:[0-9a-f]{2}\s*)+)$")
_HEX_LINE = re.compile(r"^\s+((?:[0-9a-f]{2} ?)+)\s*$")


def _collect(lines: list[str], start: int, first_hex: str, size: int) -> bytes:
    tokens = first_hex.split()
    i = start + 1
    while len(tokens) < size and i < len(lines):
        match = _HEX_LINE.match(lines[i])
        if match:
            tokens += match.group(1).split()
        i += 1
    if len(tokens) != size:
        raise ValueError(f"trace block at line {start + 1} has {len(tokens)} of {size} octets")
    return bytes.fromhex("".join(tokens))


@lru_cache(maxsize=1)
def trace_blocks() -> tuple[tuple[str, str, bytes], ...]:
    """Every labelled byte block as (section title, label, bytes), in file order."""
    lines = TRACE_FILE.read_text().splitlines()
    section = ""
    blocks = []
    for index, line in enumerate(lines):
        heading = _SECTION.match(line)
        if heading:
            section = heading.group(2).strip()
            continue
        label = _LABEL.match(line)
        if label:
            name, size, hex_part = label.group(1), int(label.group(2)), label.group(3)
            blocks.append((section, name, _collect(lines, index, hex_part, size)))
    return tuple(blocks)


def _declared_size(message: bytes) -> int:
    return 4 + int.from_bytes(message[1:4], "big")


def trace_messages() -> list[tuple[str, str, bytes]]:
    """The handshake messages of all sections as (section, message name, bytes).

    The resumption trace prints its ClientHello truncated before the binders
    (the binder input); the complete message is the record payload sent next,
    so that payload stands in for it.
    """
    blocks = trace_blocks()
    messages = []
    for index, (section, name, data) in enumerate(blocks):
        if name not in MESSAGE_NAMES:
            continue
        if len(data) < _declared_size(data):
            data = _completion(blocks[index + 1 :], data)
        messages.append((section, name, data))
    return messages


def _completion(later: tuple[tuple[str, str, bytes], ...], prefix: bytes) -> bytes:
    for _, name, data in later:
        if name == "payload" and data.startswith(prefix) and len(data) == _declared_size(prefix):
            return data
    raise ValueError("no complete payload for a truncated trace message")


def truncated_client_hellos() -> list[tuple[bytes, bytes]]:
    """(binder input prefix, complete ClientHello) pairs printed in the traces."""
    pairs = []
    blocks = trace_blocks()
    for index, (_, name, data) in enumerate(blocks):
        if name == "ClientHello" and len(data) < _declared_size(data):
            pairs.append((data, _completion(blocks[index + 1 :], data)))
    return pairs


def trace_message(section_prefix: str, name: str, index: int = 0) -> bytes:
    """The ``index``-th message called ``name`` in the section starting with ``section_prefix``."""
    found = [
        data
        for section, label, data in trace_messages()
        if section.startswith(section_prefix) and label == name
    ]
    return found[index]
