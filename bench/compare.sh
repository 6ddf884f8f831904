#!/usr/bin/env bash
# Herald against NATS JetStream, RabbitMQ and Redis Streams on the same workload: publish
# COUNT messages of 1 KiB with acknowledgements (SIZE, IN_FLIGHT unacknowledged at a
# time), then read them all back; one Markdown table at the end. What "equivalent" means
# for each system is in bench/README.md.
#
#   bench/compare.sh                       # installs the servers with apt-get if missing
#   COUNT=500000 bench/compare.sh
#   ONLY=amqp RUNS=3 bench/compare.sh      # just Herald's AMQP against RabbitMQ, and the disk
#   ONLY=amqp AMQP_IN_FLIGHT="64 256 1000" ACK_EVERY="1 100" RUNS=3 bench/compare.sh
#   ONLY=amqp CLIENT="awaited pipelined" bench/compare.sh
#
# The AMQP part drives Herald's AMQP listener (`herald-amqp`) and RabbitMQ with the same
# client (bench/compare, lapin): a durable queue, persistent messages, publisher
# confirms with AMQP_IN_FLIGHT (default IN_FLIGHT) unconfirmed, then basic.consume with
# basic.qos PREFETCH (default 1000) and manual acks: ACK_EVERY=1 is one basic.ack per
# message, N > 1 one ack with `multiple` every N. CLIENT=awaited (the default) awaits
# each basic_publish and each per-message basic.ack call before the next, as most
# lapin applications do; pipelined starts the next without waiting (still at most
# AMQP_IN_FLIGHT unconfirmed, PREFETCH unacked), which takes lapin's one-at-a-time
# handoff to its I/O thread out of the way. Each combination runs RUNS times
# (default 1), Herald and RabbitMQ one after the other, each pair just after fio has
# measured the disk's fsynced append rate (256 KiB writes, fdatasync after each, as
# bench/suite.sh does), so Herald's publish MB/s is also given as a share of it.
#
# Every server listens on 127.0.0.1 only, on its own port, with a temporary data
# directory, and is stopped on exit. Every step runs under `timeout`.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
count="${COUNT:-200000}"
size="${SIZE:-1024}"
in_flight="${IN_FLIGHT:-256}"
step_timeout_s="${STEP_TIMEOUT_S:-180}"
only="${ONLY:-}" # empty: every system; amqp: herald-amqp, rabbitmq and fio only
runs="${RUNS:-1}"
amqp_in_flight="${AMQP_IN_FLIGHT:-$in_flight}"
ack_every="${ACK_EVERY:-1 100}"
prefetch="${PREFETCH:-1000}"
client_modes="${CLIENT:-awaited}"
case "$only" in "" | amqp) ;; *) echo "ONLY is empty or amqp, not $only" >&2; exit 2 ;; esac
work="$(mktemp -d /tmp/herald-compare.XXXXXX)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n "${rabbit_env:-}" ]]; then
        # shellcheck disable=SC2086 # rabbit_env is a list of NAME=value words for env(1)
        env $rabbit_env timeout 30 rabbitmqctl -n "$rabbit_node" stop >/dev/null 2>&1 || true
        # The Erlang port mapper the node started, unless one ran before (another
        # node's, which must stay).
        if [[ "${epmd_was_running:-1}" == 0 ]]; then epmd -kill >/dev/null 2>&1 || true; fi
    fi
    rm -rf "$work"
}
trap cleanup EXIT

missing=()
if [[ -z "$only" ]]; then
    command -v nats-server >/dev/null || missing+=(nats-server)
    command -v redis-server >/dev/null || missing+=(redis-server)
