#!/usr/bin/env bash
# tests/long/crashloop.sh - `make crashloop`: CRASH_ROUNDS (default 50) SIGKILLs of the real
# server (local sandbox) during writes, WebSocket streaming, a running prompt, an exec and a
# snapshot; after each: no acknowledged message lost, no seq gap, integrity_check ok, no
# orphaned sandbox, the interrupted prompt failed and the queue resumed (tests/long/crashloop.mjs).
# Not part of `make test` (test_crash_short.sh runs 3 rounds there). Needs node, sqlite3 and
# tests/node_modules (make test-deps).
set -u
cd "$(dirname "$0")/../.."
export SESSIOND_BIN=${SESSIOND_BIN:-$PWD/build/sessiond}
exec node tests/long/crashloop.mjs
