"""The steady-state data path: forward bytes from readiness callbacks, not task wake-ups.

A keep-alive request costs two readiness events (request in, response back). Waking a
pump task for each — trio's ``wait_readable`` re-arms its one-shot epoll registration,
then the scheduler resumes the coroutine through the stream layers — cost more CPU than
the TLS work itself.  Here each relayed socket is registered once, edge-triggered, in an
epoll set of our own; one system task (the dispatcher) waits for that set with trio and,
for each socket that became readable, runs its relay's ``step`` synchronously: one read,
decrypt or encrypt, one write.  The pump task stays parked through all of that and is
woken only for what needs the full stream machinery ("the slow path"): end of stream,
errors, TLS events other than application data, or a write that would block.

Invariants the pumps rely on:

* A step reads at most one chunk and writes what it read before reading again, so
  backpressure is as before: a sink that would block hands the rest to the task, which
  writes it with the stream's own (waiting) ``send_all`` before the relay reads again.
* A step that read a full chunk (more may be waiting) is stepped again only in the next
  dispatcher round, after a checkpoint: a busy connection cannot starve the others.
* Edge-triggered readiness is never lost: an edge that arrives while the task is on the
  slow path sets ``ready``, and a task coming back from the slow path always probes once.
* Cancellation (idle deadline, shutdown) aborts a parked task like any trio wait.
"""

from __future__ import annotations

import abc
import select
from typing import TYPE_CHECKING, Protocol

import trio

from proxy.tlsstream import (
    READ_SIZE,
    TICKET_HOLD,
    FastSocketStream,
    TLSStream,
    stream_error,
)
from tls13.alerts import TLSError
from tls13.events import ApplicationData

if TYPE_CHECKING:
    import socket
    from collections.abc import Awaitable, Callable

    from tls13.events import Event

# Edge-triggered input readiness; RDHUP so a peer's FIN wakes us even with no data.
_EVENTS = getattr(select, "EPOLLIN", 0) | getattr(select, "EPOLLRDHUP", 0)
_EVENTS |= getattr(select, "EPOLLET", 0)
_ENDED = getattr(select, "EPOLLRDHUP", 0) | getattr(select, "EPOLLHUP", 0)
_ENDED |= getattr(select, "EPOLLERR", 0)
# Events taken per dispatcher round: the rest stay in the kernel's ready list for the next
# round, so a burst on thousands of connections still lets other tasks run in between.
MAX_EVENTS = 256
# Records per gathered write to the backend: well below IOV_MAX (1024 on Linux); a read of
# more, tiny, records is joined instead.
_MAX_GATHER = 64
_REACTOR: trio.lowlevel.RunVar[Reactor | None] = trio.lowlevel.RunVar("tls13proxy_reactor")


