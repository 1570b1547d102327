#!/usr/bin/env bash
# `make fuzz`: builds the libFuzzer harnesses (clang, -DSAE_FUZZ=ON, CUDA off) into FUZZ_BUILD, then
# for each target: runs every input of fuzz/regressions/<target>/ once (each must pass), and fuzzes
# for FUZZ_SECONDS starting from fuzz/corpus/<target>/ (the committed seeds) and the inputs earlier
# runs found (FUZZ_BUILD/fuzz-corpus/<target>/, kept between runs).
# Exits non-zero when a regression input fails or fuzzing finds a crash, leak, timeout or
# out-of-memory; the input is saved under FUZZ_BUILD/fuzz-artifacts/<target>/ and the log under
# FUZZ_BUILD/fuzz-logs/. See docs/fuzzing.md.
#
#   FUZZ_SECONDS   seconds of fuzzing per target (default 60; 0 runs the regressions and seeds only)
#   FUZZ_TARGETS   the targets to run (default: every fuzz/fuzz_<target>.cpp)
#   FUZZ_BUILD     build folder (default build-fuzz)
#   FUZZ_CXX       the clang++ to build with (default clang++)
#   FUZZ_NICE      niceness of the fuzzers (default 10: the machine is shared)
#   JOBS           parallel compile jobs (default 2)
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
seconds="${FUZZ_SECONDS:-60}"
build="${FUZZ_BUILD:-build-fuzz}"
cxx="${FUZZ_CXX:-clang++}"
niceness="${FUZZ_NICE:-10}"
jobs="${JOBS:-2}"
targets="${FUZZ_TARGETS:-$(ls fuzz/fuzz_*.cpp | sed 's|fuzz/fuzz_||; s|\.cpp$||' | grep -v '^util$' | tr '\n' ' ')}"

bash scripts/install-deps.sh --clang || exit 1
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSAE_FUZZ=ON -DSAE_CUDA=OFF \
    -DSAE_BUILD_TESTS=OFF -DSAE_BUILD_BENCHMARKS=OFF > "$build.configure.log" 2>&1 || { cat "$build.configure.log"; exit 1; }
  mv "$build.configure.log" "$build/configure.log"
fi
cmake --build "$build" --target fuzzers -j "$jobs" || exit 1

# The dictionaries each target uses (libFuzzer takes one file: they are concatenated).
dicts_of() {
  case "$1" in
    json) echo json ;;
    safetensors) echo safetensors json ;;
    npy) echo npy ;;
    npz) echo npz npy ;;
    activations) echo safetensors npy json ;;
    checkpoint) echo checkpoint safetensors json ;;
    sparsify) echo safetensors json ;;
    torch_pt) echo torch_pt npz json ;;
    train_config) echo train_config json ;;
    tokenizer_files | tokenizer_json) echo tokenizer json ;;
    tokenizer_encode) echo tokenizer ;;
    model_config) echo json ;;
    text_corpus) echo json ;;
  esac
}

limits=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024)
scratch="$(mktemp -d /tmp/sae_fuzz_run.XXXXXX)"
trap 'rm -rf "$scratch"' EXIT
# The harnesses' scratch folders go inside it: a harness that aborts on a finding cannot remove its own.
export TMPDIR="$scratch"
export OMP_NUM_THREADS=1
# Sanitizer reports abort the harness (libFuzzer then saves the input); symbolised stacks.
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:symbolize=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
mkdir -p "$build/fuzz-logs"
failed=()
summary=()
for t in $targets; do
  bin="$build/bin/fuzz_$t"
  [ -x "$bin" ] || { echo "fuzz: no harness fuzz_$t" >&2; failed+=("$t (no harness)"); continue; }
  log="$build/fuzz-logs/$t.log"
  : > "$log"

  # 1. Regression inputs: each once, under the limits of fuzzing, each must pass. NAME.gz holds an
  # input too big to commit as it is (e.g. a 50 MB header); it is unpacked to a scratch file first.
  for input in fuzz/regressions/"$t"/*; do
    [ -f "$input" ] || continue
    run_input="$input"
    if [ "${input%.gz}" != "$input" ]; then
      run_input="$scratch/$(basename "${input%.gz}")"
      gzip -dc "$input" > "$run_input"
    fi
    if ! nice -n "$niceness" "$bin" "${limits[@]}" "$run_input" >> "$log" 2>&1; then
      echo "fuzz: $t: regression input $input FAILS (log: $log)" >&2
      failed+=("$t regression $(basename "$input")")
    fi
  done

  # 2. Fuzzing: new inputs go to the kept corpus; the seeds are read only.
  corpus="$build/fuzz-corpus/$t"
  artifacts="$build/fuzz-artifacts/$t/"
  mkdir -p "$corpus" "$artifacts"
  dict="$build/fuzz-dict-$t.dict"
  : > "$dict"
  for d in $(dicts_of "$t"); do cat "fuzz/dict/$d.dict" >> "$dict"; done
  inputs=("$corpus" "fuzz/corpus/$t")
  options=("${limits[@]}" -print_final_stats=1 -artifact_prefix="$artifacts" -dict="$dict")
  if [ "$seconds" -gt 0 ]; then options+=(-max_total_time="$seconds"); else options+=(-runs=0); fi
  start=$(date +%s)
  nice -n "$niceness" "$bin" "${options[@]}" "${inputs[@]}" >> "$log" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | awk '{print $2}')
  coverage=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9a-zA-Z]+')
  if [ "$rc" -ne 0 ]; then
    echo "fuzz: $t: FINDING (exit $rc) after ${took}s; input saved in $artifacts, log $log:" >&2
    grep -E 'fuzz finding|ERROR: |runtime error|SUMMARY' "$log" | head -5 >&2
    failed+=("$t fuzzing")
    summary+=("$(printf '%-18s FINDING   %5ss  %9s runs  %s' "$t" "$took" "${runs:-?}" "$coverage")")
  else
    summary+=("$(printf '%-18s ok        %5ss  %9s runs  %s' "$t" "$took" "${runs:-?}" "$coverage")")
  fi
done

echo
echo "fuzz summary (${seconds}s per target; logs in $build/fuzz-logs):"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: no findings"
