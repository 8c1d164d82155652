"""A trio ``HalfCloseableStream`` over a sans-IO ``tls13.ServerConnection``.

* ``receive_some`` reads ciphertext only when the caller wants plaintext, so a slow consumer
  stops us reading from the socket (backpressure) rather than buffering without bound.
* ``send_all`` hands the engine the whole chunk: the engine cuts it into full 16 KiB records,
  and a small write is flushed at once (no Nagle-style delay in our layer).
* ``send_eof`` sends close_notify (RFC 8446 §6.1); the peer may keep sending afterwards.
  ``send_close_notify`` sends it without the TCP shutdown, for a caller that closes next.
* A received close_notify is a clean EOF (``b""``); a transport EOF without one is a
  truncation and raises ``TLSTruncated`` so a proxy never forwards it as a clean end.
* ``abort`` is the reverse: the other side of the proxy ended abruptly, so we close without
  close_notify and the client sees a truncation instead of a complete answer (§6.1).
* Writes from the receive side (KeyUpdate answers, alerts) and from ``send_all`` share one
  lock so two tasks — one per direction — may use the stream at the same time.
* The NewSessionTickets that answer the client's Finished are held and leave with our next
  write (usually the first response bytes, or close_notify): one send instead of two.
  RFC 8446 §4.6.1 lets the server send them at any time after the client's Finished.

* An established stream with no traffic for a whole ``IDLE_SWEEP`` interval lets its engine
  release what it rebuilds on demand (``ServerConnection.release_idle_memory``: the AEAD
  contexts, most of an idle connection's engine memory). One system task per trio run does
  this for every stream, comparing the wire byte counts: nothing on the data path.

``FastSocketStream`` is the TCP transport under it (and towards backends): a
``trio.SocketStream`` whose send/receive try the socket first and yield to the scheduler
only when the socket would block or after a run of operations that did not block.  The
stock stream yields on every successful call, which costs more than the syscall itself.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket as stdlib_socket
import weakref
from typing import TYPE_CHECKING, TypeAlias

import trio

from tls13 import events
from tls13.alerts import TLSError

if TYPE_CHECKING:
    from tls13 import ServerConnection

log = logging.getLogger(__name__)

READ_SIZE = 65536
CLOSE_GRACE = 1.0
# How long post-handshake tickets may wait for our next write while the client is silent.
TICKET_HOLD = 0.05
# Successive socket operations that completed without blocking before one yields anyway,
# so a connection with data always ready (a bulk transfer) cannot starve the others.
FAIR_STREAK = 8
# Seconds between idle sweeps: a stream quiet for a whole interval releases engine memory,
# which costs a busy connection nothing and a rarely busy one about 5 µs per wake-up.
IDLE_SWEEP = 1.0
_CLOSED_ERRNOS = frozenset((errno.EBADF, errno.ENOTSOCK))


def stream_error(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    """trio.SocketStream's mapping: a closed descriptor is ours to blame, the rest is broken."""
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


