"""A threaded TCP backend for daemon tests: one listener, one thread per connection."""

from __future__ import annotations

import select
import socket
import threading

TIMEOUT = 30.0


class ThreadedBackend:
    """Accepts on 127.0.0.1 and runs ``handle(sock)`` for each connection in its own thread.

    Subclasses implement ``handle``; use the backend as a context manager.
    """

    def __init__(self, backlog: int = 128) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=backlog)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self) -> ThreadedBackend:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(timeout=TIMEOUT)

    def handle(self, sock: socket.socket) -> None:
        raise TypeError(f"{type(self).__name__} must define handle()")

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:  # __exit__ closes the listener under us: that ends the loop
                if not select.select([self._listener], [], [], 0.1)[0]:
                    continue
                sock, _ = self._listener.accept()
            except (OSError, ValueError):
                return
            threading.Thread(target=self.handle, args=(sock,), daemon=True).start()
