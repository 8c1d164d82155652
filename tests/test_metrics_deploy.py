"""deploy/prometheus and deploy/grafana: promtool checks, rule unit tests, dashboard sanity."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from metrics_helpers import PROMTOOL, REPO

from proxy import metrics

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "tls13-proxy-rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "tls13-proxy-rules.test.yml"
SCRAPE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "tls13-proxy-dashboard.json"

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
pytestmark = pytest.mark.timeout(120)

# A metric name, not part of a recording rule name (level:metric:operations).
METRIC_NAME = re.compile(r"(?<![\w:])tls13proxy_[a-z0-9_]+(?![\w:])")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def exposed_series_names() -> set[str]:
    """Every series name a query may use: metric names plus histogram sample names."""
    names: set[str] = set()
    for described in metrics.describe_metrics():
        names.add(described.name)
        if described.type == "histogram":
            names.update(described.name + suffix for suffix in HISTOGRAM_SUFFIXES)
    return names


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p["targets"]]


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_rule_unit_tests_catch_a_broken_threshold(tmp_path: Path) -> None:
    """The rule tests are not vacuous: loosening the expiry window must make them fail."""
    broken = RULES.read_text().replace("< 14 * 86400", "< 1 * 86400")
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "TLS13ProxyCertificateExpiringSoon" in result.stdout + result.stderr


@needs_promtool
def test_example_scrape_config_is_valid() -> None:
    result = promtool("check", "config", SCRAPE_CONFIG.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_only_use_exposed_metrics() -> None:
    used = set(METRIC_NAME.findall(RULES.read_text())) - {"tls13proxy_"}
    unknown = {name for name in used if name not in exposed_series_names()}
    assert unknown == set()


def test_required_alerts_exist() -> None:
    text = RULES.read_text()
    alerts = set(re.findall(r"- alert: (\w+)", text))
    assert {
        "TLS13ProxyHandshakeFailureRatioHigh",
        "TLS13ProxyBackendDown",
        "TLS13ProxyCertificateExpiringSoon",
        "TLS13ProxyConfigReloadFailed",
        "TLS13ProxyWorkerRestarts",
        "TLS13ProxyDown",
    } <= alerts
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert alerts <= tested, f"alerts without unit tests: {alerts - tested}"


def test_dashboard_is_valid_grafana_json() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    assert board["title"] and board["uid"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    for panel in dashboard_panels():
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]


def test_dashboard_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_only_uses_exposed_metrics() -> None:
    used = {name for expr in dashboard_queries() for name in METRIC_NAME.findall(expr)}
    assert used - exposed_series_names() == set()


def test_dashboard_covers_the_main_topics() -> None:
    used = {name for expr in dashboard_queries() for name in METRIC_NAME.findall(expr)}
    required = {
        "tls13proxy_connections_active",
        "tls13proxy_connections_accepted_total",
        "tls13proxy_handshakes_total",
        "tls13proxy_handshake_failures_total",
        "tls13proxy_handshake_duration_seconds_bucket",
        "tls13proxy_early_data_total",
        "tls13proxy_received_bytes_total",
        "tls13proxy_sent_bytes_total",
        "tls13proxy_backend_up",
        "tls13proxy_certificate_not_after_timestamp_seconds",
        "tls13proxy_config_reloads_total",
    }
    assert required <= used
    queries = "\n".join(dashboard_queries())
    assert 'resumed="true"' in queries, "resumption ratio panel"
    assert "histogram_quantile(0.99" in queries, "latency percentiles"


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each query, with Grafana variables filled in, must parse (checked as recording rules)."""
    substitutions = {
        "$__rate_interval": "1m",
        "$job": "tls13-proxy",
        "$instance": ".*",
        "$listener": ".*",
    }
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for index, expr in enumerate(dashboard_queries()):
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unhandled variable in {expr}"
        lines.append(f"      - record: dashboard:query_{index}")
        lines.append(f"        expr: {json.dumps(expr)}")
    (tmp_path / "dashboard-rules.yml").write_text("\n".join(lines) + "\n")
    result = promtool("check", "rules", "dashboard-rules.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
