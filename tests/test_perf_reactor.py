"""The reactor-driven data path (proxy.reactor) keeps the pumps' semantics: every byte in
order, backpressure, half-close, KeyUpdate replies, fairness and the idle deadline."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from certs import Issued, make_leaf

from proxy.connection import ConnectionRecord, splice
from proxy.reactor import current_reactor
from proxy.tlsstream import FastSocketStream, TLSStream, connect_tcp
from tls13 import (
    CertificateChain,
    CertificateStore,
    ClientConfig,
    ClientConnection,
    ServerConfig,
    ServerConnection,
    TicketKeyring,
    events,
)


@dataclass
class Spliced:
    """A TLS client and a plain backend peer, connected through ``splice``."""

    tls: ClientConnection
    client: FastSocketStream  # the client's socket (TLS records)
    backend: FastSocketStream  # the backend's socket (plaintext)
    record: ConnectionRecord
    received: bytearray  # plaintext the client has decrypted
    closed: list[bool]  # the client saw close_notify
    tickets: int = 0  # NewSessionTickets the client received

    async def send(self, data: bytes) -> None:
        self.tls.send_data(data)
        await self.client.send_all(self.tls.data_to_send())

    async def receive(self, size: int) -> bytes:
        """Read until ``size`` plaintext bytes arrived (or the stream closed)."""
        while len(self.received) < size and not self.closed:
            await self.read_once()
        data = bytes(self.received[:size])
        del self.received[:size]
        return data

    async def read_once(self) -> None:
        """One read of the client socket, fed to the client engine."""
        wire = await self.client.receive_some(65536)
        for event in self.tls.receive_data(wire):
            if isinstance(event, events.ApplicationData):
                self.received += event.data
            elif isinstance(event, events.ConnectionClosed):
                self.closed.append(event.clean)
            elif isinstance(event, events.NewSessionTicketReceived):
                self.tickets += 1
        out = self.tls.data_to_send()
        if out:
            await self.client.send_all(out)


async def _tcp_pair() -> tuple[FastSocketStream, FastSocketStream]:
    listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    near = await connect_tcp(socket.AF_INET, listener.getsockname())
    accepted, _ = await listener.accept()
    listener.close()
    far = FastSocketStream.wrap(accepted)
    assert isinstance(near, FastSocketStream) and isinstance(far, FastSocketStream)
    return near, far


@asynccontextmanager
async def spliced(test_ca: Issued, idle: float = 30.0) -> AsyncIterator[Spliced]:
    """Handshake a client with a TLSStream, then splice it to a backend connection."""
    leaf = make_leaf(test_ca, ("localhost",))
    chain = CertificateChain.from_pem(leaf.cert_pem(), leaf.key_pem())
    client_side, server_side = await _tcp_pair()
    proxy_end, backend = await _tcp_pair()
    config = ServerConfig(
        CertificateStore([chain]), tickets=2, ticket_keys=TicketKeyring.generate()
    )
    server = TLSStream(server_side, ServerConnection(config))
    tls = ClientConnection(ClientConfig(ca_certificates=(test_ca.cert,)), "localhost")
    tls.start()
    record = ConnectionRecord("test", "127.0.0.1", 0, "127.0.0.1", 0)
    link = Spliced(tls, client_side, backend, record, bytearray(), [])
    await client_side.send_all(tls.data_to_send())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        while not tls.handshake_complete:
            tls.receive_data(await client_side.receive_some())
        await client_side.send_all(tls.data_to_send())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(splice, server, proxy_end, idle, link.record, 65536)
        yield link
        await _hang_up(link)
    await server.aclose()
    await proxy_end.aclose()


def test_requests_and_responses_flow_through_callbacks(test_ca: Issued) -> None:
    async def main() -> None:
        with trio.fail_after(30):
            async with spliced(test_ca) as link:
                for n in range(50):
                    request = b"GET /%d\r\n" % n
                    await link.send(request)
                    assert await _exactly(link.backend, len(request)) == request
                    await link.backend.send_all(b"response %d" % n)
                    assert await link.receive(len(b"response %d" % n)) == b"response %d" % n
                assert current_reactor() is not None
                await link.backend.send_all(b"last")
                await link.backend.send_eof()  # the response and the FIN together
                assert await link.receive(4) == b"last"
                await link.receive(1)
                assert link.closed == [True]  # close_notify, not a truncation
                await link.send(b"after half-close")
                assert await _exactly(link.backend, 16) == b"after half-close"
                link.tls.close()
                await link.client.send_all(link.tls.data_to_send())
                assert await link.backend.receive_some(10) == b""
        assert link.record.outcome == "ok"
        assert link.record.bytes_from_client == sum(len(b"GET /%d\r\n" % n) for n in range(50)) + 16

    trio.run(main)


def test_key_update_is_answered_and_data_keeps_its_order(test_ca: Issued) -> None:
    async def main() -> None:
        with trio.fail_after(30):
            async with spliced(test_ca) as link:
                for n in range(5):
                    link.tls.update_keys(request_peer=True)
                    await link.send(b"ping %d" % n)
                    assert await _exactly(link.backend, 6) == b"ping %d" % n
                    await link.backend.send_all(b"pong %d" % n)
                    assert await link.receive(6) == b"pong %d" % n
                await link.client.send_eof()  # a truncation: no close_notify
                await trio.sleep(0.05)
        assert link.record.outcome == "client_truncated"

    trio.run(main)


def test_data_then_a_bare_fin_from_the_client_is_delivered_then_a_truncation(
    test_ca: Issued,
) -> None:
    """The last record and the FIN may come with one edge: the relay reads on (RDHUP)."""

    async def main() -> None:
        with trio.fail_after(30):
            async with spliced(test_ca) as link:
                await link.send(b"ping")
                assert await _exactly(link.backend, 4) == b"ping"
                link.tls.send_data(b"last words")
                await link.client.send_all(link.tls.data_to_send())
                await link.client.send_eof()  # no close_notify
                assert await _exactly(link.backend, 10) == b"last words"
                while link.record.outcome == "open":
                    await trio.sleep(0.01)
        assert link.record.outcome == "client_truncated"

    trio.run(main)


def test_held_tickets_leave_while_the_client_talks_to_a_silent_backend(test_ca: Issued) -> None:
    """Tickets wait for our first write, but not forever: with the relay forwarding the
    client's data and no response coming, they still go out after TICKET_HOLD."""

    async def main() -> None:
        with trio.fail_after(30):
            async with spliced(test_ca) as link:
                for n in range(3):
                    await link.send(b"upload %d" % n)
                    assert await _exactly(link.backend, 8) == b"upload %d" % n
                while link.tickets < 2:  # no response comes; the tickets do
                    await link.read_once()
                assert not link.received
                await link.backend.send_all(b"done")
                assert await link.receive(4) == b"done"

    trio.run(main)


