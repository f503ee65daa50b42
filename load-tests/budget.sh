#!/usr/bin/env bash
# The routing budget, enforced: a short load test of Route against a release server on the
# embedded store (10,000 tenants x 20 services x 4 instances), concurrency 32. Fails when the p99
# exceeds 5 ms or any request errors; prints the figures either way. The budget is a generous
# gate, not the target (docs/BENCHMARKS.md has the figures to compare).
#
# Usage (from the repository root): load-tests/budget.sh
# Settings (environment): DURATION (20s), WARMUP (3s), CONCURRENCY (32), MAX_P99_MS (5).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/greyrouter/target}"
DURATION="${DURATION:-20s}"
WARMUP="${WARMUP:-3s}"
CONCURRENCY="${CONCURRENCY:-32}"
MAX_P99_MS="${MAX_P99_MS:-5}"

cargo build --release --locked -q -p greyrouter -p greyrouter-load
bin="$CARGO_TARGET_DIR/release"

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Server and load generator on different cores where the machine allows it.
pin_server=()
pin_client=()
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
  pin_server=(taskset -c 0)
  pin_client=(taskset -c 1)
fi

"${pin_server[@]}" "$bin/greyrouter" serve --data-dir "$work/data" --grpc-addr 127.0.0.1:0 --log-level warn >"$work/serve.out" 2>"$work/serve.err" &
server_pid=$!
addr=""
for _ in $(seq 1 300); do
  addr=$(sed -n 's/^greyrouter listening on //p' "$work/serve.out")
  [ -n "$addr" ] && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    cat "$work/serve.err" >&2
    echo "budget: the server did not start" >&2
    exit 1
  fi
  sleep 0.1
done
[ -n "$addr" ] || { echo "budget: the server did not listen within 30 s" >&2; exit 1; }

"$bin/greyrouter-load" seed --target "http://$addr" --tenants 10000 --services 20 --instances 4
"${pin_client[@]}" "$bin/greyrouter-load" run --threads 1 --target "http://$addr" --tenants 10000 --services 20 \
  --duration "$DURATION" --warmup "$WARMUP" --concurrency "$CONCURRENCY" --connections 4 \
  --max-p99-ms "$MAX_P99_MS" --fail-on-error
