#!/usr/bin/env bash
# bench/pool.sh - session start paths of issue 5 on a generated repository (default 10,000
# files / 100 MiB of incompressible data): time from POST /v1/sessions {repo} (which starts
# the workspace and sandbox in the background) to `sandbox.ready`, per path (warm, image,
# snapshot, clone), and the snapshot / rollback times of that workspace (from the
# session.snapshot and session.rollback events).
#   bash bench/pool.sh [ROUNDS]   (default 9 warm starts; needs build/sessiond, git, node, jq,
#                                  and the `ws` package in tests/node_modules)
# Figures per start: "server" = the ms field of sandbox.ready (workspace prepare + sandbox
# creation, measured inside sessiond), "e2e" = wall clock from the POST of the session to the
# WebSocket frame carrying the event, seen by a warmed-up node client (bench/pool_start.mjs;
# POLL=1 polls GET …/events instead). An image start is ready once the files are restored: its
# sync to the branch head runs after, in the background (git.synced {ms}).
# SESSIOND_SANDBOX=local measures with bubblewrap sandboxes (default: process).
# POOL_BENCH_IMAGE_ROUNDS (default 3) image starts; the server's own breakdown of each (restore
# phases, image build fetch/checkout, workspaces recycled into spare inodes) is printed from its
# log. Each path reports p50, p90 (nearest rank) and max. POOL_BENCH_SNAP_ONLY=1 stops after the
# snapshots and the rollback. POOL_BENCH_LOG=FILE keeps a copy of the server's log;
# POOL_BENCH_PERF=FILE records `perf record -a -g` during turn 2; POOL_BENCH_PERF_IMAGE=FILE records
# `perf record -a -g -F 999` during the image starts.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
BIN=${SESSIOND_BIN:-$BUILD/sessiond}
ROUNDS=${1:-9}
FILES=${POOL_BENCH_FILES:-10000}
MIB=${POOL_BENCH_MIB:-100}
TMP=$(mktemp -d /tmp/sessiond-poolbench.XXXXXX)
TOKEN=bench_$RANDOM$RANDOM
cleanup() {
  [ -n "${SPID:-}" ] && kill "$SPID" 2>/dev/null
  wait 2>/dev/null
  [ -n "${POOL_BENCH_LOG:-}" ] && cp "$TMP/sessiond.log" "$POOL_BENCH_LOG" # keep the server log
  # session workspaces with a disk quota stay mounted after the server (sandbox/wsdisk.h)
  awk -v t="$TMP/" 'index($5, t) == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT
G="git -c user.name=Bench -c user.email=bench@example.com -c init.defaultBranch=main"

now_ms() { date +%s%3N; }
api() { # METHOD PATH [BODY]
  if [ -n "${3:-}" ]; then
    curl -s -X "$1" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
      --data-binary "$3" "$BASE$2"
  else
    curl -s -X "$1" -H "Authorization: Bearer $TOKEN" "$BASE$2"
  fi
}
# wait_ev SID TYPE N -> prints the Nth event of TYPE (polls every 2 ms, 300 s max)
wait_ev() {
  local i out
  for i in $(seq 1 150000); do
    out=$(api GET "/v1/sessions/$1/events?limit=1000" |
      jq -c "[.events[] | select(.type==\"$2\")][$(($3 - 1))] // empty")
    if [ -n "$out" ]; then echo "$out"; return 0; fi
    sleep 0.002
  done
  return 1
}
pct() { # p50 of numbers on stdin
  sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "-"}'
}
p90() { # p90 of numbers on stdin (nearest rank)
  sort -n | awk '{a[NR]=$1} END {if (NR) {i=int(NR*0.9+0.999); if (i>NR) i=NR; print a[i]} else print "-"}'
}

if [ -n "${POOL_BENCH_REMOTE:-}" ]; then # reuse a generated bare repository
  cp -a "$POOL_BENCH_REMOTE" "$TMP/remote.git" || exit 1
  echo "== reusing $POOL_BENCH_REMOTE ($(du -sm "$TMP/remote.git" | cut -f1) MiB packed)"
