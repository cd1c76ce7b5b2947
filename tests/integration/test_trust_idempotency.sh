#!/usr/bin/env bash
# client_request_id is the sending user's own key: keyed by the key alone, another user who
# posted first with your key made your message vanish (you got their 202 back, nothing was
# stored). Now the key is (the token's user id, key); a key reused by the same user for a
# different request is 422 idempotency_mismatch; a true retry still gets the first answer.
# Both paths: an open session file, and a comment parked in the spool for a hibernated one.
. "$(dirname "$0")/lib.sh"
start_server --max-open-sessions 1

ALICE=$(make_token alice user)
MALLORY=$(make_token mallory user)
metric() { curl -s -H "Authorization: Bearer $ADMIN" "$BASE/metrics" | awk -v m="$1" '$1==m {print int($2)}'; }
# hibernate OTHER - open OTHER (cap 1) so the other session is closed; waits for the close.
hibernate() {
  api GET "/v1/sessions/$1/events?limit=1" "" "$ALICE"
  local i
  for i in $(seq 1 100); do
    [ "$(metric sessiond_sessions_open)" = 1 ] && return 0
    sleep 0.05
  done
  return 1
}
no_replay() { ! grep -qi '^Idempotent-Replayed' <<<"$HEADERS"; }
answered() { [ "$STATUS" = 202 ] && [ "$BODY" = "$1" ]; }
count() { api GET "/v1/sessions/$1/messages?limit=500" "" "$ALICE"; jget "[.messages[] | select(.content==\"$2\")] | length"; }

S=$(new_session '{"title":"shared","visibility":"org"}' "$ALICE")
OTHER=$(new_session '{"title":"other"}' "$ALICE")

# ---- open session: Mallory squats on the key Alice will use ----
api POST "/v1/sessions/$S/messages" '{"content":"mallory was here","run":false,"client_request_id":"alice-1"}' "$MALLORY"
expect_status 202 "mallory posts with the key alice-1"
M_ANSWER=$BODY
api POST "/v1/sessions/$S/messages" '{"content":"alice message","run":false,"client_request_id":"alice-1"}' "$ALICE"
expect_status 202 "alice posts with the same key"
check "alice does not get mallory's answer" [ "$BODY" != "$M_ANSWER" ]
check "alice's answer is not a replay" no_replay
A_ANSWER=$BODY
check "alice's message is stored" [ "$(count "$S" "alice message")" = 1 ]

# A true retry by alice: the first answer, nothing written.
api POST "/v1/sessions/$S/messages" '{"content":"alice message","run":false,"client_request_id":"alice-1"}' "$ALICE"
expect_status 202 "alice's retry"
check "retry gets alice's own first answer" [ "$BODY" = "$A_ANSWER" ]
check "retry marked Idempotent-Replayed" grep -qi '^Idempotent-Replayed: true' <<<"$HEADERS"
check "still one alice message" [ "$(count "$S" "alice message")" = 1 ]

# The same user, the same key, another request: refused, nothing written.
api POST "/v1/sessions/$S/messages" '{"content":"something else","run":false,"client_request_id":"alice-1"}' "$ALICE"
expect_error 422 idempotency_mismatch "same key, other content: 422 idempotency_mismatch"
check "nothing written for the mismatch" [ "$(count "$S" "something else")" = 0 ]
api POST "/v1/sessions/$S/messages" '{"content":"alice message","client_request_id":"alice-1"}' "$ALICE"
expect_error 422 idempotency_mismatch "same key and content but run:true instead of false: 422"

# ---- hibernated session: the same through the spool ----
check "the session hibernates" hibernate "$OTHER"
P0=$(metric sessiond_session_parked_total)
api POST "/v1/sessions/$S/messages" '{"content":"mallory parked","run":false,"client_request_id":"alice-3"}' "$MALLORY"
expect_status 202 "mallory parks a comment with the key alice-3"
M3=$BODY
check "it was parked" [ "$(metric sessiond_session_parked_total)" = $((P0 + 1)) ]
api POST "/v1/sessions/$S/messages" '{"content":"alice parked","run":false,"client_request_id":"alice-3"}' "$ALICE"
expect_status 202 "alice posts alice-3 to the hibernated session"
check "alice does not get mallory's parked answer" [ "$BODY" != "$M3" ]
check "... nor a replay" no_replay
A3=$BODY
api POST "/v1/sessions/$S/messages" '{"content":"alice parked","run":false,"client_request_id":"alice-3"}' "$ALICE"
check "alice's retry of alice-3: her first answer" [ "$BODY" = "$A3" ]
check "hibernate again" hibernate "$OTHER"
api POST "/v1/sessions/$S/messages" '{"content":"alice changed her mind","run":false,"client_request_id":"alice-3"}' "$ALICE"
expect_error 422 idempotency_mismatch "parked path: same key, other content: 422"
check "both parked comments are stored, once each" [ "$(count "$S" "mallory parked")/$(count "$S" "alice parked")" = 1/1 ]
check "the mismatch wrote nothing" [ "$(count "$S" "alice changed her mind")" = 0 ]

# ---- the records survive a restart (they live in the session file) ----
restart_server
api POST "/v1/sessions/$S/messages" '{"content":"alice message","run":false,"client_request_id":"alice-1"}' "$ALICE"
check "after a restart alice's retry still replays" answered "$A_ANSWER"
api POST "/v1/sessions/$S/messages" '{"content":"mallory was here","run":false,"client_request_id":"alice-1"}' "$MALLORY"
check "... and mallory's retry gets mallory's answer" answered "$M_ANSWER"
api GET "/v1/sessions/$S/events?limit=500" "" "$ALICE"
check "events 1..N, no gap, no duplicate" [ "$(jget '[.events[].seq] | (. == [range(1; length + 1)])')" = true ]

# run omitted means run:true: a retry that spells it out (keys in another order) is the same
# request. (A session of its own: a running prompt keeps its session open.)
R=$(new_session '{"title":"prompts"}' "$ALICE")
api POST "/v1/sessions/$R/messages" '{"content":"echo hi","client_request_id":"alice-2"}' "$ALICE"
expect_status 202 "a prompt with a key"
P_ANSWER=$BODY
api POST "/v1/sessions/$R/messages" '{"client_request_id":"alice-2","run":true,"content":"echo hi"}' "$ALICE"
check "run omitted == run:true, key order irrelevant: replay" answered "$P_ANSWER"
finish
