#!/usr/bin/env bash
# test_trust_tree.sh - a sandbox builds trees meant to crash or hang the host code that walks
# its workspace (the end-of-prompt snapshot, restores, removal): 2,600 nested directories
# (the recursive snapshot walk overflowed the stack: SIGSEGV at the end of the prompt, and
# again at the next one after a restart), then a symlink loop, a FIFO nobody writes to, a
# socket, a 20,000-entry directory (100,000 took 7 s to snapshot on a loaded 2-core machine),
# 255-byte names nested past PATH_MAX, a 4 GiB sparse file (the RLIMIT_FSIZE of a command;
# tests/unit/test_snap.c covers 10 GiB) and a directory nobody may read. After each, the
# server is alive, the snapshot says what it left out (docs/repos.md, Snapshots, Limits), the
# next prompt works, and so does one after a restart; a purge removes the whole tree.
. "$(dirname "$0")/lib.sh"

# wait_ev SID TYPE N SECONDS - like wait_event, with a deadline in wall-clock seconds (a loaded
# machine makes each poll slow); prints the Nth event of TYPE or returns 1.
wait_ev() {
  local end=$((SECONDS + $4))
  while [ $SECONDS -lt $end ]; do
    api GET "/v1/sessions/$1/events?limit=1000"
    if [ "$(jget "[.events[] | select(.type==\"$2\")] | length")" -ge "$3" ]; then
      jget "[.events[] | select(.type==\"$2\")][$(($3 - 1))]"
      return 0
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || return 1
    sleep 0.3
  done
  return 1
}
prompt_ok() { # prompt_ok SID N SCRIPT NAME - run prompt number N, wait for its end
  api POST "/v1/sessions/$1/messages" "$(jq -c -n --arg c "$3" '{content:$c}')"
  expect_status 202 "$4: queued"
  local ev
  ev=$(wait_ev "$1" prompt.completed "$2" 120) || ev=""
  check "$4: completed" [ -n "$ev" ]
}
healthy() {
  api GET /healthz "" -
  check "$1: server alive (healthz)" [ "$STATUS" = 200 ]
  check "$1: server process alive" kill -0 "$SERVER_PID"
}

start_server --sandbox local --prompt-timeout 120 --shutdown-grace 2
SID=$(new_session '{"title":"deep tree"}')

# ---- 2,600 nested directories, then the end-of-prompt snapshot ----
prompt_ok "$SID" 1 'perl -e '\''for (1..2600) { mkdir "d" or die "mkdir: $!"; chdir "d" or die } open(F, ">leaf") or die; print F "bottom\n"'\''; echo built' "deep tree"
S=$(wait_ev "$SID" session.snapshot 1 120) || S=""
healthy "after snapshotting 2,600 levels"
check "the snapshot was made" [ -n "$S" ]
check "it says one entry was too deep (omitted.too_deep = 1)" [ "$(jget .data.omitted.too_deep "$S")" = 1 ]
check "a warning names the session" grep -q "session $SID left out 1 too deep" "$SERVER_LOG"

prompt_ok "$SID" 2 'cd d && pwd >/dev/null && echo next-prompt-ok' "the next prompt"
S=$(wait_ev "$SID" session.snapshot 2 120) || S=""
check "its snapshot too" [ -n "$S" ]
healthy "after the second prompt"

# ---- every other hostile kind at once ----
HOSTILE='set -e
ln -s loop loop; ln -s . self; ln -s / root-link
mkfifo fifo
perl -MIO::Socket::UNIX -e '\''IO::Socket::UNIX->new(Type => SOCK_STREAM(), Local => "sock", Listen => 1) or die "socket: $!"'\''
mkdir wide && perl -e '\''chdir "wide" or die; for (1..20000) { open(F, ">f$_") or die; close F }'\''
perl -e '\''my $n = "n" x 255; mkdir "long" or die; chdir "long" or die; for (1..20) { mkdir $n or die "$!"; chdir $n or die }'\''
truncate -s 4G sparse
mkdir closed && echo hidden > closed/inner && chmod 000 closed
echo one > hard1 && ln hard1 hard2
echo built-hostile'
prompt_ok "$SID" 3 "$HOSTILE" "hostile kinds"
api GET "/v1/sessions/$SID/events?limit=1000"
check "the hostile script ran to its end" grep -q built-hostile <<<"$BODY"
S=$(wait_ev "$SID" session.snapshot 3 180) || S=""
healthy "after snapshotting the hostile kinds"
check "the snapshot was made" [ -n "$S" ]
check "FIFO and socket left out, never opened (omitted.special = 2)" [ "$(jget .data.omitted.special "$S")" = 2 ]
check "the 4 GiB sparse file (the largest a command may make) left out (omitted.too_big = 1)" [ "$(jget .data.omitted.too_big "$S")" = 1 ]
check "the path past 4095 bytes left out (omitted.too_long = 1)" [ "$(jget .data.omitted.too_long "$S")" = 1 ]
check "the 20,000 files are in it" [ "$(jget .data.files "$S")" -gt 20000 ]
KIB=$(du -sk "$DATA_DIR/snapshots/$SID" | cut -f1)
check "the sparse file was not copied into the store ($KIB KiB)" [ "$KIB" -lt $((200 * 1024)) ]

api POST "/v1/sessions/$SID/snapshots" '{}'
check "a manual snapshot of the same tree works ($STATUS)" [ "$STATUS" = 200 -o "$STATUS" = 201 ]
healthy "after the manual snapshot"

prompt_ok "$SID" 4 'cat hard2 && ls wide | wc -l' "a prompt after the hostile snapshot"
healthy "after the fourth prompt"

# ---- a restart, then another prompt (the old server crashed again here) ----
restart_server
healthy "after the restart"
prompt_ok "$SID" 5 'cd d/d/d && echo after-restart-ok' "a prompt after the restart"
S=$(wait_ev "$SID" session.snapshot 5 180) || S=""
check "its snapshot was made" [ -n "$S" ]
healthy "after the prompt that followed the restart"

# ---- purging the session removes the whole workspace, however deep ----
api DELETE "/v1/sessions/$SID?purge=true"
check "session purged ($STATUS)" [ "$STATUS" = 200 ]
END=$((SECONDS + 60))
while [ $SECONDS -lt $END ] && { [ -e "$DATA_DIR/workspaces/$SID" ] ||
  ls -d "$DATA_DIR"/*/.snap-spare/t-* >/dev/null 2>&1; }; do sleep 0.3; done
check "the workspace is gone" [ ! -e "$DATA_DIR/workspaces/$SID" ]
# The discard moves the tree through a trash name before the spares take it: wait for the
# spares' copy too (a snapshot between the two polls above can see neither).
END=$((SECONDS + 60))
while [ $SECONDS -lt $END ] && ls -d "$DATA_DIR"/*/.snap-spare/t-* >/dev/null 2>&1; do sleep 0.3; done
check "and so is its discarded tree (recycled, not left behind)" bash -c "! ls -d '$DATA_DIR'/*/.snap-spare/t-* >/dev/null 2>&1"
healthy "after purging the session"
finish
