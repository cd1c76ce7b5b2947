#!/usr/bin/env bash
# The Slack webhook's replay window against absurd timestamps: a correctly signed request whose
# X-Slack-Request-Timestamp is far in the past (INT64_MIN and near it) must be refused like
# any stale one. Its age was once computed as now - ts, which overflows for such values and
# came out negative, i.e. "fresh": a signed request with such a timestamp would be replayable
# forever. (Found by tests/fuzz/fuzz_slack.c.)
. "$(dirname "$0")/lib.sh"

SECRET="trust-ts-secret-$$"
export SESSIOND_SLACK_SIGNING_SECRET=$SECRET
start_server

# post TS BODY - a request signed with the right secret for timestamp TS; sets STATUS, BODY.
post() {
  local ts=$1 body=$2 sig
  sig="v0=$(printf 'v0:%s:%s' "$ts" "$body" | openssl dgst -sha256 -hmac "$SECRET" -r | cut -d' ' -f1)"
  BODY=$(curl -s -o - -w '\n%{http_code}' -X POST "$BASE/v1/slack/events" \
    -H 'Content-Type: application/json' -H "X-Slack-Request-Timestamp: $ts" \
    -H "X-Slack-Signature: $sig" --data-binary "$body")
  STATUS=${BODY##*$'\n'}
  BODY=${BODY%$'\n'*}
}

CH='{"type":"url_verification","challenge":"replayed"}'
post "$(date +%s)" "$CH"
check "a fresh signed request is accepted" [ "$STATUS" = 200 ]
post "$(( $(date +%s) - 301 ))" "$CH"
check "a stale signed request is refused" [ "$STATUS" = 401 ]
for ts in -9223372036854775808 -9223372036854775000 -9223372035000000000; do
  post "$ts" "$CH"
  check "signed request with timestamp $ts is refused (401)" [ "$STATUS" = 401 ]
  check "no challenge echoed for timestamp $ts" [ "${BODY#*replayed}" = "$BODY" ]
done
post 9223372036854775807 "$CH"
check "a signed request from the far future is refused" [ "$STATUS" = 401 ]
finish
