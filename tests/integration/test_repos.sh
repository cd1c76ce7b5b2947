#!/usr/bin/env bash
# Repositories end to end (issue 5): registry CRUD and access, an image build in a sandbox,
# the warm pool, session start paths (warm, image, clone) with `sandbox.ready` {source},
# per-author commits at the end of prompts, snapshots + rollback, push to a bare remote with
# the author's stored token, a pull request against a local stand-in for the GitHub API, the
# snapshot at DELETE, and stored tokens never leaking.
. "$(dirname "$0")/lib.sh"

G="git -c user.name=Seed -c user.email=seed@example.com -c init.defaultBranch=main"
mkdir -p "$TMP/octo"
( cd "$TMP/octo" && $G init -q --bare hello.git && $G init -q seed && cd seed &&
  echo hello > README && $G add -A && $G commit -qm init && $G push -q ../hello.git main ) ||
  { fail "seed repository"; finish; }
REMOTE="$TMP/octo/hello.git"

# A stand-in for the GitHub REST API: records each request, answers 201.
cat >"$TMP/gh.mjs" <<'EOF'
import http from 'node:http';
import fs from 'node:fs';
const [portFile, logFile] = process.argv.slice(2);
let n = 0;
const srv = http.createServer((req, res) => {
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', () => {
    n++;
    fs.appendFileSync(logFile, JSON.stringify({method: req.method, url: req.url,
      auth: req.headers.authorization || '', accept: req.headers.accept || '',
      body}) + '\n');
    res.writeHead(201, {'Content-Type': 'application/json'});
    res.end(JSON.stringify({number: n, html_url: `https://github.example/octo/hello/pull/${n}`,
      url: `http://api.example/repos/octo/hello/pulls/${n}`}));
  });
});
srv.listen(0, '127.0.0.1', () => fs.writeFileSync(portFile, String(srv.address().port)));
EOF
node "$TMP/gh.mjs" "$TMP/gh.port" "$TMP/gh.log" &
GH_PID=$!
trap 'kill $GH_PID 2>/dev/null; _cleanup' EXIT
for i in $(seq 1 100); do [ -s "$TMP/gh.port" ] && break; sleep 0.05; done
GH_PORT=$(cat "$TMP/gh.port")

start_server --repos-tick-ms 200 --github-api-base "http://127.0.0.1:$GH_PORT/api/v3" \
  --secrets-key-file "$TMP/master.key" --shutdown-grace 1
ALICE=$(make_token alice user)
BOB=$(make_token bob user)
VIEWER=$(make_token vera viewer)


# count_type SID TYPE - how many events of TYPE the session has now.
count_type() {
  api GET "/v1/sessions/$1/events?limit=1000"
  jget "[.events[] | select(.type==\"$2\")] | length"
}

# ---- registry ----
SPEC="{\"name\":\"hello\",\"url\":\"$REMOTE\",\"setup\":[\"echo built > built.txt\"],\"hints\":[\"greeting\"],\"pool_size\":1,\"image_interval_min\":0}"
api POST /v1/repos "$SPEC" "$ALICE"
expect_error 403 forbidden "a user token cannot add a repository"
api POST /v1/repos '{"name":"bad name","url":"https://x/y"}'
expect_error 400 invalid "invalid repository name is 400"
api POST /v1/repos '{"name":"x","url":"https://x/y","pool_size":"two"}'
expect_error 400 invalid "wrong field type is 400"
api POST /v1/repos "$SPEC"
expect_status 201 "admin adds a repository"
check "defaults and fields" [ "$(jget .default_branch)" = main -a "$(jget '.setup[0]')" = "echo built > built.txt" ]
api POST /v1/repos "$SPEC"
expect_error 409 conflict "duplicate repository is 409"
api GET /v1/repos "" "$ALICE"
check "users list repositories" [ "$STATUS" = 200 -a "$(jget '.repos | length')" = 1 ]
api GET /v1/repos/hello "" "$VIEWER"
check "viewers read a repository" [ "$STATUS" = 200 -a "$(jget .url)" = "$REMOTE" ]
api GET /v1/repos/nope
expect_error 404 not_found "unknown repository is 404"
api PATCH /v1/repos/hello '{"description":"the greeting service"}'
check "patch a repository" [ "$STATUS" = 200 -a "$(jget .description)" = "the greeting service" -a "$(jget .pool_size)" = 1 ]
api PATCH /v1/repos/hello '{"name":"other"}'
expect_error 400 invalid "a repository cannot be renamed"

