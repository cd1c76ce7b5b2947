#!/usr/bin/env bash
# bench/redact.sh - redaction overhead end to end: a prompt of the default (shell) agent prints
# MB megabytes of build-log lines in a repository session, with 0 and with N secrets configured
# for the repository; the output goes through the pump, the redactor, the agent output parser,
# the group commit into the session file and the hub. Reported: the server's CPU seconds for
# the prompt (utime + stime from /proc: the machine is shared, wall time is noisy) and the wall
# time, best of ROUNDS interleaved runs, and the ratio with/without secrets.
#   bash bench/redact.sh [MB] [N] [ROUNDS]      (defaults 50 10 3; needs build/, curl, jq)
# bench/redact.c measures the redactor alone against the event JSON it feeds.
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
MB=${1:-50}
N=${2:-10}
ROUNDS=${3:-3}
T=$(mktemp -d "${TMPDIR:-/tmp}/bench-redact.XXXXXX")
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$T"' EXIT
git -c init.defaultBranch=main init -q --bare "$T/r.git"
( git -c init.defaultBranch=main init -q "$T/seed" && cd "$T/seed" && echo x > README &&
  git -c user.name=b -c user.email=b@x add -A && git -c user.name=b -c user.email=b@x commit -qm i &&
  git push -q ../r.git main )
"$BUILD/sessiond" --listen 127.0.0.1:0 --port-file "$T/port" --data-dir "$T/data" --sandbox process \
  --secrets-key-file "$T/key" --max-prompt-output-bytes $(( (MB + 10) << 20 )) \
  --max-session-output-bytes $(( (MB + 10) << 21 )) --log-level warn >"$T/log" 2>&1 &
PID=$!
for i in $(seq 1 200); do [ -s "$T/port" ] && break; sleep 0.05; done
B="http://127.0.0.1:$(cat "$T/port")"
for i in $(seq 1 100); do curl -s -o /dev/null "$B/healthz" && break; sleep 0.05; done
A=$(cat "$T/data/admin.token")
api() { curl -s -X "$1" -H "Authorization: Bearer $A" -H 'Content-Type: application/json' "$B$2" ${3:+-d "$3"}; }
api POST /v1/repos "{\"name\":\"plain\",\"url\":\"$T/r.git\",\"pool_size\":0,\"image_interval_min\":0}" >/dev/null
api POST /v1/repos "{\"name\":\"secret\",\"url\":\"$T/r.git\",\"pool_size\":0,\"image_interval_min\":0}" >/dev/null
for i in $(seq 1 "$N"); do
  api PUT "/v1/repos/secret/secrets/TOKEN_$i" "{\"value\":\"npm_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')\"}" >/dev/null
done
cpu() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
HZ=$(getconf CLK_TCK)
LINE='npm warn deprecated inflight@1.0.6: This module is not supported; added 1203 packages in 12s src/index.ts'
PROMPT="yes '$LINE' | head -c $((MB << 20)); echo"
# one REPO - prints "cpu_seconds wall_seconds" for one prompt in a new session on REPO
one() {
  local sid c0 t0 done=""
  sid=$(api POST /v1/sessions "{\"repo\":\"$1\"}" | jq -r .id)
  api POST "/v1/sessions/$sid/exec" '{"argv":["true"]}' >/dev/null # sandbox up, workspace ready
  c0=$(cpu); t0=$(date +%s.%N)
  api POST "/v1/sessions/$sid/messages" "$(jq -n --arg c "$PROMPT" '{content:$c}')" >/dev/null
  # the shell agent's `done` becomes the assistant message: cheap to poll, unlike the events
  while [ -z "$done" ]; do
    done=$(api GET "/v1/sessions/$sid/messages" | jq -r '[.messages[] | select(.role=="assistant")] | length | select(. > 0)')
    [ -n "$done" ] || sleep 0.1
  done
  api GET "/v1/sessions/$sid/events?limit=1000" | jq -e '[.events[] | select(.type=="agent.truncated")] | length == 0' >/dev/null ||
    echo "bench/redact.sh: output was truncated" >&2
  echo "$(echo "($(cpu) - $c0) / $HZ" | bc -l) $(echo "$(date +%s.%N) - $t0" | bc -l)"
}
best() { sort -n | head -1; }
echo "== load: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores; $MB MB per prompt, $N secrets"
: >"$T/plain"; : >"$T/secret"
for r in $(seq 1 "$ROUNDS"); do
  one plain >>"$T/plain"
  one secret >>"$T/secret"
done
pc=$(cut -d' ' -f1 "$T/plain" | best); pw=$(cut -d' ' -f2 "$T/plain" | best)
sc=$(cut -d' ' -f1 "$T/secret" | best); sw=$(cut -d' ' -f2 "$T/secret" | best)
printf 'no secrets:   server CPU %.2f s, wall %.2f s (%.0f MB/s)\n' "$pc" "$pw" "$(echo "$MB / $pw" | bc -l)"
printf '%2d secrets:   server CPU %.2f s, wall %.2f s (%.0f MB/s)\n' "$N" "$sc" "$sw" "$(echo "$MB / $sw" | bc -l)"
printf 'overhead:     CPU x%.3f, wall x%.3f\n' "$(echo "$sc / $pc" | bc -l)" "$(echo "$sw / $pw" | bc -l)"
grep -c '"level":"error"' "$T/log" | sed 's/^/server errors logged: /'
