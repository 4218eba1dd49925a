#!/usr/bin/env bash
# Rampart against nginx as the reference reverse proxy, core for core, on loopback only.
#
#   bash bench/gateway.sh            # 3 rounds of 8 s per setup
#   ROUNDS=5 DURATION=10 bash bench/gateway.sh
#
# Setups, interleaved within each round so that machine noise hits them alike:
#   direct      wrk straight to the backend (the floor; its CPU column is the backend's)
#   nginx       nginx (1 worker, upstream keep-alive) proxying to the backend
#   pass        Rampart, route open to anyone, no access log, intrusion off
#   +jwt        ... + bearer JWT required
#   +rbac       ... + role check
#   +limit      ... + the route's own limit (in memory)
#   +intrusion  ... + intrusion detection (detect)
#   full        ... + access log (to a file): the full pipeline, in-memory limits
#   full-redis  full, with rate limits in Redis (127.0.0.1:6379)
# The backend is nginx (1 worker) returning a small JSON body. Rampart runs on one runtime
# worker thread (server.worker_threads = 1). The load is wrk (1 thread, $CONNECTIONS
# connections). CPU time per request is read from /proc/PID/stat of the proxy process.
# A second pass drives each setup at a fixed $FIXED_RPS (wrk pacing each connection with
# a Lua delay) to read the latency each adds at a realistic load.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-32}
FIXED_RPS=${FIXED_RPS:-5000}
BACKEND_PORT=9201
NGINX_PORT=9202
RAMPART_PORT=9203
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rampart-target}"

for tool in nginx wrk curl python3 redis-cli; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install nginx-light wrk curl redis-tools)"; exit 1; }
done
cargo build --release -q -p rampart-cli
RAMPART="$CARGO_TARGET_DIR/release/rampart"

WORK=$(mktemp -d /tmp/rampart-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/backend.pid" ] && kill "$(cat "$WORK/backend.pid")" 2>/dev/null || true
  [ -f "$WORK/proxy.pid" ] && kill "$(cat "$WORK/proxy.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- backend and reference proxy -----------------------------------------------------------
cat > "$WORK/backend.conf" <<CONF
worker_processes 1;
daemon on;
pid $WORK/backend.pid;
error_log $WORK/backend-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/body; proxy_temp_path $WORK/proxy; fastcgi_temp_path $WORK/fcgi;
  uwsgi_temp_path $WORK/uwsgi; scgi_temp_path $WORK/scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$BACKEND_PORT;
    location / {
      default_type application/json;
      return 200 '{"items":[{"id":1,"symbol":"INFY","side":"BUY","quantity":10}]}';
    }
  }
}
CONF
cat > "$WORK/proxy.conf" <<CONF
worker_processes 1;
daemon on;
pid $WORK/proxy.pid;
error_log $WORK/proxy-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/body2; proxy_temp_path $WORK/proxy2; fastcgi_temp_path $WORK/fcgi2;
  uwsgi_temp_path $WORK/uwsgi2; scgi_temp_path $WORK/scgi2;
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$remote_addr;
    }
  }
}
CONF
nginx -c "$WORK/backend.conf" -e "$WORK/backend-error.log"
nginx -c "$WORK/proxy.conf" -e "$WORK/proxy-error.log"
sleep 0.3
nginx_worker() { pgrep -P "$(cat "$WORK/proxy.pid")" | head -n1; }

# --- Rampart configurations ---------------------------------------------------------------
rampart_config() { # name auth roles limit intrusion store
  local name=$1 auth=$2 roles=$3 limit=$4 intrusion=$5 store=$6
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
    echo "store = \"$store\""
    echo 'anonymous = "1000000/s"'
    echo 'standard = "1000000/s"'
    echo '[intrusion]'
    echo "mode = \"$intrusion\""
    echo '[[routes]]'
    echo 'path = "/orders"'
    echo 'methods = ["GET"]'
    echo 'upstream = "orders"'
    [ "$auth" = no ] && echo 'auth = false'
    [ "$roles" = yes ] && echo 'roles = ["trader", "admin"]'
    [ "$limit" = yes ] && echo 'rate_limit = "1000000/s"'
    echo '[upstreams.orders]'
    echo "url = \"http://127.0.0.1:$BACKEND_PORT\""
    echo 'timeout = "5s"'
  } > "$WORK/$name.toml"
}
rampart_config pass       no  no  no  off    memory
rampart_config jwt        yes no  no  off    memory
rampart_config rbac       yes yes no  off    memory
rampart_config limit      yes yes yes off    memory
rampart_config intrusion  yes yes yes detect memory
rampart_config full       yes yes yes detect memory
rampart_config full-redis yes yes yes detect redis://127.0.0.1:6379

RAMPART_PID=
start_rampart() { # name
  local name=$1 log=warn access=false
  case $name in full|full-redis) log=info access=true ;; esac
  # Log lines (the access log among them) go to stdout.
  RAMPART_LOG=$log RAMPART_LOG__ACCESS=$access "$RAMPART" --config "$WORK/$name.toml" serve \
    > "$WORK/$name.log" 2>&1 &
  RAMPART_PID=$!
  PIDS+=("$RAMPART_PID")
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$RAMPART_PORT/healthz" >/dev/null && return 0
    sleep 0.05
  done
  echo "rampart ($name) did not start:"; cat "$WORK/$name.log"; exit 1
}
stop_rampart() { kill "$RAMPART_PID"; wait "$RAMPART_PID" 2>/dev/null || true; }

# One admin (the first user) and its token, created once in the shared database.
start_rampart full
curl -sf "http://127.0.0.1:$RAMPART_PORT/auth/register" -H 'content-type: application/json' \
  -d '{"username":"bench_admin","email":"bench@example.com","password":"Tr4ding!Desk#42"}' >/dev/null
