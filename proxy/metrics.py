"""Every Prometheus metric of the proxy, defined once, and the cheap API the hot paths call.

Design (details in docs/metrics.md):

* All metrics live on the :data:`M` namespace (``M.connections_accepted`` …), registered in
  a registry of our own.  Hot paths use the small helpers below rather than label names, so
  label spelling and cardinality rules live in one place.
* Per-connection work is a handful of counter updates at accept, handshake and close.  Bytes
  are summed in plain integers on a :class:`ConnectionMetrics` and flushed to the counters at
  close (or when a large amount is pending), never per record.
* Label values are bounded: listener/pool/server/certificate names come from the
  configuration, alert/cipher/group names from fixed tables (anything else becomes
  ``"other"``/``"unknown"``), and code-supplied reasons must look like identifiers.  Nothing
  derived from a client (addresses, raw SNI) is ever a label.
* Workers are separate processes: :func:`setup_multiprocess` switches prometheus-client to
  its multi-process mode (one mmap file per process in a directory the parent owns), and the
  endpoint started by :func:`start_metrics_server` merges all of them into one view.  A
  worker keeps its values in memory and writes them to its file in batches (:func:`flush`).
"""

from __future__ import annotations

import errno
import math
import os
import platform
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import cryptography
from cryptography import x509
from cryptography.x509 import ocsp
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    mmap_dict,
    multiprocess,
    values,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.metrics_http import MetricsServer
from tls13.alerts import AlertDescription

PREFIX = "tls13proxy_"
DEFAULT_ADDRESS = "127.0.0.1:9464"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OTHER = "other"

# Bytes pending on a connection before they are flushed early (long-lived tunnels should
# still show traffic between scrapes; one flush per MiB is negligible work).
BYTES_FLUSH_THRESHOLD = 1 << 20

HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONNECTION_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)
BACKEND_CONNECT_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

# Fixed tables of network-derived label values (IANA names as the engine reports them).
TLS_VERSIONS = frozenset({"TLSv1.3"})
CIPHER_SUITES = frozenset(
    {
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
        "TLS_AES_128_CCM_SHA256",
        "TLS_AES_128_CCM_8_SHA256",
    }
)
GROUPS = frozenset(
    {
        "secp256r1",
        "secp384r1",
        "secp521r1",
        "x25519",
        "x448",
        "ffdhe2048",
        "ffdhe3072",
        "ffdhe4096",
        "ffdhe6144",
        "ffdhe8192",
        "X25519MLKEM768",
        "SecP256r1MLKEM768",
        "SecP384r1MLKEM1024",
    }
)
NO_GROUP = "none"  # psk_ke resumption: no (EC)DHE at all
ALERT_NAMES = frozenset(a.name for a in AlertDescription)
UNKNOWN_ALERT = "unknown"
# Handshake failures that are not a TLS alert.
HANDSHAKE_FAILURE_EXTRA = frozenset({"timeout", "connection_error", "limit", "shutdown"})
EARLY_DATA_OUTCOMES = ("accepted", "rejected", "replay_refused")
BACKEND_FAILURE_REASONS = frozenset(
    {"refused", "timeout", "unreachable", "reset", "cancelled", "no_healthy_server", "error"}
)

_CONFIG_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
_CODE_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")


class _BoundedLabel:
    """Admits at most ``limit`` distinct values matching ``pattern``; the rest become "other".

    Config names and code-chosen reasons are bounded by construction; this is the safety net
    that keeps one wrong call site from turning into a cardinality explosion.
    """

    def __init__(self, pattern: re.Pattern[str], limit: int) -> None:
        self._pattern = pattern
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if not self._pattern.fullmatch(value):
            return OTHER
        with self._lock:
            if len(self._seen) >= self._limit:
                return OTHER
            self._seen.add(value)
        return value


_Child = TypeVar("_Child")

_config_name = _BoundedLabel(_CONFIG_NAME, 1024)
_reject_reason = _BoundedLabel(_CODE_NAME, 64)
_limit_name = _BoundedLabel(_CODE_NAME, 64)
_end_name = _BoundedLabel(_CODE_NAME, 64)


