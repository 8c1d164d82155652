"""The proxy's configuration: one TOML file (plus included snippets) → frozen, typed settings.

The schema is the dataclasses below: every field carries its converter (TOML value → typed
value), its documentation and its default in ``metadata``, which is what both the loader and the
generated reference (``python3 -m proxy.settings --reference`` → docs/configuration.md) read, so
the two cannot drift apart. Loading collects every problem — unknown keys, wrong types, bad
durations, unreadable or mismatched certificates, dangling references — and raises one
``ConfigError`` listing them all, each naming the file, the key path and what is wrong.

Conventions: durations are seconds (``float``), sizes are bytes (``int``), relative paths are
resolved against the directory of the file that sets them, names of cipher suites / groups /
signature schemes are IANA names (canonical spelling from the engine's tables).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from proxy.settings_checks import ConfigError, ConfigProblem, Problems, Where
from proxy.settings_convert import (
    Alpn,
    BackendAddr,
    BackendAddress,
    BadValue,
    Bool,
    Choice,
    Converter,
    Duration,
    Int,
    IntChoice,
    ListenAddr,
    ListenAddress,
    ListOf,
    Names,
    Optional,
    PathValue,
    ServerName,
    Size,
    Str,
    Workers,
    did_you_mean,
    type_name,
)
from tls13 import groups as _groups
from tls13 import signatures as _signatures
from tls13 import suites as _suites

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

__all__ = [
    "BackendAddress",
    "CertificateSettings",
    "ConfigError",
    "ConfigProblem",
    "DEFAULT_SETTINGS",
    "GlobalSettings",
    "HealthCheckSettings",
    "LimitSettings",
    "ListenAddress",
    "ListenerSettings",
    "MetricsSettings",
    "PoolSettings",
    "RouteSettings",
    "Settings",
    "TLSSettings",
    "TicketSettings",
    "default_state_dir",
    "embedded_default",
    "load_settings",
    "reload_settings",
]

# ---------------------------------------------------------------------------------------------
# Names the engine knows: the valid values of cipher_suites, groups and signature_schemes.


def suite_names() -> dict[str, int]:
    """Cipher suites the engine implements (IANA name → code point)."""
    return dict(_suites.BY_NAME)


def group_names() -> dict[str, int]:
    """Key exchange groups the engine implements."""
    return dict(_groups.BY_NAME)


def signature_scheme_names() -> dict[str, int]:
    """Schemes usable in CertificateVerify (RFC 8446 §4.2.3: not the PKCS#1 v1.5 ones)."""
    usable = set(_signatures.HANDSHAKE_SCHEMES)
    return {name: code for name, code in _signatures.BY_NAME.items() if code in usable}


DEFAULT_SUITES = (
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
)
DEFAULT_GROUPS = ("X25519MLKEM768", "x25519", "secp256r1", "secp384r1")

# ---------------------------------------------------------------------------------------------
# Schema helpers.


def setting(default: Any, conv: Converter[Any], doc: str, default_doc: str | None = None) -> Any:
    """A TOML-settable field: its converter, documentation and default live in the metadata.

    A function as ``default`` is a factory called per instance (used for defaults that depend
    on the environment, like the state directory); ``default_doc`` then describes it.
    """
    meta = {"conv": conv, "doc": doc, "default_doc": default_doc}
    if callable(default) and not isinstance(default, type):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type[Any], doc: str) -> Any:
    """A nested TOML table holding another settings dataclass."""
    return field(default_factory=cls, metadata={"section": cls, "doc": doc})


def internal(default: Any = "", doc: str = "") -> Any:
    """A field filled by the loader (a table's name, resolved values), never read from TOML."""
    return field(default=default, metadata={"internal": True, "doc": doc})


def toml_key(f: dataclasses.Field[Any]) -> str:
    """The TOML key of a field (a trailing underscore avoids Python keywords: ``global_``)."""
    return f.name.rstrip("_")


