#!/usr/bin/env bash
# Rebuilds the seed corpora fuzz/corpus/<target>/ (committed; a few KB per file) from the project's
# own outputs: tiny sae_train runs (config.json, checkpoints in SAELens layout with training state),
# sae_apply's .npy outputs, and the committed fixtures of tests/ref (safetensors, .npy, the test
# tokenizer, whose vocabulary is cut down to its 256 byte tokens and first merges by a few lines
# of python3). Multi-file seeds join their files with fuzz_util.h's part marker.
#   fuzz/make_corpus.sh [BIN_DIR]   (default build-fuzz/bin; sae_train and sae_apply are built there)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/build-fuzz/bin}"
ref="$root/tests/ref"
corpus="$root/fuzz/corpus"
if [ ! -x "$bin/sae_train" ] || [ ! -x "$bin/sae_apply" ]; then
  cmake --build "$(dirname "$bin")" --target sae_train sae_apply -j 2
fi
work="$(mktemp -d /tmp/sae_corpus.XXXXXX)"
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1

targets="json safetensors npy npz activations checkpoint train_config tokenizer_files tokenizer_json tokenizer_encode
         model_config text_corpus sparsify torch_pt"
for t in $targets; do rm -rf "${corpus:?}/$t"; mkdir -p "$corpus/$t"; done
marker() { printf '\n=====sae-fuzz-part=====\n'; }
# The JSON header of a safetensors file (8-byte little-endian length, then the text).
st_header() { local n; n=$(od -An -t u8 -N 8 "$1" | tr -d ' '); tail -c +9 "$1" | head -c "$n"; }

# ---- runs of the programs ----
train=("$bin/sae_train" --device cpu --progress none --log-every 2)
synthetic=(--data synthetic --synthetic-d 5 --synthetic-concepts 8 --synthetic-story-concepts 2 --synthetic-story-active 1
           --synthetic-active 1 --synthetic-stories 20 --synthetic-mean-length 8)
"${train[@]}" "${synthetic[@]}" --features 6 --steps 4 --checkpoint-every 2 --l1 0.5 --out "$work/story" > /dev/null
"${train[@]}" "${synthetic[@]}" --features 4 --steps 5 --checkpoint-every 5 --batch 8 --normalize dataset --lr 1e-3 \
  --lr-warmup-steps 2 --l1-warmup-steps 3 --seed 9 --out "$work/tokens" > /dev/null
"${train[@]}" --data "$ref/io_st_hand.safetensors" --features 3 --steps 3 --checkpoint-every 3 --batch 4 --normalize none \
  --out "$work/file" > /dev/null
"$bin/sae_apply" --sae "$work/story/sae" --input "$ref/io_np_f32.npy" --features-out "$work/features.npy" \
  --reconstruction-out "$work/reconstruction.npy" > /dev/null

# ---- json: our config and cfg files, safetensors headers, a few hand-written edge cases ----
cp "$work/story/config.json" "$corpus/json/config_story.json"
cp "$work/tokens/config.json" "$corpus/json/config_tokens.json"
cp "$work/story/sae/cfg.json" "$corpus/json/cfg.json"
st_header "$work/tokens/sae/training_state.safetensors" > "$corpus/json/training_state_header.json"
st_header "$ref/io_st_hand.safetensors" > "$corpus/json/io_st_hand_header.json"
printf '[0, -0.0, 1e-7, 1.5E+300, -12345678901234567, 9007199254740993, 0.1, true, false, null, "", {}]' > "$corpus/json/numbers.json"
printf '{"escapes": "\\"\\\\\\/\\b\\f\\n\\r\\t\\u0000\\u00e9\\u20ac\\ud83d\\ude00", "utf8": "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "nested": [[[{"a": [1, {"b": null}]}]]]}' > "$corpus/json/strings.json"

# ---- safetensors: fixtures and our checkpoints' files ----
for f in io_st_hand io_st_lib io_st_ref_layout io_st_torch; do cp "$ref/$f.safetensors" "$corpus/safetensors/"; done
cp "$ref/sae_loop_init/sae_weights.safetensors" "$corpus/safetensors/sae_loop_init_weights.safetensors"
cp "$work/story/sae/sae_weights.safetensors" "$corpus/safetensors/story_weights.safetensors"
cp "$work/tokens/sae/training_state.safetensors" "$corpus/safetensors/tokens_training_state.safetensors"

