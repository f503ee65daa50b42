#!/usr/bin/env bash
# greyrouter gateway against the nginx anchor on this machine, with the same wrk command and
# the same backend:
#   floor     wrk straight to the backend (what any proxy adds to);
#   nginx     Debian's nginx (one worker) with a `map` from X-Tenant-Id to an upstream per
#             version: the natural way to route by tenant without greyrouter;
#   gateway   greyrouter gateway, following a greyrouter serve that holds the same assignment
#             (tenant acme on v2, everyone else on v1).
# The proxy under test runs on core 0 (the gateway with its router); wrk and the backend (nginx
# answering "ok" on one port per version) run on core 1, when taskset and 2 cores are
# available. The three setups are measured in turn, round after round, so that a drift of the
# machine weighs on each alike. Installs nginx and wrk from Debian when missing. Prints one
# table (medians of requests/s, p50/p99 latency; non-2xx summed) and the ratios of gateway to
# nginx; nothing else on stdout.
#
# Usage (from the repository root): load-tests/gateway.sh
# Settings (environment): DURATION (5s), CONNECTIONS (64), ROUNDS (5), BIN_DIR (build here
# when unset).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/greyrouter/target}"
DURATION="${DURATION:-5s}"
CONNECTIONS="${CONNECTIONS:-64}"
ROUNDS="${ROUNDS:-5}"

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
  echo "gateway.sh: installing ${missing[*]} from Debian" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

if [ -n "${BIN_DIR:-}" ]; then
  bin="$BIN_DIR"
else
  cargo build --release --locked -q -p greyrouter >&2
  bin="$CARGO_TARGET_DIR/release"
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

core0=()
core1=()
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
  core0=(taskset -c 0)
  core1=(taskset -c 1)
fi
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "gateway.sh: nothing listens on port $1" >&2
  exit 1
}

# The backend: nginx answering "ok" on one port per version (core 1).
v1=$(free_port)
v2=$(free_port)
mkdir -p "$work/backend" "$work/anchor"
cat >"$work/backend/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/backend/nginx.pid;
error_log $work/backend/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/backend;
  proxy_temp_path $work/backend;
  fastcgi_temp_path $work/backend;
  uwsgi_temp_path $work/backend;
  scgi_temp_path $work/backend;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$v1; location / { return 200 "v1 ok\n"; } }
  server { listen 127.0.0.1:$v2; location / { return 200 "v2 ok\n"; } }
}
CONF
"${core1[@]}" "$nginx_bin" -c "$work/backend/nginx.conf" -p "$work/backend" &
pids+=($!)
wait_port "$v1"
wait_port "$v2"

# measure NAME PORT ROUND: wrk (core 1) with tenant acme, then tenant globex.
measure() {
  local name=$1 port=$2 round=$3
  for tenant in acme globex; do
    "${core1[@]}" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -H "X-Tenant-Id: $tenant" \
      "http://127.0.0.1:$port/api/items" >"$work/$name-$round-$tenant.txt"
  done
}

# The anchor: nginx (one worker, core 0), a map from the tenant header to an upstream per version.
anchor=$(free_port)
cat >"$work/anchor/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/anchor/nginx.pid;
error_log $work/anchor/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/anchor;
  proxy_temp_path $work/anchor;
  fastcgi_temp_path $work/anchor;
  uwsgi_temp_path $work/anchor;
  scgi_temp_path $work/anchor;
  keepalive_requests 1000000;
  map \$http_x_tenant_id \$version {
    default v1;
    acme v2;
  }
  upstream v1 { server 127.0.0.1:$v1; keepalive 64; }
  upstream v2 { server 127.0.0.1:$v2; keepalive 64; }
  server {
    listen 127.0.0.1:$anchor;
    location / {
      proxy_pass http://\$version;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Service-Version \$version;
    }
  }
}
CONF
"${core0[@]}" "$nginx_bin" -c "$work/anchor/nginx.conf" -p "$work/anchor" &
pids+=($!)
wait_port "$anchor"

