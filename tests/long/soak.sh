#!/usr/bin/env bash
# tests/long/soak.sh - `make soak`: SOAK_SECONDS (default 600) of 1,000 WebSocket clients over
# 100 sessions, steady comments and shell prompts, against the real server with the local
# sandbox; samples the server's RSS and open fds every 10 s and prints minute 2 against the
# end (within 10 % / +-5 is reported, not asserted). See tests/long/soak.mjs for the knobs.
# Not part of `make test`. Needs node and tests/node_modules (make test-deps).
set -u
cd "$(dirname "$0")/../.."
export SESSIOND_BIN=${SESSIOND_BIN:-$PWD/build/sessiond}
export SESSIOND_SANDBOX=local
# 1,000 client sockets in this process (the server raises its own limit).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536
exec node tests/long/soak.mjs
