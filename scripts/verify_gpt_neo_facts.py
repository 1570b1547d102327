"""Checks by experiment, against the installed transformers, the facts docs/gpt_neo.md states about
GPTNeoForCausalLM: the local window's exact width, the unscaled scores, the masks, the
hidden_states convention, what save_pretrained writes, the F16/BF16 -> float32 loading, and that
the numpy reference (scripts/gpt_neo_ref.py, written from the doc) reproduces HF while each
plausible misreading does not. Small models only (seconds on one core).

    python3 scripts/verify_gpt_neo_facts.py          # prints a report; exits 1 if a check fails
"""
import json
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt_neo_ref as ref  # noqa: E402
import hashed_weights as hw  # noqa: E402

from transformers import GPTNeoConfig, GPTNeoForCausalLM  # noqa: E402
import transformers  # noqa: E402

FAILED = []


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what)
    if not cond:
        FAILED.append(what)


def make(num_layers=4, types=(("global", "local"), 2), window=8, hidden=32, heads=4, vocab=300, max_pos=64,
         inter=96):
    cfg = GPTNeoConfig(vocab_size=vocab, max_position_embeddings=max_pos, hidden_size=hidden, num_layers=num_layers,
                       attention_types=[[list(types[0]), types[1]]], num_heads=heads, intermediate_size=inter,
                       window_size=window, bos_token_id=vocab - 1, eos_token_id=vocab - 1)
    model = GPTNeoForCausalLM(cfg)
    hw.fill_model(model)
    return model.eval()


def run(model, ids, **kw):
    with torch.no_grad():
        return model(torch.tensor([ids]), output_hidden_states=True, **kw)


