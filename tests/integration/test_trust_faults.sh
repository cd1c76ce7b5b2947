#!/usr/bin/env bash
# test_trust_faults.sh - storage faults against the real server, one after the other:
#  (a) a corrupt session file (garbage over a hibernated session's .db and -wal): the open
#      moves it to <data_dir>/quarantine/, logs one line, the session answers 500 `storage`
#      saying so (also after a restart), other sessions, writes and /healthz are unaffected;
#  (b) a corrupt registry.db (and spool.db): the server refuses to start, exit status
#      non-zero, with one error line naming the file and the restore procedure;
#  (c) a full disk (a small tmpfs as data dir, filled): a write answers 507 `disk_full`, no
#      write is acknowledged that is not stored, the server stays up, writes work again once
#      space is freed, and everything acknowledged survives a SIGKILL;
#  (d) EIO on the session files (tests/fault/eio_shim.c preloaded): the write answers a clear
#      5xx, nothing acknowledged is lost, the server stays up and writes work once the fault
#      clears.
. "$(dirname "$0")/lib.sh"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
metric() { curl -s -H "Authorization: Bearer $ADMIN" "$BASE/metrics" | awk -v m="$1" '$1==m {print int($2)}'; }
post() { # post SID CONTENT [CRID] - a comment; sets STATUS/BODY
  api POST "/v1/sessions/$1/messages" "$(jq -cn --arg c "$2" --arg r "${3:-}" '{content:$c,run:false} + (if $r == "" then {} else {client_request_id:$r} end)')"
}
# contents SID - the session's message contents, one per line
contents() { api GET "/v1/sessions/$1/messages?limit=1000"; jget '.messages[].content'; }
jqe() { jq -e "$@" >/dev/null; }
integrity() { [ "$(sqlite3 "$1" 'PRAGMA integrity_check' 2>&1)" = ok ]; }

# ---- (a) a corrupt session file ----
start_server --max-open-sessions 1
A=$(new_session '{"title":"a"}')
B=$(new_session '{"title":"b"}')
post "$A" "a one"
expect_status 202 "a: comment to A"
post "$B" "b one"
expect_status 202 "a: comment to B (A hibernates: cap 1)"
for i in $(seq 1 100); do [ "$(metric sessiond_sessions_open)" = 1 ] && [ ! -e "$DATA_DIR/sessions/$A.db-shm" ] && break; sleep 0.05; done
api GET "/v1/sessions/$B/events?limit=1"
sleep 0.3 # the close worker finishes A's close (its registry columns)
check "a: A's file is there" [ -f "$DATA_DIR/sessions/$A.db" ]
head -c 65536 /dev/urandom >"$DATA_DIR/sessions/$A.db"
[ -e "$DATA_DIR/sessions/$A.db-wal" ] && head -c 4096 /dev/urandom >"$DATA_DIR/sessions/$A.db-wal"
api GET "/v1/sessions/$A/events"
expect_error 500 storage "a: the corrupt session answers 500 storage"
check "a: the message says quarantined, and where" jqe '.error.message | test("quarantine") and test("operations.md")' <<<"$BODY"
Q=$(ls "$DATA_DIR/quarantine/" 2>/dev/null | grep "^$A\.db\.[0-9TZ.]*$" | head -1)
check "a: the file moved to <data_dir>/quarantine/<id>.db.<timestamp>" [ -n "$Q" ] && [ -s "$DATA_DIR/quarantine/$Q" ]
check "a: its -wal moved with it" [ -e "$DATA_DIR/quarantine/$Q-wal" ]
check "a: nothing left in sessions/" [ ! -e "$DATA_DIR/sessions/$A.db" ] && [ ! -e "$DATA_DIR/sessions/$A.db-wal" ]
check "a: one log line about it" [ "$(grep -c "quarantine" "$SERVER_LOG")" = 1 ]
check "a: the log line names the session and the new place" grep -q "$A.*quarantine/$Q" "$SERVER_LOG"
api GET "/v1/sessions/$A"
expect_error 500 storage "a: GET the session: still 500 storage (not 404, not a new empty file)"
check "a: ... with the same clear message" jqe '.error.message | test("quarantine")' <<<"$BODY"
api POST "/v1/sessions/$A/messages" '{"content":"to a quarantined session"}'
expect_error 500 storage "a: a prompt to it is refused (nothing acknowledged)"
post "$A" "comment to a quarantined session"
expect_error 500 storage "a: a comment to it is refused (nothing acknowledged)"
check "a: no new file was created for it" [ ! -e "$DATA_DIR/sessions/$A.db" ]
api GET "/v1/sessions?limit=100"
check "a: it is still listed (the registry row is kept)" jqe --arg a "$A" '[.sessions[].id] | index($a) != null' <<<"$BODY"
api GET /healthz
expect_status 200 "a: healthz unaffected"
post "$B" "b two"
expect_status 202 "a: the other session still takes writes"
check "a: ... and reads" [ "$(contents "$B" | tr '\n' ,)" = "b one,b two," ]
C=$(new_session '{"title":"c"}')
post "$C" "c one"
expect_status 202 "a: a new session works"
check "a: counted in /metrics" [ "$(metric sessiond_store_quarantined_total)" = 1 ]
restart_server KILL
api GET "/v1/sessions/$A/events"
expect_error 500 storage "a: after a restart the quarantined session still answers 500 storage"
check "a: after a restart B is intact" [ "$(contents "$B" | tr '\n' ,)" = "b one,b two," ]
api DELETE "/v1/sessions/$A?purge=true"
check "a: the quarantined session can be purged ($STATUS)" [ "${STATUS:0:1}" = 2 ]
api GET "/v1/sessions/$A/events"
expect_status 410 "a: ... and then answers 410 Gone"
stop_server TERM

