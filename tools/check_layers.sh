#!/bin/sh
# tools/check_layers.sh - the layer rule of tools/layers.txt, checked from the #include lines
# of every tracked .c/.h of the parts (tests/ and bench/ may include anything). A quoted
# include names its part by its first path component ("storage/store.h"); a bare one
# ("util.h") is a file of the same folder. Prints each violation; exit 1 if any.
set -eu
cd "$(dirname "$0")/.."
rules=tools/layers.txt
bad=0
parts=$(sed -n 's/^\([a-z]*\):.*/\1/p' "$rules")
for part in $parts; do
  allowed=" $part $(sed -n "s/^$part:[[:space:]]*//p" "$rules") "
  for f in $( (git ls-files "$part/*.c" "$part/*.h" 2>/dev/null; ls "$part"/*.c "$part"/*.h "$part"/*/*.c "$part"/*/*.h 2>/dev/null) | sort -u); do
    grep -n '^[[:space:]]*#[[:space:]]*include[[:space:]]*"[a-z_]*/' "$f" 2>/dev/null |
      sed 's/^\([0-9]*\):.*"\([a-z_]*\)\/.*/\1 \2/' | while read -r line inc; do
        case "$allowed" in
          *" $inc "*) ;;
          *) echo "layers: $f:$line includes $inc/ (a $part file may include:$allowed)"; echo x >>"${TMPDIR:-/tmp}/layers.$$" ;;
        esac
      done
  done
done
if [ -s "${TMPDIR:-/tmp}/layers.$$" ]; then
  rm -f "${TMPDIR:-/tmp}/layers.$$"
  echo "layers: include rule broken (tools/layers.txt)"
  exit 1
fi
rm -f "${TMPDIR:-/tmp}/layers.$$"
echo "layers: ok"
