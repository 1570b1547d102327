#!/usr/bin/env bash
# The GPU checks and measurements of one device sitting, in one call, within a time
# budget. Run from the repository root on the device machine with .device/bundle.tar.xz (made here by
# scripts/device_bundle.sh) carried along:
#
#   scripts/device_check.sh              everything below, in this order, within DEVICE_BUDGET seconds
#                                        (default 470: under 8 minutes; each step also has its own
#                                        limit, and a step that would not fit what is left is skipped).
#                                        The limits add up to about 1000 s: in 470 s a call gets the
#                                        tests, bench_step, peer_torch and part of bench_topk; the
#                                        later steps need a second call with DEVICE_BUDGET set, which
#                                        a 15-minute allowance (machine start included) may not leave
#   scripts/device_check.sh original     only run3000, run105k and memcheck (a second call, when the
#                                        first had no time left for them)
#   scripts/device_check.sh rehearse     the same steps on a machine without a GPU, at toy sizes on
#                                        the CPU (CUDA tests skip, CUDA benchmarks report "no GPU"):
#                                        checks the script, the bundle and every command line
#
# Steps (each one line in summary.txt the moment it ends; logs in $OUT/logs/, tarred at the end):
#   machine       nvidia-smi, cores, tools, every program's libraries
#   cuda_tests    every test with Cuda in its suite or name, one process per suite, 6 at a time,
#                 SAE_REQUIRE_GPU=1 (a CUDA start-up failure fails instead of skipping)
#   bench_step    BM_Cuda_SaeStep / GemmFloor / SaeTrainStep (also with its loss sums left on the device)
#                 at 218 and 4096 tokens, fp32/tf32/bf16,
#                 and the element-wise kernels against their copy floor
#   peer_torch    bench/peer_torch_gpu.py: the standard step (218, 4096 tokens) and TopK (F 16384,
#                 65536) in eager PyTorch at fp32, TF32 and bf16 autocast, right after ours
#   bench_topk    BM_Cuda_TopKStep against its floor: F 16384 / 65536 at each precision; 2^20 latents
#                 at d 768 and 2304 (tf32, bf16) with device memory, and with --encoder-chunk 1024
#                 (BM_Cuda_TopKStep_Chunked); the step's kernels one by one
#   bench_sparse  BM_Cuda_SparseStep at 2% and 0.5% (dense vs sparse) and BM_Cuda_SparseCrossover
#                 (prints the crossover density that sets kAutoMaxDensityCuda)
#   bench_stats   BM_Cuda_StepWithFeatureStats: what gathering feature statistics adds to a step
#                 (218 tokens dense and sparse, 4096 dense; goal: at most 5%)
#   text          training from text: bench/make_bench_text_model.py, 2000 steps of sae_train --model
#                 at fp32, tf32 and bf16, and the tutorial's loop in PyTorch/transformers on the GPU
#   npy_runs      real sae_train runs on 4096 x 60 random tokens (--batch 4096 --normalize dataset,
#                 120 steps): standard F 10000 and TopK F 65536 k 32 at fp32, tf32 and bf16
#   run3000       the original configuration (sae_train --device cuda --l1 50: synthetic stories,
#                 one per step, F 10000) for 3000 steps, then
#   run105k       all 105000 steps, when 35 x the 3000 steps' time fits in what is left (else skipped:
#                 run the `original` mode in a second call)
#   memcheck      compute-sanitizer memcheck (exact-size allocations) on the new kernels' tests
# What comes back under $OUT (default ./device-out): summary.txt, digest.txt (the key lines of every
# log: benchmark rows, peers, "trained" lines) and logs.tar.gz: three files.
# Exit status: 0 when every step that ran passed, 1 otherwise.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:-all}
case $mode in
  all | original | rehearse) ;;
  *) echo "device_check.sh: unknown mode '$mode' (all, original, rehearse)"; exit 2 ;;
esac
out=${OUT:-$root/device-out}
logs="$out/logs"
mkdir -p "$logs"
only_original=$([ "$mode" = original ] && echo 1 || echo 0)
summary="$out/summary.txt"
budget=${DEVICE_BUDGET:-$([ "$mode" = rehearse ] && echo 1500 || echo 470)}
started=$(date +%s)
status=0
note() { echo "$*" | tee -a "$summary"; }
left() { echo $((budget - ($(date +%s) - started))); }

