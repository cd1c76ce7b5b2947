#!/usr/bin/env bash
# File names a sandbox chooses are bytes, not necessarily UTF-8. The files API must still show
# every entry of a listing and list such a directory: a file with a non-UTF-8 name was left out
# of listings (a sandbox could hide what it wrote from a reviewer), and listing a directory
# with such a name answered 500. (Found by tests/fuzz/fuzz_ws_path.c.)
. "$(dirname "$0")/lib.sh"
start_server

S=$(new_session '{"title":"odd names"}')
# Inside the sandbox: one visible file, one whose name is Latin-1, a directory named with bytes
# that are never UTF-8 holding one file.
api POST "/v1/sessions/$S/exec" \
  '{"script":"echo ok > plain.txt; echo hidden > $'"'"'payload-\\xe9.sh'"'"'; mkdir $'"'"'d-\\xff\\xfe'"'"'; echo x > $'"'"'d-\\xff\\xfe/inner'"'"'; ls | wc -l"}'
check "the sandbox made 3 entries" jq -e '.exit_code==0 and .stdout=="3\n"' <<<"$BODY"

api GET "/v1/sessions/$S/files"
expect_status 200 "the workspace is listed"
check "the listing shows all 3 entries, whatever their names" jq -e '.entries|length==3' <<<"$BODY"
check "the Latin-1 name is shown (invalid bytes as U+FFFD)" \
  jq -e '[.entries[].name]|index("payload-\ufffd.sh")!=null' <<<"$BODY"

api GET "/v1/sessions/$S/files?path=d-%FF%FE"
expect_status 200 "a directory whose name is not UTF-8 is listed (not 500)"
check "its one file is listed" jq -e '.entries|length==1 and .[0].name=="inner"' <<<"$BODY"
finish
