#!/usr/bin/env bash
# test_sandbox.sh - prompts run by agents in the session sandbox (issue 4): the default shell
# agent, the scripted agent (every protocol message type), queue order with three authors,
# cancel (queued and running), agent crash, timeout, exec sync/async, files API + traversal.
. "$(dirname "$0")/lib.sh"

# events_of SID [AFTER] - all events (JSON array) of a session after seq AFTER.
events_of() {
  local sid=$1 after=${2:-0}
  : >"$TMP/ev"
  while :; do
    api GET "/v1/sessions/$sid/events?after=$after&limit=1000"
    jq -c '.events[]' "$TMP/body" >>"$TMP/ev"
    [ "$(jq -r .has_more "$TMP/body")" = true ] || break
    after=$(jq -r .next_after "$TMP/body")
  done
  jq -s -c . "$TMP/ev"
}

# wait_for SID JQ_FILTER [TIMEOUT_S] - wait until some event matches (select(...) body).
wait_for() {
  local sid=$1 filter=$2 t=${3:-20} i
  for i in $(seq 1 $((t * 10))); do
    EVENTS=$(events_of "$sid")
    if [ "$(jq "[.[] | select($filter)] | length" <<<"$EVENTS")" -gt 0 ]; then return 0; fi
    sleep 0.1
  done
  return 1
}

prompt() { # prompt SID CONTENT [TOKEN] -> prints prompt_id
  api POST "/v1/sessions/$1/messages" "$(jq -c -n --arg c "$2" '{content:$c}')" "${3:-$ADMIN}"
  jget .prompt_id
}

start_server --sandbox local --prompt-timeout 3 --cancel-grace-ms 300 --sandbox-idle-stop 3

# ---- the default agent: shell ----
S1=$(new_session '{"title":"shell"}')
P=$(prompt "$S1" $'echo hello > out.txt\necho "printed by the script"\necho to-stderr >&2')
check "shell prompt queued" [ -n "$P" ] && [ "$P" != null ]
if wait_for "$S1" ".type==\"prompt.completed\" and .data.prompt_id==\"$P\""; then
  pass "shell prompt completed"
else
  fail "shell prompt completed" "$(jq -c '[.[]|{type,data}]' <<<"$EVENTS" | head -c 2000)"
fi
check "prompt.started before completed" [ "$(jq -r '[.[]|select(.type|startswith("prompt."))|.type]|join(",")' <<<"$EVENTS")" = "prompt.started,prompt.completed" ]
check "agent output streamed" jq -e '[.[]|select(.type=="agent.output")|.data.text]|join("")|contains("printed by the script")' <<<"$EVENTS"
check "stderr streamed" jq -e '[.[]|select(.type=="agent.output" and .data.stream=="stderr")|.data.text]|join("")|contains("to-stderr")' <<<"$EVENTS"
check "sandbox.ready before prompt.started" jq -e '(map(.type)|index("sandbox.ready")) < (map(.type)|index("prompt.started"))' <<<"$EVENTS"
check "completed has timings" jq -e '.[]|select(.type=="prompt.completed")|.data|(.exit_code==0 and (.duration_ms|type)=="number" and (.time_to_first_token_ms|type)=="number")' <<<"$EVENTS"
api GET "/v1/sessions/$S1/messages"
check "assistant message stored" jq -e '[.messages[]|select(.role=="assistant")]|length==1' <<<"$BODY"
api GET "/v1/sessions/$S1/files?path=out.txt"
check "file written by the prompt is readable" [ "$STATUS" = 200 ] && [ "$BODY" = hello ]

# ---- the scripted agent: every message type ----
S2=$(new_session '{"title":"scripted","agent":"scripted"}')
P=$(prompt "$S2" "write the file please")
wait_for "$S2" ".type==\"prompt.completed\"" || fail "scripted completed" "$(jq -c '[.[]|{type,data}]' <<<"$EVENTS" | head -c 2000)"
for t in agent.status agent.output agent.tool_call agent.tool_result agent.file_changed agent.artifact agent.done message; do
  check "scripted emits $t" jq -e "[.[]|select(.type==\"$t\")]|length>0" <<<"$EVENTS"
