#!/usr/bin/env bash
# GitHub App authentication end to end, against fake_github.mjs (a real HTTP server that
# verifies the app's RS256 JWTs with its public key, issues installation tokens and serves the
# repository over git's smart HTTP, refusing requests without a live token):
# - the key file must be private (a group/world-readable key stops the start);
# - github.app_token still works as the static token, with a deprecation line at start;
# - clone and push use the installation token (`credentials: app`), the user's own token wins
#   when stored (`user`), a refused JWT falls back to the static token (`token`);
# - a token close to its expiry is renewed before use; a token the remote refuses (expired
#   early) is renewed and the push retried, without a failed push; the same for the PR API;
# - no installation token is sent to another host, no token or key reaches the log.
. "$(dirname "$0")/lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)

G="git -c user.name=Seed -c user.email=seed@example.com -c init.defaultBranch=main"
mkdir -p "$TMP/git/octo"
( cd "$TMP" && $G init -q --bare git/octo/hello.git && $G init -q seed && cd seed &&
  echo hello > README && $G add -A && $G commit -qm init && $G push -q ../git/octo/hello.git main ) ||
  { fail "seed repository"; finish; }
REMOTE="$TMP/git/octo/hello.git"
openssl genrsa -out "$TMP/app.pem" 2048 2>/dev/null && chmod 600 "$TMP/app.pem" &&
  openssl rsa -in "$TMP/app.pem" -pubout -out "$TMP/app.pub" 2>/dev/null || { fail "app key"; finish; }

node "$HERE/fake_github.mjs" --port-file "$TMP/fake.port" --public-key "$TMP/app.pub" \
  --app-id 4242 --git-root "$TMP/git" --installed octo=77 \
  --user-token ghp_alice_TOKEN,ghs_static_TOKEN --log "$TMP/fake.log" 2>"$TMP/fake.err" &
FAKE_PID=$!
trap 'kill $FAKE_PID 2>/dev/null; _cleanup' EXIT
for i in $(seq 1 100); do [ -s "$TMP/fake.port" ] && break; sleep 0.05; done
FAKE="http://127.0.0.1:$(cat "$TMP/fake.port")"
fstat() { curl -s "$FAKE/_fake/stats" | jq -r ".$1"; }
knob() { curl -s -X POST --data-binary "$1" "$FAKE/_fake/config" >/dev/null; }

# count_type SID TYPE - how many events of TYPE the session has now.
count_type() {
  api GET "/v1/sessions/$1/events?limit=1000"
  jget "[.events[] | select(.type==\"$2\")] | length"
}

APP_ARGS=(--github-api-base "$FAKE/api/v3" --github-app-id 4242 --github-app-key-file "$TMP/app.pem")

# ---- the key must be private ----
chmod 644 "$TMP/app.pem"
timeout 20 "$SESSIOND_BIN" --listen 127.0.0.1:0 --data-dir "$TMP/d0" "${APP_ARGS[@]}" \
  >"$TMP/d0.log" 2>&1
RC=$?
check "a world-readable app key stops the start" [ "$RC" != 0 -a "$RC" != 124 ]
check "the log says why (mode 0600)" grep -q "app_key_file.*0600" "$TMP/d0.log"
chmod 600 "$TMP/app.pem"

# Tokens live 302 s: fewer than 5 minutes remain 2 s after each is issued, so the proactive
# renewal can be seen below without waiting minutes.
knob '{"token_life_s":302}'
start_server --repos-tick-ms 200 "${APP_ARGS[@]}" --github-app-token ghs_static_TOKEN \
  --secrets-key-file "$TMP/master.key" --shutdown-grace 1
check "github.app_token: deprecation line at start" grep -q "github.app_token is deprecated" "$SERVER_LOG"
ALICE=$(make_token alice user)
BOB=$(make_token bob user)

# ---- clone with the installation token ----
api POST /v1/repos "{\"name\":\"hello\",\"url\":\"$FAKE/octo/hello.git\",\"pool_size\":0,\"image_interval_min\":0,\"pr\":\"off\"}"
expect_status 201 "repository on the app's host"
SID=$(new_session '{"title":"app","repo":"hello"}' "$BOB")
R=$(wait_event "$SID" sandbox.ready 1)
check "the session starts from a clone" [ "$(jget .data.source "$R")" = clone ]
check "the clone is checked out" [ -f "$DATA_DIR/workspaces/$SID/README" ]
check "clone: authenticated with an installation token" [ "$(fstat git_app)" -ge 1 ]
check "the fake verified the app's JWTs (lookup + token)" [ "$(fstat jwt_ok)" -ge 2 -a "$(fstat jwt_bad)" = 0 ]
check "one installation token so far" [ "$(fstat tokens_issued)" = 1 ]

# ---- push as the app ----
api POST "/v1/sessions/$SID/messages" '{"content":"echo from-bob > bob.txt"}' "$BOB"
wait_event "$SID" git.commit 1 >/dev/null
api POST "/v1/sessions/$SID/push" "" "$BOB"
check "push without a user token: credentials app" [ "$STATUS" = 200 -a "$(jget .credentials)" = app ]
check "the branch reached the remote" [ "$(git --git-dir="$REMOTE" rev-parse "sessiond/$SID" 2>/dev/null)" = "$(jget .sha)" ]
check "receive-pack authenticated by the installation token" [ "$(fstat receive_pack)" -ge 1 -a "$(fstat git_user)" = 0 ]

