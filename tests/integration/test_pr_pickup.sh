#!/usr/bin/env bash
# Pushes by someone else to a session's pull request branch, against fake_github.mjs and its
# git backend:
# - after the automatic pull request exists, a commit pushed from another clone to
#   sessiond/<id> plus a signed push delivery: the next prompt's agent sees the pushed file
#   (pr.pulled {sha}), and its own commit on top is pushed as a fast-forward;
# - our own push delivered back (after = the head we pushed) is not a push by someone else;
# - both sides diverge (a remote commit and a local one the other lacks): pr.push_failed
#   {reason: not_fast_forward, remote_sha, local_sha}, and the workspace is left as it was.
. "$(dirname "$0")/lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)

G="git -c user.name=Seed -c user.email=seed@example.com -c init.defaultBranch=main"
mkdir -p "$TMP/git/octo"
( cd "$TMP" && $G init -q --bare git/octo/hello.git && $G init -q seed && cd seed &&
  echo hello > README && $G add -A && $G commit -qm init && $G push -q ../git/octo/hello.git main ) ||
  { fail "seed repository"; finish; }
openssl genrsa -out "$TMP/app.pem" 2048 2>/dev/null && chmod 600 "$TMP/app.pem" &&
  openssl rsa -in "$TMP/app.pem" -pubout -out "$TMP/app.pub" 2>/dev/null || { fail "app key"; finish; }
node "$HERE/fake_github.mjs" --port-file "$TMP/fake.port" --public-key "$TMP/app.pub" \
  --app-id 4242 --git-root "$TMP/git" --installed octo=77 --log "$TMP/fake.log" 2>"$TMP/fake.err" &
FAKE_PID=$!
trap 'kill $FAKE_PID 2>/dev/null; _cleanup' EXIT
for i in $(seq 1 100); do [ -s "$TMP/fake.port" ] && break; sleep 0.05; done
FAKE="http://127.0.0.1:$(cat "$TMP/fake.port")"
count_type() {
  api GET "/v1/sessions/$1/events?limit=1000"
  jget "[.events[] | select(.type==\"$2\")] | length"
}
SECRET='whsec_pickup'
BARE="$TMP/git/octo/hello.git"

# hook EVENT DELIVERY BODY - POST a delivery signed with the webhook secret.
hook() {
  printf '%s' "$3" >"$TMP/hook.json"
  local sig
  sig=$(openssl dgst -sha256 -hmac "$SECRET" -r "$TMP/hook.json" | cut -d' ' -f1)
  api POST /v1/github/webhook "@$TMP/hook.json" - -H "X-GitHub-Event: $1" \
    -H "X-GitHub-Delivery: $2" -H "X-Hub-Signature-256: sha256=$sig"
}
# push_body SHA - a push delivery for the session branch at SHA
push_body() {
  jq -cn --arg r "refs/heads/sessiond/$SID" --arg a "$1" \
    '{ref:$r, before:"0000000000000000000000000000000000000000", after:$a, deleted:false, repository:{html_url:"https://github.example/octo/hello"}}'
}
# someone_pushes FILE [SID] - a commit adding FILE from a separate clone, pushed to the
# session branch; prints its sha
someone_pushes() {
  local s=${2:-$SID}
  ( rm -rf "$TMP/other" && $G clone -q "$BARE" "$TMP/other" 2>/dev/null && cd "$TMP/other" &&
    $G checkout -q "sessiond/$s" && echo "from a reviewer" > "$1" && $G add -A &&
    $G commit -qm "reviewer: $1" && $G push -q origin "sessiond/$s" && git rev-parse HEAD )
}

start_server --repos-tick-ms 200 --github-api-base "$FAKE/api/v3" --github-app-id 4242 \
  --github-app-key-file "$TMP/app.pem" --github-webhook-secret "$SECRET" \
  --github-poll-interval-s 3600 --shutdown-grace 1
ALICE=$(make_token alice user)
api POST /v1/repos "{\"name\":\"hello\",\"url\":\"$FAKE/octo/hello.git\",\"pool_size\":0,\"image_interval_min\":0}"
SID=$(new_session '{"repo":"hello"}' "$ALICE")
wait_event "$SID" sandbox.ready 1 >/dev/null
api POST "/v1/sessions/$SID/messages" '{"content":"echo hi > greeting.txt"}' "$ALICE"
PRE=$(wait_event "$SID" pr.created 1)
check "a pull request to follow" [ $? = 0 -a "$(jget .data.number "$PRE")" = 1 ]
HEAD=$(jget .data.head_sha "$PRE")

# ---- our own push, delivered back: nothing to pull ----
hook push d-own "$(push_body "$HEAD")"
check "our own push: 200, recognised" [ "$STATUS" = 200 ]

