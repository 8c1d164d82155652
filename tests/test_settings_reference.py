"""docs/configuration.md is generated from the schema and must be up to date."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from settings_helpers import REPO

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