# ---- renewal before expiry ----
N=$(fstat tokens_issued)
sleep 2.2
api POST "/v1/sessions/$SID/push" "" "$BOB"
check "push with a token near its expiry succeeds" [ "$STATUS" = 200 -a "$(jget .credentials)" = app ]
check "the token was renewed before use (not refused)" [ "$(fstat tokens_issued)" -gt "$N" -a "$(fstat git_401_expired)" = 0 ]

# ---- a token that expires mid-session (early, against its expires_at) ----
knob '{"token_life_s":3,"claimed_life_s":3600}'
sleep 2.2 # the cached token is near its (302 s) end: the next use renews it as a 3-s token
api POST "/v1/sessions/$SID/push" "" "$BOB"
check "push with a fresh short-lived token" [ "$STATUS" = 200 ]
N=$(fstat tokens_issued)
sleep 3.3 # now expired at the fake, but 3600 s left by its expires_at
api POST "/v1/sessions/$SID/messages" '{"content":"echo again > again.txt"}' "$BOB"
wait_event "$SID" git.commit 2 >/dev/null
api POST "/v1/sessions/$SID/push" "" "$BOB"
check "push after the token expired mid-session: not failed" [ "$STATUS" = 200 -a "$(jget .credentials)" = app ]
check "the remote refused the expired token, the server renewed it and retried" \
  [ "$(fstat git_401_expired)" -ge 1 -a "$(fstat tokens_issued)" -gt "$N" ]
check "the retried push delivered the new commit" [ "$(git --git-dir="$REMOTE" rev-parse "sessiond/$SID")" = "$(jget .sha)" ]

# ---- the pull request API as the app, and its 401 retry ----
knob '{"token_life_s":3600,"claimed_life_s":null,"revoke_on_pr":true}'
api POST "/v1/sessions/$SID/pull-request" '{"title":"By the app"}' "$BOB"
check "pull request by the app for a user without a token" [ "$STATUS" = 201 -a "$(jget .credentials)" = app ]
check "the PR API refused the revoked token once, the retry with a new one passed" \
  [ "$(fstat pulls_401)" = 1 -a "$(fstat pulls)" = 1 ]
check "the pull request was opened with an installation token" \
  [ "$(grep '"api":"pulls"' "$TMP/fake.log" | tail -n 1 | jq -r .auth)" = app ]

# ---- an image (fetch into the shared store) and a start from it (sync in the git helper) ----
A=$(fstat git_app)
api POST /v1/repos/hello/images "" "$BOB"
expect_status 202 "image build accepted"
wait_image hello
check "image built from a fetch with the installation token" [ "$state" = ready -a "$(fstat git_app)" -ge $((A + 2)) ]
A=$(fstat git_app)
SID3=$(new_session '{"repo":"hello"}' "$BOB")
R3=$(wait_event "$SID3" sandbox.ready 1)
check "the next session starts from the image" [ "$(jget .data.source "$R3")" = image ]
wait_event "$SID3" git.synced 1 >/dev/null
check "its sync (in the sessiond-git helper) fetched with the installation token" \
  [ $? = 0 -a "$(fstat git_app)" -ge $((A + 1)) -a "$(count_type "$SID3" git.sync_failed)" = 0 ]

# ---- the user's own token comes first ----
api PUT /v1/me/credentials/github '{"token":"ghp_alice_TOKEN"}' "$ALICE"
expect_status 204 "alice stores her token"
api POST "/v1/sessions/$SID/push" "" "$ALICE"
check "push by a user with a token: credentials user" [ "$STATUS" = 200 -a "$(jget .credentials)" = user -a "$(fstat git_user)" -ge 1 ]

# ---- no installation token for another host ----
LOCALHOST_URL="http://localhost:${FAKE##*:}/octo/hello.git"
api POST /v1/repos "{\"name\":\"elsewhere\",\"url\":\"$LOCALHOST_URL\",\"pool_size\":0,\"image_interval_min\":0}"
SID2=$(new_session '{"repo":"elsewhere"}' "$BOB")
for i in $(seq 1 100); do grep -q '"host":"localhost' "$TMP/fake.log" && break; sleep 0.05; done
check "a clone from another host reached the fake" grep -q '"host":"localhost' "$TMP/fake.log"
check "... without the installation token" [ "$(grep '"host":"localhost' "$TMP/fake.log" | grep -c '"auth":"app"')" = 0 ]

# ---- a JWT GitHub refuses (another key): the static token is next ----
stop_server
openssl genrsa -out "$TMP/other.pem" 2048 2>/dev/null && chmod 600 "$TMP/other.pem"
BAD=$(fstat jwt_bad)
start_server --repos-tick-ms 200 --github-api-base "$FAKE/api/v3" --github-app-id 4242 \
  --github-app-key-file "$TMP/other.pem" --github-token ghs_static_TOKEN \
  --secrets-key-file "$TMP/master.key" --shutdown-grace 1
check "github.token: no deprecation line" [ "$(grep -c "github.app_token is deprecated" "$SERVER_LOG")" = 1 ]
api POST "/v1/sessions/$SID/push" "" "$BOB"
check "JWT refused (bad signature): push with the static token" [ "$STATUS" = 200 -a "$(jget .credentials)" = token ]
check "the fake refused the JWT" [ "$(fstat jwt_bad)" -gt "$BAD" ]
api POST "/v1/sessions/$SID/pull-request" '{"title":"static"}' "$BOB"
expect_error 403 forbidden "no pull request with the static token"

# ---- secrets never in the log ----
check "no token in the server log" [ "$(grep -c 'ghs_\|ghp_alice' "$SERVER_LOG")" = 0 ]
check "no key in the server log" [ "$(grep -c 'PRIVATE KEY' "$SERVER_LOG")" = 0 ]
finish
