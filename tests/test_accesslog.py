"""Access log lines and the daemon's logging setup: formats, escaping, journald awareness."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.accesslog import (
    AccessLog,
    AccessRecord,
    StructuredFormatter,
    configure_logging,
    format_address,
    format_logfmt,
    logfmt_value,
    parse_level,
    rfc3339_utc,
    stream_is_journal,
)

FIXED_TIME = 1_767_323_045.678  # 2026-01-02T03:04:05.678Z


def sample_record(**changes: object) -> AccessRecord:
    record = AccessRecord(
        client="[2001:db8::1]:50000",
        listener="https",
        sni="www.example.com",
        alpn="h2",
        version="TLSv1.3",
        cipher="TLS_AES_128_GCM_SHA256",
        group="X25519MLKEM768",
        resumed=True,
        hello_retry=False,
        early_data=True,
        backend="10.0.0.5:8080",
        bytes_in=512,
        bytes_out=10240,
        duration=0.25,
        end="closed",
    )
    for key, value in changes.items():
        setattr(record, key, value)
    return record


def parse_logfmt(line: str) -> dict[str, str]:
    """A reference logfmt reader: shlex honours the quoting, then we undo our escapes."""
    pairs = {}
    for token in shlex.split(line, posix=True):
        key, _, value = token.partition("=")
        pairs[key] = value
    return pairs


def test_logfmt_line_has_every_field_in_order() -> None:
    log = AccessLog("logfmt", io.StringIO(), journal=False, clock=lambda: FIXED_TIME)
    line = log.render(sample_record())
    assert line == (
        "ts=2026-01-02T03:04:05.678Z event=access client=[2001:db8::1]:50000 listener=https "
        "sni=www.example.com alpn=h2 version=TLSv1.3 cipher=TLS_AES_128_GCM_SHA256 "
        "group=X25519MLKEM768 resumed=true hello_retry=false early_data=true "
        "backend=10.0.0.5:8080 bytes_in=512 bytes_out=10240 duration=0.250000 end=closed"
    )


def test_json_line_keeps_nulls_and_types() -> None:
    log = AccessLog("json", io.StringIO(), journal=False, clock=lambda: FIXED_TIME)
    line = log.render(sample_record(sni=None, error="tls alert"))
    data = json.loads(line)
    assert data["ts"] == "2026-01-02T03:04:05.678Z"
    assert data["sni"] is None and data["resumed"] is True and data["bytes_out"] == 10240
    assert data["duration"] == 0.25 and data["error"] == "tls alert"
    assert list(data)[:3] == ["ts", "event", "client"]
    assert "\n" not in line


def test_write_emits_one_flushed_line_per_record() -> None:
    stream = io.StringIO()
    log = AccessLog("text", stream, journal=False)
    log.write(sample_record())
    log.write(sample_record(end="timeout"))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].endswith("end=timeout")
    assert log.lines_written == 2


def test_hostile_values_cannot_forge_fields_or_lines() -> None:
    hostile = 'evil" end=closed\nts=1 x=\x1b[31m\\'
    log = AccessLog("logfmt", io.StringIO(), journal=False, clock=lambda: FIXED_TIME)
    line = log.render(sample_record(sni=hostile, end="tls_error"))
    assert "\n" not in line and "\x1b" not in line
    fields = parse_logfmt(line)
    assert fields["end"] == "tls_error"
    assert fields["sni"] == 'evil" end=closed\\nts=1 x=\\x1b[31m\\'
    json_line = AccessLog("json", io.StringIO(), journal=False).render(sample_record(sni=hostile))
    assert json.loads(json_line)["sni"] == hostile and "\n" not in json_line


@settings(deadline=None)
@given(st.text(max_size=60))
def test_logfmt_values_always_one_token(value: str) -> None:
    rendered = logfmt_value(value)
    assert "\n" not in rendered and "\r" not in rendered
    assert all(c.isprintable() for c in rendered)
    line = format_logfmt({"a": value, "b": "tail"})
    assert line.endswith(" b=tail")
    # A bare value has no spaces, quotes or '='; anything else is quoted.
    if " " in value or "=" in value or '"' in value or not value:
        assert rendered.startswith('"') and rendered.endswith('"')


def test_value_formatting() -> None:
    assert logfmt_value(True) == "true" and logfmt_value(0) == "0"
    assert logfmt_value(1.5) == "1.500000"
    assert logfmt_value("") == '""'
    assert logfmt_value("a\tb") == '"a\\tb"'
    assert logfmt_value("caf\u00e9") == '"caf\u00e9"'
    assert logfmt_value("\u200b") == '"\\u200b"'


def test_format_address() -> None:
    assert format_address(("192.0.2.1", 443)) == "192.0.2.1:443"
    assert format_address(("2001:db8::1", 443, 0, 0)) == "[2001:db8::1]:443"
    assert format_address("/run/sock") == "/run/sock"
    assert format_address(None) is None and format_address("") is None


def test_rfc3339() -> None:
    assert rfc3339_utc(FIXED_TIME) == "2026-01-02T03:04:05.678Z"
    assert rfc3339_utc(0) == "1970-01-01T00:00:00.000Z"


@pytest.mark.parametrize(
    "timestamp", [751155334.8799995, 1767322745.9999996, 1767322745.0005, -0.25, 1e9 + 0.999]
)
def test_rfc3339_rounds_like_datetime(timestamp: float) -> None:
    """The per-second cache must not change a single line: same rounding as datetime."""
    import datetime

    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)
    expected = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    assert rfc3339_utc(timestamp) == expected


@pytest.fixture
def journal_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[io.TextIOWrapper]:
    """A stream whose device:inode we advertise in $JOURNAL_STREAM, like systemd does."""
    path = tmp_path / "journal-stand-in"
    with open(path, "w+", encoding="utf-8") as handle:
        status = os.fstat(handle.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
        yield handle


def test_journal_stream_detection(journal_file: io.TextIOWrapper, tmp_path: Path) -> None:
    assert stream_is_journal(journal_file)
    with open(tmp_path / "other", "w", encoding="utf-8") as other:
        assert not stream_is_journal(other)
    assert not stream_is_journal(io.StringIO())


def test_journal_lines_have_priority_and_no_timestamp(journal_file: io.TextIOWrapper) -> None:
    log = AccessLog("logfmt", journal_file)
    assert log.journal and log.syslog_prefix
    log.write(sample_record())
    journal_file.seek(0)
    line = journal_file.read()
    assert line.startswith("<6>event=access ") and "ts=" not in line


def test_syslog_prefix_can_be_forced_off(journal_file: io.TextIOWrapper) -> None:
    assert (
        AccessLog("json", journal_file, syslog_prefix=False)
        .render(AccessRecord())
        .startswith('{"event":"access"')
    )


def test_broken_stream_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    stream.close()
    log = AccessLog("logfmt", stream, journal=False)
    log.write(sample_record())
    log.write(sample_record())
    assert caplog.text.count("access log stream failed") == 1
    assert log.lines_written == 0


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        AccessLog("xml")


def test_record_holds_no_secret_fields() -> None:
    names = set(AccessRecord().as_dict())
    assert not any(re.search(r"secret|key|psk|ticket|master", name) for name in names)


# --- logging setup ----------------------------------------------------------------------


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_logfmt_with_extras_and_exceptions() -> None:
    stream = io.StringIO()
    configure_logging("text", "debug", stream=stream)
    logger = logging.getLogger("proxy.test")
    logger.debug("listening on %s", "127.0.0.1:8443", extra={"listener": "https"})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("worker crashed", extra={"fields": {"worker": 2}})
    first, second = stream.getvalue().splitlines()
    assert re.match(r"ts=\S+Z level=debug logger=proxy\.test ", first)
    assert parse_logfmt(first)["msg"] == "listening on 127.0.0.1:8443"
    assert parse_logfmt(first)["listener"] == "https"
    fields = parse_logfmt(second)
    assert fields["level"] == "error" and fields["worker"] == "2"
    assert "RuntimeError: boom" in fields["exc"]


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_json_and_level_filtering() -> None:
    stream = io.StringIO()
    configure_logging("json", "warning", stream=stream)
    logging.getLogger("proxy.test").info("hidden")
    logging.getLogger("proxy.test").warning("shown")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert data["level"] == "warning" and data["msg"] == "shown" and data["logger"] == "proxy.test"


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_replaces_its_previous_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("text", "info", stream=first)
    configure_logging("json", "info", stream=second)
    logging.getLogger("proxy.test").info("once")
    assert first.getvalue() == "" and second.getvalue().count("once") == 1


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_under_journald(journal_file: io.TextIOWrapper) -> None:
    configure_logging("text", "info", stream=journal_file)
    logging.getLogger("proxy.test").warning("careful")
    logging.getLogger("proxy.test").error("bad")
    journal_file.seek(0)
    lines = journal_file.read().splitlines()
    assert lines[0].startswith("<4>level=warning ") and lines[1].startswith("<3>level=error ")


def test_structured_formatter_direct() -> None:
    record = logging.makeLogRecord({"name": "x", "levelno": 20, "levelname": "INFO", "msg": "m"})
    assert (
        StructuredFormatter("logfmt", journal=True).format(record) == "<6>level=info logger=x msg=m"
    )


def test_parse_level() -> None:
    assert parse_level("DEBUG") == logging.DEBUG and parse_level("info") == logging.INFO
    assert parse_level(25) == 25
    with pytest.raises(ValueError):
        parse_level("loud")
