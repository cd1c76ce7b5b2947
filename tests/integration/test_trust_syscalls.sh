#!/usr/bin/env bash
# test_trust_syscalls.sh - a sandboxed command tries the system calls sandbox-init's seccomp
# filter refuses (ptrace of pid 1 and of a sibling, new user namespaces, mount, the kernel
# keyring, bpf, perf, userfaultfd, process_vm_readv, the i386 entry), a second sandbox looks
# for the first one's key in /proc/keys, and ordinary work (a debugger on its own child, fork,
# bash, cc, git, python3, node) still runs. Then blocked_commands: exec of a blocked program is
# refused with 403, bash inside cannot run it, and a copy in /workspace still runs (the
# documented limit of that policy). The probe is compiled on the host (trust_probe.c).
. "$(dirname "$0")/lib.sh"

if ! command -v cc >/dev/null; then
  echo "ok - $TEST_NAME: skipped (no cc to build the probe)"
  exit 0
fi
cc -O1 -o "$TMP/probe" "$(dirname "$0")/trust_probe.c" || { fail "probe builds"; finish; }

run() { # run SID SCRIPT -> BODY is the exec result, OUT its stdout
  api POST "/v1/sessions/$1/exec" "$(jq -c -n --arg s "$2" '{script:$s, timeout_s:30}')"
  OUT=$(jget .stdout)
}
put_probe() {
  api PUT "/v1/sessions/$1/files?path=probe" "@$TMP/probe" "$ADMIN" -H 'Content-Type: application/octet-stream'
  expect_status 200 "probe uploaded"
  run "$1" 'chmod 755 probe && echo ready'
}
has() { grep -qxF "$1" <<<"$OUT"; }

start_server --sandbox local
A=$(new_session '{"title":"attacker"}')
B=$(new_session '{"title":"neighbour"}')
put_probe "$A"
put_probe "$B"

# ---- ptrace: pid 1 (bwrap's monitor) and a sibling; a debugger on its own child ----
run "$A" 'sleep 30 & s=$!; ./probe attach 1; ./probe seize 1; ./probe attach $s; ./probe seize $s; ./probe vmread $s; kill $s; ./probe traceme'
check "PTRACE_ATTACH of pid 1 refused (EPERM)" has "attach=EPERM"
check "PTRACE_SEIZE of pid 1 refused (EPERM)" bash -c "[ \$(grep -c '^seize=EPERM$' <<<'$OUT') = 2 ]"
check "PTRACE_ATTACH of a sibling refused (EPERM)" [ "$(grep -c '^attach=EPERM$' <<<"$OUT")" = 2 ]
check "process_vm_readv of a sibling refused" has "vmread=EPERM"
check "PTRACE_TRACEME + a traced child still works" has "traceme=OK"
# ... nor through /proc: pid 1 runs outside the filter, code written into it would not be
# (the Landlock domain; skipped where the kernel has no Landlock ABI 2)
run "$A" './probe mem 1; ./probe environ 1'
if grep -q "no Landlock domain" "$DATA_DIR/sandboxes/$A.log" 2>/dev/null; then
  echo "ok - $TEST_NAME: /proc/1/mem: skipped (no Landlock here)"
else
  check "pid 1's memory cannot be opened for writing" bash -c "grep -q '^mem=E' <<<'$OUT'"
  check "pid 1's environment cannot be read" bash -c "grep -q '^environ=E' <<<'$OUT'"
fi

# ---- namespaces and mounts ----
run "$A" './probe userns; ./probe clone-userns; ./probe clone3; ./probe fork; ./probe mount'
check "unshare(CLONE_NEWUSER) refused (EPERM)" has "userns=EPERM"
check "clone(CLONE_NEWUSER) refused (EPERM)" has "clone-userns=EPERM"
check "clone3 answers ENOSYS (glibc falls back to clone)" has "clone3=ENOSYS"
check "plain fork works" has "fork=OK"
check "mount refused (EPERM)" has "mount=EPERM"

# ---- kernel surfaces ----
run "$A" './probe bpf; ./probe perf; ./probe uffd; ./probe iouring; ./probe personality'
check "bpf refused" has "bpf=EPERM"
check "perf_event_open refused" has "perf=EPERM"
check "userfaultfd refused" has "uffd=EPERM"
check "io_uring_setup answers ENOSYS" has "iouring=ENOSYS"
check "personality(ADDR_NO_RANDOMIZE) refused" has "personality=EPERM"
run "$A" './probe int80; echo "rc=$?"'
check "the i386 entry (int 0x80) kills the process (SIGSYS)" has "rc=$((128 + 31))"

# ---- the keyring: A cannot add a key, B sees nothing of A's in /proc/keys ----
# (names unique to this run: keyrings of the sandbox uid outlive a sandbox)
K="sessiond-probe-$$-$RANDOM"
run "$A" "./probe addkey $K-user; ./probe sessionkey $K-ses; ./probe keyctl"
check "add_key to the user keyring refused" has "addkey=EPERM"
check "add_key to the session keyring refused" has "sessionkey=EPERM"
check "keyctl refused" has "keyctl=EPERM"
run "$B" 'cat /proc/keys; echo END'
check "sandbox B's /proc/keys shows no key of A" bash -c "! grep -q '$K' <<<'$OUT' && grep -q END <<<'$OUT'"

