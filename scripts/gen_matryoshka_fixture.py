#!/usr/bin/env python3
"""PyTorch float64 reference of the Matryoshka BatchTopK SAE (docs/architectures.md §2.10), written to
tests/ref/arch/matryoshka_reference.safetensors for the C++ tests (no Python needed there):

    python3 scripts/gen_matryoshka_fixture.py            # writes the fixture
    python3 scripts/gen_matryoshka_fixture.py --check    # regenerate in memory, compare with the committed file

Needs torch, numpy, safetensors and sae-lens. Two independent references:

1. Ours, in the framework of scripts/gen_arch_fixtures.py (its draws, margins, float32 trajectory check,
   closed-form gradients and finite differences, reused by importing it): the BatchTopK selection
   (the k N largest relu(P) of the batch), latents split into nested prefixes 0..w_0, 0..w_1, ...,
   0..w_{M-1} = F, every prefix reconstructing x on its own, loss = sum_m ||x - x_hat_m||^2 (sums over
   the batch, as all our losses) + AuxK on the full residual. Tensors "matryoshka.*", named as the
   other cases' (docs/architectures.md §4), plus "matryoshka.out.x_hat_levels" [M, N, D].
2. SAELens's own MatryoshkaBatchTopKTrainingSAE (sae-lens 6.54.12) on the same parameters and batch
   with AuxK off, rescale_acts_by_decoder_norm and apply_b_dec_to_input off: its loss (a mean over
   tokens) times N and its gradients times N, as "matryoshka_saelens.*". The script stops if the two
   references disagree.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_arch_fixtures as A  # noqa: E402

WIDTHS = [5, 13, A.F]  # nested prefixes; the last is F
SEED = A.SEED + 4242


def prefix_masks(F, dtype):
    """[M, F]: row m is 1 on the latents of prefix m (i < WIDTHS[m])."""
    cols = torch.arange(F)
    return torch.stack([(cols < w).to(dtype) for w in WIDTHS])


def fwd_matryoshka(p, x, ctx):
    """The BatchTopK selection and the nested reconstructions; AuxK as BatchTopK's (full residual)."""
    out = A.fwd_batchtopk(p, x, {**ctx, "auxk": False})
    f = out["f"]
    masks = prefix_masks(f.shape[1], f.dtype)
    levels = [(f * masks[m]) @ p["W_dec"] + p["b_dec"] for m in range(len(WIDTHS))]
    recs = [((x - xh) ** 2).sum() for xh in levels]
    out["rec"] = recs[-1]
    out["inner"] = sum(recs[:-1])
    out["x_hat_levels"] = torch.stack(levels)
    total = sum(recs)
    if ctx.get("auxk"):
        e = ctx["frozen"]["e"] if ctx.get("frozen") else (x - levels[-1]).detach()
        aux, a, asel, am = A.auxk_term(out["P"], ctx["dead"], e, p["W_dec"], x.shape[0])
        out.update(aux=aux, aux_acts=a)
        out["decisions"].append(asel)
        out["margins"] += am
        total = total + aux
        if ctx.get("frozen") is None:
            ctx["frozen_out"] = dict(e=e)
    out["total"] = total
    return out


def manual_matryoshka(p, x, ctx):
    """The closed form of docs/architectures.md §2.10: G_m = -2 (x - x_hat_m) per level; latent i of
    group g gets sum_{m >= g} G_m (so dL/df = sum_m G_m W_dec^T masked to prefix m); b_dec gets every G_m."""
    p = {k: v.detach() for k, v in p.items()}
    W_dec = p["W_dec"]
    P = x @ p["W_enc"] + p["b_enc"]
    sel = A.topk_mask_flat(torch.relu(P), A.K * x.shape[0])
    act = (sel & (P > 0)).to(x.dtype)
    f = P * act
    masks = prefix_masks(f.shape[1], x.dtype)
    G_f = torch.zeros_like(P)
    G = dict(W_dec=torch.zeros_like(W_dec), b_dec=torch.zeros_like(p["b_dec"]))
    for m in range(len(WIDTHS)):
        fm = f * masks[m]
        Gm = -2 * (x - (fm @ W_dec + p["b_dec"]))
        G_f = G_f + (Gm @ W_dec.T) * masks[m]
        G["W_dec"] = G["W_dec"] + fm.T @ Gm
        G["b_dec"] = G["b_dec"] + Gm.sum(0)
    G_P = G_f * act
    G["W_enc"] = x.T @ G_P
    G["b_enc"] = G_P.sum(0)
    if ctx.get("auxk") and int(ctx["dead"].sum()) > 0:
        dead = ctx["dead"]
        k_aux = min(A.K_AUX, int(dead.sum()))
        asel = A.topk_mask_rows(torch.where(dead[None, :], P, torch.full_like(P, -float("inf"))), k_aux)
        aact = (asel & (P > 0)).to(x.dtype)
        a = P * aact
        e = x - (f @ W_dec + p["b_dec"])
        Z = ((e - e.mean(0, keepdim=True)) ** 2).sum()
        G_ehat = 2 * A.AUX_ALPHA * x.shape[0] * (a @ W_dec - e) / Z
        G_a = (G_ehat @ W_dec.T) * aact
        G["W_enc"] = G["W_enc"] + x.T @ G_a
        G["b_enc"] = G["b_enc"] + G_a.sum(0)
        G["W_dec"] = G["W_dec"] + a.T @ G_ehat
    return G


