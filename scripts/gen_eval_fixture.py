"""Writes tests/ref/eval/: the pieces of the tests of sae_eval (an SAE spliced into the language
model: cross-entropy and KL with the reconstruction, zero and mean ablation, FVU, L0, feature
density) and of generation with the KV cache and a steering hook (sae_steer), with every expected
number computed here by PyTorch, Hugging Face transformers and SAELens, independently of the C++.

    python3 scripts/gen_eval_fixture.py [--out-dir DIR]
    python3 scripts/gen_eval_fixture.py --bos-only   # expected_bos.safetensors from what DIR holds

Needs torch, transformers, tokenizers, sae_lens, numpy. Writes (about 0.7 MB):

    model/        a small random GPT-Neo: vocab = the tokenizer's 4097 ids, hidden 32, 4 layers
                  alternating global/local with window 8 (shorter than every story and every
                  generated sequence), 4 heads, MLP 64, 64 positions, tied embeddings, normal init with
                  std 0.2 (HF's default 0.02 makes greedy text repeat one token), biases N(0, 0.2^2)
                  and LayerNorm weights 1 + N(0, 0.2^2) (HF's 0 and 1 made zero ablation the same at
                  every layer), saved by
                  save_pretrained in F16 (both sides widen it to float32), plus tokenizer.json
    stories.txt   6 short stories in TinyStories' format; one is longer than the 64 positions, so it
                  is evaluated as two pieces (64 + the rest), as sae_eval and --long-stories split do
    sae_story/    our format: a standard SAE (d_in 32, d_sae 80) trained "from text at layer 2 with
                  per-story normalisation" (cfg.json sae_cpp says so); planted weights: features
                  0..63 are +-e_j of a random orthonormal basis (an exact reconstruction) plus noise,
                  64..71 never fire (b_enc -100), 72..75 always fire (W_enc 0, b_enc 2.9..3.2; dense),
                  76..79 random; W_dec row 79 is zero (steering along it is refused)
    sae_topk/     our format: the same weights as a TopK SAE (k 12), "layer 1, dataset scale 1.7"
    sae_saelens/  a plain SAELens folder (no sae_cpp block, so no layer: the tests give --layer 3),
                  apply_b_dec_to_input true and a nonzero b_dec (SAELens subtracts b_dec first)
    expected.safetensors
        story{s}.ids I64                 the token ids of each story (GPT-2 BPE, no BOS)
        {sae}.ce_clean, .ce_sae, .ce_zero, .ce_mean, .kl_sae, .kl_zero, .kl_mean, .ce_score,
        .kl_score, .fvu, .l0, and SAELens's reconstruction metrics (get_sparsity_and_variance_metrics)
        .l2_norm_in, .l2_norm_out, .l2_ratio, .relative_reconstruction_bias, .l1, .mse, .cossim (F64
        scalars), .density F64 [80], .mean F64 [32] (the mean-ablation vector), .tokens,
        .predictions I64, for sae in story, topk, saelens
        gen{p}.prompt I64, gen{p}.greedy I64, gen{p}.steered I64: greedy continuations of prompt p
        by HF generate (40 new tokens, KV cache), unsteered and with the steering hook
        steer.feature, steer.strength, steer.layer: the hook adds strength * W_dec[feature] /
        ||W_dec[feature]|| to hidden_states[layer] (the output of block layer-1) at every position
        gen0.logits F32 [6, V]: HF's full-forward logits over prompt 0 + its greedy continuation, at
        the positions gen0.logit_positions
    expected_bos.safetensors
        bos I64 (the model's BOS id) and the {sae}.* evaluations again with the BOS first in every
        window (windows of the BOS and 63 tokens), masked as SAELens masks its special tokens: the
        splice, the mean ablation and the statistics leave the BOS row, zero ablation zeroes it too,
        CE leaves out the prediction made from it and KL its position

The definitions (SAELens evals.get_recons_loss and get_sparsity_and_variance_metrics, in our words):
CE = mean over every predicted token (position t predicts ids[t+1]) of -log softmax(logits)[next];
KL = mean over every position of KL(p_clean || p_patched) = sum_v p_clean (log p_clean - log p_patched);
ce_score = (ce_zero - ce_sae) / (ce_zero - ce_clean); kl_score = (kl_zero - kl_sae) / kl_zero;
FVU = sum ||x - x_hat||^2 / sum ||x - mean||^2 over all tokens (raw scale, mean over all tokens);
L0 = mean over tokens of the count of nonzero features; density = fraction of tokens a feature fires
on. Means pool all tokens of all stories. The mean-ablation vector is the mean of hidden_states[L]
over every evaluated token.
"""
import argparse
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_io import FixtureWriter  # noqa: E402