def default_state_dir() -> Path:
    """$STATE_DIRECTORY (systemd), else /var/lib/tls13-proxy as root, else the XDG state dir."""
    from_systemd = os.environ.get("STATE_DIRECTORY")
    if from_systemd:
        return Path(from_systemd.split(":")[0])
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/tls13-proxy")
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(xdg) / "tls13-proxy"


# ---------------------------------------------------------------------------------------------
# The schema.


@dataclass(frozen=True)
class GlobalSettings:
    """[global]: the process as a whole."""

    workers: int = setting(
        1,
        Workers(),
        'Worker processes sharing each listening port (SO_REUSEPORT); "auto" = one per CPU.',
    )
    user: str | None = setting(
        None,
        Optional(Str(what="user name")),
        "User to switch to after binding ports and reading keys.",
    )
    group: str | None = setting(
        None,
        Optional(Str(what="group name")),
        "Group to switch to (default: the user's primary group).",
    )
    state_dir: Path = setting(
        default_state_dir,
        PathValue(),
        "Directory for generated state: the self-signed certificate, generated ticket keys.",
        default_doc="$STATE_DIRECTORY (systemd), else /var/lib/tls13-proxy as root, "
        "else ${XDG_STATE_HOME:-~/.local/state}/tls13-proxy",
    )
    log_format: str = setting("text", Choice("text", "json"), "Log line format (text = logfmt).")
    log_level: str = setting(
        "info", Choice("debug", "info", "warning", "error"), "Least severe log level written."
    )
    access_log: bool = setting(True, Bool(), "Write one access log line per connection.")
    ocsp_refresh_interval: float = setting(
        60.0,
        Duration(1.0),
        "How often each certificate's `ocsp` file is checked (mtime, size, inode); a changed, "
        "valid response is stapled on new connections without a reload.",
    )


@dataclass(frozen=True)
class LimitSettings:
    """[limits]: resource bounds protecting the proxy from overload and slow clients."""

    max_connections: int = setting(
        10000, Int(1), "Client connections open at once (per worker); more are accepted and closed."
    )
    max_connections_per_client: int = setting(
        256, Int(0), "Connections from one client IP address at once (0 = unlimited)."
    )
    max_concurrent_handshakes: int = setting(
        1024, Int(1), "TLS handshakes in progress at once (per worker); CPU protection."
    )
    handshake_timeout: float = setting(
        10.0, Duration(0.001), "Time a client has to complete the handshake (slowloris defence)."
    )
    idle_timeout: float = setting(
        300.0,
        Duration(0.001),
        "A connection with no traffic in either direction is closed after this.",
    )
    drain_timeout: float = setting(
        30.0, Duration(0.0), "On shutdown, time given to open connections before they are closed."
    )
    buffer_size: int = setting(
        65536, Size(4096, 16 * 1024 * 1024), "Bytes buffered per direction per connection."
    )
    max_handshake_size: int = setting(
        65536, Size(1024, 16 * 1024 * 1024), "Largest handshake message accepted from a client."
    )
    key_updates_per_minute: int = setting(
        60, Int(1), "KeyUpdate messages accepted from a peer per minute before it is cut off."
    )
    max_empty_records: int = setting(
        32, Int(0), "Empty application-data records in a row accepted from a client."
    )
    max_warning_alerts: int = setting(
        4, Int(0), "Warning alerts (user_canceled) accepted from a client per connection."
    )
    max_change_cipher_spec: int = setting(
        32,
        Int(0),
        "Compatibility change_cipher_spec records accepted from a client during the handshake.",
    )


@dataclass(frozen=True)
class MetricsSettings:
    """[metrics]: the Prometheus endpoint (plain HTTP, keep it off public interfaces)."""

    enabled: bool = setting(True, Bool(), "Serve /metrics.")
    listen: ListenAddress = setting(
        ListenAddress("127.0.0.1", 9464), ListenAddr(), "Address of the /metrics HTTP endpoint."
    )


