#!/usr/bin/env bash
# GET /v1/sessions/{id}/diff over a hostile workspace. From inside a local (bubblewrap)
# sandbox, with POST /exec, the workspace gets:
#  - a .git/config with diff.external, core.pager, core.fsmonitor, a textconv and an external
#    command for a diff driver, a clean filter and core.attributesFile, and a .gitattributes
#    that assigns that driver and filter to every file;
#  - a symlink to /etc/shadow and one to a world-readable host file the sandbox cannot see;
#  - a FIFO, a 3 MB file, a 4 GiB (sparse) file (its size wraps to 0 in a 32-bit index field),
#    and text files worth more than the 2 MiB cap (named to sort last: the text stops there);
#  - then core.worktree pointing at the server's data directory.
# The diff must answer (quickly), run nothing (each program would leave a marker in the
# workspace, in a host directory, and where the git helper sees the workspace), read no host
# file (links show as their target text), list the workspace's own files, stay under the cap.
. "$(dirname "$0")/lib.sh"

G="git -c user.name=Seed -c user.email=seed@example.com -c init.defaultBranch=main"
mkdir -p "$TMP/o"
( cd "$TMP/o" && $G init -q --bare r.git && $G init -q seed && cd seed &&
  echo original > t.txt && $G add -A && $G commit -qm init && $G push -q ../r.git main ) ||
  { fail "seed repository"; finish; }
# a host file any uid could read if it reached it: only following a link would
chmod 711 "$TMP"
mkdir -m 777 "$TMP/host"
echo host-only-content-7731 > "$TMP/host/hostfile"
chmod 644 "$TMP/host/hostfile"

start_server --sandbox local --repos-tick-ms 200 --shutdown-grace 1
api POST /v1/repos "{\"name\":\"r\",\"url\":\"$TMP/o/r.git\",\"pool_size\":0,\"image_interval_min\":0}"
expect_status 201 "repository added"
DATA_REAL=$(realpath "$DATA_DIR")
SID=$(new_session '{"repo":"r"}')
wait_event "$SID" sandbox.ready 1 30 >/dev/null || fail "sandbox ready"
WS="$DATA_DIR/workspaces/$SID"

# Markers: relative names (git runs programs in the worktree), the host directory, and the
# workspace where the git helper sees it (its private staging point: the only place a
# confined helper can write).
PLANT=$(cat <<EOF
set -e
cat >> .git/config <<CFG
[diff]
	external = sh -c 'touch PWNED-external $TMP/host/PWNED-external /run/sessiond-stage/ws/PWNED-external'
[core]
	pager = sh -c 'touch PWNED-pager $TMP/host/PWNED-pager /run/sessiond-stage/ws/PWNED-pager'
	attributesFile = /workspace/.evilattrs
	fsmonitor = sh -c 'touch PWNED-fsmonitor $TMP/host/PWNED-fsmonitor /run/sessiond-stage/ws/PWNED-fsmonitor'
[diff "evil"]
	textconv = sh -c 'touch PWNED-textconv $TMP/host/PWNED-textconv /run/sessiond-stage/ws/PWNED-textconv; cat /etc/hostname'
	command = sh -c 'touch PWNED-command $TMP/host/PWNED-command /run/sessiond-stage/ws/PWNED-command'
	binary = true
[filter "evil"]
	clean = sh -c 'touch PWNED-clean $TMP/host/PWNED-clean /run/sessiond-stage/ws/PWNED-clean; echo FILTERED'
	smudge = sh -c 'touch PWNED-smudge $TMP/host/PWNED-smudge /run/sessiond-stage/ws/PWNED-smudge'
CFG
printf '* diff=evil filter=evil\n' > .gitattributes
printf '* diff=evil\n' > .evilattrs
echo changed-by-agent > t.txt
ln -s /etc/shadow shadow
ln -s '$TMP/host/hostfile' hostlink
mkfifo pipe
truncate -s 4G huge.txt
head -c 3000000 /dev/zero | tr "\\\\0" a > huge5.txt
for i in 1 2 3; do seq 1 150000 > zbig\$i.txt; done
echo ok
EOF
)
api POST "/v1/sessions/$SID/exec" "$(jq -c -n --arg s "$PLANT" '{script:$s, timeout_s:30}')"
check "the sandbox planted its traps" [ "$(jget .stdout)" = ok ]

