#!/usr/bin/env bash
# test_exec_defer.sh - a synchronous exec waits without holding its libmicrohttpd pool thread
# (the request is suspended, answered when the command ends), and a shutdown answers such a
# request with 503 instead of freeing it while suspended.
set -u
. "$(dirname "$0")/lib.sh"
TEST_NAME=test_exec_defer

# One HTTP thread: before the fix, a synchronous exec blocked it, and with it every other
# request of the server until the command ended.
start_server --threads 1 --shutdown-grace 1
api POST /v1/sessions '{"title":"defer"}'
expect_status 201 "create session"
SID=$(jget .id)
api POST "/v1/sessions/$SID/exec" '{"script":"true"}'
expect_status 200 "a first exec starts the sandbox"

OUT=$(mktemp)
curl -s -o "$OUT" -w '%{http_code}' -H "Authorization: Bearer $ADMIN" \
  -d '{"script":"sleep 3; echo done"}' "$BASE/v1/sessions/$SID/exec" >"$OUT.code" &
XPID=$!
for _ in $(seq 1 50); do # until the exec is running (its exec.started is stored)
  api GET "/v1/sessions/$SID/events?limit=1000"
  jq -e '[.events[] | select(.type=="exec.started" and .data.script=="sleep 3; echo done")] | length > 0' \
    <<<"$BODY" >/dev/null && break
  sleep 0.1
done
check "the exec's start was stored while it runs" jq -e '[.events[] | select(.type=="exec.started" and .data.script=="sleep 3; echo done")] | length > 0' <<<"$BODY"
api GET /healthz "" -
expect_status 200 "healthz answers on the only HTTP thread while the exec runs"
api GET "/v1/sessions/$SID"
expect_status 200 "a session read answers too"
check "the exec was still running then" kill -0 "$XPID"
wait "$XPID"
check "the exec answers 200 when its command ends" [ "$(cat "$OUT.code")" = 200 ]
check "with the command's output" jq -e '.stdout == "done\n" and .exit_code == 0' "$OUT"

# Shutdown while a synchronous exec waits: answered 503, the server exits cleanly.
curl -s -o "$OUT" -w '%{http_code}' -H "Authorization: Bearer $ADMIN" \
  -d '{"script":"sleep 30"}' "$BASE/v1/sessions/$SID/exec" >"$OUT.code" &
XPID=$!
for _ in $(seq 1 50); do
  api GET "/v1/sessions/$SID/events?limit=1000"
  jq -e '[.events[] | select(.type=="exec.started" and .data.script=="sleep 30")] | length > 0' \
    <<<"$BODY" >/dev/null && break
  sleep 0.1
done
kill -TERM "$SERVER_PID"
wait "$SERVER_PID"
RC=$?
SERVER_PID=""
check "the server exits 0 with a deferred request pending" [ "$RC" = 0 ]
wait "$XPID"
check "the waiting exec gets 503" [ "$(cat "$OUT.code")" = 503 ]
check "with a clear reason" jq -e '.error.code == "unavailable" and (.error.message | test("shutting down"))' "$OUT"
check "the log has no sanitizer or crash report" bash -c "! grep -qiE 'AddressSanitizer|runtime error|SEGV' '$SERVER_LOG'"
rm -f "$OUT" "$OUT.code"
finish
