#!/usr/bin/env bash
# Bad input gets a clear 4xx with {"error":{"code","message"}} and changes nothing: invalid
# JSON, wrong types, oversized bodies, unknown sessions, bad or absent tokens, traversal-looking
# and over-long ids, wrong methods and media types.
. "$(dirname "$0")/lib.sh"
start_server --max-content-chars 100

SID=$(new_session '{"title":"target"}')
USER=$(make_token ursula user)
api GET "/v1/sessions/$SID"
LAST0=$(jget .last_seq)

# ---- auth ----
api GET /v1/sessions "" -
expect_error 401 unauthorized "no token"
check "401 carries WWW-Authenticate" grep -qi '^www-authenticate: bearer' <<<"$HEADERS"
api GET /v1/sessions "" "sk_not_a_real_token"
expect_error 401 unauthorized "unknown token"
api GET /v1/sessions "" - -H "Authorization: Basic YWRtaW46YWRtaW4="
expect_error 401 unauthorized "basic auth is not a bearer token"
api GET /v1/sessions "" - -H "Authorization: Bearer"
expect_error 401 unauthorized "empty bearer"
api POST "/v1/sessions/$SID/messages" '{"content":"x"}' -
expect_error 401 unauthorized "unauthenticated write refused"

# ---- JSON bodies ----
api POST "/v1/sessions/$SID/messages" '{"content":'
expect_error 400 invalid "truncated JSON"
check "JSON error message says where" [ "$(jget .error.message | grep -c 'invalid JSON')" = 1 ]
api POST "/v1/sessions/$SID/messages" '["content"]'
expect_error 400 invalid "JSON array instead of object"
api POST "/v1/sessions/$SID/messages" 'content=hello'
expect_error 400 invalid "not JSON at all"
api POST "/v1/sessions/$SID/messages" ''
expect_error 400 invalid "empty body"
api POST "/v1/sessions/$SID/messages" '{"content":"a","content":"b"}'
expect_error 400 invalid "duplicate keys"
api POST "/v1/sessions/$SID/messages" '{"content":42}'
expect_error 400 invalid "content of the wrong type"
check "type error names the field" [ "$(jget .error.message)" = "field 'content' must be a string" ]
api POST "/v1/sessions/$SID/messages" '{"content":"x","run":"yes"}'
expect_error 400 invalid "run of the wrong type"
api POST "/v1/sessions/$SID/messages" '{"content":"x","context":"nope"}'
expect_error 400 invalid "context of the wrong type"
api POST "/v1/sessions/$SID/messages" '{"content":"x","client_request_id":7}'
expect_error 400 invalid "client_request_id of the wrong type"
api POST "/v1/sessions/$SID/messages" '{"context":{}}'
expect_error 400 invalid "content missing"
api POST "/v1/sessions/$SID/messages" '{"content":""}'
expect_error 400 invalid "empty content"
api POST "/v1/sessions/$SID/messages" "{\"content\":\"$(printf 'é%.0s' $(seq 1 101))\"}"
expect_error 413 too_large "content over the character cap"
api POST "/v1/sessions/$SID/messages" "{\"content\":\"$(printf 'é%.0s' $(seq 1 100))\",\"run\":false}"
expect_status 202 "content at the cap counts characters, not bytes"
LAST0=$((LAST0 + 1))
api POST "/v1/sessions/$SID/messages" "" "$ADMIN" -H 'Content-Type: text/plain' --data-binary '{"content":"x"}'
expect_error 415 unsupported_media_type "non-JSON content type"
api POST /v1/sessions '{"visibility":"public"}'
expect_error 400 invalid "bad visibility"
api POST /v1/sessions '{"title":["a"]}'
expect_error 400 invalid "title of the wrong type"
api POST /v1/tokens '{"user_id":"x","role":"root"}'
expect_error 400 invalid "bad token role"
api POST /v1/tokens '{"user_id":"x","expires_in":"soon"}'
expect_error 400 invalid "expires_in of the wrong type"
api POST /v1/tokens '{"name":"nobody"}'
expect_error 400 invalid "token without user_id"
api POST "/v1/sessions/$SID/participants" '{"user_id":"x","role":"owner"}'
expect_error 400 invalid "bad participant role"
api POST "/v1/sessions/$SID/artifacts" '{"type":"virus","content":"x"}'
expect_error 400 invalid "bad artifact type"
api POST "/v1/sessions/$SID/artifacts" '{"type":"file","content_base64":"!!!="}'
expect_error 400 invalid "bad base64"

