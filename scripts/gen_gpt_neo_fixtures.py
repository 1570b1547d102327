"""Writes the GPT-Neo reference fixtures for the C++ model tests (docs/gpt_neo.md, "Fixtures"):
Hugging Face transformers' GPTNeoForCausalLM, with hashed weights (scripts/hashed_weights.py), in
eval mode, float32, one sequence at a time (batch 1, no padding, no attention_mask).

    python3 scripts/gen_gpt_neo_fixtures.py                  # writes tests/ref/gpt_neo/, then re-runs
                                                             # into a temporary folder and compares bytes
    python3 scripts/gen_gpt_neo_fixtures.py --out-dir DIR [--no-rerun] [--skip-tinystories]

Needs torch, transformers, safetensors, numpy. Runs on one thread (torch.set_num_threads(1)) so the
bytes do not depend on the machine's core count; about a minute on one core.

Writes, under the output folder:

    tiny/            config.json + model.safetensors (F32) [+ generation_config.json]: the tiny model,
                     save_pretrained(safe_serialization=True), a real HF model folder
    tiny_f16/        the same model after model.half(), saved the same way (F16 tensors)
    tiny_bf16/       the same after model.bfloat16() (BF16 tensors)
    tiny_expected.safetensors        outputs of tiny/ (names below)
    tiny_f16_expected.safetensors    outputs of tiny_f16/ loaded with dtype=torch.float32 (the F16 weights,
                                     widened exactly, computed in float32); same names
    tiny_bf16_expected.safetensors   the same for tiny_bf16/
    tinystories33m_hashed/config.json   the TinyStories-33M architecture (no weights: the C++ test
                                     builds them from the hash)
    tinystories33m_hashed_expected.safetensors   its outputs on one 300-token sequence
    tiny_acts.safetensors            hidden_states[2] of the tiny model on 6 stories (SAE data layout)
    config_cases.json                {"accept": {name: config}, "reject": {name: config}}: variants of
                                     tiny/config.json for the C++ loader's config checks

Expected-output names (all F32 unless noted), for each sequence s:

    seq{s}.input_ids         I64 [T]
    seq{s}.hidden.{k}        [T, d] for k = 0..num_layers: output_hidden_states' entry k (k = 0 the
                             embeddings, 1..L-1 the raw residual after block k, L = ln_f of the last block)
    seq{s}.logits            [T, vocab]
  and in tinystories33m_hashed_expected.safetensors (one sequence, rows subsetted):
    seq0.positions           I64 [P]: the positions whose hidden states are stored
    seq0.hidden.{k}          [P, 768] rows at seq0.positions
    seq0.hidden.2.full       [T, 768] hidden_states[2] at every position (the SAE layer)
    seq0.logit_positions     I64 [Q]; seq0.logits [Q, 50257]
"""
import argparse
import filecmp
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt_neo_ref as ref  # noqa: E402
import hashed_weights as hw  # noqa: E402

import transformers  # noqa: E402
from transformers import GPTNeoConfig, GPTNeoForCausalLM  # noqa: E402

TINY = dict(vocab_size=300, max_position_embeddings=64, hidden_size=32, num_layers=4,
            attention_types=[[["global", "local"], 2]], num_heads=4, intermediate_size=96, window_size=8,
            layer_norm_epsilon=1e-5, activation_function="gelu_new", bos_token_id=299, eos_token_id=299)
TINYSTORIES_33M = dict(vocab_size=50257, max_position_embeddings=2048, hidden_size=768, num_layers=4,
                       attention_types=[[["global", "local"], 2]], num_heads=16, intermediate_size=None,
                       window_size=256, layer_norm_epsilon=1e-5, activation_function="gelu_new",
                       bos_token_id=50256, eos_token_id=50256)
TINY_SEQ_LENGTHS = [40, 17, 1, 64]
TINY_ACTS_LENGTHS = [12, 40, 1, 25, 64, 7]
TS_LENGTH = 300
TS_POSITIONS = [0, 1, 2, 100, 254, 255, 256, 257, 299]
TS_LOGIT_POSITIONS = [0, 256, 299]
ACTS_LAYER = 2