class _BoundedCache(dict[tuple[object, ...], _Child]):
    """A dict that stops remembering once full (lookups then fall through to labels())."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self._capacity = capacity

    def __setitem__(self, key: tuple[object, ...], child: _Child) -> None:
        if len(self) < self._capacity:
            super().__setitem__(key, child)


def _from_table(value: str | None, table: frozenset[str], fallback: str = OTHER) -> str:
    return value if value is not None and value in table else fallback


def alert_label(alert: int | str) -> str:
    """The label for an alert: its RFC name, or "unknown" for codes outside the enum."""
    if isinstance(alert, str):
        return alert if alert in ALERT_NAMES else UNKNOWN_ALERT
    try:
        return AlertDescription(alert).name
    except ValueError:
        return UNKNOWN_ALERT


def _bool_label(flag: bool) -> str:
    return "true" if flag else "false"


def _package_version() -> str:
    try:
        return metadata.version("tls13-proxy")
    except metadata.PackageNotFoundError:
        return "unknown"


class _Metrics:
    """The namespace of metric objects; rebuilt in place when multi-process mode starts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._build()

    def _build(self) -> None:
        """(Re)create every metric in a fresh registry with the current value backend."""
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._listeners: dict[str, _ListenerSeries] = {}
        # Keyed by raw engine strings, so its size is bounded only if they are; cap it anyway.
        self._handshake_children: _BoundedCache[Counter] = _BoundedCache(4096)
        self._closed_children: _BoundedCache[Counter] = _BoundedCache(4096)
        self._alert_children: _BoundedCache[Counter] = _BoundedCache(4096)
        self._backend_children: _BoundedCache[_BackendSeries] = _BoundedCache(4096)
        self._build_connection_metrics(r)
        self._build_tls_metrics(r)
        self._build_backend_metrics(r)
        self._build_operational_metrics(r)

    def _build_connection_metrics(self, r: CollectorRegistry) -> None:
        listener = ["listener"]
        self.connections_accepted = Counter(
            f"{PREFIX}connections_accepted",
            "Client TCP connections accepted.",
            listener,
            registry=r,
        )
        self.connections_active = Gauge(
            f"{PREFIX}connections_active",
            "Client connections currently open (all workers).",
            listener,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connections_rejected = Counter(
            f"{PREFIX}connections_rejected",
            "Client connections refused or dropped before proxying, by reason.",
            ["listener", "reason"],
            registry=r,
        )
        self.connections_closed = Counter(
            f"{PREFIX}connections_closed",
            "Client connections closed, by how they ended (the access log's end field).",
            ["listener", "end"],
            registry=r,
        )
        self.connection_duration = Histogram(
            f"{PREFIX}connection_duration_seconds",
            "Lifetime of client connections, accept to close.",
            listener,
            registry=r,
            buckets=CONNECTION_BUCKETS,
        )
        self.received_bytes = Counter(
            f"{PREFIX}received_bytes",
            "Bytes received from clients on the TLS connection (wire bytes).",
            listener,
            registry=r,
        )
        self.sent_bytes = Counter(
            f"{PREFIX}sent_bytes",
            "Bytes sent to clients on the TLS connection (wire bytes).",
            listener,
            registry=r,
        )

    def _build_tls_metrics(self, r: CollectorRegistry) -> None:
        self.handshakes = Counter(
            f"{PREFIX}handshakes",
            "TLS handshakes completed.",
            ["listener", "version", "cipher_suite", "group", "resumed", "hello_retry"],
            registry=r,
        )
        self.handshake_failures = Counter(
            f"{PREFIX}handshake_failures",
            "TLS handshakes that failed, by alert name (or timeout, ...) and who raised it.",
            ["listener", "reason", "origin"],
            registry=r,
        )
        self.handshake_duration = Histogram(
            f"{PREFIX}handshake_duration_seconds",
            "Time from accepting a connection to a completed TLS handshake.",
            ["listener"],
            registry=r,
            buckets=HANDSHAKE_BUCKETS,
        )
        self.early_data = Counter(
            f"{PREFIX}early_data",
            "0-RTT attempts by outcome: accepted, rejected, replay_refused.",
            ["listener", "outcome"],
            registry=r,
        )
        self.tickets_issued = Counter(
            f"{PREFIX}tickets_issued",
            "NewSessionTicket messages sent.",
            ["listener"],
            registry=r,
        )
        self.alerts_sent = Counter(
            f"{PREFIX}alerts_sent",
            "TLS alerts sent to clients, by alert name.",
            ["listener", "alert"],
            registry=r,
        )
        self.alerts_received = Counter(
            f"{PREFIX}alerts_received",
            "TLS alerts received from clients, by alert name.",
            ["listener", "alert"],
            registry=r,
        )

    def _build_backend_metrics(self, r: CollectorRegistry) -> None:
        server = ["pool", "server"]
        self.backend_connect_attempts = Counter(
            f"{PREFIX}backend_connect_attempts",
            "Connection attempts to backend servers.",
            server,
            registry=r,
        )
        self.backend_connect_failures = Counter(
            f"{PREFIX}backend_connect_failures",
            "Failed connection attempts to backend servers, by reason.",
            ["pool", "server", "reason"],
            registry=r,
        )
        self.backend_connect_duration = Histogram(
            f"{PREFIX}backend_connect_duration_seconds",
            "Time to establish a TCP connection to a backend server (successful attempts).",
            server,
            registry=r,
            buckets=BACKEND_CONNECT_BUCKETS,
        )
        self.backend_up = Gauge(
            f"{PREFIX}backend_up",
            "Health state of a backend server: 1 healthy, 0 down (latest check).",
            server,
            registry=r,
            multiprocess_mode="livemostrecent",
        )

    def _build_operational_metrics(self, r: CollectorRegistry) -> None:
        self.config_reloads = Counter(
            f"{PREFIX}config_reloads", "Configuration reloads attempted.", registry=r
        )
        self.config_reload_failures = Counter(
            f"{PREFIX}config_reload_failures",
            "Configuration reloads that failed (the old configuration stays active).",
            registry=r,
        )
        self.config_last_reload_successful = Gauge(
            f"{PREFIX}config_last_reload_successful",
            "1 if the most recent configuration reload succeeded, else 0.",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.config_last_reload_success_timestamp = Gauge(
            f"{PREFIX}config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load or reload.",
            registry=r,
            multiprocess_mode="max",
        )
        self.certificate_not_after = Gauge(
            f"{PREFIX}certificate_not_after_timestamp_seconds",
            "Expiry (notAfter, Unix time) of each configured certificate's leaf.",
            ["certificate"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.ocsp_staple_produced = Gauge(
            f"{PREFIX}ocsp_staple_produced_timestamp_seconds",
            "producedAt (Unix time) of the OCSP response stapled for a certificate.",
            ["certificate"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        # Set by one process only (the single process, or the workers' parent), which also
        # logs the transition: "mostrecent" is its latest verdict.
        self.ocsp_staple_stale = Gauge(
            f"{PREFIX}ocsp_staple_stale",
            "1 when a certificate's configured OCSP response is past nextUpdate or unusable "
            "(so it is not stapled), else 0.",
            ["certificate"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.worker_processes = Gauge(
            f"{PREFIX}worker_processes",
            "Worker processes currently running.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.worker_restarts = Counter(
            f"{PREFIX}worker_restarts",
            "Worker processes that exited unexpectedly and were replaced.",
            registry=r,
        )
        self.limit_hits = Counter(
            f"{PREFIX}limit_hits",
            "Times a configured or protocol limit was hit, by limit name.",
            ["limit"],
            registry=r,
        )
        self.build_info = Gauge(
            f"{PREFIX}build_info",
            "Constant 1, labelled with the proxy, Python and cryptography versions.",
            ["version", "python", "cryptography"],
            registry=r,
            multiprocess_mode="max",
        )
        self.build_info.labels(
            _package_version(), platform.python_version(), cryptography.__version__
        ).set(1)

    def listener(self, name: str) -> _ListenerSeries:
        """The cached per-listener children (one dict lookup on the accept path)."""
        series = self._listeners.get(name)
        if series is None:
            series = self._listeners[name] = _ListenerSeries.create(self, _config_name(name))
        return series

    def handshake_series(
        self,
        listener: str,
        version: str,
        cipher_suite: str,
        group: str | None,
        resumed: bool,
        hello_retry: bool,
    ) -> Counter:
        """The handshakes child for these facts, cached: labels() is the costliest call here."""
        key = (listener, version, cipher_suite, group, resumed, hello_retry)
        child = self._handshake_children.get(key)
        if child is None:
            child = self._handshake_children[key] = self.handshakes.labels(
                listener,
                _from_table(version, TLS_VERSIONS),
                _from_table(cipher_suite, CIPHER_SUITES),
                NO_GROUP if group is None else _from_table(group, GROUPS),
                _bool_label(resumed),
                _bool_label(hello_retry),
            )
        return child

    def closed_series(self, listener: str, end: str) -> Counter:
        """The connections-closed child for (listener, end), cached like the handshakes'."""
        key = (listener, end)
        child = self._closed_children.get(key)
        if child is None:
            child = self._closed_children[key] = self.connections_closed.labels(
                listener, _end_name(end)
            )
        return child

    def alert_series(self, listener: str, alert: int | str, by_peer: bool) -> Counter:
        """The alerts sent/received child for (listener, alert), cached like the others."""
        key = (listener, alert, by_peer)
        child = self._alert_children.get(key)
        if child is None:
            counter = self.alerts_received if by_peer else self.alerts_sent
            child = self._alert_children[key] = counter.labels(listener, alert_label(alert))
        return child

    def backend_series(self, pool: str, server: str) -> _BackendSeries:
        """The connect attempt and duration children of one backend server, cached."""
        key = (pool, server)
        series = self._backend_children.get(key)
        if series is None:
            labels = (_config_name(pool), _config_name(server))
            series = self._backend_children[key] = _BackendSeries(
                labels,
                self.backend_connect_attempts.labels(*labels),
                self.backend_connect_duration.labels(*labels),
            )
        return series

    def metrics(self) -> Iterator[Counter | Gauge | Histogram]:
        """Every metric object of the namespace, in definition order."""
        for value in vars(self).values():
            if isinstance(value, (Counter, Gauge, Histogram)):
                yield value


@dataclass(frozen=True)
class _ListenerSeries:
    """Pre-resolved children for one listener, so a connection costs no label lookups."""

    name: str
    accepted: Counter
    active: Gauge
    duration: Histogram
    received: Counter
    sent: Counter
    handshake_duration: Histogram
    tickets: Counter

    @classmethod
    def create(cls, m: _Metrics, name: str) -> _ListenerSeries:
        series = cls(
            name=name,
            accepted=m.connections_accepted.labels(name),
            active=m.connections_active.labels(name),
            duration=m.connection_duration.labels(name),
            received=m.received_bytes.labels(name),
            sent=m.sent_bytes.labels(name),
            handshake_duration=m.handshake_duration.labels(name),
            tickets=m.tickets_issued.labels(name),
        )
        for outcome in EARLY_DATA_OUTCOMES:
            m.early_data.labels(name, outcome)
        return series


@dataclass(frozen=True)
class _BackendSeries:
    """Pre-resolved children for one backend server (one dict lookup per connect)."""

    labels: tuple[str, str]
    attempts: Counter
    duration: Histogram


# --------------------------------------------------------------------------- worker values

# How often a worker writes the metric updates it made to its file, so how far behind its own
# counters a scrape can be: well under any scrape interval.  A worker also writes at exit.
WORKER_FLUSH_INTERVAL = 0.5


class _WorkerValue:
    """One value of a worker process: a float in memory, written to the process's mmap file
    by :func:`flush` (on a short timer) rather than at every update.

    prometheus-client's multi-process value writes its file under a global lock on every
    ``inc``; with the dozen or so updates a connection makes, that doubled the cost of a
    worker's connection accounting over the single process's.  Here an update is an add,
    plus an append to the pending list the first time since the last flush.  A worker
    updates its metrics from its event loop's thread only (it serves no scrapes), so no
    lock is needed.  The file format and keys are prometheus-client's, so its
    ``MultiProcessCollector`` in the parent and :func:`mark_worker_dead` read them as before.
    """

    __slots__ = ("_value", "_timestamp", "_file", "_key", "_pending")
    _multiprocess = True

    def __init__(
        self,
        typ: str,
        metric_name: str,
        name: str,
        labelnames: Sequence[str],
        labelvalues: Sequence[str],
        help_text: str,
        multiprocess_mode: str = "",
        **_options: object,
    ) -> None:
        # File per kind as in prometheus-client: counter_<pid>.db, gauge_livesum_<pid>.db, …
        self._file = f"gauge_{multiprocess_mode}" if typ == "gauge" else typ
        self._key: str = mmap_dict.mmap_key(
            metric_name, name, list(labelnames), list(labelvalues), help_text
        )
        self._value = 0.0
        self._timestamp = 0.0
        self._pending = False
        _worker_values.created(self)

    def inc(self, amount: float) -> None:
        self._value += amount
        if not self._pending:
            self._pending = True
            _worker_values.pending.append(self)

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value
        self._timestamp = timestamp or 0.0  # mostrecent gauges: when it was observed
        if not self._pending:
            self._pending = True
            _worker_values.pending.append(self)

    def get(self) -> float:
        return self._value

    def set_exemplar(self, exemplar: object) -> None:
        return  # multi-process mode has no exemplars

    def get_exemplar(self) -> None:
        return None


class _WorkerValueFiles:
    """Every :class:`_WorkerValue` of this process, which of them changed since the last
    flush, and the process's open files (opened at the first flush)."""

    def __init__(self) -> None:
        self.every: list[_WorkerValue] = []
        self.pending: list[_WorkerValue] = []
        self._files: dict[str, Any] = {}  # file kind → MmapedDict

    def created(self, value: _WorkerValue) -> None:
        """A new series: pending at zero, so it is exposed before its first update.

        Its file is opened now, as prometheus-client does: series are created while the
        worker starts, before it drops privileges and can no longer open files in the
        parent's directory (which only the daemon's starting user may enter).
        """
        self.every.append(value)
        value._pending = True
        self.pending.append(value)
        self._file(value._file)

    def _file(self, kind: str) -> Any:
        file = self._files.get(kind)
        if file is None:
            directory = os.environ[MULTIPROC_ENV]
            path = os.path.join(directory, f"{kind}_{os.getpid()}.db")
            file = self._files[kind] = _MmapedDict(path)
        return file

    def flush(self) -> None:
        if not self.pending or not os.environ.get(MULTIPROC_ENV):
            return
        pending, self.pending = self.pending, []
        for value in pending:
            value._pending = False
            self._file(value._file).write_value(value._key, value._value, value._timestamp)

    def forget_files(self) -> None:
        """In a forked child: the files are the parent's; start from zero in our own."""
        for file in self._files.values():
            file.close()
        self._files.clear()
        self.pending = []
        for value in self.every:
            value._value, value._timestamp = 0.0, 0.0
            value._pending = True
            self.pending.append(value)


_worker_values = _WorkerValueFiles()
os.register_at_fork(after_in_child=_worker_values.forget_files)

# prometheus-client's per-process file format (untyped upstream).
_MmapedDict: Any = mmap_dict.MmapedDict


def flush() -> None:
    """Worker: write the metric updates made since the last flush to this process's files.

    The worker's event loop calls this every :data:`WORKER_FLUSH_INTERVAL` and once more when
    it exits; elsewhere (the single process, the workers' parent) values are stored as they
    change and there is nothing to do.
    """
    _worker_values.flush()


if os.environ.get(MULTIPROC_ENV):
    # Imported with the directory exported: a worker started by a multi-process parent
    # (which itself switches to prometheus-client's file-per-update values when it calls
    # setup_multiprocess, after importing us).
    values.ValueClass = _WorkerValue

# Counters exported with an explicit `_total` suffix and without `_created` samples, the same
# in single- and multi-process mode (multi-process mode cannot export `_created`).
disable_created_metrics()  # type: ignore[no-untyped-call]
M = _Metrics()


# --------------------------------------------------------------------------- connections


class HandshakeInfo(Protocol):
    """What the metrics need from ``tls13.events.HandshakeComplete``."""

    @property
    def version(self) -> str: ...
    @property
    def cipher_suite(self) -> str: ...
    @property
    def group(self) -> str | None: ...
    @property
    def hello_retry(self) -> bool: ...
    @property
    def resumed(self) -> bool: ...
    @property
    def early_data_accepted(self) -> bool: ...


class TLSErrorInfo(Protocol):
    """What the metrics need from ``tls13.TLSError``."""

    @property
    def alert(self) -> int: ...
    @property
    def sent_by_peer(self) -> bool: ...


_PENDING, _COMPLETED, _FAILED = "pending", "completed", "failed"


class ConnectionMetrics:
    """Accounting for one client connection; create at accept, :meth:`close` when done.

    Counts the accept and the active gauge immediately, the handshake outcome once, and
    flushes byte totals and the duration at close.  ``close`` is idempotent and the object
    is a context manager, so ``with ConnectionMetrics(listener) as cm:`` is leak-proof.
    """

    __slots__ = ("_series", "_started", "_handshake", "_rx", "_tx", "_closed", "_end")

    def __init__(self, listener: str) -> None:
        self._series = M.listener(listener)
        self._started = time.monotonic()
        self._handshake = _PENDING  # then _COMPLETED or _FAILED, once
        self._rx = 0
        self._tx = 0
        self._closed = False
        self._end = "ok"
        self._series.accepted.inc()
        self._series.active.inc()

    @property
    def listener(self) -> str:
        return self._series.name

    def add_received(self, count: int) -> None:
        """Bytes read from the client socket (cheap: an integer add)."""
        self._rx += count
        if self._rx >= BYTES_FLUSH_THRESHOLD:
            self._series.received.inc(self._rx)
            self._rx = 0

    def add_sent(self, count: int) -> None:
        """Bytes written to the client socket (cheap: an integer add)."""
        self._tx += count
        if self._tx >= BYTES_FLUSH_THRESHOLD:
            self._series.sent.inc(self._tx)
            self._tx = 0

    def handshake_completed(self, info: HandshakeInfo, *, offered_early_data: bool = False) -> None:
        """Count a completed handshake (pass ``ClientHelloReceived.offered_early_data``)."""
        if self._handshake is not _PENDING:
            return
        self._handshake = _COMPLETED
        self._series.handshake_duration.observe(time.monotonic() - self._started)
        M.handshake_series(
            self._series.name, info.version, info.cipher_suite, info.group, info.resumed,
            info.hello_retry,
        ).inc()  # fmt: skip
        if info.early_data_accepted:
            M.early_data.labels(self._series.name, "accepted").inc()
        elif offered_early_data:
            M.early_data.labels(self._series.name, "rejected").inc()

    def handshake_failed(self, reason: str, *, by_peer: bool = False) -> None:
        """Count a failed handshake: ``reason`` is an alert name or timeout/limit/shutdown/….

        An alert name means that alert went to the peer (``by_peer=False``: the engine queued
        it) or came from it, so it is counted in the alert metrics as well.
        """
        if self._handshake is not _PENDING:
            return
        self._handshake = _FAILED
        if reason in ALERT_NAMES:
            self._count_alert(reason, by_peer)
        elif reason not in HANDSHAKE_FAILURE_EXTRA:
            reason = OTHER
        M.handshake_failures.labels(self._series.name, reason, "peer" if by_peer else "local").inc()

    def tls_error(self, error: TLSErrorInfo) -> None:
        """Account a ``TLSError``: the alert sent or received, and a handshake failure if early."""
        name = alert_label(error.alert)
        if self._handshake is _COMPLETED:
            self._count_alert(name, error.sent_by_peer)
        else:  # pending: a failed handshake; failed already: the same failure reported again
            self.handshake_failed(name, by_peer=error.sent_by_peer)

    def _count_alert(self, name: str, by_peer: bool) -> None:
        if by_peer:
            self.alert_received(name)
        else:
            self.alert_sent(name)

    def alert_sent(self, alert: int | str) -> None:
        M.alert_series(self._series.name, alert, False).inc()

    def alert_received(self, alert: int | str) -> None:
        M.alert_series(self._series.name, alert, True).inc()

    def ticket_issued(self, count: int = 1) -> None:
        self._series.tickets.inc(count)

    def early_data_replay_refused(self) -> None:
        """0-RTT was refused because the ClientHello was a replay (strike register hit)."""
        M.early_data.labels(self._series.name, "replay_refused").inc()

    def set_end(self, end: str) -> None:
        """How the connection ended (an identifier such as ``ok``, ``backend_error``,
        ``client_truncated``); counted in ``connections_closed`` at :meth:`close`."""
        self._end = end

    def close(self) -> None:
        """Flush bytes, count the end, observe the duration and leave the active gauge
        (idempotent)."""
        if self._closed:
            return
        self._closed = True
        M.closed_series(self._series.name, self._end).inc()
        if self._rx:
            self._series.received.inc(self._rx)
        if self._tx:
            self._series.sent.inc(self._tx)
        self._rx = self._tx = 0
        self._series.duration.observe(time.monotonic() - self._started)
        self._series.active.dec()

    def __enter__(self) -> ConnectionMetrics:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.set_end("error")
        self.close()


def declare_listener(name: str) -> None:
    """Create a listener's series at zero so rates exist before the first connection."""
    M.listener(name)


def connection_rejected(listener: str, reason: str) -> None:
    """A connection refused before proxying (max_connections, proxy_protocol, no_route, …)."""
    M.connections_rejected.labels(M.listener(listener).name, _reject_reason(reason)).inc()


def limit_hit(limit: str) -> None:
    """A named limit was hit (e.g. max_connections, handshake_timeout, max_handshake_message)."""
    M.limit_hits.labels(_limit_name(limit)).inc()


def ticket_issued(listener: str, count: int = 1) -> None:
    """NewSessionTicket(s) sent outside a :class:`ConnectionMetrics` context."""
    M.listener(listener).tickets.inc(count)


# --------------------------------------------------------------------------- backends


def declare_backend(pool: str, server: str) -> None:
    """Create a backend server's series at zero (call when a pool is configured)."""
    M.backend_series(pool, server)


def observe_backend_connect(
    pool: str, server: str, seconds: float, failure: str | None = None
) -> None:
    """One backend connect attempt: its duration, and ``failure`` reason if it failed."""
    series = M.backend_series(pool, server)
    series.attempts.inc()
    if failure is None:
        series.duration.observe(seconds)
    else:
        reason = failure if failure in BACKEND_FAILURE_REASONS else "error"
        M.backend_connect_failures.labels(*series.labels, reason).inc()


def backend_failure_reason(error: BaseException) -> str:
    """Classify why a connect failed, into the fixed ``BACKEND_FAILURE_REASONS``."""
    error = _connect_error_cause(error)
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, ConnectionResetError):
        return "reset"
    if isinstance(error, TimeoutError) or type(error).__name__ == "TooSlowError":
        return "timeout"
    if not isinstance(error, Exception):
        return "cancelled"  # trio.Cancelled & co: a deadline or shutdown cut the attempt
    if isinstance(error, OSError) and error.errno in _UNREACHABLE_ERRNOS:
        return "unreachable"
    return "error"


def _connect_error_cause(error: BaseException) -> BaseException:
    """The socket error inside a summary: trio's ``open_tcp_stream`` raises a bare
    ``OSError("all attempts to connect … failed")`` from an exception group of the
    per-address errors; classify by those (the last attempt's, when they differ)."""
    while isinstance(error, OSError) and error.errno is None and error.__cause__ is not None:
        cause = error.__cause__
        grouped = getattr(cause, "exceptions", None)  # an exception group (3.11+, exceptiongroup)
        if isinstance(grouped, tuple) and grouped and isinstance(grouped[-1], BaseException):
            cause = grouped[-1]
        error = cause
    return error


_UNREACHABLE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EHOSTUNREACH", "ENETUNREACH", "EHOSTDOWN", "ENETDOWN", "EADDRNOTAVAIL")
    if hasattr(errno, name)
)


class backend_connect:  # noqa: N801 - used like a function: `with backend_connect(p, s):`
    """Context manager timing one backend connect; an exception counts as a failure."""

    __slots__ = ("_pool", "_server", "_started")

    def __init__(self, pool: str, server: str) -> None:
        self._pool = pool
        self._server = server
        self._started = 0.0

    def __enter__(self) -> backend_connect:
        self._started = time.monotonic()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        failure = None if exc is None else backend_failure_reason(exc)
        observe_backend_connect(self._pool, self._server, time.monotonic() - self._started, failure)


def set_backend_up(pool: str, server: str, up: bool) -> None:
    """Record the latest health check result for a backend server."""
    M.backend_up.labels(_config_name(pool), _config_name(server)).set(1 if up else 0)


# --------------------------------------------------------------------------- operations


def config_reloaded(success: bool) -> None:
    """A configuration reload attempt finished (SIGHUP, systemd reload).

    With workers, the parent validates and counts each reload; a worker then reloads in place
    and may call this too.  A worker's call therefore only records a *failure* (the reload did
    not take effect there: the failure counter moves and the "last reload successful" gauge
    drops to 0, as the most recent observation); its success would double-count the parent's.
    """
    if _is_worker_process():
        if not success:
            M.config_reload_failures.inc()
            M.config_last_reload_successful.set(0)
        return
    M.config_reloads.inc()
    if success:
        M.config_last_reload_success_timestamp.set(time.time())
    else:
        M.config_reload_failures.inc()
    M.config_last_reload_successful.set(1 if success else 0)


def config_loaded() -> None:
    """The initial configuration was loaded (counts as a success, not as a reload)."""
    M.config_last_reload_success_timestamp.set(time.time())
    M.config_last_reload_successful.set(1)


@dataclass(frozen=True)
class CertificateTimes:
    """The dates the metrics expose for one configured certificate."""

    not_after: datetime
    ocsp_produced_at: datetime | None = None


def _unix(moment: datetime) -> float:
    if moment.tzinfo is None:  # cryptography's naive datetimes are UTC
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


_certificates_seen: set[str] = set()


def set_certificates(certificates: Mapping[str, CertificateTimes]) -> None:
    """Publish the configured certificates (name from the config → dates), replacing the set.

    Names no longer configured are removed; in multi-process mode a series cannot be deleted
    from a live process's file, so it is set to NaN, which no alert expression matches.
    """
    current = {_config_name(name): times for name, times in certificates.items()}
    for name, times in current.items():
        M.certificate_not_after.labels(name).set(_unix(times.not_after))
        if times.ocsp_produced_at is not None:
            M.ocsp_staple_produced.labels(name).set(_unix(times.ocsp_produced_at))
    for gone in _certificates_seen - current.keys():
        _retire_series(M.certificate_not_after, gone)
        _retire_series(M.ocsp_staple_produced, gone)
    _certificates_seen.clear()
    _certificates_seen.update(current)


_staple_states_seen: set[str] = set()


def set_ocsp_staple_states(stale: Mapping[str, bool]) -> None:
    """Publish, per certificate with an ``ocsp`` file, whether its response is stale
    (replacing the set: certificates no longer configured are retired)."""
    current = {_config_name(name): is_stale for name, is_stale in stale.items()}
    for name, is_stale in current.items():
        M.ocsp_staple_stale.labels(name).set(1 if is_stale else 0)
    for gone in _staple_states_seen - current.keys():
        _retire_series(M.ocsp_staple_stale, gone)
    _staple_states_seen.clear()
    _staple_states_seen.update(current)


def certificate_times(
    certificate: x509.Certificate, ocsp_produced_at: datetime | None = None
) -> CertificateTimes:
    """:class:`CertificateTimes` of a leaf certificate (and its staple's producedAt, if any)."""
    return CertificateTimes(certificate.not_valid_after_utc, ocsp_produced_at)


class ChainInfo(Protocol):
    """What the metrics need from ``tls13.CertificateChain``: the leaf and the OCSP staple."""

    @property
    def certificates(self) -> tuple[x509.Certificate, ...]: ...
    @property
    def ocsp_response(self) -> bytes | None: ...


def chain_times(chain: ChainInfo) -> CertificateTimes:
    """:class:`CertificateTimes` of a loaded chain: leaf notAfter and the staple's producedAt."""
    produced_at = None
    if chain.ocsp_response:
        try:
            response = ocsp.load_der_ocsp_response(chain.ocsp_response)
            if response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL:
                produced_at = response.produced_at_utc
        except ValueError:
            produced_at = None  # an unparsable staple has no age; the engine rejects it anyway
    return CertificateTimes(chain.certificates[0].not_valid_after_utc, produced_at)


def _retire_series(gauge: Gauge, name: str) -> None:
    if _multiprocess_dir() is None:
        try:
            gauge.remove(name)
        except KeyError:
            pass
    else:
        gauge.labels(name).set(math.nan)


def worker_started() -> None:
    """Call once in each worker process (or the single process) when it starts serving."""
    M.worker_processes.set(1)


def worker_restarted() -> None:
    """Parent: a worker died unexpectedly and is being replaced."""
    M.worker_restarts.inc()


# --------------------------------------------------------------------------- multi-process


def _multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


# The pid that called setup_multiprocess (the parent); None in a single-process daemon.
_multiprocess_owner: int | None = None


def _is_worker_process() -> bool:
    """True in a worker of a multi-process daemon (forked or spawned by the parent)."""
    return _multiprocess_dir() is not None and _multiprocess_owner != os.getpid()


def setup_multiprocess(directory: str | os.PathLike[str]) -> Path:
    """Parent, before starting workers: aggregate all processes' metrics through ``directory``.

    Creates the directory (0700) and empties it of stale files from an earlier run, exports
    ``PROMETHEUS_MULTIPROC_DIR`` so workers (forked or spawned) inherit it, and rebuilds
    :data:`M` on the file-backed value class.  Call before any metric is used.
    """
    path = Path(directory)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    global _multiprocess_owner
    _multiprocess_owner = os.getpid()
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    _certificates_seen.clear()
    _staple_states_seen.clear()
    M._build()
    return path


def mark_worker_dead(pid: int) -> None:
    """Parent, after reaping a worker: drop its live gauges and fold the rest into archives.

    Live gauges (active connections, health…) of the dead worker disappear.  Its counters,
    histograms and other gauges are merged into ``*_archive.db`` files so totals never go
    backwards while the directory does not grow with every restart of a crash-looping worker.
    """
    path = _multiprocess_dir()
    if path is None:
        return
    with _files_lock:
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        for dead in sorted(Path(path).glob(f"*_{pid}.db")):
            _fold_into_archive(dead, dead.name[: -len(f"_{pid}.db")])


# Serialises archive folding with scrapes (both run in the parent): a scrape must never see a
# dead worker's values twice (archive updated, file not yet removed) or not at all.
_files_lock = threading.Lock()

_ARCHIVE_MERGE = {
    "counter": lambda old, new: new[0] + old[0],
    "histogram": lambda old, new: new[0] + old[0],
    "gauge_sum": lambda old, new: new[0] + old[0],
    "gauge_max": lambda old, new: max(old[0], new[0]),
    "gauge_min": lambda old, new: min(old[0], new[0]),
}


def _fold_into_archive(dead: Path, kind: str) -> None:
    """Merge one dead process's file (``kind`` = counter, gauge_max, …) into its archive."""
    if kind not in _ARCHIVE_MERGE and kind != "gauge_mostrecent":
        return  # per-process gauges ("all") keep their pid-labelled file
    archive = _MmapedDict(str(dead.with_name(f"{kind}_archive.db")))
    try:
        existing = {key: (value, ts) for key, value, ts in archive.read_all_values()}
        for key, value, ts, _ in _MmapedDict.read_all_values_from_file(str(dead)):
            old = existing.get(key)
            if old is None:
                merged = (value, ts)
            elif kind == "gauge_mostrecent":
                merged = (value, ts) if ts >= old[1] else old
            else:
                merged = (_ARCHIVE_MERGE[kind](old, (value, ts)), 0.0)
            archive.write_value(key, *merged)
    finally:
        archive.close()
    dead.unlink()


def cleanup_multiprocess() -> None:
    """Parent, at exit: remove the metrics directory and leave multi-process mode."""
    path = _multiprocess_dir()
    if path is None:
        return
    values.close_all_multiprocess_files()  # type: ignore[no-untyped-call]
    shutil.rmtree(path, ignore_errors=True)
    os.environ.pop(MULTIPROC_ENV, None)
    global _multiprocess_owner
    _multiprocess_owner = None
    values.ValueClass = values.MutexValue
    M._build()


# --------------------------------------------------------------------------- exposition

OCSP_AGE_METRIC = f"{PREFIX}ocsp_staple_age_seconds"


class _ExpositionCollector(Collector):
    """Everything our metrics hold, plus values that must be computed at scrape time.

    The OCSP staple age grows between scrapes, so it is derived from the stored producedAt
    timestamp here rather than stored (a callback gauge cannot work across processes).
    """

    def __init__(self, source: Collector) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        age = GaugeMetricFamily(
            OCSP_AGE_METRIC,
            "Age of the stapled OCSP response (now minus producedAt).",
            labels=["certificate"],
        )
        now = time.time()
        with _files_lock:
            families = list(self._source.collect())
        for family in families:
            if family.name == M.ocsp_staple_produced._name:
                for sample in family.samples:
                    if not math.isnan(sample.value):
                        age.add_metric([sample.labels["certificate"]], now - sample.value)
            yield family
        yield age


def exposition_registry() -> CollectorRegistry:
    """The registry to serve: this process's metrics, or all processes' in multi-process mode."""
    source: Collector
    path = _multiprocess_dir()
    if path is None:
        source = M.registry
    else:
        source = CollectorRegistry()
        multiprocess.MultiProcessCollector(source, path)  # type: ignore[no-untyped-call]
    exposed = CollectorRegistry(auto_describe=False)
    exposed.register(_ExpositionCollector(source))
    return exposed


def start_metrics_server(
    address: str | tuple[str, int] | socket.socket = DEFAULT_ADDRESS,
) -> MetricsServer:
    """Serve ``/metrics`` on ``address`` ("host:port", "[::1]:port") from a background thread.

    ``address`` may also be an already bound listening socket (systemd socket activation).

    Call it in the parent after :func:`setup_multiprocess`; ``close()`` the result at shutdown.
    Workers forked later do not keep the port (see ``proxy.metrics_http``).
    """
    return MetricsServer(address, exposition_registry)


@dataclass(frozen=True)
class MetricDescription:
    """A metric as exposed: full sample-family name, type and label names."""

    name: str
    type: str
    labels: tuple[str, ...]
    documentation: str


def describe_metrics() -> list[MetricDescription]:
    """The exposed metrics (what docs/metrics.md must list), from the definitions."""
    described = [
        MetricDescription(
            name=metric._name + ("_total" if metric._type == "counter" else ""),
            type=metric._type,
            labels=tuple(metric._labelnames),
            documentation=metric._documentation,
        )
        for metric in M.metrics()
    ]
    described.append(
        MetricDescription(
            OCSP_AGE_METRIC,
            "gauge",
            ("certificate",),
            "Age of the stapled OCSP response (now minus producedAt).",
        )
    )
    return described
