#!/usr/bin/env bash
# A percent-encoded NUL must not cut the path or the query: MHD decodes both into C strings,
# so DELETE /v1/sessions/ID%00/artifacts used to be routed as DELETE /v1/sessions/ID (the
# session ended) and GET .../ID%00/events answered the session. Every route refuses a NUL in
# the path or the query, and any other control byte in the path, with a 400 before routing.
. "$(dirname "$0")/lib.sh"
start_server

SID=$(new_session '{"title":"target"}')
api GET "/v1/sessions/$SID"
LAST0=$(jget .last_seq)

api DELETE "/v1/sessions/$SID%00/artifacts"
expect_error 400 invalid "DELETE .../ID%00/artifacts is refused"
check "the error names the NUL" grep -q 'NUL' <<<"$BODY"
api GET "/v1/sessions/$SID"
check "the session was not ended" [ "$(jget .state)" = active ]
check "nothing was appended" [ "$(jget .last_seq)" = "$LAST0" ]

api GET "/v1/sessions/$SID%00/events"
expect_error 400 invalid "GET .../ID%00/events does not answer the session"
api GET "/v1/sessions/$SID%00"
expect_error 400 invalid "a trailing %00 on the id itself"
api GET "/v1/sessions/$SID/events?after=0%00junk"
expect_error 400 invalid "a %00 in a query value"
api GET "/v1/sessions/$SID/events?after%00x=0"
expect_error 400 invalid "a %00 in a query name"
api DELETE "/v1/sessions/$SID%00"
expect_error 400 invalid "DELETE with a %00 after the id"
api POST "/v1/sessions/$SID%00/cancel" '{}'
expect_error 400 invalid "POST with a body and a %00 path"
api GET "/v1/repos/x%00y" ""
expect_error 400 invalid "a %00 in a repository name"
api GET "/healthz%00x" "" -
expect_error 400 invalid "a %00 on a public route, unauthenticated"
api GET "/v1/sessions/$SID%09/events"
expect_error 400 invalid "a tab in the path"
api GET "/v1/sessions/$SID%7f/events"
expect_error 400 invalid "a DEL in the path"
api GET "/v1/sessions/$SID"
check "still active after every attempt" [ "$(jget .state)" = active ]

# What is not a NUL still works: %2500 decodes to the text "%00", %30 to "0".
api GET "/v1/sessions/$SID/events?after=%30"
expect_status 200 "an encoded digit in a query is fine"
api GET "/v1/sessions/$SID/events?after=%2500"
expect_error 400 invalid "the text %00 is just a bad integer"
check "... refused by the handler, not as a NUL" grep -q "'after' must be an integer" <<<"$BODY"
api GET "/ui/%25%30%30" "" -
check "a literal '%00' text in a static path is not a NUL" [ "$STATUS" != 400 ]

# A literal NUL byte in the request line: MHD cuts the URI at it, so the request can only be
# what the client could have sent without it; proxies in front refuse such a request line.
finish