@dataclass(frozen=True)
class TicketSettings:
    """[tls.tickets]: session tickets for resumption (RFC 8446 §4.6.1)."""

    enabled: bool = setting(True, Bool(), "Issue session tickets.")
    count: int = setting(2, Int(1, 16), "Tickets sent after each full handshake.")
    count_after_resumption: int = setting(
        1,
        Int(0, 16),
        "Tickets sent after a resumed handshake (a fresh one for the ticket just used); "
        "at most `count`.",
    )
    # RFC 8446 §4.6.1: ticket_lifetime MUST NOT exceed 604800 seconds (7 days).
    lifetime: float = setting(
        7200.0, Duration(1.0, 604800.0), "How long a ticket may be used (at most 7 days)."
    )
    key_file: Path | None = setting(
        None,
        Optional(PathValue()),
        "Ticket encryption keys shared by workers/hosts: one or more 48-byte records (16-byte "
        "name + 32-byte key; the first is current). Unset = keys generated at start and rotated.",
    )
    rotation_interval: float = setting(
        43200.0,
        Duration(60.0),
        "How often generated ticket keys rotate (the previous key is still accepted).",
    )


@dataclass(frozen=True)
class TLSSettings:
    """[tls]: TLS defaults for every listener; a listener may override any of them."""

    cipher_suites: tuple[str, ...] = setting(
        DEFAULT_SUITES,
        ListOf(Names("cipher suite", suite_names), min_items=1),
        "TLS 1.3 cipher suites in preference order.",
    )
    groups: tuple[str, ...] = setting(
        DEFAULT_GROUPS,
        ListOf(Names("group", group_names), min_items=1),
        "Key exchange groups in preference order (hybrid post-quantum first).",
    )
    signature_schemes: tuple[str, ...] = setting(
        (),
        ListOf(Names("signature scheme", signature_scheme_names)),
        "Signature schemes allowed (empty = the engine's default list).",
    )
    alpn: tuple[str, ...] = setting(
        (), ListOf(Alpn()), 'ALPN protocols offered, in preference order (e.g. ["h2", "http/1.1"]).'
    )
    alpn_required: bool = setting(
        False,
        Bool(),
        "Refuse clients without a protocol of ours, those offering no ALPN included "
        "(no_application_protocol).",
    )
    max_early_data: int = setting(
        0,
        Size(0, 1 << 30),
        "0-RTT: bytes of early data accepted per connection; 0 = 0-RTT off. Early data can be "
        "replayed: enable only for routes whose backends tolerate replays.",
    )
    record_padding: int = setting(
        0, Int(0, 16384), "Pad records to a multiple of this many bytes (0 = no padding)."
    )
    record_size_limit: int = setting(
        16384,
        Int(64, 16384),
        "Largest record plaintext we accept, announced to clients (RFC 8449 record_size_limit).",
    )
    stateless_hrr: bool = setting(
        False, Bool(), "Send a cookie in HelloRetryRequest so no state is kept across it (§4.2.2)."
    )
    keylog_file: Path | None = setting(
        None,
        Optional(PathValue()),
        "DEBUGGING ONLY: append NSS key log lines (every secret!) to this file.",
    )
    tickets: TicketSettings = section(TicketSettings, "Session tickets.")


NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class CertificateSettings:
    """[certificates.NAME]: a certificate chain and its key (or a generated self-signed one)."""

    name: str = internal(doc="The table's name.")
    chain: Path | None = setting(
        None, Optional(PathValue()), "PEM file: the leaf certificate first, then intermediates."
    )
    key: Path | None = setting(None, Optional(PathValue()), "PEM private key (unencrypted).")
    ocsp: Path | None = setting(
        None,
        Optional(PathValue()),
        "DER OCSP response to staple when asked (status_request); re-read when it changes "
        "(global.ocsp_refresh_interval) and on reload.",
    )
    names: tuple[str, ...] = setting(
        (),
        ListOf(Str(what="host name or IP address")),
        "Names this certificate serves (default: its subjectAltName DNS names and IP addresses).",
    )
    self_signed: bool = setting(
        False,
        Bool(),
        "Generate a self-signed certificate for `names` (default localhost, 127.0.0.1, ::1) and "
        "keep it in state_dir (selfsigned.crt / selfsigned.key); chain/key must be unset.",
    )


SELF_SIGNED_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class ListenerSettings:
    """[listeners.NAME]: where clients connect, with per-listener TLS and client auth."""

    name: str = internal(doc="The table's name.")
    addresses: tuple[ListenAddress, ...] = setting(
        (), ListOf(ListenAddr(), min_items=1), "Addresses to listen on (required)."
    )
    certificates: tuple[str, ...] = setting(
        (),
        ListOf(Str(what="certificate name")),
        "Certificates served here, by name (default: all, in file order).",
    )
    default_certificate: str | None = setting(
        None,
        Optional(Str(what="certificate name")),
        "Certificate for clients without SNI or with an unknown name (default: the first).",
    )
    routes: tuple[str, ...] = setting(
        (),
        ListOf(Str(what="route name")),
        "Routes tried for connections here, by name (default: all, in file order).",
    )
    client_auth: str = setting(
        "none",
        Choice("none", "optional", "required"),
        "Ask clients for a certificate: none, optional (verified if sent) or required.",
    )
    client_ca: Path | None = setting(
        None,
        Optional(PathValue()),
        "PEM file of CA certificates that client certificates must chain to.",
    )
    max_connections: int = setting(
        0, Int(0), "Connections open at once on this listener (0 = only the global limit)."
    )
    backlog: int = setting(1024, Int(1, 65535), "listen() backlog.")
    tls: TLSSettings = section(TLSSettings, "Overrides of [tls] for this listener.")


@dataclass(frozen=True)
class RouteSettings:
    """[routes.NAME]: which connections go to which backend pool.

    A route matches when the client's SNI matches one of ``server_names`` (exact beats
    wildcard; empty = any name) and the negotiated ALPN protocol is in ``alpn`` (empty = any);
    see "Routing" above for the order in which routes are tried.
    """

    name: str = internal(doc="The table's name.")
    server_names: tuple[str, ...] = setting(
        (), ListOf(ServerName()), "SNI names matched: exact or *.wildcard (empty = any)."
    )
    alpn: tuple[str, ...] = setting((), ListOf(Alpn()), "ALPN protocols matched (empty = any).")
    pool: str = setting("", Str(what="backend pool name"), "The [backends.NAME] pool (required).")
    default: bool = setting(
        False, Bool(), "Use this route when no other matches (at most one per listener)."
    )
    early_data: bool = setting(
        False,
        Bool(),
        "Let 0-RTT data through to this pool (it may be replayed; needs tls.max_early_data > 0).",
    )
    client_certificate_required: bool = setting(
        False, Bool(), "Only clients that presented a verified certificate may use this route."
    )


@dataclass(frozen=True)
class HealthCheckSettings:
    """[backends.NAME.health]: active health checks of each server in the pool."""

    enabled: bool = setting(True, Bool(), "Run active health checks.")
    type: str = setting("tcp", Choice("tcp", "http"), "tcp = connect only; http = GET `path`.")
    interval: float = setting(5.0, Duration(0.1), "Time between checks of one server.")
    timeout: float = setting(2.0, Duration(0.01), "A check not finished in this time failed.")
    path: str = setting("/", Str(r"/[\x21-\x7e]*", "HTTP path"), "HTTP check: request path.")
    host: str | None = setting(
        None, Optional(Str(what="host name")), "HTTP check: Host header (default: the server)."
    )
    expect_status: int = setting(200, Int(100, 599), "HTTP check: the status meaning healthy.")
    rise: int = setting(2, Int(1, 100), "Consecutive successes before a down server is up.")
    fall: int = setting(3, Int(1, 100), "Consecutive failures before an up server is down.")