fi
command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
command -v fio >/dev/null || missing+=(fio)
if ((${#missing[@]})); then
    echo "installing ${missing[*]} (apt-get)" >&2
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

herald="${HERALD_BIN:-}"
if [[ -z "$herald" ]]; then
    (cd "$repo" && cargo build --release -p herald --quiet)
    herald="${CARGO_TARGET_DIR:-$repo/target}/release/herald"
fi
compare_target="${CARGO_TARGET_DIR:-$repo/target}/compare"
(cd "$repo/bench/compare" && CARGO_TARGET_DIR="$compare_target" cargo build --release --quiet)
compare="$compare_target/release/herald-compare"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    return 1
}

# The disk's speed right now for what a group commit does (as bench/suite.sh measures
# it): appends of 256 KiB to a growing file, an fdatasync after each, in the directory
# the brokers write to. Prints MB/s (10^6 bytes, as the benchmarks' MB/s), or 0 without fio.
disk_now() {
    command -v fio >/dev/null 2>&1 || { echo 0; return 0; }
    mkdir -p "$work/fio"
    timeout 60 fio --name=now --directory="$work/fio" --rw=write --ioengine=sync --bs=256k \
        --size=128m --fdatasync=1 --fallocate=none --minimal 2>/dev/null |
        awk -F';' '{printf "%.1f\n", $48 * 1024 / 1e6}'
    rm -f "$work/fio"/now*
}

results="$work/results.jsonl"
: >"$results"

if [[ -z "$only" ]]; then
echo "== herald (flush=always, acks=all)" >&2
port="$(free_port)"
"$herald" serve --data-dir "$work/herald" --kafka-listen "127.0.0.1:$port" --flush always \
    --amqp-listen off --registry-listen off --eventstore-listen off \
    --http-listen "127.0.0.1:$(free_port)" >"$work/herald.log" 2>&1 &
pids+=($!)
wait_port "$port"
in_flight_requests=$(((in_flight * size + 65535) / 65536))
produce="$(timeout "$step_timeout_s" "$herald" bench produce --bootstrap "127.0.0.1:$port" --topic compare \
    --message-bytes "$size" --batch-bytes 65536 --in-flight "$((in_flight_requests < 1 ? 1 : in_flight_requests))" \
    --acks all --count "$count" --json --quiet)"
consume="$(timeout "$step_timeout_s" "$herald" bench consume --bootstrap "127.0.0.1:$port" --topic compare \
    --count "$count" --json --quiet)"
python3 -c '
import json, sys
p, c = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps({"system": "herald", "publish": {"records_per_sec": p["records_per_sec"],
    "mb_per_sec": p["mb_per_sec"], "p50_ms": p["latency"]["p50_ms"], "p99_ms": p["latency"]["p99_ms"],
    "note": "64 KiB batches"}, "consume": {"records": c["records"], "records_per_sec": c["records_per_sec"]}}))
' "$produce" "$consume" >>"$results"

echo "== nats-server JetStream (file storage)" >&2
port="$(free_port)"
nats-server -a 127.0.0.1 -p "$port" -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
pids+=($!)
wait_port "$port"
timeout "$step_timeout_s" "$compare" nats --url "nats://127.0.0.1:$port" --count "$count" --size "$size" \
    --in-flight "$in_flight" >>"$results"

echo "== redis-server Streams (appendonly, appendfsync always)" >&2
port="$(free_port)"
mkdir -p "$work/redis"
redis-server --bind 127.0.0.1 --port "$port" --dir "$work/redis" --appendonly yes \
    --appendfsync always --save '' >"$work/redis.log" 2>&1 &
pids+=($!)
wait_port "$port"
timeout "$step_timeout_s" "$compare" redis --url "redis://127.0.0.1:$port" --count "$count" --size "$size" \
    --in-flight "$in_flight" >>"$results"
fi

echo "== herald AMQP 0-9-1 (flush=always: fsync before the confirm)" >&2
amqp_port="$(free_port)"
herald_http="$(free_port)"
"$herald" serve --data-dir "$work/herald-amqp" --kafka-listen "127.0.0.1:$(free_port)" \
    --amqp-listen "127.0.0.1:$amqp_port" --http-listen "127.0.0.1:$herald_http" --flush always \
    --registry-listen off --eventstore-listen off \
    >"$work/herald-amqp.log" 2>&1 &
herald_amqp_pid=$!
pids+=("$herald_amqp_pid")
wait_port "$amqp_port"

echo "== rabbitmq-server (durable classic queue, persistent messages, publisher confirms)" >&2
port="$(free_port)"
rabbit_node="herald-compare-$$@localhost"
mkdir -p "$work/rabbitmq/home"
rabbit_env="HOME=$work/rabbitmq/home RABBITMQ_NODENAME=$rabbit_node RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
RABBITMQ_NODE_PORT=$port RABBITMQ_DIST_PORT=$(free_port) RABBITMQ_MNESIA_BASE=$work/rabbitmq/mnesia \
RABBITMQ_LOG_BASE=$work/rabbitmq/log RABBITMQ_ENABLED_PLUGINS_FILE=$work/rabbitmq/plugins \
ERL_EPMD_ADDRESS=127.0.0.1"
echo "[]." >"$work/rabbitmq/plugins"
# Debian's wrapper drops to the rabbitmq user when started as root.
if [[ "$(id -u)" == 0 ]] && id rabbitmq >/dev/null 2>&1; then
    chown -R rabbitmq:rabbitmq "$work/rabbitmq"
    chmod 755 "$work"
fi
epmd_was_running=1
epmd -names >/dev/null 2>&1 || epmd_was_running=0
# shellcheck disable=SC2086 # rabbit_env is a list of NAME=value words for env(1)
env $rabbit_env rabbitmq-server >"$work/rabbitmq.log" 2>&1 &
rabbit_pid=$!
pids+=("$rabbit_pid")
wait_port "$port"
# shellcheck disable=SC2086
timeout 60 env $rabbit_env rabbitmqctl -n "$rabbit_node" await_startup >/dev/null
rabbit_port="$port"

# One AMQP run: the compare line (which reads the broker's CPU time around each phase,
# its descendants' too: beam.smp runs under the rabbitmq-server wrapper), with the run's
# number, the load average and the disk figure measured just before, into results.
amqp_run() {
    local system="$1" url="$2" pid="$3" in_flight="$4" ack="$5" run="$6" disk="$7" send="$8" line
    local pipeline=()
    case "$send" in
        awaited) ;;
        pipelined) pipeline=(--pipeline) ;;
        *) echo "CLIENT holds awaited and/or pipelined, not $send" >&2; return 2 ;;
    esac
    line="$(timeout "$step_timeout_s" "$compare" rabbitmq --url "$url" --system "$system" --server-pid "$pid" \
        --queue "compare-$run-$in_flight-$ack-$send" --count "$count" --size "$size" --in-flight "$in_flight" \
        --ack-every "$ack" --prefetch "$prefetch" --timeout-secs "$step_timeout_s" "${pipeline[@]}")"
    python3 -c '
