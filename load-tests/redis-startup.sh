#!/usr/bin/env bash
# Start-up time and memory of a greyrouter replica loading a large state from Redis.
#
# 1. Starts a private redis-server on a free loopback port, in a temporary directory.
# 2. Fills it, in the key layout RedisStore reads (crates/redis-store/src/keys.rs), with
#    TENANTS tenants x SERVICES services: every service has default version v1, versions
#    ["v1","v2"] and INSTANCES instances of each version; every tenant is active and pinned on
#    every service (one `tenant:<id>:services` hash of SERVICES fields), to v2 when
#    tenant + service number is odd, v1 otherwise. The commands are RESP written by a small
#    python3 script and piped into `redis-cli --pipe`.
# 3. Starts `greyrouter serve --store redis://...` RUNS times, one at a time, and reports the wall
#    time from spawn to its `greyrouter listening on` line, the CPU it used until then, and its
#    peak and current resident memory (VmHWM, VmRSS) at that moment; plus what Redis uses for
#    the data. The first run also routes tenant-42/service-7 through the loaded state.
#
# Usage (from the repository root, after `cargo build --release -p greyrouter`):
#   load-tests/redis-startup.sh
#   TENANTS=10000 RUNS=1 load-tests/redis-startup.sh
# Settings (environment): TENANTS (100000), SERVICES (20), INSTANCES (4 per version), RUNS (3),
# GREYROUTER (the release binary under $CARGO_TARGET_DIR, or target/), REDIS_SERVER and
# REDIS_CLI (found on PATH). Never touches a Redis it did not start.
set -euo pipefail

TENANTS=${TENANTS:-100000}
SERVICES=${SERVICES:-20}
INSTANCES=${INSTANCES:-4}
RUNS=${RUNS:-3}
GREYROUTER=${GREYROUTER:-${CARGO_TARGET_DIR:-target}/release/greyrouter}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_CLI=${REDIS_CLI:-redis-cli}
# How long one start may take before the script gives up.
START_TIMEOUT_S=${START_TIMEOUT_S:-300}

die() {
    echo "redis-startup: $*" >&2
    exit 1
}

[[ -x $GREYROUTER ]] || die "no greyrouter binary at $GREYROUTER (cargo build --release -p greyrouter, or set GREYROUTER)"
command -v "$REDIS_SERVER" >/dev/null || die "$REDIS_SERVER is not installed"
command -v "$REDIS_CLI" >/dev/null || die "$REDIS_CLI is not installed"
command -v python3 >/dev/null || die "python3 is not installed"

