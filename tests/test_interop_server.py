"""Real TLS 1.3 clients against our ServerConnection over loopback TCP.

openssl s_client, gnutls-cli, curl and Python's ssl module each complete a
handshake with every suite, group and certificate type they support, exchange
data (and KeyUpdates), and get the right alert when we must refuse them.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from certs import Issued, make_ca, make_leaf
from engine_helpers import (
    GREETING,
    HTTP_RESPONSE,
    EngineServer,
    http_behaviour,
    run_client,
    store_for,
)

from tls13 import events
from tls13.alerts import AlertDescription
from tls13.config import ServerConfig
from tls13.groups import BY_NAME as GROUP_CODES
from tls13.tickets import TicketKeyring

pytestmark = pytest.mark.timeout(120)

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
needs_gnutls = pytest.mark.skipif(shutil.which("gnutls-cli") is None, reason="gnutls-cli missing")
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca()


@pytest.fixture(scope="module")
def ca_file(ca: Issued, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    path.write_bytes(ca.cert_pem())
    return path


@pytest.fixture(scope="module")
def leaves(ca: Issued) -> dict[str, Issued]:
    return {kind: make_leaf(ca, ("localhost",), kind=kind) for kind in KEY_KINDS}


KEY_KINDS = ("p256", "p384", "rsa2048", "ed25519")


def config_for(ca: Issued, leaf: Issued, **overrides: object) -> ServerConfig:
    store = store_for([(leaf.cert_pem() + ca.cert_pem(), leaf.key_pem())])
    return ServerConfig(certificates=store, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def server_p256(ca: Issued, leaves: dict[str, Issued]) -> Iterator[EngineServer]:
    with EngineServer(config_for(ca, leaves["p256"], alpn_protocols=("h2", "http/1.1"))) as srv:
        yield srv


def s_client(port: int, ca_file: Path, *extra: str) -> list[str]:
    return [
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-tls1_3",
        "-servername",
        "localhost",
        "-CAfile",
        str(ca_file),
        "-verify_return_error",
        "-brief",
        *extra,
    ]


def only_connection(server: EngineServer) -> events.HandshakeComplete:
    (record,) = server.wait_for(1)
    assert record.error is None, record.error
    assert record.info is not None
    return record.info


# ----------------------------------------------------------------------------- openssl


@needs_openssl
@pytest.mark.parametrize(
    "suite", ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
)
def test_openssl_each_suite(server_p256: EngineServer, ca_file: Path, suite: str) -> None:
    run = run_client(s_client(server_p256.port, ca_file, "-ciphersuites", suite), [b"ping\n"])
    assert "ping" in run.stdout
    assert only_connection(server_p256).cipher_suite == suite


@needs_openssl
@pytest.mark.parametrize(
    ("openssl_name", "iana_name"),
    [
        ("x25519", "x25519"),
        ("x448", "x448"),
        ("P-256", "secp256r1"),
        ("P-384", "secp384r1"),
        ("P-521", "secp521r1"),
        ("ffdhe2048", "ffdhe2048"),
        ("ffdhe3072", "ffdhe3072"),
    ],
)
def test_openssl_each_group(
    ca: Issued, leaves: dict[str, Issued], ca_file: Path, openssl_name: str, iana_name: str
) -> None:
    groups = tuple(GROUP_CODES[n] for n in ("x25519", "secp256r1", "x448", "secp384r1"))
    groups += tuple(GROUP_CODES[n] for n in ("secp521r1", "ffdhe2048", "ffdhe3072"))
    with EngineServer(config_for(ca, leaves["p256"], groups=groups)) as server:
        run = run_client(s_client(server.port, ca_file, "-groups", openssl_name), [b"ping\n"])
        assert "ping" in run.stdout
        info = only_connection(server)
    assert info.group == iana_name and not info.hello_retry


@needs_openssl
@pytest.mark.parametrize("kind", KEY_KINDS)
def test_openssl_each_certificate_type(
    ca: Issued, leaves: dict[str, Issued], ca_file: Path, kind: str
) -> None:
    expected = {
        "p256": "ecdsa_secp256r1_sha256",
        "p384": "ecdsa_secp384r1_sha384",
        "rsa2048": "rsa_pss_rsae_sha256",
        "ed25519": "ed25519",
    }[kind]
    with EngineServer(config_for(ca, leaves[kind])) as server:
        run = run_client(s_client(server.port, ca_file), [b"ping\n"])
        assert "Verification: OK" in run.stderr + run.stdout
        info = only_connection(server)
    assert info.signature_scheme == expected


@needs_openssl
def test_openssl_hello_retry_request(ca: Issued, leaves: dict[str, Issued], ca_file: Path) -> None:
    # openssl sends a key share only for its first group; we accept only P-384.
    config = config_for(ca, leaves["p256"], groups=(GROUP_CODES["secp384r1"],))
    with EngineServer(config) as server:
        run = run_client(s_client(server.port, ca_file, "-groups", "x25519:P-384"), [b"ping\n"])
        assert "ping" in run.stdout
        info = only_connection(server)
    assert info.hello_retry and info.group == "secp384r1"


@needs_openssl
def test_openssl_key_updates_keep_data_flowing(server_p256: EngineServer, ca_file: Path) -> None:
    lines = [b"one\n", b"k\n", b"two\n", b"K\n", b"three\n", b"K\n", b"four\n"]
    run = run_client(s_client(server_p256.port, ca_file), lines)
    assert all(word in run.stdout for word in ("one", "two", "three", "four"))
    (record,) = server_p256.wait_for(1)
    assert record.error is None
    updates = [e for e in record.events if isinstance(e, events.KeyUpdated)]
    assert [u.peer_requested for u in updates] == [False, True, True]
    assert bytes(record.received) == b"one\ntwo\nthree\nfour\n"


@needs_openssl
def test_openssl_alpn_server_preference(server_p256: EngineServer, ca_file: Path) -> None:
    run = run_client(s_client(server_p256.port, ca_file, "-alpn", "http/1.1,h2"), [b"x\n"])
    assert "x" in run.stdout
    assert only_connection(server_p256).alpn_protocol == "h2"


@needs_openssl
def test_openssl_tls12_only_gets_protocol_version(server_p256: EngineServer, ca_file: Path) -> None:
    argv = s_client(server_p256.port, ca_file)
    argv[argv.index("-tls1_3")] = "-tls1_2"
    proc = subprocess.run(argv, input=b"", capture_output=True, timeout=20)
    assert proc.returncode != 0
    (record,) = server_p256.wait_for(1)
    assert record.error is not None
    assert record.error.alert == AlertDescription.protocol_version


@needs_openssl
def test_openssl_alpn_required_without_overlap(
    ca: Issued, leaves: dict[str, Issued], ca_file: Path
) -> None:
    config = config_for(ca, leaves["p256"], alpn_protocols=("h2",), alpn_required=True)
    with EngineServer(config) as server:
        argv = s_client(server.port, ca_file, "-alpn", "spdy/3")
        proc = subprocess.run(argv, input=b"", capture_output=True, timeout=20)
        (record,) = server.wait_for(1)
    assert proc.returncode != 0
    assert b"no application protocol" in proc.stderr + proc.stdout
    assert record.error is not None
    assert record.error.alert == AlertDescription.no_application_protocol


# ----------------------------------------------------------------------------- gnutls-cli


@needs_gnutls
@pytest.mark.parametrize(
    ("priority", "suite", "group"),
    [
        ("-CIPHER-ALL:+AES-128-GCM:-GROUP-ALL:+GROUP-X25519", "TLS_AES_128_GCM_SHA256", "x25519"),
        ("-CIPHER-ALL:+AES-256-GCM:-GROUP-ALL:+GROUP-SECP256R1", "TLS_AES_256_GCM_SHA384", None),
        ("-CIPHER-ALL:+CHACHA20-POLY1305:-GROUP-ALL:+GROUP-SECP384R1", None, "secp384r1"),
        ("-GROUP-ALL:+GROUP-SECP521R1", None, "secp521r1"),
        ("-GROUP-ALL:+GROUP-FFDHE2048", None, "ffdhe2048"),
        ("-GROUP-ALL:+GROUP-X448", None, "x448"),
    ],
)
def test_gnutls_priorities(
    server_p256: EngineServer, ca_file: Path, priority: str, suite: str | None, group: str | None
) -> None:
    argv = [
        "gnutls-cli",
        "--port",
        str(server_p256.port),
        "--x509cafile",
        str(ca_file),
        "--sni-hostname",
        "localhost",
        "--verify-hostname",
        "localhost",
        "--priority",
        f"NORMAL:-VERS-ALL:+VERS-TLS1.3:{priority}",
        "127.0.0.1",
    ]
    run = run_client(argv, [b"ping\n"])
    assert "Handshake was completed" in run.stdout + run.stderr
    info = only_connection(server_p256)
    if suite is not None:
        assert info.cipher_suite == suite
    if group is not None:
        assert info.group == group


# ----------------------------------------------------------------------------- curl


@needs_curl
@pytest.mark.parametrize("verify", ["cacert", "insecure"])
def test_curl_fetches_over_tls13(
    ca: Issued, leaves: dict[str, Issued], ca_file: Path, verify: str
) -> None:
    config = config_for(ca, leaves["rsa2048"], alpn_protocols=("http/1.1",))
    with EngineServer(config, behaviour=http_behaviour) as server:
        trust = ["--cacert", str(ca_file)] if verify == "cacert" else ["-k"]
        argv = ["curl", "-sS", "--tlsv1.3", *trust, "--max-time", "15"]
        argv += [
            "--resolve",
            f"localhost:{server.port}:127.0.0.1",
            f"https://localhost:{server.port}/",
        ]
        proc = subprocess.run(argv, capture_output=True, timeout=30)
        info = only_connection(server)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == HTTP_RESPONSE.split(b"\r\n\r\n", 1)[1]
    assert info.alpn_protocol == "http/1.1" and info.server_name == "localhost"


# ----------------------------------------------------------------------------- Python ssl


def test_python_ssl_client(server_p256: EngineServer, ca: Issued) -> None:
    context = ssl.create_default_context(cadata=ca.cert_pem().decode())
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", server_p256.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.3"
            assert tls.selected_alpn_protocol() == "http/1.1"
            assert _recv_exactly(tls, len(GREETING)) == GREETING
            payload = bytes(range(256)) * 200  # several records
            tls.sendall(payload)
            assert _recv_exactly(tls, len(payload)) == payload
            tls.unwrap()  # close_notify both ways
    info = only_connection(server_p256)
    assert info.alpn_protocol == "http/1.1"
    (record,) = server_p256.wait_for(1)
    assert record.events[-1] == events.ConnectionClosed(clean=True)


def _recv_exactly(tls: ssl.SSLSocket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = tls.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


@needs_openssl
def test_openssl_resumption_with_early_data(
    ca: Issued, leaves: dict[str, Issued], ca_file: Path, tmp_path: Path
) -> None:
    config = config_for(
        ca, leaves["p256"], ticket_keys=TicketKeyring.generate(), max_early_data=16384
    )
    session, early = tmp_path / "session.pem", tmp_path / "early.txt"
    early.write_bytes(b"GET /early\n")
    with EngineServer(config) as server:
        run_client(s_client(server.port, ca_file, "-sess_out", str(session)), [b"one\n"])
        resumed = s_client(
            server.port, ca_file, "-sess_in", str(session), "-early_data", str(early)
        )
        run = run_client(resumed, [b"two\n"])
        first, second = server.wait_for(2)
    assert "two" in run.stdout
    assert first.info is not None and not first.info.resumed
    assert sum(isinstance(e, events.SessionTicketIssued) for e in first.events) == 2
    assert second.error is None and second.info is not None
    assert second.info.resumed and second.info.early_data_accepted
    assert events.EarlyData(b"GET /early\n") in second.events


@needs_openssl
@pytest.mark.parametrize("suite", ["TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_8_SHA256"])
def test_openssl_ccm_suites_when_enabled(
    ca: Issued, leaves: dict[str, Issued], ca_file: Path, suite: str
) -> None:
    config = config_for(ca, leaves["p256"], cipher_suites=(0x1301, 0x1304, 0x1305))
    with EngineServer(config) as server:
        run = run_client(s_client(server.port, ca_file, "-ciphersuites", suite), [b"ccm\n"])
        info = only_connection(server)
    assert "ccm" in run.stdout and info.cipher_suite == suite


@needs_curl
def test_curl_over_ipv6_loopback(ca: Issued, ca_file: Path) -> None:
    leaf = make_leaf(ca, ("localhost", "::1"))
    config = config_for(ca, leaf, alpn_protocols=("http/1.1",))
    with EngineServer(config, behaviour=http_behaviour, host="::1") as server:
        argv = ["curl", "-sS", "--tlsv1.3", "--cacert", str(ca_file), "--max-time", "15"]
        proc = subprocess.run(
            [*argv, f"https://[::1]:{server.port}/"], capture_output=True, timeout=30
        )
        info = only_connection(server)
    assert proc.returncode == 0, proc.stderr
    assert info.server_name is None  # RFC 6066: no SNI for IP literals