done
check "tool call/result ids match" jq -e '([.[]|select(.type=="agent.tool_call")|.data.id]) == ([.[]|select(.type=="agent.tool_result")|.data.id])' <<<"$EVENTS"
check "prompt on stdin equals PROMPT_FILE" jq -e '.[]|select(.type=="agent.done")|.data.prompt_matches_file==true' <<<"$EVENTS"
check "output message merged with plain line" jq -e '[.[]|select(.type=="agent.output")|.data.text]|join("")|contains("Hello from the scripted agent.\na plain line")' <<<"$EVENTS"
check "assistant message event" jq -e '.[]|select(.type=="message" and .data.role=="assistant")|.data.content=="Done: write the file please"' <<<"$EVENTS"
api GET "/v1/sessions/$S2/files?path=scripted.txt"
check "scripted tool wrote the file" [ "$BODY" = "write the file please" ]

# prompt never in the environment; identity variables are
P=$(prompt "$S2" "env")
wait_for "$S2" ".type==\"prompt.completed\" and .data.prompt_id==\"$P\"" || fail "env prompt"
ENVNAMES=$(jq -r '[.[]|select(.type=="agent.output" and .data.prompt_id=="'"$P"'")|.data.text]|join("")' <<<"$EVENTS")
for v in PROMPT_FILE CONTEXT_FILE SESSION_ID PROMPT_ID GIT_AUTHOR_NAME GIT_AUTHOR_EMAIL GIT_COMMITTER_NAME GIT_COMMITTER_EMAIL; do
  check "agent env has $v" grep -qw "$v" <<<"$ENVNAMES"
done
check "no server secrets in the agent env" bash -c "! grep -qwE 'SESSIOND_ADMIN_TOKEN|ADMIN|PROMPT' <<<'$ENVNAMES'"

# ---- per-session agents: a command run inside the sandbox; a missing agent; a host path ----
S9=$(new_session '{"title":"command agent","agent":"printf from-command-agent:; cat"}')
P=$(prompt "$S9" "xyz")
wait_for "$S9" ".type==\"prompt.completed\" and .data.prompt_id==\"$P\"" && pass "COMMAND ARGS agent runs" || fail "COMMAND ARGS agent runs" "$(jq -c '[.[]|{type,data}]' <<<"$EVENTS" | tail -c 1500)"
check "command agent got the prompt on stdin" jq -e '[.[]|select(.type=="agent.output")|.data.text]|join("")=="from-command-agent:xyz"' <<<"$EVENTS"
S10=$(new_session '{"title":"missing agent","agent":"no-such-agent"}')
P=$(prompt "$S10" "hello")
wait_for "$S10" ".type==\"prompt.failed\" and .data.prompt_id==\"$P\"" && pass "a missing agent fails the prompt" || fail "a missing agent fails the prompt"
S11=$(new_session '{"title":"host path agent","agent":"/etc/shadow"}')
P=$(prompt "$S11" "hello")
wait_for "$S11" ".type==\"prompt.failed\" and .data.prompt_id==\"$P\"" && pass "a session cannot name a host file as its agent" || fail "a session cannot name a host file as its agent"
check "the host file was not copied in" [ ! -e "$DATA_DIR/sandboxes/$S11/agent-bin" ]