TOKEN=$(curl -sf "http://127.0.0.1:$RAMPART_PORT/auth/login" -H 'content-type: application/json' \
  -d '{"username":"bench_admin","password":"Tr4ding!Desk#42"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
stop_rampart
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NGINX_PORT/orders")" = 200 ]

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

cat > "$WORK/paced.lua" <<LUA
-- Each connection waits its share of 1/FIXED_RPS between requests.
local pause_ms = 1000 * $CONNECTIONS / $FIXED_RPS
function delay() return pause_ms end
LUA

# wrk with a summary line: rps p50_ms p99_ms requests
drive() { # url extra-args...
  local url=$1; shift
  wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "authorization: Bearer $TOKEN" "$@" "$url" > "$WORK/wrk.out" 2>&1
  python3 - "$WORK/wrk.out" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(label):
    m = re.search(r'^\s*%s\s+([\d.]+)(us|ms|s)\s*$' % label, text, re.M)
    if not m: return float('nan')
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == 'us' else v * 1000 if unit == 's' else v
rps = float(re.search(r'Requests/sec:\s+([\d.]+)', text).group(1))
requests = int(re.search(r'(\d+) requests in', text).group(1))
non2xx = re.search(r'Non-2xx or 3xx responses: (\d+)', text)
print(rps, ms('50%'), ms('99%'), requests, non2xx.group(1) if non2xx else 0)
PY
}

measure() { # setup pid url mode
  local setup=$1 pid=$2 url=$3 mode=$4 before after
  before=$(cpu_ticks "$pid")
  if [ "$mode" = fixed ]; then
    read -r rps p50 p99 requests bad < <(drive "$url" -s "$WORK/paced.lua")
  else
    read -r rps p50 p99 requests bad < <(drive "$url")
  fi
  after=$(cpu_ticks "$pid")
  python3 -c "
cpu_us = ($after - $before) * 1e6 / $TICK / max($requests, 1)
print(f'$setup $mode {$rps:.0f} {$p50:.3f} {$p99:.3f} {cpu_us:.1f} $bad')" >> "$WORK/results"
}

SETUPS=(direct nginx pass jwt rbac limit intrusion full full-redis)
: > "$WORK/results"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  for mode in max fixed; do
    for setup in "${SETUPS[@]}"; do
      if [ "$setup" = direct ]; then
        measure "r$round:$setup" "$(pgrep -P "$(cat "$WORK/backend.pid")" | head -n1)" \
          "http://127.0.0.1:$BACKEND_PORT/orders" "$mode"
      elif [ "$setup" = nginx ]; then
        measure "r$round:$setup" "$(nginx_worker)" "http://127.0.0.1:$NGINX_PORT/orders" "$mode"
      else
        start_rampart "$setup"
        measure "r$round:$setup" "$RAMPART_PID" "http://127.0.0.1:$RAMPART_PORT/orders" "$mode"
        stop_rampart
      fi
    done
  done
done

python3 - "$WORK/results" "$FIXED_RPS" <<'PY'
import sys, collections, statistics
rows = [line.split() for line in open(sys.argv[1])]
fixed_rps = sys.argv[2]
by = collections.defaultdict(dict)
for key, mode, rps, p50, p99, cpu, bad in rows:
    rnd, setup = key.split(':')
    by[(rnd, mode)][setup] = dict(rps=float(rps), p50=float(p50), p99=float(p99), cpu=float(cpu), bad=int(bad))
setups = []
for (rnd, mode), results in by.items():
    for s in results:
        if s not in setups: setups.append(s)
def ratios(mode, metric):
    out = collections.defaultdict(list)
    for (rnd, m), results in by.items():
        if m != mode or 'nginx' not in results: continue
        for s, r in results.items():
            out[s].append(r[metric] / results['nginx'][metric])
    return {s: statistics.median(v) for s, v in out.items()}
def med(mode, setup, metric):
    return statistics.median(r[setup][metric] for (rnd, m), r in by.items() if m == mode and setup in r)
rps_ratio = ratios('max', 'rps'); cpu_ratio = ratios('max', 'cpu')
print(f"\nFull speed ({len({k[0] for k in by})} rounds, medians; ratios are to nginx within each round)")
print(f"{'setup':<12}{'rps':>9}{'x nginx':>9}{'p50 ms':>9}{'p99 ms':>9}{'cpu us/req':>12}{'x nginx':>9}{'non-2xx':>9}")
for s in setups:
    bad = sum(r[s]['bad'] for (rnd, m), r in by.items() if m == 'max' and s in r)
    print(f"{s:<12}{med('max',s,'rps'):>9.0f}{rps_ratio[s]:>9.2f}{med('max',s,'p50'):>9.3f}{med('max',s,'p99'):>9.3f}{med('max',s,'cpu'):>12.1f}{cpu_ratio[s]:>9.2f}{bad:>9}")
print(f"\nAt a fixed {fixed_rps} requests/s (wrk pacing each connection)")
print(f"{'setup':<12}{'rps':>9}{'p50 ms':>9}{'p99 ms':>9}{'added p99 ms':>14}{'cpu us/req':>12}")
print("(added p99: the setup's p99 minus that of going straight to the backend, same round)")
for s in setups:
    added = statistics.median(r[s]['p99'] - r['direct']['p99'] for (rnd, m), r in by.items() if m == 'fixed' and s in r and 'direct' in r)
    print(f"{s:<12}{med('fixed',s,'rps'):>9.0f}{med('fixed',s,'p50'):>9.3f}{med('fixed',s,'p99'):>9.3f}{added:>14.3f}{med('fixed',s,'cpu'):>12.1f}")
PY
