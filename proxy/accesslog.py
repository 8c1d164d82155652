"""The access log (one structured line per connection) and the daemon's logging setup.

Both write single lines in either logfmt (``key=value``) or JSON, so they survive
journald, ``docker logs`` and log shippers alike.  When the stream is connected to
the journal (``$JOURNAL_STREAM`` names its device and inode, see systemd.exec(5)) we
leave timestamps to journald and prefix ``<N>`` syslog levels, which journald turns
into the entry's priority.

Values are escaped so a hostile SNI or ALPN string cannot forge extra fields or
lines.  Records hold no key material: only names, sizes, counts and outcomes.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import math
import os
import re
import sys
import time
from dataclasses import dataclass, fields
from typing import IO, Any

FORMATS = ("logfmt", "json")
FORMAT_ALIASES = {"text": "logfmt", "logfmt": "logfmt", "json": "json"}

SYSLOG_INFO = 6
_SYSLOG_LEVELS = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}

_BARE_VALUE = re.compile(r"[A-Za-z0-9_.,:/@%+\-\[\]]+\Z")

log = logging.getLogger(__name__)


@dataclass
class AccessRecord:
    """What we know about one client connection when it ends.

    The connection task fills it in as the connection progresses and hands it to
    :meth:`AccessLog.write` once, in a ``finally`` block.  ``end`` says how the
    connection ended, e.g. "closed" (both sides finished cleanly), "client_reset",
    "backend_unreachable", "tls_error", "timeout", "shutdown"; ``error`` adds the
    detail (for a TLS failure, the alert name).
    """

    client: str | None = None
    listener: str | None = None
    sni: str | None = None
    alpn: str | None = None
    version: str | None = None
    cipher: str | None = None
    group: str | None = None
    resumed: bool | None = None
    hello_retry: bool | None = None
    early_data: bool | None = None
    client_cn: str | None = None
    route: str | None = None
    backend: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    duration: float | None = None
    end: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        """The fields in a stable order (the order of the dataclass)."""
        return {name: getattr(self, name) for name in _ACCESS_FIELDS}


# Computed once: dataclasses.fields() rebuilds its tuple on every call (once per line).
_ACCESS_FIELDS = tuple(f.name for f in fields(AccessRecord))


def format_address(address: object) -> str | None:
    """A socket address as text: "1.2.3.4:5", "[::1]:5", a UNIX path, or None."""
    if address is None:
        return None
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        if isinstance(host, str) and ":" in host:
            return f"[{host}]:{port}"
        return f"{host}:{port}"
    if isinstance(address, bytes):
        return os.fsdecode(address) if address else None
    return str(address) if address != "" else None


# --- escaping -----------------------------------------------------------------------------


def _escape_char(char: str) -> str:
    code = ord(char)
    if char == '"':
        return '\\"'
    if char == "\\":
        return "\\\\"
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    if char == "\t":
        return "\\t"
    if char.isprintable() and char != "\x7f":
        return char
    return (
        f"\\x{code:02x}"
        if code <= 0xFF
        else f"\\u{code:04x}"
        if code <= 0xFFFF
        else f"\\U{code:08x}"
    )


def logfmt_value(value: object) -> str:
    """One logfmt value: bare when that is unambiguous, else a quoted, escaped string."""
    if type(value) is str:  # most values: skip the number checks
        text = value
    elif isinstance(value, bool):
        return "true" if value else "false"
    elif isinstance(value, int):
        return str(value)
    elif isinstance(value, float):
        return f"{value:.6f}" if math.isfinite(value) else f'"{value}"'
    else:
        text = str(value)
    if _BARE_VALUE.match(text):
        return text
    return '"' + "".join(_escape_char(c) for c in text) + '"'


@functools.lru_cache(maxsize=1024)
def _logfmt_key(key: str) -> str:
    """A key safe for the line's grammar. Keys come from our code (so the cache stays small),
    but a stray one must not break the line; cleaning them char by char on every line was
    most of the cost of formatting one."""
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "_" for c in key)
    return cleaned or "_"


def format_logfmt(items: dict[str, object]) -> str:
    """``key=value`` pairs separated by spaces; None values are left out."""
    return " ".join(
        [
            f"{_logfmt_key(key)}={logfmt_value(value)}"
            for key, value in items.items()
            if value is not None
        ]
    )


def format_json(items: dict[str, object]) -> str:
    """One JSON object on one line; ASCII-only so no byte can confuse a log pipeline."""
    return json.dumps(items, ensure_ascii=True, separators=(",", ":"), default=str, allow_nan=False)


# --- journald detection -----------------------------------------------------------------


def stream_is_journal(stream: IO[Any] | None) -> bool:
    """True when ``stream`` is the very socket ``$JOURNAL_STREAM`` identifies (systemd.exec(5)).

    Comparing device and inode, rather than just testing the variable, keeps a
    redirected stdout (``tls13-proxy > file``) timestamped even under systemd.
    """
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected or stream is None:
        return False
    try:
        device_text, inode_text = expected.split(":", 1)
        status = os.fstat(stream.fileno())
        return status.st_dev == int(device_text) and status.st_ino == int(inode_text)
    except (ValueError, OSError, AttributeError):
        return False


def rfc3339_utc(timestamp: float) -> str:
    """``2026-01-02T03:04:05.678Z``: sortable, unambiguous, millisecond precision."""
    fraction, whole = math.modf(timestamp)
    seconds, micros = int(whole), round(fraction * 1e6)  # rounded as datetime rounds
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    elif micros < 0:
        seconds, micros = seconds - 1, micros + 1_000_000
    return f"{_utc_second(seconds)}{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=4)
def _utc_second(seconds: int) -> str:
    """The ``2026-01-02T03:04:05.`` part, computed once per second rather than per line."""
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.")


def _normalise_format(format: str) -> str:
    try:
        return FORMAT_ALIASES[format.lower()]
    except KeyError:
        raise ValueError(f"unknown log format {format!r}; use 'text' (logfmt) or 'json'") from None


# --- the access log -----------------------------------------------------------------------


class AccessLog:
    """Writes :class:`AccessRecord` lines to a stream (stdout by default).

    ``journal`` and ``syslog_prefix`` default to auto-detection via
    :func:`stream_is_journal`.  A failing stream (closed pipe, full disk) is reported
    once through :mod:`logging` and otherwise ignored: logging must never break
    proxying.
    """

    def __init__(
        self,
        format: str = "logfmt",
        stream: IO[str] | None = None,
        *,
        journal: bool | None = None,
        syslog_prefix: bool | None = None,
        clock: Any = time.time,
    ) -> None:
        self.format = _normalise_format(format)
        self._stream = stream
        target = stream if stream is not None else sys.stdout
        self.journal = stream_is_journal(target) if journal is None else journal
        self.syslog_prefix = self.journal if syslog_prefix is None else syslog_prefix
        self._clock = clock
        self._failed = False
        self.lines_written = 0

    def render(self, record: AccessRecord) -> str:
        """The line for ``record``, without the trailing newline."""
        items: dict[str, object] = {}
        if not self.journal:
            items["ts"] = rfc3339_utc(self._clock())
        items["event"] = "access"
        items.update(record.as_dict())
        if isinstance(record.duration, float):
            items["duration"] = round(record.duration, 6)
        body = format_json(items) if self.format == "json" else format_logfmt(items)
        return f"<{SYSLOG_INFO}>{body}" if self.syslog_prefix else body

    def write(self, record: AccessRecord) -> None:
        """Emit one line, flushed, so lines from several worker processes do not interleave."""
        line = self.render(record) + "\n"
        stream = self._stream if self._stream is not None else sys.stdout
        try:
            stream.write(line)
            stream.flush()
        except (OSError, ValueError) as exc:
            if not self._failed:
                self._failed = True
                log.error("access log stream failed (%s); dropping access log lines", exc)
            return
        self.lines_written += 1


# --- logging for the whole daemon ---------------------------------------------------------


_RESERVED_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class StructuredFormatter(logging.Formatter):
    """logfmt or JSON lines for :mod:`logging`, journald-aware.

    Extra context goes in ``logger.info("...", extra={"fields": {"listener": "https"}})``
    or as plain ``extra=`` keys; exceptions are folded into the one line.
    """

    def __init__(self, format: str = "logfmt", *, journal: bool = False) -> None:
        super().__init__()
        self.output_format = _normalise_format(format)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        items: dict[str, object] = {}
        if not self.journal:
            items["ts"] = rfc3339_utc(record.created)
        items["level"] = record.levelname.lower()
        items["logger"] = record.name
        items["msg"] = record.getMessage()
        items.update(_record_extras(record))
        if record.exc_info:
            items["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            items["stack"] = self.formatStack(record.stack_info)
        body = format_json(items) if self.output_format == "json" else format_logfmt(items)
        if self.journal:
            return f"<{_syslog_level(record.levelno)}>{body}"
        return body


def _record_extras(record: logging.LogRecord) -> dict[str, object]:
    extras: dict[str, object] = {}
    for key, value in record.__dict__.items():
        if key == "fields" and isinstance(value, dict):
            extras.update({str(k): v for k, v in value.items()})
        elif key not in _RESERVED_RECORD_ATTRIBUTES and not key.startswith("_"):
            extras[key] = value
    return extras


def _syslog_level(levelno: int) -> int:
    for threshold in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= threshold:
            return _SYSLOG_LEVELS[threshold]
    return _SYSLOG_LEVELS[logging.DEBUG]


def parse_level(level: str | int) -> int:
    """ "debug"/"info"/"warning"/"error"/"critical" (any case) or a number -> logging level."""
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r}")
    return value


def configure_logging(
    format: str = "logfmt", level: str | int = "info", stream: IO[str] | None = None
) -> logging.Handler:
    """Route all daemon logging through one structured handler on stderr (or ``stream``).

    Replaces handlers installed by an earlier call, so reloads can change the format
    or level.  Returns the handler (tests inspect it).
    """
    target = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(target)
    handler.setFormatter(StructuredFormatter(format, journal=stream_is_journal(target)))
    root = logging.getLogger()
    for previous in [h for h in root.handlers if getattr(h, "_tls13_proxy", False)]:
        root.removeHandler(previous)
    handler._tls13_proxy = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(parse_level(level))
    logging.captureWarnings(True)
    return handler
