#!/usr/bin/env bash
# agent.file_changed carries the file's uncommitted change as `diff` (unified text, computed in
# the sessiond-git helper off the output thread): the right hunks, in event order before
# prompt.completed and the prompt-end commit; a forged `diff` in the agent's line dropped; a
# 1 MB file capped at 64 KiB with diff_truncated; past 50 files per prompt diff_omitted; a
# session without a repository gets no diff field; the added latency of 20 diffs (a bound).
. "$(dirname "$0")/lib.sh"

G="git -c user.name=Seed -c user.email=seed@example.com -c init.defaultBranch=main"
mkdir -p "$TMP/o"
( cd "$TMP/o" && $G init -q --bare r.git && $G init -q seed && cd seed &&
  seq 1 10 > a.txt && $G add -A && $G commit -qm init &&
  $G push -q ../r.git main ) || { fail "seed repository"; finish; }

# The git helper behind a wrapper: it logs each diff request's deadline, makes the diff of
# slow.txt take 2 s and the one of broken.txt fail, and passes everything else through.
REAL_GIT=$(dirname "$SESSIOND_BIN")/sessiond-git
cat > "$TMP/git-wrap" <<WRAP
#!/bin/bash
req=\$(/bin/cat)
case "\$req" in *'"op":"diff"'*) printf '%s\n' "\$req" | /bin/grep -o '"deadline_s":[0-9]*' >> "$TMP/deadlines" ;; esac
case "\$req" in *'"op":"diff"'*'"path":"slow.txt"'*) /bin/sleep 2 ;; esac
case "\$req" in *'"op":"diff"'*'"path":"broken.txt"'*) exit 1 ;; esac
printf '%s' "\$req" | exec "$REAL_GIT"
WRAP
chmod 755 "$TMP/git-wrap"
export SESSIOND_GIT_BIN="$TMP/git-wrap"
start_server --repos-tick-ms 200
api POST /v1/repos "{\"name\":\"r\",\"url\":\"$TMP/o/r.git\",\"pool_size\":0,\"image_interval_min\":0}"
expect_status 201 "repository added"

# prompt SID SCRIPT - queue SCRIPT (run by the default shell agent) as a prompt.
prompt() {
  api POST "/v1/sessions/$1/messages" "$(jq -nc --arg c "$2" '{content:$c}')"
  [ "$STATUS" = 202 ] || fail "prompt queued" "status $STATUS: ${BODY:0:300}"
}
# events SID - every event of the session into EVS.
events() {
  api GET "/v1/sessions/$1/events?limit=1000"
  EVS=$BODY
}
fc() { jget "[.events[] | select(.type==\"agent.file_changed\")]$1" "$EVS"; }

SID=$(new_session '{"title":"d","repo":"r"}')
wait_event "$SID" sandbox.ready 1 >/dev/null || fail "sandbox ready" "no sandbox.ready"

# two files: one created, one edited; the agent forges a diff on the second
prompt "$SID" 'printf "one\ntwo\n" > f1.txt
sed -i "s/^3\$/three/" a.txt
echo "{\"type\":\"file_changed\",\"path\":\"f1.txt\",\"action\":\"created\"}"
echo "{\"type\":\"file_changed\",\"path\":\"a.txt\",\"action\":\"modified\",\"diff\":\"forged\",\"diff_omitted\":true}"
echo "{\"type\":\"output\",\"text\":\"after the files\"}"'
wait_event "$SID" git.commit 1 >/dev/null || fail "commit" "no git.commit"
events "$SID"
check "two file_changed events" [ "$(fc ' | length')" = 2 ]
D1=$(fc '[0].data.diff')
D2=$(fc '[1].data.diff')
check "f1.txt: its unified hunk" [ "$(printf '%s\n' "$D1" | grep -c '^diff --git a/f1.txt b/f1.txt$')" = 1 -a \
  "$(printf '%s\n' "$D1" | grep -c '^@@ -0,0 +1,2 @@')" = 1 -a "$(printf '%s\n' "$D1" | grep -c '^+one$\|^+two$')" = 2 ]
check "a.txt: -3 +three, the forged text dropped" [ "$(printf '%s\n' "$D2" | grep -c '^-3$\|^+three$')" = 2 -a \
  "$(fc '[1].data.diff_omitted')" = null ] 
