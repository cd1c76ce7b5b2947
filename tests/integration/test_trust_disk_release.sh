#!/usr/bin/env bash
# test_trust_disk_release.sh - a running sandbox does not keep other workspaces' disks: a purged
# session's disk (sandbox/wsdisk.h) gives its loop device and its space back at once, also while
# a sandbox that started when that disk was mounted goes on running (each sandbox's staging
# mount namespace is a private copy of the server's, made at its start: an unmount does not reach
# it, the removal of the mount point does, wsdisk.c rm_mount_point). Fails if the mount point is
# left in place:
#   - session B writes 50 MiB into its workspace disk; then session A's sandbox starts (its
#     namespaces are copied while B's disk is mounted) and stays up
#   - B is purged: within a few seconds no mount namespace on the host holds B's disk, its loop
#     device is detached and the image is gone (so its blocks are free)
#   - A's sandbox is the same one all along and works on
. "$(dirname "$0")/lib.sh"

if [ "$(id -u)" != 0 ] || [ ! -e /dev/loop-control ]; then
  echo "ok - $TEST_NAME: skipped (needs root and loop devices for the disk quota)"
  finish
fi

run() { # run SID SCRIPT -> OUT is its stdout
  api POST "/v1/sessions/$1/exec" "$(jq -c -n --arg s "$2" '{script:$s, timeout_s:60}')"
  OUT=$(jget .stdout)
}
# pids (other than in our own mount namespace) whose mount namespace has $1 mounted
holders() {
  local me p
  me=$(readlink /proc/self/ns/mnt)
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$me" ] && continue
    grep -qs " $1 " "$p/mountinfo" && echo "${p#/proc/}"
  done
}
# 0 if /dev/loop$1 is no longer attached to B's image
detached() { ! grep -qs "$DATA_DIR/workspaces/$B.disk" "/sys/block/loop$1/loop/backing_file"; }

export SESSIOND_SANDBOX_DISK_MIB=128
start_server --sandbox local
api GET /healthz
check "healthz says the disk quota is enforced" [ "$(jget .disk_quota.enforced)" = true ]

B=$(new_session '{"title":"purged"}')
run "$B" 'dd if=/dev/urandom of=/workspace/fill bs=1M count=50 2>/dev/null; sync; du -m /workspace/fill'
check "B wrote 50 MiB into its disk" grep -q "^50" <<<"$OUT"
B_WS="$DATA_DIR/workspaces/$B"
MINOR=$(awk -v m="$B_WS" '$5 == m {split($3, d, ":"); print d[2]}' /proc/self/mountinfo)
check "B's workspace is a loop mount" [ -n "$MINOR" ]
MINOR=${MINOR:-none}

A=$(new_session '{"title":"long-running"}')
run "$A" 'echo up > /workspace/a; cat /workspace/a'
check "A's sandbox runs" [ "$OUT" = up ]
check "A's sandbox started while B's disk was mounted: its namespaces hold a copy" \
  [ -n "$(holders "$B_WS")" ]

check "B's image holds the 50 MiB" [ "$(du -m "$B_WS.disk" | cut -f1)" -ge 50 ]
T0=$(date +%s%N)
api DELETE "/v1/sessions/$B?purge=true"
for i in $(seq 1 50); do
  detached "$MINOR" && [ ! -e "$B_WS.disk" ] && [ -z "$(holders "$B_WS")" ] && break
  sleep 0.1
done
echo "# B's disk let go $((($(date +%s%N) - T0) / 1000000)) ms after the purge request" >&2
LEFT=$(holders "$B_WS")
check "no mount namespace holds B's disk any more${LEFT:+ (held by: $(for p in $LEFT; do tr '\0' ' ' <"/proc/$p/cmdline"; echo -n "[$p] "; done))}" \
  [ -z "$LEFT" ]
check "B's loop device is detached" detached "$MINOR"
check "B's image is deleted" [ ! -e "$B_WS.disk" ]
# deleted and attached nowhere: nothing holds the image's blocks any more (a df of the data
# dir's file system is no proof on a shared host: others write and delete meanwhile)

run "$A" 'cat /workspace/a'
check "A still works" [ "$OUT" = up ]
api GET "/v1/sessions/$A/events?limit=1000"
check "with the sandbox it had all along (started once, never stopped)" \
  [ "$(jget '[.events[] | select(.type=="sandbox.ready" or .type=="sandbox.stopped")] | length')" = 1 ]

finish
