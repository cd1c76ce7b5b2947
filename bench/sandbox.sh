#!/usr/bin/env bash
# bench/sandbox.sh - the sandbox benchmark of issue 4 (figures for the report):
#   build/bench/sandbox    sandbox start p50/p99, exec `true` p50/p99, first output byte,
#                          pump throughput, 50 idle + 10 busy sandboxes (no HTTP, no SQLite)
#   bench/sandbox_ws.mjs   end to end through the server: prompt -> first agent.output on a
#                          WebSocket, sustained 100-byte-line output committed and received
#                          (MB/s), server RSS with 50 idle + 10 busy sandboxes
# Usage: bash bench/sandbox.sh [local|process]   (make bench builds build/bench/sandbox)
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
backend=${1:-local}
export SANDBOX_INIT_BIN=${SANDBOX_INIT_BIN:-$PWD/$BUILD/sandbox-init}
echo "== load: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
"$BUILD/bench/sandbox" "$backend" 200 2000
SESSIOND_BIN=${SESSIOND_BIN:-$PWD/$BUILD/sessiond} node bench/sandbox_ws.mjs "$backend" 500000
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"
