"""Issue 3: real clients resume against our ServerConnection and say so.

openssl s_client (``-sess_out``/``-sess_in``), gnutls-cli ``--resume``, curl and
Python's ``ssl`` session reuse; tickets opened by a second server process that
shares the key file; ticket key rotation; both PSK key exchange mode offers.
A resumed handshake must not carry Certificate/CertificateVerify (RFC 8446 §2.2).
psk_ke and psk_dhe_ke (§4.2.9): s_client offering both, and a matrix of offers.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from engine_helpers import (
    GREETING,
    EngineServer,
    MiniClient,
    http_behaviour,
    plaintext_record,
    pump,
    run_client,
    split_records,
    store_for,
)
from interop_helpers import Pki, ServerProcess, make_pki, s_client

from tls13 import events
from tls13 import extensions as ext
from tls13.client import ClientConnection
from tls13.config import ClientConfig, ServerConfig
from tls13.extensions import PSK_DHE_KE, PSK_KE, ExtensionType
from tls13.keyschedule import KeySchedule, finished_verify_data
from tls13.messages import ClientHello, ServerHello
from tls13.server import ServerConnection
from tls13.suites import SUITES
from tls13.tickets import SessionTicket, TicketKeyring
from tls13.transcript import transcript_hash

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
    # ServerConfig.tickets_after_resumption (default 1): one fresh ticket after a resumption.
    assert sum(isinstance(e, events.SessionTicketIssued) for e in second.events) == 1


@needs_openssl
@pytest.mark.parametrize(
    ("server_modes", "group"),
    [((PSK_DHE_KE, PSK_KE), "x25519"), ((PSK_KE, PSK_DHE_KE), None)],
    ids=["prefer-psk_dhe_ke", "prefer-psk_ke"],
)
def test_openssl_offering_both_modes_gets_our_preferred(
    pki: Pki, tmp_path: Path, server_modes: tuple[int, ...], group: str | None
) -> None:
    # -allow_no_dhe_kex makes OpenSSL offer psk_ke besides psk_dhe_ke (RFC 8446 §4.2.9);
    # the server's psk_modes order decides.  psk_ke: no key_share in the ServerHello.
    session = tmp_path / "session.pem"
    with EngineServer(config_for(pki, psk_modes=server_modes)) as server:
        first_session(server.port, pki, session, "-allow_no_dhe_kex")
        resumed = resume(server.port, pki, session, "-allow_no_dhe_kex", "-msg")
        _, second = server.wait_for(2)
    assert REUSED in resumed
    assert "Certificate" not in server_messages(resumed)
    assert second.info is not None and second.info.resumed and second.info.group == group


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


# ----------------------------------------------------------------------------- mode matrix
# No installed client can offer psk_ke alone for a resumption ticket (OpenSSL 3.0 always
# adds psk_dhe_ke; gnutls-cli uses psk_ke only for external PSKs), so these hellos are
# built here, with a real ticket and binder, and fed to the engine in memory.


@pytest.mark.parametrize(
    ("server_modes", "offered", "expected"),
    [
        ((PSK_DHE_KE, PSK_KE), (PSK_KE,), PSK_KE),
        ((PSK_DHE_KE,), (PSK_KE,), None),  # nothing in common: a full handshake
        ((PSK_KE,), (PSK_DHE_KE,), None),
        ((PSK_DHE_KE, PSK_KE), (PSK_KE, PSK_DHE_KE), PSK_DHE_KE),  # our order wins
    ],
)
def test_psk_key_exchange_modes(
    pki: Pki, server_modes: tuple[int, ...], offered: tuple[int, ...], expected: int | None
) -> None:
    keyring = TicketKeyring.generate()
    ticket = ticket_from(config_for(pki, keyring))  # issued under the default modes
    server = ServerConnection(config_for(pki, keyring, psk_modes=server_modes))
    server.receive_data(psk_hello_record(ticket, offered))
    hello, *rest = split_records(server.data_to_send())
    answer = ServerHello.parse(hello[5 + 4 :])
    if expected is None:
        # RFC 8446 §4.2.9: no common mode, so the PSK is ignored: a full handshake,
        # whose encrypted flight carries the certificate chain.
        assert answer.selected_identity() is None and answer.key_share() is not None
        assert len(b"".join(rest)) > len(pki.server.cert.public_bytes(Encoding.DER))
        return
    assert answer.selected_identity() == 0
    assert len(b"".join(rest)) < len(pki.server.cert.public_bytes(Encoding.DER))  # no chain
    # psk_ke: no key_share at all; psk_dhe_ke: an (EC)DHE share as usual.
    assert (answer.key_share() is None) is (expected == PSK_KE)


def ticket_from(config: ServerConfig) -> SessionTicket:
    client = ClientConnection(ClientConfig(ca_certificates=(pki_ca(config),)), "localhost")
    client.start()
    client_events, _ = pump(client, ServerConnection(config))
    return next(e.ticket for e in client_events if isinstance(e, events.NewSessionTicketReceived))


def pki_ca(config: ServerConfig) -> x509.Certificate:
    """The root at the end of the server's chain (make_pki writes leaf + CA)."""
    return config.certificates.default.certificates[-1]


def psk_hello_record(ticket: SessionTicket, modes: tuple[int, ...]) -> bytes:
    """A ClientHello offering ``ticket`` with the given psk_key_exchange_modes."""
    suite = SUITES[ticket.cipher_suite]
    client = MiniClient(
        suites=(ticket.cipher_suite,),
        extra_extensions=[(ExtensionType.psk_key_exchange_modes, ext.encode_psk_modes(modes))],
    )
    identity = ext.PskIdentity(ticket.ticket, ticket.obfuscated_age(time.time()))
    offer = ext.OfferedPsks((identity,), (bytes(suite.hash_len),))
    extensions = [
        *client.extensions(),
        (ExtensionType.pre_shared_key, ext.encode_offered_psks(offer)),
    ]
    hello = ClientHello(client.random, b"", (ticket.cipher_suite,), extensions)
    schedule = KeySchedule(suite)
    schedule.set_psk(ticket.psk)
    binder_input = transcript_hash(suite.hash, hello.truncated())
    binder = finished_verify_data(suite.hash, schedule.binder_key(True), binder_input)
    return plaintext_record(22, hello.with_binders([binder]).serialize(), version=0x0301)


# ----------------------------------------------------------------------------- curl


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_resumes_its_second_connection(pki: Pki) -> None:
    # Our HTTP behaviour closes each connection, so curl's second URL needs a new one,
    # for which it offers the ticket it cached from the first.
    config = config_for(pki, alpn_protocols=("http/1.1",))
    with EngineServer(config, behaviour=http_behaviour) as server:
        url = f"https://localhost:{server.port}/"
        argv = ["curl", "-sSv", "--tlsv1.3", "--cacert", str(pki.ca_file), "--max-time", "15"]
        argv += ["--resolve", f"localhost:{server.port}:127.0.0.1", url, url]
        proc = subprocess.run(argv, capture_output=True, timeout=30)
        first, second = server.wait_for(2)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"ok\nok\n"
    trace = proc.stderr.decode(errors="replace")
    before, after = trace.split("SSL re-using session ID", 1)
    assert "Certificate (11)" in before and "Certificate (11)" not in after
    assert first.info is not None and not first.info.resumed
    assert second.info is not None and second.info.resumed