# ---- npy: fixtures (the refused ones too) and sae_apply's outputs ----
cp "$ref"/io_np_*.npy "$corpus/npy/"
cp "$work/features.npy" "$work/reconstruction.npy" "$corpus/npy/"

# ---- npz: Gemma Scope-format params.npz, stored and deflated (scripts/gen_gemma_scope_fixture.py) ----
cp "$ref/gemma_scope/stored/params.npz" "$corpus/npz/params_stored.npz"
cp "$ref/gemma_scope/deflated.npz" "$corpus/npz/params_deflated.npz"

# ---- activations: files with story_lengths and token_ids, .npy ----
for f in io_st_hand io_st_lib sae_loop_data; do cp "$ref/$f.safetensors" "$corpus/activations/"; done
for f in io_np_f32 io_np_f16 io_np_f64 io_np_v2; do cp "$ref/$f.npy" "$corpus/activations/"; done

# ---- checkpoint: cfg.json, sae_weights.safetensors, training_state.safetensors ----
checkpoint_seed() {  # DIR NAME
  { cat "$1/cfg.json"; marker; cat "$1/sae_weights.safetensors"
    if [ -f "$1/training_state.safetensors" ]; then marker; cat "$1/training_state.safetensors"; fi; } > "$corpus/checkpoint/$2"
}
checkpoint_seed "$work/story/checkpoints/step_2" story_step_2
checkpoint_seed "$work/story/sae" story_final
checkpoint_seed "$work/tokens/sae" tokens_final
checkpoint_seed "$work/file/sae" file_final
checkpoint_seed "$ref/sae_loop_init" sae_loop_init_no_state

# ---- sparsify: cfg.json and sae.safetensors of sparsify's own folders (scripts/gen_sparsify_fixture.py) ----
for f in h.1 transcoder groupmax; do
  { cat "$ref/sparsify/$f/cfg.json"; marker; cat "$ref/sparsify/$f/sae.safetensors"; } > "$corpus/sparsify/$f"
done

# ---- torch_pt: ae.pt and config.json, dictionary_learning's layout (tests/ref/dictionary_learning) at
# d 4, 8 latents, and an OpenAI TopK state dict (torch.save by python3 with PyTorch; skipped without it) ----
if python3 -c "import torch" 2> /dev/null; then
  python3 - "$work/torch_pt" << 'PY'
import json, os, sys, torch
out = sys.argv[1]
g = torch.Generator().manual_seed(0)
r = lambda *shape: torch.randn(*shape, generator=g)
layouts = {
    "AutoEncoder": {"bias": r(4), "encoder.weight": r(8, 4), "encoder.bias": r(8), "decoder.weight": r(4, 8)},
    "AutoEncoderTopK": {"k": torch.tensor(2, dtype=torch.int), "threshold": torch.tensor(-1.0), "decoder.weight": r(4, 8),
                        "encoder.weight": r(4, 8).T, "encoder.bias": r(8), "b_dec": r(4)},
    "MatryoshkaBatchTopKSAE": {"k": torch.tensor(2, dtype=torch.int), "threshold": torch.tensor(0.5), "W_enc": r(4, 8),
                               "b_enc": r(8), "W_dec": r(8, 4), "b_dec": r(4), "group_sizes": torch.tensor([4, 4])},
    "GatedAutoEncoder": {"decoder_bias": r(4), "encoder.weight": r(8, 4), "r_mag": r(8), "gate_bias": r(8),
                         "mag_bias": r(8), "decoder.weight": r(4, 8)},
}
for name, state in layouts.items():
    os.makedirs(os.path.join(out, name), exist_ok=True)
    torch.save(state, os.path.join(out, name, "ae.pt"))
    with open(os.path.join(out, name, "config.json"), "w") as f:
        json.dump({"trainer": {"dict_class": name, "k": 2, "submodule_name": "resid_post_layer_1"}}, f)
# OpenAI's sparse_autoencoder state dict (TopK: strings beside the tensors), no config.json.
openai = {"pre_bias": r(4), "latent_bias": r(8), "encoder.weight": r(8, 4), "decoder.weight": r(4, 8),
          "stats_last_nonzero": torch.zeros(8, dtype=torch.long), "activation": "TopK",
          "activation_state_dict": {"k": 2, "postact_fn": "ReLU"}}
