"""Issue 10, secrets: with ``log_level = "debug"`` through a full handshake, a resumption and
KeyUpdates in both directions, no secret our client knows (exported through its key log
callback, plus the resumption PSK) appears in the daemon's output in any common encoding.
Key logging happens only when ``keylog_file`` is configured, never because SSLKEYLOGFILE is
set in the environment, and then with a loud warning.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from certs import Issued
from proxy_helpers import Daemon, Site, free_port, launch, make_site
from robust_helpers import EngineClient, ScriptedBackend, echo_script, robust_config

pytestmark = pytest.mark.timeout(120)

Processes = list[subprocess.Popen[bytes]]
LABELS = (
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    "CLIENT_TRAFFIC_SECRET_0",
    "SERVER_TRAFFIC_SECRET_0",
    "EXPORTER_SECRET",
)


@pytest.fixture
def site(tmp_path: Path, test_ca: Issued) -> Site:
    return make_site(tmp_path, test_ca)


@pytest.fixture
def echo() -> Iterator[ScriptedBackend]:
    with ScriptedBackend(echo_script) as backend:
        yield backend


def debug_daemon(site: Site, echo: ScriptedBackend, processes: Processes, tls: str) -> Daemon:
    text = robust_config(site, echo.port, free_port(), tls=tls)
    return launch(site, text.replace('log_level = "info"', 'log_level = "debug"'), processes)


def session_with_rekeys(site: Site) -> tuple[list[str], list[bytes]]:
    """Full handshake, tickets, KeyUpdates both ways, then a resumption with KeyUpdates.
    Returns our key log lines and every secret we can name."""
    lines: list[str] = []
    secrets: list[bytes] = []
    with EngineClient(site.port, ca_pem=site.ca_pem) as full:
        full.handshake()
        exchange_with_rekeys(full, b"full")
        full.wait_for_tickets(1)  # the proxy may send them along with the first data
        secrets.append(full.conn.export_keying_material(b"EXPORTER-robust", b"", 32))
        lines += full.keylog_lines
        ticket = full.tickets[0]
        full.close_notify()
        full.receive_to_end()
    secrets.append(ticket.psk)
    with EngineClient(site.port, ca_pem=site.ca_pem, session=ticket) as resumed:
        assert resumed.handshake().resumed
        exchange_with_rekeys(resumed, b"resumed")
        lines += resumed.keylog_lines
        resumed.close_notify()
        resumed.receive_to_end()
    for line in lines:
        secrets.append(bytes.fromhex(line.split()[2]))
    return lines, secrets


def exchange_with_rekeys(client: EngineClient, tag: bytes) -> None:
    start = len(client.received)
    for round_ in range(3):
        client.conn.update_keys(request_peer=True)  # the proxy answers with its own update
        payload = tag + b" %d;" % round_
        client.send(payload)
        start += len(payload)
        assert client.receive_until(start).endswith(payload)


def encodings(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        repr(secret)[2:-1][:40],  # how bytes would look in a repr()
    ]


def test_debug_logs_hold_no_secret(
    site: Site, echo: ScriptedBackend, processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    keylog_env = site.root / "env-keylog.txt"
    monkeypatch.setenv("SSLKEYLOGFILE", str(keylog_env))
    daemon = debug_daemon(site, echo, processes, 'alpn = ["http/1.1"]')
    lines, secrets = session_with_rekeys(site)
    assert {line.split()[0] for line in lines} >= set(LABELS)
    daemon.wait_for_log("end=ok", count=2)
    daemon.stop()
    log = daemon.log()
    assert "level=debug" in log or "DEBUG" in log.upper(), "debug logging was not on"
    for secret in secrets:
        for text in encodings(secret):
            assert text not in log, f"a secret appears in the log ({text[:8]}…)"
    # SSLKEYLOGFILE in the environment is not a switch: only the config key is.
    assert not keylog_env.exists()
    assert "key logging" not in log.lower()


def test_keylog_file_only_when_configured_and_with_a_warning(
    site: Site, echo: ScriptedBackend, processes: Processes
) -> None:
    keylog = site.root / "keys.log"
    tls = f'alpn = ["http/1.1"]\nkeylog_file = "{keylog}"'
    daemon = debug_daemon(site, echo, processes, tls)
    with EngineClient(site.port, ca_pem=site.ca_pem) as client:
        client.handshake()
        client.send(b"logged")
        assert client.receive_until(6) == b"logged"
        ours = set(client.keylog_lines)
    warnings = [
        line
        for line in daemon.log().splitlines()
        if "level=warning" in line and str(keylog) in line
    ]
    assert warnings, "enabling key logging must be announced"
    assert any("secret" in line for line in warnings)
    written = set(keylog.read_text().splitlines())
    assert {line for line in ours if line.split()[0] in LABELS} <= written