# step NAME LIMIT MIN COMMAND...: runs COMMAND with the smaller of LIMIT and what is left of the
# budget (skipped when that is under MIN), its output in logs/NAME.log, one line in the summary.
step() {
  local name=$1 limit=$2 minimum=$3
  shift 3
  local remaining
  remaining=$(left)
  [ "$remaining" -lt "$limit" ] && limit=$remaining
  if [ "$limit" -lt "$minimum" ]; then
    note "SKIP $name: ${remaining}s of the budget left (needs ${minimum}s)"
    return 0
  fi
  local begin end rc seconds
  begin=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" > "$logs/$name.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  seconds=$(awk -v a="$end" -v b="$begin" 'BEGIN { printf "%.1f", a - b }')
  if [ $rc -eq 0 ]; then
    note "PASS $name (${seconds}s)"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    note "TIMEOUT $name after ${seconds}s (limit ${limit}s)"
    status=1
  else
    note "FAIL $name (exit $rc, ${seconds}s): $(grep -m1 -E 'FAILED|Failure|rror' "$logs/$name.log" | cut -c1-200)"
    status=1
  fi
  return $rc
}
# What the steps' functions (run by `bash -c` under timeout) read.
export root logs

note "device_check.sh $mode: $(date -u +%FT%TZ), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown), budget ${budget}s"

# ---- the bundle: programs and the libraries the device lacks ----
bundle=/tmp/sae-bundle
rm -rf "$bundle" && mkdir -p "$bundle"
if ! tar -C "$bundle" -xJf "$root/.device/bundle.tar.xz" 2> "$logs/unpack.log"; then
  note "FAIL unpack: $(head -c 300 "$logs/unpack.log") (run scripts/device_bundle.sh and copy .device/ beside the checkout)"
  exit 1
fi
# The tests find fixtures and programs by the paths compiled into them (the checkout the bundle was
# built in): make those paths lead here.
built_in=$(cat "$bundle/source_root" 2> /dev/null || echo "$root")  # a bundle without it: built here
if [ "$built_in" != "$root" ] && [ ! -e "$built_in" ]; then mkdir -p "$(dirname "$built_in")" && ln -s "$root" "$built_in"; fi
if [ ! -d "$built_in/build-device/bin" ] || [ -L "$built_in/build-device/bin" ]; then
  mkdir -p "$built_in/build-device" && ln -sfn "$bundle/bin" "$built_in/build-device/bin"
fi
bin=$built_in/build-device/bin
python_library_path=${LD_LIBRARY_PATH:-}  # PyTorch brings its own CUDA libraries: leave its path as it was
cuda_libs=""
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib \
           $(python3 -c 'import glob, site; print(" ".join(glob.glob(site.getsitepackages()[0] + "/nvidia/*/lib")))' 2>/dev/null); do
  [ -d "$dir" ] && cuda_libs="$cuda_libs$dir:"
done
export LD_LIBRARY_PATH="$bundle/lib:${cuda_libs}${LD_LIBRARY_PATH:-}"
export OMP_WAIT_POLICY=passive
py=(env LD_LIBRARY_PATH="$python_library_path" python3)
export bin python_library_path

# ---- sizes: the device's, or toy ones for the rehearsal ----
if [ "$mode" = rehearse ]; then
  dev=cpu; expect_gpu=0; min_time=0.01
  original_steps=30; long_steps=105000; text_steps=3; npy_tokens=8192; npy_steps=2; npy_features=256
  peer_args=(--device cpu --tokens 16 --topk-tokens 32 --features 256 --topk-features 512 --d 64 --rounds 1 --steps-per-round 1)
else
  dev=cuda; expect_gpu=1; min_time=0.2
  original_steps=3000; long_steps=105000; text_steps=2000; npy_tokens=245760; npy_steps=120; npy_features=0
  peer_args=(--device cuda --tokens 218,4096 --topk-tokens 4096 --features 10000 --topk-features 16384,65536)
fi
export dev expect_gpu text_steps npy_tokens npy_steps npy_features

