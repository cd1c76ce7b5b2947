#!/usr/bin/env bash
# Host-side git never obeys or follows what a sandbox wrote into its workspace's .git. Each
# attack is set up from inside a local (bubblewrap) sandbox with POST /exec, then a prompt (the
# shell agent runs it as a script) makes the end-of-prompt commit run on the host:
#  (a) core.worktree = the server's session files, then another session's workspace: no host file
#      and no file of the other workspace may land in a commit;
#  (b) the session branch's reflog, then the reflog directory, symlinked to host paths, with a
#      user.name that is a shell line: nothing may be created or appended there;
#  (c) .git/refs/heads/sessiond symlinked to a host directory: nothing may be written there;
#  (d) .git/objects/<xx> (the next blob's) symlinked to a host directory: likewise;
#  (e) a symlink in the workspace to a host file: the host file keeps its owner.
. "$(dirname "$0")/lib.sh"

G="git -c user.name=Seed -c user.email=seed@example.com -c init.defaultBranch=main"
mkdir -p "$TMP/octo"
( cd "$TMP/octo" && $G init -q --bare hello.git && $G init -q seed && cd seed &&
  echo hello > README && $G add -A && $G commit -qm init && $G push -q ../hello.git main ) ||
  { fail "seed repository"; finish; }
REMOTE="$TMP/octo/hello.git"
# host paths the attacks aim at: outside every workspace, root's
mkdir -p "$TMP/logdir" "$TMP/refdir" "$TMP/objdir"
echo host-only-content > "$TMP/hostfile"
HG="git -c safe.directory=*" # the test reads sandbox-owned repositories as root

sx() { # SID SCRIPT -> BODY = exec result
  api POST "/v1/sessions/$1/exec" "$(jq -c -n --arg s "$2" '{script:$s, timeout_s:30}')"
}
prompt() { # SID TEXT N: run a prompt, wait for the Nth turn's snapshot (after the commit)
  api POST "/v1/sessions/$1/messages" "$(jq -c -n --arg c "$2" '{content:$c}')"
  wait_event "$1" session.snapshot "$3" 30 >/dev/null || fail "turn $3 of $1 ends"
}
commits() { # SID -> number of git.commit events
  api GET "/v1/sessions/$1/events?limit=1000"
  jget '[.events[] | select(.type=="git.commit")] | length'
}
session() { # -> a new session on the repository, its sandbox ready
  local sid
  sid=$(new_session '{"repo":"hello"}')
  wait_event "$sid" sandbox.ready 1 30 >/dev/null || fail "sandbox of $sid ready"
  echo "$sid"
}

start_server --sandbox local --repos-tick-ms 200 --shutdown-grace 1
api POST /v1/repos "{\"name\":\"hello\",\"url\":\"$REMOTE\",\"pool_size\":0,\"image_interval_min\":0}"
expect_status 201 "repository added"
ADMIN_TOKEN_VALUE=$(cat "$DATA_DIR/admin.token")
DATA_REAL=$(realpath "$DATA_DIR")

# ---- (a) core.worktree -> the server's session files, then -> another session's workspace ----
V=$(session)
sx "$V" 'echo victim-secret-42 > secret.txt'
A=$(session)
sx "$A" "printf '[core]\\n\\tworktree = %s\\n\\thooksPath = /tmp\\n[include]\\n\\tpath = /tmp/x\\n' '$DATA_REAL/sessions' >> .git/config && echo ok"
check "(a) the sandbox set core.worktree" [ "$(jget .stdout)" = ok ]
prompt "$A" 'echo a1 > a1.txt' 1
WSA="$DATA_DIR/workspaces/$A"
TREE=$($HG --git-dir="$WSA/.git" ls-tree -r --name-only "sessiond/$A" 2>/dev/null)
check "(a) the commit has the workspace's own change" grep -qx a1.txt <<<"$TREE"
check "(a) no session file of the server in the commit" \
  bash -c "! grep -qE '(\.db|\.db-wal|registry|admin\.token)$' <<<'$TREE'"