def test_backpressure_and_edges_while_the_task_writes(test_ca: Issued) -> None:
    """A backend that does not read fills the sockets: the relay hands the rest to its
    task, the client keeps sending meanwhile, and nothing is lost once the backend reads."""
    payload = bytes(range(256)) * 16384  # 4 MiB

    async def main() -> None:
        with trio.fail_after(60):
            async with spliced(test_ca) as link:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(link.send, payload)
                    await trio.sleep(0.2)  # the sockets fill up
                    assert await _exactly(link.backend, len(payload)) == payload
                download = payload[::-1]
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(link.backend.send_all, download)
                    await trio.sleep(0.2)
                    assert await link.receive(len(download)) == download
                await link.backend.aclose()
                await link.receive(1)
        assert link.record.bytes_to_client == len(payload)

    trio.run(main)


def test_many_records_in_one_read_reach_the_backend_in_order(test_ca: Issued) -> None:
    """A read holding several records is forwarded as one gathered write (and joined when
    it holds more records than one gathered write takes): same bytes, same order."""
    batches = [
        [b"%03d:" % n + b"r" * (n % 7) for n in range(count)] for count in (3, 40, 64, 65, 300)
    ]

    async def main() -> None:
        with trio.fail_after(30):
            async with spliced(test_ca) as link:
                for pieces in batches:
                    for piece in pieces:  # one record each, all sent in one client write
                        link.tls.send_data(piece)
                    await link.client.send_all(link.tls.data_to_send())
                    expected = b"".join(pieces)
                    assert await _exactly(link.backend, len(expected)) == expected
        assert link.record.bytes_from_client == sum(len(b"".join(p)) for p in batches)

    trio.run(main)


# Another process keeps a download always ready: it floods the backend end and discards
# what reaches the client end (threads here would share our GIL and pace the flood).
_FLOOD = """
import socket, sys, threading
source = socket.socket(fileno=int(sys.argv[1]))
drain = socket.socket(fileno=int(sys.argv[2]))
source.setblocking(True)
drain.setblocking(True)
def flood():
    try:
        while True:
            source.sendall(b"x" * 65536)
    except OSError:
        pass
threading.Thread(target=flood, daemon=True).start()
while drain.recv(1 << 20):
    pass
"""


def test_a_busy_connection_does_not_starve_another(test_ca: Issued) -> None:
    """One connection's download always has data waiting and room to write: its relay
    must still give the dispatcher back, or the other connection never gets an answer."""

    async def main() -> None:
        with trio.fail_after(60):
            async with spliced(test_ca) as bulk, spliced(test_ca) as chatty:
                source, drain = bulk.backend.raw_socket.fileno(), bulk.client.raw_socket.fileno()
                command = [sys.executable, "-c", _FLOOD, str(source), str(drain)]
                flood = subprocess.Popen(command, pass_fds=(source, drain))
                try:
                    while bulk.record.bytes_to_client < 1 << 20:
                        await trio.sleep(0.01)
                    for n in range(20):
                        await chatty.send(b"q%02d" % n)
                        assert await _exactly(chatty.backend, 3) == b"q%02d" % n
                        await chatty.backend.send_all(b"a%02d" % n)
                        assert await chatty.receive(3) == b"a%02d" % n
                finally:
                    flood.kill()
                    flood.wait()
                assert bulk.record.bytes_to_client > 1 << 20
                bulk.client.raw_socket.setblocking(False)  # shared with the child, which changed it
                bulk.backend.raw_socket.setblocking(False)

    trio.run(main)


def test_idle_deadline_cancels_parked_relays(test_ca: Issued) -> None:
    async def main() -> None:
        with trio.fail_after(30):
            async with spliced(test_ca, idle=0.2) as link:
                await link.send(b"one")
                assert await _exactly(link.backend, 3) == b"one"
                while link.record.outcome == "open":  # cut after the idle time
                    await trio.sleep(0.05)
        assert link.record.outcome == "idle_timeout"

    trio.run(main)


async def _hang_up(link: Spliced) -> None:
    """End both sides cleanly (close_notify, backend FIN) so the splice finishes at once."""
    link.tls.close()
    try:
        await link.client.send_all(link.tls.data_to_send())
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the test ended the client side itself
    await link.backend.aclose()


async def _exactly(stream: FastSocketStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(min(65536, size - len(data)))
        assert chunk, "unexpected EOF"
        data += chunk
    return bytes(data)
