"""Writes tests/ref/eval_transcoder/: a skip transcoder of block 1's MLP of the sae_eval fixture's model
(tests/ref/eval/model, written by gen_eval_fixture.py), and what sae_eval must report with it spliced
in, computed here by PyTorch and Hugging Face transformers, independently of the C++.

    python3 scripts/gen_transcoder_eval_fixture.py [--out-dir DIR]

The transcoder reads blocks.1.ln2.hook_normalized (the MLP's input before ln_2's weight and bias:
(h - mean) / sqrt(var + eps), var biased, as LayerNorm computes it) and replaces blocks.1.hook_mlp_out
(the MLP's output, before the residual add) with
    y_hat = (relu(x_n W_enc + b_enc) W_dec + b_dec + x_n W_skip) / s_out,   x_n = s_in x
(our format's dataset scales s_in, s_out: cfg.json sae_cpp.dataset_scale [s_in, s_out]). Zero and
mean ablation replace the MLP's output with 0 and with its mean over every evaluated token. CE, KL,
scores, FVU (of the MLP's output), L0 and density as gen_eval_fixture.py defines them; each story is
cut into pieces of the model's 64 positions, no BOS.

Writes cfg.json + sae_weights.safetensors (W_skip in SAELens's [d_out, d_in] layout) in tc/, and
expected.safetensors with tc.ce_clean, .ce_sae, .ce_zero, .ce_mean, .kl_sae, .kl_zero, .kl_mean,
.ce_score, .kl_score, .fvu, .l0 (F64), .density F64 [F], .mean F64 [32], .tokens, .predictions I64.
Needs torch, transformers, tokenizers, numpy.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_io import FixtureWriter  # noqa: E402
from gen_eval_fixture import STORIES, pieces_of  # noqa: E402

from tokenizers import Tokenizer  # noqa: E402
from transformers import GPTNeoForCausalLM  # noqa: E402

D, F_TC, BLOCK = 32, 48, 1
S_IN, S_OUT = 1.3, 0.8


def weights(seed):
    g = torch.Generator().manual_seed(seed)
    w = {"W_enc": 0.4 * torch.randn(D, F_TC, generator=g), "b_enc": 0.2 * torch.randn(F_TC, generator=g) - 0.1,
         "W_dec": 0.3 * torch.randn(F_TC, D, generator=g), "b_dec": 0.05 * torch.randn(D, generator=g),
         "W_skip": 0.1 * torch.randn(D, D, generator=g)}
    w["b_enc"][:4] = -100.0  # 4 latents that never fire
    return {k: v.float() for k, v in w.items()}


class Run:
    """One forward with block BLOCK's MLP output replaced by change(mlp_out, ln2_normalized)."""

    def __init__(self, model):
        self.model = model
        self.block = model.transformer.h[BLOCK]

    def __call__(self, ids, change=None):
        captured = {}

        def pre_ln2(module, args):
            h = args[0][0].double()
            mean = h.mean(-1, keepdim=True)
            var = ((h - mean) ** 2).mean(-1, keepdim=True)
            captured["x"] = ((h - mean) / torch.sqrt(var + module.eps)).float()

        def mlp_out(module, args, output):
            captured["y"] = output[0].clone()
            return change(output[0], captured["x"]).unsqueeze(0) if change else output

        handles = [self.block.ln_2.register_forward_pre_hook(pre_ln2), self.block.mlp.register_forward_hook(mlp_out)]
        try:
            with torch.no_grad():
                logits = self.model(torch.tensor([ids], dtype=torch.long)).logits[0]
        finally:
            for h in handles:
                h.remove()
        return logits, captured


def transcode(w, x):
    xn = x.double() * S_IN
    f = torch.relu(xn @ w["W_enc"].double() + w["b_enc"].double())
    y = f @ w["W_dec"].double() + w["b_dec"].double() + xn @ w["W_skip"].double()
    return (y / S_OUT).float(), f


