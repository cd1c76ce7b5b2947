#!/usr/bin/env bash
# A rolled-back workspace belongs to the sandbox that runs next (local backend, one host uid
# per sandbox): the restore writes the owners a snapshot recorded, which may be the uid of an
# earlier sandbox of the session (or root), so the files it puts back must be given to the
# uid the session's sandbox runs as. Two cases: the sandbox still runs at the rollback (the
# tree goes back to its uid), and the sandbox was stopped when idle before the rollback (the
# next sandbox, usually another uid, gets the tree at its start). In both, inside the sandbox,
# every file of the workspace is owned by `id -u` and a restored file can be written.
export SESSIOND_SANDBOX=local
. "$(dirname "$0")/lib.sh"

G="git -c user.name=Seed -c user.email=seed@example.com -c init.defaultBranch=main"
mkdir -p "$TMP/octo"
( cd "$TMP/octo" && $G init -q --bare hello.git && $G init -q seed && cd seed &&
  echo hello > README && $G add -A && $G commit -qm init && $G push -q ../hello.git main ) ||
  { fail "seed repository"; finish; }

sx() { # SID SCRIPT -> BODY = exec result
  api POST "/v1/sessions/$1/exec" "$(jq -c -n --arg s "$2" '{script:$s}')"
}
# What the sandbox says of the tree: its uid, the files not owned by it, whether a restored
# file takes a write.
OWN='u=$(id -u); echo "uid=$u"; echo "foreign=$(find . -path ./.git -prune -o ! -uid "$u" -print | wc -l)"
echo "gitforeign=$(find .git ! -uid "$u" | wc -l)"
echo "f=$(stat -c %u f.txt)"; echo more >> f.txt && echo "write=ok"'

start_server --repos-tick-ms 200 --shutdown-grace 1 --sandbox-idle-stop 2
api POST /v1/repos "{\"name\":\"hello\",\"url\":\"file://$TMP/octo/hello.git\",\"pool_size\":0,\"image_interval_min\":0}"
expect_status 201 "repository added"

# prompt_and_wait SID N SCRIPT: the N-th prompt of SID, to its end and its snapshot.
prompt_and_wait() {
  api POST "/v1/sessions/$1/messages" "$(jq -c -n --arg s "$3" '{content:$s}')"
  wait_event "$1" prompt.completed "$2" 30 >/dev/null || fail "prompt $2 of $1 completed"
  wait_event "$1" session.snapshot "$2" 30 >/dev/null || fail "snapshot $2 of $1"
}

# check_tree WHAT CONTENT: inside the sandbox, f.txt holds CONTENT (the snapshot's), every file
# belongs to the uid the sandbox runs as, and a restored file takes a write.
check_tree() {
  sx "$SID" "cat f.txt; $OWN"
  local out uid
  out=$(jget .stdout)
  uid=$(printf '%s\n' "$out" | sed -n 's/^uid=//p')
  check "$1: the rollback restored the snapshot" [ "$(printf '%s\n' "$out" | head -n 1)" = "$2" ]
  check "$1: the sandbox runs as a sandbox uid, not root" [ -n "$uid" -a "$uid" != 0 ]
  check "$1: every restored file belongs to the sandbox's uid" \
    [ "$(printf '%s\n' "$out" | grep -c -x -e foreign=0 -e gitforeign=0 -e "f=$uid")" = 3 ]
  check "$1: a restored file takes a write" grep -q -x write=ok <<<"$out"
  [ "$(printf '%s\n' "$out" | grep -c -x -e foreign=0 -e gitforeign=0 -e "f=$uid" -e write=ok)" = 4 ] ||
    echo "# $1: $BODY"
}

SID=$(new_session '{"repo":"hello"}')
prompt_and_wait "$SID" 1 'echo one > f.txt; mkdir -p d && echo x > d/y'
sx "$SID" 'id -u'
U1=$(jget .stdout)
prompt_and_wait "$SID" 2 'echo two > f.txt; rm -rf d; echo extra > g.txt'
wait_event "$SID" sandbox.stopped 1 30 >/dev/null || fail "the idle sandbox stopped"

# Another session's sandbox takes the freed uid while it runs a long prompt, so the session's
# next sandbox runs as another uid than the one that took the snapshots.
OTHER=$(new_session '{"repo":"hello"}')
api POST "/v1/sessions/$OTHER/messages" '{"content":"sleep 8"}'
wait_event "$OTHER" prompt.started 1 30 >/dev/null || fail "the other session's prompt started"
sx "$SID" 'id -u'
U2=$(jget .stdout)
echo "# snapshots taken as uid $U1, the sandbox at the rollback runs as $U2"
check "the sandbox at the rollback has another uid than the snapshot's" [ -n "$U2" -a "$U2" != "$U1" ]

# 1. rollback while the session's sandbox runs: the tree goes back to that sandbox's uid
api POST "/v1/sessions/$SID/rollback" '{"snapshot_id":"snap-000001"}'
check "running: rollback" [ "$STATUS" = 200 ]
check_tree running one

# 2. rollback while no sandbox runs: the next sandbox gets the tree at its start
wait_event "$SID" sandbox.stopped 2 30 >/dev/null || fail "the idle sandbox stopped again"
api POST "/v1/sessions/$SID/rollback" '{"snapshot_id":"snap-000002"}'
check "stopped: rollback" [ "$STATUS" = 200 ]
check_tree stopped two
finish
