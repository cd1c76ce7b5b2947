#!/usr/bin/env bash
# Network for image setup steps, POST …/exec and command agents through the egress proxy, in
# the isolated (bubblewrap) sandbox, which has no other route out. A local "package registry"
# on loopback serves a tarball; egress.hosts maps the name registry.test to 127.0.0.1.
#
#   - a setup step fetching http://registry.test:PORT/pkg.tgz builds when registry.test:PORT
#     is in the repository's egress, and fails with a clear error naming the refusal when it
#     is not; with it in egress.default instead (second server start) it builds too;
#   - exec and the shell agent fetch it the same way when listed; when not, they fail and a
#     sandbox.egress_denied event names registry.test:PORT;
#   - a PATCH of the repository's egress applies to the next exec;
#   - localhost:PORT (not in egress.hosts, resolves to 127.0.0.1) stays refused even listed;
#   - with an empty list a command has no proxy variables and no network at all;
#   - a stopped sandbox's listener is closed.
. "$(dirname "$0")/lib.sh"

G="git -c user.name=Seed -c user.email=seed@example.com -c init.defaultBranch=main"
mkdir -p "$TMP/git" "$TMP/pub/pkg"
( cd "$TMP/git" && $G init -q --bare app.git && $G init -q seed && cd seed &&
  echo app > README && $G add -A && $G commit -qm init && $G push -q ../app.git main ) ||
  { fail "seed repository"; finish; }
REMOTE="$TMP/git/app.git"
echo "left-pad 1.3.0" >"$TMP/pub/pkg/VERSION"
tar -C "$TMP/pub" -czf "$TMP/pub/pkg.tgz" pkg

# The registry: a loopback HTTP server; each request path goes to reg.log.
cat >"$TMP/reg.py" <<'EOF'
import http.server, sys, functools
root, port_file, log = sys.argv[1:4]
class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *a):
        with open(log, 'a') as f:
            f.write(self.path + '\n')
srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(H, directory=root))
with open(port_file, 'w') as f:
    f.write(str(srv.server_address[1]))
srv.serve_forever()
EOF
python3 "$TMP/reg.py" "$TMP/pub" "$TMP/reg.port" "$TMP/reg.log" &
REG_PID=$!
trap 'kill $REG_PID 2>/dev/null; _cleanup' EXIT
for i in $(seq 1 100); do [ -s "$TMP/reg.port" ] && break; sleep 0.05; done
RP=$(cat "$TMP/reg.port")
touch "$TMP/reg.log"
REG="registry.test:$RP"
FETCH="curl -fsS -m 10 http://$REG/pkg.tgz -o pkg.tgz && tar xzf pkg.tgz && cat pkg/VERSION"

printf '{"egress":{"hosts":{"Registry.Test":"127.0.0.1"}}}' >"$TMP/config.json"
start_server --sandbox local --config "$TMP/config.json" --repos-tick-ms 200 --shutdown-grace 1
check "the host map is logged at start" grep -q 'egress.hosts maps registry.test to 127.0.0.1' "$SERVER_LOG"

