#!/usr/bin/env bash
# README.md's "From a prompt to a pull request", run as written so it cannot silently rot:
# - the "walkthrough: config" block's JSON is the config file the server starts with (unknown
#   keys would stop it); only what a test cannot have is given as flags, which beat the file:
#   the fake GitHub's API base and app id, a key file of our own, a free port;
# - the "walkthrough: run" block runs verbatim in bash -e from the server's directory, with
#   two substitutions: its API address and the GitHub URL of its repository (-> the fake);
# - afterwards: one pull request of the session branch into main, opened by the app, marked
#   ready; the walkthrough's output showed the events, the diff and the pr.
. "$(dirname "$0")/lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)
README="$HERE/../../README.md"

# block MARKER - the lines of the ```sh fence that follows <!-- walkthrough: MARKER -->
block() {
  awk -v m="<!-- walkthrough: $1 -->" '
    $0 == m { want = 1; next }
    want == 1 && /^```sh$/ { want = 2; next }
    want == 2 && /^```$/ { exit }
    want == 2 { print }' "$README"
}
CONFIG_BLOCK=$(block config)
RUN_BLOCK=$(block run)
check "README: the config and run blocks are there" [ -n "$CONFIG_BLOCK" -a -n "$RUN_BLOCK" ]
check "README: the server starts with make run and the config file" \
  bash -c "printf '%s\n' \"\$1\" | grep -qxF \"make run ARGS='--config sessiond.json'\"" _ "$CONFIG_BLOCK"
printf '%s\n' "$CONFIG_BLOCK" | awk '/<<.EOF.$/ { on = 1; next } /^EOF$/ { on = 0 } on' >"$TMP/sessiond.json"
check "README: the config is JSON" bash -c "jq -e . \"\$1\" >/dev/null" _ "$TMP/sessiond.json"
APP_ID=$(jq -r .github.app_id "$TMP/sessiond.json")

# the repository the walkthrough names, on the fake GitHub, installed for the app
REPO_URL=$(printf '%s\n' "$RUN_BLOCK" | grep -o 'https://github.com/[a-z]*/[a-z]*\.git' | head -n 1)
OWNER=$(printf '%s' "$REPO_URL" | cut -d/ -f4)
NAME=$(basename "$REPO_URL" .git)
check "README: a GitHub repository URL" [ -n "$OWNER" -a -n "$NAME" ]
G="git -c user.name=Seed -c user.email=seed@example.com -c init.defaultBranch=main"
mkdir -p "$TMP/git/$OWNER"
( cd "$TMP" && $G init -q --bare "git/$OWNER/$NAME.git" && $G init -q seed && cd seed &&
  echo hello > README && $G add -A && $G commit -qm init &&
  $G push -q "../git/$OWNER/$NAME.git" main ) || { fail "seed repository"; finish; }
openssl genrsa -out "$TMP/app.pem" 2048 2>/dev/null && chmod 600 "$TMP/app.pem" &&
  openssl rsa -in "$TMP/app.pem" -pubout -out "$TMP/app.pub" 2>/dev/null || { fail "app key"; finish; }
node "$HERE/fake_github.mjs" --port-file "$TMP/fake.port" --public-key "$TMP/app.pub" \
  --app-id 4242 --git-root "$TMP/git" --installed "$OWNER=77" --log "$TMP/fake.log" 2>"$TMP/fake.err" &
FAKE_PID=$!
trap 'kill $FAKE_PID 2>/dev/null; _cleanup' EXIT
for i in $(seq 1 100); do [ -s "$TMP/fake.port" ] && break; sleep 0.05; done
FAKE="http://127.0.0.1:$(cat "$TMP/fake.port")"
fpr() { curl -s "$FAKE/_fake/prs" | jq -r "$1"; }

check "README: an app id in the config" [ "$APP_ID" -gt 0 ]
start_server --config "$TMP/sessiond.json" --github-api-base "$FAKE/api/v3" --github-app-id 4242 \
  --github-app-key-file "$TMP/app.pem" --repos-tick-ms 200

# run it: the README's block, its address and repository URL swapped for ours
printf '%s\n' "$RUN_BLOCK" |
  sed -e "s#^API=http://127.0.0.1:8080\$#API=$BASE#" -e "s#$REPO_URL#$FAKE/$OWNER/$NAME.git#" \
    >"$TMP/walkthrough.sh"
check "the address was substituted" grep -qxF "API=$BASE" "$TMP/walkthrough.sh"
( cd "$TMP" && timeout 60 bash -e "$TMP/walkthrough.sh" ) >"$TMP/out" 2>"$TMP/err"
RC=$?
check "the walkthrough runs to its end (rc $RC)" [ "$RC" = 0 ]
[ "$RC" = 0 ] || { echo "# stdout:" >&2; tail -n 30 "$TMP/out" >&2; echo "# stderr:" >&2; tail -n 10 "$TMP/err" >&2; }
OUT=$(cat "$TMP/out")
has() { printf '%s\n' "$OUT" | grep -qE -- "$1"; }
check "it showed the events up to pr.created" has '^[0-9]+ pr\.created$'
check "the events before it: git.commit and git.pushed" bash -c \
  "printf '%s\n' \"\$1\" | grep -qE '^[0-9]+ git\.commit$' && printf '%s\n' \"\$1\" | grep -qE '^[0-9]+ git\.pushed$'" _ "$OUT"
check "it showed the diff" has '^\+hello$'
check "it showed the pr, a draft" has '^\{"number":1,.*"draft":true'
check "the last answer: the pull request, ready" \
  [ "$(printf '%s\n' "$OUT" | tail -n 1 | jq -r '.draft')" = false ]

check "GitHub has one pull request of a sessiond branch into main, by the app, ready" \
  [ "$(fpr length)" = 1 -a "$(fpr '.[0].base')" = main -a "$(fpr '.[0].by')" = app -a \
    "$(fpr '.[0].draft')" = false -a "$(fpr '.[0].head' | cut -d/ -f1)" = sessiond ]
api GET "/v1/repos/$NAME/images"
check "the newest image is ready" [ "$(jget '.images[0].state')" = ready ]
api GET "/v1/repos/$NAME/secrets"
check "the repository's secret is set" [ "$(jget '.secrets[0].name')" = NPM_TOKEN ]
check "no secret and no token in the server log" [ "$(grep -c 'npm_0123456789abcdef\|ghs_' "$SERVER_LOG")" = 0 ]
finish
