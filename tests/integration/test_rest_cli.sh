#!/usr/bin/env bash
# The command line: --help, --version, bad options, config file + env + flag precedence,
# SESSIOND_ADMIN_TOKEN, --listen 127.0.0.1:0 with --port-file, the bound port in the log.
. "$(dirname "$0")/lib.sh"

OUT=$("$SESSIOND_BIN" --help)
check "--help exits 0 and documents flags and env vars" bash -c '[[ "$1" == *"--listen"* && "$1" == *"SESSIOND_DATA_DIR"* && "$1" == *"--max-open-sessions"* ]]' _ "$OUT"
check "--version" bash -c '"$1" --version | grep -Eq "^sessiond [0-9]+\.[0-9]+"' _ "$SESSIOND_BIN"
"$SESSIOND_BIN" --no-such-option >/dev/null 2>"$TMP/err"
RC=$?
check "unknown option exits 2 with a message" bash -c '[ "$1" = 2 ] && grep -q no-such-option "$2"' _ "$RC" "$TMP/err"
"$SESSIOND_BIN" --threads lots >/dev/null 2>"$TMP/err"
check "bad value exits 2" [ $? = 2 ]
SESSIOND_MAX_BODY=huge "$SESSIOND_BIN" >/dev/null 2>"$TMP/err"
RC=$?
check "bad env value exits 2 naming the variable" bash -c '[ "$1" = 2 ] && grep -q SESSIOND_MAX_BODY "$2"' _ "$RC" "$TMP/err"
echo '{"listen": 8080}' >"$TMP/bad.json"
"$SESSIOND_BIN" --config "$TMP/bad.json" >/dev/null 2>"$TMP/err"
check "config file with a wrong type is refused" [ $? = 2 ]

# config file < env < flag; admin token from the environment
cat >"$TMP/sessiond.json" <<JSON
{"max_unfinished_prompts": 1, "max_content_chars": 5, "threads": 2, "request_log": false,
 "origins": ["https://app.example"]}
JSON
export SESSIOND_ADMIN_TOKEN=sk_env_admin_token_for_tests
export SESSIOND_MAX_CONTENT_CHARS=8
start_server --config "$TMP/sessiond.json" --max-content-chars 10
check "admin token from SESSIOND_ADMIN_TOKEN" [ "$ADMIN" = sk_env_admin_token_for_tests ]
api GET /v1/me
check "env admin token authenticates" [ "$STATUS" = 200 -a "$(jget .role)" = admin ]
check "no admin.token file when the env sets it" [ ! -e "$DATA_DIR/admin.token" ]
check "the bound port is in the log" grep -q "\"msg\":\"main: listening on 127.0.0.1:0 (port $PORT)" "$SERVER_LOG"
check "the admin secret is not in the log" bash -c "! grep -q sk_env_admin_token_for_tests '$SERVER_LOG'"
SID=$(new_session)
api POST "/v1/sessions/$SID/messages" '{"content":"0123456789","run":false}'
expect_status 202 "flag beats env (10 chars allowed)"
api POST "/v1/sessions/$SID/messages" '{"content":"0123456789A","run":false}'
expect_error 413 too_large "cap from the flag applies"
check "request_log false from the file" bash -c "! grep -q '\"msg\":\"http: request\"' '$SERVER_LOG'"
api GET /healthz "" - -H "Origin: https://app.example"
check "origins from the file allow CORS" grep -qi '^access-control-allow-origin: https://app.example' <<<"$HEADERS"
api OPTIONS "/v1/sessions/$SID/messages" "" - -H "Origin: https://app.example" -H "Access-Control-Request-Method: POST"
check "preflight for an allowed origin" bash -c '[ "$1" = 204 ] && grep -qi "^access-control-allow-headers: .*authorization" <<<"$2"' _ "$STATUS" "$HEADERS"
stop_server
check "SIGTERM exits 0" [ "$STOP_RC" = 0 ]
finish