from tokenizers import Tokenizer  # noqa: E402
from transformers import GPTNeoConfig, GPTNeoForCausalLM  # noqa: E402

D, F_SAE, POSITIONS, WINDOW = 32, 80, 64, 8
STORIES = [
    "Once upon a time, there was a little cat named Tom. Tom liked to play with a red ball in the garden.",
    "Lily had a big dog. The dog was very happy when Lily came home from school.",
    "A small frog lived in a pond. Every night he sang a song to the moon. The moon liked his song. "
    "One night the moon sang back, and the frog was so surprised that he fell into the water with a splash. "
    "All the fish laughed, and the frog laughed too.",
    "Sam lost his hat in the wind. He looked everywhere. At last his friend found it in a tree.",
    "It was raining. Max and Zoe stayed inside and read a book about dragons.",
    "Zoë the café owner met a bee. The bee buzzed: “hello!” They became friends — the end.",
]
PROMPTS = ["Once upon a time, there was a little", "The dog ran to the park and"]
NEW_TOKENS = 40
LOGIT_POSITIONS = [0, 7, 8, 12, 30, 50]  # rows of gen0.logits: inside, at and past the local window
STEER_FEATURE, STEER_STRENGTH, STEER_LAYER = 5, 6.0, 2
TOPK_K, TOPK_SCALE = 12, 1.7


def model_config(vocab_size):
    return GPTNeoConfig(vocab_size=vocab_size, max_position_embeddings=POSITIONS, hidden_size=D, num_layers=4,
                        attention_types=[[["global", "local"], 2]], num_heads=4, intermediate_size=64,
                        window_size=WINDOW, activation_function="gelu_new", resid_dropout=0.0, embed_dropout=0.0,
                        attention_dropout=0.0, layer_norm_epsilon=1e-5, initializer_range=0.2,
                        bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1,
                        architectures=["GPTNeoForCausalLM"])


