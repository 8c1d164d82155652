"""Record-layer throughput: protect/unprotect MB/s with full 16 KiB records, per suite.

Run: python3 bench/engine_record.py [--mib 64]

Protect = ``RecordLayer.write(application_data)`` + ``take_output()`` of one
1 MiB write (fragmented into 16 KiB records); unprotect = ``receive()`` of that
wire data in 64 KiB reads + ``next_record()`` until drained.  Prints one row per suite.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tls13.record import APPLICATION_DATA, RecordLayer  # noqa: E402
from tls13.suites import SUITES  # noqa: E402

CHUNK = 1 << 20
READ_SIZE = 1 << 16


def bench_suite(code: int, total_mib: int) -> tuple[float, float]:
    """(protect MB/s, unprotect MB/s) for ``total_mib`` MiB of application data."""
    suite = SUITES[code]
    secret = os.urandom(suite.hash_len)
    writer, reader = RecordLayer(), RecordLayer()
    writer.set_write_key(suite, secret)
    reader.set_read_key(suite, secret)
    data = os.urandom(CHUNK)
    rounds = max(1, total_mib)
    wires = []
    start = time.perf_counter()
    for _ in range(rounds):
        writer.write(APPLICATION_DATA, data)
        wires.append(writer.take_output())
    protect = time.perf_counter() - start
    start = time.perf_counter()
    received = 0
    for wire in wires:
        view = memoryview(wire)
        for offset in range(0, len(view), READ_SIZE):  # as a socket would deliver it
            reader.receive(view[offset : offset + READ_SIZE])
            while (record := reader.next_record()) is not None:
                received += len(record[1])
    unprotect = time.perf_counter() - start
    assert received == rounds * CHUNK
    mb = rounds * CHUNK / 1e6
    return mb / protect, mb / unprotect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=64, help="MiB of data per suite")
    args = parser.parse_args()
    print(f"{'suite':32} {'protect MB/s':>14} {'unprotect MB/s':>16}")
    for code in SUITES:
        bench_suite(code, 2)  # warm up
        protect, unprotect = bench_suite(code, args.mib)
        print(f"{SUITES[code].name:32} {protect:14.0f} {unprotect:16.0f}")


if __name__ == "__main__":
    main()
