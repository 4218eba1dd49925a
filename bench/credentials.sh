#!/usr/bin/env bash
# What a proxied request costs by credential and by route-table size, on loopback only.
#
#   bash bench/credentials.sh           # 3 rounds of 6 s per setup
#   ROUNDS=5 DURATION=10 RAMPART=/path/to/rampart bash bench/credentials.sh
#
# Setups (GET /orders to an nginx backend, Rampart on one runtime worker, SQLite, no access
# log, intrusion off), interleaved within each round:
#   jwt          bearer JWT
#   api-key      the same request with an API key of the same user
#   jwt-2000     bearer JWT, 2 000 more prefix routes in the table
#   key-2000     API key, 2 000 more prefix routes in the table
# Figures per request: CPU µs of the gateway process (/proc/PID/stat) and, where perf can
# count, user-space instructions (less disturbed by other load on the machine).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/backend.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-6}
CONNECTIONS=${CONNECTIONS:-32}
BACKEND_PORT=9211
RAMPART_PORT=9213
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rampart-target}"

for tool in nginx wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool"; exit 1; }
done
if [ -z "${RAMPART:-}" ]; then
  cargo build --release -q -p rampart-cli
  RAMPART="$CARGO_TARGET_DIR/release/rampart"
fi
PERF=no
if command -v perf >/dev/null && perf stat -x, -e instructions:u -- true >/dev/null 2>&1; then
  PERF=yes
fi

WORK=$(mktemp -d /tmp/rampart-credentials.XXXXXX)
RAMPART_PID=
cleanup() {
  [ -n "$RAMPART_PID" ] && kill "$RAMPART_PID" 2>/dev/null || true
  [ -f "$WORK/backend.pid" ] && kill "$(cat "$WORK/backend.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

start_backend "$WORK" "$BACKEND_PORT"

config() { # name extra-routes
  local name=$1 extra=$2
  {
    echo '[server]'
    echo "listen = \"127.0.0.1:$RAMPART_PORT\""
    echo 'worker_threads = 1'
    echo '[database]'
    echo "url = \"sqlite://$WORK/rampart.db\""
    echo '[tokens]'
    echo 'secret = "bench-secret-bench-secret-bench-secret-0123"'
    echo '[encryption]'
    echo 'keys = ["k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]'
    echo '[rate_limits]'
    echo 'anonymous = "1000000/s"'
    echo 'standard = "1000000/s"'
    echo '[intrusion]'
    echo 'mode = "off"'
    for i in $(seq 1 "$extra"); do
      printf '[[routes]]\npath = "/service%d/*"\nupstream = "orders"\n' "$i"
    done
    echo '[[routes]]'
    echo 'path = "/orders"'
    echo 'methods = ["GET"]'
    echo 'upstream = "orders"'
    echo '[upstreams.orders]'
    echo "url = \"http://127.0.0.1:$BACKEND_PORT\""
    echo 'timeout = "5s"'
  } > "$WORK/$name.toml"
}
config small 0
config large 2000

start_rampart() { # config
  RAMPART_LOG=warn "$RAMPART" --config "$WORK/$1.toml" serve 2> "$WORK/$1.log" &
  RAMPART_PID=$!
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$RAMPART_PORT/healthz" >/dev/null && return 0
    sleep 0.05
  done
  echo "rampart did not start:"; cat "$WORK/$1.log"; exit 1
}
stop_rampart() { kill "$RAMPART_PID"; wait "$RAMPART_PID" 2>/dev/null || true; RAMPART_PID=; }

start_rampart small
curl -sf "http://127.0.0.1:$RAMPART_PORT/auth/register" -H 'content-type: application/json' \
  -d '{"username":"bench_admin","email":"bench@example.com","password":"Tr4ding!Desk#42"}' >/dev/null
TOKEN=$(curl -sf "http://127.0.0.1:$RAMPART_PORT/auth/login" -H 'content-type: application/json' \
  -d '{"username":"bench_admin","password":"Tr4ding!Desk#42"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
KEY=$(curl -sf "http://127.0.0.1:$RAMPART_PORT/users/me/api-keys" -H "authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' -d '{"name":"bench"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
stop_rampart

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

measure() { # label config header
  local label=$1 name=$2 header=$3 before after requests instructions=nan
  start_rampart "$name"
  # Warm: the key is read once and held, connections are open.
  curl -sf -o /dev/null "http://127.0.0.1:$RAMPART_PORT/orders" -H "$header"
  before=$(cpu_ticks "$RAMPART_PID")
  if [ "$PERF" = yes ]; then
    perf stat -x, -e instructions:u -p "$RAMPART_PID" -o "$WORK/perf.out" -- sleep "$((DURATION + 1))" &
    local perf_pid=$!
    sleep 0.5
  fi
  wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -H "$header" "http://127.0.0.1:$RAMPART_PORT/orders" > "$WORK/wrk.out" 2>&1
  after=$(cpu_ticks "$RAMPART_PID")
  if [ "$PERF" = yes ]; then
    wait "$perf_pid" || true
    instructions=$(awk -F, '/instructions/ {print $1}' "$WORK/perf.out")
  fi
  requests=$(awk '/requests in/ {print $1}' "$WORK/wrk.out")
  local bad
  bad=$(awk '/Non-2xx/ {print $NF}' "$WORK/wrk.out")
  stop_rampart
  python3 -c "
requests = max($requests, 1)
cpu = ($after - $before) * 1e6 / $TICK / requests
try: ins = float('$instructions') / requests
except ValueError: ins = float('nan')
print(f'$label {requests / $DURATION:.0f} {cpu:.1f} {ins:.0f} ${bad:-0}')" >> "$WORK/results"
}

: > "$WORK/results"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  measure jwt small "authorization: Bearer $TOKEN"
  measure api-key small "x-api-key: $KEY"
  measure jwt-2000 large "authorization: Bearer $TOKEN"
  measure key-2000 large "x-api-key: $KEY"
done

python3 - "$WORK/results" <<'PY'
import sys, collections, statistics
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    label, rps, cpu, ins, bad = line.split()
    rows[label].append((float(rps), float(cpu), float(ins), int(bad)))
med = lambda label, i: statistics.median(r[i] for r in rows[label])
print(f"\n{'setup':<10}{'rps':>9}{'cpu us/req':>12}{'x jwt':>8}{'instr/req':>12}{'x jwt':>8}{'non-2xx':>9}")
for label in rows:
    print(f"{label:<10}{med(label,0):>9.0f}{med(label,1):>12.1f}{med(label,1)/med('jwt',1):>8.2f}"
          f"{med(label,2):>12.0f}{med(label,2)/med('jwt',2):>8.2f}{sum(r[3] for r in rows[label]):>9}")
PY
