#!/usr/bin/env bash
# A session starts at the branch head of the moment it is created: a commit pushed right
# before the session is created is in its workspace, also when the session claims a warm
# workspace that the pool synced a moment earlier (a remote head check tells whether that
# workspace is still at the head). Five rounds: wait until the pool holds a freshly synced
# warm workspace, push a commit to the bare "remote", create a session at once; inside the
# sandbox HEAD is the pushed commit and its file is there.
. "$(dirname "$0")/lib.sh"

G="git -c user.name=Seed -c user.email=seed@example.com -c init.defaultBranch=main"
mkdir -p "$TMP/octo"
( cd "$TMP/octo" && $G init -q --bare hello.git && $G init -q seed && cd seed &&
  echo hello > README && $G add -A && $G commit -qm init && $G push -q ../hello.git main ) ||
  { fail "seed repository"; finish; }

start_server --repos-tick-ms 200 --shutdown-grace 1
api POST /v1/repos "{\"name\":\"hello\",\"url\":\"$TMP/octo/hello.git\",\"pool_size\":1,\"image_interval_min\":0}"
expect_status 201 "repository added"
api POST /v1/repos/hello/images
wait_image hello
check "image built" [ "$state" = ready ]

# warm_ready: poll until the pool holds a warm workspace (made and synced just now).
warm_ready() {
  local i
  for i in $(seq 1 200); do
    api POST /v1/repos/hello/warm '{}'
    [ "$(jget .warm)" -ge 1 ] 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

for round in 1 2 3 4 5; do
  warm_ready || fail "round $round: the pool holds a warm workspace"
  ( cd "$TMP/octo/seed" && echo "$round" > "round$round.txt" && $G add -A &&
    $G commit -qm "round $round" && $G push -q ../hello.git main ) || fail "round $round: push"
  PUSHED=$(git -C "$TMP/octo/seed" rev-parse HEAD)
  SID=$(new_session '{"repo":"hello"}')
  READY=$(wait_event "$SID" sandbox.ready 1 30)
  api POST "/v1/sessions/$SID/exec" "{\"script\":\"git rev-parse HEAD; cat round$round.txt\"}"
  check "round $round: the session started from a warm workspace" \
    [ "$(jget .data.source "$READY")" = warm ]
  check "round $round: the workspace is at the commit pushed before the session was created" \
    [ "$(jget .stdout)" = "$PUSHED"$'\n'"$round" ]
  [ "$(jget .stdout)" = "$PUSHED"$'\n'"$round" ] || echo "# round $round: pushed $PUSHED: $BODY"
done
finish
