# tests/integration/lib.sh - helpers for bash + curl integration tests. Source it:
#
#   . "$(dirname "$0")/lib.sh"
#   start_server                      # temp data dir, free port; sets BASE, PORT, ADMIN, DATA_DIR
#   api POST /v1/sessions '{"title":"x"}'       # sets STATUS and BODY (admin token by default)
#   expect_status 201 "create session"
#   SID=$(jget .id)
#   USER_TOKEN=$(make_token alice user)
#   api GET /v1/me "" "$USER_TOKEN"
#   check "me is alice" [ "$(jget .user_id)" = token:alice ]
#   finish                            # prints nothing more; exits 1 if anything failed
#
# Every check prints "ok - NAME" or "not ok - NAME" (tests/run.sh counts them). The server is
# killed at exit; its log is in $SERVER_LOG (shown on failure). Needs curl and jq.
set -u

TEST_NAME=$(basename "${0%.*}")
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sessiond-${TEST_NAME}.XXXXXX")
DATA_DIR="$TMP/data"
PORT_FILE="$TMP/port"
SERVER_LOG="$TMP/server.log"
SERVER_PID=""
SERVER_ARGS=()
SESSIOND_BIN=${SESSIOND_BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build/sessiond}
# The local (bubblewrap) sandbox cannot run everywhere (e.g. inside containers without user
# namespaces) and then the server refuses to start; REST tests do not need isolation, so they
# use the process backend unless the caller chose: SESSIOND_SANDBOX=local bash test_x.sh
export SESSIOND_SANDBOX=${SESSIOND_SANDBOX:-process}
FAILED=0
PASSED=0
STATUS=""
BODY=""
HEADERS=""

_cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -KILL "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
  fi
  # workspaces with a disk quota are loop mounts (sandbox/wsdisk.h) that a killed server leaves;
  # the mount point goes too, also when $TMP is kept: only its removal frees the disk's copies
  # in other servers' sandboxes' mount namespaces
  if [ "$(id -u)" = 0 ] && [ -r /proc/self/mountinfo ]; then
    awk -v t="$TMP/" 'index($5, t) == 1 {print $5}' /proc/self/mountinfo | sort -r |
      while read -r m; do umount -l "$m" 2>/dev/null && rmdir "$m" 2>/dev/null; done
  fi
  if [ "$FAILED" = 0 ] && [ -z "${KEEP_TMP:-}" ]; then rm -rf "$TMP"; fi
}
trap _cleanup EXIT

pass() { PASSED=$((PASSED + 1)); echo "ok - $TEST_NAME: $1"; }
fail() {
  FAILED=$((FAILED + 1))
  echo "not ok - $TEST_NAME: $1"
  [ -n "${2:-}" ] && echo "# $2" >&2
  return 0
}

# check NAME CMD...  - passes if CMD succeeds.
check() {
  local name=$1
  shift
  if "$@"; then pass "$name"; else fail "$name" "failed: $*; last status=$STATUS body=${BODY:0:300}"; fi
}

