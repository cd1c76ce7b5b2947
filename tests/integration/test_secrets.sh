#!/usr/bin/env bash
# Admin-managed secrets end to end: the API (validation, admin only, values never listed),
# injection into exec (the repository's value beats the global one, no repository no
# secrets), redaction of values printed in pieces, across chunk boundaries, in base64 and
# URL-encoded (nowhere in the data dir's files, the server log, WebSocket frames or the
# remote), and a push blocked when the change holds a secret value.
. "$(dirname "$0")/lib.sh"

G="git -c user.name=Seed -c user.email=seed@example.com -c init.defaultBranch=main"
mkdir -p "$TMP/octo"
( cd "$TMP/octo" && $G init -q --bare hello.git && $G init -q seed && cd seed &&
  echo hello > README && $G add -A && $G commit -qm init && $G push -q ../hello.git main ) ||
  { fail "seed repository"; finish; }
REMOTE="$TMP/octo/hello.git"

start_server --repos-tick-ms 200 --secrets-key-file "$TMP/master.key" --shutdown-grace 1
ALICE=$(make_token alice user)

GLOBAL_VAL='gLoBaL-v4lue-0001'
REPO_VAL='rEpO/s3cr3t+Zq9=xK7!'
OTHER_VAL='0ther-gl0bal-Wv5'

# ---- the API ----
api PUT /v1/secrets/NPM_TOKEN "{\"value\":\"$GLOBAL_VAL\"}" "$ALICE"
expect_error 403 forbidden "a user token cannot set a secret"
api GET /v1/secrets "" "$ALICE"
expect_error 403 forbidden "a user token cannot list secrets"
api DELETE /v1/secrets/NPM_TOKEN "" "$ALICE"
expect_error 403 forbidden "a user token cannot delete a secret"
for bad in lower 9LEADING 'A-B' "$(printf 'A%.0s' $(seq 1 65))"; do
  api PUT "/v1/secrets/$bad" "{\"value\":\"$GLOBAL_VAL\"}"
  expect_error 400 invalid "bad name $bad is refused"
done
for res in PATH HOME HTTPS_PROXY NO_PROXY ANTHROPIC_API_KEY OPENAI_API_KEY GIT_ASKPASS SESSIOND_X; do
  api PUT "/v1/secrets/$res" "{\"value\":\"$GLOBAL_VAL\"}"
  expect_error 400 invalid "reserved name $res is refused"
done
api PUT /v1/secrets/SHORTONE '{"value":"1234567"}'
expect_error 400 invalid "a value shorter than 8 bytes is refused"
api PUT /v1/secrets/NOVALUE '{"value":12345678}'
expect_error 400 invalid "a non-string value is refused"
api PUT /v1/secrets/NPM_TOKEN "{\"value\":\"$GLOBAL_VAL\"}"
expect_status 200 "admin sets a global secret"
api PUT /v1/secrets/OTHER_ONE "{\"value\":\"$OTHER_VAL\"}"
expect_status 200 "admin sets a second global secret"
api GET /v1/secrets
check "list has names, updated_at, set_by" jq -e '.secrets|length==2 and .[0].name=="NPM_TOKEN" and (.[0].updated_at>0) and (.[0].set_by|type=="string")' <<<"$BODY"
check "list never shows values" bash -c "! grep -q -- '$GLOBAL_VAL' <<<'$BODY' && ! grep -q value <<<'$BODY'"
api PUT /v1/repos/nope/secrets/NPM_TOKEN "{\"value\":\"$REPO_VAL\"}"
expect_error 404 not_found "a secret of an unknown repository is 404"

api POST /v1/repos "{\"name\":\"hello\",\"url\":\"$REMOTE\",\"pool_size\":0,\"image_interval_min\":0}"
expect_status 201 "add a repository"
api PUT /v1/repos/hello/secrets/NPM_TOKEN "{\"value\":\"$REPO_VAL\"}" "$ALICE"
expect_error 403 forbidden "a user token cannot set a repository secret"
api PUT /v1/repos/hello/secrets/NPM_TOKEN "{\"value\":\"$REPO_VAL\"}"
expect_status 200 "admin sets a repository secret"
api GET /v1/repos/hello/secrets
check "repository list" jq -e '.secrets|length==1 and .[0].name=="NPM_TOKEN"' <<<"$BODY"
api PUT /v1/secrets/TO_DELETE "{\"value\":\"$OTHER_VAL\"}"
api DELETE /v1/secrets/TO_DELETE
expect_status 204 "admin deletes a secret"
api DELETE /v1/secrets/TO_DELETE
expect_error 404 not_found "deleting it again is 404"
api GET "/v1/audit?action=secret.set"
check "secret changes are audited without values" jq -e '[.entries[]|select(.action=="secret.set")]|length>=3' <<<"$BODY"
check "the audit log holds no value" bash -c "! grep -q -- '$GLOBAL_VAL' <<<'$BODY'"

