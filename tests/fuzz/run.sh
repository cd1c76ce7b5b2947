#!/usr/bin/env bash
# Run the libFuzzer harnesses built by `make fuzz-build` (build/fuzz/fuzz_*).
#   run.sh smoke [TARGET...]  replay each harness's seeds, then fuzz it FUZZ_SMOKE_SECONDS
#                             (default 5); fails on any crash, leak, timeout or broken property.
#   run.sh long [TARGET...]   fuzz each harness FUZZ_SECONDS (default 600), FUZZ_JOBS at a time.
# Seeds are read from tests/fuzz/corpus/<target>/ and never written: new inputs go to
# build/fuzz/corpus/<target>/, crashes to build/fuzz/crashes/<target>/, logs to
# build/fuzz/logs/. Ends with one line per harness: executions, corpus size, crashes.
set -u
cd "$(dirname "$0")/../.."
mode=${1:-smoke}
shift || true
B=build/fuzz
targets=("$@")
if [ ${#targets[@]} = 0 ]; then
  for f in tests/fuzz/fuzz_*.c; do t=$(basename "$f" .c); targets+=("${t#fuzz_}"); done
fi
mkdir -p "$B/logs" "$B/crashes" "$B/corpus"
# Leaks count as failures; the harness processes exit with the first report.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/lsan.supp:print_suppressions=0}
# Harnesses that need the sandbox supervisor find it here (the process backend).
export SANDBOX_INIT_BIN="$PWD/$B/sandbox-init"

# Executions reported by a libFuzzer log (the last "#N" status line or the "Done N runs").
execs_of() {
  sed -nE 's/^Done ([0-9]+) runs.*/\1/p; s/^#([0-9]+)\t.*/\1/p' "$1" | tail -1
}

# run_one TARGET SECONDS LOG [OUT]: replay the seeds (and what OUT holds), then fuzz, adding
# new inputs to OUT (default build/fuzz/corpus/TARGET); the exit status is libFuzzer's.
run_one() {
  local t=$1 secs=$2 log=$3 bin="$B/fuzz_$1"
  local seeds="tests/fuzz/corpus/$t" out=${4:-$B/corpus/$t} crashes="$B/crashes/$t"
  mkdir -p "$out" "$crashes"
  [ -x "$bin" ] || { echo "fuzz: $bin is missing (make fuzz-build)" >"$log"; return 1; }
  # -timeout: a single input running this long is a hang (generous: a tree of thousands of
  # directories takes seconds on a loaded machine); -rss_limit_mb: a leak or blow-up.
  nice -n 10 "$bin" -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$crashes/" "$out" "$seeds" >"$log" 2>&1
}

summary() {
  local t=$1 rc=$2 log=$3 n
  n=$(find "$B/crashes/$t" -type f -newer "$B/logs/.start" 2>/dev/null | wc -l)
  printf 'fuzz: %-16s %s  execs=%s  corpus=%s  new-crashes=%s  log=%s\n' "$t" \
    "$([ "$rc" = 0 ] && echo ok || echo "FAILED(rc=$rc)")" "$(execs_of "$log")" \
    "$(sed -nE 's/.*(DONE|INITED) .*corp: ([0-9]+).*/\2/p' "$log" | tail -1)" "$n" "$log"
}

touch "$B/logs/.start"
fails=0
if [ "$mode" = smoke ]; then
  # Only the committed seeds: what earlier long runs found does not slow CI down, and what
  # this run finds is thrown away.
  secs=${FUZZ_SMOKE_SECONDS:-5}
  start=$(date +%s)
  scratch=$(mktemp -d /tmp/fuzz-smoke.XXXXXX)
  trap 'rm -rf "$scratch"' EXIT
  for t in "${targets[@]}"; do
    log="$B/logs/smoke-$t.log"
    run_one "$t" "$secs" "$log" "$scratch/$t"
    rc=$?
    [ "$rc" = 0 ] || { fails=$((fails + 1)); tail -40 "$log"; }
    summary "$t" "$rc" "$log"
  done
  echo "fuzz-smoke: ${#targets[@]} harnesses, $fails failed, $(( $(date +%s) - start ))s"
elif [ "$mode" = long ]; then
  secs=${FUZZ_SECONDS:-600}
  jobs_max=${FUZZ_JOBS:-1}
  declare -A pids
  for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n; done
    echo "fuzz: $t for ${secs}s (log $B/logs/$t.log)"
    run_one "$t" "$secs" "$B/logs/$t.log" &
    pids[$t]=$!
  done
  for t in "${targets[@]}"; do
    wait "${pids[$t]}"
    rc=$?
    [ "$rc" = 0 ] || fails=$((fails + 1))
    summary "$t" "$rc" "$B/logs/$t.log"
  done
  echo "fuzz: ${#targets[@]} harnesses, $fails failed"
else
  echo "usage: $0 smoke|long [TARGET...]" >&2
  exit 2
fi
[ "$fails" = 0 ]