import json, os, sys
r = json.loads(sys.argv[1])
r.update(run=int(sys.argv[2]), disk_mb_per_sec=float(sys.argv[3]), load=os.getloadavg()[0])
print(json.dumps(r))' "$line" "$run" "$disk" >>"$results"
    echo "   $system: $line" >&2
}

echo "== AMQP: herald-amqp then rabbitmq; $runs run(s) x in flight {$amqp_in_flight} x ack every {$ack_every} x client {$client_modes}" >&2
for run in $(seq "$runs"); do
    for f in $amqp_in_flight; do
        for send in $client_modes; do
            for ack in $ack_every; do
                disk="$(disk_now)"
                echo "   run $run, in flight $f, $send client, ack every $ack: disk $disk MB/s," \
                    "load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
                amqp_run herald-amqp "amqp://guest:guest@127.0.0.1:$amqp_port/%2f" "$herald_amqp_pid" \
                    "$f" "$ack" "$run" "$disk" "$send"
                amqp_run rabbitmq "amqp://guest:guest@127.0.0.1:$rabbit_port/%2f" "$rabbit_pid" \
                    "$f" "$ack" "$run" "$disk" "$send"
            done
        done
    done
done
if [[ -n "${KEEP_RESULTS:-}" ]]; then cp "$results" "$KEEP_RESULTS"; fi

python3 - "$results" "$count" "$size" "$prefetch" "$in_flight" <<'EOF'
import json, os, statistics, sys
from collections import defaultdict
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
count, size, prefetch, in_flight = int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
durability = {
    "herald": "fsync before ack (flush=always, acks=all)",
    "nats": "JetStream file store; 2.9 fsyncs on its own timer, not per ack",
    "redis": "AOF, appendfsync always (fsync before reply)",
    "herald-amqp": "fsync before confirm (flush=always)",
    "rabbitmq": "durable queue, persistent messages, confirm after fsync",
}
med = statistics.median
amqp = [r for r in rows if "run" in r]
others = [r for r in rows if "run" not in r]
if others:
    # The AMQP systems too, as this table always had RabbitMQ: IN_FLIGHT unconfirmed, and
    # acks every 100 when that pattern ran (as before), medians over the runs.
    acks_run = {r["consume"]["ack_every"] for r in amqp if r["in_flight"] == in_flight}
    ack = 100 if 100 in acks_run else min(acks_run, default=None)
    send = "awaited" if any(r.get("client", "awaited") == "awaited" for r in amqp) else "pipelined"
    for system in ("herald-amqp", "rabbitmq"):
        rs = [r for r in amqp if r["system"] == system and r["in_flight"] == in_flight
              and r["consume"]["ack_every"] == ack and r.get("client", "awaited") == send]
        if rs:
            row = {"system": system, "publish": {}, "consume": {}}
            for phase, keys in (("publish", ("records_per_sec", "mb_per_sec", "p50_ms", "p99_ms")),
                                ("consume", ("records_per_sec",))):
                for key in keys:
                    row[phase][key] = med(r[phase][key] for r in rs)
            others.append(row)
    print(f"\n{count:,} messages of {size} bytes, published with acknowledgements, then read back:\n")
    print("| system | durability | publish msg/s | MB/s | ack p50 / p99 ms | consume msg/s |")
    print("|---|---|---|---|---|---|")
    for r in others:
        p, c = r["publish"], r["consume"]
        print(f"| {r['system']} | {durability[r['system']]} | {p['records_per_sec']:,.0f} | {p['mb_per_sec']:,.0f} | "
              f"{p['p50_ms']:.2f} / {p['p99_ms']:.2f} | {c['records_per_sec']:,.0f} |")
    if any(r["system"] in ("herald-amqp", "rabbitmq") for r in others):
        print(f"\nherald-amqp and rabbitmq: {in_flight} unconfirmed, {send} client, consumed with prefetch {prefetch} and "
              f"{'an ack per message' if ack == 1 else f'an ack with multiple every {ack}'}; the AMQP table below has "
              "every combination that ran.")