class FastSocketStream(trio.abc.HalfCloseableStream):
    """A TCP stream like ``trio.SocketStream`` with a cheap path for calls that do not block.

    Every call checks for cancellation first; it parks in ``wait_readable`` /
    ``wait_writable`` only when the socket would block, and otherwise yields once per
    ``FAIR_STREAK`` calls.  ``socket`` is the trio socket, as on ``trio.SocketStream``.
    Socket options are left alone (trio's stream spends two setsockopt calls per socket):
    accepted sockets inherit TCP_NODELAY from the listening socket, and :func:`connect_tcp`
    sets it on backend sockets itself.  Build it with :meth:`wrap`.
    """

    __slots__ = ("socket", "_raw", "_sending", "_streak", "_drained")  # held per connection

    def __init__(
        self, sock: trio.socket.SocketType, raw: stdlib_socket.socket, drained: bool = False
    ) -> None:
        self.socket = sock
        self._raw = raw
        self._sending = False
        self._streak = 0
        self._drained = drained  # the last read returned less than asked: the socket is empty

    @classmethod
    def wrap(cls, sock: trio.socket.SocketType, *, drained: bool = False) -> SocketTransport:
        """The fast stream over ``sock`` (a connected TCP socket), or trio's own stream when
        the trio socket does not expose its standard-library socket. ``drained``: nothing
        can have arrived yet (a connection we just opened), so the first read waits first."""
        raw = getattr(sock, "_sock", None)  # trio's socket wrapper keeps the stdlib socket
        if not isinstance(raw, stdlib_socket.socket):
            return trio.SocketStream(sock)
        return cls(sock, raw, drained)

    @property
    def raw_socket(self) -> stdlib_socket.socket:
        """The standard-library socket (proxy.reactor reads and writes it directly)."""
        return self._raw

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        self.socket.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int) -> int:
        return int(self.socket.getsockopt(level, option))

    async def aclose(self) -> None:
        self.socket.close()  # wakes any task parked on this socket (trio's notify_closing)
        await trio.lowlevel.checkpoint()

    async def _after_immediate(self) -> None:
        """A call that did not block: yield only every FAIR_STREAK such calls."""
        self._streak += 1
        if self._streak >= FAIR_STREAK:
            self._streak = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is currently sending on this stream")
        if self.socket.did_shutdown_SHUT_WR:
            raise trio.ClosedResourceError("can't send data after sending EOF")
        await trio.lowlevel.checkpoint_if_cancelled()
        self._sending = True
        try:
            blocked = await self._send_view(data)
        finally:
            self._sending = False
        if not blocked:
            await self._after_immediate()

    async def _send_view(self, data: bytes | bytearray | memoryview) -> bool:
        """Send everything; True if we had to wait for the socket to become writable."""
        raw = self._raw
        blocked = False
        with memoryview(data) as view:
            total = len(view)
            if not total and raw.fileno() == -1:
                raise trio.ClosedResourceError("socket was already closed")
            sent = 0
            while sent < total:
                try:
                    sent += raw.send(view[sent:])
                except BlockingIOError:
                    blocked = True
                    self._streak = 0
                    if raw.fileno() == -1:
                        raise trio.ClosedResourceError("this socket was already closed") from None
                    await trio.lowlevel.wait_writable(raw)
                except OSError as exc:
                    raise stream_error(exc) from exc
        return blocked

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is currently sending on this stream")
        if self._raw.fileno() == -1:
            raise trio.ClosedResourceError
        await trio.lowlevel.wait_writable(self._raw)

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is currently sending on this stream")
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.socket.did_shutdown_SHUT_WR:
            return
        try:
            self.socket.shutdown(stdlib_socket.SHUT_WR)
        except OSError as exc:
            raise stream_error(exc) from exc
        await self._after_immediate()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = READ_SIZE
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._drained:
            # The last read emptied the socket (a request/response exchange): a read now
            # would almost surely fail with EAGAIN, so wait for data first. A FIN that came
            # with that data waits one scheduler pass too (~12 µs, once per connection):
            # only a syscall could tell it is there, and a recv first would cost every
            # keep-alive read a failed call (~1.5 µs). The relays (proxy.reactor) learn of
            # the FIN from EPOLLRDHUP and read it at once.
            self._streak = 0
            return await self._receive_blocking(max_bytes)
        try:
            data = self._raw.recv(max_bytes)
        except BlockingIOError:
            self._streak = 0
            return await self._receive_blocking(max_bytes)
        except OSError as exc:
            raise stream_error(exc) from exc
        self._drained = len(data) < max_bytes
        await self._after_immediate()
        return data

    async def _receive_blocking(self, max_bytes: int) -> bytes:
        raw = self._raw
        while True:
            if raw.fileno() == -1:  # epoll cannot wait on a closed descriptor
                raise trio.ClosedResourceError("this socket was already closed")
            await trio.lowlevel.wait_readable(raw)
            try:
                data = raw.recv(max_bytes)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise stream_error(exc) from exc
            self._drained = len(data) < max_bytes
            return data


# An accepted TCP connection as the proxy holds it: our fast stream, or trio's own where the
# fast one cannot reach the standard-library socket. Both expose ``socket``.
SocketTransport: TypeAlias = FastSocketStream | trio.SocketStream


