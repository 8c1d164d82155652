"""Profile our daemon under one load of the harness: CPU per unit and a py-spy summary.

Starts bench/backend.py and ``python3 -m proxy run`` (from ``--source``, default this tree)
with the harness's configuration, pins them like the harness (target on CPU 0, the rest on
CPU 1), runs one load while ``py-spy record -f raw`` samples the proxy, then prints the
proxy's CPU time per unit of work and the functions with the most samples (inclusive and
self).  Loads: ``new`` / ``reuse`` (openssl s_time, full / resumed handshakes + one GET),
``wrk`` (keep-alive GETs), ``down`` / ``up`` (256 MiB curl transfers).

Usage: ``python3 bench/profile.py new [--seconds 8] [--source DIR] [--no-spy] [--top 40]``
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_certs  # noqa: E402
import bench_load  # noqa: E402
import bench_targets  # noqa: E402

LOADS = ("new", "reuse", "wrk", "down", "up")
TRANSFER = 256 << 20


def process_cpu(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(load: str, port: int, seconds: int, workdir: Path) -> tuple[float, str, str, float]:
    """Run one load; returns (units of work, description, unit name, unit scale)."""
    if load in ("new", "reuse"):
        result = bench_load.run_s_time(port, load == "reuse", seconds, 4, "1")
        what = f"{result.connections} connections ({result.full} full, {result.resumed} resumed)"
        return result.connections, what, "ms/connection", 1e3
    if load == "wrk":
        wrk = bench_load.run_wrk(port, seconds, 32, "1")
        return wrk.requests, f"{wrk.requests} requests, {wrk.errors} errors", "us/request", 1e6
    upload = workdir / "upload.bin"
    if load == "up" and not upload.exists():
        upload.write_bytes(os.urandom(TRANSFER))
    moved, started, count = 0.0, time.monotonic(), 0
    while time.monotonic() - started < seconds:
        if load == "down":
            transfer = bench_load.curl_download(port, TRANSFER, "1")
        else:
            transfer = bench_load.curl_upload(port, upload, "1")
        if not transfer.ok:
            raise RuntimeError(f"transfer failed: {transfer.detail}")
        moved += transfer.transferred / 1e6
        count += 1
    return moved, f"{moved:.0f} MB in {count} transfers", "ms/MB", 1e3


def summarise(raw: Path, top: int) -> str:
    """Inclusive and self sample shares per function from py-spy's raw (collapsed) output."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    lines = [f"{total} samples; inclusive:"]
    lines += [f"{100 * n / total:5.1f}% {f}" for f, n in inclusive.most_common(top)]
    lines.append("self:")
    lines += [f"{100 * n / total:5.1f}% {f}" for f, n in own.most_common(top)]
    return "\n".join(lines)


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("load", choices=LOADS)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--no-spy", action="store_true", help="measure CPU only")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args(argv)
    spy = None if args.no_spy else shutil.which("py-spy")
    with tempfile.TemporaryDirectory(prefix="tls13-profile-") as tmp:
        workdir = Path(tmp)
        material = bench_certs.write_material(workdir)
        backend, backend_port = bench_targets.start_backend(workdir, "1")
        port = bench_targets.free_port()
        config = workdir / "proxy.toml"
        config.write_text(bench_targets.ours_config(material, workdir, port, backend_port, 1))
        command = bench_targets.pinned(
            [sys.executable, "-m", "proxy", "run", "--config", str(config)], "0"
        )
        with open(workdir / "proxy.log", "wb") as log:
            proxy = subprocess.Popen(
                command, cwd=args.source, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        sampler = None
        try:
            bench_targets.wait_for_port(port, proxy, 20)
            raw = workdir / "profile.txt"
            if spy is not None:
                sampler = subprocess.Popen(
                    [spy, "record", "-r", "200", "-f", "raw", "-o", str(raw), "-p", str(proxy.pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(0.5)
            cpu_before, started = process_cpu(proxy.pid), time.monotonic()
            units, what, unit, scale = run_load(args.load, port, args.seconds, workdir)
            used, wall = process_cpu(proxy.pid) - cpu_before, time.monotonic() - started
            print(f"{args.load}: {what}; proxy CPU {used:.2f} s in {wall:.1f} s wall")
            if units:
                print(f"proxy CPU per unit: {used / units * scale:.2f} {unit}")
            if sampler is not None:
                sampler.send_signal(signal.SIGINT)
                sampler.wait(30)
                sampler = None
                print(summarise(raw, args.top))
        finally:
            if sampler is not None:
                sampler.kill()
                sampler.wait()
            stop(proxy)
            stop(backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