@dataclass(frozen=True)
class PoolSettings:
    """[backends.NAME]: a pool of backend servers."""

    name: str = internal(doc="The table's name.")
    servers: tuple[BackendAddress, ...] = setting(
        (),
        ListOf(BackendAddr(), min_items=1),
        'Servers: "host:port", "[v6]:port", "unix:/path" or "demo" (the built-in demo page).',
    )
    balancing: str = setting(
        "round_robin",
        Choice("round_robin", "least_connections"),
        "How the next server is chosen.",
    )
    proxy_protocol: int = setting(
        0, IntChoice(0, 1, 2), "Send a PROXY protocol header of this version (0 = none)."
    )
    connect_timeout: float = setting(5.0, Duration(0.001), "Time allowed to connect to a server.")
    retries: int = setting(
        2, Int(0, 16), "Other servers tried after a failed connect before the client is dropped."
    )
    eject_after_failures: int = setting(
        3,
        Int(0, 1000),
        "Passive ejection: consecutive failed connects that take a server out of rotation "
        "(0 = never eject).",
    )
    eject_for: float = setting(
        30.0, Duration(0.001), "How long an ejected server stays out of rotation."
    )
    health: HealthCheckSettings = section(HealthCheckSettings, "Active health checks.")

    @property
    def is_demo(self) -> bool:
        """Whether this pool is the built-in demo backend."""
        return any(server.kind == "demo" for server in self.servers)


@dataclass(frozen=True)
class Settings:
    """The whole configuration. Named tables are tuples in file order (see the lookups)."""

    source: Path | None = internal(None, "The main configuration file (None = embedded default).")
    files: tuple[Path, ...] = internal((), "Every file read (main first, then included snippets).")
    global_: GlobalSettings = section(GlobalSettings, "Process-wide settings.")
    limits: LimitSettings = section(LimitSettings, "Resource limits.")
    metrics: MetricsSettings = section(MetricsSettings, "Prometheus metrics endpoint.")
    tls: TLSSettings = section(TLSSettings, "TLS defaults.")
    certificates: tuple[CertificateSettings, ...] = internal(())
    listeners: tuple[ListenerSettings, ...] = internal(())
    routes: tuple[RouteSettings, ...] = internal(())
    backends: tuple[PoolSettings, ...] = internal(())
    warnings: tuple[ConfigProblem, ...] = field(default=(), compare=False)

    def certificate(self, name: str) -> CertificateSettings:
        return _by_name(self.certificates, name)

    def listener(self, name: str) -> ListenerSettings:
        return _by_name(self.listeners, name)

    def route(self, name: str) -> RouteSettings:
        return _by_name(self.routes, name)

    def pool(self, name: str) -> PoolSettings:
        return _by_name(self.backends, name)

    def routes_for(self, listener: ListenerSettings) -> tuple[RouteSettings, ...]:
        """A listener's routes, in its order."""
        return tuple(self.route(name) for name in listener.routes)

    def certificates_for(self, listener: ListenerSettings) -> tuple[CertificateSettings, ...]:
        """A listener's certificates, its default first."""
        names = [listener.default_certificate or ""] + list(listener.certificates)
        unique = [n for i, n in enumerate(names) if n and n not in names[:i]]
        return tuple(self.certificate(name) for name in unique)


_Named = TypeVar("_Named", CertificateSettings, ListenerSettings, RouteSettings, PoolSettings)


def _by_name(items: Sequence[_Named], name: str) -> _Named:
    for item in items:
        if item.name == name:
            return item
    raise KeyError(name)


DEFAULT_SETTINGS = Settings()

