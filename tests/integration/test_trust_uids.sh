#!/usr/bin/env bash
# test_trust_uids.sh - each sandbox runs as its own host uid (sandbox_uid_range), so one
# sandbox shares no processes, keyring or files with another even if it reaches them:
#   - sandbox_uid together with sandbox_uid_range is a config error at start
#   - two sessions' sandboxes run as two different uids of the range (id -u, and on the host)
#   - A sees none of B's processes; a process of A's uid cannot signal B's (kill from the
#     host as A's uid: what a process that left A's namespaces could do); A's /proc/keys
#     lists nothing of B's uid
#   - files A writes belong to A's uid on the host
#   - after a restart the sandbox gets another uid, its workspace is given to it, work goes on
#   - a warm-pool repository session works and its end-of-prompt commit writes objects owned
#     by the sandbox's uid
. "$(dirname "$0")/lib.sh"

LO=300000
HI=300009

run() { # run SID SCRIPT -> BODY is the exec result, OUT its stdout
  api POST "/v1/sessions/$1/exec" "$(jq -c -n --arg s "$2" '{script:$s, timeout_s:30}')"
  OUT=$(jget .stdout)
}
in_range() { [ -n "$1" ] && [ "$1" -ge "$LO" ] 2>/dev/null && [ "$1" -le "$HI" ]; }

# ---- both options: refused at start with a clear message ----
"$SESSIOND_BIN" --listen 127.0.0.1:0 --data-dir "$TMP/bad" --sandbox local --sandbox-uid 5000 \
  --sandbox-uid-range "$LO-$HI" >"$TMP/bad.log" 2>&1
BAD_RC=$?
check "sandbox_uid with sandbox_uid_range does not start" [ "$BAD_RC" != 0 ]
check "the error names both options" grep -q "sandbox_uid and sandbox_uid_range are both set" "$TMP/bad.log"

SESSIOND_SANDBOX=local start_server --sandbox local --sandbox-uid-range "$LO-$HI" \
  --repos-tick-ms 200 --shutdown-grace 1

# ---- two sandboxes, two uids ----
A=$(new_session '{"title":"a"}')
B=$(new_session '{"title":"b"}')
run "$A" 'id -u; id -g'
UA=$(sed -n 1p <<<"$OUT")
GA=$(sed -n 2p <<<"$OUT")
run "$B" 'id -u'
UB=$OUT
check "A runs as a uid of the range ($UA)" in_range "$UA"
check "A's gid is its uid" [ "$GA" = "$UA" ]
check "B runs as a uid of the range ($UB)" in_range "$UB"
check "A and B run as different uids" [ "$UA" != "$UB" ]

# ---- processes: B keeps one running, A neither sees nor signals it ----
api POST "/v1/sessions/$B/exec" '{"script":"exec sleep 61","async":true}'
XB=$(jget .exec_id)
for i in $(seq 1 50); do
  PB=$(pgrep -u "$UB" -x sleep | head -1)
  [ -n "$PB" ] && break
  sleep 0.1
done
check "B's process runs as B's uid on the host" [ -n "$PB" ]
run "$A" 'ps -eo uid= 2>/dev/null | sort -u; ls /proc | grep -c "^[0-9]"'
check "A sees no process of B's uid" [ "$(grep -cx " *$UB" <<<"$OUT")" = 0 ]
if [ -n "$PB" ]; then
  setpriv --reuid="$UA" --regid="$UA" --clear-groups kill -0 "$PB" 2>"$TMP/kill.err"
  KRC=$?
  check "a process of A's uid cannot signal B's process" [ "$KRC" != 0 ]
  check "B's process still runs" kill -0 "$PB"
fi
run "$B" 'cat /proc/keys 2>/dev/null'
KB=$(awk '{print $1}' <<<"$OUT" | grep . || true)
run "$A" 'cat /proc/keys 2>/dev/null'
KA=$OUT
SHARED=0
for k in $KB; do grep -q "^$k " <<<"$KA" && SHARED=$((SHARED + 1)); done
check "A's /proc/keys lists none of B's keys" [ "$SHARED" = 0 ]
check "A's /proc/keys names no keyring of B's uid" [ "$(grep -c "_uid[_a-z]*\.$UB:" <<<"$KA")" = 0 ]
api POST "/v1/sessions/$B/exec/$XB/kill" '{"signal":"KILL"}'

