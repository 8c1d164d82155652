"""Value converters for the configuration schema: TOML value → typed setting.

Each converter knows how to turn one raw TOML value into the typed value a setting holds,
how to describe its accepted syntax (for the generated reference) and how to print a typed
value back as TOML (for defaults in the reference). A converter signals a bad value by raising
``BadValue``; the loader turns that into a ``ConfigProblem`` naming the file and key path, so
converters never need to know where the value came from beyond the directory used to resolve
relative paths.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, TypeVar

T = TypeVar("T")

AddressKind = Literal["tcp", "unix", "demo"]


class BadValue(Exception):
    """A value that does not fit its setting; ``suffix`` extends the key path (``[1]``)."""

    def __init__(self, message: str, suffix: str = "", more: Sequence[BadValue] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.suffix = suffix
        #: Further independent problems in the same value (other elements of an array).
        self.more = list(more)

    def all(self) -> list[BadValue]:
        """This problem and the ones found alongside it."""
        return [self, *self.more]


def type_name(value: object) -> str:
    """The TOML name of a parsed value's type, for 'expected X, got Y' messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return "date/time"


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """' (did you mean "x"?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[word.lower()]] if word.lower() in lowered else []
    return f' (did you mean "{close[0]}"?)' if close else ""


def toml_string(text: str) -> str:
    """A TOML basic string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def toml_scalar(value: str | int | float | bool) -> str:
    """A scalar as it would be written in TOML (for messages that suggest a fix)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return toml_string(value) if isinstance(value, str) else repr(value)


class Converter(Generic[T]):
    """Base class: ``convert`` raw → typed, ``describe`` the syntax, ``show`` typed → TOML."""

    describe = "value"

    def convert(self, raw: object, base_dir: Path) -> T:
        raise BadValue(f"cannot convert {type_name(raw)}")

    def show(self, value: T) -> str:
        return str(value)


class Bool(Converter[bool]):
    describe = "boolean"

    def convert(self, raw: object, base_dir: Path) -> bool:
        if not isinstance(raw, bool):
            raise BadValue(f"expected a boolean (true/false), got {type_name(raw)} {raw!r}")
        return raw

    def show(self, value: bool) -> str:
        return "true" if value else "false"


class Int(Converter[int]):
    """An integer within [low, high] (inclusive)."""

    def __init__(self, low: int = 0, high: int | None = None) -> None:
        self.low = low
        self.high = high
        bound = f"{low}…{high}" if high is not None else f"≥ {low}"
        self.describe = f"integer ({bound})"

    def convert(self, raw: object, base_dir: Path) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise BadValue(f"expected an integer, got {type_name(raw)} {raw!r}")
        if raw < self.low or (self.high is not None and raw > self.high):
            raise BadValue(f"{raw} is out of range ({self.describe.split('(')[1].rstrip(')')})")
        return raw


class Str(Converter[str]):
    """A non-empty string, optionally matching a pattern."""

    def __init__(self, pattern: str | None = None, what: str = "string") -> None:
        self.pattern = re.compile(pattern) if pattern else None
        self.describe = what

    def convert(self, raw: object, base_dir: Path) -> str:
        if not isinstance(raw, str):
            raise BadValue(f"expected a string, got {type_name(raw)} {raw!r}")
        if not raw:
            raise BadValue("must not be empty")
        if self.pattern is not None and not self.pattern.fullmatch(raw):
            raise BadValue(f"{raw!r} is not a valid {self.describe}")
        return raw

    def show(self, value: str) -> str:
        return toml_string(value)


class Choice(Converter[str]):
    """One string out of a fixed set (compared case-sensitively, suggested case-insensitively)."""

    def __init__(self, *options: str) -> None:
        self.options = options
        self.describe = " | ".join(f'"{o}"' for o in options)

    def convert(self, raw: object, base_dir: Path) -> str:
        if not isinstance(raw, str):
            raise BadValue(f"expected one of {self.describe}, got {type_name(raw)} {raw!r}")
        if raw not in self.options:
            hint = did_you_mean(raw, self.options)
            raise BadValue(f"{raw!r} is not one of {self.describe}{hint}")
        return raw

    def show(self, value: str) -> str:
        return toml_string(value)


class IntChoice(Converter[int]):
    """One integer out of a fixed set (e.g. PROXY protocol version 0, 1 or 2)."""

    def __init__(self, *options: int) -> None:
        self.options = options
        self.describe = " | ".join(str(o) for o in options)

    def convert(self, raw: object, base_dir: Path) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int) or raw not in self.options:
            raise BadValue(f"expected one of {self.describe}, got {type_name(raw)} {raw!r}")
        return raw


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")


class Duration(Converter[float]):
    """A duration in seconds: ``"250ms"``, ``"10s"``, ``"5m"``, ``"1h30m"``, ``"1d"`` or a number."""

    def __init__(self, low: float = 0.0, high: float | None = None) -> None:
        self.low = low
        self.high = high
        self.describe = "duration"

    def convert(self, raw: object, base_dir: Path) -> float:
        seconds = _parse_duration(raw)
        if seconds < self.low:
            raise BadValue(f"duration {raw!r} is below the minimum {format_duration(self.low)}")
        if self.high is not None and seconds > self.high:
            raise BadValue(f"duration {raw!r} exceeds the maximum {format_duration(self.high)}")
        return seconds

    def show(self, value: float) -> str:
        return toml_string(format_duration(value))


def _parse_duration(raw: object) -> float:
    if isinstance(raw, bool):
        raise BadValue(f'expected a duration such as "10s", got boolean {raw!r}')
    if isinstance(raw, (int, float)):
        if not math.isfinite(raw) or raw < 0:
            raise BadValue(f"duration {raw!r} must be a finite number ≥ 0")
        return float(raw)
    if not isinstance(raw, str):
        raise BadValue(f'expected a duration such as "10s", got {type_name(raw)} {raw!r}')
    pos = 0
    total = 0.0
    for match in _DURATION_RE.finditer(raw):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(raw) or pos == 0:
        raise BadValue(
            f'bad duration {raw!r}: use a number with a unit ms, s, m, h or d (e.g. "10s", "5m")'
        )
    return total


def format_duration(seconds: float) -> str:
    """The shortest exact unit form of a duration ("250ms", "10s", "5m", "2h")."""
    if seconds == 0:
        return "0s"
    for unit in ("d", "h", "m", "s"):
        count = seconds / _DURATION_UNITS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    millis = seconds * 1000
    if millis == int(millis):
        return f"{int(millis)}ms"
    return f"{seconds}s"


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
}
_SIZE_RE = re.compile(r"\s*(\d+)\s*([A-Za-z]*)\s*")


class Size(Converter[int]):
    """A byte count: an integer or ``"16KiB"``, ``"1MiB"``, ``"1MB"`` (KiB/MiB/GiB are powers of 2)."""

    def __init__(self, low: int = 0, high: int | None = None) -> None:
        self.low = low
        self.high = high
        self.describe = "size"

    def convert(self, raw: object, base_dir: Path) -> int:
        size = _parse_size(raw)
        if size < self.low:
            raise BadValue(f"size {raw!r} is below the minimum {format_size(self.low)}")
        if self.high is not None and size > self.high:
            raise BadValue(f"size {raw!r} exceeds the maximum {format_size(self.high)}")
        return size

    def show(self, value: int) -> str:
        text = format_size(value)
        return text if text.isdigit() else toml_string(text)


def _parse_size(raw: object) -> int:
    if isinstance(raw, bool):
        raise BadValue(f'expected a size such as "16KiB", got boolean {raw!r}')
    if isinstance(raw, int):
        if raw < 0:
            raise BadValue(f"size {raw} must be ≥ 0")
        return raw
    if not isinstance(raw, str):
        raise BadValue(f'expected a size such as "16KiB", got {type_name(raw)} {raw!r}')
    match = _SIZE_RE.fullmatch(raw)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise BadValue(
            f'bad size {raw!r}: use bytes or a unit KiB, MiB, GiB, kB, MB, GB (e.g. "16KiB")'
        )
    return int(match.group(1)) * _SIZE_UNITS[unit]


def format_size(size: int) -> str:
    """The largest exact binary unit form of a size ("16KiB", "1MiB") or plain bytes."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


