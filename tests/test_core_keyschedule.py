"""Key schedule and transcript known-answer tests against the RFC 8448-format traces."""

from __future__ import annotations

import hmac

import pytest
from core_helpers import HELLO_RETRY, RESUMED_0RTT, SIMPLE_1RTT, load_trace
from cryptography.hazmat.primitives import hashes

from tls13.alerts import AlertDescription, TLSError
from tls13.groups import X25519
from tls13.keyschedule import (
    KeySchedule,
    derive_secret,
    empty_hash,
    export,
    finished_verify_data,
    hkdf_expand_label,
    hkdf_extract,
    next_traffic_secret,
    resumption_psk,
    traffic_key_iv,
)
from tls13.suites import SUITES
from tls13.transcript import Transcript, message_hash_message, transcript_hash

AES128 = SUITES[0x1301]
SHA256 = hashes.SHA256()


@pytest.fixture(scope="module")
def t() -> dict[str, bytes]:
    return load_trace(SIMPLE_1RTT)


def _messages(t: dict[str, bytes]) -> dict[str, bytes]:
    pre = "construct a"
    return {
        "CH": t[f"client {pre} ClientHello handshake message: ClientHello"],
        "SH": t[f"server {pre} ServerHello handshake message: ServerHello"],
        "EE": t[f"server {pre} EncryptedExtensions handshake message: EncryptedExtensions"],
        "CT": t[f"server {pre} Certificate handshake message: Certificate"],
        "CV": t[f"server {pre} CertificateVerify handshake message: CertificateVerify"],
        "SF": t[f"server {pre} Finished handshake message: Finished"],
        "CF": t[f"client {pre} Finished handshake message: Finished"],
    }


def test_x25519_shared_secret_matches_trace(t: dict[str, bytes]) -> None:
    client = X25519.private_from_bytes(t["client create an ephemeral x25519 key pair: private key"])
    server = X25519.private_from_bytes(t["server create an ephemeral x25519 key pair: private key"])
    assert client.public == t["client create an ephemeral x25519 key pair: public key"]
    server_share, shared = X25519.respond(client.public, lambda n: b"", private=server)
    assert server_share == t["server create an ephemeral x25519 key pair: public key"]
    assert shared == t['server extract secret "handshake": IKM']
    assert client.exchange(server_share) == shared


def test_full_ladder_matches_trace(t: dict[str, bytes]) -> None:
    m = _messages(t)
    ks = KeySchedule(AES128)
    assert ks.early_secret == t['server extract secret "early": secret']
    ks.set_shared_secret(t['server extract secret "handshake": IKM'])
    assert ks.handshake_secret == t['server extract secret "handshake": secret']

    th_hs = transcript_hash(SHA256, m["CH"], m["SH"])
    assert th_hs == t['server derive secret "tls13 c hs traffic": hash']
    c_hs = ks.client_handshake_traffic_secret(th_hs)
    s_hs = ks.server_handshake_traffic_secret(th_hs)
    assert c_hs == t['server derive secret "tls13 c hs traffic": expanded']
    assert s_hs == t['server derive secret "tls13 s hs traffic": expanded']

    ks.set_master()
    assert ks.master_secret == t['server extract secret "master": secret']
    th_sf = transcript_hash(SHA256, m["CH"], m["SH"], m["EE"], m["CT"], m["CV"], m["SF"])
    assert th_sf == t['server derive secret "tls13 c ap traffic": hash']
    assert (
        ks.client_application_traffic_secret(th_sf)
        == t['server derive secret "tls13 c ap traffic": expanded']
    )
    assert (
        ks.server_application_traffic_secret(th_sf)
        == t['server derive secret "tls13 s ap traffic": expanded']
    )
    assert (
        ks.exporter_master_secret(th_sf) == t['server derive secret "tls13 exp master": expanded']
    )

    th_cf = transcript_hash(SHA256, *m.values())
    rms = ks.resumption_master_secret(th_cf)
    assert rms == t['client derive secret "tls13 res master": expanded']
    nonce = t['server generate resumption secret "tls13 resumption": hash']
    assert (
        resumption_psk(SHA256, rms, nonce)
        == t['server generate resumption secret "tls13 resumption": expanded']
    )


def test_finished_values_match_trace(t: dict[str, bytes]) -> None:
    m = _messages(t)
    s_hs = t['server derive secret "tls13 s hs traffic": expanded']
    c_hs = t['server derive secret "tls13 c hs traffic": expanded']
    th_cv = transcript_hash(SHA256, m["CH"], m["SH"], m["EE"], m["CT"], m["CV"])
    server_vd = finished_verify_data(SHA256, s_hs, th_cv)
    assert hmac.compare_digest(server_vd, t['server calculate finished "tls13 finished": finished'])
    assert m["SF"] == b"\x14\x00\x00\x20" + server_vd
    th_sf = transcript_hash(SHA256, m["CH"], m["SH"], m["EE"], m["CT"], m["CV"], m["SF"])
    client_vd = finished_verify_data(SHA256, c_hs, th_sf)
    assert client_vd == t['client calculate finished "tls13 finished": finished']


