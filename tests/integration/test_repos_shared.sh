#!/usr/bin/env bash
# The shared object store of issue 5 (docs/repos.md "Shared object store") in the local
# (bubblewrap) sandbox: an image build fetches into repos/<name>/objects.git and checks out a
# workspace that borrows the objects through .git/objects/info/alternates; a session started
# from the image has that file and no copy of the packs; inside the sandbox the store is
# visible at the same absolute path, git works through it (status, log, commit), and the
# agent cannot write into the store (read-only bind). A commit + push of the session branch to
# an empty bare remote delivers a complete history.
export SESSIOND_SANDBOX=${SESSIOND_SANDBOX:-local}
. "$(dirname "$0")/lib.sh"

G="git -c user.name=Seed -c user.email=seed@example.com -c init.defaultBranch=main"
mkdir -p "$TMP/octo"
( cd "$TMP/octo" && $G init -q --bare hello.git && $G init -q seed && cd seed &&
  echo hello > README && mkdir lib && for i in 1 2 3; do echo $i > lib/f$i; done &&
  $G add -A && $G commit -qm init && echo two > lib/f2 && $G commit -qam two &&
  $G push -q ../hello.git main ) || { fail "seed repository"; finish; }
REMOTE="$TMP/octo/hello.git"

sx() { # SID SCRIPT -> BODY = exec result
  api POST "/v1/sessions/$1/exec" "$(jq -c -n --arg s "$2" '{script:$s}')"
}

start_server --repos-tick-ms 200 --shutdown-grace 1
api GET /healthz
check "server up with the $SESSIOND_SANDBOX backend" [ "$STATUS" = 200 ]
# the setup step runs git in the build sandbox: it must read the objects through the store
api POST /v1/repos "{\"name\":\"hello\",\"url\":\"$REMOTE\",\"pool_size\":0,\"image_interval_min\":0,\"setup\":[\"git log --oneline | wc -l > commits.txt\"]}"
expect_status 201 "repository added"
api POST /v1/repos/hello/images
wait_image hello
check "image built (git in the setup sandbox reads the shared store)" [ "$state" = ready ]
[ "$state" = ready ] || echo "# $(jget '.images[0].error') $(jget '.images[0].log_tail')"
STORE="$(realpath "$DATA_DIR")/repos/hello/objects.git/objects"
check "the shared store holds the objects" git --git-dir="$STORE/.." cat-file -e "$(git -C "$TMP/octo/seed" rev-parse HEAD)"
STORE_SUM=$(cd "$STORE" && find . -type f | sort | xargs sha256sum | sha256sum)

SID=$(new_session '{"repo":"hello"}')
READY=$(wait_event "$SID" sandbox.ready 1 20)
check "session started from the image" [ "$(jget .data.source "$READY")" = image ]
wait_event "$SID" git.synced 1 20 >/dev/null || fail "git.synced"
WS="$DATA_DIR/workspaces/$SID"
check "workspace has an alternates file naming the store" [ "$(cat "$WS/.git/objects/info/alternates")" = "$STORE" ]
check "workspace has no copy of the pack" [ "$(find "$WS/.git/objects" -name '*.pack' | wc -l)" = 0 ]

sx "$SID" 'cat commits.txt; git status --porcelain | grep -v commits.txt | wc -l; git log --oneline | wc -l; test -d "$(cat .git/objects/info/alternates)/pack" && echo visible'
check "inside the sandbox: git status and log work, the store is at its host path" \
  jq -e '.exit_code==0 and .stdout=="2\n0\n2\nvisible\n"' <<<"$BODY"
[ "$(jget .exit_code)" = 0 ] || echo "# $BODY"

sx "$SID" 'A=$(cat .git/objects/info/alternates); n=0
touch "$A/evil" 2>/dev/null && n=$((n+1))
mkdir "$A/ab" 2>/dev/null && n=$((n+1))
for f in $(find "$A" -type f); do (echo x >> "$f") 2>/dev/null && n=$((n+1)); rm "$f" 2>/dev/null && n=$((n+1)); done
[ -n "$(find "$A" -type f)" ] || n=$((n+100))
chmod u+w "$A/pack" 2>/dev/null && n=$((n+1))
echo "writes=$n"'
check "the agent cannot write into the shared store (read-only bind)" jq -e '.stdout=="writes=0\n"' <<<"$BODY"
[ "$(jget .stdout)" = "writes=0" ] || echo "# $BODY"
sx "$SID" 'A=$(cat .git/objects/info/alternates); awk -v a="$A" '"'"'$5==a {split($6,o,","); print o[1]}'"'"' /proc/self/mountinfo'
check "the store is a read-only mount inside the sandbox" jq -e '.stdout=="ro\n"' <<<"$BODY"
[ "$(jget .stdout)" = ro ] || echo "# $BODY"
check "the store is unchanged on the host" [ "$(cd "$STORE" && find . -type f | sort | xargs sha256sum | sha256sum)" = "$STORE_SUM" ]

# the agent's own git commits land in the workspace's objects
sx "$SID" 'echo mine > mine.txt && git add mine.txt && git -c user.name=Agent -c user.email=a@example.com commit -qm "agent commit" && git log --oneline | wc -l && git fsck >/dev/null 2>&1 && echo fsck-ok'
check "git commit inside the sandbox works" jq -e '.stdout=="3\nfsck-ok\n"' <<<"$BODY"
[ "$(jget .stdout)" = "$(printf '3\nfsck-ok')" ] || echo "# $BODY"

# push the session branch (host side, libgit2) to an empty bare remote
git init -q --bare "$TMP/empty.git"
api PATCH /v1/repos/hello "{\"url\":\"$TMP/empty.git\"}"
expect_status 200 "repository URL moved to an empty remote"
api POST "/v1/sessions/$SID/messages" '{"content":"echo hi > hi.txt"}'
wait_event "$SID" session.snapshot 1 30 >/dev/null || fail "turn snapshot"
api POST "/v1/sessions/$SID/push"
expect_status 200 "push to the empty remote"
git clone -q -b "sessiond/$SID" "$TMP/empty.git" "$TMP/check" 2>/dev/null
check "the pushed history is complete (git fsck of a clone)" \
  sh -c "git -C '$TMP/check' fsck --full >/dev/null 2>&1 && git --git-dir='$TMP/empty.git' fsck --full >/dev/null 2>&1"
check "the clone has every commit and file" \
  [ "$(git -C "$TMP/check" rev-list --count HEAD 2>/dev/null)" -ge 4 -a -f "$TMP/check/lib/f3" -a -f "$TMP/check/mine.txt" ]
finish
