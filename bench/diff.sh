#!/usr/bin/env bash
# bench/diff.sh - GET /v1/sessions/{id}/diff on a generated repository of FILES text files
# (default 10,000, ~40 lines each) after one turn that edited CHANGED of them (default 100):
# wall time of the request (curl, keep-alive off), p50/p90/max over ROUNDS, beside two floors
# measured in the same run on the same tree: the git CLI's `git diff --stat <base>` (run as
# root on the workspace, trusting its config: what the endpoint must not do) and the server's
# GET /healthz round trip; and the server's own time for both (its request log).
#   bash bench/diff.sh [ROUNDS]    (default 15; needs build/sessiond, build/sessiond-git, git,
#                                   jq, curl; SESSIOND_SANDBOX=local for bubblewrap sandboxes)
# Target: < 200 ms for 10,000 files / 100 changed.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
BIN=${SESSIOND_BIN:-$BUILD/sessiond}
ROUNDS=${1:-15}
FILES=${DIFF_BENCH_FILES:-10000}
CHANGED=${DIFF_BENCH_CHANGED:-100}
TMP=$(mktemp -d /tmp/sessiond-diffbench.XXXXXX)
TOKEN=bench_$RANDOM$RANDOM
cleanup() {
  [ -n "${SPID:-}" ] && kill "$SPID" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT
G="git -c user.name=Bench -c user.email=bench@example.com -c init.defaultBranch=main"
now_us() { date +%s%6N; }
api() { # METHOD PATH [BODY]
  if [ -n "${3:-}" ]; then
    curl -s -X "$1" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
      --data-binary "$3" "$BASE$2"
  else
    curl -s -X "$1" -H "Authorization: Bearer $TOKEN" "$BASE$2"
  fi
}
stats() { # NAME < numbers (ms) -> "NAME p50 p90 max"
  sort -n | awk -v n="$1" '{a[NR]=$1} END {i=int(NR*0.9+0.999); if (i>NR) i=NR;
    printf "%-34s p50 %7.1f ms   p90 %7.1f ms   max %7.1f ms   (n=%d)\n", n, a[int((NR+1)/2)], a[i], a[NR], NR}'
}
timed() { # CMD... -> prints ms
  local t0
  t0=$(now_us)
  "$@" >/dev/null 2>&1
  echo "scale=1; ($(now_us) - $t0) / 1000" | bc
}

echo "== generating $FILES files"
mkdir -p "$TMP/seed"
(cd "$TMP/seed" && for d in $(seq -w 0 99); do mkdir -p "d$d"; done &&
  awk -v n="$FILES" 'BEGIN { for (i = 0; i < n; i++) { f = sprintf("d%02d/f%05d.txt", i % 100, i);
    for (l = 1; l <= 40; l++) print "line " l " of file " i > f; close(f) } }' &&
  $G init -q && $G add -A && $G commit -qm generated && $G init -q --bare "$TMP/remote.git" &&
  $G push -q "$TMP/remote.git" main) || exit 1

SESSIOND_SANDBOX=${SESSIOND_SANDBOX:-process} SESSIOND_ADMIN_TOKEN=$TOKEN "$BIN" \
  --listen 127.0.0.1:0 --port-file "$TMP/port" --data-dir "$TMP/data" --request-log true \
  --log-level info --repos-tick-ms 100 >>"$TMP/sessiond.log" 2>&1 &
SPID=$!
for _ in $(seq 200); do [ -s "$TMP/port" ] && break; sleep 0.05; done
BASE="http://127.0.0.1:$(cat "$TMP/port")"
api POST /v1/repos "{\"name\":\"big\",\"url\":\"$TMP/remote.git\",\"pool_size\":0,\"image_interval_min\":0}" >/dev/null
SID=$(api POST /v1/sessions '{"repo":"big"}' | jq -r .id)
for _ in $(seq 600); do
  api GET "/v1/sessions/$SID/events?limit=1000" | jq -e '.events[] | select(.type=="sandbox.ready")' >/dev/null && break
  sleep 0.1
done
# one turn edits CHANGED files (one line each: the end-of-turn commit makes them the branch)
SCRIPT="for i in \$(seq 0 $((CHANGED - 1))); do n=\$((i * ($FILES / $CHANGED))); f=\$(printf 'd%02d/f%05d.txt' \$((n % 100)) \$n); sed -i 's/^line 7 /LINE 7 /' \$f; done"
api POST "/v1/sessions/$SID/messages" "$(jq -c -n --arg c "$SCRIPT" '{content:$c}')" >/dev/null
for _ in $(seq 600); do
  api GET "/v1/sessions/$SID/events?limit=1000" | jq -e '.events[] | select(.type=="git.commit")' >/dev/null && break
  sleep 0.1
done
D=$(api GET "/v1/sessions/$SID/diff")
WS="$TMP/data/workspaces/$SID"
BASE_SHA=$(jq -r .base <<<"$D")
echo "workspace: $(git -c safe.directory='*' -C "$WS" ls-files | wc -l) tracked files; diff: $(jq '.files | length' <<<"$D") files, +$(jq .additions <<<"$D") -$(jq .deletions <<<"$D"), $(jq -r .diff <<<"$D" | wc -c) bytes of text, truncated $(jq .truncated <<<"$D")"

for _ in $(seq "$ROUNDS"); do
  timed curl -s -H "Authorization: Bearer $TOKEN" "$BASE/v1/sessions/$SID/diff" >>"$TMP/diff"
  timed curl -s -H "Authorization: Bearer $TOKEN" "$BASE/v1/sessions/$SID/diff?against=head" >>"$TMP/head"
  timed curl -s -H "Authorization: Bearer $TOKEN" "$BASE/v1/sessions/$SID/diff?path=d00/f00000.txt" >>"$TMP/path"
  timed git -c safe.directory='*' -C "$WS" diff --stat "$BASE_SHA" >>"$TMP/git"
  timed git -c safe.directory='*' -C "$WS" diff "$BASE_SHA" >>"$TMP/gitp"
  timed curl -s "$BASE/healthz" >>"$TMP/hz"
done
echo "== $ROUNDS rounds, $FILES files, $CHANGED changed (sandbox ${SESSIOND_SANDBOX:-process})"
stats "GET /diff (against base)" <"$TMP/diff"
stats "GET /diff?against=head" <"$TMP/head"
stats "GET /diff?path=<one file>" <"$TMP/path"
stats "floor: git diff --stat <base> (CLI)" <"$TMP/git"
stats "floor: git diff <base> (CLI)" <"$TMP/gitp"
stats "floor: GET /healthz (curl)" <"$TMP/hz"
# the server's own time for the same requests (its request log: accept to reply queued)
grep -F "\"path\":\"/v1/sessions/$SID/diff\"" "$TMP/sessiond.log" | tail -n "$ROUNDS" |
  jq -r '.us / 1000' | stats "server: GET /diff (against base)"
grep -F '"path":"/healthz"' "$TMP/sessiond.log" | tail -n "$ROUNDS" | jq -r '.us / 1000' |
  stats "server: GET /healthz"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
