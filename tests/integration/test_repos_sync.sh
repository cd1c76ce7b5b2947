#!/usr/bin/env bash
# Session start of issue 5, the parts that run in the background: a session created with a
# repository gets its workspace and sandbox at creation (`sandbox.ready` without any prompt);
# a start from an image syncs to the branch head in the background, and while that sync runs
# file reads proceed on the workspace as it is while writes (PUT files, exec) and the agent
# wait for it; a wait longer than the bound fails clearly (503 / prompt.failed). The prompt-end
# commit + snapshot come after prompt.completed and before the next prompt starts.
#
# The sync is made slow on purpose with SESSIOND_TEST_SYNC_DELAY_MS (a test hook of
# sandbox/repos.c); SESSIOND_REPOS_SYNC_WAIT_MS bounds the waits.
. "$(dirname "$0")/lib.sh"

G="git -c user.name=Seed -c user.email=seed@example.com -c init.defaultBranch=main"
mkdir -p "$TMP/octo"
( cd "$TMP/octo" && $G init -q --bare hello.git && $G init -q seed && cd seed &&
  echo hello > README && $G add -A && $G commit -qm init && $G push -q ../hello.git main ) ||
  { fail "seed repository"; finish; }
REMOTE="$TMP/octo/hello.git"

# count SID TYPE - events of TYPE now
count() {
  api GET "/v1/sessions/$1/events?limit=1000"
  jget "[.events[] | select(.type==\"$2\")] | length"
}
# seq_of SID TYPE N - seq of the Nth event of TYPE (empty if none)
seq_of() {
  api GET "/v1/sessions/$1/events?limit=1000"
  jget "[.events[] | select(.type==\"$2\")][$(($3 - 1))].seq // empty"
}

export SESSIOND_TEST_SYNC_DELAY_MS=2500 SESSIOND_REPOS_SYNC_WAIT_MS=20000
start_server --repos-tick-ms 200 --shutdown-grace 1
api POST /v1/repos "{\"name\":\"hello\",\"url\":\"$REMOTE\",\"pool_size\":0,\"image_interval_min\":0}"
expect_status 201 "repository added"
api POST /v1/repos/hello/images
wait_image hello
check "image built" [ "$state" = ready ]

# the branch moves on after the image: a start from the image must sync to the new head
( cd "$TMP/octo/seed" && echo fresh > NEW.txt && $G add -A && $G commit -qm two &&
  $G push -q ../hello.git main ) || fail "push a new commit"
NEW_HEAD=$(git -C "$TMP/octo/seed" rev-parse HEAD)

# ---- creation starts the sandbox; reads proceed during the sync, writes wait ----
SID=$(new_session '{"repo":"hello"}')
READY=$(wait_event "$SID" sandbox.ready 1 20)
check "session with a repository: sandbox.ready without a prompt" [ -n "$READY" ]
check "sandbox.ready from the image, sync still running" [ "$(jget .data.source "$READY")" = image -a "$(jget .data.syncing "$READY")" = true ]
api GET "/v1/sessions/$SID/files?path=README"
R_STATUS=$STATUS R_BODY=$BODY
check "read during the sync answers" [ "$R_STATUS" = 200 -a "$R_BODY" = hello ]
api GET "/v1/sessions/$SID/files?path=NEW.txt"
N_STATUS=$STATUS
SYNCED_AFTER_READS=$(count "$SID" git.synced)
check "reads did not wait for the sync (workspace as restored)" [ "$N_STATUS" = 404 -a "$SYNCED_AFTER_READS" = 0 ]
api PUT "/v1/sessions/$SID/files?path=mine.txt" "written"
W_STATUS=$STATUS
SYNCED_AFTER_WRITE=$(count "$SID" git.synced)
check "a write waits for the sync, then succeeds" [ "$W_STATUS" = 200 -a "$SYNCED_AFTER_WRITE" = 1 ]
S=$(wait_event "$SID" git.synced 1)
check "git.synced names the new head" [ "$(jget .data.head "$S")" = "$NEW_HEAD" ]
api GET "/v1/sessions/$SID/files?path=NEW.txt"
check "after the sync the workspace is at the branch head" [ "$STATUS" = 200 -a "$BODY" = fresh ]
api GET "/v1/sessions/$SID/files?path=mine.txt"
check "the waiting write landed" [ "$STATUS" = 200 -a "$BODY" = written ]

# ---- the agent waits for the sync ----
SID2=$(new_session '{"repo":"hello"}')
api POST "/v1/sessions/$SID2/messages" '{"content":"test -f NEW.txt && echo ok > agent.txt"}'
expect_status 202 "prompt queued right after creation"
P=$(wait_event "$SID2" prompt.completed 1 30)
check "the agent ran after the sync (it saw the new head)" [ -n "$P" ]
check "prompt.started after git.synced" [ "$(seq_of "$SID2" prompt.started 1)" -gt "$(seq_of "$SID2" git.synced 1)" ]
check "sandbox.ready before prompt.started" [ "$(seq_of "$SID2" sandbox.ready 1)" -lt "$(seq_of "$SID2" prompt.started 1)" ]

# ---- prompt end: completed first, then commit + snapshot, then the next prompt ----
api POST "/v1/sessions/$SID2/messages" '{"content":"echo two > two.txt"}'
wait_event "$SID2" prompt.completed 2 30 >/dev/null
wait_event "$SID2" session.snapshot 2 30 >/dev/null
C1=$(seq_of "$SID2" prompt.completed 1)
G1=$(seq_of "$SID2" git.commit 1)
S1=$(seq_of "$SID2" session.snapshot 1)
P2=$(seq_of "$SID2" prompt.started 2)
check "prompt.completed before its commit and snapshot" [ -n "$G1" ] && [ "$C1" -lt "$G1" -a "$G1" -lt "$S1" ]
check "the next prompt starts after the snapshot of the turn" [ "$S1" -lt "$P2" ]
api GET "/v1/sessions/$SID2/snapshots"
check "one snapshot per turn" [ "$(jget '.snapshots | length')" = 2 ]

# ---- a bounded wait: 503 for a write, prompt.failed for the agent ----
stop_server
export SESSIOND_TEST_SYNC_DELAY_MS=4000 SESSIOND_REPOS_SYNC_WAIT_MS=700
start_server --repos-tick-ms 200 --shutdown-grace 1
SID3=$(new_session '{"repo":"hello"}')
wait_event "$SID3" sandbox.ready 1 20 >/dev/null
api PUT "/v1/sessions/$SID3/files?path=x.txt" "x"
check "a write that waits too long: 503" [ "$STATUS" = 503 ] && check "503 says the workspace is syncing" grep -q "still syncing" <<<"$BODY"
api POST "/v1/sessions/$SID3/exec" '{"argv":["true"]}'
check "exec waits for the sync too (503 when too long)" [ "$STATUS" = 503 ]
api POST "/v1/sessions/$SID3/messages" '{"content":"true"}'
F=$(wait_event "$SID3" prompt.failed 1 20)
check "a prompt that waits too long fails with the reason" grep -q "syncing" <<<"$(jget .data.reason "$F")"
wait_event "$SID3" git.synced 1 20 >/dev/null
api PUT "/v1/sessions/$SID3/files?path=x.txt" "x"
expect_status 200 "after the sync the write goes through"
finish
