#!/usr/bin/env bash
# --distribute from text on this machine's CPU (docs/distributed.md §3a): two TopK SAEs (--k-list
# 32,64) on TinyStories-33M's hidden_states[2] (bench/make_bench_text_model.py: the real shapes,
# random weights), 1024-token batches from chunks of 8192 tokens, trained by one process of 2 threads
# (one forward pass serves both SAEs), then by `mpirun -np 2 --distribute` with one thread per rank
# (each rank runs the model on half of every chunk's windows, one sum completes the chunk, each
# trains one SAE). Prints each job's wall time (the whole command: model load, the dataset-scale and
# geometric-median samples, which each rank still draws alone, and training), each SAE's training
# loop ("trained ... in"), and each rank's share of the model's windows and the bytes summed. The machine's two cores either
# way. Run it in a quiet sitting: `bench/bench_distribute_text.sh [steps]` (default 40).
set -euo pipefail
steps=${1:-40}
bin=${SAE_BIN:-build/bin}/sae_train
work=/tmp/sae_bench_text
[ -d "$work/model" ] || python3 "$(dirname "$0")/make_bench_text_model.py" --out "$work" --stories 400 > /dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
common="--model $work/model --text $work/stories.txt --layer 2 --architecture topk --k-list 32,64 --features 4096
        --batch 1024 --text-chunk-tokens 8192 --normalize dataset --lr 1e-4 --steps $steps --log-every $steps
        --checkpoint-every 100000 --progress none --device cpu --feature-stats-steps 0"
timed() {  # name, log, command...
  local name=$1 log=$2
  shift 2
  local begin end
  begin=$(date +%s.%N)
  "$@" > "$log" 2>&1
  end=$(date +%s.%N)
  printf '%-34s %6.2f s\n' "$name" "$(python3 -c "print($end - $begin)")"
}
timed "one process, 2 threads, both SAEs" "$out/one.log" $bin $common --threads 2 --out "$out/one"
grep -h "^trained" "$out/one.log" || true
timed "2 ranks --distribute, 1 thread each" "$out/d2.log" \
  mpirun --allow-run-as-root --oversubscribe -np 2 $bin $common --threads 1 --distribute --out "$out/d2"
grep -h "^trained\|language model ran on" "$out/d2.log" || true
