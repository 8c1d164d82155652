"""A trio ``HalfCloseableStream`` over a sans-IO ``tls13.ServerConnection``.

* ``receive_some`` reads ciphertext only when the caller wants plaintext, so a slow consumer
  stops us reading from the socket (backpressure) rather than buffering without bound.
* ``send_all`` hands the engine the whole chunk: the engine cuts it into full 16 KiB records,
  and a small write is flushed at once (no Nagle-style delay in our layer).
* ``send_eof`` sends close_notify (RFC 8446 §6.1); the peer may keep sending afterwards.
* A received close_notify is a clean EOF (``b""``); a transport EOF without one is a
  truncation and raises ``TLSTruncated`` so a proxy never forwards it as a clean end.
* Writes from the receive side (KeyUpdate answers, alerts) and from ``send_all`` share one
  lock so two tasks — one per direction — may use the stream at the same time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from tls13 import events
from tls13.alerts import TLSError

if TYPE_CHECKING:
    from tls13 import ServerConnection

log = logging.getLogger(__name__)

READ_SIZE = 65536
CLOSE_GRACE = 1.0


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
        self._incoming = bytearray()
        self._eof = False
        self._send_lock = trio.Lock()
        self._receiving = False
        self._closed = False
        self._sent_close_notify = False

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
                size = len(self._incoming) if max_bytes is None else max_bytes
                chunk = bytes(self._incoming[:size])
                del self._incoming[:size]
                self.bytes_received += len(chunk)
                return chunk
            if self.clean_close is False:
                raise TLSTruncated("peer closed the connection without close_notify")
            return b""
        finally:
            self._receiving = False

    async def _read_transport(self) -> None:
        try:
            data = await self.transport.receive_some(READ_SIZE)
            self.wire_received += len(data)
        except trio.BrokenResourceError as exc:
            self._eof, self.clean_close = True, False
            raise TLSTruncated(f"transport failed: {exc}") from exc
        try:
            happened = self.connection.receive_data(bytes(data))
        except TLSError as exc:
            self._eof = True
            if not data and not getattr(exc, "sent_by_peer", False):
                # The peer simply went away mid-handshake (a port probe, a give-up).
                raise TLSTruncated("connection closed during the handshake") from exc
            self.tls_error = exc
            await self._flush_quietly()
            raise TLSStreamError(f"TLS error: {exc}", exc) from exc
        self._handle_events(happened)
        if not data and not self._eof:
            # The engine must report EOF; treat silence as truncation to be safe.
            self._eof, self.clean_close = True, False
        # Replies owed by the receive side (tickets, KeyUpdate): take the lock only when
        # there is something to send, so reading never waits behind a blocked writer.
        # Draining before waiting keeps the byte order: trio's Lock is FIFO and whoever
        # drains later also sends later.
        out = self.connection.data_to_send()
        if out:
            async with self._send_lock:
                self.wire_sent += len(out)
                await self.transport.send_all(out)

    def _handle_events(self, happened: list[events.Event]) -> None:
        for event in happened:
            if isinstance(event, events.ApplicationData):
                self._incoming += event.data
            elif isinstance(event, events.EarlyData):
                self.early_data += event.data
            elif isinstance(event, events.HandshakeComplete):
                self.info = event
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
        self._sent_close_notify = True
        self.connection.close()
        await self._flush()
        if isinstance(self.transport, trio.abc.HalfCloseableStream):
            async with self._send_lock:
                await self.transport.send_eof()

    async def _flush(self) -> None:
        async with self._send_lock:
            out = self.connection.data_to_send()
            if out:
                self.wire_sent += len(out)
                await self.transport.send_all(out)

    async def _flush_quietly(self) -> None:
        """Best effort to deliver an alert we owe the peer before giving up."""
        with trio.move_on_after(CLOSE_GRACE):
            try:
                await self._flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                pass

    async def aclose(self) -> None:
        """Send close_notify if we still owe it (bounded, even when cancelled), then close."""
        if self._closed:
            return
        try:
            if (
                not self._sent_close_notify
                and self.info is not None
                and self.clean_close is not False
            ):
                self._sent_close_notify = True
                self.connection.close()
                with trio.CancelScope(shield=True):
                    await self._flush_quietly()
        finally:
            self._closed = True
            await self.transport.aclose()
