#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind (for machines where `perf stat -e
# instructions` is not available, and as a figure that machine noise does not move):
# two binaries, setups `pass` and `full` as in bench/gateway.sh, loopback only.
#
#   OLD=/path/to/rampart-before NEW=/path/to/rampart-after bash bench/instructions.sh
#
# Each binary runs under valgrind on one runtime worker; after a warm-up the counters are
# zeroed, wrk drives it for $DURATION s (32 connections), the counters are dumped, and the
# count is divided by wrk's request count. Startup is not counted. Callgrind runs threads
# one at a time, so this counts work, not contention.
set -euo pipefail
. "$(dirname "$0")/backend.sh"
: "${OLD:?the binary before}" "${NEW:?the binary after}"
W=$(mktemp -d /tmp/rampart-instructions.XXXXXX)
BACKEND_PORT=9301; PORT=9303
DURATION=${DURATION:-10}
start_backend "$W" "$BACKEND_PORT"
trap 'kill $(cat $W/backend.pid) 2>/dev/null || true; rm -rf $W' EXIT
config() { # name auth roles limit intrusion
  {
    echo '[server]'; echo "listen = \"127.0.0.1:$PORT\""; echo 'worker_threads = 1'
    echo '[database]'; echo "url = \"sqlite://$W/rampart.db\""
    echo '[tokens]'; echo 'secret = "bench-secret-bench-secret-bench-secret-0123"'
    echo '[encryption]'; echo 'keys = ["k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]'
    echo '[rate_limits]'; echo 'anonymous = "1000000/s"'; echo 'standard = "1000000/s"'
    echo '[intrusion]'; echo "mode = \"$5\""
    echo '[[routes]]'; echo 'path = "/orders"'; echo 'methods = ["GET"]'; echo 'upstream = "orders"'
    [ "$2" = no ] && echo 'auth = false'
    [ "$3" = yes ] && echo 'roles = ["trader", "admin"]'
    [ "$4" = yes ] && echo 'rate_limit = "1000000/s"'
    echo '[upstreams.orders]'; echo "url = \"http://127.0.0.1:$BACKEND_PORT\""; echo 'timeout = "5s"'
  } > $W/$1.toml
}
config pass no no no off
config full yes yes yes detect
wait_up() { for _ in $(seq 1 600); do curl -sf http://127.0.0.1:$PORT/healthz >/dev/null && return 0; sleep 0.1; done; echo "not up"; exit 1; }
# A token, from a native run.
"$NEW" --config $W/full.toml serve > $W/setup.log 2>&1 & P=$!
wait_up
curl -sf http://127.0.0.1:$PORT/auth/register -H 'content-type: application/json' \
  -d '{"username":"bench_admin","email":"bench@example.com","password":"Tr4ding!Desk#42"}' >/dev/null
TOKEN=$(curl -sf http://127.0.0.1:$PORT/auth/login -H 'content-type: application/json' \
  -d '{"username":"bench_admin","password":"Tr4ding!Desk#42"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
kill $P; wait $P 2>/dev/null || true
for round in $(seq 1 ${ROUNDS:-1}); do
for bin in ${BINS:-old new}; do
  for setup in pass full; do
    envs=(); log=warn
    if [ $setup = full ]; then log=info; fi
    # Binaries with `[log] access` keep the access log to the full setup; older ones log
    # access lines through tracing at info, which `warn` filters out.
    if [ $setup = pass ] && "$([ $bin = old ] && echo "$OLD" || echo "$NEW")" check-config --help >/dev/null 2>&1 \
       && RAMPART_LOG__ACCESS=false "$([ $bin = old ] && echo "$OLD" || echo "$NEW")" --config $W/pass.toml check-config >/dev/null 2>&1; then
      envs=(RAMPART_LOG__ACCESS=false)
    fi
    env "${envs[@]}" RAMPART_LOG=$log valgrind --tool=callgrind --callgrind-out-file=$W/cg.$bin.$setup.%p \
      "$([ $bin = old ] && echo "$OLD" || echo "$NEW")" --config $W/$setup.toml serve > $W/$bin.$setup.out 2> $W/$bin.$setup.err &
    P=$!
    wait_up
    curl -sf -o /dev/null http://127.0.0.1:$PORT/orders -H "authorization: Bearer $TOKEN"
    wrk -t1 -c32 -d3s -H "authorization: Bearer $TOKEN" http://127.0.0.1:$PORT/orders > /dev/null
    callgrind_control -z $P > /dev/null
    wrk -t1 -c32 -d${DURATION}s -H "authorization: Bearer $TOKEN" http://127.0.0.1:$PORT/orders > $W/wrk.$bin.$setup.txt
    callgrind_control -d $P > /dev/null
    sleep 1
    kill $P; wait $P 2>/dev/null || true
    REQ=$(grep -oE '[0-9]+ requests in' $W/wrk.$bin.$setup.txt | cut -d' ' -f1)
    BAD=$(grep -oE 'Non-2xx or 3xx responses: [0-9]+' $W/wrk.$bin.$setup.txt | grep -oE '[0-9]+$' || echo 0)
    # The dump made after the run: the last numbered file with a totals line.
    F=$(ls -t $W/cg.$bin.$setup.$P.* 2>/dev/null | head -1)
    IR=$(grep -E '^(summary|totals):' $F | head -1 | awk '{print $2}')
    echo "round=$round $bin $setup requests=$REQ non2xx=$BAD Ir=$IR Ir/req=$((IR / REQ))" | tee -a $W/results.txt
    rm -f $W/cg.$bin.$setup.*
  done
done
done
