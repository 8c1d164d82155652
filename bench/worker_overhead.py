"""Our daemon's CPU per handshake: single process vs supervisor + 1 worker vs + 2 workers.

    python3 bench/worker_overhead.py [--rounds 5] [--duration 5] [--concurrency 32] [--metrics]

Why: the scaling section (bench/run.py --only scaling) showed worker mode costing more CPU
per handshake than the single process.  Comparing ``workers = 1`` run as a supervisor with
one worker (which ``tls13-proxy run`` never does: it serves in-process) against the single
process separates per-process machinery from contention between two workers.

All three daemons run at once in front of one bench/light_backend.py, so their rounds
interleave within the same minutes; each round drives one of them with bench/hsload.py and
charges it the CPU (utime + stime) of its whole process tree over that round.  Medians of
the CPU per handshake are printed, with every round's figures, as JSON and a short table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import bench_certs
import bench_procstat as procstat
from bench_targets import (
    REPO_DIR,
    Running,
    free_port,
    ours_config,
    raise_nofile_limit,
    start_backend,
    wait_for_port,
)

BENCH_DIR = Path(__file__).resolve().parent

# Supervisor + workers for any worker count (tls13-proxy itself serves in-process at 1).
SUPERVISE = """\
import sys
from pathlib import Path
from proxy.accesslog import configure_logging
from proxy.cli import load
from proxy.daemon import raise_file_limit, remember_early_signals
from proxy.workers import supervise
early = remember_early_signals()
settings = load(Path(sys.argv[1]), None)
configure_logging(settings.global_.log_format, settings.global_.log_level)
raise_file_limit(2 * settings.limits.max_connections + 64)
raise SystemExit(supervise(settings, Path(sys.argv[1]), early))
"""


@dataclass
class Mode:
    """One daemon under test and its rounds' CPU per handshake (seconds)."""

    name: str
    workers: int
    supervised: bool
    source: Path = REPO_DIR  # the tree whose code runs (--compare adds another)
    cpu_per_handshake: list[float] = field(default_factory=list)
    root_cpu_per_handshake: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)


def start(mode: Mode, workdir: Path, backend_port: int, metrics: bool) -> Running:
    material = bench_certs.write_material(workdir)
    port = free_port()
    text = ours_config(material, workdir, port, backend_port, mode.workers)
    if metrics:
        text = text.replace(
            "[metrics]\nenabled = false",
            f'[metrics]\nenabled = true\nlisten = "127.0.0.1:{free_port()}"',
        )
    config = workdir / f"{mode.name}.toml"
    config.write_text(text)
    if mode.supervised:
        command = [sys.executable, "-c", SUPERVISE, str(config)]
    else:
        command = [sys.executable, "-m", "proxy", "run", "--config", str(config)]
    log = workdir / f"{mode.name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=mode.source,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=raise_nofile_limit,
        )
    wait_for_port(port, proc, timeout=30)
    return Running(mode.name, port, proc, log, mode.workers)


def one_round(running: Running, duration: float, concurrency: int) -> tuple[float, float, float]:
    """CPU seconds per handshake of the whole tree and of its root process alone, and
    handshakes/s, of one hsload run against ``running`` (its processes from before the run)."""
    load = subprocess.Popen(
        [
            sys.executable,
            str(BENCH_DIR / "hsload.py"),
            "--port",
            str(running.port),
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration),
            "--wait-for-go",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert load.stdin is not None and load.stdout is not None
    load.stdout.readline()  # "ready"
    pids = procstat.process_tree(running.proc.pid)
    before = [procstat.cpu_seconds([pid]) for pid in pids]
    load.stdin.write("go\n")
    load.stdin.flush()
    report = json.loads(load.stdout.readline())
    after = [procstat.cpu_seconds([pid]) for pid in pids]
    load.wait()
    handshakes = report["handshakes"]
    spent = [end - start for start, end in zip(before, after, strict=True)]
    return sum(spent) / handshakes, spent[0] / handshakes, report["handshakes_per_second"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--metrics", action="store_true", help="metrics endpoint enabled")
    parser.add_argument("--modes", default="single,w1,w2")
    parser.add_argument(
        "--compare",
        type=Path,
        help="another source tree (e.g. a `git archive` of the commit before a change): "
        "each mode also runs from it, interleaved with this tree's",
    )
    args = parser.parse_args()
    shapes = {"single": (1, False), "w1": (1, True), "w2": (2, True)}
    modes = []
    for name in args.modes.split(","):
        workers, supervised = shapes[name]
        if args.compare is not None:
            modes.append(Mode(f"{name}@compare", workers, supervised, args.compare.resolve()))
        modes.append(Mode(name, workers, supervised))
    with tempfile.TemporaryDirectory(prefix="worker-overhead-") as tmp:
        workdir = Path(tmp)
        backend, backend_port = start_backend(workdir, None, "light_backend.py")
        started: list[tuple[Mode, Running]] = []
        try:
            for mode in modes:
                started.append((mode, start(mode, workdir, backend_port, args.metrics)))
            for _ in range(args.rounds):
                for mode, running in started:
                    cpu, root_cpu, rate = one_round(running, args.duration, args.concurrency)
                    mode.cpu_per_handshake.append(cpu)
                    mode.root_cpu_per_handshake.append(root_cpu)
                    mode.rates.append(rate)
                    print(
                        f"{mode.name}: {cpu * 1e3:.3f} ms/hs (root {root_cpu * 1e3:.3f}), "
                        f"{rate:.0f} hs/s",
                        file=sys.stderr,
                    )
        finally:
            for _, running in started:
                running.stop()
            backend.terminate()
            backend.wait()
    summary = {
        mode.name: {
            "median_ms_per_handshake": round(statistics.median(mode.cpu_per_handshake) * 1e3, 3),
            "median_root_ms_per_handshake": round(
                statistics.median(mode.root_cpu_per_handshake) * 1e3, 3
            ),
            "median_handshakes_per_s": round(statistics.median(mode.rates)),
            "rounds_ms": [round(cpu * 1e3, 3) for cpu in mode.cpu_per_handshake],
        }
        for mode in modes
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    os.chdir(REPO_DIR)
    raise SystemExit(main())