torch.save(openai, os.path.join(out, "openai_topk.pt"))
PY
  for f in AutoEncoder AutoEncoderTopK MatryoshkaBatchTopKSAE GatedAutoEncoder; do
    { cat "$work/torch_pt/$f/ae.pt"; marker; cat "$work/torch_pt/$f/config.json"; } > "$corpus/torch_pt/$f"
  done
  cp "$work/torch_pt/openai_topk.pt" "$corpus/torch_pt/OpenAITopK"
fi

# ---- train_config: config.json of the three runs ----
for r in story tokens file; do cp "$work/$r/config.json" "$corpus/train_config/config_$r.json"; done

# ---- tokenizers: the test tokenizer cut down to its byte tokens and first merges ----
python3 - "$ref/tokenizer" "$work" <<'PY'
import json, sys
src, out = sys.argv[1], sys.argv[2]
vocab = json.load(open(f"{src}/vocab.json", encoding="utf-8"))
merges = [l for l in open(f"{src}/merges.txt", encoding="utf-8").read().split("\n") if l and not l.startswith("#version")]
by_id = sorted(vocab, key=vocab.get)
small = {tok: i for i, tok in enumerate(by_id[:256])}
kept = []
for line in merges:
    a, b = line.split(" ")
    if a in small and b in small and len(kept) < 40:
        small.setdefault(a + b, len(small))
        kept.append((a, b))
small["<|endoftext|>"] = len(small)
json.dump(small, open(f"{out}/vocab.json", "w", encoding="utf-8"), ensure_ascii=False)
open(f"{out}/merges.txt", "w", encoding="utf-8").write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in kept))
full = json.load(open(f"{src}/tokenizer.json", encoding="utf-8"))
full["added_tokens"] = [dict(full["added_tokens"][0], id=small["<|endoftext|>"])]
full["model"]["vocab"] = small
full["model"]["merges"] = [[a, b] for a, b in kept]
json.dump(full, open(f"{out}/tokenizer_pairs.json", "w", encoding="utf-8"), ensure_ascii=False, indent=1)
full["model"]["merges"] = [f"{a} {b}" for a, b in kept]
full["added_tokens"].append(dict(full["added_tokens"][0], id=len(small), content="<|pad|>"))
json.dump(full, open(f"{out}/tokenizer_strings.json", "w", encoding="utf-8"), ensure_ascii=False)
texts = [json.loads(l)["text"] for l in open(f"{src}/cases.jsonl", encoding="utf-8")]
for i, t in enumerate(texts[::300]):
    open(f"{out}/text_{i:02d}.txt", "w", encoding="utf-8", newline="").write(t)
PY
texts() { for i in "$@"; do marker; cat "$work/text_$i.txt"; done; }
{ cat "$work/vocab.json"; marker; cat "$work/merges.txt"; texts 01 05 09; } > "$corpus/tokenizer_files/small"
{ cat "$work/vocab.json"; marker; tail -n +2 "$work/merges.txt"; texts 12; } > "$corpus/tokenizer_files/small_no_version"
{ cat "$work/tokenizer_pairs.json"; texts 02 14; } > "$corpus/tokenizer_json/small_pairs"
{ cat "$work/tokenizer_strings.json"; texts 07; } > "$corpus/tokenizer_json/small_strings_added"
cp "$work"/text_*.txt "$corpus/tokenizer_encode/"
printf 'Once upon a time <|endoftext|> there was a cat.\n\n  It said "hi!" 123 \xe2\x80\x94 caf\xc3\xa9 \xf0\x9f\x90\x88' > "$corpus/tokenizer_encode/story.txt"

# ---- model_config: the fixture models' config.json (GPT-Neo, GPT-2, GPT-NeoX) ----
cp "$ref/gpt_neo/tiny/config.json" "$corpus/model_config/gpt_neo.json"
for m in gpt2 gpt2_scaled pythia neox_seq; do cp "$ref/models/$m/config.json" "$corpus/model_config/$m.json"; done

# ---- text_corpus: a few stories as .txt and JSON lines, plain, gzip and zstd ----
head -c 1200 "$ref/text_train/stories.txt" > "$corpus/text_corpus/stories.txt"
printf '{"text": "Once upon a time."}\n\n{"text": "  "}\n{"text": "Two \\u00e9."}\n' > "$corpus/text_corpus/lines.jsonl"
gzip -9 -n -c "$corpus/text_corpus/lines.jsonl" > "$corpus/text_corpus/lines.jsonl.gz"
zstd -q -19 -c "$corpus/text_corpus/stories.txt" > "$corpus/text_corpus/stories.txt.zst"

du -sh "$corpus"/* | sed "s|$root/||"
