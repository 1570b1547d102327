#!/usr/bin/env bash
# The GPU checks on the device machine (run from the repository root there, with
# .device/bundle.tar.xz from scripts/device_bundle.sh carried along). Everything goes under $OUT
# (default ./device-out) as it happens: summary.txt gets one line per step the moment it ends, so a
# call cut short still brings back what ran. Each step has its own time limit (timeout).
#
#   scripts/device_check.sh tests        machine facts; every CUDA suite in its own process with
#                                        CUDA_LAUNCH_BLOCKING=1 and SAE_REQUIRE_GPU=1 (a CUDA start-up
#                                        failure fails them instead of skipping); the CPU tests in 8
#                                        parallel shards; one compute-sanitizer memcheck pass with
#                                        exact-size allocations (SAE_CUDA_EXACT_ALLOC=1)
#   scripts/device_check.sh bench run    the CUDA benchmarks and the PyTorch peer on the same GPU; a
#                                        2000-step timed run of the original configuration, then the
#                                        105k-step run if the 2000 steps say it fits in its limit
#   scripts/device_check.sh rehearse     on a machine without a GPU: the steps of `tests`, with the
#                                        CUDA tests allowed to skip (checks the script itself)
# Exit status: 0 when every step passed, 1 otherwise (details in summary.txt and the logs).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/device-out}
mkdir -p "$out"
parts=${*:-tests}
summary="$out/summary.txt"
status=0
note() { echo "$*" | tee -a "$summary"; }
# step NAME LIMIT_SECONDS COMMAND...: runs it with a time limit, its output in NAME.log, one summary line.
step() {
  local name=$1 limit=$2
  shift 2
  local begin end rc
  begin=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  local seconds
  seconds=$(awk -v a="$end" -v b="$begin" 'BEGIN { printf "%.1f", a - b }')
  if [ $rc -eq 0 ]; then
    note "PASS $name (${seconds}s)"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    note "TIMEOUT $name after ${seconds}s (limit ${limit}s)"
    status=1
  else
    note "FAIL $name (exit $rc, ${seconds}s): $(grep -m1 -E 'FAILED|Failure|error|Error' "$out/$name.log" | cut -c1-200)"
    status=1
  fi
  return $rc
}

note "device_check.sh $parts: $(date -u +%FT%TZ), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
bundle=/tmp/sae-bundle
rm -rf "$bundle" && mkdir -p "$bundle"
if ! tar -C "$bundle" -xJf "$root/.device/bundle.tar.xz" 2> "$out/unpack.log"; then
  note "FAIL unpack: $(head -c 300 "$out/unpack.log") (run scripts/device_bundle.sh and carry .device)"
  exit 1
fi
# The programs were built in /work/main/build-device: make those paths lead here.
if [ ! -e /work/main ]; then mkdir -p /work && ln -s "$root" /work/main; fi
if [ ! -d /work/main/build-device/bin ] || [ -L /work/main/build-device/bin ]; then
  mkdir -p /work/main/build-device && ln -sfn "$bundle/bin" /work/main/build-device/bin
fi
bin=/work/main/build-device/bin
python_library_path=${LD_LIBRARY_PATH:-}  # PyTorch brings its own CUDA libraries: leave its path as it was
# cuBLAS and the CUDA runtime: CUDA's own folders first, then the copies pip's nvidia-* wheels hold.
cuda_libs=""
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib \
           $(python3 -c 'import glob, site; print(" ".join(glob.glob(site.getsitepackages()[0] + "/nvidia/*/lib")))' 2>/dev/null); do
  [ -d "$dir" ] && cuda_libs="$cuda_libs$dir:"
done
export LD_LIBRARY_PATH="$bundle/lib:${cuda_libs}${LD_LIBRARY_PATH:-}"
export OMP_WAIT_POLICY=passive

