#!/usr/bin/env bash
# test_trust_access.sh - access ends when its grant ends, and the audit log records who did it.
# Attacks performed against the real server:
#  - a participant removed from a private session keeps reading it (there was no way to remove
#    one): DELETE /v1/sessions/{id}/participants/{user} must end their REST access at once;
#  - a deleted token keeps working (it must 401 at once);
#  - the server restarted with a new SESSIOND_ADMIN_TOKEN: the old admin secret still answers
#    and can mint tokens (it must 401; an admin token minted through the API must survive);
#  - users and viewers read the audit log (403), and every action above leaves an entry that
#    never carries a secret value.
# The WebSocket side (sockets and tickets of revoked tokens / removed users) is in
# test_trust_ws_revoke.mjs.
. "$(dirname "$0")/lib.sh"

jqe() { jq -e "$@" >/dev/null; }

export SESSIOND_ADMIN_TOKEN="adm_one_$RANDOM$RANDOM"
OLD_ADMIN=$SESSIOND_ADMIN_TOKEN
start_server --secrets-key-file "$TMP/master.key" --shutdown-grace 1

ALICE=$(make_token alice user)
BOB=$(make_token bob user)
CAROL=$(make_token carol user)
VIC=$(make_token vic viewer)

# ---- participants of a private session ----
SID=$(new_session '{"title":"secret plans","visibility":"private"}' "$ALICE")
api POST "/v1/sessions/$SID/participants" '{"user_id":"bob","role":"writer"}' "$ALICE"
expect_status 201 "creator adds bob"
api POST "/v1/sessions/$SID/participants" '{"user_id":"vic","role":"viewer"}' "$ALICE"
expect_status 201 "creator adds vic"
api GET "/v1/sessions/$SID" "" "$BOB"
expect_status 200 "bob reads the private session as a member"

api GET "/v1/sessions/$SID/participants" "" "$BOB"
expect_status 200 "a member lists the participants"
check "participants carry their roles" jqe '
  ([.participants[] | select(.user_id=="token:alice")][0].role == "owner") and
  ([.participants[] | select(.user_id=="token:bob")][0].role == "writer") and
  ([.participants[] | select(.user_id=="token:vic")][0].role == "viewer")' <<<"$BODY"
api GET "/v1/sessions/$SID/participants" "" "$CAROL"
expect_status 404 "a non-member cannot list the participants of a private session"

api DELETE "/v1/sessions/$SID/participants/token:vic" "" "$BOB"
expect_error 403 forbidden "a writer member cannot remove another participant"
api DELETE "/v1/sessions/$SID/participants/token:bob" "" "$CAROL"
expect_status 404 "an outsider cannot even see the private session"
api DELETE "/v1/sessions/$SID/participants/nobody" "" "$ALICE"
expect_error 404 not_found "removing an unknown participant is 404"
api DELETE "/v1/sessions/$SID/participants/alice" "" "$ADMIN"
expect_error 409 conflict "the creator cannot be removed"

api DELETE "/v1/sessions/$SID/participants/bob" "" "$ALICE"
expect_status 204 "the creator removes bob"
api GET "/v1/sessions/$SID" "" "$BOB"
expect_status 404 "bob can no longer read the session"
api GET "/v1/sessions/$SID/messages" "" "$BOB"
expect_status 404 "bob can no longer read its messages"
api POST "/v1/sessions/$SID/messages" '{"content":"still here?","run":false}' "$BOB"
expect_status 404 "bob can no longer post to it"
api POST "/v1/sessions/$SID/ws-ticket" "" "$BOB"
expect_status 404 "bob can no longer get a WebSocket ticket for it"
api GET "/v1/sessions/$SID/participants" "" "$ALICE"
check "bob is gone from the participants" jqe '[.participants[].user_id] | index("token:bob") == null' <<<"$BODY"
api DELETE "/v1/sessions/$SID/participants/bob" "" "$ALICE"
expect_status 404 "removing bob twice is 404"
check "participant.removed event" wait_event "$SID" participant.removed 1 5 >/dev/null

api DELETE "/v1/sessions/$SID/participants/vic" "" "$VIC"
expect_status 204 "a participant may remove themselves"
api GET "/v1/sessions/$SID" "" "$VIC"
expect_status 404 "and then no longer reads the session"

# ---- a deleted token stops at once ----
api POST /v1/tokens '{"user_id":"dave","role":"user"}'
DAVE=$(jget .token)
DAVE_ID=$(jget .id)
api GET /v1/me "" "$DAVE"
expect_status 200 "dave's token works"
api DELETE "/v1/tokens/$DAVE_ID"
expect_status 204 "admin revokes dave's token"
api GET /v1/me "" "$DAVE"
expect_status 401 "the revoked token is refused at once"

# ---- secrets and exec are audited, values never ----
api PUT /v1/me/credentials/github '{"token":"ghp_NEVER_IN_THE_AUDIT_LOG_42"}' "$ALICE"
expect_status 204 "alice stores a GitHub token"
api DELETE /v1/me/credentials/github "" "$ALICE"
expect_status 204 "alice deletes it"
api POST "/v1/sessions/$SID/exec" '{"argv":["echo","audited-exec"]}' "$ALICE"
expect_status 200 "alice runs a command"
LONG=$(head -c 5000 /dev/zero | tr '\0' 'x')
api POST "/v1/sessions/$SID/exec" "{\"script\":\"echo $LONG\"}" "$ALICE"
expect_status 200 "alice runs a long script"