hits() { grep -c '^/pkg.tgz' "$TMP/reg.log"; }
events_of() { api GET "/v1/sessions/$1/events?limit=1000"; jq -c '.events' <<<"$BODY"; }
denied_for() { # denied_for SID HOST:PORT -> 0 if a sandbox.egress_denied names it
  local h=${2%:*} p=${2##*:}
  jq -e --arg h "$h" --argjson p "$p" 'any(.[]; .type=="sandbox.egress_denied" and .data.host==$h and .data.port==$p)' <<<"$(events_of "$1")" >/dev/null
}
build() { # build REPO -> sets state, BODY = the images list
  api POST "/v1/repos/$1/images" '{}'
  wait_image "$1" 60
}
run_exec() { # run_exec SID SCRIPT -> BODY = the exec result
  api POST "/v1/sessions/$1/exec" "$(jq -c -n --arg s "$2" '{script:$s,timeout_s:30}')"
}

# ---- image setup steps ----
spec() { jq -c -n --arg n "$1" --arg u "$REMOTE" --arg s "$FETCH" --argjson e "$2" \
  '{name:$n,url:$u,setup:[$s],pool_size:0,image_interval_min:0,egress:$e}'; }
api POST /v1/repos "$(spec listed "[\"$REG\"]")"
expect_status 201 "repo with registry.test in its egress"
api POST /v1/repos "$(spec unlisted '["other.test:443"]')"
expect_status 201 "repo without it"

n0=$(hits)
build listed
check "setup step fetches the tarball by host name through the proxy: image ready" [ "$state" = ready ]
check "the registry served it" [ "$(hits)" -gt "$n0" ]
check "the step's output is in the image log" jq -e '.images[0].log_tail | contains("left-pad 1.3.0")' <<<"$BODY"

n0=$(hits)
build unlisted
check "not listed: the image fails" [ "$state" = failed ]
check "its error names the refusal and the fix" jq -e --arg r "$REG" '.images[0].error | contains("egress proxy refused") and contains($r) and contains("egress.default")' <<<"$BODY"
check "the image log records sandbox.egress_denied" jq -e --arg r "$REG" '.images[0].log_tail | contains("sandbox.egress_denied " + $r + " refused")' <<<"$BODY"
check "the registry saw nothing" [ "$(hits)" = "$n0" ]

# ---- exec ----
S1=$(new_session '{"title":"exec","repo":"listed"}')
n0=$(hits)
run_exec "$S1" "$FETCH"
check "exec: fetched through the proxy" jq -e '.exit_code==0 and (.stdout|contains("left-pad 1.3.0"))' <<<"$BODY"
check "exec: the registry served it" [ "$(hits)" -gt "$n0" ]
run_exec "$S1" 'curl -sS -m 5 --noproxy "*" http://127.0.0.1:'"$RP"'/pkg.tgz -o /dev/null'
check "exec: no direct route around the proxy" jq -e '.exit_code!=0' <<<"$BODY"

api PATCH /v1/repos/listed '{"egress":["other.test:443"]}'
expect_status 200 "PATCH the repository's egress"
n0=$(hits)
run_exec "$S1" "$FETCH"
check "exec after the PATCH: refused, with a clear message" jq -e '.exit_code!=0 and (.stderr|test("403|refused"))' <<<"$BODY"
check "exec: sandbox.egress_denied names registry.test" denied_for "$S1" "$REG"
check "exec: the registry saw nothing" [ "$(hits)" = "$n0" ]

api PATCH /v1/repos/listed "{\"egress\":[\"$REG\",\"localhost:$RP\"]}"
run_exec "$S1" "curl -sS -m 5 --noproxy '' http://localhost:$RP/pkg.tgz -o /dev/null -w '%{http_code}'"
check "localhost (not in egress.hosts) stays refused though listed" jq -e '.stdout=="403"' <<<"$BODY"
check "exec: sandbox.egress_denied names localhost" denied_for "$S1" "localhost:$RP"
api GET "/v1/sessions/$S1/events?limit=1000"
check "the refusal says why" jq -e --arg p "$RP" 'any(.events[]; .type=="sandbox.egress_denied" and .data.host=="localhost" and (.data.reason|contains("egress.hosts")))' <<<"$BODY"

api PATCH /v1/repos/listed '{"egress":[]}'
run_exec "$S1" 'env | grep -ci proxy; ls /run/sessiond/; curl -sS -m 5 http://'"$REG"'/pkg.tgz -o /dev/null; echo rc=$?'
check "empty list: no proxy variables, no listener socket, no network" jq -e '(.stdout|startswith("0\n")) and (.stdout|contains("egress-cmd.sock")|not) and (.stdout|test("rc=[1-9]"))' <<<"$BODY"

# ---- the shell agent (a command agent) ----
prompt() { # prompt SID CONTENT -> prints prompt_id
  api POST "/v1/sessions/$1/messages" "$(jq -c -n --arg c "$2" '{content:$c}')"
  jget .prompt_id
}
prompt_end() { # prompt_end SID PID -> prints the end event's type
  local i t
  for i in $(seq 1 300); do
    t=$(jq -r --arg p "$2" '[.[]|select((.type=="prompt.completed" or .type=="prompt.failed") and .data.prompt_id==$p)][0].type // empty' <<<"$(events_of "$1")")
    [ -n "$t" ] && { echo "$t"; return; }
    sleep 0.1
  done
  echo timeout
}
api PATCH /v1/repos/listed "{\"egress\":[\"$REG\"]}"
S2=$(new_session '{"title":"agent","repo":"listed"}')
n0=$(hits)
P=$(prompt "$S2" "$FETCH")
check "shell agent: fetched through the proxy" [ "$(prompt_end "$S2" "$P")" = prompt.completed ]
check "shell agent: the registry served it" [ "$(hits)" -gt "$n0" ]
api PATCH /v1/repos/listed '{"egress":["other.test:443"]}'
n0=$(hits)
P=$(prompt "$S2" "$FETCH")
check "shell agent, not listed: the prompt fails" [ "$(prompt_end "$S2" "$P")" = prompt.failed ]
check "shell agent: sandbox.egress_denied names registry.test" denied_for "$S2" "$REG"
check "shell agent: the registry saw nothing" [ "$(hits)" = "$n0" ]

# ---- the commands' listener goes with the sandbox ----
check "the session's commands' listener socket exists" [ -S "$DATA_DIR/sandboxes/$S2/egress-cmd.sock" ]
api DELETE "/v1/sessions/$S2"
for i in $(seq 1 50); do [ -e "$DATA_DIR/sandboxes/$S2/egress-cmd.sock" ] || break; sleep 0.1; done
check "a stopped sandbox's commands' listener is closed (socket gone)" [ ! -e "$DATA_DIR/sandboxes/$S2/egress-cmd.sock" ]
check "(its private directory is still there)" [ -d "$DATA_DIR/sandboxes/$S2" ]

# ---- egress.default: every sandbox may reach it ----
printf '{"egress":{"hosts":{"registry.test":"127.0.0.1"},"default":["%s"]}}' "$REG" >"$TMP/config.json"
restart_server
n0=$(hits)
build unlisted
check "egress.default: the unlisted repository's setup step fetches it" [ "$state" = ready ]
check "egress.default: the registry served it" [ "$(hits)" -gt "$n0" ]
S3=$(new_session '{"title":"no repo"}')
run_exec "$S3" "$FETCH"
check "egress.default: exec in a session without a repository fetches it" jq -e '.exit_code==0 and (.stdout|contains("left-pad"))' <<<"$BODY"

stop_server
printf '{"egress":{"hosts":{"registry.test":"registry.other"}}}' >"$TMP/config.json"
"$SESSIOND_BIN" --listen 127.0.0.1:0 --data-dir "$TMP/bad" --config "$TMP/config.json" >"$TMP/bad.log" 2>&1
check "a bad egress.hosts entry stops the server at start, saying why" grep -q 'egress.hosts "registry.test": the address must be' "$TMP/bad.log"
finish
