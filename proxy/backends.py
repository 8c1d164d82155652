"""Backend pools: server selection, connect with timeout and retry, passive ejection.

A pool holds servers reachable over TCP (``host:port``), a Unix socket (``unix:/path``) or,
for the built-in demo, an in-process handler (``demo``). ``connect`` picks servers by the
pool's balancing policy, skips those that active health checks marked down or that passive
ejection took out, tries each with the connect timeout and moves to the next on failure. A pool
with nothing usable fails fast with ``NoHealthyBackend`` instead of making clients wait.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import trio

from proxy import metrics
from proxy.settings import BackendAddress, PoolSettings
from proxy.tlsstream import connect_tcp

log = logging.getLogger(__name__)

FAILURE_LOG_INTERVAL = 1.0

Balance = Literal["round_robin", "least_connections"]


@dataclass(frozen=True)
class PoolOptions:
    """Per-pool behaviour (from the pool's settings)."""

    balance: Balance = "round_robin"
    connect_timeout: float = 5.0
    retries: int = 2
    max_fails: int = 3
    eject_seconds: float = 30.0
    proxy_protocol: int = 0  # PROXY protocol version sent to the backend (0 = none)


@dataclass
class BackendServer:
    """Runtime state of one server: connections in use, health and ejection."""

    address: BackendAddress
    active: int = 0
    healthy: bool = True
    consecutive_failures: int = 0
    ejected_until: float = 0.0
    # When a failure of this server was last logged.
    failure_logged_at: float = float("-inf")

    def usable(self, now: float) -> bool:
        return self.healthy and now >= self.ejected_until


class BackendError(Exception):
    """No backend connection could be made; the message is fit for the log."""


class NoHealthyBackend(BackendError):
    """Every server of the pool is down or ejected: refuse at once."""


class BackendUnavailable(BackendError):
    """Usable servers existed but every connection attempt failed or timed out."""


InProcessHandler = Callable[[trio.abc.Stream, object], Awaitable[None]]


@dataclass
class InProcessBackends:
    """In-process servers (the demo backend): served over a socketpair in a daemon nursery."""

    nursery: trio.Nursery
    handlers: Mapping[str, InProcessHandler] = field(default_factory=dict)

    async def open(self, kind: str, context: object) -> trio.abc.Stream:
        handler = self.handlers.get(kind)
        if handler is None:
            raise OSError(f"no in-process backend {kind!r} in this process")
        ours, theirs = trio.socket.socketpair()
        backend_stream = trio.SocketStream(theirs)
        self.nursery.start_soon(_serve_in_process, handler, backend_stream, context)
        return trio.SocketStream(ours)


async def _serve_in_process(
    handler: InProcessHandler, stream: trio.SocketStream, context: object
) -> None:
    async with stream:
        try:
            await handler(stream, context)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("in-process backend failed")


@dataclass
class BackendLease:
    """A connected backend stream; ``release`` returns the slot for least-connections."""

    server: BackendServer
    stream: trio.abc.Stream
    attempts: int
    _released: bool = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.server.active -= 1


class BackendPool:
    """A named group of servers with a balancing policy; one instance per configuration."""

    def __init__(
        self,
        name: str,
        addresses: Sequence[BackendAddress],
        options: PoolOptions,
        in_process: InProcessBackends | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not addresses:
            raise ValueError(f"pool {name!r} has no servers")
        self.name = name
        self.options = options
        self.servers = [BackendServer(a) for a in addresses]
        self.in_process = in_process
        self._clock = clock
        self._next = itertools.count()

    def usable_servers(self) -> list[BackendServer]:
        now = self._clock()
        return [s for s in self.servers if s.usable(now)]

    def pick_order(self) -> list[BackendServer]:
        """Usable servers in the order to try them, per the balancing policy."""
        usable = self.usable_servers()
        if not usable:
            return []
        start = next(self._next) % len(usable)
        rotated = usable[start:] + usable[:start]
        if self.options.balance == "least_connections":
            rotated.sort(key=lambda s: s.active)  # stable: rotation breaks ties fairly
        return rotated

    async def connect(self, context: object = None) -> BackendLease:
        """Connect to the first server that answers, trying at most ``retries + 1`` of them."""
        order = self.pick_order()
        if not order:
            raise NoHealthyBackend(f"pool {self.name}: no healthy backend server")
        failures: list[str] = []
        for attempt, server in enumerate(order[: self.options.retries + 1], start=1):
            server.active += 1
            try:
                with metrics.backend_connect(self.name, str(server.address)):
                    stream = await self.open_address(server.address, context)
            except (OSError, trio.TooSlowError) as exc:
                server.active -= 1
                reason = "connect timeout" if isinstance(exc, trio.TooSlowError) else str(exc)
                failures.append(f"{server.address}: {reason}")
                self.record_failure(server, reason)
                continue
            except BaseException:
                server.active -= 1  # cancelled (shutdown, client deadline): free the slot
                raise
            self.record_success(server)
            return BackendLease(server, stream, attempt)
        raise BackendUnavailable(f"pool {self.name}: all attempts failed ({'; '.join(failures)})")

    async def open_address(self, address: BackendAddress, context: object) -> trio.abc.Stream:
        """A connected stream to ``address``, within the pool's connect timeout."""
        timeout = self.options.connect_timeout
        if address.kind == "tcp":
            family = _literal_family(address.host)
            if family is not None:  # the usual case: one direct connect, no resolver
                return await connect_tcp(family, (address.host, address.port), timeout)
        with trio.fail_after(timeout):
            if address.kind == "tcp":
                try:
                    return await trio.open_tcp_stream(address.host, address.port)
                except OSError as exc:
                    raise connect_cause(exc) from exc
            if address.kind == "unix":
                return await trio.open_unix_socket(address.path)
            if self.in_process is None:
                raise OSError(f"no in-process backend for {address}")
            return await self.in_process.open(address.kind, context)

    def record_failure(self, server: BackendServer, reason: str) -> None:
        """Passive ejection: ``max_fails`` consecutive failures take a server out for a while."""
        server.consecutive_failures += 1
        now = self._clock()
        if now - server.failure_logged_at >= FAILURE_LOG_INTERVAL:
            # One line a second per server: every failure is still counted in the metrics
            # and named in its connection's access log line.
            server.failure_logged_at = now
            log.warning("pool %s: backend %s failed: %s", self.name, server.address, reason)
        if self.options.max_fails and server.consecutive_failures >= self.options.max_fails:
            server.ejected_until = self._clock() + self.options.eject_seconds
            server.consecutive_failures = 0
            log.warning(
                "pool %s: ejecting backend %s for %.0fs",
                self.name,
                server.address,
                self.options.eject_seconds,
            )

    def record_success(self, server: BackendServer) -> None:
        server.consecutive_failures = 0


@functools.lru_cache(maxsize=256)
def _literal_family(host: str) -> int | None:
    """AF_INET/AF_INET6 for an IP literal; None for a name (resolved per connection)."""
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        return None
    return socket.AF_INET if version == 4 else socket.AF_INET6


def connect_cause(exc: OSError) -> OSError:
    """trio reports a failed connect as a bare OSError caused by a group of the real errors
    (one per address tried); the first of those says why (refused, unreachable, ...), for
    the log and the failure reason in the metrics."""
    inner = getattr(exc.__cause__, "exceptions", ())
    if exc.errno is None and inner and isinstance(inner[0], OSError):
        return inner[0]
    return exc


def pool_from_settings(
    settings: PoolSettings, in_process: InProcessBackends | None = None
) -> BackendPool:
    """The runtime pool for a configured ``[backends.NAME]`` table."""
    options = PoolOptions(
        balance="least_connections" if settings.balancing == "least_connections" else "round_robin",
        connect_timeout=settings.connect_timeout,
        retries=settings.retries,
        max_fails=settings.eject_after_failures,
        eject_seconds=settings.eject_for,
        proxy_protocol=settings.proxy_protocol,
    )
    return BackendPool(settings.name, settings.servers, options, in_process)