if not amqp:
    sys.exit()

groups = defaultdict(list)
for r in amqp:
    groups[(r["in_flight"], r.get("client", "awaited"), r["consume"]["ack_every"], r["system"])].append(r)
def rate(rs, phase):
    v = [r[phase]["records_per_sec"] for r in rs]
    return med(v), min(v), max(v)
def fmt(m, lo, hi, n):
    return f"{m:,.0f}" if n == 1 else f"{m:,.0f} ({lo:,.0f}-{hi:,.0f})"
def acks(ack):
    return "each" if ack == 1 else f"every {ack}, multiple"
runs = max(r["run"] for r in amqp)
print(f"\nAMQP 0-9-1, one client for both (lapin, bench/compare): {count:,} persistent messages of {size} bytes "
      f"to a durable queue with publisher confirms, then basic.consume with prefetch {prefetch} and manual "
      f"acks; {'median (range) of ' + str(runs) + ' runs' if runs > 1 else 'one run'}. herald-amqp: "
      f"flush=always, fsync before the confirm; rabbitmq: durable classic queue, confirm after fsync.\n")
print("| system | unconfirmed | client | acks | publish msg/s | MB/s | confirm p50 / p99 ms | consume+ack msg/s "
      "| CPU µs/msg publish: broker / client | CPU µs/msg consume: broker / client | disk MB/s / publish share |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for (f, send, ack, system), rs in sorted(groups.items(), key=lambda kv: (*kv[0][:3], kv[0][3] != "herald-amqp")):
    n = len(rs)
    disk = med(r["disk_mb_per_sec"] for r in rs)
    share = (f"{100 * med(r['publish']['mb_per_sec'] / r['disk_mb_per_sec'] for r in rs):.0f}%"
             if all(r["disk_mb_per_sec"] for r in rs) else "-")
    def cpu(phase, who):
        return med(r[phase][f"{who}_cpu_secs"] * 1e6 / r["count"] for r in rs)
    print(f"| {system} | {f} | {send} | {acks(ack)} | {fmt(*rate(rs, 'publish'), n)} | "
          f"{med(r['publish']['mb_per_sec'] for r in rs):,.1f} | "
          f"{med(r['publish']['p50_ms'] for r in rs):.2f} / {med(r['publish']['p99_ms'] for r in rs):.2f} | "
          f"{fmt(*rate(rs, 'consume'), n)} | {cpu('publish', 'server'):.0f} / {cpu('publish', 'client'):.0f} | "
          f"{cpu('consume', 'server'):.0f} / {cpu('consume', 'client'):.0f} | {disk:,.0f} / {share} |")
print("\n| unconfirmed | client | acks | herald-amqp / rabbitmq, publish | herald-amqp / rabbitmq, consume+ack |")
print("|---|---|---|---|---|")
for (f, send, ack) in sorted({k[:3] for k in groups}):
    h, b = groups.get((f, send, ack, "herald-amqp")), groups.get((f, send, ack, "rabbitmq"))
    if h and b:
        print(f"| {f} | {send} | {acks(ack)} | {rate(h, 'publish')[0] / rate(b, 'publish')[0]:.2f}x | "
              f"{rate(h, 'consume')[0] / rate(b, 'consume')[0]:.2f}x |")
loads = [r["load"] for r in amqp]
print(f"\nLoad average (1 min) during the AMQP runs: {min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} CPUs.")
EOF
