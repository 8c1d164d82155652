"""Accept loops: one per listening socket, one task per connection, a bounded total.

When the process already holds ``max_connections`` connections a new one is accepted and
closed at once (and counted): leaving it in the kernel backlog would make the client wait
and time out instead of failing fast. Shutdown stops the accept loops first, then gives the
running connections the drain timeout to finish before cancelling them.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Sequence

import trio

from proxy.connection import ListenerRuntime, handle_connection

log = logging.getLogger(__name__)

# Errors that mean "out of file descriptors/memory": back off instead of spinning.
RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
BACKOFF = 0.1


class ConnectionTracker:
    """Counts live connections across all listeners and enforces the limit."""

    def __init__(self, limit: int, on_refused: Callable[[str], None] | None = None) -> None:
        self.limit = limit
        self.active = 0
        self.refused = 0
        self.accepted = 0
        self.on_refused = on_refused
        self._idle = trio.Event()
        self._idle.set()

    def try_acquire(self, listener: str) -> bool:
        if self.limit and self.active >= self.limit:
            self.refused += 1
            if self.on_refused is not None:
                self.on_refused(listener)
            return False
        self.active += 1
        self.accepted += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        return True

    def release(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


RuntimeGetter = Callable[[], ListenerRuntime]


class Listener:
    """Accepts on its sockets and starts a connection task per client in ``connections``."""

    def __init__(
        self,
        name: str,
        sockets: Sequence[trio.socket.SocketType],
        runtime: RuntimeGetter,
        tracker: ConnectionTracker,
    ) -> None:
        self.name = name
        self.sockets = list(sockets)
        self.runtime = runtime
        self.tracker = tracker

    def addresses(self) -> list[tuple[str, int]]:
        return [tuple(s.getsockname()[:2]) for s in self.sockets]  # type: ignore[misc]

    async def serve(self, connections: trio.Nursery) -> None:
        """Run every socket's accept loop until cancelled; closes the sockets at the end."""
        try:
            async with trio.open_nursery() as nursery:
                for sock in self.sockets:
                    nursery.start_soon(self._accept_loop, sock, connections)
        finally:
            for sock in self.sockets:
                sock.close()

    async def _accept_loop(self, sock: trio.socket.SocketType, connections: trio.Nursery) -> None:
        while True:
            try:
                conn, _ = await sock.accept()
            except OSError as exc:
                if exc.errno in RESOURCE_ERRNOS:
                    log.error("listener %s: accept failed (%s); backing off", self.name, exc)
                    await trio.sleep(BACKOFF)
                    continue
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    continue
                raise
            if not self.tracker.try_acquire(self.name):
                _refuse(conn)
                continue
            _tune(conn)
            connections.start_soon(self._run, trio.SocketStream(conn))

    async def _run(self, stream: trio.SocketStream) -> None:
        try:
            await handle_connection(stream, self.runtime())
        finally:
            self.tracker.release()


def _tune(conn: trio.socket.SocketType) -> None:
    if conn.family in (socket.AF_INET, socket.AF_INET6):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


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
