#!/usr/bin/env bash
# test_trust_disk.sh - a sandbox cannot fill the host's disk: its workspace is a file system of
# its own of sandbox_disk_mib (sandbox/wsdisk.h), here 64 MiB:
#   - /healthz says the quota is enforced
#   - fallocate -l 200M three times and a dd of 200 MiB into /workspace fail inside with
#     "No space left on device"; the host's free space does not drop by their size and the
#     workspace's image holds at most the quota
#   - another session's sandbox writes fine while the first one's disk is full
#   - the full session keeps working: delete the files, write again
#   - the workspace root belongs to the sandbox's uid and shows no lost+found
#   - files and quota survive a killed server and a clean restart (the mount stays and is
#     adopted), and a lost mount (a reboot: unmounted here by hand) is mounted again at start
. "$(dirname "$0")/lib.sh"

if [ "$(id -u)" != 0 ] || [ ! -e /dev/loop-control ]; then
  # the quota cannot be enforced here: the server must say so, and everything else works
  export SESSIOND_SANDBOX_DISK_MIB=64
  start_server --sandbox local
  api GET /healthz
  check "healthz says the disk quota is not enforced" [ "$(jget .disk_quota.enforced)" = false ]
  check "and why" [ -n "$(jget .disk_quota.reason)" ]
  check "the start-up log says so" grep -q "disk quota NOT enforced" "$SERVER_LOG"
  finish
fi

run() { # run SID SCRIPT -> BODY is the exec result, OUT its stdout, ERR its stderr
  api POST "/v1/sessions/$1/exec" "$(jq -c -n --arg s "$2" '{script:$s, timeout_s:60}')"
  OUT=$(jget .stdout)
  ERR=$(jget .stderr)
}
avail_mib() { df -Pk "$DATA_DIR" | awk 'NR==2 {print int($4 / 1024)}'; }

# by environment (SESSIOND_SANDBOX_DISK_MIB, as a flag would): a server without the quota
# ignores it and the writes below reach the host
export SESSIOND_SANDBOX_DISK_MIB=64
start_server --sandbox local --shutdown-grace 1

api GET /healthz
check "healthz says the disk quota is enforced" [ "$(jget .disk_quota.enforced)" = true ]
check "healthz gives its size" [ "$(jget .disk_quota.mib)" = 64 ]

A=$(new_session '{"title":"filler"}')
B=$(new_session '{"title":"neighbour"}')
run "$A" 'echo keep > /workspace/marker; ls -A /workspace; stat -c %u /workspace; id -u'
check "the workspace shows no lost+found" [ "$(grep -c lost+found <<<"$OUT")" = 0 ]
check "the workspace root belongs to the sandbox's uid" \
  [ "$(sed -n 2p <<<"$OUT")" = "$(sed -n 3p <<<"$OUT")" ]

BEFORE=$(avail_mib)
run "$A" 'for i in 1 2 3; do fallocate -l 200M /workspace/x$i; echo "fallocate $i: $?"; done
dd if=/dev/zero of=/workspace/y bs=1M count=200 2>&1 | grep -v records; echo "dd: ${PIPESTATUS[0]}"'
ALL="$OUT$ERR"
check "fallocate past the quota fails" grep -q "fallocate 1: 1" <<<"$ALL"
check "the error inside is No space left on device" grep -q "No space left on device" <<<"$ALL"
check "dd past the quota fails" grep -q "dd: 1" <<<"$ALL"
AFTER=$(avail_mib)
# 3 x 200 MiB + 200 MiB would go to the host without the quota; other processes on the host
# may write meanwhile, so the bound is loose
check "the host's free space did not drop by the writes ($BEFORE -> $AFTER MiB)" \
  [ $((BEFORE - AFTER)) -lt 300 ]
IMG_KIB=$(du -k "$DATA_DIR/workspaces/$A.disk" | cut -f1)
check "the workspace image holds at most the quota ($IMG_KIB KiB)" [ "$IMG_KIB" -le $((66 * 1024)) ]

run "$B" 'dd if=/dev/zero of=/workspace/b bs=1M count=8 2>/dev/null; echo rc=$?; du -k /workspace/b'
check "another sandbox writes fine while A's disk is full" grep -q "rc=0" <<<"$OUT"

run "$A" 'rm -f /workspace/x* /workspace/y; dd if=/dev/zero of=/workspace/z bs=1M count=16 2>/dev/null; echo rc=$?; cat /workspace/marker'
check "the full session writes again after deleting" grep -q "rc=0" <<<"$OUT"
check "and its files are there" grep -q keep <<<"$OUT"

# ---- a killed server, a clean stop: the mount stays and is adopted; a reboot: mounted again ----
stop_server KILL
start_server
run "$A" 'cat /workspace/marker; fallocate -l 200M /workspace/big; echo "rc=$?"'
check "after a killed server the files are there" grep -q keep <<<"$OUT"
check "and the quota holds" grep -q "rc=1" <<<"$OUT"
stop_server TERM
check "a clean stop leaves the session's workspace mounted" \
  [ "$(grep -c " $DATA_DIR/workspaces/$A " /proc/self/mountinfo)" = 1 ]
start_server
run "$A" 'cat /workspace/marker; rm -f /workspace/big; fallocate -l 200M /workspace/big; echo "rc=$?"'
check "after a clean restart the files are there" grep -q keep <<<"$OUT"
check "and the quota holds" grep -q "rc=1" <<<"$OUT"
stop_server TERM
umount "$DATA_DIR/workspaces/$A" "$DATA_DIR/workspaces/$B" # what a reboot does
start_server
run "$A" 'cat /workspace/marker; rm -f /workspace/big; fallocate -l 200M /workspace/big; echo "rc=$?"'
check "after a reboot the workspace is mounted again with its files" grep -q keep <<<"$OUT"
check "and the quota holds" grep -q "rc=1" <<<"$OUT"

# ---- purge: the disk goes with the session ----
api DELETE "/v1/sessions/$A?purge=true"
for i in $(seq 1 100); do
  [ ! -e "$DATA_DIR/workspaces/$A.disk" ] && break
  sleep 0.1
done
check "a purged session's disk image is deleted" [ ! -e "$DATA_DIR/workspaces/$A.disk" ]
check "and its mount is gone" [ "$(grep -c " $DATA_DIR/workspaces/$A " /proc/self/mountinfo)" = 0 ]

finish