# ---- ordinary work still runs ----
run "$A" 'set -e; echo "int main(void){return 0;}" > t.c; if command -v cc >/dev/null; then cc -o t t.c && ./t && echo CC_OK; else echo CC_OK; fi
git init -q g && cd g && git status --short && echo GIT_OK && cd ..
if command -v python3 >/dev/null; then python3 -c "import os,subprocess; subprocess.run([\"true\"], check=True); print(\"PY_OK\")"; else echo PY_OK; fi
if command -v node >/dev/null; then node -e "require(\"child_process\").execFileSync(\"true\"); console.log(\"NODE_OK\")"; else echo NODE_OK; fi
mkdir -p d1 d2 && echo x > d1/f && mv d1/f d2/f && ln d2/f d1/hard && mv d1 d2/ && echo MV_OK
echo BASH_OK'
check "cc compiles and runs a program" has "CC_OK"
check "git status works" has "GIT_OK"
check "python3 runs (and spawns)" has "PY_OK"
check "node runs (and spawns)" has "NODE_OK"
check "cross-directory rename and hard link work" has "MV_OK"
check "the workload ran to the end" has "BASH_OK"
# real debuggers on their own child (strace falls back from PTRACE_SEIZE to PTRACE_TRACEME)
run "$A" 'if command -v strace >/dev/null; then strace -f -o /tmp/st bash -c "/bin/true" && grep -q execve /tmp/st && echo STRACE_OK; else echo STRACE_OK; fi
if command -v gdb >/dev/null; then gdb -batch -ex run --args /bin/true 2>&1 | grep -q "exited normally" && echo GDB_OK; else echo GDB_OK; fi'
check "strace COMMAND works" has "STRACE_OK"
check "gdb runs a program" has "GDB_OK"

# ---- blocked_commands ----
stop_server
start_server --sandbox local --blocked-commands /usr/bin/curl
C=$(new_session '{"title":"blocked"}')
api POST "/v1/sessions/$C/exec" '{"argv":["curl","--version"]}'
expect_error 403 forbidden "exec of a blocked command (by name) is refused with 403"
check "the error names the policy" grep -q blocked_commands <<<"$(jget .error.message)"
api POST "/v1/sessions/$C/exec" '{"argv":["/bin/curl","--version"]}'
expect_error 403 forbidden "exec of a blocked command (by another path) is refused with 403"
run "$C" 'curl --version; echo "rc=$?"; ls -l /usr/bin/curl; [ -s /usr/bin/curl ] || echo EMPTY'
check "bash inside cannot execute it (126)" has "rc=126"
check "the program is masked by an empty non-executable file" bash -c "grep -q '^-r--r--r--' <<<'$OUT' && grep -qx EMPTY <<<'$OUT'"
cp /usr/bin/curl "$TMP/curl-copy"
api PUT "/v1/sessions/$C/files?path=mycurl" "@$TMP/curl-copy" "$ADMIN" -H 'Content-Type: application/octet-stream'
run "$C" 'chmod 755 mycurl && ./mycurl --version | head -n1 | cut -d" " -f1'
check "a copy of the binary in /workspace still runs (policy, not a boundary)" has "curl"
api POST "/v1/sessions/$C/exec" '{"argv":["./mycurl","--version"]}'
expect_status 200 "exec of the copy is not refused"
run "$C" 'ln -sf /usr/bin/curl via-link && echo linked'
api POST "/v1/sessions/$C/exec" '{"argv":["./via-link","--version"]}'
check "a symlink to it in /workspace is refused inside by sandbox-init (126, the reason)" \
  jq -e '.exit_code==126 and (.stderr|test("blocked_commands"))' <<<"$BODY"
run "$C" 'echo still-fine'
check "other commands run" has "still-fine"

# ---- the process backend (no isolation) runs sandbox-init too: the filter and the check ----
stop_server
start_server --sandbox process --blocked-commands curl
D=$(new_session '{"title":"process"}')
put_probe "$D"
run "$D" 'sleep 30 & s=$!; ./probe attach $s; kill $s; ./probe traceme; ./probe userns'
check "process backend: PTRACE_ATTACH refused" has "attach=EPERM"
check "process backend: a debugger on its own child works" has "traceme=OK"
check "process backend: unshare(CLONE_NEWUSER) refused" has "userns=EPERM"
# sandbox-init's parent is the server: its memory is out of reach (its environment is not,
# for a root command: the process backend gives no isolation, the data dir is readable too)
run "$D" 'srv=$(cut -d" " -f4 /proc/$PPID/stat); echo "server=$srv"; ./probe mem $srv'
check "process backend: the command sees the server's pid ($SERVER_PID)" has "server=$SERVER_PID"
if ! grep -q "no Landlock domain" "$SERVER_LOG"; then
  check "process backend: the server's memory cannot be opened" bash -c "grep -q '^mem=E' <<<'$OUT'"
fi
api POST "/v1/sessions/$D/exec" '{"argv":["curl","--version"]}'
expect_error 403 forbidden "process backend: exec of a blocked command is refused with 403"
run "$D" 'ln -sf /usr/bin/curl via-link && echo linked'
api POST "/v1/sessions/$D/exec" '{"argv":["./via-link","--version"]}'
check "process backend: sandbox-init refuses it through a symlink" \
  jq -e '.exit_code==126 and (.stderr|test("blocked_commands"))' <<<"$BODY"

finish
