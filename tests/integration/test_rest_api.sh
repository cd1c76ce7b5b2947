#!/usr/bin/env bash
# The happy path of every REST endpoint of issue 2, plus access rules (roles, visibility),
# idempotent retries, the unfinished-prompt limit, end/reopen/purge and export.
. "$(dirname "$0")/lib.sh"
# A slow agent keeps prompts unfinished, so the queue counters and the limit are deterministic.
start_server --agent "sleep 600" --shutdown-grace 1

api GET /healthz "" -
check "healthz ok" [ "$STATUS" = 200 -a "$(jget .status)" = ok ]

# ---- tokens ----
api GET /v1/me
check "me is admin" [ "$(jget .role)" = admin -a "$(jget .user_id)" = token:admin ]
api POST /v1/tokens '{"user_id":"alice","name":"Alice","email":"alice@example.com","role":"user"}'
expect_status 201 "admin creates a user token"
ALICE=$(jget .token)
ALICE_TID=$(jget .id)
check "token secret returned once, user id normalized" [ -n "$ALICE" -a "$(jget .user_id)" = token:alice ]
BOB=$(make_token bob user)
VIEWER=$(make_token vera viewer)
BOT=$(make_token slackbot bot)
api GET /v1/me "" "$ALICE"
check "me with a user token" [ "$STATUS" = 200 -a "$(jget .user_id)" = token:alice -a "$(jget .name)" = Alice ]
api GET /v1/tokens "" "$ALICE"
check "user lists only own tokens, no secrets" \
  [ "$(jget '.tokens | length')" = 1 -a "$(jget '.tokens[0].token')" = null -a "$(jget '.tokens[0].user_id')" = token:alice ]
api GET /v1/tokens
check "admin lists all tokens" [ "$(jget '.tokens | length')" -ge 5 ]
check "token list never contains a secret" [ "$(jget '[.tokens[] | select(has("token"))] | length')" = 0 ]
api POST /v1/tokens '{"user_id":"mallory"}' "$ALICE"
expect_error 403 forbidden "user cannot create tokens"
TMPTOK_JSON=$(curl -s -X POST -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
  -d '{"user_id":"temp","expires_in":3600}' "$BASE/v1/tokens")
check "token with expiry" [ "$(jget .expires_at "$TMPTOK_JSON")" != null ]
TMPTOK=$(jget .token "$TMPTOK_JSON")
api DELETE "/v1/tokens/$(jget .id "$TMPTOK_JSON")" "" "$ALICE"
expect_status 404 "user cannot delete someone else's token"
api DELETE "/v1/tokens/$(jget .id "$TMPTOK_JSON")"
expect_status 204 "admin deletes a token"
api GET /v1/me "" "$TMPTOK"
expect_error 401 unauthorized "deleted token no longer works"

# ---- sessions ----
api POST /v1/sessions '{"title":"Fix the build","repo":"https://example.com/r.git"}' "$ALICE"
expect_status 201 "create session"
SID=$(jget .id)
check "session fields" [ "$(jget .title)" = "Fix the build" -a "$(jget .visibility)" = org -a "$(jget .state)" = active -a "$(jget .created_by)" = token:alice ]
api GET "/v1/sessions/$SID" "" "$BOB"
check "org session readable by another user" [ "$STATUS" = 200 -a "$(jget .your_role)" = writer ]
check "status has counters and lists" [ "$(jget .queued_prompts)" = 0 -a "$(jget '.participants | length')" = 1 -a "$(jget '.connected | type')" = array ]
api GET "/v1/sessions/$SID" "" "$ALICE"
check "creator is owner" [ "$(jget .your_role)" = owner ]

