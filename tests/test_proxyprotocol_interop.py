"""PROXY protocol interop: parse what hitch and curl send, and match hitch byte for byte."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from certs import Issued
from conftest import free_port
from proxyprotocol_helpers import CapturingBackend

from proxy.proxyprotocol import encode_v1, encode_v2, tls_tlvs


def _curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args], capture_output=True, timeout=20, check=False
    )


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_parse_v1_sent_by_curl() -> None:
    backend = CapturingBackend()
    result = _curl("--haproxy-protocol", f"http://127.0.0.1:{backend.port}/")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ok"
    header = backend.result()
    assert header.version == 1 and header.command == "PROXY"
    assert header.source is not None and header.source[0] == "127.0.0.1"
    assert header.destination == ("127.0.0.1", backend.port)
    assert backend.raw[: header.length] == encode_v1(header.source, header.destination)


def _start_hitch(
    tmp_path: Path, leaf: Issued, backend_port: int, proxy_flag: str
) -> tuple[subprocess.Popen[bytes], int]:
    pem = tmp_path / "hitch.pem"
    pem.write_bytes(leaf.key_pem() + leaf.cert_pem())
    port = free_port()
    command = [
        "hitch",
        f"--frontend=[127.0.0.1]:{port}",
        f"--backend=[127.0.0.1]:{backend_port}",
        proxy_flag,
        "--alpn-protos=h2,http/1.1",
        "--workers=1",
        "--user=nobody",
        str(pem),
    ]
    if os.geteuid() != 0:
        command.remove("--user=nobody")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.1)
    _stop(process)
    output = process.stdout.read() if process.stdout else b""
    pytest.fail(f"hitch did not start: {output.decode(errors='replace')}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


needs_hitch = pytest.mark.skipif(
    shutil.which("hitch") is None or shutil.which("curl") is None,
    reason="hitch and curl are needed",
)


@needs_hitch
def test_parse_v2_sent_by_hitch_and_encode_identically(
    tmp_path: Path, localhost_leaf: Issued
) -> None:
    backend = CapturingBackend()
    hitch, port = _start_hitch(tmp_path, localhost_leaf, backend.port, "--write-proxy-v2=on")
    try:
        result = _curl("-k", "--http1.1", f"https://127.0.0.1:{port}/")
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"ok"
        header = backend.result()
    finally:
        _stop(hitch)
    assert header.version == 2 and header.command == "PROXY"
    assert header.family == socket.AF_INET
    assert header.destination == ("127.0.0.1", port)
    assert header.alpn == b"http/1.1"
    assert header.ssl is not None
    assert header.ssl.version == "TLSv1.3" and header.ssl.cipher is not None
    assert header.ssl.client & 0x01 and header.ssl.verify != 0
    # Our encoder, fed the same facts, produces hitch's exact bytes.
    ours = encode_v2(header.source, header.destination, tls_tlvs(alpn=header.alpn, ssl=header.ssl))
    assert ours == backend.raw[: header.length]


@needs_hitch
def test_parse_v1_sent_by_hitch(tmp_path: Path, localhost_leaf: Issued) -> None:
    backend = CapturingBackend()
    hitch, port = _start_hitch(tmp_path, localhost_leaf, backend.port, "--write-proxy-v1=on")
    try:
        result = _curl("-k", "--http1.1", f"https://127.0.0.1:{port}/")
        assert result.returncode == 0, result.stderr
        header = backend.result()
    finally:
        _stop(hitch)
    assert header.version == 1
    assert header.destination == ("127.0.0.1", port)