def saelens_reference(x, p):
    """SAELens's MatryoshkaBatchTopKTrainingSAE on these parameters, AuxK off: (loss * N, grads * N)."""
    from sae_lens.saes.matryoshka_batchtopk_sae import (MatryoshkaBatchTopKTrainingSAE,
                                                        MatryoshkaBatchTopKTrainingSAEConfig)
    from sae_lens.saes.sae import TrainStepInput

    cfg = MatryoshkaBatchTopKTrainingSAEConfig(d_in=A.D, d_sae=A.F, k=A.K, matryoshka_widths=list(WIDTHS),
                                               aux_loss_coefficient=0.0, rescale_acts_by_decoder_norm=False,
                                               apply_b_dec_to_input=False, dtype="float64", device="cpu")
    sae = MatryoshkaBatchTopKTrainingSAE(cfg)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(p[name])
    out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None,
                                                   n_training_steps=0, is_logging_step=False))
    out.loss.backward()
    n = x.shape[0]
    grads = {name: getattr(sae, name).grad.detach() * n for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    return out.loss.detach() * n, grads


def build():
    torch.set_default_dtype(torch.float64)
    # Our case runs in gen_arch_fixtures' framework: its batchtopk hooks (draws, thresholds, trajectory)
    # with the Matryoshka forward and closed form in their place.
    A.FWD["batchtopk"] = fwd_matryoshka
    base_manual = A.manual_grads
    A.manual_grads = lambda arch, p, x, ctx: manual_matryoshka(p, x, ctx) if arch == "batchtopk" else base_manual(
        arch, p, x, ctx)
    spec = dict(arch="batchtopk", unit_norm=True, auxk=True)
    A.FD_PARAMS["matryoshka"] = ["W_enc", "b_enc", "W_dec", "b_dec"]
    T, meta = A.build_case("matryoshka", spec, SEED)
    x = T["matryoshka.x"]
    p = {k: T[f"matryoshka.param.{k}"] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    dead = T["matryoshka.dead_mask"].bool()
    out = fwd_matryoshka(p, x, dict(auxk=True, dead=dead))
    T["matryoshka.out.x_hat_levels"] = out["x_hat_levels"].detach()
    T["matryoshka.loss.inner"] = out["inner"].detach().reshape(())
    T["matryoshka.widths"] = torch.tensor(WIDTHS, dtype=torch.int64)
    # SAELens on the same point, AuxK off; ours without AuxK must agree.
    loss_sl, grads_sl = saelens_reference(x, p)
    q = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    ours = fwd_matryoshka(q, x, dict(auxk=False))
    ours["total"].backward()
    err = max([abs(float(ours["total"].detach()) - float(loss_sl)) / max(1.0, abs(float(loss_sl)))] +
              [float((q[k].grad - grads_sl[k]).abs().max()) / max(1.0, float(grads_sl[k].abs().max())) for k in q])
    if err > 1e-10:
        raise RuntimeError(f"our Matryoshka reference and SAELens's disagree by {err}")
    T["matryoshka_saelens.loss"] = loss_sl.reshape(())
    for k, v in grads_sl.items():
        T[f"matryoshka_saelens.grad.{k}"] = v
    cfg = dict(D=A.D, F=A.F, N=A.N, k=A.K, k_aux=A.K_AUX, aux_alpha=A.AUX_ALPHA, batchtopk_threshold_lr=A.BT_LR,
               dead_tokens=A.DEAD_TOKENS, steps=A.STEPS, lr=A.LR, beta1=A.BETAS[0], beta2=A.BETAS[1],
               adam_eps=A.ADAM_EPS)
    for k, v in cfg.items():
        T[f"cfg.{k}"] = torch.tensor(v, dtype=torch.int64 if isinstance(v, int) else torch.float64)
    meta["saelens_vs_ours"] = err
    import sae_lens
    metadata = dict(format="sae-cpp-matryoshka-reference", version="1", torch_version=torch.__version__,
                    sae_lens_version=sae_lens.__version__, seed=str(SEED), meta=str(meta))
    return {k: v.detach().clone().contiguous() for k, v in T.items()}, metadata, meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "ref", "arch", "matryoshka_reference.safetensors"))
    ap.add_argument("--check", action="store_true", help="compare a fresh build with the file at --out")
    args = ap.parse_args()
    from safetensors.torch import load_file, save_file

    T, metadata, meta = build()
    print(f"matryoshka attempt {meta['attempt']}  min margin {meta['min_margin']:.2e}  f32 drift {meta['f32_drift']:.1e}  "
          f"closed-form {meta['closed_form_vs_autograd']:.1e}  FD {meta['fd_max_rel_err']:.1e}  "
          f"SAELens vs ours {meta['saelens_vs_ours']:.1e}")
    if args.check:
        old = load_file(args.out)
        bad = [k for k in set(old) | set(T) if k not in old or k not in T or old[k].shape != T[k].shape
               or not torch.allclose(old[k].double(), T[k].double(), rtol=1e-10, atol=1e-12)]
        print(f"{len(T)} tensors; {len(bad)} differ from {args.out}" + (": " + ", ".join(sorted(bad)[:10]) if bad else ""))
        return 1 if bad else 0
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file(T, args.out, metadata=metadata)
    print(f"wrote {args.out}: {len(T)} tensors, {os.path.getsize(args.out)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
