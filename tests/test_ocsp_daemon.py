"""Issue 4 in the daemon: OCSP responses re-read from their files, staleness reported.

The daemon checks each certificate's ``ocsp`` file every ``ocsp_refresh_interval`` (1 s
here). A changed, valid response is stapled from the next connection on without SIGHUP;
an invalid file is logged once and the previous response stays; a response past its
nextUpdate is not stapled, ``tls13proxy_ocsp_staple_stale`` is 1 and one WARNING line says
so. ``openssl s_client -status`` is the client; the unit tests at the top drive
``proxy.tlsconfig.OcspWatcher`` directly.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from certs import Issued, make_leaf, write_pair
from conftest import free_port
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from interop_helpers import ocsp_response, utcnow
from metrics_helpers import child_env, parse_exposition, scrape
from proxy_helpers import ThreadedHTTP

from proxy import metrics
from proxy.settings import load_settings
from proxy.tlsconfig import OcspWatcher, load_chains, ocsp_problem

HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)
INTERVAL = 1.0
SLACK = 10.0  # a loaded 2-CPU machine: interval + this is the bound for a swap to show
STALE_WARNING = "not stapling it"
FILE_PROBLEM = "OCSP file not used"
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl missing")


# -- files ----------------------------------------------------------------------------------


@dataclass
class Site:
    root: Path
    ca: Issued
    leaf: Issued

    @property
    def ocsp_path(self) -> Path:
        return self.root / "site.ocsp"

    def response(self, this_update: datetime.datetime, next_update: datetime.datetime) -> bytes:
        return ocsp_response(self.ca, self.leaf, this_update, next_update)

    def fresh(self, hours_ago: int = 1) -> bytes:
        now = utcnow().replace(microsecond=0)
        return self.response(now - hours_ago * HOUR, now + DAY)

    def stale(self) -> bytes:
        now = utcnow().replace(microsecond=0)
        return self.response(now - 2 * DAY, now - DAY)

    def install(self, response: bytes) -> None:
        """Replace the file the way a fetcher should: write aside, rename over."""
        aside = self.root / "site.ocsp.new"
        aside.write_bytes(response)
        os.replace(aside, self.ocsp_path)


@pytest.fixture
def site(tmp_path: Path, test_ca: Issued) -> Site:
    leaf = make_leaf(test_ca, ("localhost", "127.0.0.1"))
    write_pair(tmp_path, "site", leaf, test_ca)
    (tmp_path / "ca.pem").write_bytes(test_ca.cert_pem())
    made = Site(tmp_path, test_ca, leaf)
    made.ocsp_path.write_bytes(made.fresh())
    return made


def config_text(site: Site, tls_port: int, metrics_port: int, app_port: int, workers: int) -> str:
    return f"""
[global]
state_dir = "{site.root / "state"}"
workers = {workers}
access_log = false
ocsp_refresh_interval = "{INTERVAL}s"

[metrics]
listen = "127.0.0.1:{metrics_port}"

[limits]
drain_timeout = 2.0

[certificates.site]
chain = "site.crt"
key = "site.key"
ocsp = "site.ocsp"

[listeners.public]
addresses = ["127.0.0.1:{tls_port}"]

[routes.main]
default = true
pool = "app"

