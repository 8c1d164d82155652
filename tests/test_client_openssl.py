"""Our client against ``openssl s_server -tls1_3`` on loopback: every cipher suite and
group OpenSSL offers, HelloRetryRequest, client certificates, and data both ways."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest
from certs import Issued, make_ca, make_leaf, write_pair
from conftest import free_port
from msg_helpers import SocketClient, start_openssl_server

from tls13 import events
from tls13.alerts import AlertDescription, TLSError
from tls13.certificates import CertificateChain
from tls13.client import ClientConnection
from tls13.config import ClientConfig
from tls13.groups import BY_NAME as GROUP_CODES
from tls13.suites import BY_NAME as SUITE_CODES

pytestmark = [
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed"),
    pytest.mark.timeout(60),
]

OPENSSL_SUITES = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_CCM_SHA256",
    "TLS_AES_128_CCM_8_SHA256",
]
# Our group name -> OpenSSL's name for it (OpenSSL 3.0 has no ML-KEM hybrids).
OPENSSL_GROUPS = {
    "x25519": "X25519",
    "x448": "X448",
    "secp256r1": "P-256",
    "secp384r1": "P-384",
    "secp521r1": "P-521",
    "ffdhe2048": "ffdhe2048",
    "ffdhe3072": "ffdhe3072",
    "ffdhe4096": "ffdhe4096",
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    directory = tmp_path_factory.mktemp("openssl-pki")
    ca = make_ca()
    server = make_leaf(ca, ("localhost", "127.0.0.1"))
    rsa_server = make_leaf(ca, ("localhost",), kind="rsa2048")
    client = make_leaf(ca, ("client.example",), client=True)
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca.cert_pem())
    cert, key = write_pair(directory, "server", server)
    rsa_cert, rsa_key = write_pair(directory, "rsa", rsa_server)
    return {
        "ca": ca,
        "ca_path": ca_path,
        "cert": cert,
        "key": key,
        "rsa_cert": rsa_cert,
        "rsa_key": rsa_key,
        "client": client,
    }


@pytest.fixture
def openssl(pki: dict[str, object], processes: list[subprocess.Popen[bytes]]) -> Iterator[object]:
    """A factory: start an s_server with extra arguments, return its port."""

    def start(*extra: str, mode: str = "-www", rsa: bool = False) -> int:
        port = free_port()
        cert = pki["rsa_cert" if rsa else "cert"]
        key = pki["rsa_key" if rsa else "key"]
        process = start_openssl_server(port, str(cert), str(key), extra, mode=mode)
        processes.append(process)
        return port

    yield start


def _client(pki: dict[str, object], **config: object) -> ClientConnection:
    ca = pki["ca"]
    assert isinstance(ca, Issued)
    config.setdefault("ca_certificates", (ca.cert,))
    return ClientConnection(ClientConfig(**config), server_name="localhost")  # type: ignore[arg-type]


def _get_status_page(client: SocketClient) -> bytes:
    client.conn.send_data(b"GET / HTTP/1.0\r\n\r\n")
    return client.read_to_eof()


@pytest.mark.parametrize("suite", OPENSSL_SUITES)
def test_cipher_suites(pki: dict[str, object], openssl: object, suite: str) -> None:
    port = openssl("-ciphersuites", suite)  # type: ignore[operator]
    client = SocketClient(_client(pki, cipher_suites=(SUITE_CODES[suite],)), port)
    try:
        info = client.handshake()
        assert info.cipher_suite == suite
        page = _get_status_page(client)
    finally:
        client.close()
    assert page.startswith(b"HTTP/1.0 200 ok")
    # s_server -www reports the negotiated suite on its status page.
    assert suite.encode() in page


@pytest.mark.parametrize("ours,theirs", sorted(OPENSSL_GROUPS.items()))
def test_groups(pki: dict[str, object], openssl: object, ours: str, theirs: str) -> None:
    code = GROUP_CODES[ours]
    port = openssl("-groups", theirs)  # type: ignore[operator]
    client = SocketClient(_client(pki, groups=(code,), key_share_groups=(code,)), port)
    try:
        info = client.handshake()
        assert info.group == ours and not info.hello_retry
        assert _get_status_page(client).startswith(b"HTTP/1.0 200 ok")
    finally:
        client.close()


def test_hello_retry_request(pki: dict[str, object], openssl: object) -> None:
    port = openssl("-groups", "P-384")  # type: ignore[operator]
    x25519, p384 = GROUP_CODES["x25519"], GROUP_CODES["secp384r1"]
    client = SocketClient(_client(pki, groups=(x25519, p384), key_share_groups=(x25519,)), port)
    try:
        info = client.handshake()
        assert info.hello_retry and info.group == "secp384r1"
        assert _get_status_page(client).startswith(b"HTTP/1.0 200 ok")
    finally:
        client.close()


def test_rsa_server_and_tickets(pki: dict[str, object], openssl: object) -> None:
    port = openssl("-num_tickets", "2", rsa=True)  # type: ignore[operator]
    client = SocketClient(_client(pki), port)
    try:
        info = client.handshake()
        assert info.signature_scheme is not None and info.signature_scheme.startswith("rsa_pss")
        _get_status_page(client)
    finally:
        client.close()
    tickets = [e for e in client.events if isinstance(e, events.NewSessionTicketReceived)]
    assert len(tickets) == 2


def test_echo_and_key_update(pki: dict[str, object], openssl: object) -> None:
    port = openssl(mode="-rev")  # type: ignore[operator]
    client = SocketClient(_client(pki), port)
    try:
        client.handshake()
        client.conn.send_data(b"hello openssl\n")
        client.until(lambda: b"\n" in client.received)
        assert bytes(client.received).startswith(b"hello openssl"[::-1])
        client.received.clear()
        # A KeyUpdate asking openssl to update too; data keeps flowing both ways.
        client.conn.update_keys(request_peer=True)
        client.conn.send_data(b"after update\n")
        client.until(lambda: b"\n" in client.received)
        assert bytes(client.received).startswith(b"after update"[::-1])
        assert any(isinstance(e, events.KeyUpdated) for e in client.events)
        client.conn.close()
        client.flush()
    finally:
        client.close()


def test_client_certificate(pki: dict[str, object], openssl: object) -> None:
    port = openssl("-Verify", "1", "-verifyCAfile", str(pki["ca_path"]), "-verify_return_error")  # type: ignore[operator]
    issued = pki["client"]
    assert isinstance(issued, Issued)
    chain = CertificateChain((issued.cert,), issued.key)  # type: ignore[arg-type]
    client = SocketClient(_client(pki, certificate=chain), port)
    try:
        client.handshake()
        page = _get_status_page(client)
    finally:
        client.close()
    assert page.startswith(b"HTTP/1.0 200 ok")
    assert b"client.example" in page  # s_server shows the verified client certificate


def test_missing_client_certificate(pki: dict[str, object], openssl: object) -> None:
    port = openssl("-Verify", "1", "-verifyCAfile", str(pki["ca_path"]), "-verify_return_error")  # type: ignore[operator]
    client = SocketClient(_client(pki), port)
    try:
        # Our handshake completes before the server judges our (empty) Certificate;
        # its alert then ends the connection.
        client.conn.start()
        with pytest.raises(TLSError) as err:
            client.until(lambda: False)
    finally:
        client.close()
    assert err.value.sent_by_peer
    assert err.value.alert in (
        AlertDescription.certificate_required,
        AlertDescription.handshake_failure,
    )


def test_untrusted_server_is_rejected(pki: dict[str, object], openssl: object) -> None:
    port = openssl()  # type: ignore[operator]
    stranger = make_ca("stranger")
    client = SocketClient(_client(pki, ca_certificates=(stranger.cert,)), port)
    try:
        with pytest.raises(TLSError) as err:
            client.handshake()
    finally:
        client.close()
    assert err.value.alert is AlertDescription.unknown_ca and not err.value.sent_by_peer


def test_wrong_server_name_is_rejected(pki: dict[str, object], openssl: object) -> None:
    port = openssl()  # type: ignore[operator]
    ca = pki["ca"]
    assert isinstance(ca, Issued)
    connection = ClientConnection(
        ClientConfig(ca_certificates=(ca.cert,)), server_name="other.example"
    )
    client = SocketClient(connection, port)
    try:
        with pytest.raises(TLSError) as err:
            client.handshake()
    finally:
        client.close()
    assert err.value.alert in (
        AlertDescription.bad_certificate,
        AlertDescription.certificate_unknown,
    )