# ---- machine ----
{
  nvidia-smi || echo "nvidia-smi: not available"
  echo "cores: $(nproc)"
  echo "gnuplot: $(command -v gnuplot || echo missing)"
  echo "compute-sanitizer: $(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || echo missing)"
  "${py[@]}" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>&1
  for program in "$bin"/*; do echo "== $program"; ldd "$program"; done
} > "$logs/machine.txt" 2>&1
if grep -q "=> not found" "$logs/machine.txt"; then
  note "FAIL libraries: $(grep "=> not found" "$logs/machine.txt" | sort -u | tr -s ' \t' ' ' | tr '\n' ';' | cut -c1-300)"
  status=1
else
  note "PASS libraries (every program's libraries found)"
fi
# OpenBLAS's kernel family fixed for every later process, so that none restarts itself.
core=$("$bin/sae_tests" --gtest_filter='CpuRuntime.OpenBlasUsesAvx2KernelsWhenTheCpuHasAvx2' 2> /dev/null |
  sed -n 's/^OpenBLAS core: .* (OPENBLAS_CORETYPE \(.*\))$/\1/p')
if [ -n "$core" ] && [ "$core" != unset ]; then export OPENBLAS_CORETYPE=$core; fi
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)

if [ "$only_original" = 0 ]; then
# ---- 1. the CUDA tests: one process per suite (an illegal address is sticky), 6 at a time ----
cuda_tests() {
  local suites
  suites=$("$bin/sae_tests" --gtest_list_tests --gtest_filter='*Cuda*.*' | grep -v '^ ' | grep -v '^Running' | tr -d '.')
  [ -n "$suites" ] || { echo "no CUDA suites listed"; return 1; }
  # Each suite, and the CUDA tests of CPU suites (TorchSaeLoop.CudaTrainerMatchesTorch and the like);
  # alone afterwards: the allocator's suite (its out-of-memory test fills the GPU) and CudaParity
  # (its GEMMs with a 2304 x 2^20 weight hold about 30 GiB).
  one_suite() {
    local filter="$1.*"
    [ "$1" = IN_CPU_SUITES ] && filter="*.*Cuda*-*Cuda*.*"
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-3} SAE_REQUIRE_GPU=$expect_gpu CUDA_LAUNCH_BLOCKING=1 "$bin/sae_tests" \
      --gtest_filter="$filter" --gtest_brief=1 > "$logs/cuda_$1.log" 2>&1
  }
  export -f one_suite
  printf '%s\n' $suites IN_CPU_SUITES | grep -v -x -e '.*Allocator.*' -e CudaParity | xargs -P 6 -I{} bash -c 'one_suite {}'
  local rc=$?
  for suite in $(printf '%s\n' $suites | grep -x -e '.*Allocator.*' -e CudaParity); do one_suite "$suite" || rc=1; done
  grep -l "FAILED\|Failure" "$logs"/cuda_*.log | sed 's|.*/cuda_\(.*\)\.log|failed: \1|'
  grep -h "^\[  PASSED\|^\[  SKIPPED\|^\[  FAILED" "$logs"/cuda_*.log | sort | uniq -c
  return $rc
}
export -f cuda_tests
(cd "$root" && step cuda_tests 170 30 bash -c cuda_tests) || status=1

# ---- 2. benchmarks and the PyTorch peer, in one sitting ----
bench=("$bin/sae_bench" --benchmark_counters_tabular=true --benchmark_min_time="$min_time")
step bench_step 90 20 "${bench[@]}" \
  --benchmark_filter='BM_Cuda_(SaeStep|SaeStepGemmFloor|SaeTrainStep|SaeTrainStepSumsOnDevice|EncoderActivate|EncoderBackward|CopyFloor)/'
step peer_torch 110 30 "${py[@]}" "$root/bench/peer_torch_gpu.py" "${peer_args[@]}"
step bench_topk 150 30 "${bench[@]}" --benchmark_filter='BM_Cuda_TopKStep'
step bench_sparse 90 20 "${bench[@]}" --benchmark_filter='BM_Cuda_SparseStep/(218|4096)/(5|20)/|BM_Cuda_SparseCrossover'
step bench_stats 45 15 "${bench[@]}" --benchmark_filter='BM_Cuda_StepWithFeatureStats'

# ---- 3. training from text on the GPU, and the tutorial's loop ----
text_run() {
  local work=/tmp/sae_bench_text
  LD_LIBRARY_PATH=$python_library_path python3 "$root/bench/make_bench_text_model.py" --out "$work" --stories 300 || return 1
  local common=(--model "$work/model" --text "$work/stories.txt" --layer 2 --features 10000 --l1 50 --lr 1e-5
                --batch story --normalize story --progress none --checkpoint-every 1000000 --overwrite
                --feature-stats-steps 0 --device "$dev" --steps "$text_steps")
  for precision in fp32 tf32 bf16; do
    echo "== sae_train from text, --precision $precision"
    "$bin/sae_train" "${common[@]}" --precision "$precision" --out "$work/run_$precision" || return 1
  done
  echo "== the tutorial's step in PyTorch/transformers"
  LD_LIBRARY_PATH=$python_library_path python3 "$root/bench/peer_hf_extract.py" --mode step --device "$dev" \
    --tokens 218 --steps "$([ "$dev" = cuda ] && echo 20 || echo 1)" --rounds "$([ "$dev" = cuda ] && echo 5 || echo 1)"
}
export -f text_run
step text 110 30 bash -c text_run

