"""A backend that records the PROXY protocol header it receives (tests only)."""

from __future__ import annotations

import socket
import threading

from proxy.proxyprotocol import ProxyHeader, parse

HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class CapturingBackend:
    """A one-connection TCP backend recording the PROXY header and answering HTTP 200."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(15)
        self.port = self.listener.getsockname()[1]
        self.raw = b""
        self.header: ProxyHeader | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(10)
                while self.header is None:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    self.raw += chunk
                    self.header = parse(self.raw)
                while b"\r\n\r\n" not in self.raw[self.header.length if self.header else 0 :]:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    self.raw += chunk
                conn.sendall(HTTP_OK)
        except BaseException as exc:  # reported by result()
            self.error = exc
        finally:
            self.listener.close()

    def result(self) -> ProxyHeader:
        self.thread.join(20)
        if self.error is not None:
            raise self.error
        assert self.header is not None, f"no PROXY header in {self.raw[:120]!r}"
        return self.header
