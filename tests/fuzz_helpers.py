"""Access to the fuzz targets and their corpus/regression files from the test suite."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fuzz import targets  # noqa: E402

FUZZ_DIR = ROOT / "fuzz"
TARGETS: dict[str, Callable[[bytes], object]] = {
    "server": targets.run_server,
    "server_variants": targets.run_server_variants,
    "client": targets.run_client,
    "client_resumed": targets.run_client_resumed,
    "record": targets.run_record,
}
# Inputs of findings not fixed yet live in fuzz/open/<target>/ (not replayed here):
# they are listed in docs/fuzzing.md and move to fuzz/regressions/ with the fix.


def input_files(target: str) -> list[Path]:
    """Every corpus and regression file of ``target`` (sorted, hidden files skipped)."""
    found: list[Path] = []
    for directory in (FUZZ_DIR / "corpus" / target, FUZZ_DIR / "regressions" / target):
        if directory.is_dir():
            found += [p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted(found)