# ---- image build ----
api POST /v1/repos/hello/images "" "$VIEWER"
expect_error 403 forbidden "a viewer cannot build images"
api POST /v1/repos/hello/images "" "$ALICE"
expect_status 202 "image build accepted"
IMG=$(jget .id)
wait_image hello
check "image built" [ "$state" = ready -a "$(jget '.images[0].id')" = "$IMG" ]
check "image records commit, size and setup log" [ "$(jget '.images[0].commit_sha')" = "$(git -C "$TMP/octo/seed" rev-parse HEAD)" -a "$(jget '.images[0].files')" -ge 2 ]
check "setup log visible" grep -q 'echo built' <<<"$(jget '.images[0].log_tail')"

# ---- warm pool ----
api POST /v1/repos/hello/warm "" "$ALICE"
expect_status 202 "warm hint accepted"
for i in $(seq 1 100); do
  api POST /v1/repos/hello/warm "" "$ALICE"
  [ "$(jget .warm)" = 1 ] && break
  sleep 0.1
done
check "pool holds one warm workspace" [ "$(jget .warm)" = 1 -a "$(jget .image_id)" = "$IMG" ]

# ---- stored GitHub token ----
api PUT /v1/me/credentials/github '{"token":"ghp_alice_SECRET_123"}' "$ALICE"
expect_status 204 "alice stores her GitHub token"
api GET /v1/me/credentials "" "$ALICE"
check "token presence shown, value never" [ "$(jget .github.stored)" = true ] && check "no token in the answer" [ "$(grep -c ghp_alice <<<"$BODY")" = 0 ]
api PUT /v1/me/credentials/github '{"token":42}' "$ALICE"
expect_error 400 invalid "token must be a string"

# ---- a session on the repository: warm start, two authors, two commits ----
SID=$(new_session '{"title":"greet","repo":"hello"}' "$ALICE")
READY=$(wait_event "$SID" sandbox.ready 1)
check "sandbox.ready from the warm pool, at creation (no prompt yet)" [ "$(jget .data.source "$READY")" = warm -a "$(count_type "$SID" prompt.started)" = 0 ]
check "the warm pool's sandbox was already running (sandbox: pool)" [ "$(jget .data.sandbox "$READY")" = pool ]
api POST "/v1/sessions/$SID/messages" '{"content":"echo from-alice > alice.txt"}' "$ALICE"
expect_status 202 "alice's prompt queued"
wait_event "$SID" prompt.completed 1 >/dev/null
C1=$(wait_event "$SID" git.commit 1)
check "commit by alice" [ "$(jget .data.author.name "$C1")" = alice -a "$(jget .data.author.email "$C1")" = alice@example.com -a "$(jget .data.branch "$C1")" = "sessiond/$SID" ]
S1=$(wait_event "$SID" session.snapshot 1)
check "snapshot after the turn" [ "$(jget .data.snapshot_id "$S1")" = snap-000001 -a "$(jget .data.turn "$S1")" = 1 ]
check "the warm workspace has the image's setup output" [ -f "$DATA_DIR/workspaces/$SID/built.txt" ]
api POST "/v1/sessions/$SID/messages" '{"content":"echo from-bob > bob.txt"}' "$BOB"
wait_event "$SID" prompt.completed 2 >/dev/null
C2=$(wait_event "$SID" git.commit 2)
check "commit by bob" [ "$(jget .data.author.name "$C2")" = bob ]
wait_event "$SID" session.snapshot 2 >/dev/null
api POST "/v1/sessions/$SID/messages" '{"content":"true"}' "$ALICE"
wait_event "$SID" session.snapshot 3 >/dev/null
api GET "/v1/sessions/$SID/events?limit=1000"
check "a prompt without changes makes no commit" [ "$(jget '[.events[] | select(.type=="git.commit")] | length')" = 2 ]

api GET "/v1/sessions/$SID/snapshots" "" "$VIEWER"
check "snapshots listed" [ "$STATUS" = 200 -a "$(jget '.snapshots | length')" = 3 -a "$(jget '.snapshots[0].label')" = "turn 1" ]

# ---- push with alice's own token ----
api POST "/v1/sessions/$SID/push" "" "$VIEWER"
expect_error 403 forbidden "a viewer cannot push"
api POST "/v1/sessions/$SID/push" "" "$ALICE"
check "push" [ "$STATUS" = 200 -a "$(jget .credentials)" = user -a "$(jget .branch)" = "sessiond/$SID" ]
check "push reaches the bare remote" [ "$(git --git-dir="$REMOTE" rev-parse "sessiond/$SID" 2>/dev/null)" = "$(jget .sha)" ]
check "two commits, two identities" [ "$(git --git-dir="$REMOTE" log -2 --format='%an <%ae>' "sessiond/$SID" | tr '\n' ,)" = "bob <bob@example.com>,alice <alice@example.com>," ]
check "bob has no token: Co-authored-by trailer" [ "$(git --git-dir="$REMOTE" log -1 --format='%(trailers:key=Co-authored-by,valueonly)' "sessiond/$SID")" = "bob <bob@example.com>" ]
check "alice has a token: no trailer" [ -z "$(git --git-dir="$REMOTE" log -1 --skip=1 --format='%(trailers:key=Co-authored-by,valueonly)' "sessiond/$SID")" ]

