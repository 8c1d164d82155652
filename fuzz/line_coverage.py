"""Line coverage of tls13/ reached by replaying corpus directories (stdlib ``trace`` only).

    python3 fuzz/line_coverage.py server fuzz/corpus/server [more dirs...]

Prints covered/executable lines per engine module and in total; used for the
figures in docs/fuzzing.md (libFuzzer's "cov:" counts edges, not lines).
"""

from __future__ import annotations

import sys
import trace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ENGINE = ROOT / "tls13"


def replay(target_name: str, directories: list[str]) -> dict[tuple[str, int], int]:
    files = sorted(p for d in directories for p in Path(d).iterdir() if p.is_file())
    tracer = trace.Trace(count=1, trace=0)

    def run_all() -> None:
        # Imported under the tracer so that module-level lines count as executed.
        from fuzz import targets

        target = getattr(targets, f"run_{target_name}")
        for path in files:
            try:
                target(path.read_bytes())
            except targets.Crash as crash:
                print(f"CRASH {path}: {crash}", file=sys.stderr)

    tracer.runfunc(run_all)
    print(f"{len(files)} inputs replayed through run_{target_name}")
    return tracer.results().counts


def report(counts: dict[tuple[str, int], int]) -> None:
    hit: dict[str, set[int]] = {}
    for (filename, line), _ in counts.items():
        hit.setdefault(filename, set()).add(line)
    total_hit = total_lines = 0
    for module in sorted(ENGINE.glob("*.py")):
        executable = set(trace._find_executable_linenos(str(module)))  # type: ignore[attr-defined]
        covered = len(executable & hit.get(str(module), set()))
        total_hit += covered
        total_lines += len(executable)
        print(
            f"  {module.name:18} {covered:5}/{len(executable):5} {100 * covered / max(1, len(executable)):5.1f}%"
        )
    print(f"  {'total':18} {total_hit:5}/{total_lines:5} {100 * total_hit / total_lines:5.1f}%")


if __name__ == "__main__":
    report(replay(sys.argv[1], sys.argv[2:]))
