"""Issue 4: client certificates from real clients against our ServerConnection.

``openssl s_client -cert/-key`` and ``curl --cert/--key`` against a server that
requires a client certificate; the alert each failure earns (RFC 8446 §6.2,
rfc8446bis §4.4.2.4): none -> certificate_required (116), untrusted CA ->
unknown_ca (48), expired -> certificate_expired (45), a serverAuth-only
certificate -> unsupported_certificate (43); ``optional`` mode; a resumed
session keeps the identity it was issued for.  And our client's certificate
against ``openssl s_server -Verify 1``: resumption, and an expired certificate.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import free_port
from engine_helpers import (
    HTTP_RESPONSE,
    ConnectionRecord,
    EngineServer,
    http_behaviour,
    run_client,
    store_for,
)
from interop_helpers import Pki, make_pki, run_until_exit, s_client
from msg_helpers import SocketClient, start_openssl_server

from tls13.alerts import AlertDescription, TLSError
from tls13.certificates import CertificateChain
from tls13.client import ClientConnection
from tls13.config import ClientConfig, ServerConfig
from tls13.events import NewSessionTicketReceived
from tls13.tickets import TicketKeyring

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed"),
]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("mtls-pki"))


def config_for(pki: Pki, client_auth: str, **extra: object) -> ServerConfig:
    store = store_for([(pki.server_chain.read_bytes(), pki.server_key.read_bytes())])
    return ServerConfig(
        certificates=store,
        client_auth=client_auth,  # type: ignore[arg-type]
        client_ca=(pki.ca.cert,),
        **extra,  # type: ignore[arg-type]
    )


def only_record(server: EngineServer) -> ConnectionRecord:
    (record,) = server.wait_for(1)
    return record


def with_cert(cert: Path, key: Path) -> tuple[str, ...]:
    return ("-cert", str(cert), "-key", str(key))


# ----------------------------------------------------------------------------- success


def test_openssl_with_certificate(pki: Pki) -> None:
    with EngineServer(config_for(pki, "required")) as server:
        argv = s_client(server.port, pki.ca_file, *with_cert(pki.client_cert, pki.client_key))
        run = run_client(argv, [b"ping\n"])
        record = only_record(server)
    assert "ping" in run.stdout
    assert record.error is None and record.info is not None
    identity = record.info.client_identity
    assert identity is not None
    assert identity.names == ("alice.example",) and identity.subject == "CN=alice.example"
    assert record.info.peer_certificates[0] == pki.client.cert
    assert identity.signature_scheme == "ecdsa_secp256r1_sha256"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_with_certificate(pki: Pki) -> None:
    config = config_for(pki, "required", alpn_protocols=("http/1.1",))
    with EngineServer(config, behaviour=http_behaviour) as server:
        argv = ["curl", "-sS", "--tlsv1.3", "--cacert", str(pki.ca_file), "--max-time", "15"]
        argv += ["--cert", str(pki.client_cert), "--key", str(pki.client_key)]
        argv += ["--resolve", f"localhost:{server.port}:127.0.0.1"]
        argv.append(f"https://localhost:{server.port}/")
        proc = subprocess.run(argv, capture_output=True, timeout=30)
        record = only_record(server)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == HTTP_RESPONSE.split(b"\r\n\r\n", 1)[1]
    assert record.info is not None and record.info.client_identity is not None
    assert record.info.client_identity.names == ("alice.example",)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_without_certificate_fails(pki: Pki) -> None:
    with EngineServer(config_for(pki, "required"), behaviour=http_behaviour) as server:
        argv = ["curl", "-sS", "--tlsv1.3", "--cacert", str(pki.ca_file), "--max-time", "15"]
        argv += ["--resolve", f"localhost:{server.port}:127.0.0.1"]
        argv.append(f"https://localhost:{server.port}/")
        proc = subprocess.run(argv, capture_output=True, timeout=30)
        record = only_record(server)
    assert proc.returncode != 0 and proc.stdout == b""
    assert b"certificate required" in proc.stderr
    assert record.error is not None
    assert record.error.alert == AlertDescription.certificate_required


def test_optional_without_certificate_has_no_identity(pki: Pki) -> None:
    with EngineServer(config_for(pki, "optional")) as server:
        run = run_client(s_client(server.port, pki.ca_file), [b"ping\n"])
        record = only_record(server)
    assert "ping" in run.stdout
    assert record.error is None and record.info is not None
    assert record.info.client_identity is None and record.info.peer_certificates == ()


def test_optional_with_certificate_has_identity(pki: Pki) -> None:
    with EngineServer(config_for(pki, "optional")) as server:
        argv = s_client(server.port, pki.ca_file, *with_cert(pki.client_cert, pki.client_key))
        run_client(argv, [b"ping\n"])
        record = only_record(server)
    assert record.info is not None and record.info.client_identity is not None
    assert record.info.client_identity.names == ("alice.example",)


def test_resumed_session_keeps_the_client_identity(pki: Pki, tmp_path: Path) -> None:
    config = config_for(pki, "required", ticket_keys=TicketKeyring.generate())
    session = tmp_path / "session.pem"
    cert = with_cert(pki.client_cert, pki.client_key)
    with EngineServer(config) as server:
        run_client(s_client(server.port, pki.ca_file, *cert, "-sess_out", str(session)), [b"a\n"])
        # No -cert this time: the PSK carries the authentication (RFC 8446 §4.6.1).
        resumed = run_client(s_client(server.port, pki.ca_file, "-sess_in", str(session)), [b"b\n"])
        _, second = server.wait_for(2)
    assert "Reused, TLSv1.3" in resumed.stdout
    assert second.info is not None and second.info.resumed
    assert second.info.client_identity is not None
    assert second.info.client_identity.names == ("alice.example",)


# ----------------------------------------------------------------------------- failures


REFUSALS = [
    (None, AlertDescription.certificate_required, "alert certificate required"),
    ("stranger", AlertDescription.unknown_ca, "alert unknown ca"),
    ("expired", AlertDescription.certificate_expired, "alert certificate expired"),
    ("bad_eku", AlertDescription.unsupported_certificate, "alert unsupported certificate"),
]


def _offered(pki: Pki, who: str | None) -> tuple[str, ...]:
    if who is None:
        return ()
    return with_cert(getattr(pki, f"{who}_cert"), getattr(pki, f"{who}_key"))


@pytest.mark.parametrize(("who", "alert", "text"), REFUSALS)
def test_refused_client_certificates(
    pki: Pki, who: str | None, alert: AlertDescription, text: str
) -> None:
    with EngineServer(config_for(pki, "required")) as server:
        output = run_until_exit(s_client(server.port, pki.ca_file, *_offered(pki, who)))
        record = only_record(server)
    assert record.error is not None and not record.error.sent_by_peer
    assert record.error.alert == alert
    assert record.info is None
    # s_client reports the alert we sent, by name and by number.
    assert text in output, output
    assert f"SSL alert number {int(alert)}" in output


@pytest.mark.parametrize(("who", "alert", "text"), REFUSALS)
def test_openssl_server_refuses_with_the_same_alerts(
    pki: Pki,
    processes: list[subprocess.Popen[bytes]],
    who: str | None,
    alert: AlertDescription,
    text: str,
) -> None:
    # The yardstick for "sensible": s_server -Verify 1 picks the same alert for each case.
    port = _verifying_s_server(pki, processes, naccept=2)
    output = run_until_exit(s_client(port, pki.ca_file, *_offered(pki, who)))
    assert text in output and f"SSL alert number {int(alert)}" in output, output


# ----------------------------------------------------------------------------- our client


def _client_with(pki: Pki, certificate: CertificateChain | None, **kw: object) -> ClientConnection:
    config = ClientConfig(ca_certificates=(pki.ca.cert,), certificate=certificate)
    return ClientConnection(config, server_name="localhost", **kw)  # type: ignore[arg-type]


def _chain(cert: Path, key: Path) -> CertificateChain:
    return CertificateChain.from_pem(cert.read_bytes(), key.read_bytes())


def _verifying_s_server(pki: Pki, processes: list[subprocess.Popen[bytes]], naccept: int) -> int:
    port = free_port()
    extra = ["-Verify", "1", "-verifyCAfile", str(pki.ca_file), "-verify_return_error"]
    process = start_openssl_server(
        port, str(pki.server_chain), str(pki.server_key), extra, naccept=naccept
    )
    processes.append(process)
    return port


def test_our_client_resumes_against_s_server_requiring_certificates(
    pki: Pki, processes: list[subprocess.Popen[bytes]]
) -> None:
    port = _verifying_s_server(pki, processes, naccept=3)
    chain = _chain(pki.client_cert, pki.client_key)
    client = SocketClient(_client_with(pki, chain), port)
    try:
        client.handshake()
        client.conn.send_data(b"GET / HTTP/1.0\r\n\r\n")
        first_page = client.read_to_eof()
    finally:
        client.close()
    assert b"alice.example" in first_page  # s_server -www shows the verified client cert
    ticket = next(e.ticket for e in client.events if isinstance(e, NewSessionTicketReceived))
    again = SocketClient(_client_with(pki, chain, session=ticket), port)
    try:
        info = again.handshake()
        # The PSK carries the client authentication: no CertificateRequest this time.
        assert info.resumed and info.peer_certificates == ()
        again.conn.send_data(b"GET / HTTP/1.0\r\n\r\n")
        assert again.read_to_eof().startswith(b"HTTP/1.0 200 ok")
    finally:
        again.close()


def test_our_expired_certificate_is_refused_by_s_server(
    pki: Pki, processes: list[subprocess.Popen[bytes]]
) -> None:
    port = _verifying_s_server(pki, processes, naccept=2)
    chain = _chain(pki.expired_cert, pki.expired_key)
    client = SocketClient(_client_with(pki, chain), port)
    try:
        client.conn.start()
        with pytest.raises(TLSError) as refused:
            client.until(lambda: False)
    finally:
        client.close()
    assert refused.value.sent_by_peer
    assert refused.value.alert == AlertDescription.certificate_expired


# ----------------------------------------------------------------------------- gnutls-cli


@pytest.mark.skipif(shutil.which("gnutls-cli") is None, reason="gnutls-cli missing")
def test_gnutls_with_certificate(pki: Pki) -> None:
    with EngineServer(config_for(pki, "required")) as server:
        argv = ["gnutls-cli", "--port", str(server.port), "--x509cafile", str(pki.ca_file)]
        argv += ["--sni-hostname", "localhost", "--verify-hostname", "localhost"]
        argv += ["--x509certfile", str(pki.client_cert), "--x509keyfile", str(pki.client_key)]
        run = run_client([*argv, "127.0.0.1"], [b"ping\n"])
        record = only_record(server)
    assert "ping" in run.stdout
    assert record.error is None and record.info is not None
    assert record.info.client_identity is not None
    assert record.info.client_identity.names == ("alice.example",)
