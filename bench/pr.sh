#!/usr/bin/env bash
# bench/pr.sh - prompt end -> pull request, against tests/integration/fake_github.mjs on
# loopback (the GitHub App's JWT and installation token, git's smart HTTP through
# `git http-backend`, the pull request API).
#   bash bench/pr.sh [N]   (default 20; needs build/sessiond, git, node, jq, openssl)
# Opened: N sessions of a repository with `pr: draft`, one prompt each that writes a file; the
# figure is prompt.completed -> pr.created of each session (both event timestamps, taken by the
# server when it commits them). Updated: one session, N more prompts; prompt.completed ->
# pr.updated of each (the push + GET + PATCH of the existing pull request). Floors: the fake's
# bare round trip for one pull request call (GET …/pulls/1, curl from here) and GET /healthz.
# The bare push of git's own client to the fake is the floor of the push step.
# Each is reported as p50, p90 (nearest rank) and max, in ms.
set -u
cd "$(dirname "$0")/.."
BIN=${SESSIOND_BIN:-build/sessiond}
N=${1:-20}
TMP=$(mktemp -d /tmp/sessiond-prbench.XXXXXX)
TOKEN=bench_$RANDOM$RANDOM
cleanup() {
  [ -n "${SPID:-}" ] && kill "$SPID" 2>/dev/null
  [ -n "${FPID:-}" ] && kill "$FPID" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT
G="git -c user.name=Bench -c user.email=bench@example.com -c init.defaultBranch=main"

api() { # METHOD PATH [BODY] -> body on stdout
  curl -s -X "$1" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    ${3:+--data-binary "$3"} "$BASE$2"
}
ts_ms() { date -d "$1" +%s%3N; }
# stats: read numbers (one a line), print "p50 X p90 Y max Z (n)"
stats() {
  sort -n | awk '{a[NR]=$1} END {if (!NR) {print "no samples"; exit}
    p50=a[int((NR*50+99)/100)]; p90=a[int((NR*90+99)/100)];
    printf "p50 %d  p90 %d  max %d ms  (n=%d)\n", p50, p90, a[NR], NR}'
}
# wait_type SID TYPE COUNT: the COUNT-th event of TYPE (JSON), polling for 30 s
wait_type() {
  local i e
  for i in $(seq 1 600); do
    e=$(api GET "/v1/sessions/$1/events?limit=1000" | jq -c "[.events[] | select(.type==\"$2\")][$(($3 - 1))] // empty")
    [ -n "$e" ] && { echo "$e"; return 0; }
    sleep 0.05
  done
  return 1
}

mkdir -p "$TMP/git/octo"
( cd "$TMP" && $G init -q --bare git/octo/hello.git && $G init -q seed && cd seed &&
  echo hello > README && $G add -A && $G commit -qm init && $G push -q ../git/octo/hello.git main ) || exit 1
openssl genrsa -out "$TMP/app.pem" 2048 2>/dev/null && chmod 600 "$TMP/app.pem" &&
  openssl rsa -in "$TMP/app.pem" -pubout -out "$TMP/app.pub" 2>/dev/null || exit 1
node tests/integration/fake_github.mjs --port-file "$TMP/fake.port" --public-key "$TMP/app.pub" \
  --app-id 4242 --git-root "$TMP/git" --installed octo=77 --user-token ghp_bench 2>/dev/null &
FPID=$!
for i in $(seq 1 100); do [ -s "$TMP/fake.port" ] && break; sleep 0.05; done
FAKE="http://127.0.0.1:$(cat "$TMP/fake.port")"

SESSIOND_ADMIN_TOKEN=$TOKEN SESSIOND_SANDBOX=${SESSIOND_SANDBOX:-process} "$BIN" \
  --listen 127.0.0.1:0 --port-file "$TMP/port" --data-dir "$TMP/data" --repos-tick-ms 1000 \
  --github-api-base "$FAKE/api/v3" --github-app-id 4242 --github-app-key-file "$TMP/app.pem" \
  >"$TMP/sessiond.log" 2>&1 &
SPID=$!
for i in $(seq 1 200); do [ -s "$TMP/port" ] && break; sleep 0.05; done
BASE="http://127.0.0.1:$(cat "$TMP/port")"
api POST /v1/repos "{\"name\":\"hello\",\"url\":\"$FAKE/octo/hello.git\",\"pool_size\":0,\"image_interval_min\":0,\"pr\":\"draft\"}" >/dev/null

