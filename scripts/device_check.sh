#!/usr/bin/env bash
# The GPU checks, in one command on the device machine (run from the repository root there, with
# .device/bundle.tar.xz from scripts/device_bundle.sh carried along). Writes its logs under $OUT
# (default ./device-out). Parts: tests (every test, CUDA ones included), bench (the CUDA
# benchmarks and the PyTorch peer), run (the original 105k-step lambda = 50 run on the GPU, timed).
# Usage: scripts/device_check.sh [tests] [bench] [run]   (default: all three)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/device-out}
mkdir -p "$out"
parts=${*:-tests bench run}
bundle=/tmp/sae-bundle
rm -rf "$bundle" && mkdir -p "$bundle" && tar -C "$bundle" -xJf "$root/.device/bundle.tar.xz" || exit 1
# The programs were built in /work/main/build-device: make those paths lead here.
if [ ! -e /work/main ]; then mkdir -p /work && ln -s "$root" /work/main; fi
if [ ! -d /work/main/build-device/bin ] || [ -L /work/main/build-device/bin ]; then
  mkdir -p /work/main/build-device && ln -sfn "$bundle/bin" /work/main/build-device/bin
fi
cuda_libs=$(ls -d /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib 2>/dev/null | tr '\n' ':')
export LD_LIBRARY_PATH="$bundle/lib:${cuda_libs}${LD_LIBRARY_PATH:-}"
bin=/work/main/build-device/bin
{ nvidia-smi; nproc; ldd "$bin/sae_tests"; } > "$out/machine.txt" 2>&1
status=0
for part in $parts; do
  case $part in
    tests)
      (cd "$root" && "$bin/sae_tests" --gtest_brief=1) > "$out/tests.log" 2>&1 || status=1
      tail -3 "$out/tests.log" ;;
    bench)
      "$bin/sae_bench" --benchmark_filter='Cuda' --benchmark_counters_tabular=true > "$out/bench_cuda.log" 2>&1 || status=1
      for tokens in 218 4096; do
        python3 "$root/bench/peer_torch_step.py" --device cuda --tokens "$tokens" >> "$out/bench_torch.log" 2>&1 || status=1
      done
      tail -5 "$out/bench_cuda.log" "$out/bench_torch.log" ;;
    run)
      /usr/bin/time -v "$bin/sae_train" --device cuda --l1 50 --steps 105000 --checkpoint-every 105000 \
        --progress lines --out /tmp/sae-run105k > "$out/run105k.log" 2>&1 || status=1
      cp /tmp/sae-run105k/metrics.csv "$out/run105k_metrics.csv" 2>/dev/null
      tail -8 "$out/run105k.log" ;;
    *) echo "device_check.sh: unknown part '$part' (tests, bench, run)"; exit 2 ;;
  esac
done
exit $status
