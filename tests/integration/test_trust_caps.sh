#!/usr/bin/env bash
# test_trust_caps.sh - one user must not take the whole server: the attacks of the review
# (25 sandboxes at once, 300 sessions in 5 s, 40 parallel async execs in one session, one
# prompt putting ~100 MB into its session file), with small caps set by flags:
#   - sandboxes past the per-user cap -> 429 sandbox_limit + Retry-After; other users unaffected
#   - past the server-wide cap -> 429 too; a prompt that cannot get a sandbox waits
#     (sandbox.waiting {reason:"capacity"}) and runs as soon as a slot frees
#   - async execs past the per-session cap -> 429
#   - session creation past the per-user rate -> 429 + Retry-After; admins and others unaffected
#   - a prompt printing 10 MB is cut at the per-prompt cap (agent.truncated), the session file
#     stays small; the per-session total cuts the next prompt and fails the one after.
. "$(dirname "$0")/lib.sh"

events_of() { # events_of SID -> JSON array of every event
  local sid=$1 after=0
  : >"$TMP/ev"
  while :; do
    api GET "/v1/sessions/$sid/events?after=$after&limit=1000"
    jq -c '.events[]' "$TMP/body" >>"$TMP/ev"
    [ "$(jq -r .has_more "$TMP/body")" = true ] || break
    after=$(jq -r .next_after "$TMP/body")
  done
  jq -s -c . "$TMP/ev"
}

wait_for() { # wait_for SID JQ_SELECT_BODY [SECONDS]
  local sid=$1 filter=$2 t=${3:-20} i
  for i in $(seq 1 $((t * 10))); do
    EVENTS=$(events_of "$sid")
    if [ "$(jq "[.[] | select($filter)] | length" <<<"$EVENTS")" -gt 0 ]; then return 0; fi
    sleep 0.1
  done
  return 1
}

retry_after() { grep -i '^Retry-After:' <<<"$HEADERS" | tr -dc '0-9'; }

busy() { # busy SID TOKEN -> exec id of a long async command
  api POST "/v1/sessions/$1/exec" '{"script":"sleep 60","async":true}' "$2"
  [ "$STATUS" = 202 ] && jget .exec_id
}

kill_exec() { api POST "/v1/sessions/$1/exec/$2/kill" '{"signal":"KILL"}' "$3"; }

SESSIOND_SANDBOX=local start_server --sandbox local \
  --max-sandboxes 4 --max-sandboxes-per-user 2 --max-execs-per-session 3 \
  --max-sessions-per-minute 5 --max-prompt-output-bytes 65536 --max-session-output-bytes 100000
ALICE=$(make_token alice user)
BOB=$(make_token bob user)
CAROL=$(make_token carol user)
DAVE=$(make_token dave user)
EVE=$(make_token eve user)

# ---- per-user cap: alice's third busy sandbox is refused, bob is not ----
A1=$(new_session '{"title":"a1"}' "$ALICE")
A2=$(new_session '{"title":"a2"}' "$ALICE")
A3=$(new_session '{"title":"a3"}' "$ALICE")
XA1=$(busy "$A1" "$ALICE")
XA2=$(busy "$A2" "$ALICE")
check "alice keeps two sandboxes busy" [ -n "$XA1" ] && [ -n "$XA2" ]
api POST "/v1/sessions/$A3/exec" '{"argv":["true"]}' "$ALICE"
expect_error 429 sandbox_limit "a third sandbox of the same user is refused"
check "the refusal says when to retry" [ -n "$(retry_after)" ]
api GET "/v1/sessions/$A3/files" "" "$ALICE"
expect_error 429 sandbox_limit "the files API cannot start it either"
B1=$(new_session '{"title":"b1"}' "$BOB")
api POST "/v1/sessions/$B1/exec" '{"argv":["echo","bob"]}' "$BOB"
check "another user's sandbox starts" [ "$STATUS" = 200 ] && [ "$(jget .stdout)" = bob ]

