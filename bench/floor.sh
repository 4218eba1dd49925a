#!/usr/bin/env bash
# What Rampart adds to the framework it is built on: a featureless proxy on the same hyper,
# hyper-util and tokio (crates/rampart/examples/bare_proxy.rs) against Rampart's pass-through
# and full setups, loopback only, one runtime worker each.
#
#   bash bench/floor.sh                  # instructions and system calls per request
#   MODE=cpu ROUNDS=3 bash bench/floor.sh   # CPU µs per request from /proc, nginx beside
#
# MODE=count (default): each proxy runs once under callgrind (user-space instructions per
# request; the machine's load does not move it) and once under `strace -c -f` (system calls
# per request, by name). MODE=cpu: interleaved rounds of wrk at full speed, CPU time per
# request read from /proc/PID/stat, nginx (upstream keep-alive) as the reference.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/backend.sh

MODE=${MODE:-count}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
SETUPS=${SETUPS:-"bare-pooled bare-direct pass full"}
BACKEND_PORT=9401; PORT=9402; NGINX_PORT=9403
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rampart-target}"
if [ -z "${RAMPART:-}" ]; then
  cargo build --release -q -p rampart-cli -p rampart --example bare_proxy
  RAMPART="$CARGO_TARGET_DIR/release/rampart"
fi
BARE=${BARE:-$CARGO_TARGET_DIR/release/examples/bare_proxy}

W=$(mktemp -d /tmp/rampart-floor.XXXXXX)
P=
cleanup() {
  [ -n "$P" ] && kill "$P" 2>/dev/null || true
  for f in backend.pid proxy.pid; do [ -f "$W/$f" ] && kill "$(cat "$W/$f")" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
start_backend "$W" "$BACKEND_PORT"

config() { # name auth intrusion
  {
    echo '[server]'; echo "listen = \"127.0.0.1:$PORT\""; echo 'worker_threads = 1'
    echo '[database]'; echo "url = \"sqlite://$W/rampart.db\""
    echo '[tokens]'; echo 'secret = "bench-secret-bench-secret-bench-secret-0123"'
    echo '[encryption]'; echo 'keys = ["k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]'
    echo '[rate_limits]'; echo 'anonymous = "1000000/s"'; echo 'standard = "1000000/s"'
    echo '[intrusion]'; echo "mode = \"$3\""
    echo '[[routes]]'; echo 'path = "/orders"'; echo 'methods = ["GET"]'; echo 'upstream = "orders"'
    if [ "$2" = no ]; then echo 'auth = false'; else echo 'roles = ["trader", "admin"]'; echo 'rate_limit = "1000000/s"'; fi
    echo '[upstreams.orders]'; echo "url = \"http://127.0.0.1:$BACKEND_PORT\""; echo 'timeout = "5s"'
  } > "$W/$1.toml"
}
config pass no off
config full yes detect

wait_up() {
  for _ in $(seq 1 600); do
    curl -sf -o /dev/null "http://127.0.0.1:$PORT$1" -H "authorization: Bearer ${TOKEN:-none}" && return 0
    sleep 0.1
  done
  echo "proxy not up"; exit 1
}

# A token for the full setup.
RAMPART_LOG=warn "$RAMPART" --config "$W/full.toml" serve > "$W/setup.log" 2>&1 & P=$!
wait_up /healthz
curl -sf "http://127.0.0.1:$PORT/auth/register" -H 'content-type: application/json' \
  -d '{"username":"bench_admin","email":"bench@example.com","password":"Tr4ding!Desk#42"}' >/dev/null
TOKEN=$(curl -sf "http://127.0.0.1:$PORT/auth/login" -H 'content-type: application/json' \
  -d '{"username":"bench_admin","password":"Tr4ding!Desk#42"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
kill "$P"; wait "$P" 2>/dev/null || true; P=

# start WRAPPER... SETUP: the proxy for SETUP, under the given wrapper command (may be empty).
start() {
  local setup=${*: -1} wrapper=("${@:1:$#-1}") command
  case $setup in
    bare-pooled) command=("$BARE" "127.0.0.1:$PORT" "127.0.0.1:$BACKEND_PORT" pooled) ;;
    bare-direct) command=("$BARE" "127.0.0.1:$PORT" "127.0.0.1:$BACKEND_PORT" direct) ;;
    pass) command=(env RAMPART_LOG=warn RAMPART_LOG__ACCESS=false "$RAMPART" --config "$W/pass.toml" serve) ;;
    full) command=(env RAMPART_LOG=info RAMPART_LOG__ACCESS=true "$RAMPART" --config "$W/full.toml" serve) ;;
  esac
  # `env` before the wrapper, so that the wrapper (valgrind, strace) is the process $P.
  if [ "${command[0]}" = env ]; then
    command=(env "${command[1]}" "${command[2]}" "${wrapper[@]}" "${command[@]:3}")
  else
    command=("${wrapper[@]}" "${command[@]}")
  fi
  exec_in_background "${command[@]}" > "$W/$setup.out" 2> "$W/$setup.err"
  wait_up /orders
}
# Runs a command in the background with $P its own pid (env execs the program it runs).
exec_in_background() { "$@" & P=$!; }
requests() { grep -oE '[0-9]+ requests in' "$1" | cut -d' ' -f1; }
# The pass-through setups send no credential (one that was sent would be verified).
credential() { case $1 in full) echo "authorization: Bearer $TOKEN" ;; *) echo "accept: */*" ;; esac; }
load() { wrk -t1 -c32 -d"$1" -H "$(credential "$setup")" "http://127.0.0.1:$PORT/orders"; }

