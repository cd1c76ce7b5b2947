#!/usr/bin/env bash
# test_trust_env.sh - nothing of the server's environment reaches a sandbox. The attack: a
# prompt or exec reads /proc/<pid>/environ of every process it can see (pid 1, bwrap's
# monitor, included) looking for the admin token, the secrets key and model keys the server
# was started with; and tries to attach to pid 1 with ptrace. Run with both backends.
. "$(dirname "$0")/lib.sh"

MARK="leak-$(date +%s%N)"
export SESSIOND_ADMIN_TOKEN="adm-$MARK-0123456789abcdef"
export SESSIOND_SECRETS_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export ANTHROPIC_API_KEY="sk-ant-$MARK"
export OPENAI_API_KEY="sk-oai-$MARK"
export SLACK_BOT_TOKEN="xoxb-$MARK"
export GITHUB_TOKEN="ghp-$MARK"
export HOST_ONLY_VARIABLE="$MARK"

# Every environment block the sandbox can read, with NULs as newlines, then its own. The
# process backend has no isolation at all (it sees the host's /proc, the server included:
# docs/sandbox.md says so), so there only the command's own environment counts.
LOCAL_SCRIPT='for f in /proc/[0-9]*/environ; do echo "== $f"; tr "\0" "\n" <"$f" 2>&1; done; env; echo END'
PROCESS_SCRIPT='env; tr "\0" "\n" </proc/$$/environ; tr "\0" "\n" </proc/$PPID/environ; echo END'

for backend in local process; do
  SERVER_LOG="$TMP/server-$backend.log"
  rm -rf "$DATA_DIR"
  start_server --sandbox "$backend"
  SID=$(new_session '{"title":"env"}')
  if [ "$backend" = local ]; then SCRIPT=$LOCAL_SCRIPT; else SCRIPT=$PROCESS_SCRIPT; fi
  api POST "/v1/sessions/$SID/exec" "$(jq -c -n --arg s "$SCRIPT" '{script:$s, timeout_s:30}')"
  expect_status 200 "$backend: exec ran"
  OUT=$(jget .stdout)
  check "$backend: the attack script read environments" grep -q '^END$' <<<"$OUT"
  if [ "$backend" = local ]; then
    check "local: pid 1's environment was readable to the attack" grep -q '^== /proc/1/environ' <<<"$OUT"
  fi
  check "$backend: no server variable in any process of the sandbox" \
    bash -c "! grep -qF '$MARK' <<<\"\$1\"" _ "$OUT"
  check "$backend: the secrets key is not visible" \
    bash -c "! grep -qF '$SESSIOND_SECRETS_KEY' <<<\"\$1\"" _ "$OUT"
  # A prompt with the shipped shell agent runs the same read.
  api POST "/v1/sessions/$SID/messages" "$(jq -c -n --arg c "$SCRIPT" '{content:$c}')"
  expect_status 202 "$backend: prompt accepted"
  wait_event "$SID" prompt.completed 1 30 >/dev/null
  api GET "/v1/sessions/$SID/events?limit=1000"
  check "$backend: the prompt's agent saw no server variable" \
    bash -c "! grep -qF '$MARK' <<<\"\$1\"" _ "$BODY"
  check "$backend: the prompt's output is in the stream" grep -q 'environ' <<<"$BODY"
  if [ "$backend" = local ]; then
    # ptrace of pid 1 (bwrap's monitor) or any other process: python's ctypes when present,
    # else /proc/1/mem, which needs the same ptrace access.
    api POST "/v1/sessions/$SID/exec" '{"script":"head -c 16 /proc/1/mem >/dev/null 2>&1 && echo MEM_READ; cat /proc/1/cmdline | tr \"\\0\" \" \"; echo; echo DONE","timeout_s":10}'
    check "local: pid 1's memory cannot be read" bash -c "! grep -q MEM_READ <<<\"\$1\"" _ "$(jget .stdout)"
  fi
  stop_server KILL
done
finish