# ---- messages ----
api POST "/v1/sessions/$SID/messages" '{"content":"hello","context":{"url":"https://x"}}' "$ALICE"
expect_status 202 "post a message"
M1_SEQ=$(jget .seq)
check "202 has message_id, prompt_id, seq" [ "$(jget .message_id)" != null -a "$(jget .prompt_id)" != null -a "$M1_SEQ" -gt 0 ]
api POST "/v1/sessions/$SID/messages" '{"content":"just a comment","run":false}' "$BOB"
check "run:false has no prompt" [ "$STATUS" = 202 -a "$(jget .prompt_id)" = null ]
api GET "/v1/sessions/$SID/messages" "" "$BOB"
check "list messages" [ "$(jget '[.messages[] | select(.role=="user")] | length')" = 2 -a "$(jget '.messages[0].content')" = hello -a "$(jget '.messages[0].context.url')" = https://x -a "$(jget '.messages[1].author.id')" = token:bob ]
api GET "/v1/sessions/$SID" "" "$ALICE"
check "unfinished prompts counted" [ "$(jget '.queued_prompts + .running_prompts')" = 1 ]

api GET "/v1/sessions/$SID/events" "" "$BOB"
check "events in seq order without gaps" [ "$(jget '[.events[].seq] == ([range(1; (.events|length)+1)])')" = true ]
check "event shape" [ "$(jget '.events[0] | (has("seq") and has("type") and has("ts") and has("author") and has("data"))')" = true ]
MSG_EV=$(jget '[.events[] | select(.type=="message")][0]')
check "message event data" [ "$(jget .data.content "$MSG_EV")" = hello -a "$(jget .data.role "$MSG_EV")" = user -a "$(jget .author.id "$MSG_EV")" = token:alice -a "$(jget .data.context.url "$MSG_EV")" = https://x ]
api GET "/v1/sessions/$SID/events?after=$M1_SEQ&limit=1" "" "$BOB"
check "events after/limit" [ "$(jget '.events | length')" = 1 -a "$(jget '.events[0].seq')" = $((M1_SEQ + 1)) ]

# idempotent retry
api POST "/v1/sessions/$SID/messages" '{"content":"retry me","client_request_id":"req-1"}' "$ALICE"
FIRST=$BODY
api POST "/v1/sessions/$SID/messages" '{"content":"retry me","client_request_id":"req-1"}' "$ALICE"
check "repeated client_request_id returns the first answer" [ "$STATUS" = 202 -a "$BODY" = "$FIRST" ]
api GET "/v1/sessions/$SID/messages" "" "$ALICE"
check "repeated client_request_id writes nothing" [ "$(jget '[.messages[] | select(.content=="retry me")] | length')" = 1 ]

# unfinished prompt limit (10): 2 queued so far
for i in $(seq 3 10); do api POST "/v1/sessions/$SID/messages" "{\"content\":\"p$i\"}" "$ALICE"; done
check "10th prompt accepted" [ "$STATUS" = 202 ]
api POST "/v1/sessions/$SID/messages" '{"content":"one too many"}' "$ALICE"
expect_error 429 rate_limited "11th unfinished prompt gets 429"
api POST "/v1/sessions/$SID/messages" '{"content":"comments still fine","run":false}' "$ALICE"
expect_status 202 "run:false message allowed at the prompt limit"

# viewer and bot
api GET "/v1/sessions/$SID/messages" "" "$VIEWER"
expect_status 200 "viewer token reads"
api POST "/v1/sessions/$SID/messages" '{"content":"x","run":false}' "$VIEWER"
expect_error 403 forbidden "viewer token cannot write"
api POST "/v1/sessions/$SID/messages" '{"content":"from slack","run":false,"author":{"id":"slack:U123","name":"Sam"}}' "$BOT"
expect_status 202 "bot posts for a slack user"
api GET "/v1/sessions/$SID/events?after=$(($(jget .seq) - 1))" "" "$ALICE"
check "bot message authored by the slack user" [ "$(jget '.events[0].author.id')" = slack:U123 -a "$(jget '.events[0].author.name')" = Sam ]
api POST "/v1/sessions/$SID/messages" '{"content":"x","run":false,"author":{"id":"slack:U1"}}' "$ALICE"
expect_error 403 forbidden "user token cannot set author"

# ---- private sessions and participants ----
api POST /v1/sessions '{"title":"secret","visibility":"private"}' "$ALICE"
PSID=$(jget .id)
api GET "/v1/sessions/$PSID" "" "$BOB"
expect_error 404 not_found "private session invisible to others"
api GET /v1/sessions "" "$BOB"
check "private session not listed for others" [ "$(jget "[.sessions[] | select(.id==\"$PSID\")] | length")" = 0 ]
api POST "/v1/sessions/$PSID/participants" '{"user_id":"bob","role":"viewer"}' "$BOB"
expect_error 404 not_found "non-member cannot add participants"
api POST "/v1/sessions/$PSID/participants" '{"user_id":"bob","role":"viewer"}' "$ALICE"
expect_status 201 "owner adds a viewer"
api GET "/v1/sessions/$PSID" "" "$BOB"
check "viewer member reads" [ "$STATUS" = 200 -a "$(jget .your_role)" = viewer ]
api POST "/v1/sessions/$PSID/messages" '{"content":"x"}' "$BOB"
expect_error 403 forbidden "viewer member cannot write"
api POST "/v1/sessions/$PSID/participants" '{"user_id":"token:bob","role":"writer"}' "$ALICE"
api POST "/v1/sessions/$PSID/messages" '{"content":"now I can","run":false}' "$BOB"
expect_status 202 "writer member writes"
api GET /v1/sessions "" "$BOB"
check "member sees the private session in the list" [ "$(jget "[.sessions[] | select(.id==\"$PSID\")] | length")" = 1 ]
api DELETE "/v1/sessions/$PSID" "" "$BOB"
expect_error 403 forbidden "writer cannot end the session"

# ---- list with cursor ----
for i in 1 2 3 4 5; do new_session "{\"title\":\"page $i\"}" "$BOB" >/dev/null; done
api GET "/v1/sessions?limit=2" "" "$BOB"
P1=$(jget '[.sessions[].id] | join(",")')
CUR=$(jget .next_cursor)
api GET "/v1/sessions?limit=2&cursor=$CUR" "" "$BOB"
P2=$(jget '[.sessions[].id] | join(",")')
check "cursor pages do not overlap" [ -n "$P1" -a -n "$P2" -a "$CUR" != null -a "${P1#*$P2}" = "$P1" ]
ALL=""
CUR=""
for i in $(seq 1 20); do
  api GET "/v1/sessions?limit=3${CUR:+&cursor=$CUR}" "" "$BOB"
  ALL="$ALL $(jget '[.sessions[].id] | join(" ")')"
  CUR=$(jget '.next_cursor // empty')
  [ -z "$CUR" ] && break
done
api GET "/v1/sessions?limit=200" "" "$BOB"
check "walking the cursor yields every session once" [ "$(echo $ALL | tr ' ' '\n' | sort | uniq | wc -l)" = "$(jget '.sessions | length')" -a "$(echo $ALL | wc -w)" = "$(jget '.sessions | length')" ]

# ---- artifacts ----
api POST "/v1/sessions/$SID/artifacts" '{"type":"diff","path":"a.c","content":"--- a\n+++ b\n"}' "$ALICE"
expect_status 201 "upload a JSON artifact"
AID=$(jget .id)
curl -s -o "$TMP/art" -D "$TMP/arth" -H "Authorization: Bearer $ALICE" "$BASE/v1/sessions/$SID/artifacts/$AID"
check "artifact raw bytes" [ "$(cat "$TMP/art")" = "$(printf -- '--- a\n+++ b')" ]
check "artifact content type" grep -qi '^content-type: text/plain' "$TMP/arth"
printf '\x89PNG\r\n\x1a\n\x00\x01binary' >"$TMP/png"
api POST "/v1/sessions/$SID/artifacts?type=screenshot&path=shot.png" "" "$ALICE" -H 'Content-Type: image/png' --data-binary "@$TMP/png"
expect_status 201 "upload a raw binary artifact"
AID2=$(jget .id)
curl -s -o "$TMP/png2" -D "$TMP/pngh" -H "Authorization: Bearer $ALICE" "$BASE/v1/sessions/$SID/artifacts/$AID2"
check "binary artifact round-trips" cmp -s "$TMP/png" "$TMP/png2"
check "binary artifact mime" grep -qi '^content-type: image/png' "$TMP/pngh"
api POST "/v1/sessions/$SID/artifacts" "{\"type\":\"file\",\"content_base64\":\"$(printf 'hi\0there' | base64)\"}" "$ALICE"
AID3=$(jget .id)
check "base64 artifact size" [ "$STATUS" = 201 -a "$(jget .size)" = 8 ]
api GET "/v1/sessions/$SID/artifacts" "" "$BOB"
check "list artifacts (no content)" [ "$(jget '.artifacts | length')" = 3 -a "$(jget '.artifacts[0] | has("content")')" = false ]
api GET "/v1/sessions/$SID/artifacts/a_nope" "" "$BOB"
expect_error 404 not_found "unknown artifact"

# ---- export ----
curl -s -o "$TMP/export.db" -w '%{http_code}' -H "Authorization: Bearer $BOB" "$BASE/v1/sessions/$SID/export" >"$TMP/code"
check "export answers 200" [ "$(cat "$TMP/code")" = 200 ]
check "export is a consistent SQLite file" [ "$(sqlite3 "$TMP/export.db" 'PRAGMA integrity_check')" = ok ]
api GET "/v1/sessions/$SID" "" "$BOB"
LAST=$(jget .last_seq)
check "export holds every event" [ "$(sqlite3 "$TMP/export.db" 'SELECT count(*), max(seq) FROM events')" = "$LAST|$LAST" ]
check "export left no temp file" [ -z "$(ls "$DATA_DIR/tmp" 2>/dev/null)" ]

# ---- end, reopen, purge ----
api DELETE "/v1/sessions/$SID" "" "$ALICE"
check "owner ends the session" [ "$STATUS" = 200 -a "$(jget .state)" = ended ]
api GET "/v1/sessions/$SID" "" "$ALICE"
check "ended session keeps its history, queued prompts cancelled" [ "$(jget .state)" = ended -a "$(jget .queued_prompts)" = 0 -a "$(jget .messages)" -gt 10 ]
api POST "/v1/sessions/$SID/messages" '{"content":"a comment after the end","run":false}' "$ALICE"
expect_status 202 "a comment on an ended session is accepted"
api GET "/v1/sessions/$SID" "" "$ALICE"
check "a comment does not reopen the session" [ "$(jget .state)" = ended ]
api POST "/v1/sessions/$SID/messages" '{"content":"back again"}' "$ALICE"
expect_status 202 "a prompt on an ended session is accepted"
api GET "/v1/sessions/$SID" "" "$ALICE"
check "the prompt reopened the session" [ "$(jget .state)" = active -a "$(jget '.queued_prompts + .running_prompts')" = 1 ]
api GET "/v1/sessions/$SID/events?after=$((LAST))" "" "$ALICE"
check "session.ended then session.reopened events" [ "$(jget '[.events[].type | select(. == "session.ended" or . == "session.reopened" or . == "message")] | join(",")')" = "session.ended,message,session.reopened,message" ]
api DELETE "/v1/sessions/$SID?purge=true" "" "$ALICE"
check "purge" [ "$STATUS" = 200 -a "$(jget .state)" = purged ]
check "purged file is gone" [ ! -e "$DATA_DIR/sessions/$SID.db" ]
api GET "/v1/sessions/$SID" "" "$ALICE"
expect_error 410 gone "purged session answers 410"
api POST "/v1/sessions/$SID/messages" '{"content":"x"}' "$ALICE"
expect_error 410 gone "posting to a purged session answers 410"
api GET "/v1/sessions/$SID/events" "" "$ALICE"
expect_error 410 gone "events of a purged session answer 410"

# ---- request log ----
check "one JSON request log line per request" grep -q '"msg":"http: request","method":"GET","path":"/v1/sessions/'"$SID"'/events","status":410' "$SERVER_LOG"
check "no token secret in the log" bash -c "! grep -qF '$ALICE' '$SERVER_LOG' && ! grep -qF '$ADMIN' '$SERVER_LOG'"

stop_server
check "SIGTERM exits 0" [ "$STOP_RC" = 0 ]
finish
