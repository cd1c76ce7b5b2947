#!/usr/bin/env bash
# The data dir and what is in it are private to the server's user: registry.db (token
# hashes), spool.db and the session files (every message) used to be created 0644, their
# -wal/-shm likewise, and an existing data dir (an image's `mkdir /data` is 0755) was left
# world-readable. Run with the usual umask 022, as a service would be.
. "$(dirname "$0")/lib.sh"
umask 022
mkdir -p "$DATA_DIR"
chmod 0755 "$DATA_DIR"
start_server

mode() { stat -c %a "$1"; }
# 0700, or 0710 once the local sandbox granted search to its own group
private_dir() { case $(mode "$1") in 700 | 710) return 0 ;; esac; return 1; }
check "an existing 0755 data dir is tightened (now $(mode "$DATA_DIR"))" private_dir "$DATA_DIR"
check "... and the log says so" grep -q 'data_dir .* was mode 0755, now 0710' "$SERVER_LOG"

SID=$(new_session '{"title":"secret plans"}')
api POST "/v1/sessions/$SID/messages" '{"content":"the launch code is 1234"}'
expect_status 202 "a message is stored"
api GET "/v1/sessions/$SID/messages"

bad=""
while IFS= read -r f; do
  m=$(mode "$f")
  [ "$m" = 600 ] || bad="$bad ${f#"$DATA_DIR"/}=$m"
done < <(find "$DATA_DIR" -type f \( -name '*.db' -o -name '*.db-wal' -o -name '*.db-shm' \))
check "registry.db exists" [ -f "$DATA_DIR/registry.db" ]
check "spool.db exists" [ -f "$DATA_DIR/spool.db" ]
check "a session file exists" [ -n "$(find "$DATA_DIR" -path "*$SID*" -name '*.db' | head -1)" ]
check "every database file and its -wal/-shm is 0600 (bad:${bad:-none})" [ -z "$bad" ]
for f in secrets.key admin.token; do
  [ -f "$DATA_DIR/$f" ] && check "$f is 0600" [ "$(mode "$DATA_DIR/$f")" = 600 ]
done
check "the data dir has no bit for others" [ "$(( 0$(mode "$DATA_DIR") & 07 ))" = 0 ]

# A registry left 0644 by an older version is made private at the next start.
stop_server
chmod 0644 "$DATA_DIR/registry.db" "$DATA_DIR/spool.db"
chmod 0755 "$DATA_DIR"
start_server
check "an old 0644 registry.db is made 0600" [ "$(mode "$DATA_DIR/registry.db")" = 600 ]
check "an old 0644 spool.db is made 0600" [ "$(mode "$DATA_DIR/spool.db")" = 600 ]
check "the data dir is tightened again" private_dir "$DATA_DIR"
api GET "/v1/sessions/$SID/messages"
check "the session is still readable" grep -q 'launch code' <<<"$BODY"
finish
