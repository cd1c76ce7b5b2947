#!/usr/bin/env bash
# test_trust_routes.sh - a request reaches the endpoint its URI names, or none.
# Attacks performed against the real server (curl --path-as-is, so nothing is normalised):
#  - an encoded NUL cuts the decoded path short: "DELETE /v1/sessions/S%00/participants/bob"
#    (removing a participant) was routed as "DELETE /v1/sessions/S" and ended the session;
#  - an encoded slash becomes a separator: "GET /v1/sessions/S%2Fmessages" (one segment to a
#    proxy in front that filters on the raw path) was served as the messages endpoint;
#  - ids outside [A-Za-z0-9_-]{1,64}, "..", over-long paths, unknown paths and wrong methods get
#    their 4xx before any handler runs.
. "$(dirname "$0")/lib.sh"

start_server

ALICE=$(make_token alice user)
SID=$(new_session '{"title":"keep me","visibility":"private"}' "$ALICE")
api POST "/v1/sessions/$SID/participants" '{"user_id":"bob","role":"writer"}' "$ALICE"
expect_status 201 "alice adds bob"
api POST "/v1/sessions/$SID/messages" '{"content":"hello","run":false}' "$ALICE"
expect_status 202 "a message is posted"

# ---- encoded NUL ----
api DELETE "/v1/sessions/$SID%00/participants/token:bob" "" "$ALICE"
expect_error 400 invalid "an encoded NUL in the path is refused"
api GET "/v1/sessions/$SID" "" "$ALICE"
check "the session was not ended by the NUL-cut path" [ "$STATUS:$(jget .state)" = 200:active ]
api GET "/v1/sessions/$SID%00/messages" "" "$ALICE"
expect_error 400 invalid "an encoded NUL in a GET path is refused"

# ---- encoded slash ----
api GET "/v1/sessions/$SID%2Fmessages" "" "$ALICE"
expect_error 400 invalid "an encoded slash is not a separator (upper case)"
api GET "/v1/sessions/$SID%2fmessages" "" "$ALICE"
expect_error 400 invalid "an encoded slash is not a separator (lower case)"
api POST "/v1/sessions/$SID%2Fmessages" '{"content":"x","run":false}' "$ALICE"
expect_error 400 invalid "a POST through an encoded slash is refused"
api GET "/ui/..%2F..%2F..%2Fetc%2Fpasswd" "" "-"
expect_error 400 invalid "an encoded slash toward the static files is refused"
api GET "/v1/sessions/$SID/messages" "" "$ALICE"
check "only the one message exists" [ "$(jget '.messages | length')" = 1 ]
# The same bytes in the query string are data, not path.
api GET "/v1/sessions/$SID/events?after=0&x=%2F%41" "" "$ALICE"
expect_status 200 "encoded bytes in the query string are fine"

# ---- ids, .., long paths ----
api GET "/v1/sessions/.." "" "$ALICE"
expect_error 400 invalid ".. is not an id"
api GET "/v1/sessions/%2e%2e" "" "$ALICE"
expect_error 400 invalid "an encoded .. is not an id"
api GET "/v1/sessions/$SID/../$SID" "" "$ALICE"
expect_error 404 not_found "dot segments are not resolved"
api GET "/v1/sessions/a%20b" "" "$ALICE"
expect_error 400 invalid "a space is not in an id"
api GET "/v1/sessions/$(printf 'a%.0s' $(seq 1 65))" "" "$ALICE"
expect_error 400 invalid "a 65-character id is refused"
api GET "/v1/sessions/$(printf 'a%.0s' $(seq 1 5000))" "" "$ALICE"
expect_error 404 not_found "a path longer than any parameter matches nothing"
api GET "/v1/sessions/$SID/artifacts/a.b" "" "$ALICE"
expect_error 400 invalid "every *id placeholder is checked (aid)"

# ---- 404 / 405 ----
api GET "/v1/nothing" "" "$ALICE"
expect_error 404 not_found "an unknown path is 404"
api PATCH "/v1/sessions/$SID" "" "$ALICE"
expect_error 405 method_not_allowed "a known path with another method is 405"
check "405 names the allowed methods" grep -qi '^Allow: GET, DELETE' <<<"$HEADERS"

api GET "/v1/sessions/$SID" "" "$ALICE"
expect_status 200 "the session is still there at the end"

finish