# ---- (b) a corrupt registry ----
check "b: registry.db is intact before" integrity "$DATA_DIR/registry.db"
rm -f "$DATA_DIR/registry.db-wal" "$DATA_DIR/registry.db-shm"
head -c 65536 /dev/urandom >"$DATA_DIR/registry.db"
cp "$DATA_DIR/registry.db" "$TMP/registry.garbage"
: >"$TMP/b.log"
timeout 20 "$SESSIOND_BIN" --listen 127.0.0.1:0 --port-file "$TMP/b.port" --data-dir "$DATA_DIR" >"$TMP/b.log" 2>&1
RC=$?
check "b: the server refuses to start (exit status $RC, not 0 nor a timeout)" [ "$RC" != 0 ] && [ "$RC" != 124 ]
check "b: it never listened" [ ! -s "$TMP/b.port" ]
ERRS=$(grep -c '"level":"error"' "$TMP/b.log")
check "b: exactly one error line (got $ERRS)" [ "$ERRS" = 1 ]
LINE=$(grep '"level":"error"' "$TMP/b.log")
check "b: it names the file" grep -q "$DATA_DIR/registry.db" <<<"$LINE"
check "b: it names the restore procedure" grep -q "docs/operations.md" <<<"$LINE"
check "b: the file is left as it was (the operator decides)" cmp -s "$DATA_DIR/registry.db" "$TMP/registry.garbage"
[ "$FAILED" != 0 ] && cat "$TMP/b.log" >&2
# The spool (acknowledged comments of many sessions) is refused the same way, never moved.
DATA_DIR="$TMP/b2"
start_server
stop_server TERM
rm -f "$DATA_DIR/spool.db-wal" "$DATA_DIR/spool.db-shm"
head -c 65536 /dev/urandom >"$DATA_DIR/spool.db"
timeout 20 "$SESSIOND_BIN" --listen 127.0.0.1:0 --port-file "$TMP/b2.port" --data-dir "$DATA_DIR" >"$TMP/b2.log" 2>&1
RC=$?
check "b: a corrupt spool.db: the server refuses to start (exit status $RC)" [ "$RC" != 0 ] && [ "$RC" != 124 ] && [ ! -s "$TMP/b2.port" ]
LINE=$(grep '"level":"error"' "$TMP/b2.log")
check "b: ... with one error line naming spool.db and the restore procedure" [ "$(grep -c . <<<"$LINE")" = 1 ] && grep -q "$DATA_DIR/spool.db.*docs/operations.md" <<<"$LINE"
check "b: ... and the spool is left where it was" [ -s "$DATA_DIR/spool.db" ] && [ ! -d "$DATA_DIR/quarantine" ]