else
  echo "== generating $FILES files / $MIB MiB"
  t0=$(now_ms)
  mkdir -p "$TMP/seed"
  node -e '
  const fs = require("fs"), crypto = require("crypto");
  const [dir, files, mib] = [process.argv[1], +process.argv[2], +process.argv[3]];
  const mean = Math.floor(mib * 1048576 / files);
  for (let i = 0; i < files; i++) {
    const d = `${dir}/dir${String(i % 100).padStart(3, "0")}`;
    if (i < 100) fs.mkdirSync(d, {recursive: true});
    fs.writeFileSync(`${d}/file${String(i).padStart(5, "0")}.dat`,
                     crypto.randomBytes(Math.floor(Math.random() * 2 * mean)));
  }' "$TMP/seed" "$FILES" "$MIB"
  (cd "$TMP/seed" && $G init -q && $G add -A && $G commit -qm "generated" &&
    $G init -q --bare "$TMP/remote.git" && $G push -q "$TMP/remote.git" main) || exit 1
  echo "generated and committed in $(( $(now_ms) - t0 )) ms ($(du -sm "$TMP/remote.git" | cut -f1) MiB packed)"
fi

SESSIOND_SANDBOX=${SESSIOND_SANDBOX:-process} SESSIOND_ADMIN_TOKEN=$TOKEN "$BIN" \
  --listen 127.0.0.1:0 --port-file "$TMP/port" --data-dir "$TMP/data" --request-log false \
  --log-level info --repos-tick-ms 100 >>"$TMP/sessiond.log" 2>&1 &
SPID=$!
for _ in $(seq 200); do [ -s "$TMP/port" ] && break; sleep 0.05; done
BASE="http://127.0.0.1:$(cat "$TMP/port")"
echo "sessiond: $(api GET /healthz | jq -c .)"

api POST /v1/repos "{\"name\":\"big\",\"url\":\"$TMP/remote.git\",\"pool_size\":2,\"image_interval_min\":0}" >/dev/null
t0=$(now_ms)
api POST /v1/repos/big/images >/dev/null
for _ in $(seq 6000); do
  st=$(api GET /v1/repos/big/images | jq -r '.images[0].state')
  [ "$st" = ready ] || [ "$st" = failed ] && break
  sleep 0.05
done
IMG=$(api GET /v1/repos/big/images)
echo "image build (clone + snapshot): $(jq -r '.images[0].state' <<<"$IMG") in $(jq -r '.images[0].duration_ms' <<<"$IMG") ms (server), $(( $(now_ms) - t0 )) ms wall; $(jq -r '.images[0].files' <<<"$IMG") files"

wait_pool() { # N
  for _ in $(seq 3000); do
    [ "$(api POST /v1/repos/big/warm | jq -r .warm)" -ge "$1" ] && return 0
    sleep 0.05
  done
  return 1
}

start_one() { # REPO [SID] -> prints "source server_ms e2e_ms sid"
  echo "# load: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$TMP/loads"
  node bench/pool_start.mjs "$BASE" "$TOKEN" "$1" ${2:-} | jq -r '"\(.source) \(.server_ms) \(.e2e_ms) \(.sid)"'
}

report() { # NAME FILE
  printf '%-9s n=%-2s server p50 %4s ms (min %s, p90 %s, max %s)   e2e p50 %4s ms (min %s, p90 %s, max %s)   sources: %s  load %s\n' "$1" \
    "$(wc -l <"$2")" "$(cut -d' ' -f2 "$2" | pct)" "$(cut -d' ' -f2 "$2" | sort -n | head -1)" \
    "$(cut -d' ' -f2 "$2" | p90)" "$(cut -d' ' -f2 "$2" | sort -n | tail -1)" "$(cut -d' ' -f3 "$2" | pct)" \
    "$(cut -d' ' -f3 "$2" | sort -n | head -1)" "$(cut -d' ' -f3 "$2" | p90)" "$(cut -d' ' -f3 "$2" | sort -n | tail -1)" \
    "$(cut -d' ' -f1 "$2" | sort | uniq -c | tr -s ' ' | tr '\n' ' ')" "$(cut -d' ' -f1-3 /proc/loadavg)"
}

echo "== warm starts ($ROUNDS; the pool is refilled before each)"
: >"$TMP/warm"
for _ in $(seq "$ROUNDS"); do
  wait_pool 2 || { echo "pool did not fill"; break; }
  start_one big >>"$TMP/warm"
done
report warm "$TMP/warm"
FIRST_SID=$(head -1 "$TMP/warm" | cut -d' ' -f4)

echo "== snapshot and rollback of a warm workspace ($FILES files)"
api POST "/v1/sessions/$FIRST_SID/messages" '{"content":"true"}' >/dev/null # turn 1
S1=$(wait_ev "$FIRST_SID" session.snapshot 1)
echo "first snapshot (turn 1): $(jq -r .data.ms <<<"$S1") ms, $(jq -r .data.hashed <<<"$S1") files hashed"
# a prompt that rewrites 1% of the files
N1=$((FILES / 100))
if [ -n "${POOL_BENCH_PERF:-}" ]; then # system-wide profile of turn 2 (perf report -i FILE)
  perf record -q -a -g -o "$POOL_BENCH_PERF" 2>/dev/null &
  PERF_PID=$!