# ---- pull request with the author's token ----
api POST "/v1/sessions/$SID/pull-request" '{"title":"Greetings"}' "$BOB"
expect_error 403 forbidden "no stored token: no pull request"
api POST "/v1/sessions/$SID/pull-request" '{"title":"Greetings","body":"made by sessiond"}' "$ALICE"
check "pull request created" [ "$STATUS" = 201 -a "$(jget .url)" = https://github.example/octo/hello/pull/1 ]
GH=$(tail -n 1 "$TMP/gh.log")
check "PR request path" [ "$(jget .url "$GH")" = /api/v3/repos/octo/hello/pulls -a "$(jget .method "$GH")" = POST ]
check "PR request uses the author's token" [ "$(jget .auth "$GH")" = "Bearer ghp_alice_SECRET_123" ]
PRB=$(jget .body "$GH")
check "PR request body" [ "$(jget .head "$PRB")" = "sessiond/$SID" -a "$(jget .base "$PRB")" = main -a "$(jget .title "$PRB")" = Greetings ]
# the caller's body first, then the block sessiond regenerates on updates (docs/api.md)
check "PR body: the caller's text, then the generated block" \
  [ "$(jget .body "$PRB" | head -n 3 | tr '\n' '|')" = "made by sessiond||<!-- sessiond -->|" -a "$(jget .body "$PRB" | tail -n 1)" = "<!-- /sessiond -->" ]
check "PR body: one Co-authored-by per person who prompted" \
  [ "$(jget .body "$PRB" | grep -c '^Co-authored-by: ')" = 2 ]
PRE=$(wait_event "$SID" pr.created 1)
check "pr.created event" [ "$(jget .data.url "$PRE")" = https://github.example/octo/hello/pull/1 ]
api GET "/v1/sessions/$SID/artifacts"
check "PR stored as an artifact" [ "$(jget '[.artifacts[] | select(.type=="pr")] | length')" = 1 ]

# ---- rollback ----
api POST "/v1/sessions/$SID/rollback" '{"snapshot_id":"snap-000099"}' "$ALICE"
expect_error 404 not_found "rollback to an unknown snapshot is 404"
api POST "/v1/sessions/$SID/rollback" '{}' "$ALICE"
expect_error 400 invalid "rollback needs a snapshot_id"
api POST "/v1/sessions/$SID/rollback" '{"snapshot_id":"snap-000001"}' "$ALICE"
check "rollback" [ "$STATUS" = 200 ]
check "rolled back: bob's file gone, alice's kept" [ ! -e "$DATA_DIR/workspaces/$SID/bob.txt" -a -f "$DATA_DIR/workspaces/$SID/alice.txt" ]
check "rollback restores git state" [ "$(git -c safe.directory="*" -C "$DATA_DIR/workspaces/$SID" rev-list --count HEAD)" = 2 ]
wait_event "$SID" session.rollback 1 >/dev/null
check "session.rollback event" [ $? = 0 ]
api POST "/v1/sessions/$SID/messages" '{"content":"sleep 3"}' "$ALICE"
wait_event "$SID" prompt.started 4 >/dev/null
api POST "/v1/sessions/$SID/rollback" '{"snapshot_id":"snap-000001"}' "$ALICE"
expect_error 409 conflict "rollback refused while a prompt runs"
wait_event "$SID" prompt.completed 4 >/dev/null

# ---- start from the image (pool emptied) and from a clone ----
api PATCH /v1/repos/hello '{"pool_size":0}'
sleep 0.6
SID2=$(new_session '{"repo":"hello"}' "$ALICE")
api POST "/v1/sessions/$SID2/messages" '{"content":"true"}' "$ALICE"
R2=$(wait_event "$SID2" sandbox.ready 1)
check "sandbox.ready from the image" [ "$(jget .data.source "$R2")" = image ]
api POST /v1/repos "{\"name\":\"plain\",\"url\":\"file://$REMOTE\",\"image_interval_min\":0,\"pool_size\":0}"
SID3=$(new_session '{"repo":"plain"}' "$ALICE")
api POST "/v1/sessions/$SID3/messages" '{"content":"test -f README"}' "$ALICE"
R3=$(wait_event "$SID3" sandbox.ready 1)
check "sandbox.ready from a clone" [ "$(jget .data.source "$R3")" = clone ]
P3=$(wait_event "$SID3" prompt.completed 1)
check "the clone is checked out" [ -n "$P3" ]

# ---- DELETE snapshots the workspace ----
api DELETE "/v1/sessions/$SID" "" "$ALICE"
check "delete session" [ "$STATUS" = 200 -o "$STATUS" = 204 ]
n=0
for i in $(seq 1 100); do
  n=$(ls "$DATA_DIR/snapshots/$SID/snaps" 2>/dev/null | wc -l)
  [ "$n" -ge 5 ] && break
  sleep 0.1
done
check "snapshot at DELETE" [ "$n" -ge 5 ]

# ---- purge deletes the snapshots ----
wait_event "$SID2" session.snapshot 1 >/dev/null
check "image session has snapshots" [ -d "$DATA_DIR/snapshots/$SID2/snaps" ]
check "image session has a workspace" [ -d "$DATA_DIR/workspaces/$SID2" ]
api DELETE "/v1/sessions/$SID2?purge=true" "" "$ALICE"
check "purge" [ "$STATUS" = 200 ]
for i in $(seq 1 100); do [ -e "$DATA_DIR/snapshots/$SID2" ] || break; sleep 0.1; done
check "purge deletes the session's snapshots" [ ! -e "$DATA_DIR/snapshots/$SID2" ]
for i in $(seq 1 100); do [ -e "$DATA_DIR/workspaces/$SID2" ] || break; sleep 0.1; done
check "purge deletes the session's workspace" [ ! -e "$DATA_DIR/workspaces/$SID2" ]
# the workspace's inodes were recycled into a spare pool, not left behind as a tree
for i in $(seq 1 100); do
  ls -d "$DATA_DIR"/*/.snap-spare/t-* "$DATA_DIR"/repos/*/.snap-spare/t-* >/dev/null 2>&1 || break
  sleep 0.1
done
check "the discarded workspace was recycled" \
  [ -z "$(ls -d "$DATA_DIR"/*/.snap-spare/t-* "$DATA_DIR"/repos/*/.snap-spare/t-* 2>/dev/null)" ]

# ---- secrets never leak ----
check "token not stored in clear" [ "$(grep -c ghp_alice_SECRET "$DATA_DIR/registry.db" 2>/dev/null)" = 0 ]
check "token not in the log" [ "$(grep -c ghp_alice_SECRET "$SERVER_LOG")" = 0 ]
api DELETE /v1/me/credentials/github "" "$ALICE"
expect_status 204 "token deleted"
api DELETE /v1/repos/plain
expect_status 204 "repository deleted"

# ---- repositories from the config (repos.file), persisted ones kept across a restart ----
echo '[{"name":"fromcfg","url":"https://example.com/o/x.git","pool_size":0,"image_interval_min":0},
       {"name":"hello","url":"'"$REMOTE"'","description":"from the file","pool_size":0,"image_interval_min":0}]' >"$TMP/repos.json"
stop_server
start_server --repos-tick-ms 200 --secrets-key-file "$TMP/master.key" --repos-file "$TMP/repos.json"
api GET /v1/repos/fromcfg
check "repository loaded from repos.file" [ "$STATUS" = 200 -a "$(jget .url)" = https://example.com/o/x.git ]
api GET /v1/repos/hello
check "existing repository updated from repos.file" [ "$(jget .description)" = "from the file" -a "$(jget '.setup[0]')" = "echo built > built.txt" ]
api GET /v1/repos/hello/images
check "images survive a restart" [ "$(jget '.images[0].state')" = ready ]
# ---- a stop does not wait for a running setup step ----
api POST /v1/repos "{\"name\":\"slow\",\"url\":\"$REMOTE\",\"setup\":[\"sleep 600\"],\"pool_size\":0,\"image_interval_min\":0}"
api POST /v1/repos/slow/images
for i in $(seq 1 100); do
  api GET /v1/repos/slow/images
  [ "$(jget '.images[0].step')" = "setup 1/1" ] && break
  sleep 0.1
done
check "setup step running" [ "$(jget '.images[0].step')" = "setup 1/1" ]
T0=$(date +%s)
stop_server TERM
check "stop with a build running takes < 15 s" [ $(( $(date +%s) - T0 )) -lt 15 ]
start_server --repos-tick-ms 200 --secrets-key-file "$TMP/master.key"
api GET /v1/repos/slow/images
check "the interrupted build is marked failed" [ "$(jget '.images[0].state')" = failed ]

echo '[{"name":"bad name","url":"x"}]' >"$TMP/bad.json"
stop_server
if "$SESSIOND_BIN" --listen 127.0.0.1:0 --data-dir "$DATA_DIR" --repos-file "$TMP/bad.json" >>"$SERVER_LOG" 2>&1; then
  fail "a bad repos.file stops the start"
else
  pass "a bad repos.file stops the start"
fi
finish
