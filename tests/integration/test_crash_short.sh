#!/usr/bin/env bash
# test_crash_short.sh - the short crash loop: 3 SIGKILLs of the real server (local sandbox)
# in the middle of writes, WebSocket streaming, prompts, an exec and a snapshot; after each:
# every acknowledged message is there, seq has no gap, integrity_check is ok on every file,
# no sandbox process outlives the server, interrupted prompts fail and the queue resumes.
# `make crashloop` runs the same with 50 rounds (tests/long/crashloop.mjs).
cd "$(dirname "$0")/../.." || exit 1
CRASH_ROUNDS=${CRASH_ROUNDS:-3} CRASH_TAP=test_crash_short exec node tests/long/crashloop.mjs
