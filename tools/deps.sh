#!/bin/sh
# Install the Debian packages sessiond needs that are missing. Works as root, uses sudo
# otherwise. `--test` adds what the test suite needs (node + npm, chromium, the npm test deps).
set -eu
PKGS="gcc make pkg-config libc6-dev libmicrohttpd-dev libwebsockets-dev libsqlite3-dev
libjansson-dev libcurl4-openssl-dev libgit2-dev libssl-dev bubblewrap curl git ca-certificates"
TEST_PKGS="sqlite3 chromium clang-format"
want="$PKGS"
# `--fuzz`: clang and its runtime (libFuzzer, sanitizers) for `make fuzz`; named explicitly,
# since recommended packages are not installed.
FUZZ_PKGS="clang libclang-rt-14-dev"
if [ "${1:-}" = "--fuzz" ]; then
  want="$PKGS $FUZZ_PKGS"
fi
if [ "${1:-}" = "--test" ]; then
  want="$PKGS $TEST_PKGS"
  command -v node >/dev/null 2>&1 || want="$want nodejs"
  command -v npm >/dev/null 2>&1 || want="$want npm"
fi
missing=""
for p in $want; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "deps: installing:$missing"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
if [ "${1:-}" = "--test" ] && [ -f tests/package.json ]; then
  if [ ! -d tests/node_modules ] || [ tests/package-lock.json -nt tests/node_modules ]; then
    (cd tests && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