[backends.app]
servers = ["127.0.0.1:{app_port}"]
health = {{ enabled = false }}
"""


# -- the watcher on its own -------------------------------------------------------------------


@pytest.fixture
def watcher_parts(site: Site) -> tuple[Site, OcspWatcher]:
    (site.root / "proxy.toml").write_text(config_text(site, free_port(), free_port(), 1, 1))
    settings = load_settings(site.root / "proxy.toml")
    return site, OcspWatcher(settings, load_chains(settings))


def test_ocsp_problem_names_what_is_wrong(site: Site, test_ca: Issued) -> None:
    now = utcnow()
    other = make_leaf(test_ca, ("other.example",))
    unsuccessful = ocsp.OCSPResponseBuilder.build_unsuccessful(
        ocsp.OCSPResponseStatus.TRY_LATER
    ).public_bytes(Encoding.DER)
    leaf = site.leaf.cert
    assert ocsp_problem(site.fresh(), leaf) is None
    assert ocsp_problem(site.stale(), leaf) is None  # stale is valid; it is reported, not refused
    assert ocsp_problem(b"junk", leaf) == "not a DER-encoded OCSP response"
    assert ocsp_problem(unsuccessful, leaf) == "OCSP response status is TRY_LATER"
    about_other = ocsp_response(test_ca, other, now - HOUR, now + HOUR)
    assert ocsp_problem(about_other, leaf) == "the OCSP response is about another certificate"


def test_watcher_swaps_a_changed_file_and_keeps_the_old_on_junk(
    watcher_parts: tuple[Site, OcspWatcher], caplog: pytest.LogCaptureFixture
) -> None:
    site, watcher = watcher_parts
    original = watcher.chains["site"]
    assert watcher.refresh() == []  # the first look finds what the load read
    newer = site.fresh(hours_ago=2)
    site.install(newer)
    assert watcher.refresh() == ["site"]
    assert watcher.chains["site"].ocsp_response == newer
    assert watcher.chains["site"].certificates == original.certificates
    caplog.set_level(logging.WARNING, logger="proxy.tlsconfig")
    site.install(b"junk")
    for _ in range(3):
        assert watcher.refresh() == []
    assert watcher.chains["site"].ocsp_response == newer
    assert caplog.text.count(FILE_PROBLEM) == 1  # logged once, not on every check
    site.ocsp_path.unlink()
    assert watcher.refresh() == []
    assert caplog.text.count("cannot read") == 1
    site.install(newer)  # the same bytes as served: nothing to swap
    assert watcher.refresh() == []


def test_watcher_reports_staleness_once(
    watcher_parts: tuple[Site, OcspWatcher], caplog: pytest.LogCaptureFixture
) -> None:
    site, watcher = watcher_parts
    caplog.set_level(logging.INFO, logger="proxy.tlsconfig")
    now = time.time()
    watcher.publish(now)
    assert metrics.M.ocsp_staple_stale.labels("site")._value.get() == 0
    site.install(site.stale())
    assert watcher.refresh() == ["site"]
    for _ in range(3):
        watcher.publish(now)
    assert metrics.M.ocsp_staple_stale.labels("site")._value.get() == 1
    assert caplog.text.count(STALE_WARNING) == 1
    # A later clock makes a fresh response stale too, without any file change.
    site.install(site.fresh())
    assert watcher.refresh() == ["site"]
    watcher.publish(now)
    assert "fresh again" in caplog.text
    watcher.publish(now + 2 * DAY.total_seconds())
    assert caplog.text.count(STALE_WARNING) == 2


def test_reverted_names_are_read_again(watcher_parts: tuple[Site, OcspWatcher]) -> None:
    site, watcher = watcher_parts
    served = dict(watcher.chains)
    newer = site.fresh(hours_ago=3)
    site.install(newer)
    assert watcher.refresh() == ["site"]
    watcher.revert(["site"], served)  # the caller could not install it
    assert watcher.chains["site"] is served["site"]
    assert watcher.refresh() == ["site"]  # tried again although the file did not change


# -- the daemon -----------------------------------------------------------------------------


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    log_path: Path
    tls_port: int
    metrics_port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stale_gauge(self) -> float | None:
        exposed = parse_exposition(scrape(self.metrics_port))
        return exposed.value("tls13proxy_ocsp_staple_stale", certificate="site")


def _wait_port(port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"proxy exited:\n{log_path.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"port {port} never opened:\n{log_path.read_text()[-3000:]}")


@pytest.fixture
def launch(site: Site) -> Iterator[Callable[[int], Daemon]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(workers: int) -> Daemon:
        tls_port, metrics_port = free_port(), free_port()
        config = site.root / "proxy.toml"
        config.write_text(config_text(site, tls_port, metrics_port, app.port, workers))
        log_path = site.root / "proxy.log"
        with log_path.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "proxy", "run", "--config", str(config)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=str(site.root),
                start_new_session=True,
            )
        started.append(process)
        _wait_port(tls_port, process, log_path)
        _wait_port(metrics_port, process, log_path)
        return Daemon(process, log_path, tls_port, metrics_port)

    with ThreadedHTTP("app") as app:
        try:
            yield start
        finally:
            for process in started:
                if process.poll() is None:
                    process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)


def s_client_status(site: Site, port: int) -> str:
    """What ``openssl s_client -status`` prints about the staple (it must verify us)."""
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3"]
    argv += ["-servername", "localhost", "-CAfile", str(site.root / "ca.pem")]
    argv += ["-verify_return_error", "-status"]
    run = subprocess.run(argv, input=b"", capture_output=True, timeout=30)
    out = run.stdout.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in out, out + run.stderr.decode(errors="replace")
    return out


def this_update(out: str) -> str | None:
    """The stapled response's thisUpdate as printed, or None when nothing was stapled."""
    if "OCSP response: no response sent" in out:
        return None
    found = re.search(r"This Update: (.+)", out)
    assert found is not None, out
    return found.group(1).strip()