def main():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default=os.path.join(repo, "tests", "ref", "eval_transcoder"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    model_dir = os.path.join(repo, "tests", "ref", "eval", "model")
    model = GPTNeoForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    stories_ids = [tokenizer.encode(s, add_special_tokens=False).ids for s in STORIES]
    pieces = [p for ids in stories_ids for p in pieces_of(ids)]
    w = weights(25)
    run = Run(model)

    mlp = [run(p)[1]["y"] for p in pieces]
    mean = torch.cat(mlp).double().mean(0)
    sums = {k: 0.0 for k in ("ce_clean", "ce_sae", "ce_zero", "ce_mean", "kl_sae", "kl_zero", "kl_mean")}
    predictions = tokens = 0
    err = var = l0 = 0.0
    fired = torch.zeros(F_TC, dtype=torch.float64)
    for p in pieces:
        clean, cap = run(p)
        variants = {"sae": run(p, lambda y, x: transcode(w, x)[0])[0],
                    "zero": run(p, lambda y, x: torch.zeros_like(y))[0],
                    "mean": run(p, lambda y, x: mean.float().expand_as(y).clone())[0]}
        target = torch.tensor(p[1:], dtype=torch.long)
        sums["ce_clean"] += F.cross_entropy(clean[:-1].double(), target, reduction="sum").item()
        log_p = F.log_softmax(clean.double(), -1)
        for name, logits in variants.items():
            sums["ce_" + name] += F.cross_entropy(logits[:-1].double(), target, reduction="sum").item()
            kl = F.kl_div(F.log_softmax(logits.double(), -1), log_p.exp(), reduction="none").sum(-1)
            sums["kl_" + name] += kl.sum().item()
        predictions += len(p) - 1
        tokens += len(p)
        y_hat, f = transcode(w, cap["x"])
        err += ((cap["y"].double() - y_hat.double()) ** 2).sum().item()
        var += ((cap["y"].double() - mean) ** 2).sum().item()
        l0 += (f != 0).sum().item()
        fired += (f != 0).double().sum(0)

    out = args.out_dir
    folder = os.path.join(out, "tc")
    os.makedirs(folder, exist_ok=True)
    fw = FixtureWriter()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        fw.put(name, w[name].numpy())
    fw.put("W_skip", w["W_skip"].T.contiguous().numpy())  # SAELens's [d_out, d_in]
    fw.save(os.path.join(folder, "sae_weights.safetensors"))
    cfg = {"architecture": "skip_transcoder", "d_in": D, "d_out": D, "d_sae": F_TC, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": False, "normalize_activations": "none",
           "reshape_activations": "none",
           "metadata": {"hook_name": f"blocks.{BLOCK}.ln2.hook_normalized",
                        "hook_name_out": f"blocks.{BLOCK}.hook_mlp_out", "prepend_bos": False},
           "sae_cpp": {"normalization": "dataset", "dataset_scale": [S_IN, S_OUT], "training_architecture": "standard",
                       "note": "random weights written by scripts/gen_transcoder_eval_fixture.py"}}
    with open(os.path.join(folder, "cfg.json"), "w") as fh:
        json.dump(cfg, fh, indent=2)
        fh.write("\n")
    e = FixtureWriter()
    r = {k: v / (predictions if k.startswith("ce") else tokens) for k, v in sums.items()}
    r["ce_score"] = (r["ce_zero"] - r["ce_sae"]) / (r["ce_zero"] - r["ce_clean"])
    r["kl_score"] = (r["kl_zero"] - r["kl_sae"]) / r["kl_zero"]
    r["fvu"] = err / var
    r["l0"] = l0 / tokens
    for k, v in r.items():
        e.put("tc." + k, np.asarray(v, dtype=np.float64))
    e.put("tc.density", (fired / tokens).numpy())
    e.put("tc.mean", mean.numpy())
    e.put("tc.tokens", np.asarray(tokens, dtype=np.int64))
    e.put("tc.predictions", np.asarray(predictions, dtype=np.int64))
    e.save(os.path.join(out, "expected.safetensors"))
    print({k: round(v, 6) for k, v in r.items()})


if __name__ == "__main__":
    main()
