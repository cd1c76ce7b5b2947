#!/usr/bin/env bash
# The test runner: every unit test binary, then every integration test, each program with a
# timeout. Programs print "ok - name" / "not ok - name" lines; this counts them and ends with
# the single line "N passed, N failed". Usage: tests/run.sh [unit|integration|FILTER...]
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
export BUILD SESSIOND_BIN="$PWD/$BUILD/sessiond" SANDBOX_INIT_BIN="$PWD/$BUILD/sandbox-init" \
  SESSIOND_GIT_BIN="$PWD/$BUILD/sessiond-git"
LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/sessiond-tests.XXXXXX")
if [ "${SANITIZE:-}" = 1 ]; then
  # Reports also go to files, so a report from a server whose stderr a test did not keep is
  # still found (and counted as a failure) below.
  mkdir -p "$LOGDIR/sanitizer"
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1:log_path=$LOGDIR/sanitizer/asan}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:log_path=$LOGDIR/sanitizer/ubsan}
  export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/lsan.supp:print_suppressions=0}
elif [ "${SANITIZE:-}" = thread ]; then
  # TSan reports to files too (counted below); a race does not stop the program.
  mkdir -p "$LOGDIR/sanitizer"
  export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=0:second_deadlock_stack=1:suppressions=$PWD/tests/tsan.supp:log_path=$LOGDIR/sanitizer/tsan}
fi
passed=0
failed=0
failures=()

what=${1:-all}
progs=()
if [ "$what" = all ] || [ "$what" = unit ]; then
  for t in "$BUILD"/tests/test_*; do [ -x "$t" ] && progs+=("$t"); done
fi
if [ "$what" = all ] || [ "$what" = integration ]; then
  for t in tests/integration/test_*.sh tests/integration/test_*.mjs; do [ -f "$t" ] && progs+=("$t"); done
fi
if [ "$what" != all ] && [ "$what" != unit ] && [ "$what" != integration ]; then
  for t in "$BUILD"/tests/test_* tests/integration/test_*.sh tests/integration/test_*.mjs; do
    for f in "$@"; do case "$t" in *"$f"*) progs+=("$t") ;; esac; done
  done
fi

# Mount points under the temp dir (sorted; empty when not root).
tmp_mounts() {
  [ "$(id -u)" = 0 ] && [ -r /proc/self/mountinfo ] || return 0
  awk -v t="${TMPDIR:-/tmp}/" 'index($5, t) == 1 {print $5}' /proc/self/mountinfo | sort
}

for p in "${progs[@]}"; do
  name=$(basename "$p")
  log="$LOGDIR/$name.log"
  case "$p" in
    *.sh) cmd=(bash "$p") ;;
    *.mjs) cmd=(node "$p") ;;
    *) cmd=("$p") ;;
  esac
  start=$(date +%s)
  mounts_before=$(tmp_mounts)
  timeout -k 10 "${TEST_PROGRAM_TIMEOUT:-420}" "${cmd[@]}" >"$log.out" 2>"$log" </dev/null
  rc=$?
  # Workspaces with a disk quota are loop mounts that outlive a stopped server on purpose (the
  # next start adopts them); a test that stopped its server without its cleanup (or failed and
  # kept its dir) leaves them: detach what this program mounted under our temp dir.
  comm -13 <(echo "$mounts_before") <(tmp_mounts) | sort -r |
    while read -r m; do [ -n "$m" ] && umount -l "$m" 2>/dev/null; done
  p_ok=$(grep -c '^ok - ' "$log.out")
  p_bad=$(grep -c '^not ok - ' "$log.out")
  if [ "$rc" != 0 ] && [ "$p_bad" = 0 ]; then
    # A program that died without reporting a failure still failed.
    p_bad=1
    echo "not ok - $name:exit-status-$rc" >>"$log.out"
  fi
  passed=$((passed + p_ok))
  failed=$((failed + p_bad))
  printf '%-40s %3d ok %3d failed  (%ss)\n' "$name" "$p_ok" "$p_bad" "$(( $(date +%s) - start ))"
  if [ "$p_bad" != 0 ]; then
    grep '^not ok - ' "$log.out" | sed 's/^/    /'
    echo "    --- last lines of stderr ($log):"
    tail -n 25 "$log" | sed 's/^/    /'
    failures+=("$name")
  fi
done
if [ -d "$LOGDIR/sanitizer" ]; then
  reports=$(ls "$LOGDIR/sanitizer" 2>/dev/null | wc -l)
  if [ "$reports" != 0 ]; then
    echo "sanitizer: $reports report file(s) in $LOGDIR/sanitizer:"
    head -n 30 "$LOGDIR"/sanitizer/* | sed 's/^/    /'
    failed=$((failed + reports))
  else
    echo "sanitizer: no reports"
  fi
fi
echo "logs: $LOGDIR"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