dir=$(mktemp -d -t greyrouter-startup.XXXXXX)
redis_pid=""
router_pid=""
cleanup() {
    local status=$?
    if [[ -n $router_pid ]]; then
        kill "$router_pid" 2>/dev/null || true
        wait "$router_pid" 2>/dev/null || true
    fi
    if [[ -n $redis_pid ]]; then
        kill "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$REDIS_SERVER" --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    --dir "$dir" --logfile "$dir/redis.log" &
redis_pid=$!
rcli() { "$REDIS_CLI" -p "$port" "$@"; }
for _ in $(seq 100); do
    [[ $(rcli ping 2>/dev/null) == PONG ]] && break
    sleep 0.05
done
[[ $(rcli ping 2>/dev/null) == PONG ]] || die "redis-server on port $port did not start (see $dir/redis.log)"

# The RESP generator: one command per line of work, written in large blocks.
cat >"$dir/fill.py" <<'PY'
import json
import sys

tenants, services, instances = (int(a) for a in sys.argv[1:4])
out = sys.stdout.buffer
buf = []
size = 0


def cmd(*args):
    global size
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    chunk = b"".join(parts)
    buf.append(chunk)
    size += len(chunk)
    if size > 1 << 20:
        flush()


def flush():
    global size
    out.write(b"".join(buf))
    buf.clear()
    size = 0


def compact(value):
    return json.dumps(value, separators=(",", ":"))


tag = "{greyrouter}"
versions = ["v1", "v2"]
names = ["service-%d" % j for j in range(services)]
cmd("SADD", tag + ":services", *names)
for j, name in enumerate(names):
    cmd("HSET", "%s:service:%s" % (tag, name),
        "default_version", "v1", "strategy", "round_robin", "versions", compact(versions))
    for v, version in enumerate(versions):
        fields = []
        for k in range(instances):
            instance_id = "%s-%s-%d" % (name, version, k)
            n = (j * len(versions) + v) * instances + k
            fields += [instance_id, compact({
                "id": instance_id, "address": "10.%d.%d.%d:8080" % (n >> 16 & 255, n >> 8 & 255, n & 255),
                "service": name, "version": version, "weight": 1, "region": "", "zone": "",
                "metadata": {}, "healthy": True, "health_score": 100,
            })]
        cmd("HSET", "%s:service:%s:version:%s:instances" % (tag, name, version), *fields)

BATCH = 1000
for start in range(0, tenants, BATCH):
    ids = ["tenant-%d" % i for i in range(start, min(start + BATCH, tenants))]
    cmd("SADD", tag + ":tenants", *ids)
    cmd("SADD", tag + ":active_tenants", *ids)
for i in range(tenants):
    tenant = "tenant-%d" % i
    cmd("HSET", "%s:tenant:%s:metadata" % (tag, tenant),
        "name", "Load tenant %d" % i, "region", "", "tier", "pro", "active", "1", "labels", "{}")
    pins = []
    for j, name in enumerate(names):
        pins += [name, versions[(i + j) % 2]]
    cmd("HSET", "%s:tenant:%s:services" % (tag, tenant), *pins)
cmd("SET", tag + ":revision", "1")
flush()
PY

echo "redis-startup: redis-server on 127.0.0.1:$port, in $dir"
fill_start=$(date +%s%N)
python3 "$dir/fill.py" "$TENANTS" "$SERVICES" "$INSTANCES" | rcli --pipe >"$dir/pipe.log"
fill_ms=$((($(date +%s%N) - fill_start) / 1000000))
grep -q "errors: 0," "$dir/pipe.log" || die "redis-cli --pipe reported errors: $(tail -1 "$dir/pipe.log")"
keys=$(rcli dbsize)
info() { rcli info memory | tr -d '\r' | sed -n "s/^$1://p"; }
redis_used=$(info used_memory_human)
redis_dataset=$(info used_memory_dataset)
redis_rss=$(info used_memory_rss_human)
pins=$((TENANTS * SERVICES))
echo "redis-startup: $TENANTS tenants x $SERVICES services ($pins pins), $keys keys written in $fill_ms ms"

# Resident memory of a process in MiB, from /proc/<pid>/status.
status_mib() { awk -v key="$2:" '$1 == key { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
# CPU seconds (user + system) of a process, from /proc/<pid>/stat (fields after the name).
cpu_seconds() {
    local ticks
    ticks=$(sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }')
    awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}
redis_cpu() { rcli info cpu | tr -d '\r' | awk -F: '/^used_cpu_(user|sys):/ { s += $2 } END { printf "%.2f", s }'; }

results=()
for run in $(seq "$RUNS"); do
    rm -f "$dir/out"
    mkfifo "$dir/out"
    redis_cpu_before=$(redis_cpu)
    start=$(date +%s%N)
    "$GREYROUTER" serve --store "redis://127.0.0.1:$port/0" --grpc-addr 127.0.0.1:0 \
        --log-level warn >"$dir/out" 2>"$dir/router.log" &
    router_pid=$!
    exec {out}<"$dir/out"
    line=""
    read -r -t "$START_TIMEOUT_S" -u "$out" line || true
    ready=$(date +%s%N)
    [[ $line == "greyrouter listening on "* ]] ||
        die "run $run: no listening line within ${START_TIMEOUT_S}s: $(tail -3 "$dir/router.log")"
    addr=${line#greyrouter listening on }
    hwm=$(status_mib "$router_pid" VmHWM)
    rss=$(status_mib "$router_pid" VmRSS)
    cpu=$(cpu_seconds "$router_pid")
    redis_cpu_after=$(redis_cpu)
    wall=$(awk -v ns=$((ready - start)) 'BEGIN { printf "%.2f", ns / 1e9 }')
    rcpu=$(awk -v a="$redis_cpu_before" -v b="$redis_cpu_after" 'BEGIN { printf "%.2f", b - a }')
    if [[ $run == 1 ]]; then
        echo "redis-startup: greyrouter route --server http://$addr --tenant tenant-42 --service service-7"
        "$GREYROUTER" route --server "http://$addr" --tenant tenant-42 --service service-7
    fi
    settled=$(sleep 2; status_mib "$router_pid" VmRSS)
    results+=("$(printf '%-4s %12s %12s %12s %12s %12s %14s' "$run" "$wall" "$cpu" "$rcpu" "$hwm" "$rss" "$settled")")
    kill "$router_pid"
    wait "$router_pid" || true
    router_pid=""
    exec {out}<&-
done

echo
echo "$TENANTS tenants x $SERVICES services = $pins pins; $INSTANCES instances per version"
echo "redis: $keys keys, used_memory $redis_used (dataset $((redis_dataset / 1048576)) MiB), rss $redis_rss"
echo
printf '%-4s %12s %12s %12s %12s %12s %14s\n' run "start (s)" "router CPU s" "redis CPU s" "VmHWM (MiB)" "VmRSS (MiB)" "VmRSS +2s (MiB)"
printf '%s\n' "${results[@]}"
