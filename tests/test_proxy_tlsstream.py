"""TLSStream against the project's own TLS client over a socketpair: half-close both ways,
truncation detection, record sizing for bulk writes, and concurrent use by two pumps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
from certs import Issued, make_leaf

from proxy.connection import _pass_eof
from proxy.tlsstream import FastSocketStream, TLSStream, TLSStreamError, TLSTruncated
from tls13 import (
    AlertDescription,
    CertificateChain,
    CertificateStore,
    ClientConfig,
    ClientConnection,
    ServerConfig,
    ServerConnection,
    TLSError,
    events,
)


class Client:
    """A minimal driver for tls13.ClientConnection over a trio stream."""

    def __init__(self, stream: trio.SocketStream, ca: Issued) -> None:
        self.stream = stream
        self.conn = ClientConnection(ClientConfig(ca_certificates=(ca.cert,)), "localhost")
        self.data = bytearray()
        self.closed: bool | None = None

    async def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            await self.stream.send_all(out)

    async def pump_once(self) -> list[events.Event]:
        happened = self.conn.receive_data(await self.stream.receive_some(65536))
        for event in happened:
            if isinstance(event, events.ApplicationData):
                self.data += event.data
            elif isinstance(event, events.ConnectionClosed):
                self.closed = event.clean
        await self.flush()
        return happened

    async def handshake(self) -> None:
        self.conn.start()
        await self.flush()
        while not self.conn.handshake_complete:
            await self.pump_once()

    async def read_until(self, size: int) -> None:
        while len(self.data) < size and self.closed is None:
            await self.pump_once()


def server_config(ca: Issued) -> ServerConfig:
    leaf = make_leaf(ca, ("localhost",))
    chain = CertificateChain.from_pem(leaf.cert_pem(), leaf.key_pem())
    return ServerConfig(CertificateStore([chain]), tickets=0)


def run_pair(test_ca: Issued, body: Callable[[TLSStream, Client], Awaitable[None]]) -> None:
    async def main() -> None:
        left, right = trio.socket.socketpair()
        server = TLSStream(trio.SocketStream(left), ServerConnection(server_config(test_ca)))
        client = Client(trio.SocketStream(right), test_ca)
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.do_handshake)
                await client.handshake()
            await body(server, client)

    trio.run(main)


def test_half_close_each_way(test_ca: Issued) -> None:
    async def body(server: TLSStream, client: Client) -> None:
        client.conn.send_data(b"request")
        client.conn.close()  # close_notify: the client is done sending
        await client.flush()
        assert await server.receive_some() == b"request"
        assert await server.receive_some() == b""  # clean EOF
        assert server.clean_close is True
        await server.send_all(b"response after the client's close_notify")
        await server.send_eof()
        await client.read_until(40)
        await client.read_until(10**6)
        assert bytes(client.data) == b"response after the client's close_notify"
        assert client.closed is True

    run_pair(test_ca, body)


@pytest.mark.parametrize("closing", [False, True], ids=["half-close", "closing"])
def test_passing_the_end_to_the_client(test_ca: Issued, closing: bool) -> None:
    # The pump that ends first half-closes (close_notify, then FIN; the client may still
    # send). The one that ends second sends close_notify only: the close right after it
    # sends the FIN, and a shutdown first would fail once the client closed its socket.
    async def body(server: TLSStream, client: Client) -> None:
        client.conn.close()
        await client.flush()
        assert await server.receive_some() == b""
        await _pass_eof(server, closing=closing)
        assert server.close_notify_sent
        transport = server.transport
        assert isinstance(transport, trio.SocketStream)
        assert transport.socket.did_shutdown_SHUT_WR is not closing
        await client.read_until(1)
        assert client.closed is True
        if closing:
            await server.aclose()
        assert await client.stream.receive_some(1) == b""  # the FIN, either way

    run_pair(test_ca, body)


@pytest.mark.parametrize("closing", [False, True], ids=["half-close", "closing"])
def test_a_backend_gets_its_fin_at_once(closing: bool) -> None:
    async def main() -> None:
        ours, theirs = trio.socket.socketpair()
        backend = FastSocketStream.wrap(ours)
        await _pass_eof(backend, closing=closing)
        assert await theirs.recv(1) == b""  # before any close: the FIN is its only end signal
        await backend.aclose()
        theirs.close()

    trio.run(main)


def test_eof_without_close_notify_is_truncation(test_ca: Issued) -> None:
    async def body(server: TLSStream, client: Client) -> None:
        client.conn.send_data(b"partial")
        await client.flush()
        await client.stream.send_eof()  # TCP FIN, no close_notify
        assert await server.receive_some() == b"partial"
        with pytest.raises(TLSTruncated):
            await server.receive_some()

    run_pair(test_ca, body)


def test_forged_record_is_a_tls_error_and_the_alert_is_sent(test_ca: Issued) -> None:
    async def body(server: TLSStream, client: Client) -> None:
        await client.stream.send_all(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
        with pytest.raises(TLSStreamError) as info:
            await server.receive_some()
        assert info.value.tls_error is not None
        assert info.value.tls_error.alert == AlertDescription.bad_record_mac
        with pytest.raises(TLSError) as received:
            await client.pump_once()
        assert received.value.alert == AlertDescription.bad_record_mac

    run_pair(test_ca, body)


def test_bulk_write_uses_full_records_and_concurrent_directions(test_ca: Issued) -> None:
    size = 256 * 1024

    async def body(server: TLSStream, client: Client) -> None:
        async def server_side() -> None:
            await server.send_all(b"b" * size)
            assert await server.receive_some() == b"ping"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(server_side)
            client.conn.send_data(b"ping")
            await client.flush()
            raw = bytearray()
            while len(client.data) < size:
                chunk = await client.stream.receive_some(65536)
                raw += chunk
                for event in client.conn.receive_data(chunk):
                    if isinstance(event, events.ApplicationData):
                        client.data += event.data
        # 256 KiB in full 16 KiB records: 16 records, each 5 + 16384 + 1 + 16 bytes on the wire.
        assert len(client.data) == size
        assert len(raw) == 16 * (5 + 16384 + 1 + 16)

    run_pair(test_ca, body)
