"""Issue 4: OCSP stapling (RFC 8446 §4.4.2.1) seen by ``openssl s_client -status``.

The response is made with cryptography's OCSPResponseBuilder and signed by the
test CA.  CertificateChain.ocsp_staple() decides what may be stapled: never a
stale response (past nextUpdate, RFC 6960 §4.2.2.1), an unsuccessful one, or
one about another certificate.
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import pytest
from certs import make_leaf
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from engine_helpers import EngineServer, run_client
from interop_helpers import Pki, make_pki, ocsp_response, s_client, utcnow

from tls13.certificates import CertificateChain, CertificateStore
from tls13.config import ServerConfig

HOUR = datetime.timedelta(hours=1)
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("ocsp-pki"))


def chain_with(pki: Pki, response: bytes | None) -> CertificateChain:
    return CertificateChain.from_pem(
        pki.server_chain.read_bytes(), pki.server_key.read_bytes(), ocsp=response
    )


def fresh_response(pki: Pki) -> bytes:
    now = utcnow()
    return ocsp_response(pki.ca, pki.server, now - HOUR, now + 24 * HOUR)


# ----------------------------------------------------------------------------- ocsp_staple


def test_fresh_response_is_stapled_until_next_update(pki: Pki) -> None:
    now = utcnow().replace(microsecond=0)  # OCSP times are whole seconds
    response = ocsp_response(pki.ca, pki.server, now - HOUR, now + HOUR)
    chain = chain_with(pki, response)
    assert chain.ocsp_staple(now.timestamp()) == response
    assert chain.ocsp_staple((now + HOUR).timestamp()) == response  # nextUpdate itself: still ok
    assert chain.ocsp_staple((now + HOUR).timestamp() + 1) is None


def test_response_without_next_update_stays_stapleable(pki: Pki) -> None:
    now = utcnow()
    response = ocsp_response(pki.ca, pki.server, now - HOUR, None)
    chain = chain_with(pki, response)
    assert chain.ocsp_staple((now + 1000 * HOUR).timestamp()) == response


def test_unusable_responses_are_never_stapled(pki: Pki) -> None:
    now = utcnow()
    other = make_leaf(pki.ca, ("other.example",))
    about_other = ocsp_response(pki.ca, other, now - HOUR, now + HOUR)
    unsuccessful = ocsp.OCSPResponseBuilder.build_unsuccessful(
        ocsp.OCSPResponseStatus.TRY_LATER
    ).public_bytes(Encoding.DER)
    for response in (about_other, unsuccessful, b"not DER at all", None):
        chain = chain_with(pki, response)
        assert chain.ocsp_staple(now.timestamp()) is None
        assert chain.ocsp_response == response  # kept as configured, just not sent


# ----------------------------------------------------------------------------- s_client -status


def serve(chain: CertificateChain) -> EngineServer:
    return EngineServer(ServerConfig(certificates=CertificateStore([chain])))


@needs_openssl
@pytest.mark.timeout(60)
def test_s_client_status_prints_our_staple(pki: Pki) -> None:
    with serve(chain_with(pki, fresh_response(pki))) as server:
        run = run_client(s_client(server.port, pki.ca_file, "-status"), [b"ping\n"])
        (record,) = server.wait_for(1)
    assert record.error is None
    assert "OCSP Response Status: successful (0x0)" in run.stdout
    assert "Cert Status: good" in run.stdout
    assert "Responder Id: " in run.stdout


@needs_openssl
@pytest.mark.timeout(60)
def test_no_staple_without_status_request_or_response(pki: Pki) -> None:
    with serve(chain_with(pki, fresh_response(pki))) as server:
        plain = run_client(s_client(server.port, pki.ca_file), [b"ping\n"])
    assert "OCSP" not in plain.stdout  # not asked: not sent (§4.4.2.1)
    with serve(chain_with(pki, None)) as server:
        asked = run_client(s_client(server.port, pki.ca_file, "-status"), [b"ping\n"])
    assert "OCSP response: no response sent" in asked.stdout


@pytest.mark.skipif(shutil.which("gnutls-cli") is None, reason="gnutls-cli missing")
@pytest.mark.timeout(60)
def test_gnutls_saves_our_staple(pki: Pki, tmp_path: Path) -> None:
    response = fresh_response(pki)
    saved = tmp_path / "staple.der"
    with serve(chain_with(pki, response)) as server:
        argv = ["gnutls-cli", "--port", str(server.port), "--x509cafile", str(pki.ca_file)]
        argv += ["--sni-hostname", "localhost", "--verify-hostname", "localhost"]
        argv += ["--save-ocsp", str(saved), "127.0.0.1"]
        run_client(argv, [b"ping\n"])
    assert saved.read_bytes() == response  # byte for byte what we configured


@needs_openssl
@pytest.mark.timeout(60)
def test_stale_response_is_not_sent(pki: Pki) -> None:
    """Review R21: a response past its nextUpdate is never stapled (RFC 6960 §4.2.2.1)."""
    now = utcnow()
    stale = ocsp_response(pki.ca, pki.server, now - 48 * HOUR, now - 24 * HOUR)
    with serve(chain_with(pki, stale)) as server:
        run = run_client(s_client(server.port, pki.ca_file, "-status"), [b"ping\n"])
    assert "OCSP response: no response sent" in run.stdout
    assert "OCSP Response Status" not in run.stdout
