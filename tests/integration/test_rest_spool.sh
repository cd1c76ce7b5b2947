#!/usr/bin/env bash
# The spool: comments (run:false) to hibernated sessions are parked in spool.db instead of
# waking the session file, then folded into it when the session opens. Checks what a client
# sees: the same answers and events as without the spool, idempotent retries, prompts still
# waking the session, durability across SIGKILL, purge, and park_comments=false.
. "$(dirname "$0")/lib.sh"
start_server --max-open-sessions 1

USER=$(make_token pat user)
metric() { curl -s -H "Authorization: Bearer $ADMIN" "$BASE/metrics" | awk -v m="$1" '$1==m {print int($2)}'; }
# hibernate SID OTHER - open OTHER (cap 1), so SID is closed; waits for the close worker.
hibernate() {
  api GET "/v1/sessions/$2/events?limit=1" "" "$USER"
  local i
  for i in $(seq 1 100); do
    [ "$(metric sessiond_sessions_open)" = 1 ] && return 0
    sleep 0.05
  done
  return 1
}

A=$(new_session '{"title":"a"}' "$USER")
B=$(new_session '{"title":"b"}' "$USER")
api POST "/v1/sessions/$A/messages" '{"content":"first","run":false}' "$USER"
expect_status 202 "comment to an open session"
S1=$(jget .seq)
check "open session: a seq" [ "$S1" -ge 1 ]
check "B opened, A hibernated" hibernate "$A" "$B"

P0=$(metric sessiond_session_parked_total)
api POST "/v1/sessions/$A/messages" '{"content":"parked one","run":false}' "$USER"
expect_status 202 "comment to a hibernated session"
check "parked: next seq, prompt_id null" [ "$(jget '"\(.seq) \(.prompt_id)"')" = "$((S1 + 1)) null" ]
MID2=$(jget .message_id)
check "it was parked (no wake-up)" [ "$(metric sessiond_session_parked_total)" = $((P0 + 1)) ]
api POST "/v1/sessions/$A/messages" '{"content":"parked two","run":false,"client_request_id":"cr-1"}' "$USER"
expect_status 202 "comment with a client_request_id parked"
FIRST=$BODY
check "next seq" [ "$(jget .seq)" = $((S1 + 2)) ]
check "parked too" [ "$(metric sessiond_session_parked_total)" = $((P0 + 2)) ]
check "still hibernated" [ "$(metric sessiond_sessions_open)" = 1 ]

# A retry of cr-1 wakes the session (folding the spool), whose requests table answers.
api POST "/v1/sessions/$A/messages" '{"content":"parked two","run":false,"client_request_id":"cr-1"}' "$USER"
expect_status 202 "retry of a parked request"
check "retry returns the first answer" [ "$BODY" = "$FIRST" ]
check "retry marked Idempotent-Replayed" grep -qi '^Idempotent-Replayed: true' <<<"$HEADERS"
check "the retry folded the spool" [ "$(metric sessiond_spool_folded_total)" -ge 2 ]

