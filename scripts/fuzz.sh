#!/usr/bin/env bash
# Builds the libFuzzer binary (address sanitizer + coverage on every module, in .build-fuzz) and
# runs each fuzz target for SECONDS, starting from the checked-in seed corpus (Fuzz/corpus/).
# See docs/fuzzing.md.
#
# Usage: scripts/fuzz.sh [options] [SECONDS]
#   SECONDS          how long each target runs (default 60)
#   --targets a,b    only these targets (default: all; `--targets list` prints them)
#   --jobs N         run N targets at once (default 1)
#   --fresh          start from the seeds alone (default: the working corpus in .build-fuzz/corpus
#                    grows across runs; the seeds are copied in every time)
#   --replay         run every seed once instead of fuzzing (a regression check)
#   --merge          after fuzzing, add the inputs that found new coverage, minimized, to the
#                    checked-in corpus (the only option that writes to Fuzz/corpus)
#   --no-build       use the binary already built
#   --release        an optimized build (-O, testability on; in .build-fuzz/release): several times
#                    the executions per second for long runs, at the cost of a longer build
# Environment: FUZZ_BUILD (scratch path, default .build-fuzz), FUZZ_BUILD_JOBS (parallel build
#   jobs, default: one per core), FUZZ_FLAGS (extra libFuzzer flags).
# Exit status: 0 when no target crashed, leaked, hung or ran out of memory; 1 otherwise, with the
# reproducer's path and the command that replays it printed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH=/opt/swift/usr/bin:$PATH

seconds=60 jobs=1 fresh=0 replay=0 merge=0 build=1 only="" config=debug
while [ $# -gt 0 ]; do
  case "$1" in
    --targets) only=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --fresh) fresh=1; shift ;;
    --replay) replay=1; shift ;;
    --merge) merge=1; shift ;;
    --no-build) build=0; shift ;;
    --release) config=release; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    [0-9]*) seconds=$1; shift ;;
    *) echo "fuzz.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

scratch=${FUZZ_BUILD:-$root/.build-fuzz}
binary=$scratch/$config/sluice-fuzz
# Release needs testability switched on by hand for the targets' @testable imports.
release_flags=()
[ "$config" = release ] && release_flags=(-c release -Xswiftc -enable-testing)
if [ "$build" = 1 ]; then
  start=$SECONDS
  # Coverage and ASan for Swift (-sanitize) and for every C target (BoringSSL, llhttp, libyaml...):
  # the fuzzer needs feedback from the code under test, not just from this entry point.
  # pipefail: the build's own status, not the filter's (a failed build must not fuzz an older binary).
  if ! SLUICE_FUZZ=1 swift build --scratch-path "$scratch" --product sluice-fuzz ${FUZZ_BUILD_JOBS:+--jobs "$FUZZ_BUILD_JOBS"} "${release_flags[@]}" \
    -Xswiftc -sanitize=fuzzer,address -Xcc -fsanitize=fuzzer-no-link,address 2>&1 \
    | { grep -v -E '^\[[0-9]+/[0-9]+\]|Cannot export local symbol|unhandled; explicitly declare|CMakeLists.txt' || true; } \
    || [ ! -x "$binary" ]; then
    echo "fuzz.sh: build failed" >&2; exit 2
  fi
  echo "fuzz.sh: build took $((SECONDS - start))s"
fi

# Per target: the longest input worth trying. Frames and HTTP need room for a few frames or
# requests; single values stay short so mutations stay on what matters.
max_len() {
  case "$1" in
    traceparent) echo 128 ;;
    cron) echo 256 ;;
    utf8) echo 1024 ;;
    resp|sse|client-message|openai-request|inflate) echo 4096 ;;
    frame|upgrade) echo 8192 ;;
    config) echo 8192 ;;
    *) echo 4096 ;;
  esac
}

all=$(SLUICE_FUZZ_TARGET=list "$binary" 2>/dev/null | cut -f1)
if [ "$only" = list ]; then SLUICE_FUZZ_TARGET=list "$binary"; exit 0; fi
targets=${only:+$(echo "$only" | tr ',' ' ')}
targets=${targets:-$all}
for t in $targets; do
  echo "$all" | grep -qx "$t" || { echo "fuzz.sh: no target named $t (try --targets list)" >&2; exit 2; }
done

