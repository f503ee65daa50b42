#!/usr/bin/env bash
# greyrouter against two references, one after another on this machine with the same client:
#   floor           greyrouter-load floor-server: a no-op Router/Route (fixed answer), the cost
#                   of gRPC itself;
#   memory          greyrouter serve --store memory: the embedded store, in memory only;
#   memory-batch    the same server, RouteBatch calls of BATCH_SIZE (100) requests each;
#   memory-sdk      the same server followed by the SDK (greyrouter-client): one worker making
#                   local decisions (`--rpc sdk`), no call per decision;
#   memory-metrics  greyrouter serve --store memory --http-addr ...: the same with metrics
#                   recorded and /metrics scraped every second, against the "memory" server
#                   (no HTTP listener, so it records none) kept running beside it: the two are
#                   measured in turn (alternating which goes first), METRICS_ROUNDS (3)
#                   times each, so drift hits both;
#   durable         greyrouter serve: the default embedded store, kept on disk (its data
#                   directory in a temporary directory);
#   redis           greyrouter serve --store redis://... on a private redis-server;
#   seed-design     greyrouter-load seed-design-server: the original design's per-request Lua
#                   script (EVALSHA) on the same private redis-server.
# Every setup holds 10,000 tenants x 20 services x 4 instances. The server (and Redis) run on
# core 0, the generator (`--threads 1`) on core 1, when taskset and 2 cores are available.
# Prints one table (calls/s, decisions/s, latency p50/p99/p99.9 per call, failed decisions,
# generator cores) and the ratios of greyrouter on memory to floor and to seed-design, and of
# RouteBatch decisions/s to seed-design req/s, of SDK decisions/s to Route req/s, and of
# Route calls/s with metrics on to off; nothing
# else on stdout. Exits 1 if any decision
# failed (the table, with the error codes, is printed first).
#
# Usage (from the repository root): load-tests/compare.sh
# Settings (environment): DURATION (10s), WARMUP (2s), CONCURRENCY (64), CONNECTIONS (4),
# TENANTS (10000), SERVICES (20), INSTANCES (4), BATCH_SIZE (100), METRICS_ROUNDS (3), BIN_DIR
# (build here when unset).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/greyrouter/target}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONCURRENCY="${CONCURRENCY:-64}"
CONNECTIONS="${CONNECTIONS:-4}"
TENANTS="${TENANTS:-10000}"
SERVICES="${SERVICES:-20}"
INSTANCES="${INSTANCES:-4}"
BATCH_SIZE="${BATCH_SIZE:-100}"
METRICS_ROUNDS="${METRICS_ROUNDS:-3}"

# BIN_DIR: take greyrouter and greyrouter-load from there instead of building them (to compare
# two builds of the product side by side, e.g. before and after a change).
if [ -n "${BIN_DIR:-}" ]; then
  bin="$BIN_DIR"
else
  cargo build --release --locked -q -p greyrouter -p greyrouter-load >&2
  bin="$CARGO_TARGET_DIR/release"
fi

work=$(mktemp -d)
server_pid=""
redis_pid=""
off_pid=""
scraper_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
cleanup() {
  stop_server
  for pid in $off_pid $scraper_pid; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "$redis_pid" ]; then
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pin_server=()
pin_client=()
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
  pin_server=(taskset -c 0)
  pin_client=(taskset -c 1)
fi

# A private Redis on a free loopback port (never the machine's 6379), no persistence.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${pin_server[@]}" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$work" >"$work/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 1 100); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis-cli -p "$port" ping >/dev/null 2>&1 || { cat "$work/redis.log" >&2; echo "compare: redis-server did not start" >&2; exit 1; }

