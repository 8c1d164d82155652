"""atheris target: run_record (see fuzz/targets.py and docs/fuzzing.md)."""

from driver import main

if __name__ == "__main__":
    main("run_record")
