"""testssl.sh against the engine on loopback: a TLS 1.3-only server must come out clean.

One bounded scan (protocols, ciphers per protocol, forward secrecy, server
defaults and the vulnerability checks) runs against
:class:`engine_helpers.EngineServer`; its JSON report is then judged:

* no finding of severity MEDIUM, HIGH or CRITICAL at all (WARN = the scan
  could not test something, which counts as a failure too);
* exactly TLS 1.3 offered, with our three cipher suites;
* every probe the engine refused ended in a proper alert, never internal_error
  (testssl sends SSLv2, SSLv3 and TLS 1.0-1.2 hellos, heartbeat and CCS-injection
  probes: bad input must be judged, not crash the state machine).

The certificate is made to be beyond reproach (trusted through ``--add-ca``,
no root in the chain, CRL and OCSP URIs, > 60 days) so certificate findings
cannot hide engine findings.  Findings that are legitimate for a 1.3-only
server (no TLS 1.2, hence no ciphers for it, no session IDs) come out as
INFO/OK from testssl itself, so no allowlist is needed.
"""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from certs import Issued, make_ca, make_key
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID
from engine_helpers import EngineServer, http_behaviour, store_for

from tls13.alerts import AlertDescription
from tls13.config import ServerConfig
from tls13.tickets import TicketKeyring

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(400),
    pytest.mark.skipif(shutil.which("testssl") is None, reason="testssl is not installed"),
]

SCAN_TIMEOUT = 300
BAD_SEVERITIES = {"MEDIUM", "HIGH", "CRITICAL", "WARN"}
# (id, finding) pairs that are not about the server, with the reason.
NOT_ABOUT_THE_SERVER = {
    ("sessionresumption_ticket", "check failed because of connect problem"): (
        "testssl 3.0.8 runs `s_client -sess_out` with stdin at EOF; for TLS 1.3 the ticket "
        "comes after the client's Finished (RFC 8446 §4.6.1), so s_client often exits before "
        "it and the second, -sess_in, connection then has no session file. Whether it happens "
        "is a race; resumption itself is checked by test_tickets_resume_with_openssl."
    ),
}
SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}


def _proper_leaf(ca: Issued) -> Issued:
    """A leaf a scanner has nothing to say about: SAN, EKU, KU, CRL and OCSP URIs, 1 year."""
    key = make_key("p256")
    now = datetime.datetime.now(datetime.timezone.utc)
    ocsp = x509.AccessDescription(
        AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier("http://127.0.0.1/ocsp")
    )
    crl = x509.DistributionPoint(
        [x509.UniformResourceIdentifier("http://127.0.0.1/ca.crl")], None, None, None
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=300))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityInformationAccess([ocsp]), critical=False)
        .add_extension(x509.CRLDistributionPoints([crl]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return Issued(cert, key)


class Scan:
    def __init__(self, findings: list[dict[str, Any]], server: EngineServer, output: str) -> None:
        self.findings = findings
        self.server = server
        self.output = output

    def by_id(self, finding_id: str) -> dict[str, Any]:
        matches = [f for f in self.findings if f["id"] == finding_id]
        assert matches, f"testssl reported no {finding_id}:\n{self.output[-3000:]}"
        return matches[0]


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Scan:
    tmp = tmp_path_factory.mktemp("testssl")
    ca = make_ca("tls13-proxy testssl CA")
    leaf = _proper_leaf(ca)
    (tmp / "ca.pem").write_bytes(ca.cert_pem())
    config = ServerConfig(
        certificates=store_for([(leaf.cert_pem(), leaf.key_pem())]),
        alpn_protocols=("h2", "http/1.1"),
        ticket_keys=TicketKeyring.generate(),
    )
    report = tmp / "report.json"
    with EngineServer(config, http_behaviour, timeout=10.0) as server:
        run = subprocess.run(
            ["testssl", "--quiet", "--color", "0", "--warnings", "off", "--jsonfile",
             str(report), "--add-ca", str(tmp / "ca.pem"), "--ip", "127.0.0.1",
             "--openssl-timeout", "10", "-p", "-E", "-f", "-S", "-U",
             f"localhost:{server.port}"],
            capture_output=True, text=True, timeout=SCAN_TIMEOUT, cwd=tmp,
        )  # fmt: skip
        assert report.exists(), run.stdout + run.stderr
        findings = json.loads(report.read_text())
        return Scan(findings, server, run.stdout + run.stderr)


def test_no_medium_or_worse_findings(scan: Scan) -> None:
    bad = [
        f"{f['severity']} {f['id']}: {f['finding']}"
        for f in scan.findings
        if f["severity"] in BAD_SEVERITIES and (f["id"], f["finding"]) not in NOT_ABOUT_THE_SERVER
    ]
    assert not bad, "\n".join(bad)


def test_only_tls13_is_offered(scan: Scan) -> None:
    for legacy in ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2"):
        assert scan.by_id(legacy)["finding"].startswith("not offered"), legacy
    assert scan.by_id("TLS1_3")["finding"].startswith("offered")


def test_all_three_suites_found(scan: Scan) -> None:
    found = {
        f["finding"].split()[-1]
        for f in scan.findings
        if f["id"].startswith("cipher-tls1_3_") or f["id"].startswith("cipher_x13")
    }
    assert SUITES <= found, found


def test_chain_is_trusted(scan: Scan) -> None:
    assert scan.by_id("cert_chain_of_trust")["severity"] == "OK"


def test_probes_end_in_alerts_not_internal_errors(scan: Scan) -> None:
    records = scan.server.wait_for(len(scan.server.connections), timeout=30)
    assert len(records) > 20  # the scan really talked to the engine
    internal = [
        r.error for r in records if r.error and r.error.alert is AlertDescription.internal_error
    ]
    assert not internal, internal
    assert any(r.info is not None for r in records)


def test_tickets_resume_with_openssl(tmp_path: Path) -> None:
    """What the racy testssl ticket check means to test: an openssl session resumes."""
    ca = make_ca("tls13-proxy resumption CA")
    leaf = _proper_leaf(ca)
    config = ServerConfig(
        certificates=store_for([(leaf.cert_pem(), leaf.key_pem())]),
        ticket_keys=TicketKeyring.generate(),
    )
    session = tmp_path / "session.pem"
    with EngineServer(config, http_behaviour, timeout=10.0) as server:
        base = ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}",
                "-servername", "localhost", "-tls1_3"]  # fmt: skip
        # Keep stdin open a moment so the NewSessionTicket arrives before s_client exits.
        first = subprocess.Popen(
            [*base, "-sess_out", str(session)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(1.0)
        try:
            first.communicate(timeout=10)  # closes stdin: s_client says close_notify and exits
        except subprocess.TimeoutExpired:
            first.kill()
            first.communicate()
        assert session.exists() and session.stat().st_size > 0
        second = subprocess.run(
            [*base, "-sess_in", str(session)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        records = server.wait_for(2, timeout=15)
    assert "Reused, TLSv1.3" in second.stdout, second.stdout[-2000:]
    assert records[1].info is not None and records[1].info.resumed
