#!/usr/bin/env bash
# bench/run.sh - every benchmark, one after the other (`make bench`). Figures for the notes;
# nothing here asserts a time. Each part can also be run alone (see its header).
#   BENCH_SECONDS  duration of each timed scenario (default 10; the issues ask for 60 on ws)
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
S=${BENCH_SECONDS:-10}
echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg) (figures under contention are not comparable)"
echo "== storage ceiling (bench/store.c: no HTTP)"
"$BUILD"/bench/store 4 20000 1000 256
echo "== REST (bench/rest.sh)"
DUR=$S bash bench/rest.sh
echo "== WebSocket hub (bench/ws.sh)"
bash bench/ws.sh "$S"
echo "== sandbox (bench/sandbox.sh)"
bash bench/sandbox.sh local
echo "== repositories, pools, snapshots (bench/pool.sh)"
bash bench/pool.sh
