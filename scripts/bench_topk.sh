#!/usr/bin/env bash
# Measures the TopK step on CPU in one sitting (bench/bench_topk.cpp, bench/RESULTS.md): ours, the
# floor and the pieces (Google Benchmark), then the PyTorch eager peer with as many threads as
# OpenMP gets. Check `uptime` first: on a shared machine other jobs change the times.
# Usage: scripts/bench_topk.sh [build dir] [python]
set -euo pipefail
build=${1:-build}
python=${2:-python3}
threads=${OMP_NUM_THREADS:-$(nproc)}
uptime
OMP_NUM_THREADS=$threads "$build/bin/sae_bench" --benchmark_filter='TopKStep' --benchmark_counters_tabular=true
if "$python" -c "import torch" 2>/dev/null; then
  for features in 16384 65536; do
    "$python" "$(dirname "$0")/../bench/peer_torch_topk.py" --threads "$threads" --features "$features"
  done
else
  echo "PyTorch peer skipped: $python has no torch"
fi
uptime
