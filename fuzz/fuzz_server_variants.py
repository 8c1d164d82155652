"""atheris target: run_server_variants (see fuzz/targets.py and docs/fuzzing.md)."""

from driver import main

if __name__ == "__main__":
    main("run_server_variants")
