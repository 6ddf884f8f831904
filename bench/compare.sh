#!/usr/bin/env bash
# Herald against NATS JetStream, RabbitMQ and Redis Streams on the same workload: publish
# COUNT messages of 1 KiB with acknowledgements (SIZE, IN_FLIGHT unacknowledged at a
# time), then read them all back; one Markdown table at the end. What "equivalent" means
# for each system is in bench/README.md.
#
#   bench/compare.sh                       # installs the servers with apt-get if missing
#   COUNT=500000 bench/compare.sh
#
# Every server listens on 127.0.0.1 only, on its own port, with a temporary data
# directory, and is stopped on exit. Every step runs under `timeout`.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
count="${COUNT:-200000}"
size="${SIZE:-1024}"
in_flight="${IN_FLIGHT:-256}"
step_timeout_s="${STEP_TIMEOUT_S:-180}"
work="$(mktemp -d /tmp/herald-compare.XXXXXX)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n "${rabbit_env:-}" ]]; then
        # shellcheck disable=SC2086 # rabbit_env is a list of NAME=value words for env(1)
        env $rabbit_env timeout 30 rabbitmqctl -n "$rabbit_node" stop >/dev/null 2>&1 || true
        # The Erlang port mapper the node started; it exits when no node is registered.
        epmd -kill >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

missing=()
command -v nats-server >/dev/null || missing+=(nats-server)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
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

results="$work/results.jsonl"
: >"$results"

echo "== herald (flush=always, acks=all)" >&2
port="$(free_port)"
"$herald" serve --data-dir "$work/herald" --kafka-listen "127.0.0.1:$port" --flush always \
    >"$work/herald.log" 2>&1 &
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
# shellcheck disable=SC2086 # rabbit_env is a list of NAME=value words for env(1)
env $rabbit_env rabbitmq-server >"$work/rabbitmq.log" 2>&1 &
pids+=($!)
wait_port "$port"
# shellcheck disable=SC2086
timeout 60 env $rabbit_env rabbitmqctl -n "$rabbit_node" await_startup >/dev/null
timeout "$step_timeout_s" "$compare" rabbitmq --url "amqp://guest:guest@127.0.0.1:$port/%2f" --count "$count" \
    --size "$size" --in-flight "$in_flight" >>"$results"

python3 - "$results" "$count" "$size" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
durability = {
    "herald": "fsync before ack (flush=always, acks=all)",
    "nats": "JetStream file store; 2.9 fsyncs on its own timer, not per ack",
    "redis": "AOF, appendfsync always (fsync before reply)",
    "rabbitmq": "durable queue, persistent messages, confirm after fsync",
}
print(f"\n{sys.argv[2]} messages of {sys.argv[3]} bytes, published with acknowledgements, then read back:\n")
print("| system | durability | publish msg/s | MB/s | ack p50 / p99 ms | consume msg/s |")
print("|---|---|---|---|---|---|")
for r in rows:
    p, c = r["publish"], r["consume"]
    print(f"| {r['system']} | {durability[r['system']]} | {p['records_per_sec']:,.0f} | {p['mb_per_sec']:,.0f} | "
          f"{p['p50_ms']:.2f} / {p['p99_ms']:.2f} | {c['records_per_sec']:,.0f} |")
EOF
