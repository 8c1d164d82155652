"""Load generators and probes: openssl s_time, wrk, curl, hsload, held connections, probes.

The clients are C programs using OpenSSL (s_time, wrk, curl) except bench/hsload.py (our
cheap full-handshake generator for the scaling figures), the connection holder and the
resumption probe (Python's ssl); none of them is the target.
Every result records what the client itself saw (counts, bytes, errors) so the harness
can verify that the work it measured really happened.
"""

from __future__ import annotations

import json
import re
import selectors
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_procstat as procstat
from bench_targets import BENCH_DIR, pinned, raise_nofile_limit

HOST = "127.0.0.1"
# wrk and curl address targets by name, as real clients do, so their SNI is a host name:
# wrk would otherwise send the IP literal, which RFC 6066 §3 does not permit in SNI.
NAME = "localhost"
# TLS_AES_128_GCM_SHA256 is mandatory to implement (RFC 8446 §9.1); offering only it keeps
# every target on the same cipher for handshake and bulk figures.
SUITE = "TLS_AES_128_GCM_SHA256"


@dataclass
class STimeResult:
    """What ``openssl s_time`` processes reported: one progress mark per connection."""

    connections: int = 0
    full: int = 0  # '*': TLS 1.3 connection that was not resumed
    resumed: int = 0  # 'r': SSL_session_reused() was true
    bytes_read: int = 0  # response bytes: proof that each connection's GET was answered
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.connections / self.seconds if self.seconds else 0.0


def _parse_s_time(output: str) -> tuple[int, int, int, int]:
    """(full, resumed, reported connections, response bytes read) from one s_time run."""
    marks = "".join(line for line in output.splitlines() if re.fullmatch(r"[*r13t.]+", line))
    reported = sum(int(n) for n in re.findall(r"^(\d+) connections in [\d.]+ real", output, re.M))
    read = sum(int(n) for n in re.findall(r"bytes read (\d+)$", output, re.M))
    return marks.count("*"), marks.count("r"), reported, read


