"""The TLS terminators under test: how to configure, start, probe and stop each one.

Every target listens on 127.0.0.1, terminates TLS 1.3 with the same ECDSA P-256
certificate and forwards plaintext to the same backend (bench/backend.py).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
HITCH = "/usr/sbin/hitch"


def raise_nofile_limit() -> None:
    """Lift the soft RLIMIT_NOFILE to the hard limit (thousands of held connections)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def nofile_hard_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def pinned(command: list[str], cpus: str | None) -> list[str]:
    """Prefix ``command`` with taskset so it runs only on ``cpus`` (None = anywhere)."""
    if cpus is None or shutil.which("taskset") is None:
        return command
    return ["taskset", "-c", cpus, *command]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Block until 127.0.0.1:port accepts, or raise if the process died or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"not listening on port {port} after {timeout:.0f}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Material:
    """Files every target shares: the certificate chain, its key, and both in one PEM."""

    chain: Path
    key: Path
    combined: Path
    ca: Path


@dataclass
class Running:
    """A started target: its root process and where its output goes."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    workers: int

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; only this target's own process group."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # Workers that outlived their parent share its process group.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` non-blank lines of the target's output (its error, usually)."""
        try:
            text = self.log.read_text(errors="replace")
            return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])
        except FileNotFoundError:
            return ""


@dataclass
class Target(ABC):
    """A terminator kind. Subclasses say how to build its command line and config."""

    name: str
    description: str = ""
    # Directory the target runs in; for ours, the source tree whose code is measured.
    source_dir: Path = REPO_DIR

    def available(self) -> str | None:
        """None when this target can run here, else why not."""
        return None

    @abstractmethod
    def command(
        self, material: Material, workdir: Path, port: int, backend_port: int, workers: int
    ) -> list[str]:
        """The argv that runs this target (after writing any config it needs into workdir)."""

    def start(
        self, material: Material, workdir: Path, backend_port: int, workers: int, cpus: str | None
    ) -> Running:
        port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir / f"{self.name}-w{workers}.log"
        command = pinned(self.command(material, workdir, port, backend_port, workers), cpus)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.source_dir,
                start_new_session=True,
                preexec_fn=raise_nofile_limit,
            )
        running = Running(self.name, port, proc, log, workers)
        try:
            wait_for_port(port, proc, timeout=30)
        except RuntimeError as error:
            running.stop()
            raise RuntimeError(f"{error}: {running.log_tail(1)}\n{running.log_tail()}") from None
        time.sleep(0.3)  # let every worker of a multi-process target come up
        return running


class SslProxyTarget(Target):
    """bench/ref_ssl_proxy.py: trio + the standard ssl module."""

    def command(
        self, material: Material, workdir: Path, port: int, backend_port: int, workers: int
    ) -> list[str]:
        return [
            sys.executable,
            str(BENCH_DIR / "ref_ssl_proxy.py"),
            "--port",
            str(port),
            "--backend-port",
            str(backend_port),
            "--cert",
            str(material.chain),
            "--key",
            str(material.key),
            "--workers",
            str(workers),
        ]


class HitchTarget(Target):
    """hitch (Varnish's TLS proxy, C + OpenSSL), configured through a generated file."""

    def available(self) -> str | None:
        return None if os.access(HITCH, os.X_OK) else f"{HITCH} not installed (apt: hitch)"

    def command(
        self, material: Material, workdir: Path, port: int, backend_port: int, workers: int
    ) -> list[str]:
        config = workdir / f"hitch-w{workers}.conf"
        lines = [
            f'frontend = "[127.0.0.1]:{port}"',
            f'backend = "[127.0.0.1]:{backend_port}"',
            f'pem-file = "{material.combined}"',
            "tls-protos = TLSv1.3",
            f"workers = {workers}",
            "daemon = off",
            "backlog = 4096",
            "log-level = 1",
        ]
        if os.geteuid() == 0:
            # hitch refuses to run its workers as root; it reads the key before switching.
            lines.append('user = "nobody"')
        config.write_text("\n".join(lines) + "\n")
        return [HITCH, f"--config={config}"]


class OursTarget(Target):
    """tls13-proxy: our daemon, started as ``tls13-proxy run --config <generated toml>``."""

    def available(self) -> str | None:
        if not (self.source_dir / "proxy" / "cli.py").exists():
            return "proxy/cli.py does not exist yet (tls13-proxy run not available)"
        return None

    def command(
        self, material: Material, workdir: Path, port: int, backend_port: int, workers: int
    ) -> list[str]:
        config = workdir / f"tls13-proxy-w{workers}.toml"
        config.write_text(ours_config(material, workdir, port, backend_port, workers))
        # `python3 -m proxy` is the `tls13-proxy` command (proxy/__main__.py); run from
        # source_dir (the cwd) it measures that tree's code, not whatever is installed.
        return [sys.executable, "-m", "proxy", "run", "--config", str(config)]


def ours_config(
    material: Material, workdir: Path, port: int, backend_port: int, workers: int
) -> str:
    """A config for one listener → one pool, tuned only to not limit the benchmark itself:
    no per-client connection cap (every load connection comes from 127.0.0.1), access log,
    metrics and health checks off (the references have none of them)."""
    state = workdir / "tls13-proxy-state"
    state.mkdir(parents=True, exist_ok=True)
    return f"""\
[global]
workers = {workers}
state_dir = "{state}"
access_log = false
log_level = "warning"

[limits]
max_connections = 30000
max_connections_per_client = 0
max_concurrent_handshakes = 4096

[metrics]
enabled = false

[certificates.bench]
chain = "{material.chain}"
key = "{material.key}"

[listeners.bench]
addresses = ["127.0.0.1:{port}"]
backlog = 4096

[routes.all]
pool = "origin"
default = true

[backends.origin]
servers = ["127.0.0.1:{backend_port}"]

[backends.origin.health]
enabled = false
"""


TARGETS: dict[str, Target] = {
    "ours": OursTarget("ours", "tls13-proxy (this project: own TLS 1.3 engine, trio)"),
    "sslproxy": SslProxyTarget(
        "sslproxy", "trio.SSLStream + stdlib ssl (OpenSSL 3), bench/ref_ssl_proxy.py"
    ),
    "hitch": HitchTarget("hitch", "hitch 1.7 (C, OpenSSL 3), Debian package"),
}


def start_backend(
    workdir: Path, cpus: str | None, program: str = "backend.py"
) -> tuple[subprocess.Popen[bytes], int]:
    """Start an origin from bench/ (``backend.py``, or ``light_backend.py`` for the scaling
    section) on a free port; stop it with ``terminate()``."""
    port = free_port()
    log = workdir / f"{Path(program).stem}.log"
    command = pinned([sys.executable, str(BENCH_DIR / program), "--port", str(port)], cpus)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=raise_nofile_limit,
        )
    wait_for_port(port, proc, timeout=15)
    return proc, port
