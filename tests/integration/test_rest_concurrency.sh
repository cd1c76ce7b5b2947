#!/usr/bin/env bash
# Concurrent writers to one session: 8 parallel curl loops post messages (keep-alive, each
# loop on its own connection) while a reader polls; afterwards the events are exactly
# seq 1..N with no gap and no duplicate, every acknowledged seq is present once, and every
# message appears exactly once. Also graceful shutdown while writers are running.
. "$(dirname "$0")/lib.sh"
start_server --threads 4

SID=$(new_session '{"title":"busy"}')
W=8
PER=60
PIDS=()
for w in $(seq 1 $W); do
  (
    cfg="$TMP/curl.$w"
    : >"$cfg"
    for i in $(seq 1 $PER); do
      [ "$i" -gt 1 ] && echo next >>"$cfg"
      printf 'url = "%s/v1/sessions/%s/messages"\nrequest = "POST"\nheader = "Authorization: Bearer %s"\nheader = "Content-Type: application/json"\ndata = "{\\"content\\":\\"w%s-%s\\",\\"run\\":false}"\nwrite-out = "%%{http_code} "\noutput = "/dev/null"\n' \
        "$BASE" "$SID" "$ADMIN" "$w" "$i" >>"$cfg"
    done
    curl -s -K "$cfg" >"$TMP/codes.$w"
  ) &
  PIDS+=($!)
done
# a reader polling events while the writers run
(
  for i in $(seq 1 20); do curl -s -H "Authorization: Bearer $ADMIN" "$BASE/v1/sessions/$SID/events?limit=1000" -o /dev/null; done
) &
PIDS+=($!)
wait "${PIDS[@]}" # not a bare `wait`: the server is a child too
N=$((W * PER))
check "all $N posts answered 202" [ "$(cat "$TMP"/codes.* | tr ' ' '\n' | grep -c '^202$')" = "$N" ]
ALL="$TMP/all.json"
echo '[]' >"$ALL"
AFTER=0
while :; do
  api GET "/v1/sessions/$SID/events?after=$AFTER&limit=1000"
  printf '%s' "$BODY" | jq '.events' >"$TMP/page.json"
  jq -s '.[0] + .[1]' "$ALL" "$TMP/page.json" >"$TMP/merged.json" && mv "$TMP/merged.json" "$ALL"
  [ "$(jget .has_more)" = true ] || break
  AFTER=$(jget .next_after)
done
TOTAL=$((N + 1))
check "events are seq 1..$TOTAL, no gap, no duplicate" [ "$(jq "[.[].seq] == [range(1; $TOTAL + 1)]" "$ALL")" = true ]
check "every message stored exactly once" [ "$(jq '[.[] | select(.type=="message") | .data.content] | unique | length' "$ALL")" = "$N" ]
OK_ORDER=1
for w in $(seq 1 $W); do
  [ "$(jq -r --arg w "w$w-" '[.[] | select(.type=="message") | .data.content | select(startswith($w)) | ltrimstr($w) | tonumber] | . == (sort)' "$ALL")" = true ] || OK_ORDER=0
done
check "each writer's messages are in its own order" [ "$OK_ORDER" = 1 ]
api GET "/v1/sessions/$SID/messages?limit=1000"
check "messages rows carry the seq of their event" [ "$(jget '[.messages[].seq] | (. == (sort)) and (length == '"$N"')')" = true ]

# ---- SIGTERM while writers run: acknowledged writes are all there after restart ----
SID2=$(new_session '{"title":"shutdown"}')
PIDS2=()
for w in 1 2 3 4; do
  (
    for i in $(seq 1 200); do
      code=$(curl -s -o "$TMP/r.$w" -w '%{http_code}' -X POST -H "Authorization: Bearer $ADMIN" \
        -H 'Content-Type: application/json' -d "{\"content\":\"s$w-$i\",\"run\":false}" \
        "$BASE/v1/sessions/$SID2/messages")
      [ "$code" = 202 ] && jq -r .seq "$TMP/r.$w" >>"$TMP/acked.$w"
      [ "$code" = 000 ] && break
    done
  ) &
  PIDS2+=($!)
done
sleep 0.7
stop_server TERM
wait "${PIDS2[@]}"
check "graceful stop during writes exits 0" [ "$STOP_RC" = 0 ]
start_server
api GET "/v1/sessions/$SID2/events?limit=1000"
ACKED=$(cat "$TMP"/acked.* 2>/dev/null | sort -n | uniq | wc -l)
HAVE=$(jget '[.events[] | select(.type=="message")] | length')
check "every acknowledged write survived the stop ($ACKED acked, $HAVE stored)" [ "$ACKED" -gt 0 -a "$HAVE" -ge "$ACKED" ]
check "no gap after the stop" [ "$(jget '[.events[].seq] == [range(1; (.events|length)+1)]')" = true ]
finish