if [ "$MODE" = count ]; then
  for setup in $SETUPS; do
    start valgrind --tool=callgrind --callgrind-out-file="$W/cg.%p" "$setup"
    load 2s > /dev/null
    callgrind_control -z "$P" > /dev/null
    load "${DURATION}s" > "$W/wrk.txt"
    callgrind_control -d "$P" > /dev/null
    # The dump asked for is cg.PID.1; the one written at exit comes after it.
    ir=$(grep -hE '^(summary|totals):' "$W/cg.$P.1" | head -1 | awk '{print $2}')
    kill "$P"; wait "$P" 2>/dev/null || true; P=
    rm -f "$W"/cg.*
    req=$(requests "$W/wrk.txt")
    # System calls: a second run, strace attached to every thread for the loaded part only.
    start "$setup"
    load 1s > /dev/null
    strace -c -f -p "$P" -o "$W/strace.txt" 2> /dev/null & S=$!
    sleep 1
    load "${DURATION}s" > "$W/wrk2.txt"
    kill -INT "$S"; wait "$S" 2>/dev/null || true
    kill "$P"; wait "$P" 2>/dev/null || true; P=
    req2=$(( $(requests "$W/wrk2.txt") ))
    calls=$(awk '/^-+/{n++; next} n==1 && NF>=5 {s+=$4} END{print s}' "$W/strace.txt")
    top=$(awk -v r="$req2" '/^-+/{n++; next} n==1 && NF>=5 {printf "%s %.2f, ", $NF, $4/r}' "$W/strace.txt" | cut -c1-160)
    bad=$(grep -oE 'Non-2xx or 3xx responses: [0-9]+' "$W/wrk.txt" | grep -oE '[0-9]+$' || echo 0)
    printf '%-12s instructions/request %7d   non-2xx %s   syscalls/request %.2f (%s)\n' \
      "$setup" $((ir / req)) "$bad" "$(echo "$calls / $req2" | bc -l)" "$top"
  done
  exit 0
fi

# MODE=cpu
cat > "$W/proxy.conf" <<CONF
worker_processes 1;
daemon on;
pid $W/proxy.pid;
error_log $W/proxy-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $W/body2; proxy_temp_path $W/proxy2; fastcgi_temp_path $W/fcgi2;
  uwsgi_temp_path $W/uwsgi2; scgi_temp_path $W/scgi2;
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
nginx -c "$W/proxy.conf" -e "$W/proxy-error.log"
sleep 0.3
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
cpu_run() { # pid port -> "rps us_per_request"
  local before after
  before=$(ticks "$1")
  wrk -t1 -c32 -d"${DURATION}s" -H "$(credential "$3")" "http://127.0.0.1:$2/orders" > "$W/wrk.txt"
  after=$(ticks "$1")
  local req rps
  req=$(requests "$W/wrk.txt")
  rps=$(grep -oE 'Requests/sec: +[0-9.]+' "$W/wrk.txt" | awk '{print $2}')
  echo "$rps $(echo "($after - $before) * 1000000 / $TICK / $req" | bc -l)"
}
for round in $(seq 1 "$ROUNDS"); do
  read -r rps us < <(cpu_run "$(pgrep -P "$(cat "$W/proxy.pid")" | head -n1)" "$NGINX_PORT" nginx)
  printf 'round %d %-12s rps %8.0f  cpu µs/request %6.1f  × nginx 1.00\n' "$round" nginx "$rps" "$us"
  nginx_us=$us
  for setup in $SETUPS; do
    start "$setup"
    read -r rps us < <(cpu_run "$P" "$PORT" "$setup")
    kill "$P"; wait "$P" 2>/dev/null || true; P=
    printf 'round %d %-12s rps %8.0f  cpu µs/request %6.1f  × nginx %.2f\n' "$round" "$setup" "$rps" "$us" "$(echo "$us / $nginx_us" | bc -l)"
  done
done