# ---- 4. real runs on a token file: standard and TopK at each precision ----
npy_runs() {
  local work=/tmp/sae_npy
  mkdir -p "$work"
  LD_LIBRARY_PATH=$python_library_path python3 -c "
import numpy as np
np.save('$work/acts.npy', np.random.default_rng(0).standard_normal(($npy_tokens, 768), dtype=np.float32))" || return 1
  local common=(--data "$work/acts.npy" --batch 4096 --normalize dataset --steps "$npy_steps" --device "$dev"
                --progress none --checkpoint-every 1000000 --overwrite --feature-stats-steps 0 --lr 1e-4)
  local standard_f=$([ "$npy_features" -gt 0 ] && echo "$npy_features" || echo 10000)
  local topk_f=$([ "$npy_features" -gt 0 ] && echo "$npy_features" || echo 65536)
  for precision in fp32 tf32 bf16; do
    echo "== standard F $standard_f --sparse off --precision $precision"
    "$bin/sae_train" "${common[@]}" --features "$standard_f" --l1 5 --sparse off --precision "$precision" \
      --out "$work/standard_$precision" || return 1
    echo "== topk F $topk_f k 32 --precision $precision"
    "$bin/sae_train" "${common[@]}" --architecture topk --k 32 --features "$topk_f" --precision "$precision" \
      --out "$work/topk_$precision" || return 1
  done
}
export -f npy_runs
step npy_runs 100 30 bash -c npy_runs

fi  # sections 1-4

# ---- 5. the original configuration: 3000 steps, then 105k when they fit ----
original=(--device "$dev" --l1 50 --progress lines --checkpoint-every 1000000 --overwrite)
seconds_of() { sed -n 's/^trained .* in \([0-9.]*\)s$/\1/p' "$1" | tail -1; }
step run3000 60 10 "$bin/sae_train" "${original[@]}" --steps "$original_steps" --out /tmp/sae-run3000
seconds=$(seconds_of "$logs/run3000.log")
if [ -n "$seconds" ]; then
  need=$(awk -v s="$seconds" -v a="$original_steps" -v b="$long_steps" 'BEGIN { printf "%d", 1.1 * s * b / a + 20 }')
  if [ "$mode" = rehearse ]; then
    note "NOTE run105k: ${original_steps} steps took ${seconds}s, 105000 would need ~${need}s (not run in a rehearsal)"
  else
    timer=()
    [ -x /usr/bin/time ] && timer=(/usr/bin/time -v)
    step run105k "$need" "$need" "${timer[@]}" "$bin/sae_train" "${original[@]}" --steps "$long_steps" --out /tmp/sae-run105k &&
      note "run105k: $(grep -m1 '^trained' "$logs/run105k.log")"
  fi
fi

# ---- 6. memcheck of the new kernels' tests (exact-size allocations) ----
if [ -n "$sanitizer" ]; then
  (cd "$root" && export SAE_CUDA_EXACT_ALLOC=1 SAE_REQUIRE_GPU=$expect_gpu && step memcheck 90 30 "$sanitizer" \
    --tool memcheck --error-exitcode 3 "$bin/sae_tests" \
    --gtest_filter='CudaPrecision.*:CudaDeviceData.TheGenerator*:CudaDeviceData.Normalize*:CudaSparse.KernelsMatchCpu:CudaArch.Selections*:CudaSae.Bf16*:CudaSparse.IndexOfBf16*:CudaArch.DenseKernelsOnBf16Storage*' \
    --gtest_brief=1) || {
      # Some device machines run under a sandbox where the sanitizer cannot attach ("Device not
      # supported", error 999): that is no finding about the kernels.
      if grep -qE "Device not supported|error 999" "$logs/memcheck.log" 2>/dev/null; then
        note "SKIP memcheck: compute-sanitizer cannot attach to this device (see logs/memcheck.log)"
      else
        status=1
      fi
    }
else
  note "SKIP memcheck: compute-sanitizer not found"
fi

# ---- what comes back: the summary, a digest of every log, the logs tarred ----
{
  echo "# digest of $out/logs (device_check.sh $mode, $(date -u +%FT%TZ))"
  for f in "$logs"/bench_*.log; do
    [ -f "$f" ] && { echo "== $(basename "$f")"; grep -E '^BM_|crossover|sparse pays' "$f"; }
  done
  for f in "$logs"/peer_torch.log "$logs"/run*.log "$logs"/text.log "$logs"/npy_runs.log; do
    [ -f "$f" ] && { echo "== $(basename "$f")"; grep -E '^peer|^torch|^== |^trained|tokens/s|Maximum resident|Elapsed|"ms_per_step"|ms_per|"mode"' "$f" | cut -c1-400; }
  done
  echo "== tests"
  grep -hE "PASSED|FAILED|SKIPPED" "$logs"/cuda_*.log "$logs"/memcheck.log 2>/dev/null | sort | uniq -c | head -40
  grep -h "ERROR SUMMARY" "$logs"/memcheck.log 2>/dev/null
} > "$out/digest.txt" 2>&1
tar -C "$out" -czf "$out/logs.tar.gz" logs && rm -rf "$logs"
note "device_check.sh done in $(( $(date +%s) - started ))s: status $status"
exit $status
