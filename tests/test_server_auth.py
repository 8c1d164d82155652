"""Server-side client authentication (RFC 8446 §4.3.2, §4.4.2, §4.6.2) and SNI policy.

In memory against our ClientConnection, and with ``openssl s_client -cert``
over loopback TCP.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from certs import Issued, make_ca, make_leaf, write_pair
from engine_helpers import EngineServer, pump, run_client

import tls13.client
import tls13.server
from tls13 import events
from tls13 import extensions as ext
from tls13.alerts import AlertDescription, TLSError
from tls13.certificates import CertificateChain, CertificateStore
from tls13.client import ClientConnection
from tls13.config import ClientConfig, ServerConfig
from tls13.connection import ConnectionStateError
from tls13.server import ServerConnection
from tls13.tickets import SessionTicket, TicketKeyring


@pytest.fixture(scope="module")
def pki() -> dict[str, Issued]:
    ca = make_ca()
    stranger = make_ca("stranger CA")
    return {
        "ca": ca,
        "server": make_leaf(ca, ("localhost",)),
        "other": make_leaf(ca, ("other.example",), kind="ed25519"),
        "client": make_leaf(ca, ("alice.example",), client=True),
        "stranger": make_leaf(stranger, ("mallory.example",), client=True),
    }


def chain(issued: Issued) -> CertificateChain:
    return CertificateChain((issued.cert,), issued.key)  # type: ignore[arg-type]


def server_config(pki: dict[str, Issued], **overrides: Any) -> ServerConfig:
    store = CertificateStore([chain(pki["server"]), chain(pki["other"])], chain(pki["server"]))
    return ServerConfig(certificates=store, client_ca=(pki["ca"].cert,), **overrides)


def client_config(pki: dict[str, Issued], who: str | None) -> ClientConfig:
    certificate = chain(pki[who]) if who else None
    return ClientConfig(ca_certificates=(pki["ca"].cert,), certificate=certificate)


def connect(
    client_cfg: ClientConfig, server_cfg: ServerConfig, server_name: str = "localhost", **kw: Any
) -> tuple[ClientConnection, ServerConnection, list[events.Event], list[events.Event]]:
    client = ClientConnection(client_cfg, server_name=server_name, **kw)
    server = ServerConnection(server_cfg)
    client.start()
    client_events, server_events = pump(client, server)
    return client, server, client_events, server_events


def info_of(evs: list[events.Event]) -> events.HandshakeComplete:
    (info,) = [e for e in evs if isinstance(e, events.HandshakeComplete)]
    return info


def test_required_client_certificate_is_verified(pki: dict[str, Issued]) -> None:
    _, _, _, server_events = connect(
        client_config(pki, "client"), server_config(pki, client_auth="required")
    )
    info = info_of(server_events)
    assert info.client_identity is not None
    assert info.client_identity.names == ("alice.example",)
    assert info.peer_certificates[0] == pki["client"].cert


def test_client_certificate_from_unknown_ca(pki: dict[str, Issued]) -> None:
    with pytest.raises(TLSError) as caught:
        connect(client_config(pki, "stranger"), server_config(pki, client_auth="optional"))
    assert caught.value.alert == AlertDescription.unknown_ca


def test_resumed_session_remembers_client_identity(pki: dict[str, Issued]) -> None:
    config = server_config(pki, client_auth="required", ticket_keys=TicketKeyring.generate())
    _, _, client_events, _ = connect(client_config(pki, "client"), config)
    tickets = [e.ticket for e in client_events if isinstance(e, events.NewSessionTicketReceived)]
    _, _, _, server_events = connect(client_config(pki, "client"), config, session=tickets[0])
    info = info_of(server_events)
    assert info.resumed
    assert info.client_identity is not None and info.client_identity.names == ("alice.example",)


def _first_ticket(client_events: list[events.Event]) -> SessionTicket:
    return next(e.ticket for e in client_events if isinstance(e, events.NewSessionTicketReceived))


def test_ticket_is_not_resumed_under_another_name(pki: dict[str, Issued]) -> None:
    """Review R1: RFC 6066 §3 / rfc8446bis §4.2.11: a ticket from a name without client
    auth must not skip the certificate another name requires (shared ticket keys)."""
    keyring = TicketKeyring.generate()
    public = server_config(pki, ticket_keys=keyring)
    secure = server_config(pki, ticket_keys=keyring, client_auth="required")
    listener = replace(
        public, config_for_name=lambda name: secure if name == "other.example" else public
    )
    _, _, client_events, _ = connect(client_config(pki, None), listener)
    # The client strips the name from its ticket, so it offers it anyway.
    stolen = replace(_first_ticket(client_events), server_name=None)
    with pytest.raises(TLSError) as caught:
        connect(client_config(pki, None), listener, "other.example", session=stolen)
    assert caught.value.alert == AlertDescription.certificate_required
    # With a certificate the same client gets a full, authenticated handshake instead.
    _, _, _, server_events = connect(
        client_config(pki, "client"), listener, "other.example", session=stolen
    )
    info = info_of(server_events)
    assert not info.resumed and info.client_identity is not None


def test_ticket_resumes_under_its_own_name(pki: dict[str, Issued]) -> None:
    config = server_config(pki, ticket_keys=TicketKeyring.generate())
    _, _, client_events, _ = connect(client_config(pki, None), config, "other.example")
    ticket = _first_ticket(client_events)
    _, _, _, server_events = connect(
        client_config(pki, None), config, "other.example", session=ticket
    )
    assert info_of(server_events).resumed
    _, _, _, server_events = connect(
        client_config(pki, None), config, "localhost", session=replace(ticket, server_name=None)
    )
    assert not info_of(server_events).resumed


def test_remembered_client_certificate_is_checked_again(pki: dict[str, Issued]) -> None:
    """A reload that no longer trusts the client's CA must not resume its old identity."""
    keyring = TicketKeyring.generate()
    before = server_config(pki, client_auth="required", ticket_keys=keyring)
    _, _, client_events, _ = connect(client_config(pki, "client"), before)
    after = replace(before, client_ca=(pki["stranger"].cert,))
    with pytest.raises(TLSError) as caught:  # a full handshake, which the CA now fails
        connect(client_config(pki, "client"), after, session=_first_ticket(client_events))
    assert caught.value.alert == AlertDescription.unknown_ca


