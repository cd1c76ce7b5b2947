#!/usr/bin/env bash
# test_trust_snapwalk.sh - the walk of a snapshot cannot write as root (the second wall).
#
# The sandbox plants what a buggy walker would trip over: symlinks to a root-only file
# (/etc/shadow), to / and up out of the workspace, a file and a directory nobody may read, and
# two 64 MiB sparse files (a second or so of hashing, while the walk child still serves). A
# manual snapshot runs, and the test looks at the process that walks the workspace from /proc
# (the real server's child, by its name and parent): it is not root (uid/gid 65534, no groups),
# its only capability is CAP_DAC_READ_SEARCH, no_new_privs and a seccomp filter are on, no file
# may grow (RLIMIT_FSIZE 0), its root is the workspace (chroot) and it holds the workspace,
# its socket and /dev/null only. Before this wall, the walk ran in the server, as root, with
# every descriptor of the server: no such process existed. The snapshot holds no byte of
# /etc/shadow, and what the sandbox made unreadable is in it (a rollback brings it back), as
# when the walk ran as root.
. "$(dirname "$0")/lib.sh"

SESSIOND_SANDBOX=local start_server --sandbox local --shutdown-grace 1
SID=$(new_session '{"title":"snapwalk"}')

run() { # run SCRIPT -> BODY is the exec result, OUT its stdout
  api POST "/v1/sessions/$SID/exec" "$(jq -c -n --arg s "$1" '{script:$s, timeout_s:60}')"
  OUT=$(jget .stdout)
}

run 'set -e
ln -s /etc/shadow shadow; ln -s / rootlink; ln -s ../../../../../.. up
echo s3cret > secret && chmod 000 secret
mkdir closed && echo hidden > closed/inner && chmod 000 closed
for i in 1 2; do truncate -s 64M big$i; done
echo planted'
check "the sandbox planted its tree" grep -q planted <<<"$OUT"

# Watch /proc for the walk child of this server while the snapshot runs; dump what it is.
WATCH="$TMP/walker.txt"
perl -e '
  my ($ppid, $out) = @ARGV;
  my $end = time + 60;
  while (time < $end) {
    for my $d (glob "/proc/[0-9]*") {
      open(my $f, "<", "$d/status") or next;
      my $st = do { local $/; <$f> };
      close $f;
      next unless $st =~ /^Name:\s+snap-walk$/m && $st =~ /^PPid:\s+$ppid$/m;
      my @fds;
      opendir(my $fd, "$d/fd") or next;
      for my $n (sort { $a <=> $b } grep { /^\d+$/ } readdir $fd) { push @fds, "$n=" . (readlink("$d/fd/$n") // "?") }
      open(my $l, "<", "$d/limits") or next;
      my ($fsize) = grep { /^Max file size/ } <$l>;
      my $root = readlink("$d/root") // "?";
      next unless @fds;
      open(my $o, ">", $out) or die;
      print $o $st, "Root:\t$root\n", "Fds:\t@fds\n", $fsize;
      close $o;
      exit 0;
    }
    select(undef, undef, undef, 0.01);
  }
  exit 1;
' "$SERVER_PID" "$WATCH" &
WATCHER=$!
sleep 0.2
api POST "/v1/sessions/$SID/snapshots" '{}'
expect_status 201 "the snapshot is made"
SNAP=$(jget .snapshot_id)
wait "$WATCHER"
check "a walk child of the server was seen while the snapshot ran" [ -s "$WATCH" ]
field() { sed -n "s/^$1:[[:space:]]*//p" "$WATCH" | head -1; }
check "it is not root: uid 65534 (real, effective, saved, fs)" [ "$(field Uid)" = "$(printf '65534\t65534\t65534\t65534')" ]
check "gid 65534" [ "$(field Gid)" = "$(printf '65534\t65534\t65534\t65534')" ]
check "no supplementary groups" grep -Eqx 'Groups:[[:space:]]*' "$WATCH"
check "one capability: CAP_DAC_READ_SEARCH ($(field CapEff))" [ "$(field CapEff)" = 0000000000000004 ]
check "none it could raise (permitted $(field CapPrm), ambient $(field CapAmb))" \
  [ "$(field CapPrm)/$(field CapAmb)" = 0000000000000004/0000000000000000 ]
check "no_new_privs" [ "$(field NoNewPrivs)" = 1 ]
check "seccomp filter on (no open by handle)" [ "$(field Seccomp)" = 2 ]
check "no file may grow (RLIMIT_FSIZE 0)" grep -Eq '^Max file size +0 +0 ' "$WATCH"
ROOT=$(field Root)
FDS=$(field Fds)
check "its root is the workspace, not / ($ROOT)" [ "$ROOT" = "$DATA_DIR/workspaces/$SID" ]
check "it holds /dev/null, the workspace, its socket; nothing else ($FDS)" \
  grep -Eqx "0=/dev/null 1=/dev/null 2=/dev/null 3=$ROOT 4=socket:\[[0-9]+\]" <<<"$FDS"

# the snapshot: the planted links as links, no byte of the file they point at
HEAD=$(head -c 24 /etc/shadow)
check "no byte of /etc/shadow in the snapshot store" \
  bash -c '! grep -rqF -- "$1" "$2"' _ "$HEAD" "$DATA_DIR"
run 'rm -rf secret closed; ls'
api POST "/v1/sessions/$SID/rollback" "$(jq -c -n --arg s "$SNAP" '{snapshot_id:$s}')"
check "rollback to the snapshot ($STATUS)" [ "$STATUS" = 200 ]
run 'readlink shadow; chmod 600 secret && cat secret; chmod 700 closed && cat closed/inner'
check "unreadable file and directory were snapshotted whole (${OUT//$'\n'/ })" \
  [ "$OUT" = "$(printf '/etc/shadow\ns3cret\nhidden')" ]
api GET /healthz "" -
check "server alive" [ "$STATUS" = 200 ]
finish
