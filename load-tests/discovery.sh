#!/usr/bin/env bash
# Service discovery, measured: how long a change in Nacos (rnacos) and in etcd takes to reach a
# router's routing state, one change after another (greyrouter-load discovery).
#
# Starts rnacos and etcd on free ports with temporary data directories, a release greyrouter
# syncing both (`[discovery]`, interval INTERVAL_MS), and prints one JSON line per registry:
# changes, missing, p50/p99/max in ms from the registry's answer to the router showing it.
#
# Usage (from the repository root): load-tests/discovery.sh
# Settings (environment): CHANGES (200), INTERVAL_MS (1000).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/greyrouter/target}"
CHANGES="${CHANGES:-200}"
INTERVAL_MS="${INTERVAL_MS:-1000}"
rnacos="${GREYROUTER_RNACOS:-${XDG_CACHE_HOME:-$HOME/.cache}/greyrouter/tools/bin/rnacos}"
[ -x "$rnacos" ] || { echo "discovery: rnacos missing (scripts/test installs it)" >&2; exit 1; }
command -v etcd >/dev/null || { echo "discovery: etcd missing (apt-get install etcd-server)" >&2; exit 1; }

cargo build --release --locked -q -p greyrouter -p greyrouter-load >&2
bin="$CARGO_TARGET_DIR/release"

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() {
  for _ in $(seq 1 300); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "discovery: $1 did not answer" >&2
  exit 1
}

nacos_port=$(free_port)
RNACOS_HTTP_PORT=$nacos_port RNACOS_GRPC_PORT=$(free_port) RNACOS_HTTP_CONSOLE_PORT=0 \
  RNACOS_DATA_DIR="$work/rnacos" RUST_LOG=warn "$rnacos" >"$work/rnacos.log" 2>&1 &
pids+=($!)
etcd_port=$(free_port)
etcd_peer=$(free_port)
etcd --name m --data-dir "$work/etcd" --log-level error \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "m=http://127.0.0.1:$etcd_peer" >"$work/etcd.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$nacos_port/nacos/v1/ns/service/list?pageNo=1&pageSize=1"
wait_http "http://127.0.0.1:$etcd_port/health"

cat >"$work/greyrouter.toml" <<TOML
[discovery]
interval_ms = $INTERVAL_MS
lease_ms = $((INTERVAL_MS * 3))

[[discovery.sources]]
name = "nacos"
kind = "nacos"
services = ["from-nacos"]
[discovery.sources.nacos]
url = "http://127.0.0.1:$nacos_port/nacos"

[[discovery.sources]]
name = "etcd"
kind = "etcd"
services = ["from-etcd"]
[discovery.sources.etcd]
endpoints = ["http://127.0.0.1:$etcd_port"]
TOML

"$bin/greyrouter" serve --config "$work/greyrouter.toml" --data-dir "$work/data" --grpc-addr 127.0.0.1:0 --log-level warn \
  >"$work/greyrouter.out" 2>"$work/greyrouter.err" &
pids+=($!)
addr=""
for _ in $(seq 1 300); do
  addr=$(sed -n 's/^.*listening on //p' "$work/greyrouter.out")
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$work/greyrouter.err" >&2; echo "discovery: greyrouter did not start" >&2; exit 1; }

"$bin/greyrouter-load" discovery --target "http://$addr" --registry nacos \
  --registry-url "http://127.0.0.1:$nacos_port/nacos" --service from-nacos --changes "$CHANGES"
"$bin/greyrouter-load" discovery --target "http://$addr" --registry etcd \
  --registry-url "http://127.0.0.1:$etcd_port" --service from-etcd --changes "$CHANGES"