# greyrouter: a router holding the same assignment, and the gateway following it, both on core
# 0: everything greyrouter runs shares the proxy's core (the router takes the gateway's outcome
# reports while measured), and wrk and the backend have core 1 to themselves, as with nginx.
grpc=$(free_port)
"${core0[@]}" "$bin/greyrouter" serve --store memory --grpc-addr "127.0.0.1:$grpc" \
  --log-level warn >"$work/router.out" 2>"$work/router.err" &
pids+=($!)
wait_port "$grpc"
cli=("$bin/greyrouter" --server "http://127.0.0.1:$grpc")
"${cli[@]}" service upsert api --default-version v1 --version v2 --force >/dev/null
"${cli[@]}" instance register --service api --version v1 --id v1-1 --address "127.0.0.1:$v1" >/dev/null
"${cli[@]}" instance register --service api --version v2 --id v2-1 --address "127.0.0.1:$v2" >/dev/null
for tenant in acme globex; do
  "${cli[@]}" tenant upsert "$tenant" >/dev/null
done
"${cli[@]}" tenant set-version acme api v2 >/dev/null
gateway=$(free_port)
"${core0[@]}" "$bin/greyrouter" gateway --server "http://127.0.0.1:$grpc" \
  --listen "127.0.0.1:$gateway" >"$work/gateway.out" 2>"$work/gateway.err" &
pids+=($!)
wait_port "$gateway"
# Both tenants answered by their own version before measuring.
curl -sf -H 'X-Tenant-Id: acme' "http://127.0.0.1:$gateway/api/items" | grep -q '^v2 ok' \
  || { cat "$work/gateway.err" >&2; echo "gateway.sh: acme is not on v2" >&2; exit 1; }
curl -sf -H 'X-Tenant-Id: globex' "http://127.0.0.1:$gateway/api/items" | grep -q '^v1 ok' \
  || { echo "gateway.sh: globex is not on v1" >&2; exit 1; }
# The three setups in turn, round after round (all of them up, idle when not measured), so
# that a drift of the machine over the run weighs on each alike.
for round in $(seq 1 "$ROUNDS"); do
  measure floor "$v2" "$round"
  measure nginx "$anchor" "$round"
  measure gateway "$gateway" "$round"
done

python3 - "$work" "$ROUNDS" <<'PY'
import re, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def seconds(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]
def read(name):
    rps, p50, p99, bad = [], [], [], 0
    for r in range(1, rounds + 1):
        for tenant in ("acme", "globex"):
            text = open(f"{work}/{name}-{r}-{tenant}.txt").read()
            rps.append(float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)))
            p50.append(seconds(re.search(r"\s50%\s+(\S+)", text).group(1)))
            p99.append(seconds(re.search(r"\s99%\s+(\S+)", text).group(1)))
            m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
            bad += int(m.group(1)) if m else 0
    return statistics.median(rps), statistics.median(p50), statistics.median(p99), bad
rows = {n: read(n) for n in ("floor", "nginx", "gateway")}
labels = {"floor": "backend direct (floor)", "nginx": "nginx map (anchor)",
          "gateway": "greyrouter gateway"}
print(f"{'setup':<26}{'requests/s':>12}{'p50 µs':>9}{'p99 µs':>9}{'non-2xx':>9}")
for n, (rps, p50, p99, bad) in rows.items():
    print(f"{labels[n]:<26}{rps:>12.0f}{p50 * 1e6:>9.0f}{p99 * 1e6:>9.0f}{bad:>9}")
g, a = rows["gateway"], rows["nginx"]
print()
print(f"gateway / nginx: requests/s x{g[0] / a[0]:.2f}, p99 x{g[2] / a[2]:.2f} "
      f"(medians of {rounds} rounds x 2 tenants)")
sys.exit(1 if any(r[3] for r in rows.values()) else 0)
PY