# ---- server-wide cap: four busy sandboxes, carol's start is refused, her prompt waits ----
XB1=$(busy "$B1" "$BOB")
B2=$(new_session '{"title":"b2"}' "$BOB")
XB2=$(busy "$B2" "$BOB")
check "four busy sandboxes" [ -n "$XB1" ] && [ -n "$XB2" ]
C1=$(new_session '{"title":"c1"}' "$CAROL")
api POST "/v1/sessions/$C1/exec" '{"argv":["true"]}' "$CAROL"
expect_error 429 sandbox_limit "a fifth sandbox on the server is refused"
api POST "/v1/sessions/$C1/messages" '{"content":"echo ran-after-wait"}' "$CAROL"
expect_status 202 "carol's prompt is queued"
PC=$(jget .prompt_id)
if wait_for "$C1" '.type=="sandbox.waiting"' 10; then
  pass "the prompt's sandbox waits for a slot"
else
  fail "the prompt's sandbox waits for a slot" "$(jq -c '[.[]|{type,data}]' <<<"$EVENTS")"
fi
check "sandbox.waiting says capacity" jq -e '.[]|select(.type=="sandbox.waiting")|.data.reason=="capacity" and .data.scope=="server" and .data.limit==4' <<<"$EVENTS"
check "the prompt has not started" jq -e '[.[]|select(.type=="prompt.started")]|length==0' <<<"$EVENTS"
kill_exec "$A1" "$XA1" "$ALICE"
if wait_for "$C1" ".type==\"prompt.completed\" and .data.prompt_id==\"$PC\"" 15; then
  pass "the waiting prompt runs once a sandbox is free"
else
  fail "the waiting prompt runs once a sandbox is free" "$(jq -c '[.[]|{type,data}]' <<<"$EVENTS")"
fi
check "it printed" jq -e '[.[]|select(.type=="agent.output")|.data.text]|join("")|contains("ran-after-wait")' <<<"$EVENTS"
check "waiting, then starting, ready and started" jq -e '[.[]|.type|select(.=="sandbox.waiting" or .=="sandbox.ready" or .=="prompt.started")]==["sandbox.waiting","sandbox.ready","prompt.started"]' <<<"$EVENTS"
wait_for "$A1" '.type=="sandbox.stopped"' 5
check "the idle sandbox gave its slot (stopped: capacity)" jq -e '[.[]|select(.type=="sandbox.stopped")|.data.reason]|index("capacity")!=null' <<<"$EVENTS"

# ---- concurrent execs per session ----
kill_exec "$B2" "$XB2" "$BOB"
wait_for "$B2" ".type==\"exec.exited\" and .data.exec_id==\"$XB2\"" 10
D1=$(new_session '{"title":"d1"}' "$DAVE")
XD=()
for i in 1 2 3; do XD+=("$(busy "$D1" "$DAVE")"); done
check "three async execs run in one session" [ -n "${XD[0]}" ] && [ -n "${XD[1]}" ] && [ -n "${XD[2]}" ]
api POST "/v1/sessions/$D1/exec" '{"script":"sleep 60","async":true}' "$DAVE"
expect_error 429 rate_limited "a fourth concurrent exec in the session is refused"
api POST "/v1/sessions/$D1/exec" '{"argv":["true"]}' "$DAVE"
expect_error 429 rate_limited "a synchronous one too"
kill_exec "$D1" "${XD[0]}" "$DAVE"
wait_for "$D1" ".type==\"exec.exited\" and .data.exec_id==\"${XD[0]}\"" 10
api POST "/v1/sessions/$D1/exec" '{"argv":["echo","again"]}' "$DAVE"
check "an exec slot is given back when its command ends" [ "$STATUS" = 200 ] && [ "$(jget .stdout)" = again ]
for x in "${XD[1]}" "${XD[2]}"; do kill_exec "$D1" "$x" "$DAVE"; done
kill_exec "$A2" "$XA2" "$ALICE"
kill_exec "$B1" "$XB1" "$BOB"

# ---- session creation rate ----
n=0
for i in 1 2 3 4 5; do
  api POST /v1/sessions '{"title":"burst"}' "$EVE"
  [ "$STATUS" = 201 ] && n=$((n + 1))