# start_server [ARGS...] - start $SESSIOND_BIN on 127.0.0.1:0 with the temp data dir; waits
# until /healthz answers. ARGS are remembered for restart_server. ADMIN is the admin token.
start_server() {
  if [ $# -gt 0 ]; then SERVER_ARGS=("$@"); fi
  rm -f "$PORT_FILE"
  "$SESSIOND_BIN" --listen 127.0.0.1:0 --port-file "$PORT_FILE" --data-dir "$DATA_DIR" \
    ${SERVER_ARGS[@]+"${SERVER_ARGS[@]}"} >>"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  local i
  for i in $(seq 1 200); do
    if [ -s "$PORT_FILE" ]; then break; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "# server exited at start; log:" >&2
      tail -n 20 "$SERVER_LOG" >&2
      fail "server starts"
      exit 1
    fi
    sleep 0.05
  done
  PORT=$(cat "$PORT_FILE")
  BASE="http://127.0.0.1:$PORT"
  for i in $(seq 1 100); do
    curl -s -o /dev/null "$BASE/healthz" && break
    sleep 0.05
  done
  if [ -n "${SESSIOND_ADMIN_TOKEN:-}" ]; then ADMIN=$SESSIOND_ADMIN_TOKEN; else ADMIN=$(cat "$DATA_DIR/admin.token"); fi
}

# stop_server [SIGNAL] - default TERM (graceful); waits for the exit. Sets STOP_RC.
stop_server() {
  local sig=${1:-TERM}
  STOP_RC=0
  if [ -n "$SERVER_PID" ]; then
    kill -"$sig" "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    STOP_RC=$?
    SERVER_PID=""
  fi
}

restart_server() {
  stop_server "${1:-TERM}"
  start_server
}

# api METHOD PATH [BODY] [TOKEN] [EXTRA CURL ARGS...] - sets STATUS, BODY, HEADERS.
# TOKEN defaults to $ADMIN; pass "-" for no Authorization header. A BODY starting with @ is a
# file. JSON content type unless EXTRA args set another.
api() {
  local method=$1 path=$2 body=${3:-} token=${4:-$ADMIN}
  shift 4 2>/dev/null || shift $#
  local args=(-s -S -X "$method" -o "$TMP/body" -D "$TMP/headers" -w '%{http_code}' --path-as-is)
  [ "$token" != "-" ] && args+=(-H "Authorization: Bearer $token")
  if [ -n "$body" ]; then
    args+=(-H 'Content-Type: application/json' --data-binary "$body")
  fi
  STATUS=$(curl "${args[@]}" "$@" "$BASE$path" 2>"$TMP/curl.err")
  BODY=$(cat "$TMP/body" 2>/dev/null)
  HEADERS=$(cat "$TMP/headers" 2>/dev/null)
}

# expect_status CODE NAME - check the last api call's status.
expect_status() {
  if [ "$STATUS" = "$1" ]; then
    pass "$2"
  else
    fail "$2" "expected HTTP $1, got $STATUS: ${BODY:0:300}"
  fi
}

# expect_error CODE ERRCODE NAME - status plus {"error":{"code":ERRCODE}}.
expect_error() {
  local got
  got=$(printf '%s' "$BODY" | jq -r '.error.code' 2>/dev/null)
  if [ "$STATUS" = "$1" ] && [ "$got" = "$2" ]; then
    pass "$3"
  else
    fail "$3" "expected HTTP $1 $2, got $STATUS: ${BODY:0:300}"
  fi
}

# jget FILTER [JSON] - jq -r on the last body (or JSON).
jget() { printf '%s' "${2:-$BODY}" | jq -r "$1"; }

# make_token USER ROLE - create a token as admin, print its secret.
make_token() {
  api POST /v1/tokens "{\"user_id\":\"$1\",\"name\":\"$1\",\"email\":\"$1@example.com\",\"role\":\"${2:-user}\"}"
  jget .token
}

# new_session [JSON] [TOKEN] - create a session, print its id.
new_session() {
  local b=${1:-}
  [ -z "$b" ] && b='{}'
  api POST /v1/sessions "$b" "${2:-$ADMIN}"
  jget .id
}

# finish - end of the test program.
finish() {
  if [ "$FAILED" != 0 ]; then
    echo "# $FAILED failed; server log: $SERVER_LOG (kept in $TMP)" >&2
    tail -n 30 "$SERVER_LOG" >&2
    exit 1
  fi
  exit 0
}

# wait_event SID TYPE N [SECONDS] - poll the session's events until it has N events of TYPE
# (default 30 s); prints the Nth and returns 0, or returns 1. Leaves STATUS/BODY of the last
# GET.
wait_event() {
  local sid=$1 type=$2 n=$3 secs=${4:-30} i got
  for i in $(seq 1 $((secs * 20))); do
    api GET "/v1/sessions/$sid/events?limit=1000"
    got=$(jget "[.events[] | select(.type==\"$type\")] | length")
    if [ "$got" -ge "$n" ]; then
      jget "[.events[] | select(.type==\"$type\")][$((n - 1))]"
      return 0
    fi
    sleep 0.05
  done
  return 1
}

# wait_image REPO [SECONDS] - poll GET /v1/repos/REPO/images until the newest image is ready or
# failed (default 30 s); sets state to its state and leaves BODY with the list.
wait_image() {
  local i
  state=""
  for i in $(seq 1 $((${2:-30} * 10))); do
    api GET "/v1/repos/$1/images"
    state=$(jget '.images[0].state')
    [ "$state" = ready ] || [ "$state" = failed ] && return 0
    sleep 0.1
  done
}