def run_s_time(
    port: int, reuse: bool, duration: int, processes: int, cpus: str | None
) -> STimeResult:
    """Run ``processes`` s_time clients at once; each connection = handshake + one GET.

    ``-new`` never offers a session, so its connections are full handshakes; ``-reuse``
    offers the session from a first connection every time, and s_time marks each
    connection with ``r`` only when the server actually resumed it.
    """
    command = pinned(
        [
            "openssl",
            "s_time",
            "-connect",
            f"{HOST}:{port}",
            "-tls1_3",
            "-ciphersuites",
            SUITE,
            "-www",
            "/",
            "-time",
            str(duration),
            "-reuse" if reuse else "-new",
        ],
        cpus,
    )
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        for _ in range(processes)
    ]
    result = STimeResult()
    rates = 0.0
    for proc in procs:
        try:
            output, _ = proc.communicate(timeout=duration + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        elapsed = time.monotonic() - started
        text = output.decode(errors="replace")
        full, resumed, reported, read = _parse_s_time(text)
        if proc.returncode != 0 or reported == 0:
            result.failures.append(
                text.strip().splitlines()[-1][:200]
                if text.strip()
                else f"s_time exited {proc.returncode}"
            )
        result.full += full
        result.resumed += resumed
        result.connections += full + resumed
        result.bytes_read += read
        rates += (full + resumed) / elapsed
    # Aggregate rate = sum of each client's rate (they ran concurrently).
    result.seconds = result.connections / rates if rates else 0.0
    return result


@dataclass
class HsloadResult:
    """What one bench/hsload.py run reported, plus the wall time the caller measured."""

    handshakes: int
    responses: int
    failures: dict[str, int]
    unfinished: int
    seconds: float  # hsload's own load time
    cpu_seconds: float  # hsload's own CPU (user + system) during that time
    system_seconds: float

    @property
    def per_second(self) -> float:
        return self.handshakes / self.seconds if self.seconds else 0.0


def run_hsload(
    port: int,
    duration: float,
    concurrency: int,
    around: Callable[[], None] | None = None,
    nice: int | None = None,
) -> HsloadResult:
    """Full handshakes (+1 GET each) from one cheap generator process (bench/hsload.py).

    ``around`` is called right before the load starts and right after it ends (the
    generator waits for a go line after its set-up), so CPU counters sampled there cover
    the load only, not the interpreter's start-up.  ``nice`` sets its scheduling priority.
    """
    command = [
        sys.executable,
        str(BENCH_DIR / "hsload.py"),
        "--port",
        str(port),
        "--duration",
        str(duration),
        "--concurrency",
        str(concurrency),
        "--wait-for-go",
    ]
    proc = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=raise_nofile_limit,
        start_new_session=True,  # a session (autogroup) of its own, as targets have
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        ready = _readline_before(proc, time.monotonic() + 30)
        if ready != "ready":
            raise ValueError(f"hsload did not start: {ready!r}")
        if nice is not None:
            procstat.set_nice([proc.pid], nice)
        if around is not None:
            around()
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        line = _readline_before(proc, time.monotonic() + duration + 30)
        if around is not None:
            around()
    finally:
        if proc.poll() is None:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        _out, err = proc.communicate()
    try:
        report = json.loads(line)
    except json.JSONDecodeError:
        raise ValueError(
            f"hsload gave no report: {line[:80]!r} {err.decode(errors='replace')[-300:]}"
        ) from None
    return HsloadResult(
        handshakes=int(report["handshakes"]),
        responses=int(report["responses"]),
        failures={str(k): int(v) for k, v in report["failures"].items()},
        unfinished=int(report["unfinished"]),
        seconds=float(report["seconds"]),
        cpu_seconds=float(report["cpu_seconds"]),
        system_seconds=float(report["system_seconds"]),
    )


@dataclass
class WrkResult:
    requests_per_second: float
    requests: int
    p50_ms: float
    p99_ms: float
    errors: int
    raw_tail: str


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _latency_ms(text: str, percentile: str) -> float:
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    return float(match.group(1)) * _UNITS_MS[match.group(2)] if match else float("nan")


def parse_wrk(text: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    errors = (
        sum(
            int(n)
            for n in re.findall(
                r"(?:connect|read|write|timeout) (\d+)", text.split("Socket errors:", 1)[-1]
            )
        )
        if "Socket errors:" in text
        else 0
    )
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors += int(non2xx.group(1)) if non2xx else 0
    return WrkResult(
        float(rps.group(1)) if rps else 0.0,
        int(total.group(1)) if total else 0,
        _latency_ms(text, "50"),
        _latency_ms(text, "99"),
        errors,
        "\n".join(text.strip().splitlines()[-3:]),
    )


def run_wrk(port: int, duration: int, connections: int, cpus: str | None) -> WrkResult:
    """Keep-alive GETs of the small response over ``connections`` TLS connections."""
    command = pinned(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "--timeout",
            "10s",
            f"https://{NAME}:{port}/",
        ],
        cpus,
    )
    done = subprocess.run(command, capture_output=True, timeout=duration + 60, check=False)
    return parse_wrk(done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace"))


@dataclass
class BulkResult:
    """One curl transfer: bytes moved and time spent after the handshake."""

    ok: bool
    transferred: int
    seconds: float
    detail: str

    @property
    def mb_per_second(self) -> float:
        return self.transferred / self.seconds / 1e6 if self.seconds > 0 else 0.0


def _curl(args: list[str], cpus: str | None) -> tuple[list[str], str]:
    command = pinned(
        [
            "curl",
            "-sS",
            "-k",
            "--tlsv1.3",
            "--tls13-ciphers",
            SUITE,
            "-w",
            "\n%{http_code} %{size_download} %{size_upload} %{time_pretransfer} %{time_total}",
            *args,
        ],
        cpus,
    )
    done = subprocess.run(command, capture_output=True, timeout=300, check=False)
    lines = done.stdout.decode(errors="replace").splitlines()
    stats = lines[-1].split() if lines else []
    return stats, "\n".join(lines[:-1]) + done.stderr.decode(errors="replace")


def _resolve(port: int) -> list[str]:
    """Pin the name to the loopback address the targets listen on (never ::1)."""
    return ["--resolve", f"{NAME}:{port}:{HOST}"]


def curl_download(port: int, size: int, cpus: str | None) -> BulkResult:
    url = f"https://{NAME}:{port}/download?bytes={size}"
    stats, _ = _curl(["-o", "/dev/null", *_resolve(port), url], cpus)
    if len(stats) != 5:
        return BulkResult(False, 0, 0.0, "curl failed")
    code, down, _up, pre, total = stats
    ok = code == "200" and int(down) == size
    return BulkResult(ok, int(down), float(total) - float(pre), f"HTTP {code}, {down} bytes")


def curl_upload(port: int, path: Path, cpus: str | None) -> BulkResult:
    size = path.stat().st_size
    url = f"https://{NAME}:{port}/upload"
    stats, body = _curl(["-T", str(path), "-H", "Expect:", *_resolve(port), url], cpus)
    if len(stats) != 5:
        return BulkResult(False, 0, 0.0, "curl failed: " + body[-200:])
    code, _down, up, pre, total = stats
    # The backend answers with the byte count it received: proof the body got through.
    ok = code == "200" and f"received {size}" in body
    return BulkResult(ok, int(up), float(total) - float(pre), f"HTTP {code}, {body.strip()[:60]}")


def probe_tls(port: int) -> dict[str, str]:
    """What a default OpenSSL client negotiates: protocol, cipher suite, key exchange."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"{HOST}:{port}", "-tls1_3"],
        input=b"",
        capture_output=True,
        timeout=20,
        check=False,
    )
    text = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    found = {}
    for key, pattern in (
        ("protocol", r"New, (TLSv[\d.]+), Cipher is (\S+)"),
        ("key_exchange", r"(?:Server|Peer) Temp Key: ([^\n]+)"),
    ):
        match = re.search(pattern, text)
        if match:
            found[key] = " ".join(match.groups())
    return found


def probe_resumption(port: int) -> tuple[bool, bool]:
    """(first connection resumed, second connection resumed) with Python's ssl client.

    The first must be a full handshake; the second offers the first one's ticket.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    session = None
    reused: list[bool] = []
    for _ in range(2):
        with socket.create_connection((HOST, port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
                tls.sendall(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
                try:
                    while tls.recv(65536):
                        pass
                except (ssl.SSLError, OSError):
                    pass  # the response is all we wanted; how it ended is not probed here
                reused.append(bool(tls.session_reused))
                session = tls.session
    return reused[0], reused[1]


class HeldConnections:
    """Separate client processes that open and hold idle TLS connections to a target."""

    PER_PROCESS = 5000

    def __init__(self, port: int, cpus: str | None) -> None:
        self.port = port
        self.cpus = cpus
        self.procs: list[subprocess.Popen[bytes]] = []
        self.established = 0
        self.failed = 0
        self.unfinished = 0
        self.errors: dict[str, int] = {}

    def add(self, count: int, timeout: float) -> None:
        """Open ``count`` more connections (in batches per process) and wait for them."""
        started: list[subprocess.Popen[bytes]] = []
        while count > 0:
            batch = min(count, self.PER_PROCESS)
            command = pinned(
                [
                    sys.executable,
                    str(BENCH_DIR / "hold_conns.py"),
                    "--port",
                    str(self.port),
                    "--count",
                    str(batch),
                    "--deadline",
                    str(timeout),
                ],
                self.cpus,
            )
            started.append(
                subprocess.Popen(
                    command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    preexec_fn=raise_nofile_limit,
                )
            )
            count -= batch
        self.procs.extend(started)
        deadline = time.monotonic() + timeout + 15
        for proc in started:
            assert proc.stdout is not None
            line = _readline_before(proc, deadline)
            report = _holder_report(line)
            self.established += report["established"]
            self.failed += report["failed"]
            self.unfinished += report["unfinished"]
            for error, n in report["errors"].items():
                self.errors[error] = self.errors.get(error, 0) + n

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()


def _holder_report(line: str) -> dict[str, Any]:
    """The JSON a hold_conns.py process printed, or a report of its failure to print one."""
    try:
        report = json.loads(line)
    except json.JSONDecodeError:
        report = None
    if isinstance(report, dict) and {"established", "failed", "unfinished"} <= report.keys():
        return report
    return {
        "established": 0,
        "failed": 0,
        "unfinished": 0,
        "errors": {f"holder gave no report: {line[:80]!r}": 1},
    }


def _readline_before(proc: subprocess.Popen[bytes], deadline: float) -> str:
    """The first stdout line of ``proc``, or "" if it dies or the deadline passes."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        remaining = deadline - time.monotonic()
        if remaining > 0 and selector.select(remaining):
            return proc.stdout.readline().decode(errors="replace").strip()
    return ""