sx "$A" "sed -i '/worktree/d' .git/config && printf '[core]\\n\\tworktree = %s\\n' '$DATA_REAL/workspaces/$V' >> .git/config && echo ok"
check "(a) the sandbox pointed core.worktree at the other workspace" [ "$(jget .stdout)" = ok ]
prompt "$A" 'echo a2 > a2.txt' 2
TREE=$($HG --git-dir="$WSA/.git" ls-tree -r --name-only "sessiond/$A" 2>/dev/null)
check "(a) the second commit has the workspace's own change" grep -qx a2.txt <<<"$TREE"
check "(a) the other session's file is in no commit" bash -c "! grep -q secret.txt <<<'$TREE'"
ALL=$($HG --git-dir="$WSA/.git" log -p --all 2>/dev/null)
check "(a) no host or other-session content in any commit" \
  bash -c "! grep -qF -e '$ADMIN_TOKEN_VALUE' -e victim-secret-42 <<<\"\$1\"" _ "$ALL"
sx "$A" 'sed -i "/worktree/d" .git/config; git ls-tree -r --name-only HEAD | grep -c -e "\.db" -e secret.txt'
check "(a) the next prompt sees no host file with git" [ "$(jget .stdout)" = 0 ]

# ---- (b) the reflog symlinked to a host file, then its directory to a host directory ----
B=$(session)
sx "$B" "git config user.name '\$(touch /tmp/x); echo pwned' && mkdir -p .git/logs/refs/heads/sessiond &&
  ln -sfn '$TMP/pwned-reflog' .git/logs/refs/heads/sessiond/$B && echo ok"
check "(b) the sandbox planted the reflog symlink" [ "$(jget .stdout)" = ok ]
prompt "$B" 'echo b1 > b1.txt' 1
check "(b) no host file created through the reflog symlink" [ ! -e "$TMP/pwned-reflog" ]
sx "$B" "rm -rf .git/logs/refs/heads/sessiond && ln -s '$TMP/logdir' .git/logs/refs/heads/sessiond && echo ok"
prompt "$B" 'echo b2 > b2.txt' 2
check "(b) nothing written into a host directory through the reflog directory" \
  [ -z "$(ls -A "$TMP/logdir")" ]
check "(b) the commits themselves were made" [ "$(commits "$B")" = 2 ]

# ---- (c) refs/heads/sessiond symlinked to a host directory ----
C=$(session)
sx "$C" "rm -rf .git/refs/heads/sessiond && ln -s '$TMP/refdir' .git/refs/heads/sessiond && echo ok"
check "(c) the sandbox planted the refs symlink" [ "$(jget .stdout)" = ok ]
prompt "$C" 'echo c1 > c1.txt' 1
check "(c) nothing written into a host directory through refs/" [ -z "$(ls -A "$TMP/refdir")" ]

# ---- (d) the next blob's objects/<xx> symlinked to a host directory ----
D=$(session)
sx "$D" "i=0; while :; do printf 'd%s\n' \$i > d.txt; h=\$(git hash-object d.txt); x=\${h:0:2};
  [ -e .git/objects/\$x ] || break; i=\$((i+1)); done; ln -s '$TMP/objdir' .git/objects/\$x && echo ok"
check "(d) the sandbox planted the objects symlink" [ "$(jget .stdout)" = ok ]
prompt "$D" 'true' 1
check "(d) nothing written into a host directory through objects/" [ -z "$(ls -A "$TMP/objdir")" ]

# ---- (e) a symlink to a host file is never followed by the ownership fix ----
chmod 0600 "$TMP/hostfile"
E=$(session)
sx "$E" "ln -s '$TMP/hostfile' hostlink && ln -s '$TMP/hostfile' .git/hostlink && echo ok"
prompt "$E" 'echo e1 > e1.txt' 1
check "(e) the host file behind a workspace symlink keeps its owner" \
  [ "$(stat -c %u:%a "$TMP/hostfile")" = 0:600 ]
check "(e) and its content" [ "$(cat "$TMP/hostfile")" = host-only-content ]

api GET /healthz "" -
expect_status 200 "server healthy after the attacks"
finish
