"""Every HKDF step, traffic key and protected record of every trace section, generically.

The traces print the inputs and outputs of each HKDF-Extract / HKDF-Expand-Label
and each record; this replays all of them with our key schedule and record
layer, so all five sections (1-RTT, 0-RTT, HRR, client auth, compatibility
mode) are covered, not only the one the ladder test walks step by step.
"""

from __future__ import annotations

import pytest
from core_helpers import (
    CLIENT_AUTH,
    COMPATIBILITY,
    HELLO_RETRY,
    RESUMED_0RTT,
    SIMPLE_1RTT,
    TraceStep,
    trace_steps,
)
from cryptography.hazmat.primitives import hashes

from tls13.keyschedule import hkdf_expand_label, hkdf_extract, traffic_key_iv
from tls13.record import RecordLayer
from tls13.suites import SUITES

SECTIONS = [SIMPLE_1RTT, RESUMED_0RTT, HELLO_RETRY, CLIENT_AUTH, COMPATIBILITY]
SHA256 = hashes.SHA256()
AES128 = SUITES[0x1301]


def _label_of(info: bytes) -> tuple[int, bytes, bytes]:
    """Split an HkdfLabel: (length, label without "tls13 ", context)."""
    length = int.from_bytes(info[:2], "big")
    label_len = info[2]
    label = info[3 : 3 + label_len]
    assert label.startswith(b"tls13 ")
    context = info[4 + label_len :]
    assert info[3 + label_len] == len(context)
    return length, label[6:], context


@pytest.mark.parametrize("section", SECTIONS)
def test_every_hkdf_step(section: str) -> None:
    checked = 0
    for step in trace_steps(section):
        v = step.values
        if {"PRK", "info", "expanded"} <= v.keys():
            length, label, context = _label_of(v["info"])
            assert context == v.get("hash", context), step.step
            assert hkdf_expand_label(SHA256, v["PRK"], label, context, length) == v["expanded"]
            checked += 1
        if {"IKM", "secret"} <= v.keys():
            assert hkdf_extract(SHA256, v.get("salt", b""), v["IKM"]) == v["secret"], step.step
            checked += 1
        if {"PRK", "key expanded", "iv expanded"} <= v.keys():
            key, iv = traffic_key_iv(AES128, v["PRK"])
            assert (key, iv) == (v["key expanded"], v["iv expanded"]), step.step
            checked += 1
    assert checked >= 15


def _traffic_secrets(section: str) -> list[bytes]:
    """Every traffic secret the section prints (the PRK of each traffic-key step)."""
    secrets = []
    for step in trace_steps(section):
        if "key expanded" in step.values and step.values["PRK"] not in secrets:
            secrets.append(step.values["PRK"])
    return secrets


def _record_steps(section: str) -> list[TraceStep]:
    return [
        s
        for s in trace_steps(section)
        if "complete record" in s.values and s.values["complete record"][0] == 0x17
    ]


def _open_with_any(record: bytes, secrets: list[bytes]) -> tuple[bytes, int, tuple[int, bytes]]:
    """Find the (secret, sequence number) that deprotects ``record``."""
    for secret in secrets:
        for seq in range(8):
            reader = RecordLayer()
            reader.set_read_key(AES128, secret)
            reader._read.seq = seq  # type: ignore[union-attr]
            reader.receive(record)
            try:
                result = reader.next_record()
            except Exception:  # noqa: BLE001 - wrong key or sequence number: keep looking
                continue
            assert result is not None
            return secret, seq, result
    raise AssertionError("no printed secret deprotects the record")


@pytest.mark.parametrize("section", SECTIONS)
def test_every_protected_record(section: str) -> None:
    secrets = _traffic_secrets(section)
    steps = _record_steps(section)
    assert len(steps) >= 4
    for step in steps:
        record, payload = step.values["complete record"], step.values["payload"]
        secret, seq, (content_type, content) = _open_with_any(record, secrets)
        assert content == payload, step.step
        writer = RecordLayer()
        writer.set_write_key(AES128, secret)
        writer._write.seq = seq  # type: ignore[union-attr]
        writer.write(content_type, payload)
        assert writer.take_output() == record, step.step
