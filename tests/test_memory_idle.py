"""What an idle established connection keeps (issue 9, memory per idle connection).

* After the handshake the server engine no longer reaches handshake-only objects (transcript,
  key schedule, ClientHello, handshake secrets), unless the client may still be asked for a
  certificate (post-handshake auth needs the transcript, RFC 8446 §4.6.2).
* ``release_idle_memory`` drops the AEAD objects and the connection still works both ways,
  across a KeyUpdate too; the record layer frees its input buffer once everything is read.
* ``TLSStream`` releases only after a whole quiet sweep interval, and its sweeper does it.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from typing import Any

import trio
import trio.testing
from certs import Issued, make_ca, make_leaf
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from msg_helpers import pump

from proxy import tlsstream
from proxy.tlsstream import TLSStream
from tls13 import (
    CertificateChain,
    CertificateStore,
    ClientConfig,
    ClientConnection,
    ServerConfig,
    ServerConnection,
    events,
)
from tls13.keyschedule import KeySchedule
from tls13.messages import ClientHello
from tls13.record import APPLICATION_DATA, RecordLayer
from tls13.suites import BY_NAME, SUITES
from tls13.transcript import Transcript


def chain(issued: Issued) -> CertificateChain:
    return CertificateChain.from_pem(issued.cert_pem(), issued.key_pem())


def configs(client_certificate: bool = False) -> tuple[ClientConfig, ServerConfig]:
    ca = make_ca()
    store = CertificateStore([chain(make_leaf(ca, ("localhost",)))])
    server = ServerConfig(certificates=store, client_ca=(ca.cert,))
    certificate = chain(make_leaf(ca, ("alice.example",), client=True))
    client = ClientConfig(
        ca_certificates=(ca.cert,), certificate=certificate if client_certificate else None
    )
    return client, server


def connected(client_certificate: bool = False) -> tuple[ClientConnection, ServerConnection]:
    client_config, server_config = configs(client_certificate)
    client = ClientConnection(client_config, server_name="localhost")
    server = ServerConnection(server_config)
    client.start()
    pump(client, server)
    assert server.handshake_complete and client.handshake_complete
    return client, server


def reachable(root: object, stop: tuple[object, ...]) -> Iterator[object]:
    """Every object reachable from ``root`` without passing through ``stop`` (the shared
    configuration) or through types and modules."""
    seen = {id(s) for s in stop}
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, type) or type(obj).__name__ == "module":
            continue
        seen.add(id(obj))
        yield obj
        todo.extend(gc.get_referents(obj))


def kept_by(server: ServerConnection, kinds: tuple[type, ...]) -> list[object]:
    config = server._config  # shared by every connection of a listener: not per connection
    return [obj for obj in reachable(server, (config,)) if isinstance(obj, kinds)]


def exchange(client: ClientConnection, server: ServerConnection, payload: bytes) -> None:
    """Send ``payload`` each way and check both sides receive it."""
    server.send_data(payload)
    client.send_data(payload[::-1])
    client_events, server_events = pump(client, server)
    assert b"".join(e.data for e in client_events if isinstance(e, events.ApplicationData)) == (
        payload
    )
    assert (
        b"".join(e.data for e in server_events if isinstance(e, events.ApplicationData))
        == (payload[::-1])
    )


def test_handshake_only_state_is_dropped_after_the_handshake() -> None:
    client, server = connected()
    hello = client._hello  # what the server parsed and kept during the handshake
    assert hello is not None
    handshake_only = (Transcript, KeySchedule, ClientHello)
    assert kept_by(server, handshake_only) == []
    raw_hello = hello.serialize()
    assert not [o for o in reachable(server, (server._config,)) if o == raw_hello]
    # What the connection still needs works: application data, KeyUpdate, exporters.
    exchange(client, server, b"ping")
    server.update_keys(request_peer=True)
    exchange(client, server, b"after key update")
    assert server.export_keying_material(b"label", b"", 32) == (
        client.export_keying_material(b"label", b"", 32)
    )


def test_transcript_is_kept_while_post_handshake_auth_is_possible() -> None:
    client, server = connected(client_certificate=True)
    assert len(kept_by(server, (Transcript,))) == 1
    assert kept_by(server, (KeySchedule, ClientHello)) == []
    server.request_client_certificate()
    _, server_events = pump(client, server)
    assert any(isinstance(e, events.ClientCertificateReceived) for e in server_events)


def test_release_idle_memory_drops_the_aead_objects_and_traffic_goes_on() -> None:
    client, server = connected()
    assert len(kept_by(server, (AESGCM,))) == 2  # one per direction
    server.release_idle_memory()
    assert kept_by(server, (AESGCM,)) == []
    exchange(client, server, b"x" * 40000)  # several records each way
    assert len(kept_by(server, (AESGCM,))) == 2
    server.release_idle_memory()
    server.release_idle_memory()  # twice is harmless
    server.update_keys(request_peer=True)
    exchange(client, server, b"after key update")
    server.release_idle_memory()
    client.update_keys(request_peer=True)
    exchange(client, server, b"after the peer's key update")


def _protected_pair() -> tuple[RecordLayer, RecordLayer]:
    suite = SUITES[BY_NAME["TLS_AES_128_GCM_SHA256"]]
    secret = bytes(range(32))
    sender, receiver = RecordLayer(), RecordLayer()
    sender.set_write_key(suite, secret)
    receiver.set_read_key(suite, secret)
    return sender, receiver


def _input_buffer_size(layer: RecordLayer) -> int:
    # The input buffers: kept reads (bytes) or joined ones (bytearray).
    buffers = [o for o in gc.get_referents(layer) if isinstance(o, (bytes, bytearray))]
    return sum(sys.getsizeof(buffer) for buffer in buffers)


def test_record_input_buffer_is_freed_once_everything_is_read() -> None:
    sender, receiver = _protected_pair()
    sender.write(APPLICATION_DATA, b"y" * 65536)
    wire = sender.take_output()
    receiver.receive(wire[:100])  # a partial record stays buffered
    assert receiver.next_record() is None
    assert receiver.buffered == 100
    receiver.receive(wire[100:])  # then one large read, all of it records
    records: list[tuple[int, bytes]] = []
    while (record := receiver.next_record()) is not None:
        records.append(record)
    assert b"".join(p for _, p in records) == b"y" * 65536
    assert receiver.buffered == 0
    assert _input_buffer_size(receiver) < 1024  # the 64 KiB read is not held while idle
    sender.write(APPLICATION_DATA, b"z")
    receiver.receive(sender.take_output())  # and the buffer still works afterwards
    assert receiver.next_record() == (APPLICATION_DATA, b"z")


class _Engine:
    """Stands in for ServerConnection where only the release calls matter."""

    def __init__(self) -> None:
        self.releases = 0

    def release_idle_memory(self) -> None:
        self.releases += 1


def test_stream_releases_only_after_a_whole_quiet_interval() -> None:
    engine = _Engine()
    stream = TLSStream(trio.testing.MemoryReceiveStream(), engine)  # type: ignore[arg-type]
    stream.sweep_idle()  # the first sweep only notes the byte counts
    assert engine.releases == 0
    stream.sweep_idle()
    assert engine.releases == 1
    stream.wire_received += 30  # a read (by the stream or by the relay's fast path)
    stream.sweep_idle()
    assert engine.releases == 1
    stream.wire_sent += 30
    stream.sweep_idle()
    assert engine.releases == 1
    stream.sweep_idle()
    assert engine.releases == 2


def test_sweeper_task_releases_idle_established_streams() -> None:
    engine = _Engine()
    clock = trio.testing.MockClock(autojump_threshold=0)

    async def main() -> None:
        stream = TLSStream(trio.testing.MemoryReceiveStream(), engine)  # type: ignore[arg-type]
        stream._handle_events([_completed()])
        assert stream.info is not None
        await trio.sleep(tlsstream.IDLE_SWEEP * 2.5)
        assert engine.releases == 1
        await trio.sleep(tlsstream.IDLE_SWEEP)
        assert engine.releases == 2

    trio.run(main, clock=clock)


def _completed() -> events.HandshakeComplete:
    fields: dict[str, Any] = {
        "version": "TLSv1.3",
        "cipher_suite": "TLS_AES_128_GCM_SHA256",
        "group": "x25519",
        "signature_scheme": None,
        "server_name": None,
        "alpn_protocol": None,
        "hello_retry": False,
        "resumed": False,
        "early_data_accepted": False,
        "peer_certificates": (),
        "client_identity": None,
    }
    return events.HandshakeComplete(**fields)
