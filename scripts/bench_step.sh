#!/usr/bin/env bash
# Measures the original step on CPU in one sitting: ours and the floor (Google Benchmark), then the
# PyTorch peer (Debian's python3-torch, 2 threads). Usage: scripts/bench_step.sh [build dir]
set -euo pipefail
build=${1:-build}
"$build/bin/sae_bench" --benchmark_filter='SaeStep' --benchmark_counters_tabular=true
if /usr/bin/python3 -c "import torch" 2>/dev/null; then
  /usr/bin/python3 "$(dirname "$0")/../bench/peer_torch_step.py" --threads "$(nproc)" --tokens 218
  /usr/bin/python3 "$(dirname "$0")/../bench/peer_torch_step.py" --threads "$(nproc)" --tokens 4096 --steps 3
else
  echo "PyTorch peer skipped: /usr/bin/python3 has no torch (apt-get install python3-torch)"
fi