def random_model(vocab_size):
    """HF's init leaves every bias 0 and every LayerNorm weight 1: a zeroed residual stream then stays
    zero through the later blocks, and zero ablation gives the same (uniform) prediction at every
    layer, so the tests could not tell the layers apart. Biases and norm weights are drawn too."""
    model = GPTNeoForCausalLM(model_config(vocab_size))
    g = torch.Generator().manual_seed(20261206)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif ".ln_" in name or name.startswith("transformer.ln_f"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
    return model


# ---------------------------------------------------------------- hooks on hidden_states[layer]

def hook_module(model, layer):
    """The module whose output is hidden_states[layer]: the embeddings' dropout for 0, block layer-1
    for 1..L-1, ln_f for L."""
    blocks = model.transformer.h
    if layer == 0:
        return model.transformer.drop
    if layer < len(blocks):
        return blocks[layer - 1]
    return model.transformer.ln_f


def run_with_hook(model, ids, layer, change):
    """Logits [T, V] of one sequence with hidden_states[layer] replaced by change(h [T, d])."""
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (change(output[0][0]).unsqueeze(0),) + tuple(output[1:])
        return change(output[0]).unsqueeze(0)
    handle = hook_module(model, layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(torch.tensor([ids], dtype=torch.long)).logits[0]
    finally:
        handle.remove()


def hidden(model, ids, layer):
    with torch.no_grad():
        return model(torch.tensor([ids], dtype=torch.long), output_hidden_states=True).hidden_states[layer][0]


# ---------------------------------------------------------------- the SAEs

def planted_weights(seed):
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    W_enc = torch.zeros(D, F_SAE, dtype=torch.float64)
    W_dec = torch.zeros(F_SAE, D, dtype=torch.float64)
    b_enc = torch.zeros(F_SAE, dtype=torch.float64)
    W_enc[:, :D] = basis
    W_enc[:, D:2 * D] = -basis
    W_dec[:D] = basis.T
    W_dec[D:2 * D] = -basis.T
    W_enc[:, :2 * D] += 0.05 * torch.randn(D, 2 * D, generator=g, dtype=torch.float64)
    W_dec[:2 * D] += 0.05 * torch.randn(2 * D, D, generator=g, dtype=torch.float64)
    b_enc[:2 * D] = 0.05 * torch.randn(2 * D, generator=g, dtype=torch.float64)
    W_enc[:, 64:72] = 0.1 * torch.randn(D, 8, generator=g, dtype=torch.float64)  # dead
    b_enc[64:72] = -100.0
    W_dec[64:72] = 0.3 * torch.randn(8, D, generator=g, dtype=torch.float64)
    # dense: W_enc columns 0, so always 2.9..3.2 (distinct values: TopK's choice among equal values
    # is implementation-defined)
    b_enc[72:76] = torch.tensor([2.9, 3.0, 3.1, 3.2], dtype=torch.float64)
    W_dec[72:76] = 0.01 * torch.randn(4, D, generator=g, dtype=torch.float64)
    W_enc[:, 76:80] = 0.3 * torch.randn(D, 4, generator=g, dtype=torch.float64)
    b_enc[76:80] = -1.0
    W_dec[76:79] = 0.2 * torch.randn(3, D, generator=g, dtype=torch.float64)
    W_dec[79] = 0.0
    b_dec = 0.02 * torch.randn(D, generator=g, dtype=torch.float64)
    return {"W_enc": W_enc.float(), "b_enc": b_enc.float(), "W_dec": W_dec.float(), "b_dec": b_dec.float()}


def write_sae(folder, weights, cfg):
    os.makedirs(folder, exist_ok=True)
    w = FixtureWriter()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        w.put(name, weights[name].numpy().astype(np.float32))
    w.save(os.path.join(folder, "sae_weights.safetensors"))
    with open(os.path.join(folder, "cfg.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


def saelens_cfg(architecture, extra=None):
    cfg = {"architecture": architecture, "d_in": D, "d_sae": F_SAE, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.0.0", "sae_lens_training_version": "6.0.0"}}
    if extra is not None:
        cfg["sae_cpp"] = extra
    return cfg


def our_block(normalization, scale, layer, architecture):
    return {"normalization": normalization, "dataset_scale": scale, "training_architecture": architecture,
            "note": "planted weights written by scripts/gen_eval_fixture.py",
            "data": {"kind": "text", "layer": layer, "hidden_states": f"hidden_states[{layer}]",
                     "model": "tests/ref/eval/model", "text": "tests/ref/eval/stories.txt"}}


class Normalizer:
    """The run's normalisation around the SAE: per story (x - mean) / std * sqrt(d), std unbiased
    over all T*d elements; dataset: x * scale; none."""

    def __init__(self, kind, scale=1.0):
        self.kind, self.scale = kind, scale

    def forward(self, x):
        x64 = x.double()
        if self.kind == "story":
            self.shift = x64.mean().item()
            self.factor = math.sqrt(D) / x64.std(unbiased=True).item()
        elif self.kind == "dataset":
            self.shift, self.factor = 0.0, self.scale
        else:
            self.shift, self.factor = 0.0, 1.0
        return ((x64 - self.shift) * self.factor).float()

    def back(self, x_hat):
        return (x_hat.double() / self.factor + self.shift).float()


# ---------------------------------------------------------------- the evaluation, as SAELens defines it

def pieces_of(ids, bos=None):
    """The windows of one story: POSITIONS tokens each, or a BOS and POSITIONS - 1 tokens."""
    if bos is None:
        return [ids[i:i + POSITIONS] for i in range(0, len(ids), POSITIONS)]
    return [[bos] + ids[i:i + POSITIONS - 1] for i in range(0, len(ids), POSITIONS - 1)]


def evaluate(model, stories_ids, sae, layer, normalizer, bos=None):
    """With a BOS first in every window, as SAELens's evals mask it (its special tokens): the SAE
    splice and the statistics leave the BOS row out, zero ablation zeroes every row (BOS too), CE
    leaves out the prediction made from the BOS and KL its position. Mean ablation (ours, not
    SAELens's) replaces the document rows by their mean and leaves the BOS row."""
    first = 0 if bos is None else 1
    pieces = [p for ids in stories_ids for p in pieces_of(ids, bos)]
    acts = [hidden(model, p, layer)[first:] for p in pieces]
    mean = torch.cat(acts).double().mean(0)
    sums = {k: 0.0 for k in ("ce_clean", "ce_sae", "ce_zero", "ce_mean", "kl_sae", "kl_zero", "kl_mean")}
    predictions = tokens = 0
    err = var = l0 = 0.0
    fired = torch.zeros(F_SAE, dtype=torch.float64)
    # get_sparsity_and_variance_metrics's per-token values, pooled (relative_reconstruction_bias: its
    # two means over every token, where SAELens averages the ratio over its batches)
    per_token = {k: 0.0 for k in ("l2_norm_in", "l2_norm_out", "l2_ratio", "l1", "mse", "cossim")}
    out_squared = dot = 0.0
    for p, x in zip(pieces, acts):
        def splice(h):
            features = sae.encode(normalizer.forward(h[first:]).unsqueeze(0))[0]
            return torch.cat([h[:first], normalizer.back(sae.decode(features.unsqueeze(0))[0])])

        def zero(h):
            return torch.zeros_like(h)

        def mean_ablate(h):
            return torch.cat([h[:first], mean.float().expand_as(h[first:])])

        clean = run_with_hook(model, p, layer, lambda h: h)
        variants = {"sae": run_with_hook(model, p, layer, splice), "zero": run_with_hook(model, p, layer, zero),
                    "mean": run_with_hook(model, p, layer, mean_ablate)}
        target = torch.tensor(p[first + 1:], dtype=torch.long)
        sums["ce_clean"] += F.cross_entropy(clean[first:-1].double(), target, reduction="sum").item()
        log_p = F.log_softmax(clean.double(), -1)
        for name, logits in variants.items():
            sums["ce_" + name] += F.cross_entropy(logits[first:-1].double(), target, reduction="sum").item()
            kl = F.kl_div(F.log_softmax(logits.double(), -1), log_p.exp(), reduction="none").sum(-1)
            sums["kl_" + name] += kl[first:].sum().item()
        predictions += len(p) - 1 - first
        tokens += len(p) - first
        features = sae.encode(normalizer.forward(x).unsqueeze(0))[0]
        x_hat = normalizer.back(sae.decode(features.unsqueeze(0))[0])
        err += ((x.double() - x_hat.double()) ** 2).sum().item()
        var += ((x.double() - mean) ** 2).sum().item()
        l0 += (features != 0).sum().item()
        fired += (features != 0).double().sum(0)
        x64, y64 = x.double(), x_hat.double()
        norm_in, norm_out = torch.norm(x64, dim=-1), torch.norm(y64, dim=-1)
        per_token["l2_norm_in"] += norm_in.sum().item()
        per_token["l2_norm_out"] += norm_out.sum().item()
        safe_in = torch.where(norm_in.abs() < 0.0001, torch.ones_like(norm_in), norm_in)
        per_token["l2_ratio"] += (norm_out / safe_in).sum().item()
        per_token["l1"] += features.double().abs().sum().item()
        per_token["mse"] += ((x64 - y64) ** 2).sum().item()
        per_token["cossim"] += ((x64 / norm_in[:, None]) * (y64 / norm_out[:, None])).sum().item()
        out_squared += (norm_out ** 2).sum().item()
        dot += (x64 * y64).sum().item()
    out = {k: v / tokens for k, v in per_token.items()}
    out["relative_reconstruction_bias"] = out_squared / dot
    for k, v in sums.items():
        out[k] = v / (predictions if k.startswith("ce") else tokens)
    out["ce_score"] = (out["ce_zero"] - out["ce_sae"]) / (out["ce_zero"] - out["ce_clean"])
    out["kl_score"] = (out["kl_zero"] - out["kl_sae"]) / out["kl_zero"]
    out["fvu"] = err / var
    out["l0"] = l0 / tokens
    out["density"] = (fired / tokens).numpy()
    out["mean"] = mean.numpy()
    out["tokens"] = tokens
    out["predictions"] = predictions
    return out


def evaluate_cases(out, model, stories_ids, w, bos=None):
    """Every SAE folder evaluated as SAELens defines it (SAELens loads each folder and does the
    encoding and decoding of the reference), its numbers put into w."""
    from sae_lens import SAE
    cases = {"story": ("sae_story", 2, Normalizer("story")), "topk": ("sae_topk", 1, Normalizer("dataset", TOPK_SCALE)),
             "saelens": ("sae_saelens", 3, Normalizer("none"))}
    for name, (folder, layer, normalizer) in cases.items():
        sae = SAE.load_from_disk(os.path.join(out, folder), device="cpu")
        sae.eval()
        with torch.no_grad():
            r = evaluate(model, stories_ids, sae, layer, normalizer, bos)
        keys = ["ce_clean", "ce_sae", "ce_zero", "ce_mean", "kl_sae", "kl_zero", "kl_mean", "ce_score", "kl_score",
                "fvu", "l0"]
        # SAELens's reconstruction metrics
        keys += ["l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias", "l1", "mse", "cossim"]
        for key in keys:
            w.put(f"{name}.{key}", float(r[key]))
        w.put(f"{name}.density", r["density"].astype(np.float64))
        w.put(f"{name}.mean", r["mean"].astype(np.float64))
        w.put(f"{name}.tokens", int(r["tokens"]))
        w.put(f"{name}.predictions", int(r["predictions"]))
        print(f"{name}{' with a BOS' if bos is not None else ''}: layer {layer}, {r['tokens']} tokens; "
              f"CE clean {r['ce_clean']:.4f} sae {r['ce_sae']:.4f} zero {r['ce_zero']:.4f} mean {r['ce_mean']:.4f}; "
              f"KL sae {r['kl_sae']:.4f} zero {r['kl_zero']:.4f}; ce_score {r['ce_score']:.4f} "
              f"kl_score {r['kl_score']:.4f} fvu {r['fvu']:.4f} l0 {r['l0']:.2f}; "
              f"dead {(r['density'] == 0).sum()} dense {(r['density'] > 0.1).sum()}")


def write_bos_expectations(out, model, stories_ids):
    """expected_bos.safetensors: the same evaluations with the model's BOS first in every window."""
    import sae_lens
    import transformers
    w = FixtureWriter()
    bos = model.config.bos_token_id
    w.put("bos", int(bos))
    evaluate_cases(out, model, stories_ids, w, bos)
    w.put_text("generator", "scripts/gen_eval_fixture.py")
    w.put_text("versions", f"torch {torch.__version__}, transformers {transformers.__version__}, "
                           f"sae_lens {sae_lens.__version__}")
    w.save(os.path.join(out, "expected_bos.safetensors"))


def greedy(model, prompt, steer=None):
    """HF generate, greedy, NEW_TOKENS new tokens, its KV cache; steer = (layer, vector) adds the
    vector to hidden_states[layer] at every position (the prompt's and each new token's)."""
    handle = None
    if steer is not None:
        layer, vector = steer

        def hook(module, args, output):
            return (output[0] + vector,) + tuple(output[1:])
        handle = hook_module(model, layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt], dtype=torch.long), max_new_tokens=NEW_TOKENS,
                                 do_sample=False, pad_token_id=model.config.eos_token_id)
    finally:
        if handle is not None:
            handle.remove()
    new = out[0, len(prompt):].tolist()
    # Every choice must be clear of ties, or float rounding could flip it: check the margins.
    with torch.no_grad():
        if steer is not None:
            logits = run_with_hook(model, out[0].tolist(), steer[0], lambda h: h + steer[1])
        else:
            logits = model(out).logits[0]
    top2 = logits[len(prompt) - 1:-1].topk(2, -1).values
    margin = (top2[:, 0] - top2[:, 1]).min().item()
    assert margin > 1e-4, f"greedy margin {margin} too small for a stable fixture"
    return new, out[0].tolist(), margin


def main():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default=os.path.join(repo, "tests", "ref", "eval"))
    parser.add_argument("--bos-only", action="store_true",
                        help="only expected_bos.safetensors, from the model and folders already in --out-dir")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.bos_only:
        tokenizer = Tokenizer.from_file(os.path.join(args.out_dir, "model", "tokenizer.json"))
        model = GPTNeoForCausalLM.from_pretrained(os.path.join(args.out_dir, "model"), dtype=torch.float32).eval()
        stories_ids = [tokenizer.encode(s, add_special_tokens=False).ids for s in STORIES]
        write_bos_expectations(args.out_dir, model, stories_ids)
        return
    torch.manual_seed(20261201)
    out = args.out_dir
    model_dir = os.path.join(out, "model")
    os.makedirs(model_dir, exist_ok=True)

    tokenizer_json = os.path.join(repo, "tests", "ref", "tokenizer", "tokenizer.json")
    tokenizer = Tokenizer.from_file(tokenizer_json)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    random_model(vocab_size).half().save_pretrained(model_dir, safe_serialization=True)
    shutil.copyfile(tokenizer_json, os.path.join(model_dir, "tokenizer.json"))
    model = GPTNeoForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    with open(os.path.join(out, "stories.txt"), "w", encoding="utf-8") as f:
        for story in STORIES:
            f.write(story + "\n<|endoftext|>\n")
    stories_ids = [tokenizer.encode(s, add_special_tokens=False).ids for s in STORIES]
    assert max(len(i) for i in stories_ids) > POSITIONS and min(len(i) for i in stories_ids) > WINDOW

    weights = planted_weights(7)
    write_sae(os.path.join(out, "sae_story"), weights, saelens_cfg("standard", our_block("story", 1.0, 2, "standard")))
    topk_cfg = saelens_cfg("topk", our_block("dataset", TOPK_SCALE, 1, "topk"))
    topk_cfg["k"] = TOPK_K
    topk_cfg["rescale_acts_by_decoder_norm"] = False
    write_sae(os.path.join(out, "sae_topk"), weights, topk_cfg)
    saelens_weights = dict(weights)
    saelens_weights["b_dec"] = weights["b_dec"] * 10
    plain_cfg = saelens_cfg("standard")
    plain_cfg["apply_b_dec_to_input"] = True
    write_sae(os.path.join(out, "sae_saelens"), saelens_weights, plain_cfg)

    w = FixtureWriter()
    for s, ids in enumerate(stories_ids):
        w.put(f"story{s}.ids", np.asarray(ids, dtype=np.int64))
    evaluate_cases(out, model, stories_ids, w)

    decoder_row = weights["W_dec"][STEER_FEATURE]
    vector = STEER_STRENGTH * decoder_row / decoder_row.norm()
    w.put("steer.feature", STEER_FEATURE)
    w.put("steer.strength", STEER_STRENGTH)
    w.put("steer.layer", STEER_LAYER)
    for p, prompt in enumerate(PROMPTS):
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids
        plain, full, m1 = greedy(model, ids)
        steered, _, m2 = greedy(model, ids, (STEER_LAYER, vector))
        assert plain != steered, "steering changed nothing: pick another feature or strength"
        w.put(f"gen{p}.prompt", np.asarray(ids, dtype=np.int64))
        w.put(f"gen{p}.greedy", np.asarray(plain, dtype=np.int64))
        w.put(f"gen{p}.steered", np.asarray(steered, dtype=np.int64))
        if p == 0:
            with torch.no_grad():
                logits = model(torch.tensor([full])).logits[0].float()
            w.put("gen0.logit_positions", np.asarray(LOGIT_POSITIONS, dtype=np.int64))
            w.put("gen0.logits", logits[LOGIT_POSITIONS])
        print(f"prompt {p}: {len(ids)} tokens; greedy {len(set(plain))} distinct ids (margin {m1:.2e}), steered "
              f"{len(set(steered))} distinct (margin {m2:.2e}), {sum(a != b for a, b in zip(plain, steered))} differ")
    import sae_lens
    import transformers
    w.put_text("generator", "scripts/gen_eval_fixture.py")
    w.put_text("versions", f"torch {torch.__version__}, transformers {transformers.__version__}, "
                           f"sae_lens {sae_lens.__version__}")
    w.save(os.path.join(out, "expected.safetensors"))
    write_bos_expectations(out, model, stories_ids)
    total = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(out) for f in files)
    print(f"wrote {out}: {total / 1e3:.0f} KB")


if __name__ == "__main__":
    main()
