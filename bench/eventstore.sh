#!/usr/bin/env bash
# The event store's targets (issue 13), measured: starts a release `herald serve`
# (flush = always, event store on) on a fresh data directory, measures the disk's fsync
# rate with fio the same minute, then runs `herald bench eventstore`:
#
#   1. appends: WRITERS writers, BATCH-event appends with exact expected revisions to
#      distinct streams, once per IN_FLIGHT value (appends each writer keeps going);
#      then a 1,000-event stream read READS times and a catch-up subscription to $all;
#   2. on a second fresh broker, STREAMS streams of EVENTS_PER_STREAM events: events/s,
#      data dir size (meta store with the index, and the log), broker RSS; then kill -9
#      during more appends and the start-up time after it (the log scanned, the index
#      caught up past its durable mark), a clean stop, and the start-up time after that.
#
#   bench/eventstore.sh                         # the issue's sizes
#   EVENTS=200000 STREAMS=100000 bench/eventstore.sh   # a quicker look
#
# Prints a Markdown table. Bounded: every step runs under `timeout`.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data_dir="${DATA_DIR:-$repo/target/bench-eventstore}"
events="${EVENTS:-1000000}"
writers="${WRITERS:-8}"
batch="${BATCH:-10}"
in_flights="${IN_FLIGHT:-1 4}"
reads="${READS:-200}"
streams="${STREAMS:-1000000}"
events_per_stream="${EVENTS_PER_STREAM:-5}"
step_timeout_s="${STEP_TIMEOUT_S:-900}"
start_timeout_s=300

herald="${HERALD_BIN:-}"
if [[ -z "$herald" ]]; then
    (cd "$repo" && cargo build --release -p herald --quiet)
    herald="${CARGO_TARGET_DIR:-$repo/target}/release/herald"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
rss_mb() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1000}' "/proc/$1/status"; }

rm -rf "$data_dir"
mkdir -p "$data_dir"
broker_pid=""
stop_broker() {
    if [[ -n "$broker_pid" ]]; then
        kill "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
        broker_pid=""
    fi
}
trap stop_broker EXIT

# Start herald on $1 (data dir) with the event store on $es_port; waits until the event
# store accepts connections (it binds after the log and the index are recovered) and
# sets broker_pid and start_ms (milliseconds from launch to accepting).
start_broker() {
    local dir="$1" t0
    t0="$(now_ms)"
    env -u HERALD_BIN "$herald" serve --data-dir "$dir" --kafka-listen "127.0.0.1:$kafka_port" --http-listen off \
        --amqp-listen off --registry-listen off --eventstore-listen "127.0.0.1:$es_port" \
        --flush always >>"$dir.log" 2>&1 &
    broker_pid=$!
    local deadline=$(($(now_ms) + start_timeout_s * 1000))
    until (exec 3<>"/dev/tcp/127.0.0.1/$es_port") 2>/dev/null; do
        if ! kill -0 "$broker_pid" 2>/dev/null; then
            echo "herald exited at start; see $dir.log" >&2
            tail -20 "$dir.log" >&2
            exit 1
        fi
        if (($(now_ms) > deadline)); then
            echo "herald did not accept on $es_port within ${start_timeout_s}s" >&2
            exit 1
        fi
        sleep 0.01
    done
    start_ms=$(($(now_ms) - t0))
}

bench() {
    timeout "$step_timeout_s" "$herald" bench eventstore --url "http://127.0.0.1:$es_port" --json \
        --broker-pid "$broker_pid" "$@"
}

# The disk now, as a group commit uses it: 4 KiB appends with an fdatasync after each
# (fsyncs/s), and 256 KiB ones (MB/s). This shared cloud volume's speed moves within
# minutes, so it is measured right before the appends.
disk_now() {
    command -v fio >/dev/null 2>&1 || { echo "fio missing"; return 0; }
    local dir="$data_dir/fio" small big
    mkdir -p "$dir"
    small="$(timeout 60 fio --name=small --directory="$dir" --rw=write --ioengine=sync --bs=4k --size=16m \
        --fdatasync=1 --fallocate=none --minimal 2>/dev/null | awk -F';' '{printf "%d", $49}')"
    big="$(timeout 60 fio --name=big --directory="$dir" --rw=write --ioengine=sync --bs=256k --size=128m \
        --fdatasync=1 --fallocate=none --minimal 2>/dev/null | awk -F';' '{printf "%d", $48/1024}')"
    rm -rf "$dir"
    echo "$small fsyncs/s (4 KiB writes), $big MB/s (256 KiB writes), fdatasync after each"
}

kafka_port="$(free_port)"
es_port="$(free_port)"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
echo "disk: $(disk_now)"
echo