# start NAME COMMAND...: starts a server on core 0 and sets $addr from its "listening on" line.
start() {
  local name=$1
  shift
  "${pin_server[@]}" "$@" >"$work/$name.out" 2>"$work/$name.err" &
  server_pid=$!
  addr=""
  for _ in $(seq 1 600); do
    addr=$(sed -n '/http listening on/!s/^.*listening on //p' "$work/$name.out")
    http_addr=$(sed -n 's/^.*http listening on //p' "$work/$name.out")
    [ -n "$addr" ] && return 0
    if ! kill -0 "$server_pid" 2>/dev/null; then
      cat "$work/$name.err" >&2
      echo "compare: $name did not start" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "compare: $name did not listen within 60 s" >&2
  exit 1
}

# seed NAME [FLAGS]: seeds $addr through Admin.
seed() {
  local name=$1
  shift
  "$bin/greyrouter-load" seed --target "http://$addr" --tenants "$TENANTS" --services "$SERVICES" \
    --instances "$INSTANCES" "$@" >"$work/$name.seed" 2>&1 || { cat "$work/$name.seed" >&2; exit 1; }
}

# measure NAME [FLAGS]: the same client run against $addr, JSON into $work/NAME.json.
# WORKERS and LINKS override CONCURRENCY and CONNECTIONS for one measurement.
measure() {
  local name=$1
  shift
  "${pin_client[@]}" "$bin/greyrouter-load" run --threads 1 --target "http://$addr" \
    --tenants "$TENANTS" --services "$SERVICES" --duration "$DURATION" --warmup "$WARMUP" \
    --concurrency "${WORKERS:-$CONCURRENCY}" --connections "${LINKS:-$CONNECTIONS}" --json "$@" \
    >"$work/$name.json" 2>"$work/$name.run.err" || { cat "$work/$name.run.err" >&2; exit 1; }
}

start floor "$bin/greyrouter-load" floor-server --addr 127.0.0.1:0 --threads 1
measure floor
stop_server

start memory "$bin/greyrouter" serve --store memory --grpc-addr 127.0.0.1:0 --log-level warn
seed memory
measure memory
# The same server and data, RouteBatch calls.
measure memory-batch --rpc route-batch --batch-size "$BATCH_SIZE"
# The same server followed by the SDK: one worker deciding from its local copy.
WORKERS=1 LINKS=1 measure memory-sdk --rpc sdk
# Kept running: measured again in turn with the same setup with metrics on.
off_addr=$addr
off_pid=$server_pid
server_pid=""

# The same setup with metrics on, scraped every second while measured.
start memory-metrics "$bin/greyrouter" serve --store memory --grpc-addr 127.0.0.1:0 \
  --http-addr 127.0.0.1:0 --log-level warn
seed memory-metrics
on_addr=$addr
( while kill -0 "$server_pid" 2>/dev/null; do
    curl -sf "http://$http_addr/metrics" -o "$work/metrics.txt" || true
    sleep 1
  done ) &
