#!/usr/bin/env bash
# Load shedding and the cost of auth on Route, one setup after another on this machine with the
# same client (the server on core 0, the generator on core 1 when taskset and 2 cores exist):
#   capacity        greyrouter serve --store memory, no limits, CONCURRENCY workers: what the
#                   server answers (on two cores a Route call costs the generator's core about
#                   what it costs the server's: this is also what one generator core can send);
#   2x-budget       the same load against limits.router_calls_per_second_per_caller set to half
#                   of that: twice the load the router is configured to take; the excess is
#                   refused at once with RESOURCE_EXHAUSTED;
#   2x-uncapped     2 x CONCURRENCY workers, no limits;
#   2x-capped       2 x CONCURRENCY workers, limits.max_in_flight = CONCURRENCY;
#   auth-off        greyrouter serve (the durable store), auth off, CONCURRENCY workers;
#   auth-jwt        the same data served again with [auth] (HS256), a JWT on every call.
# Prints one table (calls/s admitted and refused, p50/p99 of admitted calls, p99 of refusals,
# the server's resident memory after the run and its peak) and the ratios; nothing else on
# stdout. Exits 1 when a call failed with another code than RESOURCE_EXHAUSTED.
#
# Usage (from the repository root): load-tests/shedding.sh
# Settings (environment): DURATION (10s), WARMUP (2s), CONCURRENCY (64), CONNECTIONS (4),
# TENANTS (10000), SERVICES (20), INSTANCES (4), BIN_DIR (build here when unset).
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

if [ -n "${BIN_DIR:-}" ]; then
  bin="$BIN_DIR"
else
  cargo build --release --locked -q -p greyrouter -p greyrouter-load >&2
  bin="$CARGO_TARGET_DIR/release"
fi

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

# start NAME COMMAND...: starts a server on core 0 and sets $addr from its "listening on" line.
start() {
  local name=$1
  shift
  "${pin_server[@]}" "$@" >"$work/$name.out" 2>"$work/$name.err" &
  server_pid=$!
  addr=""
  for _ in $(seq 1 600); do
    addr=$(sed -n 's/^.*listening on //p' "$work/$name.out")
    [ -n "$addr" ] && return 0
    if ! kill -0 "$server_pid" 2>/dev/null; then
      cat "$work/$name.err" >&2
      echo "shedding: $name did not start" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "shedding: $name did not listen within 60 s" >&2
  exit 1
}

seed() {
  "$bin/greyrouter-load" seed --target "http://$addr" --tenants "$TENANTS" --services "$SERVICES" \
    --instances "$INSTANCES" "$@" >"$work/seed.log" 2>&1 || { cat "$work/seed.log" >&2; exit 1; }
}

# measure NAME WORKERS [FLAGS]: the client run against $addr, JSON into $work/NAME.json, and
# the server's resident memory (VmRSS, VmHWM in KiB) into $work/NAME.mem.
measure() {
  local name=$1 workers=$2
  shift 2
  "${pin_client[@]}" "$bin/greyrouter-load" run --threads 1 --target "http://$addr" \
    --tenants "$TENANTS" --services "$SERVICES" --duration "$DURATION" --warmup "$WARMUP" \
    --concurrency "$workers" --connections "$CONNECTIONS" --json "$@" \
    >"$work/$name.json" 2>"$work/$name.run.err" || { cat "$work/$name.run.err" >&2; exit 1; }
  awk '/^VmRSS|^VmHWM/ {print $2}' "/proc/$server_pid/status" | paste -sd' ' >"$work/$name.mem"
}

# limits FILE RATE CAP: a [limits] section with the per-caller Router rate and the in-flight
# cap under test, every other rate off.
limits() {
  printf '[limits]\nrouter_calls_per_second_per_caller = %s\nrouter_calls_per_second_per_tenant = 0\nmax_in_flight = %s\n' \
    "$2" "$3" >"$1"
}

double=$((2 * CONCURRENCY))
limits "$work/uncapped.toml" 0 0
limits "$work/capped.toml" 0 "$CONCURRENCY"

start uncapped "$bin/greyrouter" serve --store memory --grpc-addr 127.0.0.1:0 --log-level warn \
  --config "$work/uncapped.toml"
seed
measure capacity "$CONCURRENCY"
measure 2x-uncapped "$double"
stop_server

# Half of the measured capacity as the per-caller budget: the same load is twice the budget.
budget=$(python3 -c 'import json, sys; print(int(json.load(open(sys.argv[1]))["throughput_rps"] / 2))' \
  "$work/capacity.json")