# ---- queue order with three authors ----
S3=$(new_session '{"title":"queue","agent":"scripted"}')
TA=$(make_token alice user); TB=$(make_token bob user); TC=$(make_token carol user)
PA=$(prompt "$S3" "sleep 0.3" "$TA"); PB=$(prompt "$S3" "from bob" "$TB"); PC=$(prompt "$S3" "from carol" "$TC")
wait_for "$S3" ".type==\"prompt.completed\" and .data.prompt_id==\"$PC\"" 30 || fail "queue drained"
ORDER=$(jq -r '[.[]|select(.type=="prompt.started")|.data.prompt_id]|join(",")' <<<"$EVENTS")
check "prompts run in FIFO order" [ "$ORDER" = "$PA,$PB,$PC" ]
check "one at a time" jq -e '[.[]|select(.type=="prompt.started" or .type=="prompt.completed")|.type] == ["prompt.started","prompt.completed","prompt.started","prompt.completed","prompt.started","prompt.completed"]' <<<"$EVENTS"
check "author identity reaches the agent" jq -e '[.[]|select(.type=="agent.done")|.data.author]|.[1:]==["bob","carol"]' <<<"$EVENTS"

# ---- cancel: queued and running ----
S4=$(new_session '{"title":"cancel","agent":"scripted"}')
P1=$(prompt "$S4" "ignore-term"); P2=$(prompt "$S4" "queued one")
wait_for "$S4" ".type==\"prompt.started\" and .data.prompt_id==\"$P1\"" || fail "hang started"
api POST "/v1/sessions/$S4/cancel" "{\"prompt_id\":\"$P2\"}"
expect_status 200 "cancel a queued prompt"
api POST "/v1/sessions/$S4/cancel" '{}'
expect_status 200 "cancel the running prompt"
wait_for "$S4" ".type==\"prompt.cancelled\" and .data.prompt_id==\"$P1\"" 10 && pass "running prompt cancelled (SIGTERM ignored -> SIGKILL)" || fail "running prompt cancelled"
check "queued prompt cancelled, never started" jq -e "([.[]|select(.type==\"prompt.cancelled\" and .data.prompt_id==\"$P2\")]|length==1) and ([.[]|select(.type==\"prompt.started\" and .data.prompt_id==\"$P2\")]|length==0)" <<<"$EVENTS"
api POST "/v1/sessions/$S4/cancel" '{"prompt_id":"p_nope"}'
expect_error 404 not_found "cancel of an unknown prompt"

# ---- crash, error and timeout fail the prompt; the queue goes on ----
S5=$(new_session '{"title":"crash","agent":"scripted"}')
PX=$(prompt "$S5" "crash"); PE=$(prompt "$S5" "error"); PT=$(prompt "$S5" "hang"); PN=$(prompt "$S5" "after")
wait_for "$S5" ".type==\"prompt.completed\" and .data.prompt_id==\"$PN\"" 30 || fail "queue after failures"
check "crash -> prompt.failed with exit code" jq -e ".[]|select(.type==\"prompt.failed\" and .data.prompt_id==\"$PX\")|.data.reason|contains(\"code 3\")" <<<"$EVENTS"
check "agent error -> prompt.failed with its reason" jq -e ".[]|select(.type==\"prompt.failed\" and .data.prompt_id==\"$PE\")|.data.reason|contains(\"asked to fail\")" <<<"$EVENTS"
check "hang -> prompt.failed timeout" jq -e ".[]|select(.type==\"prompt.failed\" and .data.prompt_id==\"$PT\")|.data.reason|startswith(\"timeout\")" <<<"$EVENTS"

