"""Issue 3: real clients resume against our ServerConnection and say so.

openssl s_client (``-sess_out``/``-sess_in``), gnutls-cli ``--resume`` and
Python's ``ssl`` session reuse; tickets opened by a second server process that
shares the key file; ticket key rotation; both PSK key exchange mode offers.
A resumed handshake must not carry Certificate/CertificateVerify (RFC 8446 §2.2).
"""

from __future__ import annotations

import shutil
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_helpers import GREETING, EngineServer, run_client, store_for
from interop_helpers import Pki, ServerProcess, make_pki, s_client

from tls13 import events
from tls13.config import ServerConfig
from tls13.tickets import TicketKeyring

pytestmark = pytest.mark.timeout(120)

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
needs_gnutls = pytest.mark.skipif(shutil.which("gnutls-cli") is None, reason="gnutls-cli missing")

REUSED = "Reused, TLSv1.3"
NEW = "New, TLSv1.3"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("resumption-pki"))


def config_for(pki: Pki, keyring: TicketKeyring | None = None, **extra: object) -> ServerConfig:
    store = store_for([(pki.server_chain.read_bytes(), pki.server_key.read_bytes())])
    keys = keyring if keyring is not None else TicketKeyring.generate()
    return ServerConfig(certificates=store, ticket_keys=keys, **extra)  # type: ignore[arg-type]


@pytest.fixture
def server(pki: Pki) -> Iterator[EngineServer]:
    with EngineServer(config_for(pki)) as srv:
        yield srv


def first_session(port: int, pki: Pki, session: Path, *extra: str) -> str:
    """A full handshake that stores its ticket in ``session``; s_client's stdout."""
    run = run_client(s_client(port, pki.ca_file, "-sess_out", str(session), *extra), [b"one\n"])
    assert NEW in run.stdout, run.stdout
    assert session.stat().st_size > 0
    return run.stdout


def resume(port: int, pki: Pki, session: Path, *extra: str) -> str:
    run = run_client(s_client(port, pki.ca_file, "-sess_in", str(session), *extra), [b"two\n"])
    assert "two" in run.stdout
    return run.stdout


def server_messages(s_client_stdout: str) -> list[str]:
    """Handshake message names s_client -msg saw arrive ("<<<" lines)."""
    names = []
    for line in s_client_stdout.splitlines():
        if line.startswith("<<<") and ", Handshake [" in line:
            names.append(line.rsplit(", ", 1)[1].strip())
    return names


# ----------------------------------------------------------------------------- openssl


@needs_openssl
def test_openssl_resumes_without_certificate(
    server: EngineServer, pki: Pki, tmp_path: Path
) -> None:
    session = tmp_path / "session.pem"
    full = first_session(server.port, pki, session, "-msg")
    resumed = resume(server.port, pki, session, "-msg")
    assert REUSED in resumed and NEW not in resumed
    assert {"Certificate", "CertificateVerify"} <= set(server_messages(full))
    # RFC 8446 §2.2: a PSK handshake authenticates by the PSK, not by a certificate.
    assert server_messages(resumed)[:3] == ["ServerHello", "EncryptedExtensions", "Finished"]
    assert not {"Certificate", "CertificateVerify", "CertificateRequest"} & set(
        server_messages(resumed)
    )
    first, second = server.wait_for(2)
    assert first.info is not None and not first.info.resumed
    assert second.error is None and second.info is not None and second.info.resumed
    # psk_dhe_ke: the resumed handshake still ran a key exchange (forward secrecy).
    assert second.info.group == "x25519"
    assert sum(isinstance(e, events.SessionTicketIssued) for e in second.events) == 2


@needs_openssl
def test_openssl_offering_psk_ke_too_gets_psk_dhe_ke(
    server: EngineServer, pki: Pki, tmp_path: Path
) -> None:
    # -allow_no_dhe_kex makes OpenSSL offer psk_ke besides psk_dhe_ke (RFC 8446 §4.2.9);
    # we only ever pick psk_dhe_ke, so the ServerHello carries a key_share.
    session = tmp_path / "session.pem"
    first_session(server.port, pki, session, "-allow_no_dhe_kex")
    resumed = resume(server.port, pki, session, "-allow_no_dhe_kex")
    assert REUSED in resumed
    _, second = server.wait_for(2)
    assert second.info is not None and second.info.resumed and second.info.group == "x25519"