class PathValue(Converter[Path]):
    """A file system path; relative paths are resolved against the declaring file's directory."""

    describe = "path"

    def convert(self, raw: object, base_dir: Path) -> Path:
        if not isinstance(raw, str):
            raise BadValue(f"expected a path string, got {type_name(raw)} {raw!r}")
        if not raw:
            raise BadValue("must not be empty")
        if "\0" in raw:
            raise BadValue("path contains a NUL character")
        return (base_dir / os.path.expanduser(raw)).resolve()

    def show(self, value: Path) -> str:
        return toml_string(str(value))


class Optional(Converter[T | None]):
    """A setting that may be absent (TOML has no null: absent = ``None``)."""

    def __init__(self, inner: Converter[T]) -> None:
        self.inner = inner
        self.describe = inner.describe

    def convert(self, raw: object, base_dir: Path) -> T | None:
        return self.inner.convert(raw, base_dir)

    def show(self, value: T | None) -> str:
        return "(unset)" if value is None else self.inner.show(value)


class ListOf(Converter[tuple[T, ...]]):
    """An array whose every element goes through ``inner``; errors name the index."""

    def __init__(self, inner: Converter[T], min_items: int = 0, unique: bool = True) -> None:
        self.inner = inner
        self.min_items = min_items
        self.unique = unique
        self.describe = f"array of {inner.describe}"

    def convert(self, raw: object, base_dir: Path) -> tuple[T, ...]:
        if isinstance(raw, (str, int, float, bool)):
            hint = toml_scalar(raw)
            raise BadValue(f"expected an array, got {type_name(raw)} {hint} (write [{hint}])")
        if not isinstance(raw, list):
            raise BadValue(f"expected an array, got {type_name(raw)} {raw!r}")
        if len(raw) < self.min_items:
            raise BadValue(f"needs at least {self.min_items} item(s)")
        items: list[T] = []
        bad: list[BadValue] = []
        for index, element in enumerate(raw):
            try:
                value = self.inner.convert(element, base_dir)
            except BadValue as exc:
                bad.append(BadValue(exc.message, f"[{index}]{exc.suffix}"))
                continue
            if self.unique and value in items:
                bad.append(BadValue(f"duplicate entry {element!r}", f"[{index}]"))
            items.append(value)
        if bad:
            raise BadValue(bad[0].message, bad[0].suffix, bad[1:])
        return tuple(items)

    def show(self, value: tuple[T, ...]) -> str:
        return "[" + ", ".join(self.inner.show(v) for v in value) + "]"


