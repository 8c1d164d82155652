"""docs/configuration.md is generated from the schema and must be up to date."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from settings_helpers import MINIMAL, REPO, find, workspace

from proxy import settings as schema
from proxy.settings_reference import render_reference

DOC = REPO / "docs" / "configuration.md"


def test_reference_file_is_up_to_date() -> None:
    assert DOC.read_text() == render_reference(), (
        "docs/configuration.md is stale: run "
        "`python3 -m proxy.settings --reference > docs/configuration.md`"
    )


def test_module_entry_point_prints_the_reference() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy.settings", "--reference"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout == render_reference()


def test_every_setting_is_documented() -> None:
    text = render_reference()
    for cls in (
        schema.GlobalSettings,
        schema.LimitSettings,
        schema.MetricsSettings,
        schema.TLSSettings,
        schema.TicketSettings,
        schema.CertificateSettings,
        schema.ListenerSettings,
        schema.RouteSettings,
        schema.PoolSettings,
        schema.HealthCheckSettings,
    ):
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal") or "section" in f.metadata:
                continue
            assert f.metadata["doc"], f"{cls.__name__}.{f.name} has no doc"
            assert f"| `{schema.toml_key(f)}` |" in text, f"{cls.__name__}.{f.name} missing"


def test_reference_does_not_depend_on_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/somewhere/else")
    assert render_reference() == DOC.read_text()


def test_the_documented_example_message_is_real(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    text = MINIMAL.replace(
        'servers = ["127.0.0.1:8080"]', 'servers = ["127.0.0.1:8080", "app:http"]'
    )
    problem = find(ws.errors(text), "backends.app.servers[1]")
    assert f"backends.api.servers[1]: {problem.message}`" in DOC.read_text()
