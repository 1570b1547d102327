#!/usr/bin/env python3
"""PyTorch float64 reference of the dictionaries beyond the SAE (docs/architectures.md §2.13):
transcoders (x [N, D_in] reconstructs another activation y [N, D_out]; with W_skip, y_hat = f W_dec +
b_dec + x W_skip) and crosscoders (S activations concatenated, x = y [N, S D], the penalty weighing
each latent by the sum of its decoder's per-source norms), written to
tests/ref/arch/dictionary_reference.safetensors for the C++ tests:

    python3 scripts/gen_dictionary_fixtures.py           # writes the fixture
    python3 scripts/gen_dictionary_fixtures.py --check   # regenerate in memory, compare with the committed file

Needs torch and safetensors. Our conventions (gen_arch_fixtures.py): losses are SUMS over the
batch, W_enc [D_in, F], W_dec [F, D_out], W_skip [D_in, D_out]. Cases (name: unit, kind):
standard (L1 lambda sum f n), topk (k per token), batchtopk (k N per batch), jumprelu (step penalty,
straight-through thresholds) as transcoders with and without W_skip, and standard and topk as
crosscoders. Every draw is repeated until every ReLU sign, top-k cut and JumpReLU window is at least
MARGIN from its boundary, so float32 makes the decisions float64 makes. Each case stores x, y, the
parameters, the loss terms, f, y_hat and every gradient; finite differences check the gradients
that are true derivatives.
"""
import argparse
import json
import os
import sys

import torch

D_IN, D_OUT, F, N = 8, 6, 20, 12
SOURCES, D_SOURCE = 3, 4  # crosscoders: x = y = [N, SOURCES * D_SOURCE]
K = 3
LAMBDA = 0.3
BANDWIDTH = 0.5
MARGIN = 1e-3
SEED = 20261204
FD_H = 1e-6

CASES = {
    "transcoder_standard": dict(unit="standard", skip=False),
    "transcoder_standard_skip": dict(unit="standard", skip=True),
    "transcoder_topk": dict(unit="topk", skip=False),
    "transcoder_topk_skip": dict(unit="topk", skip=True),
    "transcoder_batchtopk": dict(unit="batchtopk", skip=False),
    "transcoder_jumprelu": dict(unit="jumprelu", skip=False),
    "transcoder_jumprelu_skip": dict(unit="jumprelu", skip=True),
    "crosscoder_standard": dict(unit="standard", sources=SOURCES),
    "crosscoder_topk": dict(unit="topk", sources=SOURCES),
}


def rect(u):
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLU(torch.autograd.Function):
    """f = P H(P - theta); dP = H; d theta = -(theta / eps) K((P - theta) / eps) (no STE to P)."""

    @staticmethod
    def forward(ctx, P, theta):
        ctx.save_for_backward(P, theta)
        return P * (P > theta).to(P.dtype)

    @staticmethod
    def backward(ctx, g):
        P, theta = ctx.saved_tensors
        K = rect((P - theta) / BANDWIDTH)
        return g * (P > theta).to(P.dtype), (-(theta / BANDWIDTH) * K * g).sum(0)


class Step(torch.autograd.Function):
    """H(P - theta); dP = 0; d theta = -(1 / eps) K((P - theta) / eps)."""

    @staticmethod
    def forward(ctx, P, theta):
        ctx.save_for_backward(P, theta)
        return (P > theta).to(P.dtype)

    @staticmethod
    def backward(ctx, g):
        P, theta = ctx.saved_tensors
        K = rect((P - theta) / BANDWIDTH)
        return torch.zeros_like(P), (-(1.0 / BANDWIDTH) * K * g).sum(0)