# The top-level tables: (TOML key, dataclass) for singletons and named collections.
_SINGLE_TABLES: dict[str, type[Any]] = {
    "global": GlobalSettings,
    "limits": LimitSettings,
    "metrics": MetricsSettings,
    "tls": TLSSettings,
}
_NAMED_TABLES: dict[str, type[Any]] = {
    "certificates": CertificateSettings,
    "listeners": ListenerSettings,
    "routes": RouteSettings,
    "backends": PoolSettings,
}
_TOP_KEYS = ("include", *_SINGLE_TABLES, *_NAMED_TABLES)

# ---------------------------------------------------------------------------------------------
# Loading.


@dataclass(frozen=True)
class _Source:
    """One parsed TOML file: its label for messages, its directory for relative paths."""

    label: str
    base_dir: Path
    data: dict[str, Any]
    path: Path | None


def _schema_fields(cls: type[Any]) -> Iterator[dataclasses.Field[Any]]:
    for f in dataclasses.fields(cls):
        if not f.metadata.get("internal") and f.compare:
            yield f


def build_section(
    cls: type[Any], raw: object, where: Where, base_dir: Path, base: Any = None
) -> Any:
    """Convert a TOML table into ``cls``; unset keys come from ``base`` (if any) or defaults.

    Every problem is reported to ``where``; a bad value falls back to its default so that the
    rest of the table is still checked.
    """
    if not isinstance(raw, dict):
        where.error(f"expected a table, got {type_name(raw)} {raw!r}")
        return base if base is not None else cls()
    known = {toml_key(f): f for f in _schema_fields(cls)}
    for key in raw:
        if key not in known:
            where.at(key).error(f"unknown key {key!r}{did_you_mean(key, list(known))}")
    values: dict[str, Any] = {}
    for key, f in known.items():
        inherited = getattr(base, f.name) if base is not None else None
        if key not in raw:
            if base is not None:
                values[f.name] = inherited
            continue
        if "section" in f.metadata:
            sub = build_section(f.metadata["section"], raw[key], where.at(key), base_dir, inherited)
            values[f.name] = sub
            continue
        try:
            values[f.name] = f.metadata["conv"].convert(raw[key], base_dir)
        except BadValue as exc:
            for problem in exc.all():
                where.at(key + problem.suffix).error(problem.message)
            where.at(key).mark_invalid()
    return cls(**values)


def _read_source(path: Path, problems: Problems, where: Where | None = None) -> _Source | None:
    label = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        target = where or Where(problems, label, "(file)")
        target.error(f"cannot read {path}: {exc.strerror or exc}")
        return None
    except UnicodeDecodeError as exc:
        problems.error(label, "(file)", f"not UTF-8 text: {exc}")
        return None
    return _parse_source(text, label, path.parent.resolve(), problems, path.resolve())


def _parse_source(
    text: str, label: str, base_dir: Path, problems: Problems, path: Path | None
) -> _Source | None:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems.error(label, "(syntax)", f"invalid TOML: {exc}")
        return None
    return _Source(label, base_dir, data, path)


def _included_sources(main: _Source, problems: Problems) -> list[_Source]:
    """The snippets named by ``include`` (a glob or a list of them), in sorted order per glob."""
    raw = main.data.get("include")
    if raw is None:
        return []
    where = Where(problems, main.label, "include")
    patterns = [raw] if isinstance(raw, str) else raw
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
        where.error(f"expected a glob string or an array of them, got {type_name(raw)} {raw!r}")
        return []
    sources: list[_Source] = []
    for index, pattern in enumerate(patterns):
        entry = where if isinstance(raw, str) else where.at(f"[{index}]")
        for path in _expand_include(pattern, main.base_dir, entry):
            source = _read_source(path, problems, entry)
            if source is not None:
                sources.append(source)
    return sources