# ---- oversized bodies (cap 1 MiB) ----
head -c $((1024 * 1024 + 1)) /dev/zero | tr '\0' 'a' >"$TMP/big"
api POST "/v1/sessions/$SID/messages" "" "$ADMIN" -H 'Content-Type: application/json' --data-binary "@$TMP/big"
expect_error 413 too_large "body over 1 MiB (Expect: 100-continue)"
api POST "/v1/sessions/$SID/messages" "" "$ADMIN" -H 'Content-Type: application/json' -H 'Expect:' --data-binary "@$TMP/big"
expect_error 413 too_large "body over 1 MiB sent at once is drained, then 413"
api POST "/v1/sessions/$SID/messages" "" "$ADMIN" -H 'Content-Type: application/json' -H 'Expect:' -H 'Transfer-Encoding: chunked' --data-binary "@$TMP/big"
expect_error 413 too_large "chunked body over 1 MiB"
head -c $((16 * 1024 * 1024 + 1)) /dev/zero >"$TMP/huge"
api POST "/v1/sessions/$SID/artifacts?type=file" "" "$ADMIN" -H 'Content-Type: application/octet-stream' -H 'Expect:' --data-binary "@$TMP/huge"
expect_error 413 too_large "artifact over 16 MiB"
head -c $((2 * 1024 * 1024)) /dev/urandom >"$TMP/two"
api POST "/v1/sessions/$SID/artifacts?type=file" "" "$ADMIN" -H 'Content-Type: application/octet-stream' --data-binary "@$TMP/two"
expect_status 201 "artifact of 2 MiB is under its own cap"
LAST0=$((LAST0 + 1))
api POST "/v1/sessions/$SID/artifacts?type=file" "" - -H 'Content-Type: application/octet-stream' -H 'Expect:' --data-binary "@$TMP/two"
expect_error 401 unauthorized "anonymous 2 MiB upload: drained unread, then 401 (no reset)"
api POST "/v1/sessions/$SID/artifacts?type=file" "" - -H 'Content-Type: application/octet-stream' -H 'Expect: 100-continue' --data-binary "@$TMP/two"
expect_error 401 unauthorized "anonymous upload with Expect: 100-continue is refused before the body"
# keep-alive survives a normal request after an error on the same connection
OUT=$(curl -s -o /dev/null -o /dev/null -w '%{http_code} %{num_connects}\n' -H "Authorization: Bearer $ADMIN" \
  "$BASE/v1/sessions/nope" "$BASE/healthz" | tr '\n' ' ')
check "keep-alive: two requests, one connection" [ "$OUT" = "404 1 200 0 " ]

# ---- ids and paths ----
api GET /v1/sessions/s_doesnotexist
expect_error 404 not_found "unknown session"
api POST /v1/sessions/s_doesnotexist/messages '{"content":"x"}'
expect_error 404 not_found "post to an unknown session"
api GET "/v1/sessions/$(printf 'a%.0s' $(seq 1 65))"
expect_error 400 invalid "65-char id"
api GET "/v1/sessions/$(printf 'a%.0s' $(seq 1 64))"
expect_error 404 not_found "64-char id is well-formed but unknown"
api GET "/v1/sessions/%2e%2e"
check "%2e%2e id refused" [ "$STATUS" = 400 -o "$STATUS" = 404 ]
api GET "/v1/sessions/%2e%2e%2fregistry/events"
check "encoded traversal refused" [ "$STATUS" = 400 -o "$STATUS" = 404 ]
api GET "/v1/sessions/../registry"
check "../ traversal refused" [ "$STATUS" = 400 -o "$STATUS" = 404 ]
api GET "/v1/sessions/../../etc/passwd/events"
check "deep traversal refused" [ "$STATUS" = 400 -o "$STATUS" = 404 ]
api GET "/v1/sessions/a%00b"
check "NUL in id refused" [ "$STATUS" = 400 -o "$STATUS" = 404 ]
api GET "/v1/sessions/a.b/events"
expect_error 400 invalid "dot in id"
api GET "/v1/sessions/$SID/artifacts/..%2f..%2fx"
check "traversal artifact id refused" [ "$STATUS" = 400 -o "$STATUS" = 404 ]
api DELETE "/v1/tokens/$(printf 'x%.0s' $(seq 1 65))"
expect_error 400 invalid "65-char token id"
check "no stray files from traversal attempts" [ -z "$(find "$DATA_DIR/sessions" -type f ! -name 's_*.db*')" -a -z "$(find "$TMP" -name registry -o -name passwd -o -name x)" ]

# ---- query parameters ----
api GET "/v1/sessions/$SID/events?after=abc"
expect_error 400 invalid "non-numeric after"
api GET "/v1/sessions/$SID/events?limit=0"
expect_error 400 invalid "limit 0"
api GET "/v1/sessions/$SID/events?limit=100000"
expect_error 400 invalid "limit too large"
api GET "/v1/sessions/$SID/events?after=-1"
expect_error 400 invalid "negative after"
api GET "/v1/sessions?limit=x"
expect_error 400 invalid "bad list limit"
api GET "/v1/sessions?cursor=garbage"
check "garbage cursor is 400 (or an empty page)" [ "$STATUS" = 400 -o "$STATUS" = 200 ]
api DELETE "/v1/sessions/$SID?purge=maybe"
expect_error 400 invalid "bad purge flag"

# ---- routing ----
api GET /v1/nothing-here
expect_error 404 not_found "unknown endpoint"
api PUT /v1/sessions '{}'
expect_error 405 method_not_allowed "wrong method"
check "405 lists allowed methods" grep -qi '^allow: .*GET.*POST\|^allow: .*POST.*GET' <<<"$HEADERS"
api PATCH "/v1/sessions/$SID" '{}'
expect_error 405 method_not_allowed "PATCH a session"
api GET "/v1/sessions/$SID/ws"
check "plain GET of the WebSocket URL is 426" [ "$STATUS" = 426 ]
api OPTIONS /v1/sessions "" - -H "Origin: https://evil.example" -H "Access-Control-Request-Method: POST"
check "preflight from an unknown origin gets no CORS grant" bash -c "! grep -qi '^access-control-allow-origin' <<<\"\$1\"" _ "$HEADERS"
api GET /healthz "" - -H "Origin: https://evil.example"
check "no CORS header for an unknown origin" bash -c "! grep -qi '^access-control-allow-origin' <<<\"\$1\"" _ "$HEADERS"

# ---- nothing changed ----
api GET "/v1/sessions/$SID"
check "bad requests wrote nothing" [ "$(jget .last_seq)" = "$LAST0" ]
check "server still healthy" curl -sf -o /dev/null "$BASE/healthz"
finish