def test_traffic_keys_match_trace(t: dict[str, bytes]) -> None:
    for step in (
        "server derive write traffic keys for handshake data",
        "server derive read traffic keys for handshake data",
        "server derive write traffic keys for application data",
        "client derive write traffic keys for application data",
    ):
        key, iv = traffic_key_iv(AES128, t[f"{step}: PRK"])
        assert key == t[f"{step}: key expanded"], step
        assert iv == t[f"{step}: iv expanded"], step


def test_hkdf_label_info_matches_trace(t: dict[str, bytes]) -> None:
    """The HkdfLabel encoding itself: rebuild one printed info block byte for byte."""
    step = 'server derive secret "tls13 c hs traffic"'
    info = t[f"{step}: info"]
    assert info[:2] == (32).to_bytes(2, "big") and info[3:21] == b"tls13 c hs traffic"
    expanded = hkdf_expand_label(SHA256, t[f"{step}: PRK"], b"c hs traffic", t[f"{step}: hash"], 32)
    assert expanded == t[f"{step}: expanded"]
    assert empty_hash(SHA256) == t['server derive secret for handshake "tls13 derived": hash']


def test_resumed_trace_binder_and_early_secrets() -> None:
    r = load_trace(RESUMED_0RTT)
    ks = KeySchedule(AES128)
    ks.set_psk(r['client extract secret "early": IKM'])
    assert ks.early_secret == r['client extract secret "early": secret']
    binder_key = ks.binder_key(resumption=True)
    assert binder_key == r["client calculate PSK binder: PRK"]
    assert ks.binder_key(resumption=False) != binder_key
    binder_hash = transcript_hash(SHA256, r["client calculate PSK binder: ClientHello prefix"])
    assert binder_hash == r["client calculate PSK binder: binder hash"]
    binder = finished_verify_data(SHA256, binder_key, binder_hash)
    assert binder == r["client calculate PSK binder: finished"]
    assert r["client send handshake record: payload"].endswith(binder)
    th = r['client derive secret "tls13 c e traffic": hash']
    assert (
        ks.client_early_traffic_secret(th)
        == r['client derive secret "tls13 c e traffic": expanded']
    )
    assert (
        ks.early_exporter_master_secret(th)
        == r['client derive secret "tls13 e exp master": expanded']
    )
    ks.set_shared_secret(r['server extract secret "handshake": IKM'])
    assert ks.handshake_secret == r['server extract secret "handshake": secret']


def test_hrr_message_hash_rewrite() -> None:
    h = load_trace(HELLO_RETRY)
    ch1 = h["client construct a ClientHello handshake message: ClientHello"]
    hrr = h["server construct a ServerHello handshake message: ServerHello"]  # the HRR
    ch2 = h["client construct a ClientHello handshake message #2: ClientHello"]
    sh = h["server construct a ServerHello handshake message #2: ServerHello"]
    tr = Transcript()
    tr.update(ch1)  # before the hash is known: buffered
    tr.set_hash(SHA256)
    tr.replace_with_message_hash()
    for msg in (hrr, ch2, sh):
        tr.update(msg)
    expected = h['server derive secret "tls13 c hs traffic": hash']
    assert tr.digest() == expected
    assert tr.digest() == expected  # digest() does not finalise
    ch1_hash = transcript_hash(SHA256, ch1)
    assert transcript_hash(SHA256, message_hash_message(ch1_hash), hrr, ch2, sh) == expected


def test_transcript_copy_is_independent() -> None:
    a = Transcript(SHA256)
    a.update(b"one")
    b = a.copy()
    b.update(b"two")
    assert a.digest() == transcript_hash(SHA256, b"one")
    assert b.digest() == transcript_hash(SHA256, b"one", b"two")


def test_transcript_without_hash_is_internal_error() -> None:
    with pytest.raises(TLSError) as info:
        Transcript().digest()
    assert info.value.alert == AlertDescription.internal_error


def test_stage_order_is_enforced() -> None:
    ks = KeySchedule(AES128)
    with pytest.raises(TLSError):
        ks.client_handshake_traffic_secret(bytes(32))
    with pytest.raises(TLSError):
        ks.exporter_master_secret(bytes(32))


def test_key_update_exporter_and_sha384() -> None:
    """Structural checks where the traces print nothing: KeyUpdate and exporter definitions."""
    secret = bytes(range(32))
    assert next_traffic_secret(SHA256, secret) == hkdf_expand_label(
        SHA256, secret, b"traffic upd", b"", 32
    )
    per_label = derive_secret(SHA256, secret, b"EXPORTER-test", empty_hash(SHA256))
    expected = hkdf_expand_label(
        SHA256, per_label, b"exporter", transcript_hash(SHA256, b"ctx"), 40
    )
    assert export(SHA256, secret, b"EXPORTER-test", b"ctx", 40) == expected
    assert export(SHA256, secret, b"EXPORTER-test", b"", 40) != expected
    ks = KeySchedule(SUITES[0x1302])
    assert len(ks.early_secret) == 48
    ks.set_shared_secret(None)  # psk_ke-style: zeros IKM
    key, iv = traffic_key_iv(SUITES[0x1302], ks.server_handshake_traffic_secret(bytes(48)))
    assert (len(key), len(iv)) == (32, 12)
    assert hkdf_extract(SHA256, b"", b"x") == hkdf_extract(SHA256, bytes(32), b"x")


def test_label_too_long_rejected() -> None:
    with pytest.raises(ValueError):
        hkdf_expand_label(SHA256, bytes(32), b"x" * 250, b"", 32)