scraper_pid=$!
# Off then on in odd rounds, on then off in even ones: what comes first gets no edge.
for round in $(seq 1 "$METRICS_ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then
    addr=$off_addr measure "metrics-off-$round"
    addr=$on_addr measure "metrics-on-$round"
  else
    addr=$on_addr measure "metrics-on-$round"
    addr=$off_addr measure "metrics-off-$round"
  fi
done
grep -q '^grey_router_requests_total{' "$work/metrics.txt" \
  || { echo "compare: /metrics did not count the decisions" >&2; exit 1; }
stop_server
for pid in $off_pid $scraper_pid; do
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
done
off_pid=""
scraper_pid=""

start durable "$bin/greyrouter" serve --data-dir "$work/data" --grpc-addr 127.0.0.1:0 \
  --log-level warn
seed durable
measure durable
stop_server

start redis "$bin/greyrouter" serve --grpc-addr 127.0.0.1:0 --log-level warn \
  --store "redis://127.0.0.1:$port/0"
# One change at a time: concurrent commits on the Redis store abort each other (ABORTED).
seed redis --concurrency 1
measure redis
stop_server

start seed-design "$bin/greyrouter-load" seed-design-server --redis "redis://127.0.0.1:$port/1" \
  --addr 127.0.0.1:0 --threads 1 --tenants "$TENANTS" --services "$SERVICES" --instances "$INSTANCES"
measure seed-design
stop_server

python3 - "$work" "$BATCH_SIZE" "$METRICS_ROUNDS" <<'EOF'
import json, statistics, sys
work, batch, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
names = ["floor", "memory", "memory-batch", "memory-sdk", "memory-metrics", "durable", "redis",
         "seed-design"]
labels = {"floor": "floor (no-op tonic)", "memory": "greyrouter memory",
          "memory-batch": f"greyrouter RouteBatch ({batch})",
          "memory-sdk": "greyrouter SDK (local, 1 worker)",
          "memory-metrics": "greyrouter memory, metrics on",
          "durable": "greyrouter durable (default)", "redis": "greyrouter redis", "seed-design": "seed design (Lua)"}
r = {n: json.load(open(f"{work}/{n}.json")) for n in names if n != "memory-metrics"}
# Metrics on: the round of median throughput stands in the table; the ratio pairs the rounds.
on = [json.load(open(f"{work}/metrics-on-{i}.json")) for i in range(1, rounds + 1)]
off = [json.load(open(f"{work}/metrics-off-{i}.json")) for i in range(1, rounds + 1)]
r["memory-metrics"] = sorted(on, key=lambda j: j["throughput_rps"])[len(on) // 2]
print(f"{'setup':<34}{'calls/s':>9}{'decisions/s':>13}{'p50 µs':>8}{'p99 µs':>8}{'p99.9 µs':>10}"
      f"{'errors':>8}{'gen cores':>11}")
failed = False
for n in names:
    j, l = r[n], r[n]["latency_us"]
    print(f"{labels[n]:<34}{j['throughput_rps']:>9.0f}{j['decisions_per_s']:>13.0f}{l['p50']:>8}"
          f"{l['p99']:>8}{l['p99_9']:>10}{j['decision_errors']:>8}"
          f"{j['generator_cpu']['cores']:>11.2f}")
    if j["decision_errors"]:
        failed = True
        print(f"  {n} failed decisions: {json.dumps(j['decision_error_codes'])} "
              f"{json.dumps(j['decision_error_samples'])}")
def ratio(a, b):
    ta, tb = r[a]["throughput_rps"], r[b]["throughput_rps"]
    pa, pb = r[a]["latency_us"]["p99"], r[b]["latency_us"]["p99"]
    return f"throughput x{ta / tb:.2f}, p99 x{pa / pb:.2f}" if tb and pb else "n/a"
print()
print(f"greyrouter memory / floor:       {ratio('memory', 'floor')}")
print(f"greyrouter memory / seed design: {ratio('memory', 'seed-design')}")
print(f"greyrouter durable / memory:     {ratio('durable', 'memory')}")
for j in on + off:
    if j["decision_errors"]:
        failed = True
on_rps = [j["throughput_rps"] for j in on]
off_rps = [j["throughput_rps"] for j in off]
pairs = " ".join(f"x{a / b:.2f}" for a, b in zip(on_rps, off_rps) if b)
med_on, med_off = statistics.median(on_rps), statistics.median(off_rps)
print(f"metrics on / off (memory, {rounds} rounds in turn): calls/s median "
      f"{med_on:.0f} / {med_off:.0f} = " + (f"x{med_on / med_off:.3f}" if med_off else "n/a")
      + f"; rounds {pairs}")
batch_rate, seed_rate = r["memory-batch"]["decisions_per_s"], r["seed-design"]["throughput_rps"]
print(f"RouteBatch decisions/s / seed design req/s: "
      + (f"x{batch_rate / seed_rate:.1f}" if seed_rate else "n/a"))
sdk_rate, route_rate = r["memory-sdk"]["decisions_per_s"], r["memory"]["throughput_rps"]
print(f"SDK local decisions/s / Route req/s:        "
      + (f"x{sdk_rate / route_rate:.0f}" if route_rate else "n/a")
      + "  (SDK latencies are means over 64 decisions, in whole µs)")
sys.exit(1 if failed else 0)
EOF