def hashed_ids(name, length, vocab):
    """Token k = (splitmix64(fnv1a64(name) + k * GOLDEN) >> 32) mod vocab (docs/gpt_neo.md)."""
    seed = hw.fnv1a64(name)
    return [(hw.splitmix64((seed + k * hw.GOLDEN) & hw.MASK64) >> 32) % vocab for k in range(length)]


def tiny_sequences():
    seqs = [hashed_ids(f"tiny.seq{s}", n, TINY["vocab_size"]) for s, n in enumerate(TINY_SEQ_LENGTHS)]
    seqs[0][3] = 0  # the first and the last vocabulary rows
    seqs[0][5] = TINY["vocab_size"] - 1
    return seqs


def tinystories_sequence():
    ids = hashed_ids("tinystories.seq0", TS_LENGTH, TINYSTORIES_33M["vocab_size"])
    ids[1] = 50256  # <|endoftext|>, the last row
    ids[2] = 0
    return ids


def build(cfg_kwargs):
    model = GPTNeoForCausalLM(GPTNeoConfig(**cfg_kwargs))
    hw.fill_model(model)
    return model.eval()


def hf_outputs(model, ids):
    with torch.no_grad():
        out = model(torch.tensor([ids], dtype=torch.long), output_hidden_states=True)
    return [h[0].float().numpy() for h in out.hidden_states], out.logits[0].float().numpy()


ST_DTYPES = {np.dtype("float32"): "F32", np.dtype("int64"): "I64", np.dtype("int32"): "I32"}