# ---- exec ----
api POST "/v1/sessions/$S1/exec" '{"argv":["sh","-c","echo out; echo err >&2; exit 7"]}'
expect_status 200 "exec sync"
check "exec sync result" jq -e '.stdout=="out\n" and .stderr=="err\n" and .exit_code==7 and .truncated==false' <<<"$BODY"
api POST "/v1/sessions/$S1/exec" '{"script":"cat; pwd","stdin":"from stdin\n"}'
check "exec script with stdin" jq -e '.stdout=="from stdin\n/workspace\n" and .exit_code==0' <<<"$BODY"
api POST "/v1/sessions/$S1/exec" '{"script":"sleep 10","timeout_s":1}'
check "exec timeout" jq -e '.timed_out==true and .signal==9' <<<"$BODY"
S6=$(new_session '{"title":"big exec"}')
api POST "/v1/sessions/$S6/exec" '{"script":"head -c 12000000 /dev/zero | tr \"\\\\0\" x"}'
check "exec output capped at 10 MiB" jq -e '.truncated==true and (.stdout|length)==10485760 and .exit_code==0' <<<"$BODY"
api POST "/v1/sessions/$S1/exec" '{"argv":["echo","async"],"async":true}'
expect_status 202 "exec async"
XID=$(jget .exec_id)
wait_for "$S1" ".type==\"exec.exited\" and .data.exec_id==\"$XID\"" && pass "async exec exited event" || fail "async exec exited event"
check "exec events started/output/exited" jq -e "[.[]|select(.data.exec_id==\"$XID\")|.type]==[\"exec.started\",\"exec.output\",\"exec.exited\"]" <<<"$EVENTS"
api POST "/v1/sessions/$S1/exec" '{"script":"echo running; sleep 30","async":true}'
XK=$(jget .exec_id)
wait_for "$S1" ".type==\"exec.output\" and .data.exec_id==\"$XK\"" || fail "async exec output"
api POST "/v1/sessions/$S1/exec/$XK/kill" '{"signal":"KILL"}'
expect_status 200 "kill a running exec"
wait_for "$S1" ".type==\"exec.exited\" and .data.exec_id==\"$XK\"" && pass "killed exec exited" || fail "killed exec exited"
check "killed exec reports SIGKILL" jq -e ".[]|select(.type==\"exec.exited\" and .data.exec_id==\"$XK\")|.data.signal==9" <<<"$EVENTS"
api POST "/v1/sessions/$S1/exec/$XK/kill" '{}'
expect_error 404 not_found "kill of a finished exec"
# synchronous execs may hold at most half of the HTTP threads (4 here): the third gets 429
curl -s -o /dev/null -H "Authorization: Bearer $ADMIN" -d '{"script":"sleep 4 # hold1"}' "$BASE/v1/sessions/$S1/exec" &
BG1=$!
curl -s -o /dev/null -H "Authorization: Bearer $ADMIN" -d '{"script":"sleep 4 # hold2"}' "$BASE/v1/sessions/$S2/exec" &
BG2=$!
# Both must be running (their exec.started is written), not just sent: a fixed sleep raced
# with slow sandbox starts under ASan and load.
wait_for "$S1" '.type=="exec.started" and .data.script=="sleep 4 # hold1"' 10 || fail "first holding exec started"
wait_for "$S2" '.type=="exec.started" and .data.script=="sleep 4 # hold2"' 10 || fail "second holding exec started"
api POST "/v1/sessions/$S3/exec" '{"script":"true"}'
expect_error 429 rate_limited "a third concurrent synchronous exec is refused"
api GET /healthz "" -
expect_status 200 "the server answers while synchronous execs run"
wait "$BG1" "$BG2"
api POST "/v1/sessions/$S1/exec" '{"argv":"ls"}'
expect_error 400 invalid "exec with a bad argv"
api POST "/v1/sessions/$S1/exec" '{"argv":["true"],"script":"true"}'
expect_error 400 invalid "exec with argv and script"

# ---- files ----
api PUT "/v1/sessions/$S1/files?path=dir/new.txt" "" "$ADMIN" -H 'Content-Type: application/octet-stream' --data-binary 'file body'
expect_status 200 "PUT a file (parents created)"
api GET "/v1/sessions/$S1/files?path=dir/new.txt"
check "GET it back" [ "$BODY" = "file body" ]
api POST "/v1/sessions/$S1/exec" '{"script":"echo more >> dir/new.txt && echo ok"}'
check "the sandbox user owns a file written by the API" jq -e '.stdout=="ok\n"' <<<"$BODY"
api GET "/v1/sessions/$S1/files?path=dir"
check "directory listing" jq -e '.entries|map(.name)|index("new.txt")!=null' <<<"$BODY"
api GET "/v1/sessions/$S1/files"
check "workspace root listing" jq -e '.entries|map(.name)|index("out.txt")!=null' <<<"$BODY"
api POST "/v1/sessions/$S1/exec" '{"script":"ln -s /etc/passwd passwd-link; ln -s .. up"}'
for p in '../../registry.db' '%2Fetc%2Fpasswd' 'passwd-link' 'up/registry.db' 'a%00b' 'dir/../../x'; do
  api GET "/v1/sessions/$S1/files?path=$p"
  expect_status 400 "GET traversal rejected: $p"