done
check "five sessions within the minute" [ "$n" = 5 ]
api POST /v1/sessions '{"title":"burst"}' "$EVE"
expect_error 429 rate_limited "the sixth session in a minute is refused"
check "with Retry-After" [ "$(retry_after)" -ge 1 ] 2>/dev/null
api POST /v1/sessions '{"title":"other user"}' "$BOB"
expect_status 201 "another user still creates sessions"
api POST /v1/sessions '{"title":"admin"}'
expect_status 201 "admin tokens are exempt from the per-user rate"

# ---- output caps: per prompt, then the session's total ----
E=$(new_session '{"title":"loud"}')
# 10 MB of lines, plus control bytes that cost 6 bytes each once escaped into JSON
api POST "/v1/sessions/$E/messages" '{"content":"yes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ | head -c 10000000; head -c 2000000 /dev/zero; echo done-printing"}'
P1=$(jget .prompt_id)
if wait_for "$E" ".type==\"prompt.completed\" and .data.prompt_id==\"$P1\"" 60; then
  pass "the loud prompt completes"
else
  fail "the loud prompt completes" "$(jq -c '[.[]|{type,data:(.data|tostring|.[0:200])}]' <<<"$EVENTS" | tail -c 3000)"
fi
check "one agent.truncated event, prompt scope" jq -e '[.[]|select(.type=="agent.truncated")]|length==1 and .[0].data.scope=="prompt" and .[0].data.limit_bytes==65536' <<<"$EVENTS"
check "prompt.completed says truncated" jq -e ".[]|select(.type==\"prompt.completed\" and .data.prompt_id==\"$P1\")|.data.truncated==true" <<<"$EVENTS"
stored=$(jq '[.[]|select(.type=="agent.output")|.data|tojson|length]|add' <<<"$EVENTS")
check "stored agent output is within the cap ($stored bytes)" [ "$stored" -le 65536 ]
size=$(($(stat -c %s "$DATA_DIR/sessions/$E.db") + $(stat -c %s "$DATA_DIR/sessions/$E.db-wal" 2>/dev/null || echo 0)))
check "the session file stays small ($size bytes)" [ "$size" -lt 2000000 ]
api POST "/v1/sessions/$E/messages" '{"content":"yes second-prompt | head -c 200000"}'
P2=$(jget .prompt_id)
wait_for "$E" ".type==\"prompt.completed\" and .data.prompt_id==\"$P2\"" 30 || fail "second prompt completes"
check "the second prompt is cut by the session total" jq -e "[.[]|select(.type==\"agent.truncated\")]|length==2 and .[1].data.scope==\"session\" and .[1].data.limit_bytes < 65536" <<<"$EVENTS"
api POST "/v1/sessions/$E/messages" '{"content":"echo third"}'
P3=$(jget .prompt_id)
if wait_for "$E" ".type==\"prompt.failed\" and .data.prompt_id==\"$P3\"" 30; then
  pass "a prompt after the session's total fails"
else
  fail "a prompt after the session's total fails" "$(jq -c '[.[]|{type,data}]' <<<"$EVENTS" | tail -c 2000)"
fi
check "its reason names the output limit" jq -e ".[]|select(.type==\"prompt.failed\" and .data.prompt_id==\"$P3\")|.data.reason|startswith(\"output limit\")" <<<"$EVENTS"

# ---- metrics ----
api GET /metrics
check "metrics count refusals" grep -q '^sessiond_sandbox_limit_refused_total [1-9]' <<<"$BODY"
check "metrics count waits" grep -q '^sessiond_sandbox_limit_waits_total [1-9]' <<<"$BODY"
check "metrics count exec refusals" grep -q '^sessiond_exec_limit_refused_total [1-9]' <<<"$BODY"
check "metrics count session rate refusals" grep -q '^sessiond_session_create_limited_total [1-9]' <<<"$BODY"
check "metrics count truncations" grep -q '^sessiond_prompt_output_truncated_total [1-9]' <<<"$BODY"
check "metrics show the slots in use" grep -q '^sessiond_sandbox_slots_used ' <<<"$BODY"
finish