sha() { printf %s "$1" | sha256sum | cut -c1-64; }

# ---- injection ----
SID=$(new_session '{"title":"with repo","repo":"hello"}' "$ALICE")
api POST "/v1/sessions/$SID/exec" '{"script":"printenv NPM_TOKEN | tr -d \"\\n\" | sha256sum | cut -c1-64; printenv OTHER_ONE | tr -d \"\\n\" | sha256sum | cut -c1-64"}' "$ALICE"
expect_status 200 "exec in a repository session"
check "the repository's value beats the global one" [ "$(jget .stdout | sed -n 1p)" = "$(sha "$REPO_VAL")" ]
check "a global secret reaches a repository session" [ "$(jget .stdout | sed -n 2p)" = "$(sha "$OTHER_VAL")" ]
api POST "/v1/sessions/$SID/exec" '{"argv":["printenv","NPM_TOKEN"]}' "$ALICE"
check "printenv shows the marker, not the value" [ "$(jget .stdout)" = "[REDACTED:NPM_TOKEN]" ]
NOREPO=$(new_session '{"title":"no repo"}' "$ALICE")
api POST "/v1/sessions/$NOREPO/exec" '{"script":"env | grep -c -e NPM_TOKEN -e OTHER_ONE; true"}' "$ALICE"
check "a session without a repository gets no secrets" [ "$(jget .stdout)" = "0" ]

# ---- redaction: pieces across chunks, base64, URL-encoded, in exec and in a prompt ----
WS_OUT="$TMP/ws.frames"
node "$(dirname "$0")/wscapture.mjs" "ws://127.0.0.1:$PORT/v1/sessions/$SID/ws?token=$ADMIN&after=0" "$WS_OUT" 30 &
WS_PID=$!
for i in $(seq 1 100); do [ -f "$WS_OUT.ready" ] && break; sleep 0.05; done
PIECES='v=$NPM_TOKEN; printf %s "${v:0:7}"; sleep 0.3; printf %s "${v:7}"; echo; printf %s "$v" | base64; printf %s "$v" | jq -sRr @uri; printf %s "$v" >&2; printf "x%s" "$v" | base64 -w0; echo'
SCRIPT_JSON=$(jq -n --arg s "bash -c '$PIECES'" '{script:$s}')
api POST "/v1/sessions/$SID/exec" "$SCRIPT_JSON" "$ALICE"
check "exec output in pieces is redacted" jq -e '(.stdout|split("\n")[0])=="[REDACTED:NPM_TOKEN]" and (.stderr=="[REDACTED:NPM_TOKEN]")' <<<"$BODY"
check "base64 and URL-encoded forms are redacted" jq -e '(.stdout|split("\n")[1]|test("REDACTED:NPM_TOKEN")) and (.stdout|split("\n")[2]=="[REDACTED:NPM_TOKEN]")' <<<"$BODY"
EXEC_OUT=$BODY
api POST "/v1/sessions/$SID/messages" "$(jq -n --arg c "$PIECES" '{content:$c}')" "$ALICE"
expect_status 202 "a prompt printing the secret"
wait_event "$SID" prompt.completed 1 >/dev/null
check "the prompt completed" [ $? = 0 ]
api GET "/v1/sessions/$SID/events?limit=1000" "" "$ALICE"
check "agent output shows the marker" bash -c "grep -q 'REDACTED:NPM_TOKEN' <<<'$(printf %s "$BODY" | tr -d "'")'"
sleep 0.5
kill $WS_PID 2>/dev/null; wait $WS_PID 2>/dev/null
check "WebSocket frames were captured" [ -s "$WS_OUT" ]

