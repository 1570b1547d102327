"""Writes tests/ref/eval_crosscoder/: two crosscoders spliced into the sae_eval fixture's model
(tests/ref/eval/model, written by gen_eval_fixture.py), and what sae_eval must report with them,
computed here by PyTorch and Hugging Face transformers, independently of the C++.

    python3 scripts/gen_crosscoder_eval_fixture.py [--out-dir DIR]
    python3 scripts/gen_crosscoder_eval_fixture.py --metrics-only  # expected_metrics.safetensors from
                                                                   # the folders DIR already holds

Cases (our crosscoder format, docs/architectures.md §2.13: the unit's SAE over the concatenated
sources, cfg.json architecture "crosscoder", sae_cpp.sources, metadata.crosscoder_hooks):
    xc/    a standard (ReLU) crosscoder over blocks.0.hook_resid_post and blocks.2.hook_resid_post of
           the model (S 2, d 32, F 48, dataset scales 1.3 and 0.7; 4 latents never fire)
    diff/  a TopK crosscoder (k 6) over blocks.1.hook_resid_post of the model and of model_b/ (model
           diffing; model_b/ is the model with every weight moved by 0.05 N(0, 1), config.json +
           model.safetensors in F16, no tokenizer: it reads the model's), dataset scales 0.9, 1.1
The evaluation (sae_eval's crosscoder splice): each piece (the model's 64 positions, no BOS) is run
clean through each model, reading every source x_s; the sources are encoded once,
    f = act([s_1 x_1 | ... | s_S x_S] W_enc + b_enc),  x_hat_s = (f W_dec + b_dec)[:, s d:(s+1) d] / s_s
(act: ReLU, or TopK's k largest then ReLU), and each model is run again with EACH of its hooks
replaced by its x_hat_s (computed from the clean run), zero-ablated (0) and mean-ablated (the mean of
that hook over every evaluated token). CE, KL and scores per model as gen_eval_fixture.py defines
them; FVU per source, sum ||x_s - x_hat_s||^2 / sum ||x_s - mean_s||^2, and over all sources (the
sums added); L0 and density of f.

expected.safetensors: {case}.{model}.ce_clean, .ce_sae, .ce_zero, .ce_mean, .kl_sae, .kl_zero,
.kl_mean, .ce_score, .kl_score (F64; model "a", and "b" for diff), {case}.fvu F64 [S], {case}.fvu_all,
{case}.l0, {case}.density F64 [F], {case}.mean F64 [S, d], {case}.tokens, {case}.predictions I64.
expected_metrics.safetensors (it came later, so it is written from the committed folders): SAELens's
reconstruction metrics (evals.get_sparsity_and_variance_metrics's per-token formulas) over the
concatenated raw sources x = [x_1 | ... | x_S] and x_hat = [x_hat_1 | ... | x_hat_S], means over the
tokens: {case}.l2_norm_in, .l2_norm_out, .l2_ratio, .l1 (of f), .mse, .cossim, and
{case}.relative_reconstruction_bias (mean ||x_hat||^2 / mean x . x_hat over every token) (F64).
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

D, F_XC = 32, 48
METRICS = ("l2_norm_in", "l2_norm_out", "l2_ratio", "l1", "mse", "cossim", "relative_reconstruction_bias")
CASES = {
    "xc": {"reads": [(0, 0), (0, 2)], "scales": [1.3, 0.7], "arch": "standard", "k": None, "seed": 31},
    "diff": {"reads": [(0, 1), (1, 1)], "scales": [0.9, 1.1], "arch": "topk", "k": 6, "seed": 32},
}


def read_name(model, block):
    return ("model_b:" if model == 1 else "") + f"blocks.{block}.hook_resid_post"


def weights(seed, sources):
    g = torch.Generator().manual_seed(seed)
    d_in = sources * D
    w = {"W_enc": 0.3 * torch.randn(d_in, F_XC, generator=g), "b_enc": 0.2 * torch.randn(F_XC, generator=g) - 0.1,
         "W_dec": 0.06 * torch.randn(F_XC, d_in, generator=g), "b_dec": 0.05 * torch.randn(d_in, generator=g)}
    w["b_enc"][:4] = -100.0  # 4 latents that never fire
    return {k: v.float() for k, v in w.items()}


def run(model, ids, replace=None):
    """Logits of one forward and the outputs of every block (hook_resid_post); `replace` maps a block
    to what its output becomes (a [T, D] tensor)."""
    captured = {}
    handles = []
    for b, block in enumerate(model.transformer.h):
        def hook(module, args, output, b=b):
            captured[b] = output[0][0].clone()
            if replace and b in replace:
                return (replace[b].unsqueeze(0),) + tuple(output[1:])
            return output
        handles.append(block.register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = model(torch.tensor([ids], dtype=torch.long)).logits[0]
    finally:
        for h in handles:
            h.remove()
    return logits, captured


def crosscode(w, case, xs):
    scales = case["scales"]
    x = torch.cat([xs[s].double() * scales[s] for s in range(len(xs))], dim=1)
    pre = x @ w["W_enc"].double() + w["b_enc"].double()
    if case["k"]:
        top = pre.topk(case["k"], dim=1)
        f = torch.zeros_like(pre).scatter(1, top.indices, top.values).relu()
    else:
        f = pre.relu()
    x_hat = f @ w["W_dec"].double() + w["b_dec"].double()
    return [(x_hat[:, s * D:(s + 1) * D] / scales[s]).float() for s in range(len(xs))], f


def evaluate(models, pieces, case, w):
    reads = case["reads"]
    sources = len(reads)
    means = [torch.zeros(D, dtype=torch.float64) for _ in reads]
    tokens = predictions = 0
    for p in pieces:
        caps = [run(m, p)[1] for m in models]
        for s, (m, b) in enumerate(reads):
            means[s] += caps[m][b].double().sum(0)
        tokens += len(p)
        predictions += len(p) - 1
    means = [m / tokens for m in means]
    used = sorted({m for m, _ in reads})
    sums = {m: {k: 0.0 for k in ("ce_clean", "ce_sae", "ce_zero", "ce_mean", "kl_sae", "kl_zero", "kl_mean")}
            for m in used}
    err = [0.0] * sources
    var = [0.0] * sources
    l0 = 0.0
    fired = torch.zeros(F_XC, dtype=torch.float64)
    per_token = {k: 0.0 for k in ("l2_norm_in", "l2_norm_out", "l2_ratio", "l1", "mse", "cossim")}
    out_squared = dot = 0.0
    for p in pieces:
        clean = {m: run(models[m], p) for m in used}
        xs = [clean[m][1][b] for m, b in reads]
        x_hat, f = crosscode(w, case, xs)
        for s in range(sources):
            err[s] += ((xs[s].double() - x_hat[s].double()) ** 2).sum().item()
            var[s] += ((xs[s].double() - means[s]) ** 2).sum().item()
        l0 += (f != 0).sum().item()
        fired += (f != 0).double().sum(0)
        x64 = torch.cat([x.double() for x in xs], dim=1)
        y64 = torch.cat([y.double() for y in x_hat], dim=1)
        norm_in, norm_out = torch.norm(x64, dim=-1), torch.norm(y64, dim=-1)
        per_token["l2_norm_in"] += norm_in.sum().item()
        per_token["l2_norm_out"] += norm_out.sum().item()
        safe_in = torch.where(norm_in.abs() < 0.0001, torch.ones_like(norm_in), norm_in)
        per_token["l2_ratio"] += (norm_out / safe_in).sum().item()
        per_token["l1"] += f.abs().sum().item()
        per_token["mse"] += ((x64 - y64) ** 2).sum().item()
        per_token["cossim"] += ((x64 / norm_in[:, None]) * (y64 / norm_out[:, None])).sum().item()
        out_squared += (norm_out ** 2).sum().item()
        dot += (x64 * y64).sum().item()
        target = torch.tensor(p[1:], dtype=torch.long)
        for m in used:
            own = [s for s, (mm, _) in enumerate(reads) if mm == m]
            variants = {
                "sae": {reads[s][1]: x_hat[s] for s in own},
                "zero": {reads[s][1]: torch.zeros(len(p), D) for s in own},
                "mean": {reads[s][1]: means[s].float().expand(len(p), D).clone() for s in own},
            }
            logits_clean = clean[m][0]
            sums[m]["ce_clean"] += F.cross_entropy(logits_clean[:-1].double(), target, reduction="sum").item()
            log_p = F.log_softmax(logits_clean.double(), -1)
            for name, replace in variants.items():
                logits = run(models[m], p, replace)[0]
                sums[m]["ce_" + name] += F.cross_entropy(logits[:-1].double(), target, reduction="sum").item()
                kl = F.kl_div(F.log_softmax(logits.double(), -1), log_p.exp(), reduction="none").sum(-1)
                sums[m]["kl_" + name] += kl.sum().item()
    result = {}
    for m in used:
        r = {k: v / (predictions if k.startswith("ce") else tokens) for k, v in sums[m].items()}
        r["ce_score"] = (r["ce_zero"] - r["ce_sae"]) / (r["ce_zero"] - r["ce_clean"])
        r["kl_score"] = (r["kl_zero"] - r["kl_sae"]) / r["kl_zero"]
        result["ab"[m]] = r
    stats = {"fvu": np.array([e / v for e, v in zip(err, var)]), "fvu_all": sum(err) / sum(var), "l0": l0 / tokens,
             "density": (fired / tokens).numpy(), "mean": torch.stack(means).numpy(), "tokens": tokens,
             "predictions": predictions}
    stats.update({k: v / tokens for k, v in per_token.items()})
    stats["relative_reconstruction_bias"] = out_squared / dot
    return result, stats


def write_folder(folder, case, w):
    os.makedirs(folder, exist_ok=True)
    fw = FixtureWriter()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        fw.put(name, w[name].numpy())
    fw.save(os.path.join(folder, "sae_weights.safetensors"))
    sources = len(case["reads"])
    cfg = {"architecture": "crosscoder", "d_in": sources * D, "d_sae": F_XC, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"hook_name": read_name(*case["reads"][0]),
                        "crosscoder_hooks": [read_name(m, b) for m, b in case["reads"]], "prepend_bos": False},
           "sae_cpp": {"normalization": "dataset", "dataset_scale": case["scales"], "sources": sources,
                       "training_architecture": case["arch"],
                       "note": "random weights written by scripts/gen_crosscoder_eval_fixture.py"}}
    if case["k"]:
        cfg["k"] = case["k"]
        cfg["rescale_acts_by_decoder_norm"] = False
    with open(os.path.join(folder, "cfg.json"), "w") as fh:
        json.dump(cfg, fh, indent=2)
        fh.write("\n")


def write_metric_expectations(out, models, pieces):
    """expected_metrics.safetensors: SAELens's reconstruction metrics of each case, with the weights
    its folder holds."""
    import safetensors.numpy
    import transformers
    e = FixtureWriter()
    for name, case in CASES.items():
        stored = safetensors.numpy.load_file(os.path.join(out, name, "sae_weights.safetensors"))
        w = {k: torch.from_numpy(v) for k, v in stored.items()}
        _, stats = evaluate(models, pieces, case, w)
        for k in METRICS:
            e.put(f"{name}.{k}", np.asarray(stats[k], dtype=np.float64))
        print(name, {k: round(stats[k], 6) for k in METRICS})
    e.put_text("generator", "scripts/gen_crosscoder_eval_fixture.py")
    e.put_text("versions", f"torch {torch.__version__}, transformers {transformers.__version__}")
    e.save(os.path.join(out, "expected_metrics.safetensors"))


def main():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default=os.path.join(repo, "tests", "ref", "eval_crosscoder"))
    parser.add_argument("--metrics-only", action="store_true",
                        help="only expected_metrics.safetensors, from model_b/ and the folders already in --out-dir")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = args.out_dir
    model_dir = os.path.join(repo, "tests", "ref", "eval", "model")
    model = GPTNeoForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    stories_ids = [tokenizer.encode(s, add_special_tokens=False).ids for s in STORIES]
    pieces = [p for ids in stories_ids for p in pieces_of(ids)]
    if args.metrics_only:
        write_metric_expectations(out, [model, GPTNeoForCausalLM.from_pretrained(
            os.path.join(out, "model_b"), dtype=torch.float32).eval()], pieces)
        return
    # model_b: the model "fine-tuned" (every weight moved), written in F16 as the model is
    torch.manual_seed(20261205)
    model_b_dir = os.path.join(out, "model_b")
    os.makedirs(model_b_dir, exist_ok=True)
    moved = GPTNeoForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.05 * torch.randn_like(p))
    moved.half().save_pretrained(model_b_dir, safe_serialization=True)
    model_b = GPTNeoForCausalLM.from_pretrained(model_b_dir, dtype=torch.float32).eval()

    e = FixtureWriter()
    for name, case in CASES.items():
        w = weights(case["seed"], len(case["reads"]))
        write_folder(os.path.join(out, name), case, w)
        result, stats = evaluate([model, model_b], pieces, case, w)
        for m, r in result.items():
            for k, v in r.items():
                e.put(f"{name}.{m}.{k}", np.asarray(v, dtype=np.float64))
            print(name, m, {k: round(v, 6) for k, v in r.items()})
        for k in ("fvu", "fvu_all", "l0", "density", "mean"):
            e.put(f"{name}.{k}", np.asarray(stats[k], dtype=np.float64))
        for k in ("tokens", "predictions"):
            e.put(f"{name}.{k}", np.asarray(stats[k], dtype=np.int64))
        print(name, "fvu", stats["fvu"], "fvu_all", stats["fvu_all"], "l0", stats["l0"])
    e.save(os.path.join(out, "expected.safetensors"))
    write_metric_expectations(out, [model, model_b], pieces)


if __name__ == "__main__":
    main()
