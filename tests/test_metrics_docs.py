"""docs/metrics.md must describe exactly what the code exposes, and the alerts it ships."""

from __future__ import annotations

import re

import pytest
from metrics_helpers import REPO, parse_exposition, read_line, scrape, start_helper, stop

from proxy import metrics

DOC = REPO / "docs" / "metrics.md"
RULES = REPO / "deploy" / "prometheus" / "tls13-proxy-rules.yml"

pytestmark = pytest.mark.timeout(60)


def _table_after(heading: str, text: str) -> list[list[str]]:
    """Rows (cells stripped, header and rule row dropped) of the first table under ``heading``."""
    section = text.split(f"\n{heading}\n", 1)[1]
    rows: list[list[str]] = []
    started = False
    for line in section.splitlines():
        if line.startswith("|"):
            started = True
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif started:
            break
    return rows[2:]


def documented_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    documented: dict[str, tuple[str, tuple[str, ...]]] = {}
    for name, kind, labels, meaning in _table_after("## Reference", DOC.read_text()):
        assert meaning, f"{name} has no meaning in docs/metrics.md"
        plain = name.strip("`")
        assert plain not in documented, f"{plain} documented twice"
        label_names = () if labels == "—" else tuple(s.strip() for s in labels.split(","))
        documented[plain] = (kind, label_names)
    return documented


def test_reference_table_matches_definitions() -> None:
    documented = documented_metrics()
    defined = {d.name: (d.type, d.labels) for d in metrics.describe_metrics()}
    assert sorted(set(defined) - set(documented)) == [], "defined but not documented"
    assert sorted(set(documented) - set(defined)) == [], "documented but not defined"
    for name, (kind, labels) in defined.items():
        assert documented[name][0] == kind, f"{name}: type"
        assert set(documented[name][1]) == set(labels), f"{name}: labels"


def test_reference_table_matches_a_live_exposition() -> None:
    """The sample process touches every metric; its /metrics must show exactly the table."""
    proc = start_helper("sample")
    try:
        text = scrape(int(read_line(proc)))
    finally:
        stop(proc)
    exposition = parse_exposition(text)
    documented = documented_metrics()
    assert set(exposition.types) == set(documented)
    for name, (kind, labels) in documented.items():
        assert exposition.types[name] == kind, name
        suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
        seen = {
            label
            for sample_name, sample_labels in exposition.samples
            if sample_name in {name + s for s in suffixes}
            for label, _ in sample_labels
        }
        assert seen - {"le"} == set(labels), f"{name}: exposed labels {seen}"


def test_documented_alerts_match_the_rules_file() -> None:
    documented = {row[0].strip("`") for row in _table_after("## Alerts", DOC.read_text())}
    shipped = set(re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), flags=re.M))
    assert documented == shipped


def test_documented_recording_rules_exist() -> None:
    text = DOC.read_text().split("Recording rules:", 1)[1]
    documented = set(re.findall(r"`(instance:[a-z0-9_:]+)`", text))
    shipped = set(re.findall(r"- record: (\S+)", RULES.read_text()))
    assert documented == shipped


def test_every_name_has_the_prefix_and_base_units() -> None:
    for described in metrics.describe_metrics():
        assert described.name.startswith("tls13proxy_")
        if described.type == "counter":
            assert described.name.endswith("_total")
        if described.type == "histogram":
            assert described.name.endswith("_seconds")
        assert not re.search(r"_(ms|milliseconds|kb|mb|minutes)(_|$)", described.name)
