"""Playing systemd's side in tests: a $NOTIFY_SOCKET receiver."""

from __future__ import annotations

import os
import socket
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

    def wait_for(self, key: str, value: str | None = None, timeout: float = 20) -> dict[str, str]:
        """Read datagrams until one has ``key`` (equal to ``value`` if given)."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.receive(remaining)
            if message is not None and key in message and value in (None, message[key]):
                return message
        seen = [m for m in self.messages]
        raise AssertionError(f"no {key}={value or '*'} within {timeout}s; got {seen}")

    def close(self) -> None:
        self.sock.close()