def _expand_include(pattern: str, base_dir: Path, where: Where) -> list[Path]:
    full = Path(os.path.expanduser(pattern))
    full = full if full.is_absolute() else base_dir / full
    if not any(ch in pattern for ch in "*?["):
        if full.is_dir():
            return sorted(p.resolve() for p in full.glob("*.toml") if p.is_file())
        if not full.is_file():
            where.error(f"included file {full} does not exist")
            return []
        return [full.resolve()]
    anchor = Path(full.anchor)
    return sorted(p for p in anchor.glob(str(full.relative_to(anchor))) if p.is_file())


def _check_top_keys(source: _Source, allowed: Sequence[str], problems: Problems) -> None:
    for key in source.data:
        if key in allowed:
            continue
        if key in _TOP_KEYS:
            problems.error(
                source.label,
                key,
                f"[{key}] may only be set in the main file; an included file may hold "
                + ", ".join(f"[{k}.NAME]" for k in _NAMED_TABLES),
            )
        else:
            problems.error(source.label, key, f"unknown key {key!r}{did_you_mean(key, allowed)}")


@dataclass(frozen=True)
class _Entry:
    """A named table ([backends.api]) and the file that defined it."""

    name: str
    raw: object
    source: _Source

    def where(self, problems: Problems, kind: str) -> Where:
        return Where(problems, self.source.label, f"{kind}.{self.name}")


def _collect_named(sources: Sequence[_Source], kind: str, problems: Problems) -> list[_Entry]:
    entries: dict[str, _Entry] = {}
    for source in sources:
        table = source.data.get(kind)
        if table is None:
            continue
        if not isinstance(table, dict):
            problems.error(source.label, kind, f"expected a table of named [{kind}.NAME] tables")
            continue
        for name, raw in table.items():
            if not NAME_RE.fullmatch(name):
                problems.error(
                    source.label,
                    f"{kind}.{name}",
                    "a name must be 1-64 letters, digits, '_', '.', '-' (starting alphanumeric)",
                )
                continue
            if name in entries:
                first = entries[name].source.label
                problems.error(source.label, f"{kind}.{name}", f"already defined in {first}")
                continue
            entries[name] = _Entry(name, raw, source)
    return list(entries.values())


def _build_named(
    entries: Sequence[_Entry], kind: str, problems: Problems, tls: TLSSettings
) -> list[Any]:
    cls = _NAMED_TABLES[kind]
    built = []
    for entry in entries:
        where = entry.where(problems, kind)
        base = None
        if cls is ListenerSettings:
            base = dataclasses.replace(ListenerSettings(), tls=tls)
        item = build_section(cls, entry.raw, where, entry.source.base_dir, base)
        built.append(dataclasses.replace(item, name=entry.name))
    return built


def _load(main: _Source, problems: Problems) -> Settings:
    """Parse, convert and cross-check a configuration whose main file is ``main``."""
    from proxy.settings_validate import validate  # imported late: it imports this module

    _check_top_keys(main, _TOP_KEYS, problems)
    snippets = _included_sources(main, problems)
    for snippet in snippets:
        _check_top_keys(snippet, tuple(_NAMED_TABLES), problems)
    singles = {
        key: build_section(
            cls, main.data.get(key, {}), Where(problems, main.label, key), main.base_dir
        )
        for key, cls in _SINGLE_TABLES.items()
    }
    sources = [main, *snippets]
    entries = {kind: _collect_named(sources, kind, problems) for kind in _NAMED_TABLES}
    named = {
        kind: tuple(_build_named(entries[kind], kind, problems, singles["tls"]))
        for kind in _NAMED_TABLES
    }
    settings = Settings(
        source=main.path,
        files=tuple(s.path for s in sources if s.path is not None),
        global_=singles["global"],
        limits=singles["limits"],
        metrics=singles["metrics"],
        tls=singles["tls"],
        certificates=named["certificates"],
        listeners=named["listeners"],
        routes=named["routes"],
        backends=named["backends"],
    )
    origins = {
        (kind, entry.name): entry.source.label for kind in entries for entry in entries[kind]
    }
    return validate(settings, problems, main.label, origins)