fi
api POST "/v1/sessions/$FIRST_SID/messages" "{\"content\":\"ls -d dir*/file*.dat | head -n $N1 | while read f; do head -c 4096 /dev/urandom > \$f; done\"}" >/dev/null
S2=$(wait_ev "$FIRST_SID" session.snapshot 2)
[ -n "${PERF_PID:-}" ] && kill -INT "$PERF_PID" && wait "$PERF_PID"
echo "snapshot after 1% changed (turn 2): $(jq -r .data.ms <<<"$S2") ms, $(jq -r .data.hashed <<<"$S2") files hashed"
# the server's breakdown of both snapshots (snap.c: lock, cache load, walk, hash, manifest...)
grep -o "snap: snap-[0-9]* of [^ ]*$FIRST_SID: [^\"]*" "$TMP/sessiond.log" | sed "s|$TMP/||; s/^/  log: /"
api POST "/v1/sessions/$FIRST_SID/rollback" '{"snapshot_id":"snap-000001"}' | jq -c '{copied,kept,removed,ms}' |
  sed 's/^/rollback to turn 1 (in place): /'
[ -n "${POOL_BENCH_SNAP_ONLY:-}" ] && exit 0 # only the warm starts and the snapshots

echo "== image starts (pool_size 0)"
api PATCH /v1/repos/big '{"pool_size":0}' >/dev/null
sleep 0.5
: >"$TMP/image"
if [ -n "${POOL_BENCH_PERF_IMAGE:-}" ]; then # system-wide profile of the image starts
  perf record -q -a -g -F 999 -o "$POOL_BENCH_PERF_IMAGE" 2>/dev/null &
  PERF_IMAGE_PID=$!
fi
for _ in $(seq "${POOL_BENCH_IMAGE_ROUNDS:-3}"); do
  start_one big >>"$TMP/image"
  sid=$(tail -1 "$TMP/image" | cut -d' ' -f4)
  if [ "$(tail -1 "$TMP/image" | cut -d' ' -f1)" != image ]; then
    # a warm sandbox left from before pool_size 0: not an image start, take another
    echo "  (a $(tail -1 "$TMP/image" | cut -d' ' -f1) start, not counted)"
    sed -i '$d' "$TMP/image"
    start_one big >>"$TMP/image"
    sid=$(tail -1 "$TMP/image" | cut -d' ' -f4)
  fi
  # the sync to the branch head (+ index refresh) runs after sandbox.ready; let it end
  echo "  background sync of $sid: $(wait_ev "$sid" git.synced 1 | jq -r .data.ms) ms"
  api POST "/v1/sessions/$sid/messages" '{"content":"true"}' >/dev/null # turn 1
  wait_ev "$sid" session.snapshot 1 >/dev/null
done
[ -n "${PERF_IMAGE_PID:-}" ] && kill -INT "$PERF_IMAGE_PID" && wait "$PERF_IMAGE_PID"
report image "$TMP/image"
grep -o 'repos: [^"]*\(image restore\|shared store\)[^"]*\|snap: discarded[^"]*' "$TMP/sessiond.log" |
  sed "s|$TMP/||; s/^/  log: /"
echo "  image: $(du -sm "$TMP/data/repos/big/images" | cut -f1) MiB in the image store, shared store $(du -sm "$TMP/data/repos/big/objects.git" 2>/dev/null | cut -f1) MiB"

echo "== snapshot starts (session ended, workspace gone, follow-up prompt)"
: >"$TMP/snap"
for line in $(cut -d' ' -f4 "$TMP/image" | head -3); do
  sid=$line
  wait_ev "$sid" session.snapshot 1 >/dev/null
  api DELETE "/v1/sessions/$sid" >/dev/null
  sleep 1
  # a workspace with a disk quota is a mount with its image next to it (sandbox/wsdisk.h)
  umount -l "$TMP/data/workspaces/$sid" 2>/dev/null
  rm -rf "$TMP/data/workspaces/$sid" "$TMP/data/workspaces/$sid.disk"
  start_one big "$sid" >>"$TMP/snap"
done
report snapshot "$TMP/snap"

echo "== clone starts (no image)"
api POST /v1/repos "{\"name\":\"bigclone\",\"url\":\"$TMP/remote.git\",\"pool_size\":0,\"image_interval_min\":0}" >/dev/null
: >"$TMP/clone"
for _ in $(seq 2); do start_one bigclone >>"$TMP/clone"; done
report clone "$TMP/clone"
