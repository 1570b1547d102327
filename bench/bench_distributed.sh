#!/usr/bin/env bash
# Distributed training on this machine's CPU (docs/distributed.md): one process, then 2 ranks as 2
# latent shards and as 2 data-parallel replicas, on the same synthetic data and SAE (TopK k 32 with
# AuxK, d 256, F 8192, 2048-token batches). Prints each run's tokens per second (the training loop's
# wall time, from sae_train's report) and, for the 2-rank runs, rank 0's collective calls, bytes and
# share of the loop. Each rank gets one thread (--threads 1), the one-process run two (the machine's
# two cores either way). Run it in a quiet sitting: `bench/bench_distributed.sh [steps]` (default 50).
set -euo pipefail
steps=${1:-50}
bin=${SAE_BIN:-build/bin}/sae_train
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
common="--synthetic-d 256 --synthetic-concepts 1024 --synthetic-story-concepts 32 --synthetic-active 6
        --features 8192 --batch 2048 --normalize dataset --lr 1e-3 --architecture topk --k 32 --auxk-k 128
        --dead-window 8192 --steps $steps --log-every $steps --checkpoint-every 100000 --progress none
        --device cpu --feature-stats-steps 0"
mpi="mpirun --allow-run-as-root --oversubscribe -np 2"
report() {  # name, log
  local seconds tokens
  tokens=$(grep -o 'trained [0-9]* steps ([0-9]* tokens)' "$2" | head -1 | grep -o '([0-9]*' | tr -d '(')
  seconds=$(python3 - "$2" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r"on cpu in (?:(\d+)h)?(?:(\d+)m)?(?:([0-9.]+)s)?", text)
h, mins, secs = (float(g) if g else 0.0 for g in m.groups())
print(h * 3600 + mins * 60 + secs)
PY
)
  printf '%-28s %8.0f tokens/s  (%s tokens in %s s)\n' "$1" "$(python3 -c "print($tokens / $seconds)")" "$tokens" "$seconds"
  grep 'collectives' "$2" || true
}
$bin $common --threads 2 --out "$out/one" > "$out/one.log"
report "one process, 2 threads" "$out/one.log"
$mpi $bin $common --threads 1 --shards 2 --out "$out/s2" > "$out/s2.log"
report "2 ranks: 2 shards" "$out/s2.log"
$mpi $bin $common --threads 1 --out "$out/r2" > "$out/r2.log"
report "2 ranks: 2 replicas" "$out/r2.log"
python3 scripts/distributed_cost_model.py --check 256 8192 2048 32 128 2 1 "$steps" | tail -1
python3 scripts/distributed_cost_model.py --check 256 8192 2048 32 128 1 2 "$steps" | tail -1