def main():
    torch.set_num_threads(1)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    rng = np.random.default_rng(0)

    # 1. the local window, by perturbation: one local layer, window 8, which inputs change output i?
    for kind in ("local", "global"):
        model = make(num_layers=1, types=((kind,), 1))
        ids = [int(t) for t in rng.integers(0, 300, 24)]
        base = run(model, ids).hidden_states[1][0]
        for i in (3, 7, 8, 15, 23):
            deps = []
            for j in range(24):
                alt = list(ids)
                alt[j] = (alt[j] + 1) % 300
                if not torch.equal(run(model, alt).hidden_states[1][0][i], base[i]):
                    deps.append(j)
            expect = [j for j in range(24) if j <= i and (kind == "global" or i - j < 8)]
            rule = "0 <= i - j < 8" if kind == "local" else "0 <= i - j"
            check(deps == expect, f"one {kind} layer, window_size 8: output {i} depends on exactly inputs "
                                  f"{deps[0]}..{deps[-1]} ({len(deps)} positions), i.e. {rule}")

    # 2. the masks as the code builds them
    model = make(num_layers=2, types=(("global", "local"), 1))
    buf = model.transformer.h[1].attn.attention.bias[0, 0, :12, :12]
    i, j = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    check(np.array_equal(buf.numpy(), (j <= i) & (i - j < 8)), "local bias buffer == (j <= i) & (i - j < window_size)")
    captured = {}
    model.transformer.h[0].attn.attention.register_forward_pre_hook(
        lambda mod, args, kwargs: captured.update(mask=kwargs.get("attention_mask")), with_kwargs=True)
    run(model, [1, 2, 3, 4, 5])
    mask = captured["mask"]
    fmin = torch.finfo(torch.float32).min
    check(mask is not None and mask.dtype == torch.float32 and set(mask.unique().tolist()) == {0.0, fmin},
          f"additive causal mask passed to every layer: float32, values 0 and finfo(float32).min = {fmin:.6e}")

    # 3. unscaled scores: HF's attention probabilities == softmax(q k^T) without 1/sqrt(head_dim)
    model = make()
    ids = [int(t) for t in rng.integers(0, 300, 40)]
    out = run(model, ids, output_attentions=True)
    blk = model.transformer.h[0]
    with torch.no_grad():
        a = blk.ln_1(out.hidden_states[0][0])
        q = blk.attn.attention.q_proj(a).view(40, 4, 8).transpose(0, 1).double()
        k = blk.attn.attention.k_proj(a).view(40, 4, 8).transpose(0, 1).double()
    s = q @ k.transpose(1, 2)
    causal = torch.tril(torch.ones(40, 40, dtype=torch.bool))
    for scale, label in ((1.0, "unscaled"), (8 ** -0.5, "scaled by 1/sqrt(head_dim)")):
        probs = torch.softmax(torch.where(causal, s * scale, torch.tensor(-float("inf"), dtype=torch.float64)), -1)
        err = (probs - out.attentions[0][0].double()).abs().max().item()
        check((err < 1e-5) == (scale == 1.0), f"layer-0 attention probabilities vs softmax of {label} scores: max err {err:.2e}")
    check(out.attentions[0].dtype == torch.float32, "attention probabilities are float32")

    # 4. hidden_states convention
    hs = out.hidden_states
    check(len(hs) == 5, f"len(hidden_states) == num_layers + 1 == {len(hs)}")
    blocks = []
    hooks = [b.register_forward_hook(lambda mod, inp, outp: blocks.append(outp[0].detach().clone()))
             for b in model.transformer.h]
    with torch.no_grad():
        emb = model.transformer.wte.weight[ids] + model.transformer.wpe.weight[:40]
        out2 = run(model, ids)
    for h in hooks:
        h.remove()
    check(torch.equal(hs[0][0], emb), "hidden_states[0] == wte[ids] + wpe[0..T-1] (bit-exact)")
    for n in range(1, 4):
        check(torch.equal(hs[n][0], blocks[n - 1][0]),
              f"hidden_states[{n}] == raw residual stream after block {n} (h.{n - 1} output, bit-exact)")
    with torch.no_grad():
        lnf = model.transformer.ln_f(blocks[3])
        logits = lnf @ model.transformer.wte.weight.T
    check(torch.equal(hs[4], lnf), "hidden_states[4] == ln_f(output of h.3), not the raw residual")
    check((hs[4] - blocks[3]).abs().max().item() > 0.1, "... and differs from the raw residual of h.3")
    check((out2.logits[0] - logits[0]).abs().max().item() < 1e-5, "logits == hidden_states[-1] @ wte.weight^T (tied)")
    check(torch.equal(out.logits, out2.logits), "output_attentions does not change the logits")

    # 5. the numpy reference (from the doc) vs HF, and the misreadings
    p = ref.parse_config(model.config.to_dict())
    weights = {n: t.detach().numpy() for n, t in model.state_dict().items() if n in ref.parameter_shapes(p)}
    check(set(weights) == set(ref.parameter_shapes(p)), "state_dict names == the doc's parameter list")
    for n, t in weights.items():
        if t.shape != ref.parameter_shapes(p)[n]:
            check(False, f"shape of {n}")
    hf = [h[0].numpy() for h in hs] + [out.logits[0].numpy()]
    variants = [("as documented", {}), ("scores scaled by 1/sqrt(head_dim)", {"scale_scores": True}),
                ("window one wider (i - j <= window_size)", {"window_delta": 1}),
                ("window one narrower", {"window_delta": -1}),
                ("last hidden state without ln_f", {"last_hidden_raw": True})]
    for label, kw in variants:
        hidden, lg = ref.forward(weights, p, ids, **kw)
        errs = [float(np.abs(a - b).max()) for a, b in zip(hidden + [lg], hf)]
        good = max(errs) < 1e-4
        check(good == (label == "as documented"),
              f"numpy float64 reference, {label}: max |ref - HF| per hidden_states[0..4], logits = "
              + ", ".join(f"{e:.1e}" for e in errs))

    # 6. what save_pretrained writes, and loading F16/BF16 files as float32
    from safetensors import safe_open
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(os.path.join(tmp, "f32"), safe_serialization=True)
        with safe_open(os.path.join(tmp, "f32", "model.safetensors"), "pt") as f:
            keys = set(f.keys())
            meta = f.metadata()
        check("lm_head.weight" not in keys, "tied model: lm_head.weight is NOT in model.safetensors")
        check(keys == set(ref.parameter_shapes(p)), f"model.safetensors holds exactly the parameters ({len(keys)}), "
                                                     f"no mask buffers; metadata {meta}")
        saved_cfg = json.load(open(os.path.join(tmp, "f32", "config.json")))
        print(f"      config.json keys written: {sorted(saved_cfg)}")
        for dt, name in ((torch.float16, "F16"), (torch.bfloat16, "BF16")):
            half = make().to(dt)
            half.save_pretrained(os.path.join(tmp, name), safe_serialization=True)
            with safe_open(os.path.join(tmp, name, "model.safetensors"), "pt") as f:
                dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
            back = GPTNeoForCausalLM.from_pretrained(os.path.join(tmp, name), dtype=torch.float32)
            same = all(torch.equal(a.float(), b) for a, b in zip(half.parameters(), back.parameters()))
            check(dtypes == {name} and same and next(back.parameters()).dtype == torch.float32 and not back.training,
                  f"{name} file ({dtypes}) loads with dtype=float32 as the exactly rounded weights, in eval mode")

        # 7. config edge cases: a contradicting attention_layers, an extra lm_head.weight in a tied file
        bad = dict(saved_cfg)
        bad["attention_layers"] = ["local"] * 4
        os.makedirs(os.path.join(tmp, "bad"))
        json.dump(bad, open(os.path.join(tmp, "bad", "config.json"), "w"))
        cfg = GPTNeoConfig.from_pretrained(os.path.join(tmp, "bad"))
        print(f"      attention_types [[['global','local'],2]] + attention_layers ['local']*4 -> HF uses "
              f"{cfg.attention_layers}")
        from safetensors.torch import load_file, save_file
        sd = load_file(os.path.join(tmp, "f32", "model.safetensors"))
        sd["lm_head.weight"] = torch.zeros_like(sd["transformer.wte.weight"])
        os.makedirs(os.path.join(tmp, "extra"))
        save_file(sd, os.path.join(tmp, "extra", "model.safetensors"), metadata={"format": "pt"})
        json.dump(saved_cfg, open(os.path.join(tmp, "extra", "config.json"), "w"))
        extra = GPTNeoForCausalLM.from_pretrained(os.path.join(tmp, "extra"))
        print(f"      tied config + a zero lm_head.weight in the file -> HF's lm_head is "
              f"{'the zeros from the file' if extra.lm_head.weight.abs().max() == 0 else 'wte'}; "
              f"lm_head is wte: {extra.lm_head.weight.data_ptr() == extra.transformer.wte.weight.data_ptr()}")
        # the same with lm_head.weight == wte (as old .bin checkpoints store it), plus the mask buffers that
        # older transformers versions saved as persistent buffers
        sd["lm_head.weight"] = sd["transformer.wte.weight"].clone()
        for n in range(4):
            sd[f"transformer.h.{n}.attn.attention.bias"] = torch.ones(1, 1, 64, 64, dtype=torch.bool)
            sd[f"transformer.h.{n}.attn.attention.masked_bias"] = torch.tensor(-1e9)
        save_file(sd, os.path.join(tmp, "extra", "model.safetensors"), metadata={"format": "pt"})
        extra = GPTNeoForCausalLM.from_pretrained(os.path.join(tmp, "extra")).eval()
        tied = extra.lm_head.weight.data_ptr() == extra.transformer.wte.weight.data_ptr()
        same = torch.equal(run(extra, ids).logits, out.logits)
        check(tied and same, "tied config + lm_head.weight == wte + all-true attn.attention.bias / masked_bias "
                             "buffers in the file: HF ties, ignores the buffers (local window still applied), "
                             "same logits")
        untied_cfg = dict(saved_cfg, tie_word_embeddings=False)
        json.dump(untied_cfg, open(os.path.join(tmp, "f32", "config.json"), "w"))
        untied = GPTNeoForCausalLM.from_pretrained(os.path.join(tmp, "f32"))
        print(f"      tie_word_embeddings false and no lm_head.weight in the file -> HF loads anyway, lm_head "
              f"{'== wte' if torch.equal(untied.lm_head.weight, untied.transformer.wte.weight) else 'freshly (randomly) initialised'}")

    print(f"\n{len(FAILED)} check(s) failed" if FAILED else "\nall checks passed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
