#!/usr/bin/env bash
# The durable embedded store against the durable stores people compare it with, one after
# another on this machine, every write synced to disk before it is acknowledged:
#   greyrouter      greyrouter serve (the default durable store), Admin/UpsertTenant calls from
#                   `greyrouter-load writes`, 1 and 32 concurrent writers;
#   etcd            a private single-node etcd (Debian's etcd-server), puts through its v3 JSON
#                   gateway from the same generator, 1 and 32 writers; and `etcdctl check perf
#                   --load=xl` (its own gRPC clients) for etcd's own figure;
#   redis           a private redis-server with appendonly yes, appendfsync always:
#                   `redis-benchmark -t set -c 1` and `-c 32`.
# Then restart time and disk size of a data directory holding TENANTS x SERVICES pins (written
# as one snapshot by `greyrouter-load durable-fixture`): the first start, and a start after
# 20 s of 32 writers (a log to replay after the newest snapshot).
#
# Usage (from the repository root): load-tests/durable.sh
# Settings (environment): DURATION (10s), TENANTS (100000), SERVICES (20), BIN_DIR (build here
# when unset).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/greyrouter/target}"
# The write path is measured, not the rate limits in front of it.
export GREYROUTER_ADMIN_CALLS_PER_SECOND_PER_CALLER=0 GREYROUTER_ADMIN_CALLS_PER_SECOND_PER_TENANT=0
DURATION="${DURATION:-10s}"
TENANTS="${TENANTS:-100000}"
SERVICES="${SERVICES:-20}"
if [ -n "${BIN_DIR:-}" ]; then
  bin="$BIN_DIR"
else
  cargo build --release --locked -q -p greyrouter -p greyrouter-load >&2
  bin="$CARGO_TARGET_DIR/release"
fi
for tool in etcd etcdctl redis-server redis-benchmark; do
  command -v "$tool" >/dev/null 2>&1 || { echo "durable: $tool is missing (apt-get install etcd-server etcd-client redis-server redis-tools)" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# serve NAME ARGS...: starts greyrouter serve; sets $addr and $server_pid.
serve() {
  local name=$1
  shift
  local started
  started=$(date +%s%N)
  "$bin/greyrouter" serve --grpc-addr 127.0.0.1:0 --log-level warn "$@" >"$work/$name.out" 2>"$work/$name.err" &
  server_pid=$!
  pids+=("$server_pid")
  addr=""
  for _ in $(seq 1 6000); do
    addr=$(sed -n 's/^.*listening on //p' "$work/$name.out")
    [ -n "$addr" ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/$name.err" >&2; exit 1; }
    sleep 0.01
  done
  [ -n "$addr" ] || { echo "durable: $name did not listen" >&2; exit 1; }
  start_ms=$((($(date +%s%N) - started) / 1000000))
}
stop() { kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; }
writes() { "$bin/greyrouter-load" writes --duration "$DURATION" --concurrency "$1" "${@:2}"; }
field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

echo "durable: $(nproc) cores; $(df -h "$work" | awk 'NR == 2 { print $1 }') under $work" >&2

# greyrouter
serve greyrouter --data-dir "$work/greyrouter"
g1=$(writes 1 --target "http://$addr")
g32=$(writes 32 --target "http://$addr")
stop

# etcd
client=$(free_port)
peer=$(free_port)
etcd --name bench --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$client" \
  --advertise-client-urls "http://127.0.0.1:$client" --listen-peer-urls "http://127.0.0.1:$peer" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
  --initial-cluster "bench=http://127.0.0.1:$peer" --log-level error >"$work/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$client" endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done
e1=$(writes 1 --etcd "http://127.0.0.1:$client")
e32=$(writes 32 --etcd "http://127.0.0.1:$client")
perf=$(ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$client" check perf --load=xl 2>&1 || true)
perf_rate=$(tr '\r' '\n' <<<"$perf" | sed -n 's/.*[^0-9]\([0-9][0-9]*\) writes\/s.*/\1/p' | head -1)
perf_verdict=$(tr '\r' '\n' <<<"$perf" | grep -E '^(PASS|FAIL)' | tr '\n' ' ')

# redis, appendfsync always
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync always \
  --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis_rate() { redis-benchmark -p "$rport" -t set -c "$1" -n "$2" -q 2>/dev/null | tr '\r' '\n' | sed -n 's/^SET: \([0-9.]*\) requests per second.*/\1/p' | tail -1; }
r1=$(redis_rate 1 20000)
r32=$(redis_rate 32 200000)

printf '%-44s %12s %12s\n' "acknowledged writes/s (fsync on)" "1 writer" "32 writers"
printf '%-44s %12.0f %12.0f\n' "greyrouter durable (UpsertTenant, gRPC)" "$(field changes_per_s <<<"$g1")" "$(field changes_per_s <<<"$g32")"
printf '%-44s %12.0f %12.0f\n' "etcd (put, v3 JSON gateway)" "$(field changes_per_s <<<"$e1")" "$(field changes_per_s <<<"$e32")"
printf '%-44s %12.0f %12.0f\n' "redis appendfsync always (redis-benchmark)" "${r1:-0}" "${r32:-0}"
echo "etcdctl check perf --load=xl: ${perf_rate:-?} writes/s (${perf_verdict:-no verdict})"
echo "latency p50/p99 µs: greyrouter 1: $(field p50_us <<<"$g1")/$(field p99_us <<<"$g1"), 32: $(field p50_us <<<"$g32")/$(field p99_us <<<"$g32"); etcd 1: $(field p50_us <<<"$e1")/$(field p99_us <<<"$e1"), 32: $(field p50_us <<<"$e32")/$(field p99_us <<<"$e32")"

# Restart time and disk size at TENANTS x SERVICES.
"$bin/greyrouter-load" durable-fixture --dir "$work/big" --tenants "$TENANTS" --services "$SERVICES" >/dev/null
size1=$(du -sb "$work/big" | cut -f1)
serve big --data-dir "$work/big"
first_ms=$start_ms
rss1=$(awk '/VmRSS/ { print $2 }' "/proc/$server_pid/status")
DURATION=20s writes 32 --target "http://$addr" >"$work/big-writes.json"
stop
size2=$(du -sb "$work/big" | cut -f1)
serve big-again --data-dir "$work/big"
second_ms=$start_ms
stop
files=$(ls "$work/big" | tr '\n' ' ')
echo
echo "$TENANTS tenants x $SERVICES services ($((TENANTS * SERVICES)) pins):"
echo "  start from one snapshot: ${first_ms} ms, $((size1 / 1048576)) MiB on disk, ${rss1} KiB resident after start"
echo "  after 20 s of 32 writers ($(field changes <<<"$(cat "$work/big-writes.json")") changes): start ${second_ms} ms, $((size2 / 1048576)) MiB on disk ($files)"