# ---- files: A's belong to A's uid ----
run "$A" 'mkdir -p d && echo mine > d/a.txt && echo ok'
check "A writes files" [ "$OUT" = ok ]
check "A's file belongs to A's uid on the host" [ "$(stat -c %u "$DATA_DIR/workspaces/$A/d/a.txt")" = "$UA" ]
check "A's workspace belongs to A's uid" [ "$(stat -c %u:%g "$DATA_DIR/workspaces/$A")" = "$UA:$UA" ]
check "B's workspace belongs to B's uid" [ "$(stat -c %u "$DATA_DIR/workspaces/$B")" = "$UB" ]

# ---- restart: B starts first now, so A gets another uid; its workspace follows ----
stop_server
start_server
run "$B" 'id -u'
UB2=$OUT
run "$A" 'id -u; echo more >> d/a.txt && cat d/a.txt'
UA2=$(sed -n 1p <<<"$OUT")
check "after the restart A runs as another uid of the range ($UA -> $UA2)" in_range "$UA2" && check "A's uid changed" [ "$UA2" != "$UA" ] && check "A and B still differ" [ "$UA2" != "$UB2" ]
check "A keeps working in its old files" [ "$(sed -n 2,3p <<<"$OUT" | tr '\n' ' ')" = "mine more " ]
check "A's old tree was given to its new uid" [ -z "$(find "$DATA_DIR/workspaces/$A" ! -uid "$UA2" | head -1)" ]

# ---- a repository session from the warm pool; its commit's objects are the sandbox's ----
G="git -c user.name=Seed -c user.email=seed@example.com -c init.defaultBranch=main"
mkdir -p "$TMP/octo"
( cd "$TMP/octo" && $G init -q --bare hello.git && $G init -q seed && cd seed &&
  echo hello > README && $G add -A && $G commit -qm init && $G push -q ../hello.git main ) ||
  { fail "seed repository"; finish; }
api POST /v1/repos "{\"name\":\"hello\",\"url\":\"$TMP/octo/hello.git\",\"setup\":[\"echo built > built.txt\"],\"pool_size\":1,\"image_interval_min\":0}"
expect_status 201 "repository added"
api POST /v1/repos/hello/images
wait_image hello
check "image built (its setup ran in a sandbox of the range)" [ "$state" = ready ]
for i in $(seq 1 100); do
  api POST /v1/repos/hello/warm
  [ "$(jget .warm)" = 1 ] && break
  sleep 0.1
done
check "the pool holds a warm workspace" [ "$(jget .warm)" = 1 ]
R=$(new_session '{"title":"repo","repo":"hello"}')
READY=$(wait_event "$R" sandbox.ready 1)
check "the repository session starts from the warm pool" [ "$(jget .data.source "$READY")" = warm ]
run "$R" 'id -u; cat built.txt'
UR=$(sed -n 1p <<<"$OUT")
check "the warm sandbox runs as its own uid ($UR)" in_range "$UR" && check "not A's or B's" [ "$UR" != "$UA2" -a "$UR" != "$UB2" ]
check "the claimed workspace is the sandbox's" [ "$(sed -n 2p <<<"$OUT")" = built -a -z "$(find "$DATA_DIR/workspaces/$R" ! -uid "$UR" ! -links +1 | head -1)" ]
api POST "/v1/sessions/$R/messages" '{"content":"echo from-prompt > p.txt"}'
expect_status 202 "prompt queued"
C1=$(wait_event "$R" git.commit 1 30)
check "the end-of-prompt commit is made" [ -n "$(jget .data.sha "$C1" 2>/dev/null)" ]
SHA=$(jget .data.sha "$C1" 2>/dev/null)
OBJ="$DATA_DIR/workspaces/$R/.git/objects/${SHA:0:2}/${SHA:2}"
check "the commit object belongs to the sandbox's uid" [ -f "$OBJ" ] && check "owner $UR" [ "$(stat -c %u "$OBJ")" = "$UR" ]
check "no file of the workspace belongs to root" [ -z "$(find "$DATA_DIR/workspaces/$R" -uid 0 ! -links +1 | head -1)" ]
run "$R" 'cat p.txt && echo again >> p.txt && echo ok'
check "the session keeps working after the commit" [ "$(tail -1 <<<"$OUT")" = ok ]

finish
