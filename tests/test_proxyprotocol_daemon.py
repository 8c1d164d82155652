"""End to end: the daemon terminates TLS and tells the backend who the client was, in PROXY
protocol v1 and v2 (with the TLS TLVs)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from certs import Issued
from conftest import free_port
from proxyprotocol_helpers import CapturingBackend
from systemd_helpers import NotifyReceiver, daemon_command, daemon_env, start, stop

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is needed as the TLS client"),
]


@pytest.fixture
def notify() -> Iterator[NotifyReceiver]:
    receiver = NotifyReceiver(abstract=True)
    yield receiver
    receiver.close()


def _config(directory: Path, leaf: Issued, port: int, backend_port: int, version: int) -> Path:
    (directory / "site.crt").write_bytes(leaf.cert_pem())
    (directory / "site.key").write_bytes(leaf.key_pem())
    (directory / "site.key").chmod(0o600)
    config = directory / "proxy.toml"
    config.write_text(
        f"""\
[global]
state_dir = "{directory / "state"}"

[metrics]
enabled = false

[tls]
alpn = ["http/1.1"]

[certificates.site]
chain = "site.crt"
key = "site.key"

[listeners.web]
addresses = ["127.0.0.1:{port}"]

[routes.all]
default = true
pool = "app"

[backends.app]
servers = ["127.0.0.1:{backend_port}"]
proxy_protocol = {version}
health = {{ enabled = false }}
"""
    )
    return config


def _request_through_daemon(
    tmp_path: Path, leaf: Issued, notify: NotifyReceiver, version: int
) -> tuple[CapturingBackend, int, str]:
    backend = CapturingBackend()
    port = free_port()
    config = _config(tmp_path, leaf, port, backend.port, version)
    process = start(daemon_command(config), daemon_env(notify))
    try:
        try:
            notify.wait_for("READY", "1", timeout=40, process=process)
        except AssertionError as exc:
            out, err = stop(process)
            raise AssertionError(f"{exc}\n{err.decode()[-3000:]}") from None
        result = subprocess.run(
            [
                "curl", "-sS", "-k", "--http1.1", "--max-time", "20",
                "--resolve", f"localhost:{port}:127.0.0.1",
                "-w", " %{local_port}", f"https://localhost:{port}/",
            ],
            capture_output=True, text=True, timeout=40, check=False,
        )  # fmt: skip
    finally:
        out, err = stop(process)
    assert result.returncode == 0, f"{result.stderr}\n{err.decode()[-3000:]}"
    body, _, curl_port = result.stdout.rpartition(" ")
    assert body == "ok"
    return backend, int(curl_port), err.decode()


def test_daemon_sends_proxy_v2_with_tls_details(
    tmp_path: Path, localhost_leaf: Issued, notify: NotifyReceiver
) -> None:
    backend, client_port, _ = _request_through_daemon(tmp_path, localhost_leaf, notify, 2)
    header = backend.result()
    assert header.version == 2 and header.command == "PROXY"
    assert header.source == ("127.0.0.1", client_port)
    assert header.destination is not None and header.destination[0] == "127.0.0.1"
    assert header.alpn == b"http/1.1"
    assert header.authority == "localhost"
    assert header.ssl is not None
    assert header.ssl.version == "TLSv1.3"
    assert header.ssl.cipher is not None and header.ssl.cipher.startswith("TLS_")
    assert header.ssl.client & 0x01 and header.ssl.verify != 0  # TLS, no client certificate
    assert header.early_data is False
    # The request follows the header unchanged.
    assert backend.raw[header.length :].startswith(b"GET / HTTP/1.1\r\n")


def test_daemon_sends_proxy_v1(
    tmp_path: Path, localhost_leaf: Issued, notify: NotifyReceiver
) -> None:
    backend, client_port, _ = _request_through_daemon(tmp_path, localhost_leaf, notify, 1)
    header = backend.result()
    assert header.version == 1
    assert header.source == ("127.0.0.1", client_port)
    assert backend.raw[header.length :].startswith(b"GET / HTTP/1.1\r\n")