def test_unrequested_client_certificate_extension(
    pki: dict[str, Issued], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review R7: §4.4.2: the client's CertificateEntry extensions must answer our
    CertificateRequest, which asks for none (no status_request)."""
    original = tls13.client.CertificateEntry
    ocsp = ext.encode_certificate_status(b"\x30\x03\x0a\x01\x00")

    def with_status(der: bytes, extensions: object = ()) -> object:
        return original(der, [(ext.ExtensionType.status_request, ocsp)])

    monkeypatch.setattr(tls13.client, "CertificateEntry", with_status)
    with pytest.raises(TLSError) as caught:
        connect(client_config(pki, "client"), server_config(pki, client_auth="required"))
    assert caught.value.alert == AlertDescription.unsupported_extension


@pytest.mark.parametrize("send_ca_names", [True, False])
def test_certificate_authorities_only_when_configured(
    pki: dict[str, Issued], monkeypatch: pytest.MonkeyPatch, send_ca_names: bool
) -> None:
    """RFC 8446 §4.2.4: certificate_authorities is optional; send_ca_names=False leaves
    it out of the CertificateRequest (a large CA set) while client_ca still decides trust."""
    sent: list[object] = []
    original = tls13.server.CertificateRequest

    def recording(*args: Any) -> object:
        sent.append(original(*args))
        return sent[-1]

    monkeypatch.setattr(tls13.server, "CertificateRequest", recording)
    config = server_config(pki, client_auth="required", send_ca_names=send_ca_names)
    _, _, _, server_events = connect(client_config(pki, "client"), config)
    assert info_of(server_events).client_identity is not None
    (request,) = sent
    assert isinstance(request, original)
    names = request.extension(ext.ExtensionType.certificate_authorities)
    expected = ext.encode_certificate_authorities([pki["ca"].cert.subject.public_bytes()])
    assert names == (expected if send_ca_names else None)
    with pytest.raises(TLSError) as caught:
        connect(client_config(pki, "stranger"), replace(config, client_auth="optional"))
    assert caught.value.alert == AlertDescription.unknown_ca


def test_post_handshake_auth_needs_the_client_offer(pki: dict[str, Issued]) -> None:
    _, server, _, _ = connect(client_config(pki, None), server_config(pki, client_auth="none"))
    with pytest.raises(ConnectionStateError):
        server.request_client_certificate()


def test_sni_selects_certificate(pki: dict[str, Issued]) -> None:
    cfg = ClientConfig(ca_certificates=(pki["ca"].cert,))
    _, _, client_events, server_events = connect(cfg, server_config(pki), "other.example")
    assert info_of(server_events).signature_scheme == "ed25519"
    assert info_of(client_events).server_name == "other.example"


def test_unknown_name_rejected_when_configured(pki: dict[str, Issued]) -> None:
    cfg = ClientConfig(ca_certificates=None)
    with pytest.raises(TLSError) as caught:
        connect(cfg, server_config(pki, unknown_name="reject"), "nobody.example")
    assert caught.value.alert == AlertDescription.unrecognized_name


def test_unknown_name_gets_default_certificate(pki: dict[str, Issued]) -> None:
    cfg = ClientConfig(ca_certificates=None)
    _, _, _, server_events = connect(cfg, server_config(pki), "nobody.example")
    assert info_of(server_events).signature_scheme == "ecdsa_secp256r1_sha256"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
@pytest.mark.timeout(60)
def test_openssl_client_certificate(pki: dict[str, Issued], tmp_path: Path) -> None:
    crt, key = write_pair(tmp_path, "alice", pki["client"])
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pki["ca"].cert_pem())
    with EngineServer(server_config(pki, client_auth="required")) as server:
        argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", "-tls1_3"]
        argv += ["-servername", "localhost", "-CAfile", str(ca_file), "-brief"]
        argv += ["-cert", str(crt), "-key", str(key)]
        run = run_client(argv, [b"ping\n"])
        (record,) = server.wait_for(1)
    assert "ping" in run.stdout
    assert record.error is None and record.info is not None
    assert record.info.client_identity is not None
    assert record.info.client_identity.names == ("alice.example",)


def _auth_on_request(conn: ServerConnection, event: events.Event) -> None:
    """Echo, and ask for a client certificate when the client says "auth"."""
    if isinstance(event, events.ApplicationData):
        if event.data.strip() == b"auth":
            conn.request_client_certificate()
        conn.send_data(event.data)
    elif isinstance(event, events.ClientCertificateReceived):
        conn.send_data(b"authenticated\n")
    elif isinstance(event, events.ConnectionClosed):
        conn.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
@pytest.mark.timeout(60)
def test_openssl_post_handshake_auth(pki: dict[str, Issued], tmp_path: Path) -> None:
    crt, key = write_pair(tmp_path, "alice", pki["client"])
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pki["ca"].cert_pem())
    config = server_config(pki)  # no CertificateRequest during the handshake
    with EngineServer(config, behaviour=_auth_on_request) as server:
        argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", "-tls1_3"]
        argv += ["-servername", "localhost", "-CAfile", str(ca_file), "-brief", "-enable_pha"]
        argv += ["-cert", str(crt), "-key", str(key)]
        run = run_client(argv, [b"auth\n", b"after\n"], wait_for=None)
        (record,) = server.wait_for(1)
    assert "authenticated" in run.stdout and "after" in run.stdout
    assert record.error is None and record.info is not None
    assert record.info.client_identity is None
    received = [e for e in record.events if isinstance(e, events.ClientCertificateReceived)]
    assert len(received) == 1 and received[0].identity is not None
    assert received[0].identity.names == ("alice.example",)
