"""Accept loops: one per listening socket, one task per connection, a bounded total.

When the process already holds ``max_connections`` connections a new one is accepted and
closed at once (and counted): leaving it in the kernel backlog would make the client wait
and time out instead of failing fast. Shutdown stops the accept loops first, then gives the
running connections the drain timeout to finish before cancelling them.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence

import trio

from proxy.connection import Address, ListenerRuntime, handle_connection, log_limited
from proxy.tlsstream import FAIR_STREAK, FastSocketStream, SocketTransport

log = logging.getLogger(__name__)

# Errors that mean "out of file descriptors/memory": back off instead of spinning.
RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
BACKOFF = 0.1


class ConnectionTracker:
    """Counts live connections per process, per listener and per client address, and
    enforces the limits (0 = no limit for the per-listener and per-client ones)."""

    def __init__(
        self,
        limit: int,
        on_refused: Callable[[str, str], None] | None = None,
        per_client_limit: int = 0,
    ) -> None:
        self.limit = limit
        self.per_client_limit = per_client_limit
        self.active = 0
        self.refused = 0
        self.accepted = 0
        self.on_refused = on_refused
        self.by_listener: dict[str, int] = {}
        self.by_client: dict[str, int] = {}
        self._idle = trio.Event()
        self._idle.set()

    def refusal(self, listener: str, client: str, listener_limit: int = 0) -> str | None:
        """Which limit a new connection would exceed, or None if it may proceed."""
        if self.limit and self.active >= self.limit:
            return "max_connections"
        if listener_limit and self.by_listener.get(listener, 0) >= listener_limit:
            return "listener_max_connections"
        if self.per_client_limit and self.by_client.get(client, 0) >= self.per_client_limit:
            return "max_connections_per_client"
        return None

    def try_acquire(self, listener: str, client: str = "", listener_limit: int = 0) -> bool:
        reason = self.refusal(listener, client, listener_limit)
        if reason is not None:
            self.refused += 1
            if self.on_refused is not None:
                self.on_refused(listener, reason)
            return False
        self.active += 1
        self.accepted += 1
        self.by_listener[listener] = self.by_listener.get(listener, 0) + 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        if self._idle.is_set():
            self._idle = trio.Event()
        return True

    def release(self, listener: str, client: str = "") -> None:
        self.active -= 1
        _decrement(self.by_listener, listener)
        _decrement(self.by_client, client)
        if self.active == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


def _decrement(counts: dict[str, int], key: str) -> None:
    """Drop keys that reach zero so per-client counts do not grow without bound."""
    remaining = counts.get(key, 0) - 1
    if remaining > 0:
        counts[key] = remaining
    else:
        counts.pop(key, None)


RuntimeGetter = Callable[[], ListenerRuntime]


class Listener:
    """Accepts on its sockets and starts a connection task per client in ``connections``."""

    def __init__(
        self,
        name: str,
        sockets: Sequence[trio.socket.SocketType],
        runtime: RuntimeGetter,
        tracker: ConnectionTracker,
        limit: int = 0,
    ) -> None:
        self.name = name
        self.sockets = list(sockets)
        self.runtime = runtime
        self.tracker = tracker
        self.limit = limit

    def addresses(self) -> list[tuple[str, int]]:
        names = [s.getsockname() for s in self.sockets]
        return [(str(name[0]), int(name[1])) for name in names]

    async def serve(self, connections: trio.Nursery) -> None:
        """Run every socket's accept loop until cancelled; closes the sockets at the end."""
        try:
            async with trio.open_nursery() as nursery:
                for sock in self.sockets:
                    _set_nodelay(sock)
                    nursery.start_soon(self._accept_loop, sock, connections)
        finally:
            for sock in self.sockets:
                sock.close()

    async def _accept_loop(self, sock: trio.socket.SocketType, connections: trio.Nursery) -> None:
        local = _fixed_local_address(sock)
        accept = _Acceptor(sock).accept
        while True:
            try:
                conn, peer = await accept()
            except OSError as exc:
                if exc.errno in RESOURCE_ERRNOS:
                    log_limited(
                        f"accept:{self.name}",
                        logging.ERROR,
                        "listener %s: accept failed (%s); backing off",
                        self.name,
                        exc,
                    )
                    await trio.sleep(BACKOFF)
                    continue
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    continue
                # Anything else must not take the other listeners and connections down.
                log_limited(f"accept:{self.name}", logging.ERROR, "accept failed: %s", exc)
                await trio.sleep(BACKOFF)
                continue
            client = str(peer[0]) if isinstance(peer, tuple) else ""
            if not self.tracker.try_acquire(self.name, client, self.limit):
                _refuse(conn)
                continue
            # The runtime in force at accept time: a reload later never changes this one.
            connections.start_soon(
                self._run,
                FastSocketStream.wrap(conn),
                client,
                _address(peer),
                local,
                self.runtime(),
            )

    async def _run(
        self,
        stream: SocketTransport,
        client: str,
        peer: Address | None,
        local: Address | None,
        runtime: ListenerRuntime,
    ) -> None:
        try:
            await handle_connection(stream, runtime, peer, local)
        finally:
            self.tracker.release(self.name, client)


