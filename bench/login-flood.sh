#!/usr/bin/env bash
# Does a login flood starve other requests? Password hashing (argon2id) runs on a bounded
# blocking pool, so it should not. One client reads GET /users/me at a steady rate while,
# in the second phase, another sends correct logins as fast as it can; the reader's p99 is
# compared between the phases, interleaved over $ROUNDS rounds. Loopback only.
#
#   bash bench/login-flood.sh        # 2 rounds of 20 s per phase
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-20}
READ_RPS=${READ_RPS:-500}
PORT=9211
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rampart-target}"
for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool"; exit 1; }
done
cargo build --release -q -p rampart-cli
RAMPART="$CARGO_TARGET_DIR/release/rampart"
WORK=$(mktemp -d /tmp/rampart-login-flood.XXXXXX)
cleanup() { [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

cat > "$WORK/rampart.toml" <<CONF
[server]
listen = "127.0.0.1:$PORT"
[database]
url = "sqlite://$WORK/rampart.db"
[tokens]
secret = "bench-secret-bench-secret-bench-secret-0123"
[encryption]
keys = ["k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]
[rate_limits]
anonymous = "1000000/s"
standard = "1000000/s"
CONF
RAMPART_LOG=warn "$RAMPART" --config "$WORK/rampart.toml" serve 2> "$WORK/rampart.log" &
PID=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.05; done
BODY='{"username":"flood_1","email":"flood@example.com","password":"Tr4ding!Desk#42"}'
curl -sf "http://127.0.0.1:$PORT/auth/register" -H 'content-type: application/json' -d "$BODY" >/dev/null
TOKEN=$(curl -sf "http://127.0.0.1:$PORT/auth/login" -H 'content-type: application/json' \
  -d '{"username":"flood_1","password":"Tr4ding!Desk#42"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

cat > "$WORK/read.lua" <<LUA
local pause_ms = 1000 * 8 / $READ_RPS
function delay() return pause_ms end
LUA
cat > "$WORK/login.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"username":"flood_1","password":"Tr4ding!Desk#42"}'
LUA

p99() { python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r'^\s*99%\s+([\d.]+)(us|ms|s)\s*$', text, re.M)
v, unit = float(m.group(1)), m.group(2)
print(v / 1000 if unit == 'us' else v * 1000 if unit == 's' else v)
PY
}
rps() { python3 -c "import re,sys; print(re.search(r'Requests/sec:\s+([\d.]+)', open('$1').read()).group(1))"; }

: > "$WORK/results"
for round in $(seq 1 "$ROUNDS"); do
  for phase in quiet flood; do
    if [ "$phase" = flood ]; then
      wrk -t1 -c16 -d"$((DURATION + 2))s" -s "$WORK/login.lua" "http://127.0.0.1:$PORT/auth/login" > "$WORK/login.out" 2>&1 &
      FLOOD=$!
      sleep 1
    fi
    wrk -t1 -c8 -d"${DURATION}s" --latency -s "$WORK/read.lua" -H "authorization: Bearer $TOKEN" \
      "http://127.0.0.1:$PORT/users/me" > "$WORK/read.out" 2>&1
    logins=0
    if [ "$phase" = flood ]; then wait "$FLOOD"; logins=$(rps "$WORK/login.out"); fi
    echo "$round $phase $(p99 "$WORK/read.out") $(rps "$WORK/read.out") $logins" >> "$WORK/results"
    echo "round $round $phase: $(tail -n1 "$WORK/results")" >&2
  done
done
python3 - "$WORK/results" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for rnd, phase, p99, rps, logins in rows:
    by.setdefault(rnd, {})[phase] = (float(p99), float(rps), float(logins))
ratios = [r['flood'][0] / r['quiet'][0] for r in by.values()]
print("\nGET /users/me p99 while reading alone vs. during a login flood")
print(f"{'round':<7}{'quiet p99 ms':>14}{'flood p99 ms':>14}{'ratio':>8}{'logins/s':>10}")
for rnd, r in by.items():
    print(f"{rnd:<7}{r['quiet'][0]:>14.2f}{r['flood'][0]:>14.2f}{r['flood'][0]/r['quiet'][0]:>8.2f}{r['flood'][2]:>10.0f}")
print(f"median ratio {statistics.median(ratios):.2f} (target: at most 2)")
PY