def decoder_norms(W_dec, sources):
    if sources == 1:
        return torch.linalg.vector_norm(W_dec, dim=1)
    f, d = W_dec.shape
    return torch.linalg.vector_norm(W_dec.reshape(f, sources, d // sources), dim=2).sum(1)


def forward(spec, p, x, y):
    """Loss terms (sums), outputs and the distances of every decision to its boundary."""
    P = x @ p["W_enc"] + p["b_enc"]
    margins = [P.detach().abs().min()]
    unit = spec["unit"]
    sparsity = P.new_zeros(())
    if unit == "standard":
        f = torch.relu(P)
        sparsity = (f * decoder_norms(p["W_dec"], spec.get("sources", 1))).sum()
    elif unit == "topk":
        srt = torch.sort(P.detach(), dim=1, descending=True).values
        margins.append((srt[:, K - 1] - srt[:, K]).min())
        keep = P.detach() >= srt[:, K - 1:K]
        f = torch.relu(P) * keep.to(P.dtype)
    elif unit == "batchtopk":
        A = torch.relu(P)
        flat = torch.sort(A.detach().reshape(-1), descending=True).values
        margins.append(flat[K * N - 1] - flat[K * N])
        f = A * (A.detach() >= flat[K * N - 1]).to(P.dtype)
    else:  # jumprelu, step penalty
        theta = torch.exp(p["log_threshold"])
        d = (P - theta).detach()
        margins += [d.abs().min(), (d.abs() - BANDWIDTH / 2).abs().min()]
        f = JumpReLU.apply(P, theta)
        sparsity = Step.apply(P, theta).sum()
    y_hat = f @ p["W_dec"] + p["b_dec"]
    if "W_skip" in p:
        y_hat = y_hat + x @ p["W_skip"]
    rec = ((y - y_hat) ** 2).sum()
    total = rec + LAMBDA * sparsity
    return dict(rec=rec, sparsity=sparsity, total=total, f=f, y_hat=y_hat, margin=min(float(m) for m in margins))


def draw(spec, gen):
    def randn(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float64)

    sources = spec.get("sources", 1)
    d_in = SOURCES * D_SOURCE if sources > 1 else D_IN
    d_out = d_in if sources > 1 else D_OUT
    x = randn(N, d_in) + 0.3 * randn(d_in)
    y = randn(N, d_out) * 0.8 + 0.2 * randn(d_out)
    p = dict(W_enc=0.5 * randn(d_in, F), b_enc=0.3 * randn(F), W_dec=randn(F, d_out) / F ** 0.5, b_dec=0.2 * randn(d_out))
    if spec.get("skip"):
        p["W_skip"] = 0.2 * randn(d_in, d_out)
    if spec["unit"] == "jumprelu":
        p["log_threshold"] = torch.log(0.3 + 0.9 * torch.rand(F, generator=gen, dtype=torch.float64))
    return x, y, {k: v.contiguous() for k, v in p.items()}


def fd_check(spec, p, x, y, names):
    params = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    forward(spec, params, x, y)["total"].backward()
    worst = 0.0
    for name in names:
        g = params[name].grad.reshape(-1)
        num = torch.zeros_like(g)
        for j in range(g.numel()):
            vals = []
            for s in (1, -1):
                q = {k: v.clone() for k, v in p.items()}
                q[name].view(-1)[j] += s * FD_H
                vals.append(float(forward(spec, q, x, y)["total"]))
            num[j] = (vals[0] - vals[1]) / (2 * FD_H)
        worst = max(worst, float((num - g).abs().max() / max(1.0, float(g.abs().max()))))
    return worst


def build_case(name, spec, seed):
    for attempt in range(500):
        gen = torch.Generator().manual_seed(seed + 1000 * attempt)
        x, y, p = draw(spec, gen)
        out = forward(spec, p, x, y)
        fired = float((out["f"] > 0).double().mean())
        if out["margin"] >= MARGIN and 0.05 < fired < 0.8:
            break
    else:
        raise RuntimeError(f"{name}: no well-conditioned draw")
    params = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    out = forward(spec, params, x, y)
    out["total"].backward()
    names = [k for k in p if k != "log_threshold"]  # the threshold's gradient is a straight-through one
    fd = fd_check(spec, p, x, y, names)
    if fd > 1e-6:
        raise RuntimeError(f"{name}: finite differences disagree by {fd}")
    T = {f"{name}.x": x, f"{name}.y": y}
    for k, v in p.items():
        T[f"{name}.param.{k}"] = v
        T[f"{name}.grad.{k}"] = params[k].grad.detach()
    for k in ("rec", "sparsity", "total"):
        T[f"{name}.loss.{k}"] = out[k].detach().reshape(())
    T[f"{name}.out.f"] = out["f"].detach()
    T[f"{name}.out.y_hat"] = out["y_hat"].detach()
    return T, dict(attempt=attempt, margin=out["margin"], fd_max_rel_err=fd, fired=fired)


def build_all():
    torch.set_default_dtype(torch.float64)
    T, meta = {}, {}
    for i, (name, spec) in enumerate(CASES.items()):
        t, m = build_case(name, spec, SEED + 31 * i)
        T.update(t)
        meta[name] = m
    cfg = dict(D_in=D_IN, D_out=D_OUT, F=F, N=N, sources=SOURCES, d_source=D_SOURCE, k=K, lambda_=LAMBDA,
               bandwidth=BANDWIDTH)
    for k, v in cfg.items():
        T[f"cfg.{k.rstrip('_')}"] = torch.tensor(v, dtype=torch.int64 if isinstance(v, int) else torch.float64)
    metadata = dict(format="sae-cpp-dictionary-reference", version="1", torch_version=torch.__version__,
                    seed=str(SEED), cases=json.dumps(meta, sort_keys=True), case_specs=json.dumps(CASES, sort_keys=True))
    return {k: v.detach().clone().contiguous() for k, v in T.items()}, metadata, meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "ref", "arch", "dictionary_reference.safetensors"))
    ap.add_argument("--check", action="store_true", help="compare a fresh build with the file at --out")
    args = ap.parse_args()
    from safetensors.torch import load_file, save_file

    T, metadata, meta = build_all()
    for name, m in meta.items():
        print(f"{name:26s} attempt {m['attempt']:3d}  margin {m['margin']:.2e}  fired {m['fired']:.2f}  "
              f"FD {m['fd_max_rel_err']:.1e}")
    if args.check:
        old = load_file(args.out)
        bad = [k for k in set(old) | set(T) if k not in old or k not in T or old[k].shape != T[k].shape
               or not torch.allclose(old[k].double(), T[k].double(), rtol=1e-10, atol=1e-12)]
        print(f"{len(T)} tensors; {len(bad)} differ from {args.out}" + (": " + ", ".join(sorted(bad)[:10]) if bad else ""))
        return 1 if bad else 0
    save_file(T, args.out, metadata=metadata)
    print(f"wrote {args.out}: {len(T)} tensors, {os.path.getsize(args.out)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