async def connect_tcp(
    family: int, address: tuple[object, ...], timeout: float = math.inf
) -> trio.abc.HalfCloseableStream:
    """Connect to a numeric address: what a backend pool needs per connection.

    Cheaper than ``trio.socket.socket().connect()``: no resolver pass over the literal, no
    happy-eyeballs nursery, no forced yield when the connect completes at once; the socket
    is created non-blocking (no ioctl) with TCP_NODELAY set before the connect. Only the
    wait for the handshake is bounded by ``timeout`` (``trio.TooSlowError``); a refused or
    unreachable peer raises the ``OSError`` subclass for its errno, as trio's connect does.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    raw = stdlib_socket.socket(family, _NONBLOCKING_STREAM)
    try:
        raw.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
        code = raw.connect_ex(address)
        if code in _CONNECT_PENDING:
            code = 0 if _connected(raw) else await _connect_result(raw, timeout)
        if code:
            raise OSError(code, f"Error connecting to {address!r}: {os.strerror(code)}")
    except BaseException:
        raw.close()  # an unfinished connect cannot be resumed: never hand it out
        raise
    # The peer has had no time to speak: the first read waits for it instead of trying.
    return FastSocketStream(trio.socket.from_stdlib_socket(raw), raw, drained=True)


_NONBLOCKING_STREAM = stdlib_socket.SOCK_STREAM | stdlib_socket.SOCK_NONBLOCK
# A non-blocking connect under way: EINPROGRESS, or EINTR (the connect goes on regardless).
_CONNECT_PENDING = frozenset((errno.EINPROGRESS, errno.EINTR))


def _connected(raw: stdlib_socket.socket) -> bool:
    """Whether a connect reported as in progress is already done: on loopback the kernel
    completes the TCP handshake inside connect(), and one getpeername() then saves the
    scheduler round trip of waiting for writability. A refused connect is not connected
    either: the wait reports it at once."""
    try:
        raw.getpeername()
    except OSError:
        return False
    return True


async def _connect_result(raw: stdlib_socket.socket, timeout: float) -> int:
    """Wait (at most ``timeout``) for a connect in progress; its errno (0 = connected)."""
    with trio.CancelScope(deadline=trio.current_time() + timeout) as scope:
        await trio.lowlevel.wait_writable(raw)
    if scope.cancelled_caught:
        raise trio.TooSlowError
    return raw.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_ERROR)


class _IdleSweeper:
    """Every ``IDLE_SWEEP`` seconds, the streams that saw no traffic since the previous sweep
    release their engine's idle memory. One task for all streams of a trio run: no timer per
    connection. Weak references: a stream whose task ended needs no unregistering."""

    def __init__(self) -> None:
        self.streams: weakref.WeakSet[TLSStream] = weakref.WeakSet()

    async def run(self) -> None:
        while True:
            await trio.sleep(IDLE_SWEEP)
            for stream in self.streams:
                stream.sweep_idle()


_SWEEPER: trio.lowlevel.RunVar[_IdleSweeper] = trio.lowlevel.RunVar("tls13proxy_idle_sweeper")


def _idle_sweeper() -> _IdleSweeper:
    """This trio run's sweeper, started (as a system task) by the first stream that needs it."""
    try:
        return _SWEEPER.get()
    except LookupError:
        sweeper = _IdleSweeper()
        _SWEEPER.set(sweeper)
        trio.lowlevel.spawn_system_task(sweeper.run, name="tls13proxy idle sweeper")
        return sweeper


class TLSStreamError(trio.BrokenResourceError):
    """The TLS layer failed (``alert`` holds what was sent or received)."""

    def __init__(self, message: str, error: TLSError | None = None) -> None:
        super().__init__(message)
        self.tls_error = error


class TLSTruncated(trio.BrokenResourceError):
    """The transport ended without close_notify after the handshake: an abrupt end."""