# Machine facts, and what the programs cannot find.
{
  nvidia-smi || echo "nvidia-smi: not available"
  echo "cores: $(nproc)"
  echo "gnuplot: $(command -v gnuplot || echo missing)"
  echo "/usr/bin/time: $([ -x /usr/bin/time ] && echo present || echo missing)"
  echo "compute-sanitizer: $(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || echo missing)"
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>&1
  for program in "$bin"/*; do echo "== $program"; ldd "$program"; done
} > "$out/machine.txt" 2>&1
missing=$(grep -c "=> not found" "$out/machine.txt")
if [ "$missing" -gt 0 ]; then
  note "FAIL libraries: $(grep "=> not found" "$out/machine.txt" | sort -u | tr -s ' \t' ' ' | tr '\n' ';' | cut -c1-300)"
  status=1
else
  note "PASS libraries (every program's libraries found)"
fi
# The kernel family OpenBLAS should use here (tensor/cpu_runtime.h), fixed for every later process so
# that none restarts itself (a restart under compute-sanitizer is best avoided).
core=$("$bin/sae_tests" --gtest_filter='CpuRuntime.OpenBlasUsesAvx2KernelsWhenTheCpuHasAvx2' 2> /dev/null |
  sed -n 's/^OpenBLAS core: .* (OPENBLAS_CORETYPE \(.*\))$/\1/p')
if [ -n "$core" ] && [ "$core" != unset ]; then export OPENBLAS_CORETYPE=$core; fi
note "NOTE OpenBLAS kernels: ${OPENBLAS_CORETYPE:-as OpenBLAS detects them}"
have_gnuplot=$(command -v gnuplot > /dev/null && echo yes || echo no)
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)

# Suites with Cuda in their name (CudaSae, GptNeoCuda, ...).
cuda_suites() { "$bin/sae_tests" --gtest_list_tests --gtest_filter='*Cuda*.*' | grep -v '^ ' | grep -v '^Running' | tr -d '.'; }

run_tests() {
  local expect_gpu=$1
  # 1. Each CUDA suite alone: an illegal address is sticky and would fail every later CUDA test of
  #    the process. CUDA_LAUNCH_BLOCKING=1 reports a failing kernel at its own launch.
  local suites
  suites=$(cuda_suites)
  [ -n "$suites" ] || { note "FAIL no CUDA suites listed by sae_tests"; status=1; }
  for suite in $suites; do
    (cd "$root" && SAE_REQUIRE_GPU=$expect_gpu CUDA_LAUNCH_BLOCKING=1 step "cuda_$suite" 300 \
      "$bin/sae_tests" --gtest_filter="$suite.*" --gtest_brief=1) || status=1
  done
  # TorchSaeLoop.CudaTrainerMatchesTorch, FeatureStats.OnCudaTheSameFileAsOnCpu and the like: a CUDA
  # test in a CPU suite (the CPU shards below leave out every test with Cuda in its name).
  (cd "$root" && SAE_REQUIRE_GPU=$expect_gpu CUDA_LAUNCH_BLOCKING=1 step cuda_in_cpu_suites 300 \
    "$bin/sae_tests" --gtest_filter='*.*Cuda*-*Cuda*.*' --gtest_brief=1) || status=1
  # 2. The CPU tests, in 8 shards at once (Study.* need gnuplot).
  local filter='-*Cuda*'
  if [ "$have_gnuplot" = no ]; then
    filter='-*Cuda*:Study.*'
    note "NOTE Study.* left out: no gnuplot on this machine"
  fi
  local pids=()
  for shard in 0 1 2 3 4 5 6 7; do
    (cd "$root" && GTEST_TOTAL_SHARDS=8 GTEST_SHARD_INDEX=$shard OMP_NUM_THREADS=2 step "cpu_shard$shard" 500 \
      "$bin/sae_tests" --gtest_filter="$filter" --gtest_brief=1) &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  # 3. memcheck with exact-size allocations, on the SAE kernels' parity tests.
  if [ -n "$sanitizer" ]; then
    (cd "$root" && SAE_CUDA_EXACT_ALLOC=1 SAE_REQUIRE_GPU=$expect_gpu step memcheck 300 "$sanitizer" --tool memcheck \
      --error-exitcode 3 "$bin/sae_tests" --gtest_filter='CudaSae.*:CudaSparse.KernelsMatchCpu:CudaArch.*' \
      --gtest_brief=1) || status=1
  else
    note "SKIP memcheck: compute-sanitizer not found"
  fi
}

for part in $parts; do
  case $part in
    tests) run_tests 1 ;;
    rehearse) run_tests 0 ;;
    bench)
      # --benchmark_min_time in plain seconds: Google Benchmark 1.7 (Debian 12's, the bundle's) refuses
      # a unit suffix ("0.2s"); later versions take both.
      step bench_cuda 300 "$bin/sae_bench" --benchmark_filter='Cuda' --benchmark_counters_tabular=true \
        --benchmark_min_time=0.2 || status=1
      for tokens in 218 4096; do
        LD_LIBRARY_PATH=$python_library_path step "bench_torch_$tokens" 150 \
          python3 "$root/bench/peer_torch_step.py" --device cuda --tokens "$tokens" || status=1
      done ;;
    run)
      # The original configuration (F 10000, lambda 50, one story per step) on the GPU: 2000 steps
      # first; the 105k-step run only when 52.5 times that fits in its limit.
      original=(--device cuda --l1 50 --progress lines --checkpoint-every 1000000 --overwrite)
      step run2000 120 "$bin/sae_train" "${original[@]}" --steps 2000 --out /tmp/sae-run2000 || status=1
      seconds=$(sed -n 's/^trained .* in \([0-9.]*\)s$/\1/p' "$out/run2000.log")
      if [ -n "$seconds" ] && awk -v s="$seconds" 'BEGIN { exit !(s * 52.5 < 420) }'; then
        timer=()
        [ -x /usr/bin/time ] && timer=(/usr/bin/time -v)
        step run105k 480 "${timer[@]}" "$bin/sae_train" "${original[@]}" --steps 105000 --out /tmp/sae-run105k ||
          status=1
        cp /tmp/sae-run105k/metrics.csv "$out/run105k_metrics.csv" 2>/dev/null
        note "run105k: $(grep -m1 '^trained' "$out/run105k.log")"
      else
        note "SKIP run105k: 2000 steps took '${seconds:-?}' s, 105k would not fit in 420 s"
      fi ;;
    *) note "device_check.sh: unknown part '$part' (tests, bench, run, rehearse)"; exit 2 ;;
  esac
done
note "device_check.sh done: status $status"
exit $status