done
for p in '../x' '%2Ftmp%2Fx' 'up/x' 'passwd-link'; do
  api PUT "/v1/sessions/$S1/files?path=$p" "" "$ADMIN" --data-binary 'x'
  expect_status 400 "PUT traversal rejected: $p"
done
api GET "/v1/sessions/$S1/files?path=missing.txt"
expect_error 404 not_found "missing file 404"
VIEW=$(make_token viewer1 viewer)
api PUT "/v1/sessions/$S1/files?path=v.txt" "" "$VIEW" --data-binary 'x'
expect_status 403 "viewer cannot write files"
api POST "/v1/sessions/$S1/exec" '{"argv":["true"]}' "$VIEW"
expect_status 403 "viewer cannot exec"

# ---- DELETE cancels the running prompt and stops the sandbox ----
S7=$(new_session '{"title":"delete","agent":"scripted"}')
P1=$(prompt "$S7" "hang"); P2=$(prompt "$S7" "never runs")
wait_for "$S7" ".type==\"prompt.started\" and .data.prompt_id==\"$P1\"" || fail "hang started before delete"
api DELETE "/v1/sessions/$S7"
check "DELETE answered" [ "${STATUS:0:1}" = 2 ]
wait_for "$S7" ".type==\"sandbox.stopped\"" 10 && pass "sandbox stopped after DELETE" || fail "sandbox stopped after DELETE" "$(jq -c '[.[]|{type,data}]' <<<"$EVENTS" | tail -c 1500)"
check "running prompt cancelled by DELETE" jq -e ".[]|select(.type==\"prompt.cancelled\" and .data.prompt_id==\"$P1\")|.data.reason==\"session ended\"" <<<"$EVENTS"
check "queued prompt cancelled by DELETE" jq -e '.[]|select(.type=="session.ended")|.data.cancelled_prompts==1' <<<"$EVENTS"
check "queued prompt never started" jq -e "[.[]|select(.type==\"prompt.started\" and .data.prompt_id==\"$P2\")]|length==0" <<<"$EVENTS"
P3=$(prompt "$S7" "after reopening")
wait_for "$S7" ".type==\"prompt.completed\" and .data.prompt_id==\"$P3\"" 15 && pass "a prompt on an ended session runs (reopened)" || fail "a prompt on an ended session runs (reopened)"
api DELETE "/v1/sessions/$S7?purge=true"
for i in $(seq 1 50); do [ -e "$DATA_DIR/workspaces/$S7" ] || break; sleep 0.1; done
check "purge deletes the workspace" [ ! -e "$DATA_DIR/workspaces/$S7" ]

# ---- an idle sandbox stops (idle stop 3 s here) and starts again on the next use ----
S8=$(new_session '{"title":"idle"}')
api POST "/v1/sessions/$S8/exec" '{"argv":["true"]}'
wait_for "$S8" '.type=="sandbox.stopped" and .data.reason=="idle"' 15 && pass "idle sandbox stopped" || fail "idle sandbox stopped"
api POST "/v1/sessions/$S8/exec" '{"argv":["echo","again"]}'
check "restarted on the next exec" jq -e '.stdout=="again\n"' <<<"$BODY"
EVENTS=$(events_of "$S8")
check "two sandbox.ready events" jq -e '[.[]|select(.type=="sandbox.ready")]|length==2' <<<"$EVENTS"

finish
