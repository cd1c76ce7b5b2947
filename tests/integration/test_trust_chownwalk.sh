#!/usr/bin/env bash
# test_trust_chownwalk.sh - the ownership walk (a workspace given to its sandbox's uid, by the
# sessiond-git helper) does not run as uid 0.
#
# The walk needs CAP_CHOWN; it used to keep root's uid with CAP_CHOWN and CAP_DAC_READ_SEARCH
# only. A process of uid 0 without capabilities still signals every root process (the server),
# writes root-owned files wherever its mount namespace leaves them writable and connects to
# root-only sockets. Now it becomes the uid the tree is given to, keeping those two
# capabilities. The test gives a session's 20,000-file workspace a new uid (a restart hands
# the sandbox another uid of the range, and the tree follows), watches the server's helpers in
# /proc while that walk runs, and checks the one holding exactly CAP_CHOWN+CAP_DAC_READ_SEARCH
# runs as the sandbox's new uid, not 0; the tree is the new uid's afterwards.
. "$(dirname "$0")/lib.sh"

LO=310000
HI=310009
run() { # run SID SCRIPT -> BODY is the exec result, OUT its stdout
  api POST "/v1/sessions/$1/exec" "$(jq -c -n --arg s "$2" '{script:$s, timeout_s:60}')"
  OUT=$(jget .stdout)
}

SESSIOND_SANDBOX=local start_server --sandbox local --sandbox-uid-range "$LO-$HI" --shutdown-grace 1
A=$(new_session '{"title":"a"}')
B=$(new_session '{"title":"b"}')
run "$A" 'mkdir wide && perl -e '\''chdir "wide" or die; for (1..20000) { open(F, ">f$_") or die; close F }'\''; id -u'
UA=$OUT
run "$B" 'id -u'
check "A has a uid of the range ($UA)" [ "$UA" -ge "$LO" ] 2>/dev/null

# ---- restart: B starts first now, so A gets another uid and its tree is given to it ----
stop_server
start_server
run "$B" 'id -u'
WATCH="$TMP/helpers.txt"
STOP="$TMP/stop"
perl -e '
  my ($ppid, $out, $stop) = @ARGV;
  my %seen;
  my $end = time + 120;
  open(my $o, ">", $out) or die;
  while (time < $end && ! -e $stop) {
    for my $d (glob "/proc/[0-9]*") {
      open(my $f, "<", "$d/status") or next;
      my $st = do { local $/; <$f> };
      close $f;
      next unless $st =~ /^Name:\s+sessiond-git$/m && $st =~ /^PPid:\s+$ppid$/m;
      my ($uid) = $st =~ /^Uid:\s+(\d+)/m;
      my ($cap) = $st =~ /^CapEff:\s+(\S+)/m;
      next if $seen{"$d $uid $cap"}++;
      print $o "$d uid=$uid cap=$cap\n";
    }
    select(undef, undef, undef, 0.005);
  }
  close $o;
' "$SERVER_PID" "$WATCH" "$STOP" &
WATCHER=$!
run "$A" 'id -u'
UA2=$OUT
touch "$STOP"
wait "$WATCHER"
check "A runs as another uid after the restart ($UA -> $UA2)" [ "$UA2" != "$UA" ]
CHOWNERS=$(grep ' cap=0000000000000005$' "$WATCH")
check "the ownership walk was seen (CAP_CHOWN+CAP_DAC_READ_SEARCH only): $(tr '\n' ';' <<<"$CHOWNERS")" [ -n "$CHOWNERS" ]
check "it runs as A's new uid, not root" [ -z "$(grep -v " uid=$UA2 " <<<"$CHOWNERS")" ]
check "A's tree was given to its new uid" [ -z "$(find "$DATA_DIR/workspaces/$A" ! -uid "$UA2" | head -1)" ]
api GET /healthz "" -
check "server alive" [ "$STATUS" = 200 ]
finish
