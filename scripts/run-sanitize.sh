#!/usr/bin/env bash
# `make sanitize`: the whole test suite (and the programs the tests run) built with
# AddressSanitizer + UndefinedBehaviorSanitizer (-DSAE_SANITIZE=ON: no recovery; CUDA off, no
# -march=native) into SANITIZE_BUILD (default build-sanitize), then run through CTest.
# The compiler is clang++ (SANITIZE_CXX to change it): its -fsanitize=undefined includes the
# float-to-integer overflow check, and its runtime writes UBSan reports to log_path too (GCC's
# sends them to stderr only). scripts/install-deps.sh --clang installs clang when missing.
# Every sanitizer report aborts the process that made it (a test in sae_tests, or a program a test
# runs, which then dies by SIGABRT instead of exiting 0/1/2) and is also written under
# SANITIZE_BUILD/sanitizer-reports/; the run fails if any test fails or any report was written, so
# a report cannot hide behind a test that only expected "some error". See docs/fuzzing.md.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
build="${SANITIZE_BUILD:-build-sanitize}"
jobs="${JOBS:-2}"

cxx="${SANITIZE_CXX:-clang++}"

if [ "$cxx" = clang++ ]; then bash scripts/install-deps.sh --clang || exit 1; fi
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSAE_SANITIZE=ON -DSAE_CUDA=OFF \
    -DSAE_NATIVE=OFF -DSAE_BUILD_TESTS=ON -DSAE_BUILD_BENCHMARKS=OFF || exit 1
fi
reports="$root/$build/sanitizer-reports"
rm -rf "$reports"
mkdir -p "$reports"
# The options hold while building too: gtest_discover_tests runs sae_tests to list the tests.
export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:check_initialization_order=1:strict_init_order=1:log_path=$reports/asan"
export UBSAN_OPTIONS="abort_on_error=1:halt_on_error=1:print_stacktrace=1:log_path=$reports/ubsan"
cmake --build "$build" --target sae_tests -j "$jobs" || exit 1

(cd "$build" && ctest --output-on-failure -j "$jobs")
status=$?
if compgen -G "$reports/*" > /dev/null; then
  echo "sanitize: sanitizer reports were written ($reports):" >&2
  for f in "$reports"/*; do
    echo "---- $f" >&2
    head -60 "$f" >&2
  done
  status=1
fi
if [ "$status" -ne 0 ]; then
  echo "sanitize: FAILED" >&2
  exit 1
fi
echo "sanitize: every test passed with no sanitizer report"