class TLSStream(trio.abc.HalfCloseableStream):
    """TLS server side of one accepted connection."""

    def __init__(
        self,
        transport: trio.abc.Stream,
        connection: ServerConnection,
    ) -> None:
        self.transport = transport
        self.connection = connection
        self.info: events.HandshakeComplete | None = None
        self.early_data = bytearray()
        self.client_hello: events.ClientHelloReceived | None = None
        self.bytes_received = 0
        self.bytes_sent = 0
        # Ciphertext on the wire (records, handshake, alerts), for the byte metrics.
        self.wire_received = 0
        self.wire_sent = 0
        self.clean_close: bool | None = None
        self.tickets_issued = 0
        # For the alert metrics: the fatal TLS error that ended the stream (an alert we sent
        # or received) and the warning alerts received (user_canceled).
        self.tls_error: TLSError | None = None
        self.warning_alerts: list[int] = []
        # Received plaintext, one entry per record (a list: a deque costs 700 bytes more per
        # idle connection, and a read rarely holds more than a few records).
        self._incoming: list[bytes] = []
        self._incoming_size = 0
        self._held = b""  # post-handshake tickets waiting for our next write
        self._eof = False
        # One writer at a time (a Semaphore: a relay callback may take it for the task).
        self._send_lock = trio.Semaphore(1, max_value=1)
        self._receiving = False
        self._closed = False
        self._sent_close_notify = False
        self._aborted = False
        # Wire bytes both ways at the last idle sweep (the relay's fast path moves bytes
        # without this class's methods, but it counts them too).
        self._swept_at = -1

    # -- handshake -------------------------------------------------------------------------

    async def do_handshake(self) -> events.HandshakeComplete:
        """Drive the handshake to completion; early data is held in ``early_data``."""
        while self.info is None:
            await self.handshake_step()
        assert self.info is not None
        return self.info

    async def handshake_step(self) -> None:
        """One read of the handshake: lets a caller act on 0-RTT data as it arrives."""
        if self._eof:
            raise TLSStreamError("connection closed during handshake")
        await self._read_transport()

    def take_early_data(self) -> bytes:
        """The 0-RTT bytes received so far (the buffer is emptied)."""
        data = bytes(self.early_data)
        self.early_data.clear()
        return data

    # -- receiving -------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving")
        self._receiving = True
        try:
            if self.info is None:
                await self.do_handshake()
            while not self._incoming and not self._eof:
                if self._closed:
                    raise trio.ClosedResourceError("stream closed")
                await self._read_transport()
            if self._incoming:
                chunk = self._take_incoming(max_bytes)
                self.bytes_received += len(chunk)
                return chunk
            if self.clean_close is False:
                raise TLSTruncated("peer closed the connection without close_notify")
            return b""
        finally:
            self._receiving = False

    def _take_incoming(self, max_bytes: int | None) -> bytes:
        """Up to ``max_bytes`` of buffered plaintext. Record payloads are kept as received and
        joined once here (a bytearray would copy every byte in, out, and again to bytes)."""
        incoming = self._incoming
        if max_bytes is None or self._incoming_size <= max_bytes:
            data = incoming[0] if len(incoming) == 1 else b"".join(incoming)
            incoming.clear()
            self._incoming_size = 0
            return data
        parts: list[bytes] = []
        wanted = max_bytes
        while wanted:
            head = incoming[0]
            if len(head) <= wanted:
                parts.append(incoming.pop(0))
                wanted -= len(head)
            else:
                parts.append(head[:wanted])
                incoming[0] = head[wanted:]
                wanted = 0
        self._incoming_size -= max_bytes
        return b"".join(parts)

    async def _receive_wire(self) -> bytes | bytearray:
        """Read the transport. While tickets are held, wait for the client at most
        TICKET_HOLD before sending them: a client that waits for us (a ticket probe, a
        protocol where the server speaks first) gets them without our next write."""
        if not self._held:
            return await self.transport.receive_some(READ_SIZE)
        with trio.move_on_after(TICKET_HOLD):
            return await self.transport.receive_some(READ_SIZE)  # cancel-safe: nothing read
        if self._held:
            await self._locked_send(b"")
        return await self.transport.receive_some(READ_SIZE)

    async def _read_transport(self) -> None:
        try:
            data = await self._receive_wire()
        except trio.BrokenResourceError as exc:
            self._eof, self.clean_close = True, False
            raise TLSTruncated(f"transport failed: {exc}") from exc
        await self._absorb(data)

    async def _absorb(
        self, data: bytes | bytearray, outcome: list[events.Event] | TLSError | None = None
    ) -> None:
        """Feed ``data`` read from the transport to the engine and act on what happened.
        ``outcome``: the engine already took ``data`` (the relay's fast path) and returned
        these events or raised this error."""
        if outcome is None:
            self.wire_received += len(data)
            try:
                outcome = self.connection.receive_data(bytes(data))
            except TLSError as exc:
                outcome = exc
        if isinstance(outcome, TLSError):
            self._eof = True
            if not data and not getattr(outcome, "sent_by_peer", False):
                # The peer simply went away mid-handshake (a port probe, a give-up).
                raise TLSTruncated("connection closed during the handshake") from outcome
            self.tls_error = outcome
            await self._flush_quietly()
            raise TLSStreamError(f"TLS error: {outcome}", outcome) from outcome
        happened = outcome
        self._handle_events(happened)
        if not data and not self._eof:
            # The engine must report EOF; treat silence as truncation to be safe.
            self._eof, self.clean_close = True, False
        # Replies owed by the receive side (tickets, KeyUpdate): take the lock only when
        # there is something to send, so reading never waits behind a blocked writer.
        # Draining before waiting keeps the byte order: trio's Semaphore is FIFO and
        # whoever drains later also sends later.
        out = self.connection.data_to_send()
        if out and self._completes_handshake(happened):
            self._held += out  # the tickets: they travel with our next write
        elif out:
            await self._locked_send(out)

    async def receive_after(self, wire: bytes | OSError, outcome: object, max_bytes: int) -> bytes:
        """``receive_some`` for a relay that read ``wire`` itself (or failed to) and may have
        fed it to the engine (``outcome``: events or TLSError, else None)."""
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving")
        if isinstance(wire, OSError):
            error = stream_error(wire)
            if isinstance(error, trio.BrokenResourceError):
                self._eof, self.clean_close = True, False
                raise TLSTruncated(f"transport failed: {error}") from wire
            raise error from wire
        self._receiving = True
        try:
            assert outcome is None or isinstance(outcome, (list, TLSError))
            await self._absorb(wire, outcome)
        finally:
            self._receiving = False
        return await self.receive_some(max_bytes)

    # -- the relay's fast path (proxy.reactor): synchronous, for the common case only -------

    @property
    def raw_socket(self) -> stdlib_socket.socket | None:
        """The transport's stdlib socket when the relay may bypass the stream layers."""
        transport = self.transport
        return transport._raw if isinstance(transport, FastSocketStream) else None

    def receive_ready(self) -> bool:
        """Nothing buffered, not ended: the relay may read the socket itself."""
        return not (self._incoming or self._eof or self._closed or self._receiving)

    def hold(self, out: bytes) -> None:
        """Bytes the engine owes the client (drained by a relay): they go out first with our
        next write, so nothing drained later can overtake them."""
        self._held += out

    @property
    def holding(self) -> bool:
        """Tickets (or a reply) wait for our next write."""
        return bool(self._held)

    async def send_held(self) -> None:
        """Send what is held now: the client stayed silent for TICKET_HOLD."""
        if self._held:
            await self._locked_send(b"")

    def send_ready(self) -> bool:
        """No write in progress or queued, stream open: the relay may write at once."""
        transport = self.transport
        return (
            self._send_lock.value == 1
            and not self._held
            and not self._closed
            and not self._sent_close_notify
            and self.info is not None
            and self.tls_error is None
            and isinstance(transport, FastSocketStream)
            and not transport._sending
            and not transport.socket.did_shutdown_SHUT_WR
        )

    def send_now(self, data: bytes) -> memoryview | None:
        """Encrypt ``data`` and write it without waiting (the caller checked ``send_ready``).
        Returns the part the socket did not take; the write lock then stays held until
        :meth:`finish_send` wrote it, so nothing can overtake it. Socket errors propagate."""
        out = self.connection.send_data_now(data)  # sealed and returned in one engine call
        self.bytes_sent += len(data)
        self.wire_sent += len(out)
        raw = self.transport._raw  # type: ignore[attr-defined]
        try:
            sent = raw.send(out)
        except BlockingIOError:
            sent = 0
        if sent == len(out):
            return None
        self._send_lock.acquire_nowait()
        return memoryview(out)[sent:]

    async def finish_send(self, rest: memoryview) -> None:
        """Write what :meth:`send_now` left over, then let other writers in."""
        try:
            await self.transport.send_all(rest)
        finally:
            self._send_lock.release()

    @staticmethod
    def _completes_handshake(happened: list[events.Event]) -> bool:
        return any(isinstance(event, events.HandshakeComplete) for event in happened)

    def _handle_events(self, happened: list[events.Event]) -> None:
        for event in happened:
            if isinstance(event, events.ApplicationData):
                if event.data:
                    self._incoming.append(event.data)
                    self._incoming_size += len(event.data)
            elif isinstance(event, events.EarlyData):
                self.early_data += event.data
            elif isinstance(event, events.HandshakeComplete):
                self.info = event
                _idle_sweeper().streams.add(self)
            elif isinstance(event, events.ClientHelloReceived):
                self.client_hello = event
            elif isinstance(event, events.SessionTicketIssued):
                self.tickets_issued += 1
            elif isinstance(event, events.ConnectionClosed):
                self._eof, self.clean_close = True, event.clean
            elif isinstance(event, events.AlertReceived):
                self.warning_alerts.append(int(event.description))

    @property
    def close_notify_sent(self) -> bool:
        """Whether we queued our close_notify (send_eof or a clean aclose)."""
        return self._sent_close_notify

    # -- sending ---------------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        if self._sent_close_notify:
            raise trio.ClosedResourceError("close_notify already sent")
        if self.info is None:
            raise trio.BrokenResourceError("handshake not complete")
        if self.tls_error is not None:  # the receive side failed; it reports the alert
            raise TLSStreamError(f"TLS error: {self.tls_error}", self.tls_error)
        self.connection.send_data(bytes(data))
        self.bytes_sent += len(data)
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        async with self._send_lock:
            await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Send close_notify, then shut the TCP write side; reading may continue."""
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        if self._sent_close_notify:
            return
        await self.send_close_notify()
        if isinstance(self.transport, trio.abc.HalfCloseableStream):
            async with self._send_lock:
                await self.transport.send_eof()

    async def send_close_notify(self) -> None:
        """Send close_notify and leave the TCP stream alone: for a caller that closes the
        stream next, whose close ends the TCP stream (FIN) anyway. ``send_eof``'s shutdown
        would cost a syscall more, and fails once the peer has closed its socket."""
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        if self._sent_close_notify:
            return
        self._sent_close_notify = True
        self.connection.close()
        await self._flush()

    async def _flush(self) -> None:
        out = self.connection.data_to_send()
        if out or self._held:
            await self._locked_send(out)
        else:
            await trio.lowlevel.checkpoint()  # nothing to write, but callers expect a checkpoint

    async def _locked_send(self, out: bytes) -> None:
        """Send under the write lock. Taking a free lock does not yield (``async with``
        would, once per write); the transport's send is the checkpoint. Bytes were drained
        from the engine before waiting, and trio's Semaphore is FIFO, so order holds."""
        lock = self._send_lock
        if not lock.value:
            await lock.acquire()
        else:
            lock.acquire_nowait()
        try:
            if self._held:  # drained before anything else, so it goes first
                out, self._held = self._held + out, b""
            self.wire_sent += len(out)
            await self.transport.send_all(out)
        finally:
            lock.release()

    async def _flush_quietly(self) -> None:
        """Best effort to deliver an alert we owe the peer before giving up."""
        with trio.move_on_after(CLOSE_GRACE):
            try:
                await self._flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                pass

    def sweep_idle(self) -> None:
        """Called by the idle sweeper: release engine memory if nothing moved since the
        previous sweep (the next record rebuilds it), else start a new quiet interval."""
        moved = self.wire_received + self.wire_sent
        if moved != self._swept_at:
            self._swept_at = moved
        elif not self._closed:
            self.connection.release_idle_memory()

    def abort(self) -> None:
        """Make the coming ``aclose`` end the TCP stream without close_notify: what we relayed
        was cut short (the backend reset), and the client must be able to tell."""
        self._aborted = True

    def _owes_close_notify(self) -> bool:
        """A clean close still has to send close_notify (not sent yet, not aborted, the
        handshake done and the peer did not cut the connection short)."""
        return (
            not self._sent_close_notify
            and not self._aborted
            and self.info is not None
            and self.clean_close is not False
        )

    def close_now(self) -> bool:
        """Close at once if nothing is owed to the peer; False if :meth:`aclose` must run.

        The usual end of a proxied connection: close_notify already went out with
        ``send_eof``. Our TCP transport then closes synchronously, which spares the
        connection the scheduler round trip of ``aclose``'s checkpoint.
        """
        if not self._closed:
            if self._owes_close_notify() or not isinstance(self.transport, FastSocketStream):
                return False
            self._closed = True
            self.transport.socket.close()
        return True

    async def aclose(self) -> None:
        """Send close_notify if we still owe it (bounded, even when cancelled), then close."""
        if self._closed:
            return
        try:
            if self._owes_close_notify():
                self._sent_close_notify = True
                self.connection.close()
                with trio.CancelScope(shield=True):
                    await self._flush_quietly()
        finally:
            self._closed = True
            await self.transport.aclose()
