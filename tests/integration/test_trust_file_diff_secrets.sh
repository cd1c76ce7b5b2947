#!/usr/bin/env bash
# The diff in agent.file_changed is read from the workspace, not from the agent's output, so
# the output redactors never see it. Attack: an agent writes the repository secret it was
# given (as is and in base64) into files and reports them; the events must carry the diffs
# with [REDACTED:NAME] in place of every form of the value, and the value must be nowhere in
# the session's events.
. "$(dirname "$0")/lib.sh"

G="git -c user.name=Seed -c user.email=seed@example.com -c init.defaultBranch=main"
mkdir -p "$TMP/o"
( cd "$TMP/o" && $G init -q --bare r.git && $G init -q seed && cd seed &&
  echo hello > README && $G add -A && $G commit -qm init && $G push -q ../r.git main ) ||
  { fail "seed repository"; finish; }

start_server --repos-tick-ms 200 --secrets-key-file "$TMP/master.key"
VAL='dIfF-s3cr3t/Zq9+xK7'
api POST /v1/repos "{\"name\":\"r\",\"url\":\"$TMP/o/r.git\",\"pool_size\":0,\"image_interval_min\":0}"
expect_status 201 "repository added"
api PUT /v1/repos/r/secrets/DIFF_TOKEN "{\"value\":\"$VAL\"}"
expect_status 200 "repository secret set"

SID=$(new_session '{"title":"leak","repo":"r"}')
wait_event "$SID" sandbox.ready 1 >/dev/null || fail "sandbox ready" "no sandbox.ready"
SCRIPT='printf "token=%s\n" "$DIFF_TOKEN" > leak.txt
printf "%s" "$DIFF_TOKEN" | base64 > leak64.txt
echo "{\"type\":\"file_changed\",\"path\":\"leak.txt\",\"action\":\"created\"}"
echo "{\"type\":\"file_changed\",\"path\":\"leak64.txt\",\"action\":\"created\"}"'
api POST "/v1/sessions/$SID/messages" "$(jq -nc --arg c "$SCRIPT" '{content:$c}')"
expect_status 202 "prompt queued"
wait_event "$SID" prompt.completed 1 >/dev/null || fail "prompt" "not completed"
api GET "/v1/sessions/$SID/events?limit=1000"
EVS=$BODY
B64=$(printf '%s' "$VAL" | base64)
D1=$(jget '[.events[] | select(.type=="agent.file_changed" and .data.path=="leak.txt")][0].data.diff' "$EVS")
D2=$(jget '[.events[] | select(.type=="agent.file_changed" and .data.path=="leak64.txt")][0].data.diff' "$EVS")
check "the diffs are there, with the marker" grep -q '^+token=\[REDACTED:DIFF_TOKEN\]$' <<<"$D1"
check "the base64 form is replaced too" grep -q 'REDACTED:DIFF_TOKEN' <<<"$D2"
check "the value is in no event" [ "$(grep -c -F -- "$VAL" <<<"$EVS")" = 0 -a "$(grep -c -F -- "${B64%%=*}" <<<"$EVS")" = 0 ]
finish
