"""Reading and writing the TLS presentation language (RFC 8446 §3).

A :class:`Reader` walks a ``bytes``/``memoryview`` without copying until a value
is returned; every short read or leftover byte is a ``decode_error``.  A
:class:`Writer` appends to a ``bytearray`` and can back-patch length prefixes.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from contextlib import contextmanager

from .alerts import decode_error

_MAX = {1: 0xFF, 2: 0xFFFF, 3: 0xFFFFFF, 4: 0xFFFFFFFF}


class Reader:
    __slots__ = ("_data", "_pos", "_end")

    def __init__(
        self, data: bytes | bytearray | memoryview, start: int = 0, end: int | None = None
    ):
        self._data = data
        self._pos = start
        self._end = len(data) if end is None else end

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    @property
    def position(self) -> int:
        return self._pos

    def at_end(self) -> bool:
        return self._pos >= self._end

    def expect_end(self, what: str = "structure") -> None:
        if self._pos != self._end:
            raise decode_error(f"{self._end - self._pos} trailing bytes after {what}")

    def _take(self, n: int) -> int:
        pos = self._pos
        if n < 0 or pos + n > self._end:
            raise decode_error("truncated")
        self._pos = pos + n
        return pos

    # The readers below inline _take: they run per field of every message received.

    def uint8(self) -> int:
        pos = self._pos
        if pos >= self._end:
            raise decode_error("truncated")
        self._pos = pos + 1
        return self._data[pos]

    def uint16(self) -> int:
        pos = self._pos
        if pos + 2 > self._end:
            raise decode_error("truncated")
        self._pos = pos + 2
        d = self._data
        return (d[pos] << 8) | d[pos + 1]

    def uint24(self) -> int:
        pos = self._take(3)
        d = self._data
        return (d[pos] << 16) | (d[pos + 1] << 8) | d[pos + 2]

    def uint32(self) -> int:
        pos = self._take(4)
        return int.from_bytes(self._data[pos : pos + 4], "big")

    def bytes(self, n: int) -> bytes:
        pos = self._pos
        end = pos + n
        if n < 0 or end > self._end:
            raise decode_error("truncated")
        self._pos = end
        return bytes(self._data[pos:end])

    def rest(self) -> builtins.bytes:
        return self.bytes(self.remaining)

    def _length(self, width: int) -> int:
        if width == 1:
            return self.uint8()
        if width == 2:
            return self.uint16()
        if width == 3:
            return self.uint24()
        return self.uint32()

    def _span(self, width: int, minimum: int, maximum: int | None) -> tuple[int, int]:
        """Consume a ``width``-byte length prefix and its vector; the vector's bounds."""
        pos = self._pos
        data = self._data
        if width == 1 and pos < self._end:
            n = data[pos]
            pos += 1
        elif width == 2 and pos + 2 <= self._end:
            n = (data[pos] << 8) | data[pos + 1]
            pos += 2
        else:
            n = self._length(width)
            pos = self._pos
        if n < minimum or (maximum is not None and n > maximum):
            raise decode_error(f"vector length {n} outside [{minimum}, {maximum}]")
        end = pos + n
        if end > self._end:
            raise decode_error("truncated")
        self._pos = end
        return pos, end

    def vector(self, width: int, minimum: int = 0, maximum: int | None = None) -> builtins.bytes:
        """An opaque vector with a ``width``-byte length prefix, within bounds."""
        start, end = self._span(width, minimum, maximum)
        return bytes(self._data[start:end])

    def sub(self, width: int, minimum: int = 0, maximum: int | None = None) -> Reader:
        """A reader over the next length-prefixed vector (for lists of structures)."""
        start, end = self._span(width, minimum, maximum)
        return Reader(self._data, start, end)

    def pairs16(self) -> list[tuple[int, builtins.bytes]]:
        """Everything left as ``(uint16 type, opaque body<0..2^16-1>)`` pairs: the framing
        of an extensions block, read in one tight loop (the ClientHello hot path)."""
        data, pos, end = self._data, self._pos, self._end
        pairs: list[tuple[int, builtins.bytes]] = []
        while pos < end:
            body_start = pos + 4
            if body_start > end:
                raise decode_error("truncated")
            body_end = body_start + ((data[pos + 2] << 8) | data[pos + 3])
            if body_end > end:
                raise decode_error("truncated")
            pairs.append(((data[pos] << 8) | data[pos + 1], bytes(data[body_start:body_end])))
            pos = body_end
        self._pos = pos
        return pairs

    def uint16_list(self, width: int, minimum: int = 0) -> list[int]:
        """A vector of uint16 values (cipher suites, groups, schemes)."""
        n = self._length(width)
        if n % 2 or n < minimum:
            raise decode_error("bad uint16 list length")
        pos = self._take(n)
        d = self._data
        return [(d[i] << 8) | d[i + 1] for i in range(pos, pos + n, 2)]


class Writer:
    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def uint8(self, v: int) -> None:
        self.buf.append(v)

    def uint16(self, v: int) -> None:
        self.buf += v.to_bytes(2, "big")

    def uint24(self, v: int) -> None:
        self.buf += v.to_bytes(3, "big")

    def uint32(self, v: int) -> None:
        self.buf += v.to_bytes(4, "big")

    def bytes(self, data: bytes | bytearray | memoryview) -> None:
        self.buf += data

    def vector(self, width: int, data: builtins.bytes | bytearray | memoryview) -> None:
        if len(data) > _MAX[width]:
            raise ValueError("vector too long for its length prefix")
        self.buf += len(data).to_bytes(width, "big")
        self.buf += data

    def uint16_list(self, width: int, values: list[int] | tuple[int, ...]) -> None:
        self.buf += (2 * len(values)).to_bytes(width, "big")
        for v in values:
            self.buf += v.to_bytes(2, "big")

    @contextmanager
    def prefixed(self, width: int) -> Iterator[None]:
        """Write a length prefix of ``width`` bytes covering what the block writes."""
        start = len(self.buf)
        self.buf += bytes(width)
        yield
        n = len(self.buf) - start - width
        if n > _MAX[width]:
            raise ValueError("vector too long for its length prefix")
        self.buf[start : start + width] = n.to_bytes(width, "big")

    def getvalue(self) -> builtins.bytes:
        return bytes(self.buf)