echo "bench/pr.sh: $N prompts, fake GitHub on loopback, sandbox ${SESSIOND_SANDBOX:-process}"
: >"$TMP/opened"
for k in $(seq 1 "$N"); do
  SID=$(api POST /v1/sessions '{"repo":"hello"}' | jq -r .id)
  wait_type "$SID" sandbox.ready 1 >/dev/null || { echo "no sandbox.ready"; exit 1; }
  api POST "/v1/sessions/$SID/messages" "{\"content\":\"echo $k > file$k.txt\"}" >/dev/null
  C=$(wait_type "$SID" prompt.completed 1) || { echo "no prompt.completed"; exit 1; }
  P=$(wait_type "$SID" pr.created 1) || { echo "no pr.created in $SID"; tail -n 5 "$TMP/sessiond.log"; exit 1; }
  GC=$(wait_type "$SID" git.commit 1)
  GP=$(wait_type "$SID" git.pushed 1)
  tc=$(ts_ms "$(jq -r .ts <<<"$C")") tg=$(ts_ms "$(jq -r .ts <<<"$GC")")
  tp=$(ts_ms "$(jq -r .ts <<<"$GP")") tr=$(ts_ms "$(jq -r .ts <<<"$P")")
  echo $((tr - tc)) >>"$TMP/opened"
  echo $((tg - tc)) >>"$TMP/s_commit"
  echo $((tp - tg)) >>"$TMP/s_push"
  echo $((tr - tp)) >>"$TMP/s_api"
done
printf 'prompt end -> pull request opened:  '
stats <"$TMP/opened"
printf '  of which prompt end -> git.commit: '
stats <"$TMP/s_commit"
printf '  git.commit -> git.pushed:          '
stats <"$TMP/s_push"
printf '  git.pushed -> pr.created:          '
stats <"$TMP/s_api"

: >"$TMP/updated"
for k in $(seq 1 "$N"); do
  api POST "/v1/sessions/$SID/messages" "{\"content\":\"echo more$k > more$k.txt\"}" >/dev/null
  C=$(wait_type "$SID" prompt.completed $((k + 1))) || { echo "no prompt.completed"; exit 1; }
  P=$(wait_type "$SID" pr.updated "$k") || { echo "no pr.updated"; exit 1; }
  echo $(($(ts_ms "$(jq -r .ts <<<"$P")") - $(ts_ms "$(jq -r .ts <<<"$C")"))) >>"$TMP/updated"
done
printf 'prompt end -> pull request updated: '
stats <"$TMP/updated"

: >"$TMP/floor_gh"
: >"$TMP/floor_hz"
for k in $(seq 1 "$N"); do
  curl -s -o /dev/null -w '%{time_total}\n' -H 'Authorization: Bearer ghp_bench' \
    "$FAKE/api/v3/repos/octo/hello/pulls/1" | awk '{printf "%d\n", $1 * 1000 + 0.5}' >>"$TMP/floor_gh"
  curl -s -o /dev/null -w '%{time_total}\n' "$BASE/healthz" |
    awk '{printf "%d\n", $1 * 1000 + 0.5}' >>"$TMP/floor_hz"
done
# the bare push: git's own client pushing a one-file commit to the fake (same http-backend)
git clone -q "http://x-access-token:ghp_bench@${FAKE#http://}/octo/hello.git" "$TMP/cli" 2>/dev/null
: >"$TMP/floor_push"
for k in $(seq 1 "$N"); do
  ( cd "$TMP/cli" && echo "$k" >"cli$k.txt" && $G add -A && $G commit -qm "cli $k" &&
    t0=$(date +%s%3N) && git push -q origin HEAD:refs/heads/cli 2>/dev/null &&
    echo $(($(date +%s%3N) - t0)) ) >>"$TMP/floor_push"
done
printf 'floor: git CLI push to the fake:    '
stats <"$TMP/floor_push"
printf 'floor: fake GitHub GET pulls/1:     '
stats <"$TMP/floor_gh"
printf 'floor: GET /healthz:                '
stats <"$TMP/floor_hz"
grep -o '"msg":"repos: session [^"]*ms after the prompt ended"' "$TMP/sessiond.log" | tail -n 3
