"""atheris target: run_client_resumed (see fuzz/targets.py and docs/fuzzing.md)."""

from driver import main

if __name__ == "__main__":
    main("run_client_resumed")
