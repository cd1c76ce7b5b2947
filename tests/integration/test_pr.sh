#!/usr/bin/env bash
# Automatic pull requests end to end, against fake_github.mjs (which keeps the pull requests it
# is sent, refuses a second open one for a head branch, needs the head branch pushed first, and
# changes the draft flag only through GraphQL, as GitHub does):
# - a prompt that changed files opens one draft pull request (the app's token), a prompt
#   without changes opens nothing, later prompts update the same one;
# - the body's generated block is regenerated between its markers and what a person wrote
#   outside them survives; one Co-authored-by per person who prompted; the title stays;
# - POST …/pull-request on a session with a pull request updates it (draft -> ready) with 200;
# - the PR is in GET /v1/sessions/{id} and the sessions list; /metrics counts it;
# - no push credential: exactly one pr.failed over two prompts; with credentials the next
#   prompt opens it;
# - a slow GitHub holds neither the session's next prompt nor another session's;
# - a merged pull request is noticed (pr.merged) and no other is opened.
. "$(dirname "$0")/lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)

G="git -c user.name=Seed -c user.email=seed@example.com -c init.defaultBranch=main"
mkdir -p "$TMP/git/octo" "$TMP/git/pubco"
( cd "$TMP" && $G init -q --bare git/octo/hello.git && $G init -q --bare git/pubco/open.git &&
  $G init -q seed && cd seed && echo hello > README && $G add -A && $G commit -qm init &&
  $G push -q ../git/octo/hello.git main && $G push -q ../git/pubco/open.git main ) ||
  { fail "seed repositories"; finish; }
openssl genrsa -out "$TMP/app.pem" 2048 2>/dev/null && chmod 600 "$TMP/app.pem" &&
  openssl rsa -in "$TMP/app.pem" -pubout -out "$TMP/app.pub" 2>/dev/null || { fail "app key"; finish; }

node "$HERE/fake_github.mjs" --port-file "$TMP/fake.port" --public-key "$TMP/app.pub" \
  --app-id 4242 --git-root "$TMP/git" --installed octo=77 --public pubco \
  --user-token ghp_human_TOKEN,ghs_static_TOKEN --log "$TMP/fake.log" 2>"$TMP/fake.err" &
FAKE_PID=$!
trap 'kill $FAKE_PID 2>/dev/null; _cleanup' EXIT
for i in $(seq 1 100); do [ -s "$TMP/fake.port" ] && break; sleep 0.05; done
FAKE="http://127.0.0.1:$(cat "$TMP/fake.port")"
fstat() { curl -s "$FAKE/_fake/stats" | jq -r ".$1"; }
fpr() { curl -s "$FAKE/_fake/prs" | jq -r "$1"; }
knob() { curl -s -X POST --data-binary "$1" "$FAKE/_fake/config" >/dev/null; }
count_type() {
  api GET "/v1/sessions/$1/events?limit=1000"
  jget "[.events[] | select(.type==\"$2\")] | length"
}

APP_ARGS=(--github-api-base "$FAKE/api/v3" --github-app-id 4242 --github-app-key-file "$TMP/app.pem")
start_server --repos-tick-ms 200 "${APP_ARGS[@]}" --public-url "https://sessiond.example/" \
  --secrets-key-file "$TMP/master.key" --shutdown-grace 1
ALICE=$(make_token alice user)
BOB=$(make_token bob user)

# ---- the setting ----
api POST /v1/repos "{\"name\":\"hello\",\"url\":\"$FAKE/octo/hello.git\",\"pool_size\":0,\"image_interval_min\":0}"
check "a new repository opens draft pull requests by default" [ "$STATUS" = 201 -a "$(jget .pr)" = draft ]
api PATCH /v1/repos/hello '{"pr":"sometimes"}'
expect_error 400 invalid "pr must be off, draft or ready"

