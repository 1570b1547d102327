#!/usr/bin/env bash
# Peak memory of a run that stops at a middle hook point, against the model file's size and a run
# through every block (docs/models.md, "Loading only what a hook needs"). Makes a random 4-block
# GPT-2 (d 1024, vocabulary 8192: the blocks are most of the file) with transformers, then runs
# sae_cache on a few stories twice under /usr/bin/time: up to blocks.1.hook_resid_post (blocks 0 and
# 1 read, 2 and 3 never touched) and up to hidden_states[4] (all four blocks). Prints the file size
# and both peak resident set sizes.
#   scripts/measure_partial_load.sh [BUILD_BIN]   (default build/bin)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/build/bin}"
work="$(mktemp -d /tmp/sae_partial_load.XXXXXX)"
trap 'rm -rf "$work"' EXIT
python3 - "$work/model" <<'PY'
import sys, torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(vocab_size=8192, n_positions=256, n_embd=1024, n_layer=4, n_head=16))
model.save_pretrained(sys.argv[1], safe_serialization=True)
PY
cp "$root/tests/ref/models/gpt2/tokenizer.json" "$root/tests/ref/models/gpt2/tokenizer_config.json" "$work/model/"
head -c 4000 "$root/tests/ref/text_train/stories.txt" > "$work/stories.txt"
file_bytes=$(stat -c %s "$work/model/model.safetensors")
peak() {  # peak RSS in KiB of sae_cache reading at hook point $1
  /usr/bin/time -f "%M" -o "$work/rss" "$bin/sae_cache" --model "$work/model" --text "$work/stories.txt" \
    --hook "$1" --out "$work/cache_$2" --device cpu --progress none --long-stories split > /dev/null
  cat "$work/rss"
}
none=$(peak "hidden_states[0]" none)
half=$(peak blocks.1.hook_resid_post half)
three=$(peak "hidden_states[3]" three)
whole=$(peak "hidden_states[4]" whole)
echo "model.safetensors: $((file_bytes / 1048576)) MiB (4 blocks of $(( (file_bytes - 8192 * 1024 * 4) / 4 / 1048576 )) MiB each, embeddings 32 MiB)"
echo "peak RSS at hidden_states[0] (the embeddings only):           $((none / 1024)) MiB"
echo "peak RSS stopping at blocks.1.hook_resid_post (2 of 4 blocks): $((half / 1024)) MiB"
echo "peak RSS at hidden_states[3] (3 blocks): $((three / 1024)) MiB"
echo "peak RSS through all 4 blocks (hidden_states[4]):            $((whole / 1024)) MiB"
