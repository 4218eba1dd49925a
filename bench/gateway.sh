#!/usr/bin/env bash
# Rampart against nginx as the reference reverse proxy, core for core, on loopback only.
#
#   bash bench/gateway.sh            # 3 rounds of 8 s per setup
#   ROUNDS=5 DURATION=10 bash bench/gateway.sh
#
# Setups, interleaved within each round so that machine noise hits them alike:
#   direct      wrk straight to the backend (the floor; its CPU column is the backend's)
#   nginx       nginx (1 worker, upstream keep-alive) proxying to the backend
#   pass        Rampart, route open to anyone, no access log, intrusion off; the client
#               sends no credential (one that it did send would be verified)
#   +jwt        ... + bearer JWT required
#   +rbac       ... + role check
#   +limit      ... + the route's own limit (in memory)
#   +intrusion  ... + intrusion detection (detect)
#   full        ... + access log (to a file): the full pipeline, in-memory limits
#   full-redis  full, with rate limits in Redis (127.0.0.1:6379)
#   apikey      full, the caller an API key (X-API-Key) instead of a JWT
#   routes2000  full, with 2 000 more prefix routes in the table
#   healthz     GET /healthz on the full configuration (no upstream)
# Then, once: idle RSS of the full configuration, and RSS with $IDLE_CONNECTIONS idle keep-alive
# client connections open (each has served one request).
# The backend is nginx (1 worker) returning a small JSON body. Rampart runs on one runtime
# worker thread (server.worker_threads = 1). The load is wrk (1 thread, $CONNECTIONS
# connections). CPU time per request is read from /proc/PID/stat of the proxy process.
# A second pass drives each setup at a fixed $FIXED_RPS (wrk pacing each connection with
# a Lua delay) to read the latency each adds at a realistic load.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/backend.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-32}
FIXED_RPS=${FIXED_RPS:-5000}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
BACKEND_PORT=9201
NGINX_PORT=9202
RAMPART_PORT=9203
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rampart-target}"

for tool in nginx wrk curl python3 redis-cli; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install nginx-light wrk curl redis-tools)"; exit 1; }
done
if [ -z "${RAMPART:-}" ]; then   # RAMPART=/path/to/binary measures a build of your own
  cargo build --release -q -p rampart-cli
  RAMPART="$CARGO_TARGET_DIR/release/rampart"
fi

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
start_backend "$WORK" "$BACKEND_PORT"
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
nginx -c "$WORK/proxy.conf" -e "$WORK/proxy-error.log"
sleep 0.3
nginx_worker() { pgrep -P "$(cat "$WORK/proxy.pid")" | head -n1; }

# --- Rampart configurations ---------------------------------------------------------------
rampart_config() { # name auth roles limit intrusion store [extra-routes]
  local name=$1 auth=$2 roles=$3 limit=$4 intrusion=$5 store=$6 extra=${7:-0}
  {
    echo '[server]'
    echo "listen = \"127.0.0.1:$RAMPART_PORT\""
    echo 'worker_threads = 1'
    echo "max_connections = $((IDLE_CONNECTIONS + 1000))"
    echo "max_connections_per_ip = $((IDLE_CONNECTIONS + 1000))"
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
    for i in $(seq 1 "$extra"); do
      printf '[[routes]]\npath = "/svc%d/*"\nmethods = ["GET"]\nupstream = "orders"\nroles = ["trader", "admin"]\n' "$i"
    done
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
rampart_config routes2000 yes yes yes detect memory 2000

RAMPART_PID=
start_rampart() { # name
  local name=$1 log=warn access=false
  case $name in full|full-redis|apikey|routes2000|healthz) log=info access=true ;; esac
  local config=$name
  case $name in apikey|healthz) config=full ;; esac
  # Log lines (the access log among them) go to stdout.
  RAMPART_LOG=$log RAMPART_LOG__ACCESS=$access "$RAMPART" --config "$WORK/$config.toml" serve \
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
API_KEY=$(curl -sf "http://127.0.0.1:$RAMPART_PORT/users/me/api-keys" -H 'content-type: application/json' \
  -H "authorization: Bearer $TOKEN" -d '{"name":"bench"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
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
drive() { # credential-header url extra-args...
  local credential=$1 url=$2; shift 2
  wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "$credential" "$@" "$url" > "$WORK/wrk.out" 2>&1
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

measure() { # setup pid url mode [credential-header]
  local setup=$1 pid=$2 url=$3 mode=$4 credential=${5:-"authorization: Bearer $TOKEN"} before after
  before=$(cpu_ticks "$pid")
  if [ "$mode" = fixed ]; then
    read -r rps p50 p99 requests bad < <(drive "$credential" "$url" -s "$WORK/paced.lua")
  else
    read -r rps p50 p99 requests bad < <(drive "$credential" "$url")
  fi
  after=$(cpu_ticks "$pid")
  python3 -c "
cpu_us = ($after - $before) * 1e6 / $TICK / max($requests, 1)
print(f'$setup $mode {$rps:.0f} {$p50:.3f} {$p99:.3f} {cpu_us:.1f} $bad')" >> "$WORK/results"
}

SETUPS=(direct nginx pass jwt rbac limit intrusion full full-redis apikey routes2000 healthz)
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
        case $setup in
          apikey) measure "r$round:$setup" "$RAMPART_PID" "http://127.0.0.1:$RAMPART_PORT/orders" "$mode" "x-api-key: $API_KEY" ;;
          healthz) measure "r$round:$setup" "$RAMPART_PID" "http://127.0.0.1:$RAMPART_PORT/healthz" "$mode" ;;
          pass) measure "r$round:$setup" "$RAMPART_PID" "http://127.0.0.1:$RAMPART_PORT/orders" "$mode" "accept: */*" ;;
          *) measure "r$round:$setup" "$RAMPART_PID" "http://127.0.0.1:$RAMPART_PORT/orders" "$mode" ;;
        esac
        stop_rampart
      fi
    done
  done
