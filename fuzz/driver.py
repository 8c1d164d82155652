"""Shared atheris entry point: instrument the engine, then fuzz one target.

Each fuzz_*.py script calls :func:`main` with the name of a target in
:mod:`fuzz.targets`.  libFuzzer flags pass through, e.g.::

    python3 fuzz/fuzz_server.py fuzz/corpus/server -max_total_time=240 \
        -artifact_prefix=fuzz/regressions/server/
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(target_name: str) -> None:
    # Only the fuzz drivers need atheris (it ships no type stubs); the regression tests do not.
    import atheris  # type: ignore[import-untyped]

    with atheris.instrument_imports(include=["tls13", "fuzz"]):
        from fuzz import targets

    target = getattr(targets, target_name)

    def test_one_input(data: bytes) -> None:
        target(data)  # targets.Crash (or anything but TLSError) stops the run

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