class Workers(Converter[int]):
    """Worker process count: a positive integer, or ``"auto"`` = one per CPU."""

    describe = 'integer ≥ 1 or "auto" (one per CPU)'

    def convert(self, raw: object, base_dir: Path) -> int:
        if raw == "auto":
            return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
        if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 1024:
            raise BadValue(f'expected an integer 1…1024 or "auto", got {type_name(raw)} {raw!r}')
        return raw


class Names(Converter[str]):
    """A name from a table of known names (cipher suites, groups...), matched case-insensitively.

    The table is looked up at conversion time, so names added by the engine are accepted
    as soon as its module lands; the canonical spelling is what the setting stores.
    """

    def __init__(self, what: str, table: Callable[[], dict[str, int]]) -> None:
        self.what = what
        self.table = table
        self.describe = what

    def convert(self, raw: object, base_dir: Path) -> str:
        if not isinstance(raw, str):
            raise BadValue(f"expected a {self.what} name, got {type_name(raw)} {raw!r}")
        known = self.table()
        canonical = {name.lower(): name for name in known}
        if raw.lower() not in canonical:
            raise BadValue(
                f"unknown {self.what} {raw!r}{did_you_mean(raw, list(known))}; "
                f"known: {', '.join(known)}"
            )
        return canonical[raw.lower()]

    def show(self, value: str) -> str:
        return toml_string(value)


_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_SERVER_NAME_RE = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*\.?")


class ServerName(Converter[str]):
    """An SNI host name to match: ``example.com`` or a one-label wildcard ``*.example.com``."""

    describe = 'host name ("api.example.com" or "*.example.com")'

    def convert(self, raw: object, base_dir: Path) -> str:
        if not isinstance(raw, str):
            raise BadValue(f"expected a host name string, got {type_name(raw)} {raw!r}")
        if not _SERVER_NAME_RE.fullmatch(raw) or len(raw) > 253:
            raise BadValue(
                f"{raw!r} is not a host name or a wildcard of the form *.example.com "
                "(the * must be the whole left-most label)"
            )
        try:
            ipaddress.ip_address(raw)
        except ValueError:
            return raw.lower().rstrip(".")
        raise BadValue(f"{raw!r} is an IP address: SNI carries host names only (RFC 6066 §3)")

    def show(self, value: str) -> str:
        return toml_string(value)