done

# --- memory: idle, and with many idle keep-alive client connections ----------------------------
rss_mb() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
ulimit -n $((IDLE_CONNECTIONS * 2 + 1000)) 2>/dev/null || true
start_rampart full
curl -sf -H "authorization: Bearer $TOKEN" "http://127.0.0.1:$RAMPART_PORT/orders" >/dev/null
sleep 1
IDLE_RSS=$(rss_mb "$RAMPART_PID")
python3 - "$RAMPART_PORT" "$IDLE_CONNECTIONS" "$WORK/held" <<'PY' &
import asyncio, sys, os
port, count, flag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
async def one(held):
    reader, writer = await asyncio.open_connection('127.0.0.1', port)
    writer.write(b'GET /healthz HTTP/1.1\r\nhost: bench\r\n\r\n')
    await writer.drain()
    head = await reader.readuntil(b'\r\n\r\n')
    length = next(int(l.split(b':')[1]) for l in head.split(b'\r\n') if l.lower().startswith(b'content-length'))
    await reader.readexactly(length)
    held.append(writer)
async def main():
    held = []
    for start in range(0, count, 500):
        await asyncio.gather(*(one(held) for _ in range(start, min(count, start + 500))))
    open(flag, 'w').write(str(len(held)))
    await asyncio.sleep(30)
asyncio.run(main())
PY
HOLDER=$!
for _ in $(seq 1 600); do [ -f "$WORK/held" ] && break; sleep 0.1; done
sleep 1
HELD=$(cat "$WORK/held" 2>/dev/null || echo 0)
BUSY_RSS=$(rss_mb "$RAMPART_PID")
kill "$HOLDER" 2>/dev/null || true; wait "$HOLDER" 2>/dev/null || true
stop_rampart
echo "memory idle_rss_mb $IDLE_RSS held $HELD rss_mb_with_held $BUSY_RSS" > "$WORK/memory"

python3 - "$WORK/results" "$FIXED_RPS" "$WORK/memory" <<'PY'
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
def cpu_vs(a, b):
    return statistics.median(r[a]['cpu'] / r[b]['cpu'] for (rnd, m), r in by.items() if m == 'max' and a in r and b in r)
print("\nTargets (CPU per request, medians of per-round ratios)")
for label, a, b in [("full pipeline / nginx", 'full', 'nginx'), ("pass-through / nginx", 'pass', 'nginx'),
                    ("limits in Redis / in memory", 'full-redis', 'full'), ("healthz / nginx proxied", 'healthz', 'nginx'),
                    ("2 000 routes / 11 routes", 'routes2000', 'full'), ("API key / JWT", 'apikey', 'full')]:
    try: print(f"  {label:<30}{cpu_vs(a, b):>6.2f}")
    except statistics.StatisticsError: pass
print("  full pipeline rps / nginx rps " + f"{rps_ratio.get('full', float('nan')):>6.2f}")
words = open(sys.argv[3]).read().split()
print(f"\nMemory: idle RSS {words[2]} MB; with {words[4]} idle keep-alive connections {words[6]} MB")
PY