# ---- a push by someone else, then the next prompt ----
PUSHED=$(someone_pushes review.txt)
check "a reviewer pushed to the session branch" [ ${#PUSHED} = 40 ]
hook push d-review "$(push_body "$PUSHED")"
check "push delivery: 200" [ "$STATUS" = 200 ]
api POST "/v1/sessions/$SID/messages" '{"content":"cat review.txt > seen.txt"}' "$ALICE"
PL=$(wait_event "$SID" pr.pulled 1)
check "pr.pulled {sha} before the prompt" [ $? = 0 -a "$(jget .data.sha "$PL")" = "$PUSHED" -a "$(jget .data.previous "$PL")" = "$HEAD" ]
PRU=$(wait_event "$SID" pr.updated 1)
check "the prompt's commit was pushed (a fast-forward of the reviewer's)" [ $? = 0 ]
check "the agent saw the pushed file at prompt start" \
  [ "$(git --git-dir="$BARE" show "sessiond/$SID:seen.txt")" = "from a reviewer" ]
check "the reviewer's commit is an ancestor of the new head" \
  git --git-dir="$BARE" merge-base --is-ancestor "$PUSHED" "sessiond/$SID"
check "no pr.push_failed on a fast-forward" [ "$(count_type "$SID" pr.push_failed)" = 0 ]

# ---- both sides diverge ----
P2=$(someone_pushes other.txt)
LOCAL_BEFORE=$(git --git-dir="$BARE" rev-parse "sessiond/$SID~1")
api POST "/v1/sessions/$SID/messages" '{"content":"echo mine > mine.txt"}' "$ALICE"
wait_event "$SID" pr.failed 1 >/dev/null
check "the session's own push is refused (the remote moved)" [ $? = 0 ]
hook push d-diverge "$(push_body "$P2")"
check "push delivery: 200" [ "$STATUS" = 200 ]
api GET "/v1/sessions/$SID/files?path=mine.txt" "" "$ALICE"
MINE_STATUS=$STATUS
api POST "/v1/sessions/$SID/messages" '{"content":"ls > listing.txt"}' "$ALICE"
PF=$(wait_event "$SID" pr.push_failed 1)
check "diverged: pr.push_failed {reason: not_fast_forward}" [ $? = 0 -a "$(jget .data.reason "$PF")" = not_fast_forward ]
check "pr.push_failed names both ends" [ "$(jget .data.remote_sha "$PF")" = "$P2" -a ${#LOCAL_BEFORE} = 40 -a "$(jget '.data.local_sha | length' "$PF")" = 40 ]
wait_event "$SID" session.snapshot 4 >/dev/null
api GET "/v1/sessions/$SID/files?path=other.txt" "" "$ALICE"
check "the workspace is unchanged: the remote's file is not there" [ "$STATUS" = 404 ]
api GET "/v1/sessions/$SID/files?path=listing.txt" "" "$ALICE"
check "the prompt ran on the session's own tree (its file, not the remote's)" \
  bash -c "[ \"\$1\" = 200 -a \"\$2\" = 200 ] && printf '%s' \"\$3\" | grep -qx mine.txt && ! printf '%s' \"\$3\" | grep -qx other.txt" _ "$STATUS" "$MINE_STATUS" "$BODY"
check "the remote branch kept the reviewer's commit" [ "$(git --git-dir="$BARE" rev-parse "sessiond/$SID")" = "$P2" ]

# ---- without a webhook: the poller sees the pull request's head move ----
stop_server
start_server --repos-tick-ms 200 --github-api-base "$FAKE/api/v3" --github-app-id 4242 \
  --github-app-key-file "$TMP/app.pem" --github-poll-interval-s 1 --shutdown-grace 1
SID2=$(new_session '{"repo":"hello"}' "$ALICE")
wait_event "$SID2" sandbox.ready 1 >/dev/null
api POST "/v1/sessions/$SID2/messages" '{"content":"echo hi > greeting.txt"}' "$ALICE"
PRE2=$(wait_event "$SID2" pr.created 1)
check "a second session's pull request" [ $? = 0 ]
P3=$(someone_pushes polled.txt "$SID2")
sleep 2.5 # a poll round or two
api POST "/v1/sessions/$SID2/messages" '{"content":"cat polled.txt > seen.txt"}' "$ALICE"
PL2=$(wait_event "$SID2" pr.pulled 1)
check "poller: pr.pulled {sha} before the prompt" [ $? = 0 -a "$(jget .data.sha "$PL2")" = "$P3" ]
wait_event "$SID2" pr.updated 1 >/dev/null
check "poller: the agent saw the pushed file" \
  [ "$(git --git-dir="$BARE" show "sessiond/$SID2:seen.txt")" = "from a reviewer" ]
finish
