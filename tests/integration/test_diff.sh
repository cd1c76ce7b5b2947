#!/usr/bin/env bash
# GET /v1/sessions/{id}/diff: the workspace against the session's base commit and (?against=
# head) against the tip of its branch, per-file counts, ?path= for one file, the 2 MiB cap with
# `truncated`, large files not read, and the errors and access rules of session endpoints.
. "$(dirname "$0")/lib.sh"

G="git -c user.name=Seed -c user.email=seed@example.com -c init.defaultBranch=main"
mkdir -p "$TMP/o"
( cd "$TMP/o" && $G init -q --bare r.git && $G init -q seed && cd seed &&
  seq 1 10 > a.txt && echo hello > README && $G add -A && $G commit -qm init &&
  $G push -q ../r.git main ) || { fail "seed repository"; finish; }
SEED=$(git -C "$TMP/o/seed" rev-parse HEAD)

start_server --repos-tick-ms 200
ALICE=$(make_token alice user)
BOB=$(make_token bob user)
api POST /v1/repos "{\"name\":\"r\",\"url\":\"$TMP/o/r.git\",\"pool_size\":0,\"image_interval_min\":0}"
expect_status 201 "repository added"

SID=$(new_session '{"title":"d","repo":"r"}' "$ALICE")
wait_event "$SID" sandbox.ready 1 >/dev/null
api GET "/v1/sessions/$SID/diff" "" "$ALICE"
check "a fresh workspace: no change, base = head = the seed commit" \
  [ "$STATUS" = 200 -a "$(jget '.files | length')" = 0 -a "$(jget .base)" = "$SEED" -a "$(jget .head)" = "$SEED" -a "$(jget .truncated)" = false ]

# one turn: a.txt edited (line 3 replaced, one line added), new.txt added, README deleted
api POST "/v1/sessions/$SID/messages" \
  '{"content":"sed -i s/^3$/three/ a.txt && echo 11 >> a.txt && printf \"x\\ny\\n\" > new.txt && rm README"}' "$ALICE"
expect_status 202 "prompt queued"
C1=$(wait_event "$SID" git.commit 1)
HEAD1=$(jget .data.sha "$C1")
api GET "/v1/sessions/$SID/diff" "" "$ALICE"
check "three files changed since the base" [ "$STATUS" = 200 -a "$(jget '.files | length')" = 3 -a "$(jget .base)" = "$SEED" -a "$(jget .head)" = "$HEAD1" ]
check "per-file status and counts" [ "$(jget '[.files[] | "\(.path):\(.status):\(.additions):\(.deletions)"] | sort | join(",")')" = "README:deleted:0:1,a.txt:modified:2:1,new.txt:added:2:0" ]
check "totals" [ "$(jget .additions)" = 4 -a "$(jget .deletions)" = 2 -a "$(jget .files_total)" = 3 ]
check "unified text" grep -q '^+three$' <<<"$(jget .diff)"
check "unified text: file headers" [ "$(jget .diff | grep -c '^diff --git ')" = 3 ]
api GET "/v1/sessions/$SID/diff?against=head" "" "$ALICE"
check "against=head: nothing uncommitted" [ "$STATUS" = 200 -a "$(jget '.files | length')" = 0 -a "$(jget .base)" = "$HEAD1" -a "$(jget .against)" = head ]

# an uncommitted change (no prompt: PUT files writes the workspace)
api PUT "/v1/sessions/$SID/files?path=u.txt" "uncommitted" "$ALICE"
expect_status 200 "a file written without a commit"
api GET "/v1/sessions/$SID/diff?against=head" "" "$ALICE"
check "against=head: the uncommitted file only" [ "$(jget '[.files[].path] | join(",")')" = u.txt -a "$(jget '.files[0].status')" = added ]
api GET "/v1/sessions/$SID/diff?against=base" "" "$ALICE"
check "against=base: committed and uncommitted" [ "$(jget '.files | length')" = 4 ]
api GET "/v1/sessions/$SID/diff?path=a.txt" "" "$ALICE"
check "path=: one file" [ "$(jget '[.files[].path] | join(",")')" = a.txt -a "$(jget .diff | grep -c '^diff --git ')" = 1 ]
api GET "/v1/sessions/$SID/diff?path=nope.txt" "" "$ALICE"
check "path= of an unchanged or absent file: empty" [ "$STATUS" = 200 -a "$(jget '.files | length')" = 0 ]
api GET "/v1/sessions/$SID/diff?path=*.txt" "" "$ALICE"
check "path= is literal (no glob)" [ "$STATUS" = 200 -a "$(jget '.files | length')" = 0 ]

# the cap: three ~0.9 MB text files (> 2 MiB together) and one 3 MB file (not read)
api POST "/v1/sessions/$SID/messages" \
  '{"content":"for i in 1 2 3; do seq 1 150000 > big$i.txt; done; head -c 3000000 /dev/zero | tr \"\\\\0\" a > huge.txt"}' "$ALICE"
wait_event "$SID" git.commit 2 >/dev/null
api GET "/v1/sessions/$SID/diff" "" "$ALICE"
SIZE=$(stat -c %s "$TMP/body")
check "capped: truncated, answer under 3 MiB" [ "$STATUS" = 200 -a "$(jget .truncated)" = true -a "$SIZE" -lt 3145728 ]
check "all files still listed" [ "$(jget '.files | length')" = 8 -a "$(jget .files_total)" = 8 ]
check "the files past the cap: truncated, no counts" [ "$(jget '[.files[] | select(.truncated) | select(.additions == null)] | length')" -ge 1 ]
api GET "/v1/sessions/$SID/diff?path=huge.txt" "" "$ALICE"
check "a file over 1 MiB is not read: large, binary" [ "$(jget '.files[0].large')" = true -a "$(jget '.files[0].binary')" = true -a "$(jget .truncated)" = false ]
api GET "/v1/sessions/$SID/diff?path=big2.txt" "" "$ALICE"
check "one big file alone fits" [ "$(jget '.files[0].additions')" = 150000 -a "$(jget .truncated)" = false ]

# errors and access
api GET "/v1/sessions/$SID/diff?against=tip" "" "$ALICE"
expect_error 400 invalid "against must be base or head"
api GET "/v1/sessions/$SID/diff?path=../etc/passwd" "" "$ALICE"
expect_error 400 invalid "a path leaving the workspace is 400"
api GET "/v1/sessions/$SID/diff?path=/etc/passwd" "" "$ALICE"
expect_error 400 invalid "an absolute path is 400"
api GET "/v1/sessions/$SID/diff?path=a%00b" "" "$ALICE"
expect_error 400 invalid "a NUL in the path is 400"
api GET "/v1/sessions/s_nosuchsession/diff" "" "$ALICE"
expect_error 404 not_found "unknown session is 404"
api GET "/v1/sessions/bad!id/diff" "" "$ALICE"
check "a malformed id is refused" [ "$STATUS" = 400 -o "$STATUS" = 404 ]
api GET "/v1/sessions/$SID/snapshots" "" "$BOB"
SNAPS_BOB=$STATUS
api GET "/v1/sessions/$SID/diff" "" "$BOB"
check "another user gets what other session endpoints answer ($SNAPS_BOB)" [ "$STATUS" = "$SNAPS_BOB" ]
api GET "/v1/sessions/$SID/diff" "" -
expect_error 401 unauthorized "no token is 401"
PLAIN=$(new_session '{"title":"no repo"}' "$ALICE")
api GET "/v1/sessions/$PLAIN/diff" "" "$ALICE"
expect_error 404 not_found "a session without a repository has no diff"

finish
