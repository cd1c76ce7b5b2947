#!/usr/bin/env bash
# An oversized body always gets its JSON 413 and a clean close, never a connection reset:
# bodies past the cap + 64 MiB sent without "Expect: 100-continue" used to be cut off by a
# reset (the drain stopped at a byte count and the connection was dropped unanswered).
. "$(dirname "$0")/lib.sh"
start_server

SID=$(new_session)
BIG=$TMP/big.bin
head -c $((70 << 20)) /dev/zero >"$BIG"
URL="$BASE/v1/sessions/$SID/messages"

# curl without Expect: it streams the whole 70 MiB, then reads the answer.
code=$(curl -sS -o "$TMP/o" -w '%{http_code}' -H "Authorization: Bearer $ADMIN" -H 'Expect:' \
  -H 'Content-Type: application/json' --data-binary @"$BIG" "$URL" 2>"$TMP/curl.err")
rc=$?
BODY=$(cat "$TMP/o")
STATUS=$code
check "70 MiB without Expect: curl ends cleanly (rc $rc: $(head -c 100 "$TMP/curl.err"))" [ "$rc" = 0 ]
expect_error 413 too_large "70 MiB without Expect: 413 too_large"

# With Expect the 413 comes before any body byte.
code=$(curl -sS -o "$TMP/o" -w '%{http_code}' -H "Authorization: Bearer $ADMIN" \
  -H 'Content-Type: application/json' --data-binary @"$BIG" "$URL" 2>"$TMP/curl.err")
BODY=$(cat "$TMP/o")
STATUS=$code
expect_error 413 too_large "70 MiB with Expect: 413 too_large"

# Chunked (no Content-Length): the cap is found while reading; still a 413.
code=$(curl -sS -o "$TMP/o" -w '%{http_code}' -H "Authorization: Bearer $ADMIN" -H 'Expect:' \
  -H 'Transfer-Encoding: chunked' -H 'Content-Type: application/json' --data-binary @"$BIG" \
  "$URL" 2>"$TMP/curl.err")
rc=$?
BODY=$(cat "$TMP/o")
STATUS=$code
check "70 MiB chunked: curl ends cleanly (rc $rc)" [ "$rc" = 0 ]
expect_error 413 too_large "70 MiB chunked: 413 too_large"

# Unauthenticated: the answer (413: the size is checked first) is not lost to a reset either.
code=$(curl -sS -o "$TMP/o" -w '%{http_code}' -H 'Expect:' -H 'Content-Type: application/json' \
  --data-binary @"$BIG" "$URL" 2>"$TMP/curl.err")
rc=$?
BODY=$(cat "$TMP/o")
STATUS=$code
check "70 MiB unauthenticated: curl ends cleanly (rc $rc)" [ "$rc" = 0 ]
expect_error 413 too_large "70 MiB unauthenticated: an answer, not a reset"

# A raw client that writes the whole request before it reads (as most HTTP libraries do), and
# checks that the connection ends with a FIN after the answer, not a reset.
out=$(node - "$PORT" "$ADMIN" "/v1/sessions/$SID/messages" <<'JS'
const net = require('net');
const [port, tok, path] = process.argv.slice(2);
const len = 70 << 20;
const s = net.connect(+port, '127.0.0.1');
let got = '', err = '';
s.on('data', (d) => { got += d.toString('latin1'); });
s.on('error', (e) => { err = e.code || String(e); });
s.on('close', () => {
  console.log(JSON.stringify({ status: got.split(' ')[1] || '', err,
    body: got.slice(got.indexOf('\r\n\r\n') + 4) }));
});
s.write(`POST ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tok}\r\n` +
  `Content-Type: application/json\r\nContent-Length: ${len}\r\n\r\n`);
const chunk = Buffer.alloc(1 << 20, 0x20);
let sent = 0;
(function more() {
  while (sent < len) {
    sent += chunk.length;
    if (!s.write(chunk)) { s.once('drain', more); return; }
  }
  s.end();
})();
JS
)
STATUS=$(jget .status "$out")
BODY=$(jget .body "$out")
check "raw client: no socket error ($(jget .err "$out"))" [ -z "$(jget .err "$out")" ]
expect_error 413 too_large "raw client that writes everything first: 413 too_large"

api GET "/v1/sessions/$SID"
expect_status 200 "the server still answers"
check "no message was stored" [ "$(jget .last_seq)" = 1 ]
finish
