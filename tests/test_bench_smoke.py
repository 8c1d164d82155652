"""The benchmark harness works end to end (tiny run against the trio+ssl reference), and its
output parsers read what the real tools print.  No timing thresholds: figures vary by machine."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import bench_load  # noqa: E402
import bench_report  # noqa: E402


def test_s_time_marks_are_counted_per_connection() -> None:
    output = (
        "\n\nNow timing with session id reuse.\nstarting\nrrrr*r\n\n"
        "6 connections in 0.01s; 600.00 connections/user sec, bytes read 972\n"
        "6 connections in 2 real seconds, 162 bytes read per connection\n"
    )
    assert bench_load._parse_s_time(output) == (1, 5, 6, 972)


def test_s_time_failure_reports_nothing() -> None:
    assert bench_load._parse_s_time("Unable to get connection\n") == (0, 0, 0, 0)


def test_wrk_output_is_parsed_with_units_and_errors() -> None:
    text = """Running 2s test @ https://127.0.0.1:4433/
  1 threads and 20 connections
  Latency Distribution
     50%  812.00us
     75%    2.33ms
     90%    2.70ms
     99%    1.20s
  28749 requests in 3.00s, 4.58MB read
  Socket errors: connect 1, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:   9581.06
Transfer/sec:      1.53MB
"""
    result = bench_load.parse_wrk(text)
    assert result.requests_per_second == pytest.approx(9581.06)
    assert result.requests == 28749
    assert result.p50_ms == pytest.approx(0.812)
    assert result.p99_ms == pytest.approx(1200.0)
    assert result.errors == 10


def test_spread_is_range_over_median() -> None:
    assert bench_report.spread([90.0, 100.0, 120.0]) == pytest.approx(0.3)
    assert bench_report.median([1.0, float("nan"), 3.0]) == pytest.approx(2.0)


@pytest.mark.timeout(240)
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_quick_run_against_the_ssl_reference(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run.py"),
            "--quick",
            "--targets",
            "sslproxy",
            "--rounds",
            "1",
            "--duration",
            "1",
            "--hold",
            "20,60",
            "--out-dir",
            str(tmp_path),
        ],
        capture_output=True,
        timeout=220,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    (report_file,) = tmp_path.glob("run-*.json")
    (result,) = json.loads(report_file.read_text())["results"]
    assert result["name"] == "sslproxy" and result["error"] is None, result["error"]
    full = result["metrics"]["full_hs"][0]["extra"]
    assert full["full"] > 0 and full["resumed"] == 0  # -new really made full handshakes
    assert full["bytes_per_connection"] > 64  # and each one's GET was answered
    resumed = result["metrics"]["resumed_hs"][0]["extra"]
    assert resumed["resumed"] > 0  # and -reuse really resumed
    assert [row["established"] for row in result["memory"]] == [20, 60]
    assert result["scaling"]["w1"] and result["scaling"]["w2"]
    for rounds in result["scaling"].values():  # hsload's handshakes, each with its response
        assert rounds[0]["units"] > 0 and rounds[0]["extra"]["responses"] > 0
        assert rounds[0]["extra"]["generator_cpu_per_hs"] > 0  # the generator's cost shown
    # A missing client tool is reported as that metric's failure, never silently dropped.
    if shutil.which("wrk"):
        assert result["metrics"]["keepalive"][0]["units"] > 0
    else:
        assert "keepalive" in result["failures"]
    for metric in ("download", "upload"):
        if shutil.which("curl"):
            assert result["metrics"][metric][0]["units"] > 0
            assert result["metrics"][metric][0]["cpu_per_unit"] > 0  # the target's CPU seen
        else:
            assert metric in result["failures"]
    markdown = done.stdout.decode()
    for section in ("## Throughput and CPU per unit", "## Memory per idle", "## Scaling"):
        assert section in markdown


def test_memory_section_alone(tmp_path: Path) -> None:
    argv = [sys.executable, str(BENCH / "run.py"), "--only", "memory", "--targets", "sslproxy"]
    argv += ["--hold", "20", "--out-dir", str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    (report_file,) = tmp_path.glob("run-*.json")
    (result,) = json.loads(report_file.read_text())["results"]
    assert result["error"] is None, result["error"]
    assert [row["established"] for row in result["memory"]] == [20]
    assert not result["metrics"] and not result["scaling"]  # no load rounds, no scaling
    markdown = done.stdout.decode()
    assert "## Memory per idle" in markdown
    assert "## Throughput" not in markdown and "## Scaling" not in markdown
