#!/usr/bin/env bash
# test_sandbox_escape.sh - a sandbox tries to escape (issue 4): read the server's data dir and
# another session's workspace, write outside /workspace, connect to the server's port, fork
# bomb, allocate past the memory limit, exceed the timeout, print 50 MB. Each is contained,
# with a clear event, and the server and the other sessions carry on. Then a restart with a
# prompt running: it is failed on restart and the queue resumes.
. "$(dirname "$0")/lib.sh"

events_of() {
  local sid=$1 after=${2:-0}
  : >"$TMP/ev"
  while :; do
    api GET "/v1/sessions/$sid/events?after=$after&limit=1000"
    jq -c '.events[] | if .type == "agent.output" or .type == "exec.output" then (.data.text |= (if . then .[0:200] else . end) | .data.data |= (if . then .[0:200] else . end)) else . end' "$TMP/body" >>"$TMP/ev"
    [ "$(jq -r .has_more "$TMP/body")" = true ] || break
    after=$(jq -r .next_after "$TMP/body")
  done
  jq -s -c . "$TMP/ev"
}
wait_for() {
  local sid=$1 filter=$2 t=${3:-20} i
  for i in $(seq 1 $((t * 5))); do
    EVENTS=$(events_of "$sid")
    if [ "$(jq "[.[] | select($filter)] | length" <<<"$EVENTS")" -gt 0 ]; then return 0; fi
    sleep 0.2
  done
  return 1
}
prompt() {
  api POST "/v1/sessions/$1/messages" "$(jq -c -n --arg c "$2" '{content:$c}')" "${3:-$ADMIN}"
  jget .prompt_id
}
run() { # run SID SCRIPT -> BODY is the exec result
  api POST "/v1/sessions/$1/exec" "$(jq -c -n --arg s "$2" '{script:$s, timeout_s:30}')"
}

# The 50 MB prompt must finish within the prompt timeout: ~4 s plain, over 10 s under TSan
# on a slow day, hence a longer timeout there (the `sleep 60` prompt still times out).
PT=10
[ "${SANITIZE:-}" = thread ] && PT=30
# The 50 MB are all stored here to count their merging into events: the per-prompt output cap
# (16 MiB by default, test_trust_caps.sh tests it) is raised above them.
start_server --sandbox local --sandbox-memory-mib 256 --sandbox-pids 128 --prompt-timeout $PT \
  --max-prompt-output-bytes 104857600 \
  --cancel-grace-ms 300 --shutdown-grace 2
A=$(new_session '{"title":"attacker"}')
B=$(new_session '{"title":"victim"}')
run "$B" 'echo victim-secret > secret.txt'
check "victim wrote its file" jq -e '.exit_code==0' <<<"$BODY"

# ---- reading the server's data dir and the other workspace ----
run "$A" "ls '$DATA_DIR' 2>&1; cat '$DATA_DIR/admin.token' 2>&1; cat '$DATA_DIR/registry.db' 2>&1 | head -c 100; cat '$DATA_DIR/workspaces/$B/secret.txt' 2>&1; cat /workspace/../$B/secret.txt 2>&1; ls / ; find / -name secret.txt 2>/dev/null; echo END"
check "data dir invisible" bash -c "! grep -q 'registry.db$' <<<'$(jget .stdout)' && ! grep -q SQLite <<<'$(jget .stdout)'"
check "admin token unreadable" bash -c "! grep -qF '$ADMIN' <<<'$(jget .stdout)'"
check "other workspace unreadable" bash -c "! grep -q victim-secret <<<'$(jget .stdout)'"
check "escape script ran to the end" grep -q END <<<"$(jget .stdout)"

# ---- writing outside /workspace ----
run "$A" 'for p in /usr/x /etc/x /x /run/sessiond/x /run/sessiond-init /proc/sys/kernel/hostname; do (echo x > $p) 2>/dev/null && echo "WROTE $p"; done; echo tmp > /tmp/ok && echo TMP_OK; id -u'
check "no write outside /workspace and /tmp" bash -c "! grep -q WROTE <<<'$(jget .stdout)'"
check "/tmp is writable" grep -q TMP_OK <<<"$(jget .stdout)"
check "not root inside" bash -c "[ \"\$(tail -n1 <<<'$(jget .stdout)')\" != 0 ]"

# ---- the supervisor cannot be hijacked: no ptrace of sandbox-init, no fd of the host ----
run "$A" 'ls -l /proc/1/fd/ 2>&1 | grep -c socket; cat /proc/1/environ 2>&1 | head -c 50; echo; ls -l /proc/self/fd/ | tail -n +2 | wc -l; cat /proc/1/comm'
check "sandbox-init's fds and environment are not readable" bash -c "grep -q 'Permission denied' <<<'$(jget .stdout)'"
check "pid 1 is sandbox-init (no bwrap monitor inside)" grep -qx sessiond-init <<<"$(jget .stdout)"

