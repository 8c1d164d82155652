"""Pool ejection settings and the TLS record_size_limit: loaded, checked, handed on."""

from __future__ import annotations

from pathlib import Path

import pytest
from settings_helpers import MINIMAL, Workspace, find, workspace

from proxy.backends import pool_from_settings
from proxy.routing import table_for_listener
from proxy.settings import ConfigProblem
from proxy.tlsconfig import build_server_config
from tls13 import TicketKeyring


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return workspace(tmp_path)


def _warnings_at(warnings: tuple[ConfigProblem, ...], key: str) -> list[ConfigProblem]:
    return [problem for problem in warnings if problem.key == key]


def test_ejection_defaults(ws: Workspace) -> None:
    pool = ws.load(MINIMAL).pool("app")
    assert (pool.eject_after_failures, pool.eject_for) == (3, 30.0)


def test_ejection_settings_reach_the_runtime_pool(ws: Workspace) -> None:
    text = MINIMAL.replace(
        'servers = ["127.0.0.1:8080"]',
        'servers = ["127.0.0.1:8080"]\neject_after_failures = 5\neject_for = "2m"',
    )
    pool = ws.load(text).pool("app")
    assert (pool.eject_after_failures, pool.eject_for) == (5, 120.0)
    options = pool_from_settings(pool).options
    assert (options.max_fails, options.eject_seconds) == (5, 120.0)


def test_ejection_can_be_turned_off(ws: Workspace) -> None:
    text = MINIMAL.replace(
        'servers = ["127.0.0.1:8080"]', 'servers = ["127.0.0.1:8080"]\neject_after_failures = 0'
    )
    assert pool_from_settings(ws.load(text).pool("app")).options.max_fails == 0


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("eject_after_failures = -1", "backends.app.eject_after_failures"),
        ('eject_after_failures = "3"', "backends.app.eject_after_failures"),
        ('eject_for = "0s"', "backends.app.eject_for"),
        ('eject_for = "soon"', "backends.app.eject_for"),
    ],
)
def test_bad_ejection_values_are_errors(ws: Workspace, line: str, key: str) -> None:
    text = MINIMAL.replace('servers = ["127.0.0.1:8080"]', f'servers = ["127.0.0.1:8080"]\n{line}')
    assert find(ws.errors(text), key)


def test_record_size_limit_reaches_the_engine(ws: Workspace) -> None:
    settings = ws.load(MINIMAL + "\n[tls]\nrecord_size_limit = 4096\n")
    listener = settings.listeners[0]
    assert listener.tls.record_size_limit == 4096
    config = build_server_config(settings, listener, None, table_for_listener(settings, listener))
    assert config.record_size_limit == 4096


def test_default_record_size_limit_is_the_tls_maximum(ws: Workspace) -> None:
    settings = ws.load(MINIMAL)
    assert settings.tls.record_size_limit == 16384
    assert _warnings_at(settings.warnings, "tls.record_size_limit") == []


def test_small_record_size_limit_warns_about_gnutls(ws: Workspace) -> None:
    settings = ws.load(MINIMAL + "\n[tls]\nrecord_size_limit = 256\n")
    (warning,) = _warnings_at(settings.warnings, "tls.record_size_limit")
    assert "GnuTLS" in warning.message and "512" in warning.message


def test_record_size_limit_of_512_does_not_warn(ws: Workspace) -> None:
    settings = ws.load(MINIMAL + "\n[tls]\nrecord_size_limit = 512\n")
    assert _warnings_at(settings.warnings, "tls.record_size_limit") == []


def test_listener_override_below_512_warns_there(ws: Workspace) -> None:
    text = MINIMAL.replace(
        'addresses = ["127.0.0.1:8443"]',
        'addresses = ["127.0.0.1:8443"]\ntls = { record_size_limit = 128 }',
    )
    settings = ws.load(text)
    assert settings.listeners[0].tls.record_size_limit == 128
    assert [w.key for w in settings.warnings if "GnuTLS" in w.message] == [
        "listeners.web.tls.record_size_limit"
    ]


@pytest.mark.parametrize("value", ["63", "16385", '"big"'])
def test_record_size_limit_out_of_range_is_an_error(ws: Workspace, value: str) -> None:
    problems = ws.errors(MINIMAL + f"\n[tls]\nrecord_size_limit = {value}\n")
    assert find(problems, "tls.record_size_limit")


def test_metrics_on_a_systemd_socket_needs_its_name(ws: Workspace) -> None:
    named = ws.load(MINIMAL.replace("enabled = false", 'listen = "systemd:metrics"'))
    assert named.metrics.listen.systemd_name == "metrics"
    problems = ws.errors(MINIMAL.replace("enabled = false", 'listen = "systemd:"'))
    assert "systemd:NAME" in find(problems, "metrics.listen").message


@pytest.mark.parametrize(
    ("tickets", "expected"),
    [("", (2, 1)), ("count = 3\ncount_after_resumption = 0", (3, 0)), ("count = 1", (1, 1))],
)
def test_tickets_after_resumption_reach_the_engine(
    ws: Workspace, tickets: str, expected: tuple[int, int]
) -> None:
    settings = ws.load(MINIMAL + f"\n[tls.tickets]\n{tickets}\n")
    listener = settings.listeners[0]
    keys = TicketKeyring.generate()
    config = build_server_config(settings, listener, keys, table_for_listener(settings, listener))
    assert (config.tickets, config.tickets_after_resumption) == expected


def test_tickets_after_resumption_beyond_count_is_capped(ws: Workspace) -> None:
    settings = ws.load(MINIMAL + "\n[tls.tickets]\ncount = 2\ncount_after_resumption = 5\n")
    listener = settings.listeners[0]
    keys = TicketKeyring.generate()
    config = build_server_config(settings, listener, keys, table_for_listener(settings, listener))
    assert config.tickets_after_resumption == 2
