#!/usr/bin/env bash
# Resident memory of a greyrouter server under hostile input: each scenario of
# `greyrouter-load memory` (instances, reasons, watchers, changes) against a fresh
# `greyrouter serve` on the embedded store, one after another. Prints each scenario's table (or
# its JSON line) on stdout, progress on stderr.
#
# Usage (from anywhere): load-tests/memory.sh [path-to-greyrouter-binary]
#   The binary defaults to this workspace's release build (built first). Another binary, e.g. an
#   older build, is measured by the same, current load generator.
# Settings (environment): SCENARIOS ("instances reasons watchers changes"), TIMEOUT (longest run
# of one scenario, seconds; 3600), JSON (1: one JSON object per scenario instead of text),
# MEMORY_FLAGS (more flags for `greyrouter-load memory`, e.g. "--watchers 100").
# Exits 1 if a scenario failed or timed out (the others still run).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/greyrouter/target}"
SCENARIOS="${SCENARIOS:-instances reasons watchers changes}"
TIMEOUT="${TIMEOUT:-3600}"
JSON="${JSON:-0}"
read -r -a memory_flags <<<"${MEMORY_FLAGS:-}"
[ "$JSON" = 1 ] && memory_flags+=(--json)

if [ $# -ge 1 ]; then
  server_bin=$(realpath "$1")
  cargo build --release --locked -q -p greyrouter-load >&2
else
  server_bin="$CARGO_TARGET_DIR/release/greyrouter"
  cargo build --release --locked -q -p greyrouter -p greyrouter-load >&2
fi
load_bin="$CARGO_TARGET_DIR/release/greyrouter-load"
[ -x "$server_bin" ] || { echo "memory: no server binary at $server_bin" >&2; exit 2; }

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

# start NAME: starts a fresh server on a free port; sets $addr from its "listening on" line.
start() {
  local name=$1
  : >"$work/$name.out"
  "$server_bin" serve --data-dir "$work/data" --grpc-addr 127.0.0.1:0 --log-level warn >"$work/$name.out" 2>"$work/$name.err" &
  server_pid=$!
  addr=""
  for _ in $(seq 1 300); do
    addr=$(sed -n 's/^greyrouter listening on //p' "$work/$name.out")
    [ -n "$addr" ] && return 0
    if ! kill -0 "$server_pid" 2>/dev/null; then
      cat "$work/$name.err" >&2
      echo "memory: the server for $name did not start" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "memory: the server for $name did not listen within 30 s" >&2
  return 1
}

echo "memory: server $server_bin ($(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB)" >&2
failed=0
for scenario in $SCENARIOS; do
  start "$scenario" || { failed=1; stop_server; continue; }
  status=0
  timeout --signal=INT "$TIMEOUT" "$load_bin" memory --target "http://$addr" --pid "$server_pid" \
    --scenario "$scenario" "${memory_flags[@]}" || status=$?
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "memory: the server for $scenario ended during the run; its stderr:" >&2
    tail -n 20 "$work/$scenario.err" >&2
  fi
  if [ "$status" -ne 0 ]; then
    echo "memory: $scenario failed with status $status (124: timed out after ${TIMEOUT}s)" >&2
    failed=1
  fi
  stop_server
  [ "$JSON" = 1 ] || echo
done
exit "$failed"