# leaks VALUE WHERE... - fails if the value or its base64 / URL-encoded forms is in any file.
B64=$(printf %s "$REPO_VAL" | base64 -w0 | tr -d '=')
URI=$(printf %s "$REPO_VAL" | jq -sRr @uri)
no_leak() {
  local what=$1; shift
  check "the value is nowhere in $what" bash -c '! grep -r -a -q -F -e "$0" -e "$1" -e "$2" "$@"' "$REPO_VAL" "$B64" "$URI" "$@"
}
check "the events hold the marker" bash -c 'grep -r -a -q -F "[REDACTED:NPM_TOKEN]" "$0"/sessions' "$DATA_DIR"
no_leak "the data dir (session files, spool, registry)" "$DATA_DIR"
no_leak "the server log" "$SERVER_LOG"
no_leak "the WebSocket frames" "$WS_OUT"
check "the WebSocket frames hold the marker" grep -q -F 'REDACTED:NPM_TOKEN' "$WS_OUT"
api GET "/v1/sessions/$SID/export" "" "$ALICE"
printf %s "$BODY" > "$TMP/export.json"
no_leak "the export" "$TMP/export.json"

# ---- push scan ----
# A clean change pushes.
CLEAN=$(new_session '{"title":"clean","repo":"hello"}' "$ALICE")
api POST "/v1/sessions/$CLEAN/messages" '{"content":"echo harmless > notes.txt"}' "$ALICE"
wait_event "$CLEAN" git.commit 1 >/dev/null
api POST "/v1/sessions/$CLEAN/push" "" "$ALICE"
check "a change without secrets pushes" [ "$STATUS" = 200 ]
# A file holding the value blocks the push, even after it is deleted again (history).
api POST "/v1/sessions/$SID/messages" '{"content":"printf \"//registry/:_authToken=%s\\n\" \"$NPM_TOKEN\" > .npmrc"}' "$ALICE"
wait_event "$SID" git.commit 1 >/dev/null
api POST "/v1/sessions/$SID/messages" '{"content":"rm .npmrc; echo later > later.txt"}' "$ALICE"
wait_event "$SID" git.commit 2 >/dev/null
api POST "/v1/sessions/$SID/push" "" "$ALICE"
expect_error 422 unprocessable "a push with the secret in its history is blocked"
BLK=$(wait_event "$SID" git.push_blocked 1 5)
check "git.push_blocked names the secret and the file" [ "$(jget .data.secret "$BLK")" = NPM_TOKEN -a "$(jget .data.path "$BLK")" = .npmrc ]
check "nothing reached the remote" [ -z "$(git --git-dir="$REMOTE" rev-parse --verify -q "sessiond/$SID")" ]
# The base64 of the value in a file blocks it too.
B64S=$(new_session '{"title":"b64","repo":"hello"}' "$ALICE")
api POST "/v1/sessions/$B64S/messages" '{"content":"printf %s \"$NPM_TOKEN\" | base64 > conf/enc.txt || { mkdir -p conf; printf %s \"$NPM_TOKEN\" | base64 > conf/enc.txt; }"}' "$ALICE"
wait_event "$B64S" git.commit 1 >/dev/null
api POST "/v1/sessions/$B64S/push" "" "$ALICE"
expect_error 422 unprocessable "a push with the base64 of the value is blocked"
api POST "/v1/sessions/$B64S/pull-request" '{}' "$ALICE"
check "a pull request cannot push it either" [ "$STATUS" != 200 -a "$STATUS" != 201 ]

# A setup step that writes .npmrc into the image: its log is scrubbed, and the file cannot
# reach a pushed branch.
api POST /v1/repos "{\"name\":\"withsetup\",\"url\":\"$REMOTE\",\"pool_size\":0,\"image_interval_min\":0,\"setup\":[\"printf '//r/:_authToken=%s\\\\n' \\\"\$NPM_TOKEN\\\" > .npmrc; echo setup saw \$NPM_TOKEN\"]}"
expect_status 201 "a repository with a setup step using the secret"
api PUT /v1/repos/withsetup/secrets/NPM_TOKEN "{\"value\":\"$REPO_VAL\"}"
api POST /v1/repos/withsetup/images
wait_image withsetup 60
check "the image was built" [ "$state" = ready ]
check "the setup log shows the marker, not the value" bash -c 'grep -q "setup saw \[REDACTED:NPM_TOKEN\]" <<<"$0"' "$(jget '.images[0].log_tail')"
IMGS=$(new_session '{"title":"from image","repo":"withsetup"}' "$ALICE")
api POST "/v1/sessions/$IMGS/messages" '{"content":"echo change > change.txt"}' "$ALICE"
wait_event "$IMGS" git.commit 1 >/dev/null
api POST "/v1/sessions/$IMGS/push" "" "$ALICE"
expect_error 422 unprocessable "the image's .npmrc blocks the push"
check "the event names .npmrc" [ "$(jget .data.path "$(wait_event "$IMGS" git.push_blocked 1 5)")" = .npmrc ]
# git stores objects compressed: look at what the remote holds through git itself.
git --git-dir="$REMOTE" log --all -p --format='%H %B' >"$TMP/remote.txt" 2>&1
git --git-dir="$REMOTE" for-each-ref >>"$TMP/remote.txt"
check "the remote dump covers the clean push" grep -q harmless "$TMP/remote.txt"
no_leak "the remote repository" "$TMP/remote.txt" "$REMOTE"
no_leak "the data dir after the pushes (registry, sessions, spool)" "$DATA_DIR"/registry.db* "$DATA_DIR/sessions" "$DATA_DIR"/spool*
no_leak "the server log after the pushes" "$SERVER_LOG"