check "no diff_truncated on small files" [ "$(fc '[0].data.diff_truncated')" = null -a "$(fc '[1].data.diff_truncated')" = null ]
check "source and prompt_id kept" [ "$(fc '[0].data.prompt_id')" != null -a "$(fc '[0].data.action')" = created ]
S_FC=$(fc '[1].seq')
S_OUT=$(jget '[.events[] | select(.type=="agent.output" and (.data.text | test("after the files")))][0].seq' "$EVS")
S_DONE=$(jget '[.events[] | select(.type=="prompt.completed")][0].seq' "$EVS")
S_COMMIT=$(jget '[.events[] | select(.type=="git.commit")][0].seq' "$EVS")
check "order kept: file_changed < later output < prompt.completed < git.commit" \
  [ "$S_FC" -lt "$S_OUT" -a "$S_OUT" -lt "$S_DONE" -a "$S_DONE" -lt "$S_COMMIT" ]
check "the commit took both files" [ "$(jget '[.events[] | select(.type=="git.commit")][0].data.files' "$EVS")" = 2 ]

# a 1 MB file: the diff is capped at 64 KiB with diff_truncated
prompt "$SID" 'yes abcdefghi | head -c 1000000 > big.txt
echo "{\"type\":\"file_changed\",\"path\":\"big.txt\",\"action\":\"created\"}"'
wait_event "$SID" git.commit 2 >/dev/null || fail "commit 2" "no second git.commit"
events "$SID"
BIG=$(fc '[] | select(.data.path=="big.txt") | .data')
LEN=$(jget '.diff | length' "$BIG")
check "1 MB file: diff capped at 64 KiB, diff_truncated" [ "$(jget .diff_truncated "$BIG")" = true -a "$LEN" -gt 1000 -a "$LEN" -le 65536 ]
check "1 MB file: the hunk begins" grep -q '^+abcdefghi$' <<<"$(jget .diff "$BIG")"

# more than 50 files in one prompt: the first 50 get a diff, the rest diff_omitted
prompt "$SID" 'for i in $(seq 1 55); do echo "line $i" > m$i.txt; echo "{\"type\":\"file_changed\",\"path\":\"m$i.txt\",\"action\":\"created\"}"; done'
wait_event "$SID" git.commit 3 >/dev/null || fail "commit 3" "no third git.commit"
events "$SID"
check "55 files: 50 diffs" [ "$(fc '[] | select(.data.path | test("^m[0-9]+.txt$")) | select(.data.diff != null)' | jq -s length)" = 50 ]
check "55 files: 5 diff_omitted, no diff" [ "$(fc '[] | select(.data.path | test("^m[0-9]+.txt$")) | select(.data.diff_omitted == true and .data.diff == null)' | jq -s length)" = 5 ]
check "55 files: the omitted ones are the last" [ "$(fc '[] | select(.data.diff_omitted == true) | .data.path' | tr '\n' ' ')" = "m51.txt m52.txt m53.txt m54.txt m55.txt " ]
check "the 50th diff is right" grep -q '^+line 50$' <<<"$(fc '[] | select(.data.path=="m50.txt") | .data.diff')"

# a path that leaves the workspace: no diff, an error field, the prompt completes
prompt "$SID" 'rm f1.txt
echo "{\"type\":\"file_changed\",\"path\":\"f1.txt\",\"action\":\"deleted\"}"
echo "{\"type\":\"file_changed\",\"path\":\"../../etc/passwd\",\"action\":\"modified\"}"'
wait_event "$SID" prompt.completed 4 >/dev/null || fail "prompt 4" "not completed"
events "$SID"
check "a path leaving the workspace: diff_error, no diff" \
  [ "$(fc '[] | select(.data.path=="../../etc/passwd") | .data.diff_error')" = "not a workspace path" -a \
    "$(fc '[] | select(.data.path=="../../etc/passwd") | .data.diff')" = null ]

DEL=$(fc '[] | select(.data.path=="f1.txt" and .data.action=="deleted") | .data.diff')
check "a deleted file: its removal hunk" [ "$(printf '%s\n' "$DEL" | grep -c '^deleted file mode\|^-one$\|^-two$')" = 3 ]

# a session without a repository: no diff field, nothing breaks
NID=$(new_session '{"title":"plain"}')
prompt "$NID" 'echo hi > x.txt
echo "{\"type\":\"file_changed\",\"path\":\"x.txt\",\"action\":\"created\",\"diff\":\"forged\"}"
echo "{\"type\":\"file_changed\",\"path\":\"x.txt\",\"action\":\"modified\"}"'
wait_event "$NID" prompt.completed 1 >/dev/null || fail "no-repo prompt" "not completed"
events "$NID"
check "no repository: two events, no diff fields" [ "$(fc ' | length')" = 2 -a \
  "$(fc '[] | .data | keys | map(select(startswith("diff"))) | length' | sort -u)" = 0 ]