@needs_openssl
def test_two_processes_sharing_a_key_file(pki: Pki, tmp_path: Path) -> None:
    keys = tmp_path / "ticket.keys"
    TicketKeyring.generate().save(keys)
    args = ("--chain", str(pki.server_chain), "--key", str(pki.server_key))
    args += ("--ticket-keys", str(keys))
    session = tmp_path / "session.pem"
    with ServerProcess(*args) as issuer, ServerProcess(*args) as other:
        first_session(issuer.port, pki, session)
        assert REUSED in resume(other.port, pki, session)
        (report,) = other.connections(1)
    assert report == {
        "resumed": True,
        "early_data_accepted": False,
        "early_data": "",
        "error": None,
    }


@needs_openssl
def test_a_process_with_another_key_file_does_a_full_handshake(pki: Pki, tmp_path: Path) -> None:
    own, foreign = tmp_path / "own.keys", tmp_path / "foreign.keys"
    TicketKeyring.generate().save(own)
    TicketKeyring.generate().save(foreign)
    base = ("--chain", str(pki.server_chain), "--key", str(pki.server_key))
    session = tmp_path / "session.pem"
    with ServerProcess(*base, "--ticket-keys", str(own)) as issuer:
        first_session(issuer.port, pki, session)
    with ServerProcess(*base, "--ticket-keys", str(foreign)) as other:
        stdout = resume(other.port, pki, session)
        (report,) = other.connections(1)
    assert NEW in stdout and REUSED not in stdout
    assert report["resumed"] is False and report["error"] is None


@needs_openssl
def test_rotation_keeps_old_tickets_until_their_key_is_dropped(pki: Pki, tmp_path: Path) -> None:
    keyring = TicketKeyring.generate(keep=2)
    session = tmp_path / "session.pem"
    with EngineServer(config_for(pki, keyring)) as srv:
        first_session(srv.port, pki, session)
        keyring.rotate()  # the ticket's key is now the previous one: still opens
        assert REUSED in resume(srv.port, pki, session)
        keyring.rotate()  # and now it is gone: a full handshake
        dropped = resume(srv.port, pki, session)
        assert NEW in dropped and REUSED not in dropped
        infos = [record.info for record in srv.wait_for(3)]
    assert [info.resumed if info else None for info in infos] == [False, True, False]


# ----------------------------------------------------------------------------- gnutls-cli


@needs_gnutls
def test_gnutls_resume(server: EngineServer, pki: Pki) -> None:
    argv = ["gnutls-cli", "--port", str(server.port), "--x509cafile", str(pki.ca_file)]
    argv += ["--sni-hostname", "localhost", "--verify-hostname", "localhost"]
    argv += ["--priority", "NORMAL:-VERS-ALL:+VERS-TLS1.3", "--resume", "127.0.0.1"]
    run = run_client(argv, [b"ping\n"], wait_for=b"This is a resumed session")
    assert run.stdout.count("Handshake was completed") == 2  # full, then "Resume Handshake"
    assert "ping" in run.stdout
    first, second = server.wait_for(2)
    assert first.info is not None and not first.info.resumed
    assert second.info is not None and second.info.resumed
    assert second.info.peer_certificates == ()


# ----------------------------------------------------------------------------- Python ssl


def _python_connect(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[ssl.SSLSession | None, bool]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            greeting = b""
            while len(greeting) < len(GREETING):  # tickets arrive with the greeting
                chunk = tls.recv(len(GREETING) - len(greeting))
                assert chunk
                greeting += chunk
            assert greeting == GREETING
            reused = tls.session_reused
            new_session = tls.session
            tls.unwrap()
    return new_session, reused


def test_python_ssl_session_reuse(server: EngineServer, pki: Pki) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    session, reused = _python_connect(server.port, context, None)
    assert not reused and session is not None and session.has_ticket
    _, reused = _python_connect(server.port, context, session)
    assert reused
    first, second = server.wait_for(2)
    assert first.info is not None and not first.info.resumed
    assert second.info is not None and second.info.resumed