# ---- key rotation: every sealed value opens with the new key, none with the old one ----
api PUT /v1/me/credentials/github '{"token":"ghp_rotate_me_0123456789"}' "$ALICE"
expect_status 204 "alice stores a GitHub token (re-sealed too)"
OLD_KEY=$(cat "$TMP/master.key")
cp "$TMP/master.key" "$TMP/old.key"
stop_server
"$SESSIOND_BIN" rotate-secrets-key --data-dir "$DATA_DIR" --secrets-key-file "$TMP/master.key" >"$TMP/rotate.out" 2>&1
check "rotate-secrets-key succeeds" [ $? = 0 ]
check "it re-sealed the secrets and the token" grep -q "re-sealed 5 values" "$TMP/rotate.out"
check "the key file changed" [ "$(cat "$TMP/master.key")" != "$OLD_KEY" -a ! -e "$TMP/master.key.new" ]
check "the key file stays private" [ "$(stat -c %a "$TMP/master.key")" = 600 ]
"$SESSIOND_BIN" rotate-secrets-key --data-dir "$DATA_DIR" --secrets-key-file "$TMP/old.key" >"$TMP/rotate2.out" 2>&1
check "the old key opens nothing any more" [ $? != 0 ] && check "and changes nothing" [ "$(cat "$TMP/old.key")" = "$OLD_KEY" -a ! -e "$TMP/old.key.new" ]
restart_server
api POST "/v1/sessions/$SID/exec" '{"script":"printenv NPM_TOKEN | tr -d \"\\n\" | sha256sum | cut -c1-64"}' "$ALICE"
check "after the rotation the secret still reaches the session" [ "$(jget .stdout | sed -n 1p)" = "$(sha "$REPO_VAL")" ]
api POST "/v1/sessions/$CLEAN/push" "" "$ALICE"
check "after the rotation the stored token still opens (push with the user's token)" [ "$STATUS" = 200 -a "$(jget .credentials)" = user ]
no_leak "the rotation's output" "$TMP/rotate.out" "$TMP/rotate2.out"

# ---- a value typed on the command line: scrubbed from exec.started and the audit log ----
api POST "/v1/sessions/$SID/exec" "$(jq -n --arg v "$REPO_VAL" '{argv:["echo",$v]}')" "$ALICE"
check "typed value: the answer shows the marker" [ "$(jget .stdout)" = "[REDACTED:NPM_TOKEN]" ]
api POST "/v1/sessions/$SID/exec" "$(jq -n --arg v "$REPO_VAL" '{script:("echo " + $v + " | wc -c")}')" "$ALICE"
api GET "/v1/audit?action=exec&limit=2"
check "the audit entries show the marker" jq -e '[.entries[].detail | tostring | test("REDACTED:NPM_TOKEN")] | all' <<<"$BODY"
# (the workspaces, their snapshots and the image hold the files the test wrote on purpose)
no_leak "the registry (audit log), session files and spool after typed values" "$DATA_DIR"/registry.db* "$DATA_DIR/sessions" "$DATA_DIR"/spool*

# ---- a value pasted into a message: stored and run as its marker ----
api POST "/v1/sessions/$SID/messages" "$(jq -n --arg v "$REPO_VAL" '{content:("echo pasted " + $v)}')" "$ALICE"
expect_status 202 "a message holding the value"
wait_event "$SID" prompt.completed 4 30 >/dev/null
api GET "/v1/sessions/$SID/messages?limit=100" "" "$ALICE"
check "the stored message shows the marker" jq -e '[.messages[] | select(.content | test("echo pasted \\[REDACTED:NPM_TOKEN\\]"))] | length == 1' <<<"$BODY"
no_leak "the session files after a pasted value" "$DATA_DIR/sessions" "$DATA_DIR"/spool*
finish
