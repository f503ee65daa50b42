#!/usr/bin/env bash
# How the server's runtime and HTTP/2 settings (`[server]` in the configuration) change Route
# throughput and latency. For each setting below, a fresh release `greyrouter serve` on the
# embedded store with that `[server]` section, seeded with 10,000 tenants x 20 services x 4
# instances, gets the load of compare.sh (`run --threads 1 --concurrency 64 --connections 4`,
# 10 s after a 2 s warm-up). The server runs on core 0, the generator on core 1, when taskset
# and 2 cores are available. The settings are measured ROUNDS times, interleaved (round 1 of
# every setting, then round 2, ...), so that a drift of the machine spreads over all of them.
#
#   default          [server] as shipped (worker_threads = 0: one per core it may use)
#   workers-1        worker_threads = 1
#   workers-2        worker_threads = 2
#   window-64k       HTTP/2 windows at the protocol's initial 65,535 bytes (stream, connection)
#   window-4m-8m     stream window 4 MiB, connection window 8 MiB
#   adaptive         http2_adaptive_window = true
#   streams-256      max_concurrent_streams = 256
#
# Prints one table (nothing else on stdout): per setting, the mean of the rounds of calls/s and
# its range, p50 / p99 / p99.9 per call in µs (mean of the rounds), the generator's cores (of
# its one) and the server's cores (CPU time over the run's wall time, warm-up included). Exits
# 1 if any decision failed.
#
# Usage (from the repository root): load-tests/runtime-study.sh
# Settings (environment): ROUNDS (2), DURATION (10s), WARMUP (2s), CONCURRENCY (64),
# CONNECTIONS (4), TENANTS (10000), SERVICES (20), INSTANCES (4), RPC (route; or route-batch),
# BATCH_SIZE (100, with RPC=route-batch), ONLY (space-separated setting names; all by default).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/greyrouter/target}"
ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONCURRENCY="${CONCURRENCY:-64}"
CONNECTIONS="${CONNECTIONS:-4}"
TENANTS="${TENANTS:-10000}"
SERVICES="${SERVICES:-20}"
INSTANCES="${INSTANCES:-4}"
RPC="${RPC:-route}"
BATCH_SIZE="${BATCH_SIZE:-100}"

# name|[server] keys (one per `;`)
all_settings=(
  "default|"
  "workers-1|worker_threads = 1"
  "workers-2|worker_threads = 2"
  "window-64k|http2_initial_stream_window_bytes = 65535;http2_initial_connection_window_bytes = 65535"
  "window-4m-8m|http2_initial_stream_window_bytes = 4194304;http2_initial_connection_window_bytes = 8388608"
  "adaptive|http2_adaptive_window = true"
  "streams-256|max_concurrent_streams = 256"
)
settings=()
for entry in "${all_settings[@]}"; do
  name=${entry%%|*}
  if [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $name "* ]]; then
    settings+=("$entry")
  fi
done
[ "${#settings[@]}" -gt 0 ] || { echo "runtime-study: no setting matches ONLY='$ONLY'" >&2; exit 2; }

batch_flags=()
if [ "$RPC" = route-batch ]; then
  batch_flags=(--batch-size "$BATCH_SIZE")
fi

cargo build --release --locked -q -p greyrouter -p greyrouter-load >&2
bin="$CARGO_TARGET_DIR/release"

work=$(mktemp -d)
server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
cleanup() {
  stop_server
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
ticks=$(getconf CLK_TCK)

# cpu_ticks PID: user + system CPU time of a process, in clock ticks.
cpu_ticks() {
  # Fields after the command name (which may hold spaces): utime and stime are 12th and 13th.
  sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

echo "runtime-study: $(nproc) cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for round in $(seq 1 "$ROUNDS"); do
  for entry in "${settings[@]}"; do
    name=${entry%%|*}
    keys=${entry#*|}
    config="$work/$name.toml"
    { echo "[server]"; [ -z "$keys" ] || tr ';' '\n' <<<"$keys"; } >"$config"

    "${pin_server[@]}" "$bin/greyrouter" serve --config "$config" --data-dir "$work/$name.data" --grpc-addr 127.0.0.1:0 \
      --log-level warn >"$work/$name.out" 2>"$work/$name.err" &
    server_pid=$!
    addr=""
    for _ in $(seq 1 300); do
      addr=$(sed -n 's/^greyrouter listening on //p' "$work/$name.out")
      [ -n "$addr" ] && break
      if ! kill -0 "$server_pid" 2>/dev/null; then
        cat "$work/$name.err" >&2
        echo "runtime-study: $name did not start" >&2
        exit 1
      fi
      sleep 0.1
    done
    [ -n "$addr" ] || { echo "runtime-study: $name did not listen within 30 s" >&2; exit 1; }

    "$bin/greyrouter-load" seed --target "http://$addr" --tenants "$TENANTS" \
      --services "$SERVICES" --instances "$INSTANCES" >"$work/$name.seed" 2>&1 \
      || { cat "$work/$name.seed" >&2; exit 1; }

    before=$(cpu_ticks "$server_pid")
    started=$(date +%s.%N)
    "${pin_client[@]}" "$bin/greyrouter-load" run --threads 1 --target "http://$addr" \
      --tenants "$TENANTS" --services "$SERVICES" --duration "$DURATION" --warmup "$WARMUP" \
      --concurrency "$CONCURRENCY" --connections "$CONNECTIONS" --rpc "$RPC" \
      "${batch_flags[@]}" --json >"$work/$name.$round.json" 2>"$work/$name.run.err" \
      || { cat "$work/$name.run.err" >&2; exit 1; }
    ended=$(date +%s.%N)
    after=$(cpu_ticks "$server_pid")
    echo "$before $after $started $ended $ticks" >"$work/$name.$round.cpu"
    stop_server
    echo "runtime-study: round $round $name done; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  done
done

echo "runtime-study: load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
names=()
for entry in "${settings[@]}"; do names+=("${entry%%|*}"); done
python3 - "$work" "$ROUNDS" "$RPC" "${names[@]}" <<'EOF'
import json, sys
work, rounds, rpc, names = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
mean = lambda xs: sum(xs) / len(xs)
unit = "calls/s" if rpc != "route" else "req/s"
print(f"{'setting':<15}{unit:>10}{'range':>17}{'decisions/s':>13}{'p50 µs':>8}{'p99 µs':>8}"
      f"{'p99.9 µs':>10}{'gen cores':>11}{'srv cores':>11}")
failed = False
for n in names:
    runs = [json.load(open(f"{work}/{n}.{r}.json")) for r in range(1, rounds + 1)]
    server = []
    for r in range(1, rounds + 1):
        before, after, started, ended, ticks = map(float, open(f"{work}/{n}.{r}.cpu").read().split())
        server.append((after - before) / ticks / max(ended - started, 1e-9))
    rps = [j["throughput_rps"] for j in runs]
    lat = lambda key: mean([j["latency_us"][key] for j in runs])
    print(f"{n:<15}{mean(rps):>10.0f}{f'{min(rps):.0f}-{max(rps):.0f}':>17}"
          f"{mean([j['decisions_per_s'] for j in runs]):>13.0f}{lat('p50'):>8.0f}{lat('p99'):>8.0f}"
          f"{lat('p99_9'):>10.0f}{mean([j['generator_cpu']['cores'] for j in runs]):>11.2f}"
          f"{mean(server):>11.2f}")
    for j in runs:
        if j["decision_errors"]:
            failed = True
            print(f"  {n} failed decisions: {json.dumps(j['decision_error_codes'])}")
sys.exit(1 if failed else 0)
EOF
