#!/usr/bin/env bash
# Crash-safety loop: kill -9 the broker at random moments under concurrent idempotent
# acks=all producers, a tailing consumer and synchronous offset commits; after every
# restart, check that every acknowledged record is at its offset byte for byte, nothing
# torn is served, offsets are dense, and no acknowledged commit was lost.
# (The checks are in tests/python/crash_support.py; CI runs 30 cycles via pytest.)
#
#   scripts/crash-test.sh                 # 200 cycles under flush = always
#   scripts/crash-test.sh --cycles 1000 --rate 300 --flush interval:100
#
# Needs the Python test clients in .venv (scripts/test.sh installs them).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

cycles=200
rate=500
flush=always
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cycles) cycles="$2"; shift 2 ;;
        --rate) rate="$2"; shift 2 ;;
        --flush) flush="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "error: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done

if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c 'import confluent_kafka, pytest_timeout' 2>/dev/null; then
    echo "error: .venv with the test clients is missing; run scripts/test.sh once (it installs them)" >&2
    exit 1
fi

cargo build --quiet --bin herald
export HERALD_BIN="${CARGO_TARGET_DIR:-$repo/target}/debug/herald"
export HERALD_CRASH_CYCLES="$cycles" HERALD_CRASH_RATE="$rate" HERALD_CRASH_FLUSH="$flush"

echo "crash loop: $cycles cycles, flush = $flush, ~$rate records/s over 3 producers, $(nproc) CPUs"
start=$(date +%s)
.venv/bin/python -m pytest tests/python/test_crash.py -q -s -p no:cacheprovider \
    -k test_crash_loop_from_the_script 2>&1 | grep -E "crash loop|cycle [0-9]+/|passed|failed|Error|assert" 
status=${PIPESTATUS[0]}
echo "wall time: $(( $(date +%s) - start ))s"
exit "$status"
