#!/usr/bin/env bash
# test_trust_token_expiry.sh - a token stops working at its expires_at, also while the server's
# token cache (server/auth.c, AUTH_CACHE_TTL_MS) still holds its owner.
# Attack performed against the real server: mint a token with expires_in=3, first use it
# well before the expiry (that fills the cache entry, which lives 1 s), then keep calling GET /v1/me
# past the expiry. Every request sent after expires_at must be 401; before the fix the cached
# entry answered 200 for up to ~600 ms after the token had expired.
. "$(dirname "$0")/lib.sh"

now_ms() { date +%s%3N; }

start_server

api POST /v1/tokens '{"user_id":"shorty","name":"Shorty","role":"user","expires_in":3}'
expect_status 201 "a token that expires in three seconds is minted"
SECRET=$(jget .token)
EXP_ISO=$(jget .expires_at)
EXP_MS=$(date -d "$EXP_ISO" +%s%3N)
check "the expiry is seconds away" [ $((EXP_MS - $(now_ms))) -gt 1500 ]

# Fill the cache late in the token's life (the cache entry lives 1 s), then cross its expiry
# with requests. Seconds of margin: a loaded machine delays the first request.
sleep 1.6
ok_before=0
ok_after=0
denied_after=0
while :; do
  t=$(now_ms)
  [ "$t" -gt $((EXP_MS + 700)) ] && break
  api GET /v1/me "" "$SECRET"
  if [ "$t" -le "$EXP_MS" ]; then
    [ "$STATUS" = 200 ] && ok_before=$((ok_before + 1))
  elif [ "$STATUS" = 200 ]; then
    ok_after=$((ok_after + 1))
    echo "# GET /v1/me answered 200 $((t - EXP_MS)) ms after the token expired" >&2
  else
    denied_after=$((denied_after + 1))
  fi
  sleep 0.03
done
check "the token worked before its expiry (the cache was filled)" [ "$ok_before" -gt 0 ]
check "no request sent after the expiry was accepted" [ "$ok_after" = 0 ]
check "requests after the expiry were refused" [ "$denied_after" -gt 0 ]
api GET /v1/me "" "$SECRET"
expect_error 401 unauthorized "the expired token is refused"

finish