out=$scratch/fuzz-results
mkdir -p "$out"
# A leak is only reported for an input that leaked; malloc_limit catches one huge allocation.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0:handle_abort=1:symbolize=1}
# Swift's own backtracer would run inside ASan's crash handling and report itself.
export SWIFT_BACKTRACE=enable=no
export ASAN_SYMBOLIZER_PATH=${ASAN_SYMBOLIZER_PATH:-/opt/swift/usr/bin/llvm-symbolizer}

run_target() {
  local t=$1 log="$out/$1.log" corpus="$scratch/corpus/$1" artifacts="$scratch/artifacts/$1/"
  local dict="$root/Fuzz/dict/$t.dict" seeds="$root/Fuzz/corpus/$t"
  [ "$fresh" = 1 ] && rm -rf "$corpus"
  mkdir -p "$corpus" "$artifacts"
  cp -n "$seeds"/* "$corpus"/ 2>/dev/null || true
  local flags=(-max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024
               -artifact_prefix="$artifacts" -print_final_stats=1 -close_fd_mask=1)
  [ -f "$dict" ] && flags+=(-dict="$dict")
  if [ "$replay" = 1 ]; then
    SLUICE_FUZZ_TARGET=$t "$binary" "${flags[@]}" -runs=0 ${FUZZ_FLAGS:-} "$corpus" >"$log" 2>&1
  else
    SLUICE_FUZZ_TARGET=$t "$binary" "${flags[@]}" -max_total_time="$seconds" ${FUZZ_FLAGS:-} "$corpus" >"$log" 2>&1
  fi
}

summarize() {
  local t=$1 rc=$2 log="$out/$1.log"
  local runs rate done_line cov ft corp crash
  stat() { grep -o "stat::$1: *[0-9]*" "$log" | tail -1 | awk '{print $2}'; }
  runs=$(stat number_of_executed_units || true)
  rate=$(stat average_exec_per_sec || true)
  done_line=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(echo "$done_line" | grep -o 'cov: [0-9]*' | awk '{print $2}' || true)
  ft=$(echo "$done_line" | grep -o 'ft: [0-9]*' | awk '{print $2}' || true)
  corp=$(echo "$done_line" | grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' | awk '{print $2}' || true)
  crash=$(grep -o -E "Test unit written to [^ ]+" "$log" | tail -1 | awk '{print $5}' || true)
  printf '%-15s %10s %8s %7s %7s %12s  %s\n' "$t" "${runs:--}" "${rate:--}" "${cov:--}" "${ft:--}" "${corp:--}" \
    "$([ "$rc" = 0 ] && echo ok || echo "FAILED (exit $rc)")"
  if [ "$rc" != 0 ]; then
    grep -E -m3 'ERROR: libFuzzer|ERROR: AddressSanitizer|ERROR: LeakSanitizer|Fatal error|invariant violated|SUMMARY' "$log" | sed 's/^/    /' || true
    if [ -n "$crash" ]; then
      echo "    reproducer: $crash"
      echo "    replay: SLUICE_FUZZ_TARGET=$t $binary $crash"
    fi
    echo "    log: $log"
  fi
}

echo "fuzz.sh: $(echo $targets | wc -w) targets, $([ "$replay" = 1 ] && echo "replaying the seeds" || echo "${seconds}s each"), $jobs at a time"
printf '%-15s %10s %8s %7s %7s %12s  %s\n' target executions exec/s cov ft corpus result
failed=0
pids=() names=()
flush_one() {
  local pid=${pids[0]} t=${names[0]} rc=0
  wait "$pid" || rc=$?
  summarize "$t" "$rc"
  [ "$rc" = 0 ] || failed=1
  pids=("${pids[@]:1}") names=("${names[@]:1}")
}
for t in $targets; do
  run_target "$t" &
  pids+=($!) names+=("$t")
  [ ${#pids[@]} -ge "$jobs" ] && flush_one
done
while [ ${#pids[@]} -gt 0 ]; do flush_one; done

if [ "$merge" = 1 ] && [ "$replay" = 0 ]; then
  for t in $targets; do
    before=$(ls "$root/Fuzz/corpus/$t" | wc -l)
    SLUICE_FUZZ_TARGET=$t "$binary" -merge=1 -max_len="$(max_len "$t")" "$root/Fuzz/corpus/$t" "$scratch/corpus/$t" >/dev/null 2>&1 || true
    echo "fuzz.sh: merged $(( $(ls "$root/Fuzz/corpus/$t" | wc -l) - before )) inputs into Fuzz/corpus/$t"
  done
fi
exit $failed
