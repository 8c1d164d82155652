"""Active health checks: a periodic TCP connect, optionally an HTTP request, per server.

A server goes down after ``fall`` consecutive failed checks and comes back after ``rise``
consecutive successes, so one lost probe does not flap it. Passive ejection (in backends)
works alongside: a server that health checks pass may still be ejected for failing real
connections, and returns when its ejection period ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from proxy.backends import BackendPool, BackendServer
from proxy.settings import HealthCheckSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthCheckOptions:
    """``http_path`` empty means a plain TCP connect check."""

    interval: float = 5.0
    timeout: float = 2.0
    rise: int = 2
    fall: int = 3
    http_path: str = ""
    http_host: str = ""  # empty: the server's own host name or address
    expect_status: tuple[int, int] = (200, 399)


StateListener = Callable[[BackendPool, BackendServer, bool], None]


@dataclass
class _Streak:
    successes: int = 0
    failures: int = 0


async def check_server(pool: BackendPool, server: BackendServer, opts: HealthCheckOptions) -> bool:
    """One probe; True when the server answered as expected within the timeout."""
    with trio.move_on_after(opts.timeout):
        try:
            stream = await pool.open_address(server.address, None)
        except (OSError, trio.TooSlowError):
            return False
        async with stream:
            if not opts.http_path:
                return True
            return await _http_probe(stream, opts, opts.http_host or _default_host(server))
    return False


def _default_host(server: BackendServer) -> str:
    address = server.address
    if address.kind != "tcp":
        return "localhost"
    return f"[{address.host}]" if ":" in address.host else address.host


async def _http_probe(stream: trio.abc.Stream, opts: HealthCheckOptions, host: str) -> bool:
    request = (
        f"GET {opts.http_path} HTTP/1.1\r\nHost: {host}\r\n"
        "User-Agent: tls13-proxy-health\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    try:
        await stream.send_all(request)
        head = b""
        while b"\r\n" not in head and len(head) < 4096:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            head += chunk
    except (trio.BrokenResourceError, OSError):
        return False
    return _status_ok(head.split(b"\r\n", 1)[0], opts.expect_status)


def _status_ok(status_line: bytes, expect: tuple[int, int]) -> bool:
    parts = status_line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return False
    return expect[0] <= int(parts[1]) <= expect[1]


class HealthChecker:
    """Runs probes for every server of a pool until cancelled."""

    def __init__(
        self,
        pool: BackendPool,
        opts: HealthCheckOptions,
        on_change: StateListener | None = None,
    ) -> None:
        self.pool = pool
        self.opts = opts
        self.on_change = on_change
        self._streaks = {id(s): _Streak() for s in pool.servers}

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for server in self.pool.servers:
                nursery.start_soon(self._watch, server)

    async def _watch(self, server: BackendServer) -> None:
        while True:
            try:
                ok = await check_server(self.pool, server, self.opts)
            except Exception:  # a probe must never stop the other checks or the proxy
                log.exception("pool %s: health check of %s failed", self.pool.name, server.address)
                ok = False
            self.observe(server, ok)
            await trio.sleep(self.opts.interval)

    def observe(self, server: BackendServer, ok: bool) -> None:
        """Fold one probe result into the rise/fall counters and flip state when due."""
        streak = self._streaks[id(server)]
        if ok:
            streak.successes, streak.failures = streak.successes + 1, 0
            if not server.healthy and streak.successes >= self.opts.rise:
                self._set(server, True)
        else:
            streak.failures, streak.successes = streak.failures + 1, 0
            if server.healthy and streak.failures >= self.opts.fall:
                self._set(server, False)

    def _set(self, server: BackendServer, healthy: bool) -> None:
        server.healthy = healthy
        log.warning(
            "pool %s: backend %s is now %s",
            self.pool.name,
            server.address,
            "up" if healthy else "DOWN",
        )
        if self.on_change is not None:
            self.on_change(self.pool, server, healthy)


def options_from_settings(settings: HealthCheckSettings) -> HealthCheckOptions:
    """Health-check behaviour for a pool's ``health`` table (``type = "http"`` adds a GET)."""
    return HealthCheckOptions(
        interval=settings.interval,
        timeout=settings.timeout,
        rise=settings.rise,
        fall=settings.fall,
        http_path=settings.path if settings.type == "http" else "",
        http_host=settings.host or "",
        expect_status=(settings.expect_status, settings.expect_status),
    )