class Relay(abc.ABC):
    """One direction of a spliced connection, driven by the reactor while its task is parked.

    Subclasses implement ``step`` (read once and forward, synchronously) and call
    ``hand_over(item)`` when the task must take over; ``wait`` returns that item.
    """

    __slots__ = ("fd", "reactor", "ready", "ended", "_task", "_item", "_inline")

    def __init__(self, fd: int, reactor: Reactor) -> None:
        self.fd = fd
        self.reactor = reactor
        # Readiness the task must probe for before parking. False at first: registering a
        # socket that is readable already queues an event for it.
        self.ready = False
        # The peer shut down or the socket failed: a short read no longer means the socket
        # is empty (the end is still to be read, and no further edge will announce it).
        self.ended = False
        self._task: trio.lowlevel.Task | None = None
        self._item: object = None
        self._inline = False

    @abc.abstractmethod
    def step(self) -> None:
        """Read once and forward; ``hand_over`` if the task has to finish the job."""

    def hand_over(self, item: object) -> None:
        """Stop forwarding in callbacks and wake the task with ``item``."""
        self._item = item
        task, self._task = self._task, None
        if task is not None and not self._inline:
            trio.lowlevel.reschedule(task)

    def again(self, full: bool) -> None:
        """After a read: if it filled its buffer, or the end is pending, step again in the
        dispatcher's next round (edge-triggered: nothing else would wake us for it)."""
        if not (full or self.ended):
            return
        if self._task is not None and not self._inline:
            self.reactor.again(self)
        else:
            self.ready = True  # the task reads again itself (after a checkpoint)

    def on_readable(self, flags: int) -> None:
        """The dispatcher saw an edge with these epoll ``flags`` (0: a retry came due)."""
        if flags & _ENDED:
            self.ended = True
        if self._task is None:
            self.ready = True  # the task is on the slow path: it probes when it comes back
            return
        self._run_step()

    def _run_step(self) -> None:
        try:
            self.step()
        except Exception as exc:  # a bug in a step must reach the task, not the dispatcher
            self.hand_over(_Failure(exc))

    async def wait(self) -> object:
        """Park until the relay needs the task; returns what ``step`` handed over.
        Readiness the dispatcher could not act on is probed here first, in the task."""
        task = trio.lowlevel.current_task()
        while self.ready:
            self.ready = False
            self._task, self._inline = task, True
            try:
                self._run_step()
            finally:
                self._inline = False
            if self._task is None:
                return self._take()
            self._task = None  # not parked: an edge now only sets ``ready``
            if self.ready:  # more to read: let the others run first
                await trio.lowlevel.checkpoint()
        self._task = task
        await trio.lowlevel.wait_task_rescheduled(self._abort)
        return self._take()

    def _take(self) -> object:
        item, self._item = self._item, None
        self.ready = True  # the slow path may leave unread bytes behind: probe next time
        if isinstance(item, _Failure):
            raise item.error
        return item

    def _abort(self, _: Callable[[], object]) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class Reactor:
    """An edge-triggered epoll set of relayed sockets and the dispatcher task draining it."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._relays: dict[int, Relay] = {}
        self._again: list[Relay] = []

    def add(self, relay: Relay) -> bool:
        """Watch ``relay.fd``; False if the socket cannot be watched (use the slow path)."""
        try:
            self._epoll.register(relay.fd, _EVENTS)
        except (OSError, ValueError):
            return False
        self._relays[relay.fd] = relay
        return True

    def remove(self, relay: Relay) -> None:
        """Stop watching; call before the socket is closed (its descriptor may be reused)."""
        if self._relays.get(relay.fd) is relay:
            del self._relays[relay.fd]
            try:
                self._epoll.unregister(relay.fd)
            except (OSError, ValueError):
                pass  # already closed: the kernel dropped it from the set

    def again(self, relay: Relay) -> None:
        self._again.append(relay)

    async def run(self) -> None:
        """Dispatch readiness until the run ends. A round steps each ready relay once (at
        most MAX_EVENTS of them), so its work is bounded by one chunk per relay stepped."""
        epoll, relays = self._epoll, self._relays
        try:
            while True:
                if self._again:
                    await trio.lowlevel.checkpoint()  # let everyone else run first
                    batch, self._again = self._again, []
                    for relay in batch:
                        relay.on_readable(0)
                else:
                    await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, flags in epoll.poll(0, MAX_EVENTS):
                    ready = relays.get(fd)
                    if ready is not None:
                        ready.on_readable(flags)
        finally:
            epoll.close()


def current_reactor() -> Reactor | None:
    """This trio run's reactor (started on first use), or None where epoll is missing."""
    reactor = _REACTOR.get(None)
    if reactor is None and hasattr(select, "epoll"):
        reactor = Reactor()
        try:
            trio.lowlevel.spawn_system_task(reactor.run, name="tls13proxy.reactor")
        except RuntimeError:  # the run is shutting down: the streams' own path will do
            reactor._epoll.close()
            return None
        _REACTOR.set(reactor)
    return reactor


class Progress(Protocol):
    """What a relay reports per chunk moved (the splice's idle deadline and byte counts)."""

    def moved(self, size: int, upstream: bool) -> None: ...


class Unsent:
    """A relay wrote part of a chunk: the task writes ``rest`` (waiting) before reading on."""

    __slots__ = ("rest",)

    def __init__(self, rest: memoryview) -> None:
        self.rest = rest


