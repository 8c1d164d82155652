"""The scaling section's origin: one fixed HTTP response per connection, on a bare epoll loop.

    python3 bench/light_backend.py --port 8080

On a 2-core machine everything besides the target takes CPU a second worker would need,
and bench/backend.py (asyncio, with keep-alive, downloads and uploads for the other
figures) spends about 0.2 ms per proxied connection: as much as the load generator.  For
the 1 → 2 worker figures each connection carries exactly one ``GET`` answered with
``Connection: close`` (what ``bench/hsload.py`` sends), so this backend does only that:
accept, read up to the end of the request head, write the same 64-byte response as
bench/backend.py, close.  A connection that closes before a whole request head (a
handshake-only client) is simply closed.
"""

from __future__ import annotations

import argparse
import errno
import select
import signal
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backend import SMALL_BODY, _response_head  # noqa: E402

# Byte for byte what bench/backend.py answers an HTTP/1.0 GET.
RESPONSE = _response_head(200, len(SMALL_BODY), keep_alive=False) + SMALL_BODY
MAX_HEAD = 16384  # a longer head is not one of ours: the connection is dropped


def serve(listener: socket.socket) -> None:
    """Level-triggered epoll over the listener and every open connection."""
    epoll = select.epoll()
    epoll.register(listener.fileno(), select.EPOLLIN)
    listening = listener.fileno()
    connections: dict[int, tuple[socket.socket, bytearray]] = {}
    while True:
        for fd, _events in epoll.poll():
            if fd == listening:
                accept_all(listener, epoll, connections)
                continue
            sock, head = connections[fd]
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            head += data
            if data and b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
                continue  # the head is still arriving
            if data and len(head) < MAX_HEAD:
                try:
                    sock.send(RESPONSE)  # 200-odd bytes: fits an empty send buffer
                except OSError:
                    pass  # the client went away: nothing to answer
            del connections[fd]
            sock.close()


def accept_all(
    listener: socket.socket,
    epoll: select.epoll,
    connections: dict[int, tuple[socket.socket, bytearray]],
) -> None:
    while True:
        try:
            sock, _address = listener.accept()
        except BlockingIOError:
            return
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE, errno.ECONNABORTED):
                return  # retried on the next readiness event
            raise
        sock.setblocking(False)
        connections[sock.fileno()] = (sock, bytearray())
        epoll.register(sock.fileno(), select.EPOLLIN)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(4096)
    listener.setblocking(False)
    try:
        serve(listener)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
