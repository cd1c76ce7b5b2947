#!/usr/bin/env bash
# bench/ws.sh - the WebSocket hub benchmark (issue 3): sessiond vs the npm `ws` reference
# broadcast server, same load client (bench/ws.c), same machine, same run.
#   bash bench/ws.sh [DURATION_S]      (default 60; needs `make bench`-built build/bench/ws)
# Prints each scenario's figures and the sessiond/reference ratio of deliveries/s, plus the
# server's own commit-to-write latency (logged by the hub at shutdown). Load average is printed
# because the machine may be shared: figures under contention are not comparable.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
DUR=${1:-60}
BIN=${SESSIOND_BIN:-$BUILD/sessiond}
WS=${WS_BENCH_BIN:-$BUILD/bench/ws}
[ -x "$WS" ] || { echo "build $WS first (make bench)"; exit 2; }
TMP=$(mktemp -d /tmp/sessiond-wsbench.XXXXXX)
TOKEN=bench_$RANDOM$RANDOM
cleanup() { [ -n "${SPID:-}" ] && kill "$SPID" 2>/dev/null; [ -n "${RPID:-}" ] && kill "$RPID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

start_sessiond() {
  rm -rf "$TMP/data" "$TMP/port"
  SESSIOND_SANDBOX=${SESSIOND_SANDBOX:-process} SESSIOND_ADMIN_TOKEN=$TOKEN "$BIN" --listen 127.0.0.1:0 \
    --port-file "$TMP/port" --data-dir "$TMP/data" --request-log false --log-level info "$@" \
    >"$TMP/sessiond.log" 2>&1 &
  SPID=$!
  for _ in $(seq 100); do [ -s "$TMP/port" ] && break; sleep 0.05; done
  SPORT=$(cat "$TMP/port")
}
start_ref() {
  rm -f "$TMP/refport"
  node bench/ws_ref_server.mjs "$TMP/refport" >>"$TMP/ref.log" 2>&1 &
  RPID=$!
  for _ in $(seq 100); do [ -s "$TMP/refport" ] && break; sleep 0.05; done
  RPORT=$(cat "$TMP/refport")
}
rate_of() { grep -o '[0-9]* deliveries/s' | head -1 | cut -d' ' -f1; }

run() { # name clients sessions rate
  local name=$1 c=$2 s=$3 r=$4 out1 out2 d1 d2
  echo "== $name: $c clients x $s session(s), $r events/s, ${DUR}s"
  start_sessiond
  out1=$("$WS" --base "http://127.0.0.1:$SPORT" --token "$TOKEN" --clients "$c" --sessions "$s" \
    --rate "$r" --duration "$DUR" --pid "$SPID" 2>/dev/null)
  echo "$out1" | sed 's/^/  sessiond   | /'
  kill "$SPID"; wait "$SPID" 2>/dev/null; SPID=
  # Server side, from the hub's own histogram: commit (on_event) -> lws_write, per delivery frame.
  grep -o 'hub: commit-to-write latency[^"]*' "$TMP/sessiond.log" | sed 's/^/  sessiond   | /'

  start_ref
  out2=$("$WS" --ref --base "http://127.0.0.1:$RPORT" --clients "$c" --sessions "$s" --rate "$r" \
    --duration "$DUR" --pid "$RPID" 2>/dev/null)
  echo "$out2" | sed 's/^/  reference  | /'
  kill "$RPID"; wait "$RPID" 2>/dev/null; RPID=
  d1=$(echo "$out1" | rate_of); d2=$(echo "$out2" | rate_of)
  [ -n "$d1" ] && [ -n "$d2" ] && [ "$d2" -gt 0 ] && \
    echo "  ratio sessiond/reference deliveries/s: $(awk "BEGIN{printf \"%.2f\", $d1/$d2}")"
}

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs"
run "latency" 100 1 200
run "fan-out" 1000 1 200
run "batched" 1000 1 1000
echo "== idle: 10,000 connections over 1,000 sessions (server RSS)"
start_sessiond
"$WS" --base "http://127.0.0.1:$SPORT" --token "$TOKEN" --clients 10000 --sessions 1000 --idle \
  --duration 10 --pid "$SPID" 2>/dev/null | sed 's/^/  sessiond   | /'
kill "$SPID"; wait "$SPID" 2>/dev/null; SPID=
start_ref
"$WS" --ref --base "http://127.0.0.1:$RPORT" --clients 10000 --sessions 1000 --idle --duration 10 \
  --pid "$RPID" 2>/dev/null | sed 's/^/  reference  | /'