T0=$(date +%s%N)
api GET "/v1/sessions/$SID/diff"
MS=$(( ($(date +%s%N) - T0) / 1000000 ))
cp "$TMP/body" "$TMP/diff.json"
check "the diff answers 200 in under 5 s ($MS ms)" [ "$STATUS" = 200 -a "$MS" -lt 5000 ]
check "nothing ran: no marker in the workspace or on the host" \
  bash -c "! ls '$WS'/PWNED-* '$TMP'/host/PWNED-* '$DATA_DIR'/PWNED-* 2>/dev/null | grep -q ."
FILES=$(jget '[.files[].path] | sort | join(",")')
check "the workspace's own files, not core.worktree's ($FILES)" \
  [ "$FILES" = ".evilattrs,.gitattributes,hostlink,huge.txt,huge5.txt,shadow,t.txt,zbig1.txt,zbig2.txt,zbig3.txt" ]
check "t.txt's real change (no textconv, no clean filter, no binary=true)" \
  bash -c "jq -r .diff '$TMP/diff.json' | grep -qx '+changed-by-agent'"
check "the symlinks are diffed as links: their target text" \
  bash -c "jq -r .diff '$TMP/diff.json' | grep -qx '+/etc/shadow' && jq -r .diff '$TMP/diff.json' | grep -qx '+$TMP/host/hostfile'"
check "no host file content in the answer" \
  bash -c "! grep -q -e host-only-content-7731 -e 'root:' '$TMP/diff.json'"
check "the FIFO is not listed (never opened)" bash -c "! jq -r '.files[].path' '$TMP/diff.json' | grep -qx pipe"
check "the 3 MB file is not read: large, binary" [ "$(jget '.files[] | select(.path=="huge5.txt") | "\(.large) \(.binary)"')" = "true true" ]
check "the 4 GiB file (size 0 in the walk) is not read: unreadable, no text" [ "$(jget '.files[] | select(.path=="huge.txt") | "\(.unreadable) \(.additions)"')" = "true null" ]
SIZE=$(stat -c %s "$TMP/diff.json")
check "capped: truncated, answer of $SIZE bytes under 3 MiB" [ "$(jget .truncated)" = true -a "$SIZE" -lt 3145728 ]

api GET "/v1/sessions/$SID/diff?path=shadow"
check "path= on the symlink to /etc/shadow: the link, not the file" \
  bash -c "[ '$STATUS' = 200 ] && jq -r .diff '$TMP/body' | grep -qx '+/etc/shadow' && ! grep -q 'root:' '$TMP/body'"
api GET "/v1/sessions/$SID/diff?path=pipe"
check "path= on the FIFO answers at once, nothing listed" [ "$STATUS" = 200 -a "$(jget '.files | length')" = 0 ]
api GET "/v1/sessions/$SID/diff?against=head"
check "against=head answers too" [ "$STATUS" = 200 ]
check "still nothing ran" bash -c "! ls '$WS'/PWNED-* '$TMP'/host/PWNED-* '$DATA_DIR'/PWNED-* 2>/dev/null | grep -q ."
# core.worktree -> the server's data directory: the diff is still the workspace's
api POST "/v1/sessions/$SID/exec" "$(jq -c -n --arg s "git config core.worktree '$DATA_REAL' && echo ok" '{script:$s, timeout_s:30}')"
check "the sandbox set core.worktree" [ "$(jget .stdout)" = ok ]
api GET "/v1/sessions/$SID/diff"
check "core.worktree ignored: the same files" [ "$STATUS" = 200 -a "$(jget '[.files[].path] | sort | join(",")')" = "$FILES" ]
check "no server file in the answer" bash -c "! grep -q -e registry.db -e admin.token '$TMP/body'"
check "the server is alive" curl -fs -o /dev/null "$BASE/healthz"

finish
