#!/usr/bin/env bash
# Does Rampart scale with cores? The full pipeline (JWT, RBAC, route limit in memory, intrusion
# detection, access log) on 1 and then 2 runtime worker threads, same load, interleaved rounds.
#
#   bash bench/scaling.sh             # 3 rounds of 8 s per setup
#
# Reports requests/s and CPU µs per request for each worker count. On a machine with as many
# cores as workers plus room for the load generator and the backend, throughput should grow
# with workers while the CPU per request stays flat; a lock shared on the hot path shows up as
# CPU per request growing with workers. On a 2-core machine the load generator and the backend
# compete for the same cores, so the throughput ratio is bounded well below 2.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/backend.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-64}
BACKEND_PORT=9211
RAMPART_PORT=9213
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rampart-target}"

for tool in nginx wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install nginx-light wrk curl)"; exit 1; }
done
if [ -z "${RAMPART:-}" ]; then
  cargo build --release -q -p rampart-cli
  RAMPART="$CARGO_TARGET_DIR/release/rampart"
fi

WORK=$(mktemp -d /tmp/rampart-scaling.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/backend.pid" ] && kill "$(cat "$WORK/backend.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

start_backend "$WORK" "$BACKEND_PORT" 2

config() { # workers
  cat > "$WORK/w$1.toml" <<CONF
[server]
listen = "127.0.0.1:$RAMPART_PORT"
worker_threads = $1
[database]
url = "sqlite://$WORK/rampart.db"
[tokens]
secret = "bench-secret-bench-secret-bench-secret-0123"
[encryption]
keys = ["k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]
[rate_limits]
anonymous = "1000000/s"
standard = "1000000/s"
[intrusion]
mode = "detect"
[[routes]]
path = "/orders"
methods = ["GET"]
upstream = "orders"
roles = ["trader", "admin"]
rate_limit = "1000000/s"
[upstreams.orders]
url = "http://127.0.0.1:$BACKEND_PORT"
timeout = "5s"
CONF
}
config 1
config 2

PID=
start() {
  RAMPART_LOG=info "$RAMPART" --config "$WORK/w$1.toml" serve > "$WORK/w$1.access" 2> "$WORK/w$1.log" &
  PID=$!
  PIDS+=("$PID")
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$RAMPART_PORT/healthz" >/dev/null && return 0
    sleep 0.05
  done
  echo "rampart did not start:"; cat "$WORK/w$1.log"; exit 1
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; }

start 1
curl -sf "http://127.0.0.1:$RAMPART_PORT/auth/register" -H 'content-type: application/json' \
  -d '{"username":"bench_admin","email":"bench@example.com","password":"Tr4ding!Desk#42"}' >/dev/null
TOKEN=$(curl -sf "http://127.0.0.1:$RAMPART_PORT/auth/login" -H 'content-type: application/json' \
  -d '{"username":"bench_admin","password":"Tr4ding!Desk#42"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
stop

TICK=$(getconf CLK_TCK)
: > "$WORK/results"
for round in $(seq 1 "$ROUNDS"); do
  for workers in 1 2; do
    start "$workers"
    before=$(awk '{print $14 + $15}' "/proc/$PID/stat")
    wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" -H "authorization: Bearer $TOKEN" \
      "http://127.0.0.1:$RAMPART_PORT/orders" > "$WORK/wrk.out"
    after=$(awk '{print $14 + $15}' "/proc/$PID/stat")
    requests=$(grep -oE '[0-9]+ requests in' "$WORK/wrk.out" | grep -oE '^[0-9]+')
    rps=$(grep -oE 'Requests/sec: +[0-9.]+' "$WORK/wrk.out" | grep -oE '[0-9.]+$')
    echo "$round $workers $rps $(python3 -c "print(($after - $before) * 1e6 / $TICK / max($requests, 1))")" >> "$WORK/results"
    stop
  done
done
python3 - "$WORK/results" <<'PY'
import sys, statistics, collections
rows = [l.split() for l in open(sys.argv[1])]
by = collections.defaultdict(dict)
for rnd, w, rps, cpu in rows:
    by[rnd][w] = (float(rps), float(cpu))
print(f"{'workers':<9}{'rps':>9}{'cpu us/req':>12}")
for w in ('1', '2'):
    print(f"{w:<9}{statistics.median(r[w][0] for r in by.values()):>9.0f}{statistics.median(r[w][1] for r in by.values()):>12.1f}")
print(f"2 workers / 1 worker: rps {statistics.median(r['2'][0] / r['1'][0] for r in by.values()):.2f}, "
      f"cpu per request {statistics.median(r['2'][1] / r['1'][1] for r in by.values()):.2f}")
PY