# a slow diff holds back only its own session's events, in order; another session goes on
SLOW_T0=$(date +%s%N)
prompt "$SID" 'echo s > slow.txt; echo f > fast.txt; echo b > broken.txt
echo "{\"type\":\"file_changed\",\"path\":\"slow.txt\",\"action\":\"created\"}"
echo "{\"type\":\"output\",\"text\":\"between\"}"
echo "{\"type\":\"file_changed\",\"path\":\"fast.txt\",\"action\":\"created\"}"
echo "{\"type\":\"file_changed\",\"path\":\"broken.txt\",\"action\":\"created\"}"'
OID=$(new_session '{"title":"other"}')
prompt "$OID" 'echo other'
wait_event "$OID" prompt.completed 1 >/dev/null || fail "other session" "not completed"
OTHER_MS=$((($(date +%s%N) - SLOW_T0) / 1000000))
wait_event "$SID" prompt.completed 5 >/dev/null || fail "slow prompt" "not completed"
SLOW_MS=$((($(date +%s%N) - SLOW_T0) / 1000000))
echo "# slow diff: its session's prompt ended after ${SLOW_MS} ms, another session's after ${OTHER_MS} ms"
check "a 2 s diff: its prompt waits for it, another session does not" [ "$SLOW_MS" -ge 2000 -a "$OTHER_MS" -lt 1800 ]
events "$SID"
SEL='[.events[] | select((.type=="agent.file_changed" and (.data.path=="slow.txt" or .data.path=="fast.txt" or .data.path=="broken.txt")) or (.type=="agent.output" and (.data.text|test("between"))))]'
SEQS=$(jget "$SEL | map(.seq) | join(\" \")" "$EVS")
ORDER=$(jget "$SEL | map(.data.path // \"out\") | join(\" \")" "$EVS")
S_END=$(jget '[.events[] | select(.type=="prompt.completed")][4].seq' "$EVS")
check "behind a slow diff the events keep their order, before prompt.completed" \
  [ "$ORDER" = "slow.txt out fast.txt broken.txt" -a "${SEQS##* }" -lt "$S_END" ]
check "the slow diff is there" grep -q '^+s$' <<<"$(fc '[] | select(.data.path=="slow.txt") | .data.diff')"
check "a failed diff: diff_error, no diff" [ -n "$(fc '[] | select(.data.path=="broken.txt") | .data.diff_error | strings')" -a \
  "$(fc '[] | select(.data.path=="broken.txt") | .data.diff')" = null ]
check "every diff request carries a deadline of at most 5 s" \
  [ "$(sort -u "$TMP/deadlines" | tr '\n' ' ')" = '"deadline_s":5 ' ]

# latency: a prompt writing 20 files reported with file_changed, against the same prompt
# without the lines (no diff); the same commit at the end of both
W20='for i in $(seq 1 20); do seq 1 $((i * 10)) > w$RUN-$i.txt; done'
L20='for i in $(seq 1 20); do echo "{\"type\":\"file_changed\",\"path\":\"w$RUN-$i.txt\",\"action\":\"created\"}"; done'
timed() { # timed N SCRIPT: ms from POST to prompt N completed, into MS
  local t0
  t0=$(date +%s%N)
  prompt "$SID" "$2"
  wait_event "$SID" prompt.completed "$1" 60 >/dev/null || fail "timed prompt $1" "not completed"
  MS=$((($(date +%s%N) - t0) / 1000000))
}
timed 6 "RUN=a; $W20"
BASE_MS=$MS
timed 7 "RUN=b; $W20; $L20"
DIFF_MS=$MS
events "$SID"
check "20 files: 20 diffs" [ "$(fc '[] | select(.data.path | test("^wb-")) | select(.data.diff | test("^diff --git"))' | jq -s length)" = 20 ]
ADDED=$((DIFF_MS - BASE_MS))
echo "# bench: prompt writing 20 files: ${BASE_MS} ms without diffs, ${DIFF_MS} ms with 20 file_changed diffs (added ${ADDED} ms)"
# A figure, not an assertion: times belong in bench/ (they vary 3x with the machine's load).

finish
