"""Playing systemd's side in tests: a $NOTIFY_SOCKET receiver."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class NotifyReceiver:
    """An AF_UNIX datagram socket standing in for systemd's notification socket.

    ``address`` is what to put in ``$NOTIFY_SOCKET``; ``messages`` accumulates each
    datagram as a dict of its ``KEY=VALUE`` lines.
    """

    def __init__(self, directory: Path | None = None, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"tls13-proxy-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            assert directory is not None
            path = directory / "notify.sock"
            self.sock.bind(str(path))
            os.chmod(path, 0o777)  # a worker that dropped privileges may notify too
            self.address = str(path)
        self.messages: list[dict[str, str]] = []
        self.raw: list[bytes] = []

    def receive(self, timeout: float) -> dict[str, str] | None:
        """The next datagram, or None after ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        self.raw.append(data)
        message = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.messages.append(message)
        return message

    def wait_for(
        self,
        key: str,
        value: str | None = None,
        timeout: float = 20,
        process: subprocess.Popen[bytes] | None = None,
    ) -> dict[str, str]:
        """Read datagrams until one has ``key`` (equal to ``value`` if given).

        With ``process``, give up as soon as it has exited instead of waiting out the timeout.
        """
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.receive(min(remaining, 0.5))
            if message is not None and key in message and value in (None, message[key]):
                return message
            if message is None and process is not None and process.poll() is not None:
                raise AssertionError(f"process exited ({process.returncode}) before {key}")
        raise AssertionError(f"no {key}={value or '*'} within {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


# --- running the daemon the way systemd would -------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def write_daemon_config(
    directory: Path,
    cert_pem: bytes,
    key_pem: bytes,
    addresses: list[str],
    global_extra: str = "",
) -> Path:
    """A minimal configuration: one listener, our certificate, the built-in demo backend."""
    (directory / "site.crt").write_bytes(cert_pem)
    key = directory / "site.key"
    key.write_bytes(key_pem)
    key.chmod(0o600)
    state = directory / "state"
    state.mkdir(exist_ok=True)
    config = directory / "tls13-proxy.toml"
    quoted = ", ".join(f'"{a}"' for a in addresses)
    config.write_text(
        f"""\
[global]
state_dir = "{state}"
{global_extra}

[metrics]
enabled = false

[tls]
alpn = ["http/1.1"]

[certificates.site]
chain = "site.crt"
key = "site.key"

[listeners.web]
addresses = [{quoted}]

[routes.all]
default = true
pool = "demo"

[backends.demo]
servers = ["demo"]
health = {{ enabled = false }}
"""
    )
    return config


def daemon_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "proxy", "run", "--config", str(config)]


def daemon_env(notify: NotifyReceiver | None, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS")
    }
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if notify is not None:
        env["NOTIFY_SOCKET"] = notify.address
    env.update(extra)
    return env


def start(command: list[str], env: dict[str, str], **kwargs: object) -> subprocess.Popen[bytes]:
    """Start in a new session so :func:`stop` can signal the whole process group."""
    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        command,
        env=env,
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        **kwargs,
    )


def stop(process: subprocess.Popen[bytes], timeout: float = 20) -> tuple[bytes, bytes]:
    """SIGTERM the group, SIGKILL if it lingers; return (stdout, stderr)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate(timeout=10)
    return out, err


def https_get(port: int, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """curl -k https://127.0.0.1:PORT/, returning the HTTP status in stdout's last line."""
    return subprocess.run(
        [
            "curl",
            "-sk",
            "--http1.1",
            "--max-time",
            str(timeout),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            f"https://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=timeout + 10,
        check=False,
    )


def process_ids(pid: int) -> dict[str, list[int]]:
    """Uid/Gid/Groups lines of /proc/PID/status."""
    ids: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            ids[key] = [int(v) for v in value.split()]
    return ids