def save_file(arrays, path, metadata):
    """A safetensors file with a reproducible header (the safetensors package writes __metadata__ in
    hash order, which changes from run to run): metadata keys sorted, tensors ordered by element size
    (largest first, so every tensor starts aligned to its element size) then in insertion order,
    header padded with spaces to a multiple of 8 bytes."""
    order = sorted(range(len(arrays)), key=lambda i: -list(arrays.values())[i].dtype.itemsize)
    items = [list(arrays.items())[i] for i in order]
    header = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name, a in items:
        header[name] = {"dtype": ST_DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for _, a in items:
            f.write(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes())


def header_meta(extra=None):
    meta = {"generator": "scripts/gen_gpt_neo_fixtures.py", "transformers": transformers.__version__,
            "torch": torch.__version__.split("+")[0]}
    meta.update(extra or {})
    return meta


def report(path, arrays):
    size = os.path.getsize(path)
    print(f"  {os.path.relpath(path)}: {size / 1024:.1f} KiB")
    for name, a in arrays.items():
        if a.dtype.kind == "f":
            assert np.isfinite(a).all(), name
            print(f"    {name:28s} {str(list(a.shape)):14s} max|x| {np.abs(a).max():9.4f}  rms {np.sqrt((a.astype(np.float64) ** 2).mean()):8.4f}")


def compare_to_numpy(label, weights, p, ids, hidden, logits, rows=None, logit_rows=None):
    """Max |HF float32 - numpy float64 reference| per output (checks docs/gpt_neo.md against HF)."""
    ref_hidden, ref_logits = ref.forward(weights, p, ids, logit_rows=logit_rows)
    errs = []
    for k, (a, b) in enumerate(zip(hidden, ref_hidden)):
        b = b if rows is None else b[rows]
        errs.append(float(np.abs(a - b).max()))
    errs.append(float(np.abs(logits - ref_logits).max()))
    print(f"    {label}: max |HF f32 - numpy f64| hidden.0..{len(hidden) - 1}, logits: "
          + ", ".join(f"{e:.1e}" for e in errs))
    assert max(errs) < 1e-3, f"{label}: HF and the documented forward pass disagree"
    return errs


def write_tiny(out_dir):
    print("tiny model:", json.dumps(TINY))
    model = build(TINY)
    seqs = tiny_sequences()
    p = ref.parse_config(model.config.to_dict())
    folders = {"F32": "tiny", "F16": "tiny_f16", "BF16": "tiny_bf16"}
    for dtype_name, folder in folders.items():
        path = os.path.join(out_dir, folder)
        m = {"F32": model, "F16": build(TINY).half(), "BF16": build(TINY).bfloat16()}[dtype_name]
        m.save_pretrained(path, safe_serialization=True)
        loaded = GPTNeoForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        for a, b in zip(m.parameters(), loaded.parameters()):
            assert torch.equal(a.float(), b), "loading did not widen the saved weights exactly"
        weights = {n: t.numpy().astype(np.float64) for n, t in loaded.state_dict().items()
                   if n in ref.parameter_shapes(p)}
        arrays = {}
        for s, ids in enumerate(seqs):
            hidden, logits = hf_outputs(loaded, ids)
            arrays[f"seq{s}.input_ids"] = np.asarray(ids, dtype=np.int64)
            for k, h in enumerate(hidden):
                arrays[f"seq{s}.hidden.{k}"] = h
            arrays[f"seq{s}.logits"] = logits
            compare_to_numpy(f"{folder} seq{s} (T={len(ids)})", weights, p, ids, hidden, logits)
        name = {"F32": "tiny_expected", "F16": "tiny_f16_expected", "BF16": "tiny_bf16_expected"}[dtype_name]
        path = os.path.join(out_dir, name + ".safetensors")
        save_file(arrays, path, metadata=header_meta({"model": folder, "weights_dtype": dtype_name}))
        report(path, arrays)

    # (c) the SAE data layout: hidden_states[2] of several stories, concatenated
    stories = [hashed_ids(f"tiny_acts.story{s}", n, TINY["vocab_size"]) for s, n in enumerate(TINY_ACTS_LENGTHS)]
    acts = np.concatenate([hf_outputs(model, ids)[0][ACTS_LAYER] for ids in stories])
    arrays = {"activations": acts, "story_lengths": np.asarray(TINY_ACTS_LENGTHS, dtype=np.int64),
              "token_ids": np.asarray([t for ids in stories for t in ids], dtype=np.int32)}
    path = os.path.join(out_dir, "tiny_acts.safetensors")
    save_file(arrays, path, metadata=header_meta({"model": "tiny", "hidden_states_index": str(ACTS_LAYER)}))
    report(path, arrays)


def write_tinystories(out_dir):
    print("TinyStories-33M architecture, hashed weights:", json.dumps(TINYSTORIES_33M))
    cfg = GPTNeoConfig(**TINYSTORIES_33M, architectures=["GPTNeoForCausalLM"])
    cfg_dir = os.path.join(out_dir, "tinystories33m_hashed")
    cfg.save_pretrained(cfg_dir)
    model = build(TINYSTORIES_33M)
    ids = tinystories_sequence()
    hidden, logits = hf_outputs(model, ids)
    arrays = {"seq0.input_ids": np.asarray(ids, dtype=np.int64),
              "seq0.positions": np.asarray(TS_POSITIONS, dtype=np.int64)}
    for k, h in enumerate(hidden):
        arrays[f"seq0.hidden.{k}"] = np.ascontiguousarray(h[TS_POSITIONS])
    arrays[f"seq0.hidden.{ACTS_LAYER}.full"] = hidden[ACTS_LAYER]
    arrays["seq0.logit_positions"] = np.asarray(TS_LOGIT_POSITIONS, dtype=np.int64)
    arrays["seq0.logits"] = np.ascontiguousarray(logits[TS_LOGIT_POSITIONS])
    path = os.path.join(out_dir, "tinystories33m_hashed_expected.safetensors")
    save_file(arrays, path, metadata=header_meta({"model": "tinystories33m_hashed"}))
    report(path, arrays)
    p = ref.parse_config(os.path.join(cfg_dir, "config.json"))
    weights = {n: t.numpy() for n, t in model.state_dict().items() if n in ref.parameter_shapes(p)}
    compare_to_numpy("tinystories33m_hashed seq0 (T=300)", weights, p, ids,
                     [arrays[f"seq0.hidden.{k}"] for k in range(len(hidden))], arrays["seq0.logits"],
                     rows=TS_POSITIONS, logit_rows=TS_LOGIT_POSITIONS)
    # how much the local window matters here: the same model with every layer global
    glob = dict(TINYSTORIES_33M, attention_types=[[["global"], 4]])
    gmodel = build(glob)
    ghidden, _ = hf_outputs(gmodel, ids)
    diff = np.abs(ghidden[-1] - hidden[-1]).max(axis=1)
    print(f"    all-global instead of global/local: max |diff| of hidden.4 at positions 255, 256, 299: "
          f"{diff[255]:.2e}, {diff[256]:.2e}, {diff[299]:.2e}")
    assert diff[255] == 0 and diff[256] > 1e-3


def write_config_cases(out_dir):
    """config_cases.json: config.json variants of the tiny model the C++ loader must accept or refuse,
    each checked against scripts/gpt_neo_ref.parse_config (the documented rules)."""
    with open(os.path.join(out_dir, "tiny", "config.json")) as f:
        base = json.load(f)
    no_types = {k: v for k, v in base.items() if k != "attention_types"}
    no_layers = {k: v for k, v in base.items() if k != "attention_layers"}
    no_window = {k: v for k, v in base.items() if k != "window_size"}
    aliased = {k: v for k, v in base.items() if k not in ("num_heads", "num_layers")}
    aliased.update(num_attention_heads=base["num_heads"], num_hidden_layers=base["num_layers"])
    accept = {
        "as_saved": base,
        "only_attention_layers": no_types,
        "intermediate_size_null (-> 4 * hidden = 128)": dict(base, intermediate_size=None),
        "window_size_missing (-> 256)": no_window,
        "hf_aliases num_attention_heads, num_hidden_layers": aliased,
        "untied (lm_head.weight must then be in the weights file)": dict(base, tie_word_embeddings=False),
    }
    reject = {
        "model_type gpt2": dict(base, model_type="gpt2"),
        "activation_function gelu": dict(base, activation_function="gelu"),
        "activation_function relu": dict(base, activation_function="relu"),
        "attention type sliding": dict(no_layers, attention_types=[[["global", "sliding"], 2]]),
        "attention_types give 6 layers": dict(no_layers, attention_types=[[["global", "local"], 3]]),
        "attention_layers contradicts attention_types": dict(base, attention_layers=["local"] * 4),
        "hidden_size not divisible by num_heads": dict(base, num_heads=5),
        "intermediate_size 0": dict(base, intermediate_size=0),
        "num_layers missing": {k: v for k, v in base.items() if k != "num_layers"},
        "vocab_size a string": dict(base, vocab_size="300"),
        "no attention_types nor attention_layers": {k: v for k, v in base.items()
                                                    if k not in ("attention_types", "attention_layers")},
        "num_heads and num_attention_heads disagree": dict(base, num_attention_heads=8),
        "layer_norm_epsilon 0": dict(base, layer_norm_epsilon=0),
    }
    for name, cfg in accept.items():
        ref.parse_config(cfg)
    for name, cfg in reject.items():
        try:
            ref.parse_config(cfg)
        except ref.ConfigError:
            continue
        raise AssertionError(f"config case {name!r} should be refused")
    path = os.path.join(out_dir, "config_cases.json")
    with open(path, "w") as f:
        json.dump({"accept": accept, "reject": reject}, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"  {os.path.relpath(path)}: {len(accept)} accepted, {len(reject)} refused config variants")


def generate(out_dir, skip_tinystories=False):
    os.makedirs(out_dir, exist_ok=True)
    write_tiny(out_dir)
    write_config_cases(out_dir)
    if not skip_tinystories:
        write_tinystories(out_dir)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                                      "tests", "ref", "gpt_neo"))
    ap.add_argument("--no-rerun", action="store_true", help="skip the second run and the byte comparison")
    ap.add_argument("--skip-tinystories", action="store_true", help="only the tiny model's files")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)  # HF's own init is overwritten by the hashed weights; this only fixes the unused draws
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}")
    out_dir = os.path.normpath(args.out_dir)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    generate(out_dir, args.skip_tinystories)
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out_dir) for f in fs)
    print(f"total size of {os.path.relpath(out_dir)}: {total / 1024:.1f} KiB")
    if args.no_rerun:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        print("re-running into a temporary folder to check the bytes are reproducible ...")
        generate(tmp, args.skip_tinystories)
        cmp = filecmp.dircmp(out_dir, tmp)
        files = [os.path.relpath(os.path.join(r, f), out_dir) for r, _, fs in os.walk(out_dir) for f in fs]
        diffs = [f for f in files if not filecmp.cmp(os.path.join(out_dir, f), os.path.join(tmp, f), shallow=False)]
        extra = cmp.right_only + cmp.left_only
        if diffs or extra:
            print(f"NOT REPRODUCIBLE: differing {diffs}, only in one run {extra}")
            return 1
        print(f"re-run: all {len(files)} files byte-identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