# ---- (c) a full disk ----
FULL="$TMP/full"
mkdir -p "$FULL"
if mount -t tmpfs -o size=12m sessiond-test-full "$FULL" 2>/dev/null; then
  trap 'umount -l "$FULL" 2>/dev/null; _cleanup' EXIT
  DATA_DIR="$FULL/data"
  start_server --max-open-sessions 1
  S=$(new_session '{"title":"full"}')
  T=$(new_session '{"title":"full, hibernated"}')
  post "$T" "t before"
  expect_status 202 "c: a write before the disk fills (T)"
  api GET "/v1/sessions/$S/events" # S open, T hibernated (cap 1): comments to T are parked
  post "$S" "before" cr-before
  expect_status 202 "c: a write before the disk fills"
  dd if=/dev/zero of="$FULL/filler" bs=64k 2>/dev/null
  check "c: the disk is full" [ "$(df --output=avail "$FULL" | tail -1 | tr -d ' ')" -lt 64 ]
  BIG=$(head -c 49152 /dev/zero | tr '\0' x)
  ACKED=(before)
  GOT=""
  for i in $(seq 1 40); do
    post "$S" "full $i $BIG" "cr-full-$i"
    if [ "$STATUS" = 202 ]; then ACKED+=("full $i"); else GOT="$STATUS $(jget .error.code)"; LAST="$BODY"; break; fi
  done
  check "c: a write on the full disk answers 507 disk_full (got $GOT)" [ "$GOT" = "507 disk_full" ]
  check "c: ... with a clear message" jqe '.error.message | test("space|full")' <<<"$LAST"
  post "$T" "t during"
  check "c: a comment parked for a hibernated session answers 507 disk_full too (got $STATUS $(jget .error.code))" [ "$STATUS $(jget .error.code)" = "507 disk_full" ]
  api GET /healthz
  expect_status 200 "c: the server is alive"
  check "c: exactly the acknowledged writes are stored" [ "$(contents "$S" | cut -d' ' -f1-2 | tr '\n' ,)" = "$(printf '%s,' "${ACKED[@]}")" ]
  rm -f "$FULL/filler"
  post "$S" "after" cr-after
  expect_status 202 "c: writes work again once space is freed"
  ACKED+=(after)
  post "$T" "t after"
  expect_status 202 "c: ... parked comments too"
  restart_server KILL
  check "c: after a SIGKILL the hibernated session has its acknowledged comments" [ "$(contents "$T" | tr '\n' ,)" = "t before,t after," ]
  check "c: after a SIGKILL every acknowledged write is there" [ "$(contents "$S" | cut -d' ' -f1-2 | tr '\n' ,)" = "$(printf '%s,' "${ACKED[@]}")" ]
  api GET "/v1/sessions/$S/events?limit=1000"
  check "c: seq has no gap" [ "$(jget '[.events[].seq] | (. == [range(1; length + 1)])')" = true ]
  stop_server TERM
  check "c: the session file is intact" integrity "$DATA_DIR/sessions/$S.db"
  umount -l "$FULL" && trap _cleanup EXIT
else
  echo "# skip (c): cannot mount a tmpfs (not root?)" >&2
fi

# ---- (d) EIO ----
SHIM="$TMP/eio_shim.so"
if cc -std=c17 -D_GNU_SOURCE -shared -fPIC -o "$SHIM" "$ROOT/tests/fault/eio_shim.c" -ldl; then
  DATA_DIR="$TMP/eio"
  mkdir -p "$DATA_DIR/sessions"
  SAVED_ASAN=${ASAN_OPTIONS-}
  # An ASan build (make test SANITIZE=1) wants its runtime first in the library list.
  export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"
  export LD_PRELOAD="$SHIM" EIO_SHIM_PATH="$DATA_DIR/sessions/" EIO_SHIM_WHILE="$TMP/eio-on"
  start_server --max-open-sessions 256
  unset LD_PRELOAD EIO_SHIM_PATH EIO_SHIM_WHILE
  if [ -n "$SAVED_ASAN" ]; then export ASAN_OPTIONS=$SAVED_ASAN; else unset ASAN_OPTIONS; fi
  S=$(new_session '{"title":"eio"}')
  ACKED=()
  for i in 1 2 3; do
    post "$S" "ok $i" "cr-ok-$i"
    [ "$STATUS" = 202 ] && ACKED+=("ok $i")
  done
  check "d: writes before the fault" [ "${#ACKED[@]}" = 3 ]
  touch "$TMP/eio-on"
  post "$S" "during" cr-during
  check "d: a write under EIO answers a 5xx storage error (got $STATUS $(jget .error.code))" [ "${STATUS:0:1}" = 5 ] && [ "$(jget .error.code)" = storage ]
  check "d: ... with a clear message" jqe '.error.message | test("I/O|input/output|storage")' <<<"$BODY"
  api GET /healthz
  expect_status 200 "d: the server is alive"
  rm -f "$TMP/eio-on"
  post "$S" "after" cr-after
  expect_status 202 "d: writes work again once the fault clears"
  [ "$STATUS" = 202 ] && ACKED+=(after)
  post "$S" "during" cr-during
  check "d: a retry of the failed request is stored now ($STATUS)" [ "$STATUS" = 202 ]
  [ "$STATUS" = 202 ] && ACKED+=(during)
  check "d: exactly the acknowledged writes are stored" [ "$(contents "$S" | tr '\n' ,)" = "$(printf '%s,' "${ACKED[@]}")" ]
  restart_server KILL
  check "d: after a SIGKILL every acknowledged write is there" [ "$(contents "$S" | tr '\n' ,)" = "$(printf '%s,' "${ACKED[@]}")" ]
  api GET "/v1/sessions/$S/events?limit=1000"
  check "d: seq has no gap" [ "$(jget '[.events[].seq] | (. == [range(1; length + 1)])')" = true ]
  stop_server TERM
  check "d: the session file is intact" integrity "$DATA_DIR/sessions/$S.db"
else
  fail "d: build the EIO shim"
fi
finish
