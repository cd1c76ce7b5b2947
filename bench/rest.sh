#!/usr/bin/env bash
# bench/rest.sh - the REST benchmark of issue 2 (figures for the report; not a test).
#   make bench-rest                 # or: bash bench/rest.sh [DURATION_S]
# Starts build/sessiond on a free port with a temp data dir (request log off: it is one
# write(2) per request), then runs build/bench/rest:
#   1. POST message (run:false, 200-byte content) into ONE session, closed loop
#   2. POST message spread uniformly over 1,000 sessions, open-session cap 256, closed loop
#      (+ the session cache hit rate from /metrics)
#   3. GET /healthz, closed loop
#   4. POST message into one session at a FIXED 2,000 req/s (open loop): p99 target < 5 ms
# Env: THREADS (server pool, default 8), CONNS (default 32), DUR (seconds, default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
DUR=${1:-${DUR:-10}}
THREADS=${THREADS:-8}
CONNS=${CONNS:-32}
BIN=$BUILD/sessiond
LOAD=$BUILD/bench/rest
[ -x "$BIN" ] && [ -x "$LOAD" ] || { echo "build first: make all $LOAD" >&2; exit 2; }
TMP=$(mktemp -d /tmp/sessiond-bench-rest.XXXXXX)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

start() { # start EXTRA_ARGS...
  rm -f "$TMP/port"
  SESSIOND_SANDBOX=${SESSIOND_SANDBOX:-process} "$BIN" --listen 127.0.0.1:0 --port-file "$TMP/port" \
    --data-dir "$TMP/data" --log-level warn --threads "$THREADS" "$@" >>"$TMP/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do [ -s "$TMP/port" ] && break; sleep 0.05; done
  PORT=$(cat "$TMP/port")
  URL=http://127.0.0.1:$PORT
  TOKEN=$(cat "$TMP/data/admin.token")
}
stop() { kill "$PID"; wait "$PID" || true; PID=""; }
metric() { curl -s -H "Authorization: Bearer $TOKEN" "$URL/metrics" | awk -v m="$1" '$1==m {print $2}'; }

echo "# sessiond REST benchmark: $(nproc) cores, server threads=$THREADS, client conns=$CONNS, ${DUR}s per run"
echo "# $(uname -r); client and server on the same machine"
start
echo "## 1. POST message -> one session (closed loop; target >= 10,000/s)"
"$LOAD" --url "$URL" --token "$TOKEN" --scenario single --conns "$CONNS" --duration "$DUR" || true
echo "## 3. GET /healthz (closed loop)"
"$LOAD" --url "$URL" --token "$TOKEN" --scenario healthz --conns "$CONNS" --duration "$DUR" || true
echo "## 4. POST message -> one session at a fixed 2,000 req/s (open loop; target p99 < 5 ms)"
"$LOAD" --url "$URL" --token "$TOKEN" --scenario single --conns "$CONNS" --duration "$DUR" --rate 2000 || true
stop

rm -rf "$TMP/data"
start --max-open-sessions 256
echo "## 2. POST message -> 1,000 sessions, uniform (closed loop; cap 256 open; target >= 10,000/s)"
H0=$(metric sessiond_session_cache_hits_total); O0=$(metric sessiond_session_opens_total)
"$LOAD" --url "$URL" --token "$TOKEN" --scenario spread --sessions 1000 --conns "$CONNS" --duration "$DUR" || true
H1=$(metric sessiond_session_cache_hits_total); O1=$(metric sessiond_session_opens_total)
if [ -n "$H0" ] && [ -n "$H1" ]; then
  awk -v h="$((${H1%.*} - ${H0%.*}))" -v o="$((${O1%.*} - ${O0%.*}))" \
    'BEGIN { printf "session cache: %d hits, %d opens (misses): hit rate %.1f%%\n", h, o, (h+o) ? 100*h/(h+o) : 0 }'
fi
stop
