#!/usr/bin/env bash
# Durability across restarts: graceful restart, SIGKILL after acknowledged writes, a session
# file written by the previous schema (v1) opening and migrating, a file from a newer build
# being refused, and the LRU of open session files closing and reopening sessions.
. "$(dirname "$0")/lib.sh"
start_server --max-open-sessions 2

USER=$(make_token pat user)
SID=$(new_session '{"title":"durable"}' "$USER")
for i in $(seq 1 20); do
  api POST "/v1/sessions/$SID/messages" "{\"content\":\"message $i\",\"run\":false}" "$USER"
done
api POST "/v1/sessions/$SID/artifacts" '{"type":"log","content":"build ok"}' "$USER"
AID=$(jget .id)
api GET "/v1/sessions/$SID/events?limit=1000" "" "$USER"
BEFORE=$BODY
check "22 events before restart" [ "$(jget '.events | length')" = 22 ]

# ---- graceful restart ----
restart_server
check "SIGTERM stop exits 0" [ "$STOP_RC" = 0 ]
check "log says it stopped cleanly" grep -q '"msg":"main: stopped"' "$SERVER_LOG"
api GET "/v1/sessions/$SID/events?limit=1000" "" "$USER"
check "same events after restart" [ "$BODY" = "$BEFORE" ]
api GET "/v1/me" "" "$USER"
check "user token survives restart" [ "$STATUS" = 200 ]
check "admin token file reused" [ "$(cat "$DATA_DIR/admin.token")" = "$ADMIN" ]
check "admin token file is 0600" [ "$(stat -c %a "$DATA_DIR/admin.token")" = 600 ]
api GET "/v1/sessions/$SID/artifacts/$AID" "" "$USER"
check "artifact survives restart" [ "$BODY" = "build ok" ]

# ---- SIGKILL after acknowledged writes ----
ACKED=0
for i in $(seq 1 30); do
  api POST "/v1/sessions/$SID/messages" "{\"content\":\"acked $i\",\"run\":false}" "$USER"
  [ "$STATUS" = 202 ] && ACKED=$((ACKED + 1))
done
ACK_SEQ=$(jget .seq)
stop_server KILL
start_server
api GET "/v1/sessions/$SID/events?after=22&limit=1000" "" "$USER"
check "every acknowledged message survives SIGKILL" [ "$ACKED" = 30 -a "$(jget '[.events[] | select(.type=="message")] | length')" = 30 -a "$(jget '.events[-1].seq')" = "$ACK_SEQ" ]
api POST "/v1/sessions/$SID/messages" '{"content":"after kill","run":false}' "$USER"
check "seq continues without a gap after SIGKILL" [ "$(jget .seq)" = $((ACK_SEQ + 1)) ]

# ---- migration from a v1 session file ----
OLD=$(new_session '{"title":"old file"}' "$USER")
stop_server
MIG="$(cd "$(dirname "$0")/../.." && pwd)/migrations/session/0001_init.sql"
rm -f "$DATA_DIR/sessions/$OLD.db" "$DATA_DIR/sessions/$OLD.db-wal" "$DATA_DIR/sessions/$OLD.db-shm"
sqlite3 "$DATA_DIR/sessions/$OLD.db" <<EOF
$(cat "$MIG")
INSERT INTO events(seq,type,data_json,author_id,author_name,created_at) VALUES
  (1,'session.created','{"title":"old file"}','token:pat','pat',1700000000000),
  (2,'message','{"message_id":"m_old","prompt_id":null,"role":"user","content":"from v1"}','token:pat','pat',1700000000001);
INSERT INTO messages(id,role,content,author_id,author_name,seq,created_at) VALUES
  ('m_old','user','from v1','token:pat','pat',2,1700000000001);
PRAGMA user_version=1;
EOF
check "fixture is a v1 file" [ "$(sqlite3 "$DATA_DIR/sessions/$OLD.db" 'PRAGMA user_version')" = 1 ]
start_server
api GET "/v1/sessions/$OLD/events" "" "$USER"
check "v1 file opens: its events are served" [ "$STATUS" = 200 -a "$(jget '.events | length')" = 2 -a "$(jget '.events[1].data.content')" = "from v1" ]
api GET "/v1/sessions/$OLD/messages" "" "$USER"
check "v1 messages are served" [ "$(jget '.messages[0].content')" = "from v1" ]
api POST "/v1/sessions/$OLD/messages" '{"content":"on the new schema"}' "$USER"
check "a write to the migrated file continues the seq" [ "$STATUS" = 202 -a "$(jget .seq)" = 3 ]
api DELETE "/v1/sessions/$OLD" "" "$USER"
expect_status 200 "end a migrated session (uses the v2 meta table)"
stop_server
LATEST=$(ls "$(dirname "$MIG")" | sed -n 's/^0*\([0-9][0-9]*\)_.*\.sql$/\1/p' | sort -n | tail -1)
check "the file was migrated to the latest version" [ "$(sqlite3 "$DATA_DIR/sessions/$OLD.db" 'PRAGMA user_version')" = "$LATEST" ]

# ---- a file from a newer build is refused, the rest keeps working ----
NEW=$SID
sqlite3 "$DATA_DIR/sessions/$NEW.db" 'PRAGMA user_version=999'
start_server
api GET "/v1/sessions/$NEW/events" "" "$USER"
check "a newer file is refused with a 5xx error" [ "${STATUS:0:1}" = 5 -a "$(jget '.error.code')" != null ]
check "the newer file was not modified" [ "$(sqlite3 "$DATA_DIR/sessions/$NEW.db" 'PRAGMA user_version')" = 999 ]
api GET "/v1/sessions/$OLD/events" "" "$USER"
expect_status 200 "other sessions still served"

# ---- LRU: 8 sessions through a cache of 2 ----
IDS=()
for i in $(seq 1 8); do IDS+=("$(new_session "{\"title\":\"lru $i\"}" "$USER")"); done
for round in 1 2 3; do
  for id in "${IDS[@]}"; do
    api POST "/v1/sessions/$id/messages" "{\"content\":\"round $round\",\"run\":false}" "$USER"
  done
done
OKSEQ=1
for id in "${IDS[@]}"; do
  api GET "/v1/sessions/$id/events" "" "$USER"
  [ "$(jget '[.events[].seq] | join(",")')" = "1,2,3,4" ] || OKSEQ=0
  [ "$(jget '[.events[] | select(.type=="message") | .data.content] | join(",")')" = "round 1,round 2,round 3" ] || OKSEQ=0
done
check "sessions closed and reopened by the LRU keep every event in order" [ "$OKSEQ" = 1 ]
OPEN_DB=$(ls -l /proc/"$SERVER_PID"/fd 2>/dev/null | grep -c '/sessions/.*\.db$')
check "at most 2 session files open (max_open_sessions=2), got $OPEN_DB" [ "$OPEN_DB" -le 2 ]

stop_server
check "final SIGTERM exits 0" [ "$STOP_RC" = 0 ]
finish