def printed(moment: bytes) -> str:
    """thisUpdate of a response as s_client prints it ("Nov 22 08:00:00 2026 GMT")."""
    stamp = ocsp.load_der_ocsp_response(moment).this_update_utc
    return f"{stamp:%b} {stamp.day:2d} {stamp:%H:%M:%S %Y} GMT"


def wait_for(check: Callable[[], bool], what: str, daemon: Daemon) -> None:
    deadline = time.monotonic() + INTERVAL + SLACK
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen in time; log:\n{daemon.log()[-3000:]}")
        time.sleep(0.2)


@needs_openssl
@pytest.mark.timeout(120)
def test_changed_file_is_stapled_without_sighup(
    site: Site, launch: Callable[[int], Daemon]
) -> None:
    daemon = launch(1)
    first = site.ocsp_path.read_bytes()
    assert this_update(s_client_status(site, daemon.tls_port)) == printed(first)
    assert daemon.stale_gauge() == 0
    newer = site.fresh(hours_ago=5)
    site.install(newer)
    wait_for(
        lambda: this_update(s_client_status(site, daemon.tls_port)) == printed(newer),
        "the new staple",
        daemon,
    )
    assert "new OCSP response from" in daemon.log()
    assert "configuration reloaded" not in daemon.log()  # no SIGHUP, no full reload
    site.install(b"not an OCSP response")  # junk: logged once, the previous one stays
    wait_for(lambda: FILE_PROBLEM in daemon.log(), "the invalid-file warning", daemon)
    time.sleep(3 * INTERVAL)
    assert this_update(s_client_status(site, daemon.tls_port)) == printed(newer)
    assert daemon.log().count(FILE_PROBLEM) == 1


@needs_openssl
@pytest.mark.timeout(120)
def test_stale_response_is_not_stapled_and_reported_once(
    site: Site, launch: Callable[[int], Daemon]
) -> None:
    daemon = launch(1)
    assert this_update(s_client_status(site, daemon.tls_port)) is not None
    site.install(site.stale())
    wait_for(lambda: this_update(s_client_status(site, daemon.tls_port)) is None, "", daemon)
    out = s_client_status(site, daemon.tls_port)
    assert "OCSP response: no response sent" in out
    wait_for(lambda: daemon.stale_gauge() == 1, "stale gauge 1", daemon)
    daemon.process.send_signal(signal.SIGHUP)  # a reload re-reads it: still stale, not news
    wait_for(lambda: "configuration reloaded" in daemon.log(), "the reload", daemon)
    time.sleep(3 * INTERVAL)  # several more checks: still one warning
    assert daemon.stale_gauge() == 1
    warnings = [line for line in daemon.log().splitlines() if STALE_WARNING in line]
    assert len(warnings) == 1, daemon.log()
    assert "level=warning" in warnings[0] and "certificate site:" in warnings[0]
    assert re.search(r"past its nextUpdate \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", warnings[0])
    fresh = site.fresh(hours_ago=2)
    site.install(fresh)
    wait_for(lambda: daemon.stale_gauge() == 0, "stale gauge back to 0", daemon)
    assert this_update(s_client_status(site, daemon.tls_port)) == printed(fresh)


@needs_openssl
@pytest.mark.timeout(180)
def test_workers_each_swap_and_the_parent_reports_once(
    site: Site, launch: Callable[[int], Daemon]
) -> None:
    daemon = launch(2)
    newer = site.fresh(hours_ago=6)
    site.install(newer)

    def all_new() -> bool:  # SO_REUSEPORT spreads these over both workers
        return all(
            this_update(s_client_status(site, daemon.tls_port)) == printed(newer) for _ in range(8)
        )

    wait_for(all_new, "the new staple from every worker", daemon)
    site.install(site.stale())
    wait_for(lambda: daemon.stale_gauge() == 1, "stale gauge 1", daemon)
    wait_for(
        lambda: all(this_update(s_client_status(site, daemon.tls_port)) is None for _ in range(8)),
        "no staple from any worker",
        daemon,
    )
    time.sleep(3 * INTERVAL)
    assert daemon.log().count(STALE_WARNING) == 1, daemon.log()