def _finish(settings: Settings, problems: Problems) -> Settings:
    if problems.errors:
        raise ConfigError(problems.errors, problems.warnings)
    return dataclasses.replace(settings, warnings=tuple(problems.warnings))


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Load and validate a configuration file; raise ``ConfigError`` listing every problem.

    Warnings (which do not stop the load) are in the returned ``Settings.warnings``.
    """
    problems = Problems()
    source = _read_source(Path(path), problems)
    if source is None:
        raise ConfigError(problems.errors)
    return _finish(_load(source, problems), problems)


def load_settings_text(text: str, label: str, base_dir: Path) -> Settings:
    """Load a configuration from TOML text (paths relative to ``base_dir``)."""
    problems = Problems()
    source = _parse_source(text, label, base_dir, problems, None)
    if source is None:
        raise ConfigError(problems.errors)
    return _finish(_load(source, problems), problems)


# Settings a running daemon cannot change without a restart: [global] and the metrics address.
_RESTART_ONLY = (("global_", "global"), ("metrics", "metrics"))


def reload_settings(path: str | os.PathLike[str], previous: Settings) -> Settings:
    """Load a new configuration for a running daemon (SIGHUP); raise ``ConfigError`` if invalid.

    The caller keeps ``previous`` when this raises. [global] and [metrics] need a restart: their
    previous values are kept and a warning says a change was ignored.
    """
    new = load_settings(path)
    extra: list[ConfigProblem] = []
    for attr, key in _RESTART_ONLY:
        if getattr(new, attr) != getattr(previous, attr):
            extra.append(
                ConfigProblem(str(path), key, f"[{key}] changed: takes effect only after a restart")
            )
    return dataclasses.replace(
        new,
        global_=previous.global_,
        metrics=previous.metrics,
        warnings=new.warnings + tuple(extra),
    )


# ---------------------------------------------------------------------------------------------
# The embedded default: what `tls13-proxy` with no configuration serves.


def _ipv6_loopback_available() -> bool:
    import socket

    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def embedded_default_toml(state_dir: Path, ipv6: bool | None = None) -> str:
    """The embedded default as TOML (also shown in the reference)."""
    with_ipv6 = _ipv6_loopback_available() if ipv6 is None else ipv6
    addresses = '["127.0.0.1:8443", "[::1]:8443"]' if with_ipv6 else '["127.0.0.1:8443"]'
    state = str(state_dir).replace("\\", "\\\\").replace('"', '\\"')
    return f"""\
# tls13-proxy embedded default: https://localhost:8443/ → the built-in demo page.
[global]
state_dir = "{state}"

[metrics]
listen = "127.0.0.1:9464"

[tls]
alpn = ["http/1.1"]

[certificates.default]
self_signed = true          # generated once, kept in state_dir

[listeners.default]
addresses = {addresses}

[routes.default]
default = true
pool = "demo"

[backends.demo]
servers = ["demo"]          # the built-in demo backend
health = {{ enabled = false }}
"""


def embedded_default(state_dir: Path | None = None) -> Settings:
    """The configuration used when none is given: localhost:8443, self-signed, demo backend."""
    directory = state_dir if state_dir is not None else default_state_dir()
    return load_settings_text(embedded_default_toml(directory), "<embedded default>", directory)


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m proxy.settings --reference``: print the configuration reference."""
    import argparse

    from proxy.settings_reference import render_reference

    parser = argparse.ArgumentParser(prog="python3 -m proxy.settings")
    parser.add_argument("--reference", action="store_true", help="print docs/configuration.md")
    args = parser.parse_args(argv)
    if not args.reference:
        parser.print_help()
        return 2
    sys.stdout.write(render_reference())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
