"""`tls13-proxy run` end to end: the real daemon serving the embedded default and a file."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import free_port
from settings_helpers import REPO, workspace

STARTUP_TIMEOUT = 30.0


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def start(
    args: list[str], processes: list[subprocess.Popen[bytes]], env: dict[str, str]
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    processes.append(proc)
    return proc


def wait_for(proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str) -> None:
    """Poll ``ready`` until it holds; fail with the daemon's output if it exits or times out."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            pytest.fail(f"tls13-proxy exited with {proc.returncode}:\n{output}")
        if ready():
            return
        time.sleep(0.1)
    pytest.fail(f"tls13-proxy: no {what} within {STARTUP_TIMEOUT}s")


def wait_for_port(proc: subprocess.Popen[bytes], host: str, port: int) -> None:
    def accepting() -> bool:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            return False

    wait_for(proc, accepting, f"listener on {host}:{port}")


def https_get(port: int, ca_file: Path, server_name: str = "localhost") -> str:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            assert tls.version() == "TLSv1.3"
            tls.sendall(
                f"GET / HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode()
            )
            chunks = []
            while chunk := tls.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def clean_env(tmp_path: Path) -> dict[str, str]:
    drop = ("STATE_DIRECTORY", "NOTIFY_SOCKET", "PROMETHEUS_MULTIPROC_DIR", "LISTEN_FDS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = str(REPO)
    return env


def test_run_embedded_default(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    # Other suites may run the embedded default too: give them a moment to finish.
    deadline = time.monotonic() + 20
    while not (port_is_free("127.0.0.1", 8443) and port_is_free("127.0.0.1", 9464)):
        if time.monotonic() > deadline:
            pytest.skip("the embedded default's fixed ports 8443/9464 stay in use on this machine")
        time.sleep(0.5)
    state = tmp_path / "state"
    proc = start(["--state-dir", str(state)], processes, clean_env(tmp_path))
    cert = state / "selfsigned.crt"
    # The port may accept (kernel backlog) before the certificate is generated: wait for both.
    wait_for(proc, cert.is_file, "the self-signed certificate")
    wait_for_port(proc, "127.0.0.1", 8443)
    assert stat.S_IMODE((state / "selfsigned.key").stat().st_mode) == 0o600
    response = https_get(8443, cert)
    assert response.startswith("HTTP/1.1 200"), response[:200]
    assert "TLSv1.3" in response
    with urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=10) as reply:
        assert b"tls13proxy_" in reply.read()
    assert stop(proc) == 0


def test_run_config_file(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    ws = workspace(tmp_path)
    port = free_port()
    path = ws.write(
        f"""\
        [metrics]
        enabled = false

        [certificates.site]
        chain = "certs/site.crt"
        key = "certs/site.key"

        [listeners.web]
        addresses = ["127.0.0.1:{port}"]

        [routes.web]
        default = true
        pool = "demo"

        [backends.demo]
        servers = ["demo"]
        health = {{ enabled = false }}
        """
    )
    proc = start(["run", "--config", str(path)], processes, clean_env(tmp_path))
    wait_for_port(proc, "127.0.0.1", port)
    response = https_get(port, ws.certs / "ca.crt", "example.com")
    assert response.startswith("HTTP/1.1 200"), response[:200]
    assert stop(proc) == 0