class _Acceptor:
    """``accept`` that goes back to the scheduler only when no connection is queued (or once
    per FAIR_STREAK accepts): trio's own yields on every call, which costs more than the
    accept itself during a burst of new connections."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        raw = getattr(sock, "_sock", None)  # trio's socket wrapper keeps the stdlib socket
        self.raw = raw if isinstance(raw, socket.socket) else None
        self.streak = 0

    async def accept(self) -> tuple[trio.socket.SocketType, object]:
        raw = self.raw
        if raw is None:
            return await self.sock.accept()
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                conn, peer = raw.accept()
            except BlockingIOError:
                self.streak = 0
                await trio.lowlevel.wait_readable(raw)
                continue
            break
        self.streak += 1
        if self.streak >= FAIR_STREAK:
            self.streak = 0
            await trio.lowlevel.cancel_shielded_checkpoint()
        return trio.socket.from_stdlib_socket(conn), peer


def _set_nodelay(sock: trio.socket.SocketType) -> None:
    """TCP_NODELAY once on the listening socket: accepted sockets inherit it (Linux), so small
    TLS records leave at once without a setsockopt per connection."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            log.warning("listener socket: cannot set TCP_NODELAY: %s", exc)


def _address(address: object) -> Address | None:
    """(host, port) of a socket address tuple (IPv6 ones carry flow info and scope too)."""
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


def _fixed_local_address(sock: trio.socket.SocketType) -> Address | None:
    """The local end every accepted connection shares, unless the socket is bound to a
    wildcard address (then each connection's own address is asked for)."""
    try:
        local = _address(sock.getsockname())
    except OSError:
        return None
    if local is None:
        return None
    try:
        wildcard = ipaddress.ip_address(local[0].split("%", 1)[0]).is_unspecified
    except ValueError:
        return None
    return None if wildcard else local


def _refuse(conn: trio.socket.SocketType) -> None:
    """Over the limit: close at once so the client sees an orderly end, not a timeout."""
    conn.close()


def bind_addresses(
    host: str, port: int, backlog: int = 1024, reuse_port: bool = False
) -> list[socket.socket]:
    """Listening TCP sockets for every address ``host`` resolves to (``localhost`` → v4+v6).

    Done with blocking stdlib calls at startup, before privileges are dropped; the sockets
    are wrapped for trio later. ``reuse_port`` lets worker processes share the port.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    seen: set[tuple[int, str]] = set()
    sockets: list[socket.socket] = []
    try:
        for family, _, _, _, address in infos:
            key = (family, str(address[0]))
            if key in seen or family not in (socket.AF_INET, socket.AF_INET6):
                continue
            seen.add(key)
            sockets.append(_bind_one(family, address, backlog, reuse_port))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind_one(
    family: int, address: tuple[object, ...], backlog: int, reuse_port: bool
) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def to_trio(sockets: Sequence[socket.socket]) -> list[trio.socket.SocketType]:
    return [trio.socket.from_stdlib_socket(s) for s in sockets]
