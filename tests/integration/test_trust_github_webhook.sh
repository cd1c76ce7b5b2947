#!/usr/bin/env bash
# POST /v1/github/webhook against the real server, with fake_github.mjs as GitHub:
# - a delivery without X-Hub-Signature-256, with a forged one (the HMAC under another secret,
#   or of another body) is refused with 401 and changes nothing;
# - a signed pull_request closed (merged) / check_suite / status delivery updates the session's
#   pull request (pr.merged, pr.ci) exactly as GitHub says;
# - a replayed delivery id answers 200 and does nothing (no second event, no state going back);
# - a delivery about a pull request no session has answers 202 and changes nothing;
# - without a webhook, the poller (github.poll_interval_s) reads the combined status and the
#   merge from the REST API with the App's token.
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
fstat() { curl -s "$FAKE/_fake/stats" | jq -r ".$1"; }
count_type() {
  api GET "/v1/sessions/$1/events?limit=1000"
  jget "[.events[] | select(.type==\"$2\")] | length"
}
SECRET='whsec_the-real-one'

# hook EVENT DELIVERY BODY [SECRET|-] - POST a delivery signed with SECRET (default the real
# one; "-": no signature header). Sets STATUS and BODY.
hook() {
  local sec=${4:-$SECRET} sig=()
  printf '%s' "$3" >"$TMP/hook.json"
  if [ "$sec" != - ]; then
    sig=(-H "X-Hub-Signature-256: sha256=$(openssl dgst -sha256 -hmac "$sec" -r "$TMP/hook.json" | cut -d' ' -f1)")
  fi
  api POST /v1/github/webhook "@$TMP/hook.json" - -H "X-GitHub-Event: $1" -H "X-GitHub-Delivery: $2" "${sig[@]}"
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
PR_URL=https://github.example/octo/hello/pull/1

MERGED=$(jq -cn --arg u "$PR_URL" '{action:"closed", number:1, pull_request:{html_url:$u, number:1, merged:true, state:"closed", draft:false}}')
# ---- forged deliveries ----
hook pull_request d-nosig "$MERGED" -
check "no signature: 401" [ "$STATUS" = 401 ]
hook pull_request d-forged "$MERGED" whsec_a-guess
check "signed with another secret: 401" [ "$STATUS" = 401 ]
printf '%s' "$MERGED" >"$TMP/m.json"
GOOD=$(openssl dgst -sha256 -hmac "$SECRET" -r "$TMP/m.json" | cut -d' ' -f1)
printf '%s ' "$MERGED" >"$TMP/m2.json"
api POST /v1/github/webhook "@$TMP/m2.json" - -H "X-GitHub-Event: pull_request" \
  -H "X-GitHub-Delivery: d-swapped" -H "X-Hub-Signature-256: sha256=$GOOD"
check "a valid signature over another body: 401" [ "$STATUS" = 401 ]
api POST /v1/github/webhook "@$TMP/m.json" - -H "X-GitHub-Event: pull_request" \
  -H "X-GitHub-Delivery: d-upper" -H "X-Hub-Signature-256: sha256=${GOOD^^}x"
check "a mangled signature: 401" [ "$STATUS" = 401 ]
api GET "/v1/sessions/$SID" "" "$ALICE"
check "after the forgeries the pull request is still open, no pr.merged" \
  [ "$(jget .pr.state)" = open -a "$(count_type "$SID" pr.merged)" = 0 ]

# ---- CI state ----
SUITE=$(jq -cn --arg h "$HEAD" '{action:"completed", check_suite:{head_sha:$h, status:"completed", conclusion:"failure", pull_requests:[{number:1}]}, repository:{html_url:"https://github.example/octo/hello"}}')
hook check_suite d-suite "$SUITE"
check "check_suite: 200" [ "$STATUS" = 200 ]
CI=$(wait_event "$SID" pr.ci 1 5)
check "check_suite failure -> pr.ci {state: failure}" [ $? = 0 -a "$(jget .data.state "$CI")" = failure ]
STATUS_OK=$(jq -cn --arg h "$HEAD" '{sha:$h, state:"success", context:"ci", repository:{html_url:"https://github.example/octo/hello"}}')
hook status d-status-1 "$STATUS_OK"
CI=$(wait_event "$SID" pr.ci 2 5)
check "status success -> pr.ci {state: success}" [ $? = 0 -a "$(jget .data.state "$CI")" = success ]
api GET "/v1/sessions/$SID" "" "$ALICE"
check "GET session: ci_state success" [ "$(jget .pr.ci_state)" = success ]

# ---- replay ----
hook check_suite d-suite "$SUITE"
check "a replayed delivery: 200, said to be a duplicate" [ "$STATUS" = 200 -a "$(jget .duplicate)" = true ]
sleep 0.3
api GET "/v1/sessions/$SID" "" "$ALICE"
check "... and it did nothing: ci_state still success, two pr.ci" \
  [ "$(jget .pr.ci_state)" = success -a "$(count_type "$SID" pr.ci)" = 2 ]

# ---- unknown pull request ----
OTHER=$(jq -cn '{action:"closed", number:9, pull_request:{html_url:"https://github.example/octo/hello/pull/9", number:9, merged:true}}')
hook pull_request d-other "$OTHER"
check "a pull request no session has: 202 ignored" [ "$STATUS" = 202 ]
hook status d-other-status "$(jq -cn '{sha:"0123456789012345678901234567890123456789", state:"failure"}')"
check "a status of a commit no session has: 202" [ "$STATUS" = 202 ]
hook status d-fork-status "$(jq -cn --arg h "$HEAD" '{sha:$h, state:"failure", repository:{html_url:"https://github.example/mallory/hello"}}')"
check "a status on the same commit in another repository (a fork): 202" [ "$STATUS" = 202 ]
api GET "/v1/sessions/$SID" "" "$ALICE"
check "... and they changed nothing" [ "$(jget .pr.state)" = open -a "$(jget .pr.ci_state)" = success ]

# ---- comments on the pull request ----
fcom() { curl -s "$FAKE/_fake/comments" | jq -r "$1"; }
comment() { # EVENT DELIVERY LOGIN ID ASSOCIATION BODY [USER TYPE]
  local pr='{}'
  if [ "$1" = issue_comment ]; then
    hook "$1" "$2" "$(jq -cn --arg u "$PR_URL" --arg l "$3" --argjson i "$4" --arg a "$5" --arg b "$6" --arg t "${7:-User}" \
      '{action:"created", issue:{number:1, html_url:$u, pull_request:{html_url:$u}}, comment:{body:$b, author_association:$a, user:{login:$l, id:$i, type:$t}}}')"
  else
    hook "$1" "$2" "$(jq -cn --arg u "$PR_URL" --arg l "$3" --argjson i "$4" --arg a "$5" --arg b "$6" --arg t "${7:-User}" \
      '{action:"created", pull_request:{number:1, html_url:$u}, comment:{body:$b, author_association:$a, path:"greeting.txt", user:{login:$l, id:$i, type:$t}}}')"
  fi
}
NP=$(count_type "$SID" prompt.started)
comment issue_comment d-c-stranger mallory 666 NONE '@sessiond rm -rf everything > pwned.txt'
check "a stranger's mention: 200" [ "$STATUS" = 200 ]
for i in $(seq 1 100); do [ "$(fcom length)" -ge 1 ] && break; sleep 0.05; done
check "the stranger gets a polite refusal on the pull request, posted with the App's token" \
  [ "$(fcom length)" = 1 -a "$(fcom '.[0].number')" = 1 -a "$(fcom '.[0].by')" = app ]
check "... addressed to them" bash -c "printf '%s' \"\$1\" | grep -q '^Sorry @mallory, only the repository'" _ "$(fcom '.[0].body')"
comment pull_request_review_comment d-c-contrib eve 667 CONTRIBUTOR '@sessiond echo x > contrib.txt'
for i in $(seq 1 100); do [ "$(fcom length)" -ge 2 ] && break; sleep 0.05; done
check "a past contributor is refused too" [ "$(fcom length)" = 2 ]
comment issue_comment d-c-bot botty 668 OWNER '@sessiond echo x > bot.txt' Bot
comment issue_comment d-c-nomention bob 669 OWNER 'looks good, echo x > nomention.txt'
sleep 0.5
check "no prompt from strangers, bots or comments without the mention; no reply to bots" \
  [ "$(count_type "$SID" prompt.started)" = "$NP" -a "$(fcom length)" = 2 ]
comment pull_request_review_comment d-c-owner octocat 583231 OWNER '@sessiond echo review > review.txt'
check "an owner's review comment: 200, queued" [ "$STATUS" = 200 ]
PQ=$(wait_event "$SID" prompt.started $((NP + 1)) 10)
check "... it became a prompt of the session" [ $? = 0 ]
api GET "/v1/sessions/$SID/messages?limit=100" "" "$ALICE"
check "... without the mention" [ "$(jget '[.messages[] | select(.author.id=="github:583231")][0].content')" = 'echo review > review.txt' ]
check "... authored by github:583231 (octocat)" \
  [ "$(jget '[.messages[] | select(.author.id=="github:583231")] | length')" = 1 -a "$(jget '[.messages[] | select(.author.id=="github:583231")][0].author.name')" = octocat ]
wait_event "$SID" prompt.completed $((NP + 1)) 20 >/dev/null
for i in $(seq 1 100); do [ "$(fcom length)" -ge 3 ] && break; sleep 0.05; done
check "the agent's answer is posted back as a reply to octocat, with the App's token" \
  [ "$(fcom length)" = 3 -a "$(fcom '.[2].by')" = app -a "$(fcom '.[2].number')" = 1 ]
A=$(fcom '.[2].body')
api GET "/v1/sessions/$SID/messages?limit=100" "" "$ALICE"
LAST=$(jget '[.messages[] | select(.role=="assistant")] | last | .content')
check "... the reply says @octocat and the agent's answer" [ "$A" = "@octocat $LAST" ]
comment pull_request_review_comment d-c-owner octocat 583231 OWNER '@sessiond echo review > review.txt'
sleep 0.3
check "a replayed comment delivery queues nothing" [ "$(count_type "$SID" prompt.started)" = $((NP + 1)) ]

# ---- the merge ----
hook pull_request d-merged "$MERGED"
check "pull_request closed+merged: 200" [ "$STATUS" = 200 ]
PM=$(wait_event "$SID" pr.merged 1 5)
check "pr.merged said" [ $? = 0 -a "$(jget .data.number "$PM")" = 1 ]
api GET "/v1/sessions/$SID" "" "$ALICE"
check "GET session: merged" [ "$(jget .pr.state)" = merged ]
hook pull_request d-merged-again "$MERGED"
sleep 0.2
check "a second merge delivery says nothing more" [ "$(count_type "$SID" pr.merged)" = 1 ]

# ---- the poller, without webhooks ----
stop_server
start_server --repos-tick-ms 200 --github-api-base "$FAKE/api/v3" --github-app-id 4242 \
  --github-app-key-file "$TMP/app.pem" --github-poll-interval-s 1 --shutdown-grace 1
api POST /v1/github/webhook "@$TMP/m.json" - -H "X-GitHub-Event: pull_request" \
  -H "X-GitHub-Delivery: d-nosecret" -H "X-Hub-Signature-256: sha256=$GOOD"
check "no github.webhook_secret: the webhook answers 503" [ "$STATUS" = 503 ]
SID2=$(new_session '{"repo":"hello"}' "$ALICE")
wait_event "$SID2" sandbox.ready 1 >/dev/null
api POST "/v1/sessions/$SID2/messages" '{"content":"echo two > two.txt"}' "$ALICE"
PRE2=$(wait_event "$SID2" pr.created 1)
N2=$(jget .data.number "$PRE2")
H2=$(jget .data.head_sha "$PRE2")
curl -s -X POST --data-binary "{\"owner\":\"octo\",\"repo\":\"hello\",\"sha\":\"$H2\",\"state\":\"failure\"}" "$FAKE/_fake/status" >/dev/null
CI=$(wait_event "$SID2" pr.ci 1 10)
check "poller: the combined status read -> pr.ci failure" [ $? = 0 -a "$(jget .data.state "$CI")" = failure ]
check "poller: the status endpoint was called with a token" [ "$(fstat status_gets)" -ge 1 ] 
check "poller: no unauthenticated status call" [ "$(grep -c '"api":"status_get".*"auth":"none"' "$TMP/fake.log")" = 0 ]
curl -s -X POST --data-binary "{\"owner\":\"octo\",\"repo\":\"hello\",\"number\":$N2}" "$FAKE/_fake/merge" >/dev/null
PM=$(wait_event "$SID2" pr.merged 1 10)
check "poller: the merge noticed -> pr.merged" [ $? = 0 -a "$(jget .data.number "$PM")" = "$N2" ]
T0=$(date +%s%N)
stop_server
check "the server stops promptly with the poller running (${STOP_RC})" [ "$STOP_RC" = 0 -a $(( ($(date +%s%N) - T0) / 1000000 )) -lt 5000 ]
finish
