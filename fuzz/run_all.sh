#!/bin/sh
# Fuzz every target for a fixed time; logs go to fuzz/logs/, crashes to fuzz/regressions/<target>/.
# Usage: [TARGETS="server client"] fuzz/run_all.sh [seconds-per-target]   (default 200; new inputs
# go to fuzz/work/<target>, which git ignores: see docs/fuzzing.md)
set -eu
cd "$(dirname "$0")/.."
seconds="${1:-200}"
mkdir -p fuzz/logs
for target in ${TARGETS:-server server_variants client client_resumed record}; do
    work="fuzz/work/$target"
    mkdir -p "$work" "fuzz/regressions/$target"
    python3 "fuzz/fuzz_$target.py" "$work" "fuzz/corpus/$target" \
        -max_total_time="$seconds" -print_final_stats=1 -max_len=8192 -timeout=20 \
        -rss_limit_mb=4096 -artifact_prefix="fuzz/regressions/$target/" \
        >"fuzz/logs/$target.log" 2>&1 || echo "$target: stopped with status $?"
done