class Alpn(Converter[str]):
    """An ALPN protocol id (RFC 7301: 1 to 255 bytes)."""

    describe = 'ALPN protocol id ("h2", "http/1.1")'

    def convert(self, raw: object, base_dir: Path) -> str:
        if not isinstance(raw, str):
            raise BadValue(f"expected an ALPN protocol string, got {type_name(raw)} {raw!r}")
        if not 1 <= len(raw.encode()) <= 255:
            raise BadValue(f"ALPN protocol {raw!r} must be 1 to 255 bytes (RFC 7301 §3.1)")
        return raw

    def show(self, value: str) -> str:
        return toml_string(value)


@dataclass(frozen=True)
class ListenAddress:
    """A TCP address to bind (an IP literal and port), or a systemd socket-activated one.

    ``systemd_name`` is set for ``"systemd:NAME"`` (a socket passed by systemd with
    FileDescriptorName=NAME; ``"systemd"`` alone = every passed socket); host/port are then unused.
    """

    host: str
    port: int
    systemd_name: str | None = None

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        if self.systemd_name is not None:
            return f"systemd:{self.systemd_name}" if self.systemd_name else "systemd"
        return f"[{self.host}]:{self.port}" if self.is_ipv6 else f"{self.host}:{self.port}"


def split_host_port(text: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` → (host, port); raises BadValue with the reason."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise BadValue(f"{text!r}: an IPv6 address must be written [addr]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise BadValue(f"{text!r} has no port: write host:port (IPv6: [addr]:port)")
        if ":" in host:
            raise BadValue(f"{text!r}: an IPv6 address must be written [addr]:port")
    if not host:
        raise BadValue(f"{text!r} has no host part")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise BadValue(f"{text!r}: port {port_text!r} is not a number 1…65535")
    return host, int(port_text)


class ListenAddr(Converter[ListenAddress]):
    """A listen address: ``"127.0.0.1:8443"``, ``"[::]:443"``, ``"systemd:https"``."""

    describe = 'listen address ("0.0.0.0:443", "[::]:443", "systemd:NAME")'

    def convert(self, raw: object, base_dir: Path) -> ListenAddress:
        if not isinstance(raw, str):
            raise BadValue(f"expected an address string, got {type_name(raw)} {raw!r}")
        if raw == "systemd" or raw.startswith("systemd:"):
            return ListenAddress("", 0, raw.partition(":")[2])
        host, port = split_host_port(raw)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise BadValue(
                f"{raw!r}: listen on an IP address, not a host name "
                "(0.0.0.0 / [::] for all, 127.0.0.1 / [::1] for loopback)"
            ) from None
        return ListenAddress(str(address), port)

    def show(self, value: ListenAddress) -> str:
        return toml_string(str(value))


@dataclass(frozen=True)
class BackendAddress:
    """Where a backend server listens: TCP host:port, a Unix socket path, or the built-in demo."""

    kind: AddressKind
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "demo":
            return "demo"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_HOSTNAME_RE = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")


class BackendAddr(Converter[BackendAddress]):
    """A backend: ``"10.0.0.5:8080"``, ``"app.internal:80"``, ``"[fd00::5]:80"``,
    ``"unix:/run/app.sock"`` (relative paths resolve against the file's directory) or ``"demo"``."""

    describe = 'backend ("host:port", "[v6]:port", "unix:/path" or "demo")'

    def convert(self, raw: object, base_dir: Path) -> BackendAddress:
        if not isinstance(raw, str):
            raise BadValue(f"expected a backend address string, got {type_name(raw)} {raw!r}")
        if raw == "demo":
            return BackendAddress("demo")
        if raw.startswith("unix:"):
            path = raw[5:]
            if not path:
                raise BadValue(f"{raw!r}: empty Unix socket path")
            resolved = (base_dir / path).resolve()
            if len(os.fsencode(str(resolved))) > 107:
                raise BadValue(f"{raw!r}: Unix socket path longer than 107 bytes")
            return BackendAddress("unix", path=str(resolved))
        host, port = split_host_port(raw)
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            if not _HOSTNAME_RE.fullmatch(host):
                raise BadValue(
                    f"{raw!r}: {host!r} is neither an IP address nor a host name"
                ) from None
        return BackendAddress("tcp", host=host, port=port)

    def show(self, value: BackendAddress) -> str:
        return toml_string(str(value))