class SendFailed:
    """Writing to the sink failed: the task raises ``error`` as the sink's error."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Received:
    """What the upstream relay read and could not forward itself: ``wire`` (bytes, or the
    socket error), and what the engine made of it (events, TLSError, or None)."""

    __slots__ = ("wire", "outcome")

    def __init__(self, wire: bytes | OSError, outcome: list[Event] | TLSError | None) -> None:
        self.wire = wire
        self.outcome = outcome


def _application_data(happened: list[Event]) -> list[bytes] | None:
    """The plaintext pieces when every event is application data (the steady state), else
    None. Kept apart: they go to the backend in one gathered write, not joined first."""
    for event in happened:
        if type(event) is not ApplicationData:
            return None
    return [event.data for event in happened]  # type: ignore[attr-defined]


class UpstreamRelay(Relay):
    """Client TLS → backend: read records, decrypt, write the plaintext to the backend."""

    __slots__ = ("client", "client_raw", "backend", "backend_raw", "progress")

    def __init__(
        self,
        reactor: Reactor,
        client: TLSStream,
        client_raw: socket.socket,
        backend: FastSocketStream,
        progress: Progress,
    ) -> None:
        super().__init__(client_raw.fileno(), reactor)
        self.client, self.client_raw = client, client_raw
        self.backend, self.backend_raw = backend, backend.raw_socket
        self.progress = progress

    def usable(self) -> bool:
        return self.client.receive_ready()

    async def wait(self) -> object:
        """Held tickets wait for our next write, but at most TICKET_HOLD while the task
        is parked (the stream's read path has the same bound for a silent client)."""
        if not self.client.holding:
            return await super().wait()
        with trio.move_on_after(TICKET_HOLD):
            return await super().wait()
        return _SEND_HELD

    def step(self) -> None:
        client = self.client
        if not client.receive_ready():  # buffered plaintext or an end: the stream's path
            self.hand_over(_Resume())
            return
        try:
            wire = self.client_raw.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self.hand_over(Received(exc, None))
            return
        if not wire:
            self.hand_over(Received(wire, None))
            return
        client.wire_received += len(wire)
        try:
            happened = client.connection.receive_data(wire)
        except TLSError as exc:
            client.tls_error = exc  # before the task runs: the other direction stops writing
            self.hand_over(Received(wire, exc))
            return
        pieces = _application_data(happened)
        if pieces is None:
            self.hand_over(Received(wire, happened))
            return
        out = client.connection.data_to_send()
        if out:  # the engine owes the client something: it goes before our next write
            client.hold(out)
        if pieces:
            size = len(pieces[0]) if len(pieces) == 1 else sum(map(len, pieces))
            client.bytes_received += size
            self.progress.moved(size, True)
            if not self._forward(pieces, size):
                return
        if out:
            self.hand_over(_Resume())  # the task's read path sends what is held
        else:
            self.again(len(wire) == READ_SIZE)

    def _forward(self, pieces: list[bytes], size: int) -> bool:
        """Write ``size`` bytes of plaintext to the backend, several records' pieces in one
        gathered write (no join); False when the task has to take over."""
        raw = self.backend_raw
        try:
            if len(pieces) == 1:
                sent = raw.send(pieces[0])
            elif len(pieces) <= _MAX_GATHER:
                sent = raw.sendmsg(pieces)
            else:
                sent = raw.send(b"".join(pieces))
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.hand_over(SendFailed(stream_error(exc)))
            return False
        if sent < size:
            rest = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            self.hand_over(Unsent(memoryview(rest)[sent:]))
            return False
        return True

    async def finish(self, item: object, chunk: int) -> bytes | None:
        """Complete what the relay handed over: None after finishing a write, else the
        next plaintext (or b"" at the end) exactly as ``receive_some`` would return it."""
        if isinstance(item, Received):
            return await self.client.receive_after(item.wire, item.outcome, chunk)
        if isinstance(item, _Resume):
            return await self.client.receive_some(chunk)
        if item is _SEND_HELD:
            await self.client.send_held()
            return None
        await _finish_write(item, self.backend.send_all)
        return None


class DownstreamRelay(Relay):
    """Backend → client TLS: read the backend, encrypt, write the records to the client."""

    __slots__ = ("client", "backend", "backend_raw", "progress", "chunk")

    def __init__(
        self,
        reactor: Reactor,
        backend: FastSocketStream,
        client: TLSStream,
        progress: Progress,
        chunk: int,
    ) -> None:
        super().__init__(backend.raw_socket.fileno(), reactor)
        self.backend, self.backend_raw = backend, backend.raw_socket
        self.client = client
        self.progress = progress
        self.chunk = chunk

    def usable(self) -> bool:
        return True

    def step(self) -> None:
        try:
            data = self.backend_raw.recv(self.chunk)
        except BlockingIOError:
            return
        except OSError as exc:
            raise stream_error(exc) from exc
        client = self.client
        if not data or not client.send_ready():
            self.hand_over(data)  # the end, or a write the stream must queue: the task's job
            return
        self.progress.moved(len(data), False)
        try:
            rest = client.send_now(data)
        except OSError as exc:
            self.hand_over(SendFailed(stream_error(exc)))
            return
        if rest is not None:
            self.hand_over(Unsent(rest))
        else:
            self.again(len(data) == self.chunk)

    async def finish(self, item: object, chunk: int) -> bytes | None:
        if isinstance(item, bytes):
            return item
        await _finish_write(item, self.client.finish_send)
        return None


class _Resume:
    """The task should continue on the stream's own read path."""

    __slots__ = ()


_SEND_HELD = object()  # the task should send the held tickets


async def _finish_write(item: object, write: Callable[[memoryview], Awaitable[None]]) -> None:
    """Raise the write error a relay met, or write the rest it left."""
    if isinstance(item, SendFailed):
        raise item.error
    assert isinstance(item, Unsent)
    await write(item.rest)
