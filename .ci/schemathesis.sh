#!/usr/bin/env bash
# Property-based tests of the served OpenAPI document against the server that serves it:
# starts `rampart serve` on a free loopback port with a throw-away data dir, registers the
# first user (admin), and runs schemathesis with every check, once without credentials and
# once with the admin's bearer token. Exits non-zero on any failure.
#
# The binary is the cargo target dir's debug build, else its release build (or
# $RAMPART_BINARY); schemathesis lives in a venv under $HOME/.cache, reused across runs.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rampart-target}"
VENV="$HOME/.cache/rampart-schemathesis"
# Test cases per operation and phase: enough to cover every documented status, few enough
# for the whole run to stay within a few minutes.
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-25}"

log() { printf '\n=== %s\n' "$*"; }

# The debug build is the one `cargo test` has just built and tested; a release build in a
# shared target dir may be older than the checkout.
binary="${RAMPART_BINARY:-}"
if [ -z "$binary" ]; then
  for candidate in "$TARGET_DIR/debug/rampart" "$TARGET_DIR/release/rampart"; do
    if [ -x "$candidate" ]; then
      binary=$candidate
      break
    fi
  done
fi
if [ -z "$binary" ]; then
  echo "no rampart binary in $TARGET_DIR (build it first)" >&2
  exit 1
fi

if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

work=$(mktemp -d)
server=""
cleanup() {
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"

# Limits high enough for one client to send thousands of requests: the limits themselves
# are the API tests' business; here every answer must match the document.
cat >"$work/rampart.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
data_dir = "$work/data"

[database]
url = "sqlite://$work/data/rampart.db"

[login]
max_failures_per_ip = 1000000
max_failures_per_account = 1000000

[rate_limits]
anonymous = "1000000/min"
standard = "1000000/min"
premium = "1000000/min"

[[routes]]
path = "/auth/register"
methods = ["POST"]
auth = false
per = "ip"
rate_limit = "1000000/min"

[[routes]]
path = "/auth/login"
methods = ["POST"]
auth = false
per = "ip"
rate_limit = "1000000/min"

[[routes]]
path = "/auth/refresh"
methods = ["POST"]
auth = false
per = "ip"
rate_limit = "1000000/min"

[[routes]]
path = "/accounts/{id}/refresh"
methods = ["POST"]
rate_limit = "1000000/min"
EOF
mkdir -p "$work/data"

log "starting $binary serve on $base"
RAMPART_LOG__ACCESS=false "$binary" --config "$work/rampart.toml" serve >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do
  if curl -fsS "$base/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server" 2>/dev/null; then cat "$work/serve.log" >&2; exit 1; fi
  sleep 0.2
done
curl -fsS "$base/readyz" >/dev/null

password='Schemathesis-Admin-7'
curl -fsS -X POST "$base/auth/register" -H 'content-type: application/json' \
  -d "{\"username\": \"st_admin\", \"email\": \"st_admin@example.com\", \"password\": \"$password\"}" >/dev/null
token=$(curl -fsS -X POST "$base/auth/login" -H 'content-type: application/json' \
  -d "{\"username\": \"st_admin\", \"password\": \"$password\"}" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')

run() {
  "$VENV/bin/st" --config-file .ci/schemathesis.toml run "$base/openapi.json" \
    --checks all \
    --max-examples "$MAX_EXAMPLES" \
    --seed 20260101 \
    --workers 2 \
    --request-timeout 10 \
    --generation-database none \
    --no-color \
    "$@"
}

status=0
log "schemathesis: without credentials"
run || status=1
# Logging out would end the token the rest of the run uses; those two operations are
# covered by the run without credentials. Changing users' roles can demote the admin
# (once another user is an admin), which ends its logins too: that operation runs last.
log "schemathesis: as the admin, with a bearer token"
run --header "Authorization: Bearer $token" \
  --exclude-path /auth/logout --exclude-path /auth/logout-all \
  --exclude-path '/admin/users/{id}' || status=1
log "schemathesis: as the admin, changing users"
run --header "Authorization: Bearer $token" --include-path '/admin/users/{id}' --include-method PATCH || status=1

if [ "$status" -ne 0 ]; then
  log "schemathesis found failures; the server's log:"
  tail -n 50 "$work/serve.log"
fi
exit "$status"
