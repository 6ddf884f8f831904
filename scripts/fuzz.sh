#!/usr/bin/env bash
# Fuzz every decoder that reads bytes from a socket or from disk, with cargo-fuzz
# (libFuzzer). Usage: scripts/fuzz.sh [seconds-per-target] [target...]
# Default: 60 s for each of kafka_request, record_batch, log_recovery, http_request, amqp_frame
# and eventstore_grpc.
# A target with a dictionary (fuzz/<target>.dict) gets it as libFuzzer's -dict.
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 lets the stable toolchain build
# them. Crashes land in fuzz/artifacts/<target>/; turn each into a regression test.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-60}"
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(kafka_request record_batch log_recovery http_request amqp_frame eventstore_grpc)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
cd "$repo/fuzz"
for target in "${targets[@]}"; do
    echo "==> fuzzing $target for ${seconds}s"
    dict=()
    if [[ -f "$target.dict" ]]; then
        dict=("-dict=$target.dict")
    fi
    RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$target" -- -max_total_time="$seconds" -rss_limit_mb=4096 "${dict[@]}"
done