limits "$work/budget.toml" "$budget" 0
start budget "$bin/greyrouter" serve --store memory --grpc-addr 127.0.0.1:0 --log-level warn \
  --config "$work/budget.toml"
seed
measure 2x-budget "$CONCURRENCY"
stop_server

start capped "$bin/greyrouter" serve --store memory --grpc-addr 127.0.0.1:0 --log-level warn \
  --config "$work/capped.toml"
# Within the cap: the seed's own calls must not be shed.
seed --concurrency "$CONCURRENCY"
measure 2x-capped "$double"
stop_server

# Auth off and on over the same durable data directory: seeded once with auth off (the seed
# goes through Admin), then served again with [auth].
secret="a-shared-secret-for-the-measurement-only-32b"
cp "$work/uncapped.toml" "$work/auth.toml"
printf '\n[auth]\nissuer = "https://id.load.test/"\naudience = "greyrouter"\nhs256_secret_env = "LOAD_JWT_SECRET"\n' \
  >>"$work/auth.toml"
token=$(python3 - "$secret" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b64(json.dumps({"sub": "load-generator", "iss": "https://id.load.test/",
  "aud": "greyrouter", "exp": int(time.time()) + 3600, "roles": ["router"]}).encode())
mac = hmac.new(sys.argv[1].encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
print(f"{header}.{claims}.{b64(mac)}")
PY
)

start auth-off "$bin/greyrouter" serve --data-dir "$work/data" --grpc-addr 127.0.0.1:0 \
  --log-level error --config "$work/uncapped.toml"
seed
measure auth-off "$CONCURRENCY"
stop_server

LOAD_JWT_SECRET="$secret" start auth-jwt "$bin/greyrouter" serve --data-dir "$work/data" \
  --grpc-addr 127.0.0.1:0 --log-level warn --config "$work/auth.toml"
measure auth-jwt "$CONCURRENCY" --token "$token"
stop_server

python3 - "$work" "$CONCURRENCY" "$budget" <<'PY'
import json, sys
work, workers, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
names = ["capacity", "2x-budget", "2x-uncapped", "2x-capped", "auth-off", "auth-jwt"]
labels = {"capacity": f"capacity ({workers} workers)",
          "2x-budget": f"2x the budget ({budget}/s)",
          "2x-uncapped": f"{2 * workers} workers, no cap",
          "2x-capped": f"{2 * workers} workers, cap {workers}",
          "auth-off": "auth off", "auth-jwt": "auth on, JWT (HS256)"}
r = {n: json.load(open(f"{work}/{n}.json")) for n in names}
mem = {n: open(f"{work}/{n}.mem").read().split() for n in names}
print(f"{'setup':<30}{'admitted/s':>11}{'refused/s':>11}{'p50 µs':>8}{'p99 µs':>8}"
      f"{'refused p99 µs':>16}{'RSS MiB':>9}{'peak MiB':>10}{'other errors':>14}")
failed = False
for n in names:
    j = r[n]
    refused = j["error_codes"].get("RESOURCE_EXHAUSTED", 0)
    other = j["errors"] - refused
    seconds = j["elapsed_secs"] or 1
    rss, hwm = (int(x) / 1024 for x in mem[n]) if len(mem[n]) == 2 else (0, 0)
    print(f"{labels[n]:<30}{j['ok'] / seconds:>11.0f}{refused / seconds:>11.0f}"
          f"{j['latency_us']['p50']:>8}{j['latency_us']['p99']:>8}"
          f"{j['refused_latency_us']['p99']:>16}{rss:>9.0f}{hwm:>10.0f}{other:>14}")
    if other:
        failed = True
        print(f"  {n}: {json.dumps(j['error_codes'])} {json.dumps(j['error_samples'])}")
ok = lambda n: r[n]["ok"] / (r[n]["elapsed_secs"] or 1)
p99 = lambda n: r[n]["latency_us"]["p99"] / 1000
print()
print(f"2x the budget: admitted {ok('2x-budget'):.0f}/s of {budget}/s, admitted p99 "
      f"{p99('2x-budget'):.2f} ms (capacity {p99('capacity'):.2f} ms), refusals p99 "
      f"{r['2x-budget']['refused_latency_us']['p99'] / 1000:.2f} ms")
print(f"auth on (JWT) / auth off: throughput x{ok('auth-jwt') / ok('auth-off'):.2f}, "
      f"p99 x{r['auth-jwt']['latency_us']['p99'] / max(r['auth-off']['latency_us']['p99'], 1):.2f}")
sys.exit(1 if failed else 0)
PY