# ---- a prompt with changes opens one draft pull request ----
SID=$(new_session '{"title":"Greet the world","repo":"hello"}' "$ALICE")
wait_event "$SID" sandbox.ready 1 >/dev/null
api POST "/v1/sessions/$SID/messages" '{"content":"echo hi > greeting.txt"}' "$ALICE"
PRE=$(wait_event "$SID" pr.created 1)
check "pr.created after a prompt with changes" [ $? = 0 -a "$(jget .data.number "$PRE")" = 1 ]
check "pr.created: the URL, the app's credentials, a draft" \
  [ "$(jget .data.url "$PRE")" = https://github.example/octo/hello/pull/1 -a "$(jget .data.credentials "$PRE")" = app -a "$(jget .data.draft "$PRE")" = true ]
check "the fake got one pull request, a draft of the session branch into main" \
  [ "$(fpr length)" = 1 -a "$(fpr '.[0].draft')" = true -a "$(fpr '.[0].head')" = "sessiond/$SID" -a "$(fpr '.[0].base')" = main ]
check "opened by the app" [ "$(fpr '.[0].by')" = app ]
check "title from the session title" [ "$(fpr '.[0].title')" = "Greet the world" ]
B1=$(fpr '.[0].body')
check "body: the markers" bash -c "printf '%s' \"\$1\" | grep -q '^<!-- sessiond -->' && printf '%s' \"\$1\" | grep -q '<!-- /sessiond -->$'" _ "$B1"
check "body: who asked what" bash -c "printf '%s' \"\$1\" | grep -qF -- '- **alice**: echo hi > greeting.txt'" _ "$B1"
check "body: the file changed" bash -c "printf '%s' \"\$1\" | grep -qF -- '- \`greeting.txt\`'" _ "$B1"
check "body: the session link" bash -c "printf '%s' \"\$1\" | grep -qF '(https://sessiond.example/#/s/$SID)'" _ "$B1"
check "body: Co-authored-by alice" bash -c "printf '%s' \"\$1\" | grep -qxF 'Co-authored-by: alice <alice@example.com>'" _ "$B1"
check "the branch was pushed before the pull request" \
  [ "$(git --git-dir="$TMP/git/octo/hello.git" rev-parse "sessiond/$SID")" = "$(jget .data.head_sha "$PRE")" ]

# ---- the session and the list show it ----
api GET "/v1/sessions/$SID" "" "$ALICE"
check "GET session: pr number, url, state, draft" \
  [ "$(jget .pr.number)" = 1 -a "$(jget .pr.url)" = https://github.example/octo/hello/pull/1 -a "$(jget .pr.state)" = open -a "$(jget .pr.draft)" = true ]
check "GET session: the head sha and a ci_state field" [ "$(jget .pr.head_sha)" = "$(jget .data.head_sha "$PRE")" -a "$(jget '.pr | has("ci_state")')" = true ]
api GET "/v1/sessions" "" "$ALICE"
check "sessions list: the pr" [ "$(jget ".sessions[] | select(.id==\"$SID\") | .pr.number")" = 1 ]

# ---- a prompt without changes: nothing ----
api POST "/v1/sessions/$SID/messages" '{"content":"true"}' "$BOB"
wait_event "$SID" session.snapshot 2 >/dev/null
sleep 0.5
check "no pull request call after a prompt without changes" \
  [ "$(fstat pulls)" = 1 -a "$(fstat pull_patches)" = 0 -a "$(count_type "$SID" pr.updated)" = 0 ]

# ---- a person edits the body outside the markers; the next prompt updates it ----
HUMAN=$(jq -n --arg b "$B1" '{body: ("Intro by a person.\n\n" + $b + "\n\nOutro by a person.")}')
curl -s -X PATCH -H 'Authorization: Bearer ghp_human_TOKEN' --data-binary "$HUMAN" \
  "$FAKE/api/v3/repos/octo/hello/pulls/1" >/dev/null
curl -s -X PATCH -H 'Authorization: Bearer ghp_human_TOKEN' --data-binary '{"title":"Greetings, edited"}' \
  "$FAKE/api/v3/repos/octo/hello/pulls/1" >/dev/null
api POST "/v1/sessions/$SID/messages" '{"content":"echo bye > farewell.txt"}' "$BOB"
PRU=$(wait_event "$SID" pr.updated 1)
check "pr.updated after the next prompt with changes" [ $? = 0 -a "$(jget .data.number "$PRU")" = 1 ]
check "still one pull request per session" [ "$(fpr length)" = 1 -a "$(fstat pulls)" = 1 ]
B2=$(fpr '.[0].body')
check "text above the markers survives" bash -c "printf '%s' \"\$1\" | head -n 1 | grep -qxF 'Intro by a person.'" _ "$B2"
check "text below the markers survives" bash -c "printf '%s' \"\$1\" | tail -n 1 | grep -qxF 'Outro by a person.'" _ "$B2"
check "one block, regenerated (both files, both prompts)" bash -c "[ \$(printf '%s' \"\$1\" | grep -c '^<!-- sessiond -->') = 1 ] && printf '%s' \"\$1\" | grep -qF 'farewell.txt' && printf '%s' \"\$1\" | grep -qF 'greeting.txt' && printf '%s' \"\$1\" | grep -qF -- '- **bob**: echo bye'" _ "$B2"
check "one Co-authored-by per person who prompted" bash -c "[ \$(printf '%s' \"\$1\" | grep -c '^Co-authored-by: ') = 2 ] && printf '%s' \"\$1\" | grep -qxF 'Co-authored-by: bob <bob@example.com>'" _ "$B2"
check "the title a person set is kept" [ "$(fpr '.[0].title')" = "Greetings, edited" ]
check "the update pushed the new commit" \
  [ "$(git --git-dir="$TMP/git/octo/hello.git" rev-parse "sessiond/$SID")" = "$(jget .data.head_sha "$PRU")" ]

# ---- POST on a session with a pull request: update, draft -> ready, 200 ----
api POST "/v1/sessions/$SID/pull-request" '{"draft":false}' "$ALICE"
check "POST pull-request on a session with one: 200, ready" [ "$STATUS" = 200 -a "$(jget .number)" = 1 -a "$(jget .draft)" = false ]
check "GitHub: marked ready through GraphQL, still one pull request" \
  [ "$(fpr '.[0].draft')" = false -a "$(fstat graphql)" = 1 -a "$(fstat pulls)" = 1 ]
api GET "/v1/sessions/$SID" "" "$ALICE"
check "GET session: no longer a draft" [ "$(jget .pr.draft)" = false ]

# ---- a slow GitHub holds no prompt ----
knob '{"pr_delay_ms":3000}'
SID2=$(new_session '{"repo":"hello"}' "$BOB")
wait_event "$SID2" sandbox.ready 1 >/dev/null
NU=$(count_type "$SID" pr.updated)
T0=$(date +%s%N)
api POST "/v1/sessions/$SID/messages" '{"content":"echo slow > slow.txt"}' "$ALICE"
wait_event "$SID" git.commit 3 >/dev/null
api POST "/v1/sessions/$SID/messages" '{"content":"echo next"}' "$ALICE"
api POST "/v1/sessions/$SID2/messages" '{"content":"echo other"}' "$BOB"
wait_event "$SID" prompt.completed 5 >/dev/null
wait_event "$SID2" prompt.completed 1 >/dev/null
T1=$(date +%s%N)
check "while GitHub takes 3 s: the session's next prompt and another session's ran" \
  [ $(((T1 - T0) / 1000000)) -lt 2500 -a "$(count_type "$SID" pr.updated)" = "$NU" ]
wait_event "$SID" pr.updated $((NU + 1)) >/dev/null
check "... and the slow update landed after" [ $? = 0 ]
knob '{"pr_delay_ms":0}'

# ---- no push credential: one pr.failed ----
api POST /v1/repos "{\"name\":\"open\",\"url\":\"$FAKE/pubco/open.git\",\"pool_size\":0,\"image_interval_min\":0,\"pr\":\"ready\"}"
SID3=$(new_session '{"repo":"open"}' "$ALICE")
wait_event "$SID3" sandbox.ready 1 >/dev/null
api POST "/v1/sessions/$SID3/messages" '{"content":"echo one > one.txt"}' "$ALICE"
F1=$(wait_event "$SID3" pr.failed 1)
check "no credential: pr.failed {reason}" [ $? = 0 -a "$(jget .data.reason "$F1")" = no_credentials ]
api POST "/v1/sessions/$SID3/messages" '{"content":"echo two > two.txt"}' "$ALICE"
wait_event "$SID3" git.commit 2 >/dev/null
wait_event "$SID3" session.snapshot 2 >/dev/null
sleep 0.5
check "exactly one pr.failed over two prompts" [ "$(count_type "$SID3" pr.failed)" = 1 -a "$(count_type "$SID3" pr.created)" = 0 ]

# ---- a stop does not wait for a slow GitHub ----
knob '{"pr_delay_ms":20000}'
NP=$(count_type "$SID" git.pushed)
api POST "/v1/sessions/$SID/messages" '{"content":"echo stuck > stuck.txt"}' "$ALICE"
wait_event "$SID" git.pushed $((NP + 1)) >/dev/null
sleep 0.3 # the worker is now waiting for the fake's answer to its pull request call
T0=$(date +%s%N)
# ---- credentials change (github.token): the next prompt opens it ----
stop_server
T1=$(date +%s%N)
check "the stop did not wait for the pending GitHub call ($(((T1 - T0) / 1000000)) ms)" [ $(((T1 - T0) / 1000000)) -lt 5000 ]
knob '{"pr_delay_ms":0}'
start_server --repos-tick-ms 200 "${APP_ARGS[@]}" --github-token ghs_static_TOKEN \
  --secrets-key-file "$TMP/master.key" --shutdown-grace 1
api POST "/v1/sessions/$SID3/messages" '{"content":"echo three > three.txt"}' "$ALICE"
P3=$(wait_event "$SID3" pr.created 1)
check "with github.token: pr.created, ready for review" \
  [ $? = 0 -a "$(jget .data.credentials "$P3")" = token -a "$(jget .data.draft "$P3")" = false ]
check "the fake has it, not a draft, with all three files" \
  [ "$(fpr '[.[] | select(.repo=="open")] | length')" = 1 -a "$(fpr '.[] | select(.repo=="open") | .draft')" = false -a \
    "$(fpr '.[] | select(.repo=="open") | .body' | grep -c '^- `\(one\|two\|three\).txt`$')" = 3 ]

# ---- never forced: a branch rolled back behind a pushed commit is refused, the remote kept ----
OPEN_HEAD=$(git --git-dir="$TMP/git/pubco/open.git" rev-parse "sessiond/$SID3")
api POST "/v1/sessions/$SID3/rollback" '{"snapshot_id":"snap-000001"}' "$ALICE"
check "rollback to the first turn" [ "$STATUS" = 200 ]
api POST "/v1/sessions/$SID3/messages" '{"content":"echo other > other.txt"}' "$ALICE"
wait_event "$SID3" git.commit 4 >/dev/null
for i in $(seq 1 200); do
  api GET "/v1/sessions/$SID3/events?limit=1000"
  [ "$(jget '[.events[] | select(.type=="pr.failed")] | last | .data.reason')" = push_rejected ] && break
  sleep 0.05
done
check "the diverged branch is not pushed: pr.failed push_rejected" \
  [ "$(jget '[.events[] | select(.type=="pr.failed")] | last | .data.reason')" = push_rejected ]
api POST "/v1/sessions/$SID3/push" "" "$ALICE"
check "POST push of the diverged branch: 409" [ "$STATUS" = 409 ]
check "the remote branch still has every pushed commit" \
  [ "$(git --git-dir="$TMP/git/pubco/open.git" rev-parse "sessiond/$SID3")" = "$OPEN_HEAD" ]

# ---- merged: noticed, and no other pull request ----
curl -s -X POST --data-binary '{"owner":"octo","repo":"hello","number":1}' "$FAKE/_fake/merge" >/dev/null
api POST "/v1/sessions/$SID/messages" '{"content":"echo after > after.txt"}' "$ALICE"
M=$(wait_event "$SID" pr.merged 1)
check "pr.merged when the next update finds it merged" [ $? = 0 -a "$(jget .data.number "$M")" = 1 ]
api GET "/v1/sessions/$SID" "" "$ALICE"
check "GET session: merged" [ "$(jget .pr.state)" = merged -a "$(jget .pr.merged_at)" != null ]
check "no second pull request for the session" [ "$(fpr '[.[] | select(.repo=="hello" and .head=="sessiond/'"$SID"'")] | length')" = 1 ]

# ---- counters ----
M=$(curl -s "$BASE/metrics")
check "metrics: created 2, merged 1, closed 0" bash -c "printf '%s' \"\$1\" | grep -qx 'sessiond_pull_requests_total{event=\"created\"} 2' && printf '%s' \"\$1\" | grep -qx 'sessiond_pull_requests_total{event=\"merged\"} 1' && printf '%s' \"\$1\" | grep -qx 'sessiond_pull_requests_total{event=\"closed\"} 0'" _ "$M"

check "no token in the server log" [ "$(grep -c 'ghs_\|ghp_human' "$SERVER_LOG")" = 0 ]
finish