# ---- network: the server's own port, and anything else ----
run "$A" "(exec 3<>/dev/tcp/127.0.0.1/$PORT && echo CONNECTED_SERVER) 2>/dev/null; (exec 3<>/dev/tcp/1.1.1.1/80 && echo CONNECTED_NET) 2>/dev/null; cat /proc/net/dev | grep -c ':' ; echo NETDONE"
check "cannot connect to the server port" bash -c "! grep -q CONNECTED_SERVER <<<'$(jget .stdout)'"
check "no network at all" bash -c "! grep -q CONNECTED_NET <<<'$(jget .stdout)'"

# ---- fork bomb (pids cgroup / RLIMIT_NPROC), then the sandbox still works ----
api POST "/v1/sessions/$A/exec" '{"script":"bomb() { bomb | bomb & }; bomb; sleep 2; echo survived","timeout_s":5}'
check "fork bomb contained (command ends)" jq -e '.exit_code!=null or .signal!=null' <<<"$BODY"
sleep 1
for i in $(seq 1 50); do run "$A" 'echo alive'; [ "$(jget .stdout)" = alive ] && break; sleep 0.2; done
check "sandbox usable after the fork bomb" [ "$(jget .stdout)" = alive ]
run "$A" 'ls /proc | grep -c "^[0-9]"'
check "no bomb process left (processes: $(jget .stdout))" [ "$(jget .stdout)" -lt 10 ]
api GET /healthz "" -
expect_status 200 "server healthy after the fork bomb"

# ---- memory limit (256 MiB): the allocator is killed or refused ----
run "$A" 'perl -e '"'"'$x = "a" x 600000000; print "ALLOCATED\n"'"'"''
check "memory limit enforced" bash -c "! grep -q ALLOCATED <<<'$(jget .stdout)'"
check "memory limit: clear result" jq -e '(.signal==9 and .oom==true) or .exit_code!=0' <<<"$BODY"

# ---- prompts: timeout, 50 MB of output, crash; the other session is unaffected ----
P1=$(prompt "$A" 'sleep 60')
P2=$(prompt "$A" 'yes "$(printf %099d 0)" | head -c 50000000')
P3=$(prompt "$A" 'echo after-the-flood')
PB=$(prompt "$B" 'cat secret.txt')
wait_for "$B" ".type==\"prompt.completed\" and .data.prompt_id==\"$PB\"" 20 && pass "other session runs meanwhile" || fail "other session runs meanwhile"
wait_for "$A" ".type==\"prompt.completed\" and .data.prompt_id==\"$P3\"" $((PT * 2 + 40)) || fail "attacker queue drained" "$(jq -c '[.[]|select(.type|startswith("prompt."))]' <<<"$EVENTS")"
check "timeout -> prompt.failed (timeout)" jq -e ".[]|select(.type==\"prompt.failed\" and .data.prompt_id==\"$P1\")|.data.reason|startswith(\"timeout\")" <<<"$EVENTS"
if jq -e "[.[]|select(.type==\"prompt.completed\" and .data.prompt_id==\"$P2\")]|length==1" <<<"$EVENTS" >/dev/null; then
  pass "50 MB prompt completed"
else
  fail "50 MB prompt completed" "$(jq -c "[.[]|select((.type|startswith(\"prompt.\")) and .data.prompt_id==\"$P2\")]" <<<"$EVENTS")"
fi
N=$(jq "[.[]|select(.type==\"agent.output\" and .data.prompt_id==\"$P2\")]|length" <<<"$EVENTS")
check "50 MB merged into <=16 KiB events (got $N events)" [ "$N" -ge 3000 ] && [ "$N" -le 4000 ]
api GET "/v1/sessions/$A/events?after=0&limit=1000"
MAXLEN=$(jq '[.events[]|select(.type=="agent.output")|.data.text|length]|max' "$TMP/body")
check "agent.output events at most 16 KiB (max $MAXLEN)" [ "$MAXLEN" -le 16384 ]

# ---- restart with a prompt running: failed on restart, queue resumes ----
C=$(new_session '{"title":"restart"}')
PR=$(prompt "$C" 'sleep 60')
PQ=$(prompt "$C" 'echo resumed-after-restart')
wait_for "$C" ".type==\"prompt.started\" and .data.prompt_id==\"$PR\"" || fail "long prompt started"
stop_server KILL
start_server
wait_for "$C" ".type==\"prompt.completed\" and .data.prompt_id==\"$PQ\"" 60 && pass "queue resumed after a crash" || fail "queue resumed after a crash" "$(jq -c '[.[]|select(.type|startswith("prompt."))]' <<<"$EVENTS")"
check "running prompt failed on restart" jq -e ".[]|select(.type==\"prompt.failed\" and .data.prompt_id==\"$PR\")|.data.reason|contains(\"restarted\")" <<<"$EVENTS"

# ---- graceful stop cancels a running prompt with reason shutdown ----
PS=$(prompt "$C" 'sleep 60')
wait_for "$C" ".type==\"prompt.started\" and .data.prompt_id==\"$PS\"" || fail "prompt started before stop"
T0=$(date +%s)
stop_server TERM
check "graceful stop within the grace period" [ $(( $(date +%s) - T0 )) -le 20 ]
start_server
EVENTS=$(events_of "$C")
check "shutdown cancels the running prompt" jq -e ".[]|select(.type==\"prompt.cancelled\" and .data.prompt_id==\"$PS\")|.data.reason==\"shutdown\"" <<<"$EVENTS"

finish
