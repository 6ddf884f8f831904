#!/usr/bin/env bash
# The README's performance table: starts a release `herald serve` (flush = always) on a
# fresh data directory, runs each `herald bench` case RUNS times, and prints a Markdown
# table of medians. Also measures the machine's own limits the same minute: the disk
# (fio, with and without fdatasync) and loopback TCP (iperf3), when those tools exist.
#
#   bench/suite.sh                    # 3 runs per case, data under ./target/bench-data
#   RUNS=5 DATA_DIR=/mnt/fast bench/suite.sh
#
# Bounded: each case is a fixed record count, and every command runs under `timeout`.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs="${RUNS:-3}"
data_dir="${DATA_DIR:-$repo/target/bench-data}"
port="${PORT:-19392}"
case_timeout_s=120

herald="${HERALD_BIN:-}"
if [[ -z "$herald" ]]; then
    (cd "$repo" && cargo build --release -p herald --quiet)
    herald="${CARGO_TARGET_DIR:-$repo/target}/release/herald"
fi

rm -rf "$data_dir"
mkdir -p "$data_dir"
"$herald" serve --data-dir "$data_dir/herald" --kafka-listen "127.0.0.1:$port" \
    --registry-listen off --eventstore-listen off \
    --flush always >"$data_dir/herald.log" 2>&1 &
broker_pid=$!
trap 'kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
done

bench() { timeout "$case_timeout_s" "$herald" bench --bootstrap "127.0.0.1:$port" --json "$@"; }

# The disk's speed right now for what a group commit does: appends to a growing file
# (no fallocate, as a segment grows) of 256 KiB, an fdatasync after each. This shared
# cloud volume's speed changes threefold within an hour, so each produce run is paired
# with a measurement taken just before it. Prints MB/s, or nothing without fio.
fio_dir="$data_dir/fio"
disk_now() {
    command -v fio >/dev/null 2>&1 || return 0
    mkdir -p "$fio_dir"
    timeout 60 fio --name=now --directory="$fio_dir" --rw=write --ioengine=sync --bs=256k \
        --size=128m --fdatasync=1 --fallocate=none --minimal 2>/dev/null | awk -F';' '{print $48/1024}'
    rm -f "$fio_dir"/now*
}

# One case: RUNS runs on fresh topics; prints a table row of medians.
run_case() {
    local label="$1" mode="$2"
    shift 2
    local results=() disk=()
    for run in $(seq "$runs"); do
        if [[ "$mode" == consume ]]; then
            results+=("$(bench consume "$@")")
        else
            disk+=("$(disk_now)")
            results+=("$(bench "$mode" --topic "suite-$RANDOM-$run" "$@")")
        fi
    done
    printf '%s\n' "${results[@]}" | DISK_MBS="${disk[*]}" python3 -c "$median_row" "$label"
}

# Reads one `herald bench --json` object per line; prints the medians as a table row,
# with each run's MB/s as a share of the disk measured just before it.
median_row='
import json, os, statistics, sys
rows = [json.loads(line) for line in sys.stdin if line.strip()]
disk = [float(d) for d in os.environ.get("DISK_MBS", "").split()]
def med(key):
    return statistics.median(r[key] for r in rows)
def lat(key):
    if not rows[0].get("latency"):
        return ""
    return "%.2f" % statistics.median(r["latency"][key] for r in rows)
rates = [r["records_per_sec"] for r in rows]
share = ""
if disk and len(disk) == len(rows) and all(disk):
    share = "%d / %d%%" % (statistics.median(disk),
                           100 * statistics.median(r["mb_per_sec"] / d for r, d in zip(rows, disk)))
print("| %s | %s | %s | %s / %s / %s | %s-%s | %s |" % (
    sys.argv[1], format(round(med("records_per_sec")), ","), format(round(med("mb_per_sec")), ","),
    lat("p50_ms"), lat("p99_ms"), lat("p99.9_ms"),
    format(round(min(rates)), ","), format(round(max(rates)), ","), share))
'


echo "| case (1 KiB records, acks=all, flush=always; median of $runs) | records/s | MB/s | ack p50 / p99 / p99.9 ms | range records/s | disk MB/s just before / Herald's share |"
echo "|---|---|---|---|---|---|"
run_case "produce 1 producer, 1 partition, 64 KiB batches, 5 in flight" produce \
    --partitions 1 --producers 1 --batch-bytes 65536 --in-flight 5 --count 1000000
run_case "produce 1 producer, 1 partition, 64 KiB batches, 8 in flight" produce \
    --partitions 1 --producers 1 --batch-bytes 65536 --in-flight 8 --count 1000000
run_case "produce 4 producers, 8 partitions, 64 KiB batches, 1 MiB requests (8 batches), 5 in flight each" produce \
    --partitions 8 --producers 4 --batch-bytes 65536 --in-flight 5 --count 2000000
run_case "produce 4 producers, 8 partitions, one 64 KiB batch per request, 8 in flight each" produce \
    --partitions 8 --producers 4 --batch-bytes 65536 --max-request-bytes 65536 --in-flight 8 --count 2000000
# A warm log to read: one topic per shape, written once.
bench produce --topic suite-read-1 --partitions 1 --in-flight 8 --count 1000000 >/dev/null
bench produce --topic suite-read-8 --partitions 8 --producers 4 --in-flight 8 --count 2000000 >/dev/null
run_case "consume 1 partition (1 MiB per partition fetch)" consume --topic suite-read-1 --count 1000000
run_case "consume 8 partitions (1 MiB per partition fetch)" consume --topic suite-read-8 --count 2000000

echo
echo "Machine limits measured now:"
if command -v fio >/dev/null 2>&1; then
    mkdir -p "$fio_dir"
    fio_case() {
        local label="$1"
        shift
        timeout "$case_timeout_s" fio --name=limit --directory="$fio_dir" --rw=write --ioengine=sync \
            --minimal "$@" 2>/dev/null | awk -F';' -v label="$label" '{printf "- disk, %s: %d MB/s\n", label, $48/1024}'
        rm -f "$fio_dir"/limit*
    }
    fio_case "64 KiB writes, fdatasync after each" --bs=64k --size=1g --fdatasync=1
    fio_case "512 KiB writes, fdatasync after each" --bs=512k --size=1g --fdatasync=1
    fio_case "1 MiB writes, one fsync at the end" --bs=1m --size=2g --end_fsync=1
    fio_case "8 files at once, 64 KiB writes, fdatasync every 2 (all files together)" \
        --bs=64k --size=256m --numjobs=8 --group_reporting --fdatasync=2
else
    echo "- disk: fio not installed (apt-get install fio)"
fi
if command -v iperf3 >/dev/null 2>&1; then
    iperf3 -s -B 127.0.0.1 -p $((port + 1)) -1 >/dev/null 2>&1 &
    sleep 0.5
    timeout 30 iperf3 -c 127.0.0.1 -p $((port + 1)) -t 5 -J 2>/dev/null | python3 -c '
import json, sys
bps = json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]
print(f"- loopback TCP (iperf3, one stream): {bps / 8e6:,.0f} MB/s")'
else
    echo "- loopback: iperf3 not installed (apt-get install iperf3)"
fi