# ---- the audit log ----
api GET /v1/audit "" "$ALICE"
expect_error 403 forbidden "a user token cannot read the audit log"
api GET /v1/audit "" "$VIC"
expect_error 403 forbidden "a viewer token cannot read the audit log"
api GET "/v1/audit?limit=1000"
expect_status 200 "admin reads the audit log"
ALL=$BODY
has() { jq -e "$1" <<<"$ALL" >/dev/null; }
check "token mints are audited (who, for whom, role)" has \
  '[.entries[] | select(.action=="token.create" and .detail.user_id=="token:alice" and .detail.role=="user" and .actor_user_id=="token:admin")] | length == 1'
check "the token revoke is audited" has \
  "[.entries[] | select(.action==\"token.revoke\" and .target==\"$DAVE_ID\" and .detail.user_id==\"token:dave\")] | length == 1"
check "participant adds are audited" has \
  "[.entries[] | select(.action==\"participant.add\" and .target==\"$SID\")] | length == 2"
check "participant removes are audited (by whom)" has \
  "[.entries[] | select(.action==\"participant.remove\" and .target==\"$SID\" and .detail.user_id==\"token:bob\" and .actor_user_id==\"token:alice\")] | length == 1"
check "secret set/delete are audited" has \
  '([.entries[] | select(.action=="secret.set" and .actor_user_id=="token:alice")] | length == 1) and
   ([.entries[] | select(.action=="secret.delete")] | length == 1)'
check "no secret value in the audit log" bash -c '! grep -q NEVER_IN_THE_AUDIT_LOG' <<<"$ALL"
check "exec is audited with its argv" has \
  "[.entries[] | select(.action==\"exec\" and .target==\"$SID\" and .detail.argv==[\"echo\",\"audited-exec\"] and .actor_user_id==\"token:alice\")] | length == 1"
check "a long script is cut" has \
  '[.entries[] | select(.action=="exec" and .detail.truncated==true and (.detail.script|length) <= 1024)] | length == 1'
check "entries carry time, token and client address" has \
  '[.entries[] | select(.action=="participant.remove")][0] | (.at|test("^20")) and (.actor_token_id|startswith("tok_")) and .request_ip=="127.0.0.1"'
check "newest first" has '[.entries[].id] as $ids | $ids == ($ids | sort | reverse)'
TOTAL=$(jget '.entries | length' "$ALL")
check "has_more is false on the last page" has '.has_more == false and .next_cursor == null'

api GET "/v1/audit?action=token.create"
check "filter by action" jqe '(.entries|length) >= 5 and all(.entries[]; .action=="token.create")' <<<"$BODY"
api GET "/v1/audit?user_id=token:alice&limit=1000"
check "filter by actor" jqe '(.entries|length) >= 4 and all(.entries[]; .actor_user_id=="token:alice")' <<<"$BODY"

# Paging: pages of 3 cover every entry once, newest first.
SEEN=()
CURSOR=""
PAGES=0
while :; do
  api GET "/v1/audit?limit=3${CURSOR:+&cursor=$CURSOR}"
  [ "$STATUS" = 200 ] || break
  PAGES=$((PAGES + 1))
  SEEN+=($(jget '.entries[].id'))
  [ "$(jget .has_more)" = true ] || break
  CURSOR=$(jget .next_cursor)
  [ $PAGES -lt 100 ] || break
done
check "paging with limit=3 walks every entry once ($TOTAL in $PAGES pages)" \
  [ "${#SEEN[@]}" = "$TOTAL" -a "$(printf '%s\n' "${SEEN[@]}" | sort -u | wc -l)" = "$TOTAL" -a $PAGES -gt 1 ]
api GET "/v1/audit?limit=0"
expect_status 400 "limit=0 is refused"
api GET "/v1/audit?limit=1001"
expect_status 400 "limit above 1000 is refused"
api GET "/v1/audit?cursor=bogus"
expect_status 400 "a malformed cursor is refused"

# ---- a changed SESSIOND_ADMIN_TOKEN revokes the previous one ----
api POST /v1/tokens '{"user_id":"ops","role":"admin"}'
OPS=$(jget .token)
api GET /v1/tokens
OLD_ADMIN_ID=$(jget '[.tokens[] | select(.user_id=="token:admin")][0].id')
stop_server
export SESSIOND_ADMIN_TOKEN="adm_two_$RANDOM$RANDOM"
start_server
api GET /v1/me "" "$OLD_ADMIN"
expect_status 401 "the previous admin token is refused after the change"
api POST /v1/tokens '{"user_id":"mallory","role":"admin"}' "$OLD_ADMIN"
expect_status 401 "the previous admin token cannot mint tokens"
api GET /v1/me "" "$SESSIOND_ADMIN_TOKEN"
check "the new admin token works" [ "$STATUS" = 200 -a "$(jget .role)" = admin ]
api GET /v1/me "" "$OPS"
expect_status 200 "an admin token minted through the API survives the change"
api GET /v1/me "" "$ALICE"
expect_status 200 "user tokens survive the change"
api GET "/v1/audit?action=admin.token_rotated"
check "the rotation is audited" jqe \
  "(.entries|length) == 1 and .entries[0].target == \"$OLD_ADMIN_ID\" and .entries[0].actor_user_id == null" <<<"$BODY"
restart_server
api GET /v1/me "" "$SESSIOND_ADMIN_TOKEN"
expect_status 200 "the same admin token survives a plain restart"
api GET "/v1/audit?action=admin.token_rotated"
check "a plain restart rotates nothing" jqe '(.entries|length) == 1' <<<"$BODY"

finish