phases="$data_dir/phases"
start_broker "$phases"
results=()
for in_flight in $in_flights; do
    results+=("$(bench --count "$events" --writers "$writers" --batch "$batch" --in-flight "$in_flight" \
        --reads "$reads" --read-events 1000)")
done
stop_broker

load="$data_dir/load"
start_broker "$load"
load_json="$(bench --streams "$streams" --events-per-stream "$events_per_stream" --writers "$writers" \
    --in-flight 4 --data-dir "$load")"
rss_after_load="$(rss_mb "$broker_pid")"
# kill -9 in the middle of appends (more streams on top of the load), so the start-up
# after it has a torn log tail to scan and up to a second of index to catch up.
bench --streams "$streams" --events-per-stream "$events_per_stream" --writers "$writers" \
    --in-flight 4 >/dev/null 2>&1 &
burst_pid=$!
sleep "${KILL_AFTER_S:-3}"
kill -9 "$broker_pid"
{ wait "$broker_pid"; } 2>/dev/null || true
wait "$burst_pid" 2>/dev/null || true
broker_pid=""
start_broker "$load"
start_after_kill_ms="$start_ms"
rss_after_kill_start="$(rss_mb "$broker_pid")"
t0="$(now_ms)"
stop_broker
stop_ms=$(($(now_ms) - t0))
start_broker "$load"
start_after_stop_ms="$start_ms"
rss_after_clean_start="$(rss_mb "$broker_pid")"
stop_broker
reindexed="$(grep -o -e 'indexed the event store.*' -e 'recovered partition log.*' "$load.log" | tail -3 || true)"

echo "load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
echo
printf '%s\n' "${results[@]}" | python3 -c '
import json, sys
rows = [json.loads(line) for line in sys.stdin if line.strip()]
print("| case | events/s | append p50 / p99 ms | 1,000-event read p50 / p99 ms | $all catch-up events/s |")
print("|---|---|---|---|---|")
for r in rows:
    a, rd, c = r["append"], r.get("read") or {}, r.get("catch_up_all") or {}
    lat = rd.get("latency") or {}
    print("| %d writers x %d in flight, %d-event appends, exact revisions, %s events | %s | %.2f / %.2f | %s | %s |" % (
        r["writers"], r["in_flight"], r["batch"], format(a["events"], ","), format(round(a["events_per_sec"]), ","),
        a["latency"]["p50_ms"], a["latency"]["p99_ms"],
        "%.2f / %.2f" % (lat["p50_ms"], lat["p99_ms"]) if lat else "-",
        format(round(c["events_per_sec"]), ",") if c else "-"))
'
echo
echo "$load_json" | START_KILL="$start_after_kill_ms" START_STOP="$start_after_stop_ms" STOP_MS="$stop_ms" \
    RSS_LOAD="$rss_after_load" RSS_KILL="$rss_after_kill_start" RSS_STOP="$rss_after_clean_start" \
    REINDEXED="$reindexed" python3 -c '
import json, os, sys
r = json.loads(sys.stdin.read())
a, d, e = r["append"], r["data_dir_bytes"], os.environ
mb = lambda b: "%.0f MB" % (b / 1e6)
print("| %s streams of %d events | |" % (format(r["streams"], ","), r["events_per_stream"]))
print("|---|---|")
print("| load: events/s (%d writers x %d in flight, one no-stream append per stream) | %s (append p50 %.2f ms, p99 %.2f ms) |" % (
    r["writers"], r["in_flight"], format(round(a["events_per_sec"]), ","), a["latency"]["p50_ms"], a["latency"]["p99_ms"]))
print("| meta store (stream index) on disk | %s (%s allocated) |" % (mb(d["meta_apparent"]), mb(d["meta_allocated"])))
print("| log and the rest on disk | %s (%s allocated) |" % (mb(d["log_apparent"]), mb(d["log_allocated"])))
rss = r.get("broker_rss_mb") or {}
print("| broker RSS: during the load max / after it | %.1f / %s MB |" % (rss.get("max", 0), e["RSS_LOAD"]))
print("| start-up after kill -9 (until the event store accepts) | %s ms, RSS then %s MB |" % (e["START_KILL"], e["RSS_KILL"]))
print("| clean stop (SIGTERM until exit) | %s ms |" % e["STOP_MS"])
print("| start-up after a clean stop | %s ms, RSS then %s MB |" % (e["START_STOP"], e["RSS_STOP"]))
if e["REINDEXED"]:
    print()
    print("the broker logged at its start-ups:")
    for line in e["REINDEXED"].splitlines():
        print("    " + line)
'
