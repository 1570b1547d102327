#!/usr/bin/env bash
# Training from text, measured end to end on this CPU (bench/RESULTS.md records the results):
#   1. the on-the-fly step: tokenize one ~218-token story, GPT-Neo (TinyStories-33M architecture,
#      random weights) to hidden_states[2], per-story normalisation, the SAE step (F 10000, lambda 50,
#      lr 1e-5, Adam), dense regime (a fresh init: about half the features active) — sae_train vs the
#      PyTorch / Hugging Face peer doing the tutorial's step (bench/peer_hf_extract.py --mode step,
#      which runs the whole model as the tutorial does);
#   2. the same with a sparse SAE (about 2.5% of the features active: --init from a folder whose
#      encoder biases are shifted down by 30; the per-story normalised inputs have norm ~768, so
#      the pre-activations have a standard deviation of about 16), which takes our sparse path (PyTorch computes it densely);
#   3. four SAEs (lambda 10, 20, 50, 100) from one pass over the text (--l1-list) vs four runs.
# Usage: [BUILD=build-cpu] bench/bench_text_training.sh [STEPS] (default 20). Needs a build (make), python3 with torch,
# transformers, tokenizers, safetensors. Check `uptime` first: other work on the cores skews it.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-20}
threads=${THREADS:-2}
build=${BUILD:-build}  # the build folder whose sae_train runs (make builds build/)
work=/tmp/sae_bench_text
python3 bench/make_bench_text_model.py --out "$work" > /dev/null
common=(--model "$work/model" --text "$work/stories.txt" --layer 2 --features 10000 --lr 1e-5 --batch story
        --normalize story --progress none --log-every 1 --checkpoint-every 1000000 --threads "$threads" --overwrite
        --feature-stats-steps 0)
# --feature-stats-steps 0: the tutorial's loop gathers no statistics, and a real run gathers them over
# its last 1000 steps only (1% of the original's 105k); their cost per step is bench_feature_stats's.
seconds_of() { sed -n 's/^trained .* in \([0-9.]*\)s$/\1/p' "$1"; }
ms_per_step() { awk -v s="$1" -v n="$2" 'BEGIN { printf "%.1f", 1000 * s / n }'; }
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "commit: $(git rev-parse --short HEAD)"

# 1. dense
"$build"/bin/sae_train "${common[@]}" --l1 50 --steps "$steps" --out "$work/dense" > "$work/dense.txt"
echo "ours, dense step: $(ms_per_step "$(seconds_of "$work/dense.txt")" "$steps") ms ($(sed -n 's/.*proportion \([0-9.]*\)).*/\1/p' "$work/dense.txt") of features active at the end)"

# 2. sparse: the dense run's final SAE with b_enc lowered so that about 2.5% of the features fire
python3 - "$work" <<'PY'
import json, os, shutil, sys
import numpy as np
from safetensors.numpy import load_file, save_file
work = sys.argv[1]
src, dst = os.path.join(work, "dense/sae"), os.path.join(work, "sparse_init")
shutil.rmtree(dst, ignore_errors=True)
os.makedirs(dst)
w = load_file(os.path.join(src, "sae_weights.safetensors"))
w["b_enc"] = (w["b_enc"] - 30.0).astype(np.float32)  # pre-activations have std ~16 here: ~2.5% fire
save_file(w, os.path.join(dst, "sae_weights.safetensors"))
shutil.copy(os.path.join(src, "cfg.json"), os.path.join(dst, "cfg.json"))
PY
"$build"/bin/sae_train "${common[@]}" --l1 50 --steps "$steps" --sparse auto --init "$work/sparse_init" \
    --out "$work/sparse" > "$work/sparse.txt"
echo "ours, sparse step: $(ms_per_step "$(seconds_of "$work/sparse.txt")" "$steps") ms ($(sed -n 's/.*proportion \([0-9.]*\)).*/\1/p' "$work/sparse.txt") of features active at the end)"

# 3. four SAEs: one pass vs four runs (wall time of the whole commands, start-up included)
start=$(date +%s.%N)
"$build"/bin/sae_train "${common[@]}" --l1-list 10,20,50,100 --steps "$steps" --out "$work/together" > /dev/null
together=$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { printf "%.1f", a - b }')
start=$(date +%s.%N)
for l1 in 10 20 50 100; do
  "$build"/bin/sae_train "${common[@]}" --l1 "$l1" --steps "$steps" --out "$work/alone_$l1" > /dev/null
done
alone=$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { printf "%.1f", a - b }')
cmp -s "$work/together/l1_50/sae/sae_weights.safetensors" "$work/alone_50/sae/sae_weights.safetensors" &&
  same="byte-identical" || same="DIFFERENT"
echo "four SAEs, $steps steps: one pass ${together}s, four runs ${alone}s (ratio $(awk -v a="$alone" -v b="$together" 'BEGIN { printf "%.2f", a / b }')); lambda 50's weights $same"

# the peer
OMP_WAIT_POLICY=passive python3 bench/peer_hf_extract.py --mode step --threads "$threads" --tokens 218 \
    --steps 5 --rounds 3 --warmup 1
