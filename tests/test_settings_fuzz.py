"""Whatever a configuration holds, loading ends in Settings or a ConfigError — nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.settings import (
    CertificateSettings,
    ConfigError,
    GlobalSettings,
    HealthCheckSettings,
    LimitSettings,
    ListenerSettings,
    MetricsSettings,
    PoolSettings,
    RouteSettings,
    Settings,
    TicketSettings,
    TLSSettings,
    load_settings_text,
)

_SCHEMA_CLASSES = (
    GlobalSettings,
    LimitSettings,
    MetricsSettings,
    TLSSettings,
    TicketSettings,
    CertificateSettings,
    ListenerSettings,
    RouteSettings,
    PoolSettings,
    HealthCheckSettings,
)
KEYS = sorted(
    {f for cls in _SCHEMA_CLASSES for f in cls.__dataclass_fields__}
    | {"global", "include", "listeners", "routes", "backends", "certificates", "tls", "tickets"}
    | {"health", "web", "app", "site"}
)

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["10s", "16KiB", "127.0.0.1:8443", "demo", "auto", "x25519", "h2", "[::1]:1"]),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(keys, inner, max_size=4),
    ),
    max_leaves=20,
)
documents = st.dictionaries(keys, values, max_size=8)


def toml_value(value: Any) -> str:
    """A minimal TOML writer: inline tables and arrays nest, strings are JSON-quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, int) else json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    items = ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items())
    return "{" + items + "}"


def toml_document(document: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(key)} = {toml_value(value)}\n" for key, value in document.items())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_arbitrary_documents_load_or_fail_cleanly(document: dict[str, Any]) -> None:
    text = toml_document(document)
    try:
        result = load_settings_text(text, "fuzz.toml", Path("/nonexistent-dir"))
    except ConfigError as exc:
        assert exc.problems
        assert all(p.file == "fuzz.toml" and p.key and p.message for p in exc.problems)
    else:
        assert isinstance(result, Settings)