api GET "/v1/sessions/$A/events?limit=100" "" "$USER"
check "events 1..N, no gap, no duplicate" [ "$(jget '[.events[].seq] | (. == [range(1; length + 1)])')" = true ]
check "the parked comments are the last events" [ "$(jget '.events[-1].seq')" = $((S1 + 2)) ]
check "parked event shape" [ "$(jget '.events[-2] | "\(.type) \(.author.id) \(.data.content) \(.data.message_id)"')" = "message token:pat parked one $MID2" ]
check "event ts is ISO 8601" jq -e '.events[-2].ts | test("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z$")' <<<"$BODY"
api GET "/v1/sessions/$A/messages" "" "$USER"
check "3 messages with their author" [ "$(jget '[.messages[] | "\(.content)/\(.author.id // .author_id)"] | join(",")')" = "first/token:pat,parked one/token:pat,parked two/token:pat" ]

# A prompt (run:true) is never parked: it wakes the session (the agent will run it).
check "A hibernated again" hibernate "$A" "$B"
P1=$(metric sessiond_session_parked_total)
api POST "/v1/sessions/$A/messages" '{"content":"echo hi"}' "$USER"
expect_status 202 "prompt to a hibernated session"
check "prompt queued with the next seq" [ "$(jget '"\(.seq) \(.prompt_id | startswith("p_"))"')" = "$((S1 + 3)) true" ]
check "prompt not parked" [ "$(metric sessiond_session_parked_total)" = "$P1" ]

# ---- durability: comments parked and acknowledged survive a SIGKILL ----
api GET "/v1/sessions/$A/events?limit=1000" "" "$USER"
N0=$(jget '.events | length')
check "A hibernated before the kill" hibernate "$A" "$B"
P2=$(metric sessiond_session_parked_total)
LAST=""
for i in 1 2 3 4 5; do
  api POST "/v1/sessions/$A/messages" "{\"content\":\"acked $i\",\"run\":false}" "$USER"
  LAST=$(jget .seq)
done
check "5 comments parked" [ "$(metric sessiond_session_parked_total)" = $((P2 + 5)) ]
stop_server KILL
start_server
check "start folded the spool" grep -q 'spool: 5 parked rows from the last run: folded into 1 sessions' "$SERVER_LOG"
api GET "/v1/sessions/$A/events?limit=1000" "" "$USER"
check "every acknowledged comment is there after SIGKILL" [ "$(jget '[.events[] | select(.data.content | tostring | startswith("acked"))] | length')" = 5 ]
check "last seq as acknowledged, no gap" [ "$(jget '[.events[].seq] | (.[-1] == length)')" = true ] && [ "$(jget '.events[-1].seq')" = "$LAST" ]
api GET "/v1/sessions/$A" "" "$USER"
check "status last_seq" [ "$(jget .last_seq)" -ge "$LAST" ]

# ---- the registry's lazy last_seq of a hibernated session follows parked writes ----
check "A hibernated" hibernate "$A" "$B"
api POST "/v1/sessions/$A/messages" '{"content":"after restart","run":false}' "$USER"
SEQ=$(jget .seq)
check "a stub needs a close by this process: parked now" [ "$(metric sessiond_session_parked_total)" -ge 1 ]
OK=0
for i in $(seq 1 60); do
  api GET "/v1/sessions?limit=100" "" "$USER"
  [ "$(jget ".sessions[] | select(.id==\"$A\") | .last_seq")" = "$SEQ" ] && { OK=1; break; }
  sleep 0.1
done
check "session list shows the parked seq (lazy flush)" [ "$OK" = 1 ]

# ---- purge deletes parked rows with the session ----
check "A hibernated for purge" hibernate "$A" "$B"
api POST "/v1/sessions/$A/messages" '{"content":"doomed","run":false}' "$USER"
expect_status 202 "comment parked before purge"
api DELETE "/v1/sessions/$A?purge=true" "" "$USER"
check "purge accepted" [ "$STATUS" = 200 ] || [ "$STATUS" = 202 ] || [ "$STATUS" = 204 ]
api GET "/v1/sessions/$A/events" "" "$USER"
expect_status 410 "purged session answers 410"
api POST "/v1/sessions/$A/messages" '{"content":"late","run":false}' "$USER"
expect_status 410 "no parking into a purged session"
NLOG=$(grep -c 'parked rows from the last run' "$SERVER_LOG")
restart_server
check "nothing of the purged session was left in the spool" [ "$(grep -c 'parked rows from the last run' "$SERVER_LOG")" = "$NLOG" ]

# ---- park_comments=false: every write wakes its session ----
stop_server
start_server --max-open-sessions 1 --park-comments false
api GET "/v1/sessions/$B/events" "" "$USER"
C=$(new_session '{"title":"c"}' "$USER")
check "B hibernated (a stub exists)" hibernate "$B" "$C"
api POST "/v1/sessions/$B/messages" '{"content":"no spool","run":false}' "$USER"
expect_status 202 "comment with park_comments=false"
check "not parked" [ "$(metric sessiond_session_parked_total)" = 0 ]
finish
