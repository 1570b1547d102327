#!/usr/bin/env python3
"""PyTorch float64 reference of every SAE architecture in docs/architectures.md (loss terms,
parameter gradients, unit-norm projection, AuxK, BatchTopK threshold, geometric median, L0
controller and a 5-step Adam trajectory per architecture), written to one compact safetensors
fixture that the C++ tests read with no Python:

    python3 scripts/gen_arch_fixtures.py                       # writes tests/ref/arch/arch_reference.safetensors
    python3 scripts/gen_arch_fixtures.py --out FILE
    python3 scripts/gen_arch_fixtures.py --check               # regenerate in memory, compare with the committed file

Needs torch, numpy and safetensors. Everything follows OUR formulation (the doc, section 2):
losses are SUMS over the batch, x is not centred by b_dec (apply_b_dec_to_input false), W_enc is
[D, F] and W_dec is [F, D] as in SAELens. The straight-through (STE) gradients are computed by the
explicit autograd.Function classes below, as the papers write them; every gradient is then
recomputed a second time from the closed-form formulas of the doc (manual_grads) and the two must
agree to 1e-12, so the fixture also checks the doc. Central finite differences (float64, h 1e-6)
check the parts that are genuinely differentiable (see FD_PARAMS); the STE parts cannot be checked
that way and are not.

Every draw is repeated (seed + attempt) until all discrete decisions (top-k selections, ReLU
signs, JumpReLU/rectangle windows, gates, AuxK selections) are at least MARGIN away from their
boundaries at every step of every trajectory, and a float32 run of the same trajectory makes the
same decisions, so a float32 C++ implementation can be compared with tolerances. Tensor names are
listed in docs/architectures.md (section 4); the metadata holds the settings and check results.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

# ----------------------------------------------------------------------------------------------
# sizes and settings (all stored in the fixture as cfg.*)
D, F, N = 8, 24, 10
K = 3                   # TopK k (per token) and BatchTopK k (mean per token: N*K over the batch)
K_AUX = D // 2          # AuxK k_aux (D/2, the peers' default)
AUX_ALPHA = 1.0 / 32.0  # AuxK coefficient
BANDWIDTH = 0.5         # JumpReLU rectangle-kernel bandwidth epsilon
TANH_C = 4.0            # Anthropic tanh sparsity scale c
LAMBDA_STD = 0.3        # standard SAE L1 coefficient
LAMBDA_STEP = 0.2       # JumpReLU step (L0) coefficient
LAMBDA_TANH = 0.3       # JumpReLU tanh coefficient
LAMBDA_PRE = 0.05       # JumpReLU pre-activation loss coefficient (tanh case)
LAMBDA_GATED = 0.3      # Gated L1 coefficient
BT_LR = 0.01            # BatchTopK threshold EMA rate
DEAD_TOKENS = 30        # AuxK: a latent is dead when tokens_since_fired >= DEAD_TOKENS
STEPS = 5
LR, BETAS, ADAM_EPS = 1e-2, (0.9, 0.999), 1e-8
MARGIN = 1e-3
SEED = 20250301
FD_H = 1e-6
GM_POINTS, GM_EPS, GM_MAXITER, GM_FTOL = 40, 1e-6, 100, 1e-20
CTL = dict(target=4.0, kp=0.5, ki=0.05, ema=0.5, max_step=0.1, log_min=math.log(1e-4), log_max=math.log(1e2),
           lambda0=0.3, steps=12)

# ----------------------------------------------------------------------------------------------
# straight-through functions (the papers' pseudo-derivatives)


def rect(u):
    """Rectangle kernel K(u) = 1 for -1/2 < u < 1/2 (open), else 0."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUFn(torch.autograd.Function):
    """f = P * H(P - theta). dP: H(P - theta) [+ (theta/eps) K((P-theta)/eps) when ste_to_input];
    dtheta: -(theta/eps) K((P - theta)/eps), summed over tokens."""

    @staticmethod
    def forward(ctx, P, theta, eps, ste_to_input):
        ctx.save_for_backward(P, theta)
        ctx.eps, ctx.ste = eps, ste_to_input
        return P * (P > theta).to(P.dtype)

    @staticmethod
    def backward(ctx, g):
        P, theta = ctx.saved_tensors
        ste = (theta / ctx.eps) * rect((P - theta) / ctx.eps) * g
        gP = (P > theta).to(P.dtype) * g + (ste if ctx.ste else 0.0)
        return gP, -ste.sum(0), None, None


class StepFn(torch.autograd.Function):
    """H(P - theta). dtheta: -(1/eps) K((P - theta)/eps); dP: 0, or +(1/eps) K(..) when ste_to_input."""

    @staticmethod
    def forward(ctx, P, theta, eps, ste_to_input):
        ctx.save_for_backward(P, theta)
        ctx.eps, ctx.ste = eps, ste_to_input
        return (P > theta).to(P.dtype)

    @staticmethod
    def backward(ctx, g):
        P, theta = ctx.saved_tensors
        ste = (1.0 / ctx.eps) * rect((P - theta) / ctx.eps) * g
        gP = ste if ctx.ste else torch.zeros_like(P)
        return gP, -ste.sum(0), None, None


class GateFn(torch.autograd.Function):
    """Gated SAE gate H(z) = 1[z > 0] with zero gradient (no STE: the gate path learns through the
    L1 and auxiliary terms only)."""

    @staticmethod
    def forward(ctx, z):
        return (z > 0).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        return torch.zeros_like(g)


# ----------------------------------------------------------------------------------------------
# selections (deterministic ties: larger value first, then lower index)


def topk_mask_rows(S, k):
    """Bool mask of the k largest entries of each row of S (stable: ties go to the lower index)."""
    order = torch.sort(S, dim=1, descending=True, stable=True).indices[:, :k]
    m = torch.zeros_like(S, dtype=torch.bool)
    m.scatter_(1, order, True)
    return m


def topk_mask_flat(S, m_total):
    """Bool mask of the m_total largest entries of S flattened row-major (ties to the lower flat index)."""
    flat = S.reshape(-1)
    order = torch.sort(flat, descending=True, stable=True).indices[:m_total]
    m = torch.zeros_like(flat, dtype=torch.bool)
    m[order] = True
    return m.reshape(S.shape)


def dec_norm(W_dec):
    return torch.linalg.vector_norm(W_dec, dim=1)


# ----------------------------------------------------------------------------------------------
# the architectures. Each forward takes params (dict of leaf tensors), x, and a context dict ctx
# (options, the dead mask, frozen values for finite differences) and returns a dict with the loss
# terms (sums), 'total', the outputs and 'decisions' (bool tensors) and 'margins' (distances of the
# decision quantities to their boundaries).


def auxk_term(P, dead, e, W_dec, n_tokens, k_aux_cfg=K_AUX, alpha=AUX_ALPHA, frozen=None):
    """AuxK (doc 2.6): top-k_aux dead latents by pre-activation, ReLU, decode without b_dec, predict
    the detached residual e; aux = alpha * N * ||e_hat - e||^2 / ||e - mean_t e||^2 (0 when nothing
    is dead or the denominator is 0)."""
    n_dead = int(dead.sum())
    z = P.new_zeros(())
    empty = torch.zeros_like(P, dtype=torch.bool)
    if n_dead == 0:
        return z, torch.zeros_like(P), empty, []
    k_aux = min(k_aux_cfg, n_dead)
    Pm = torch.where(dead[None, :], P.detach(), torch.full_like(P, -math.inf))
    sel = topk_mask_rows(Pm, k_aux)
    a = torch.relu(P) * sel.to(P.dtype)
    e_hat = a @ W_dec
    Z = ((e - e.mean(0, keepdim=True)) ** 2).sum()
    if float(Z) == 0.0:
        return z, a, sel, []
    aux = alpha * n_tokens * ((e_hat - e) ** 2).sum() / Z
    margins = []
    if n_dead > k_aux:
        srt = torch.sort(Pm.detach(), dim=1, descending=True).values
        margins.append((srt[:, k_aux - 1] - srt[:, k_aux]).min())
    return aux, a, sel, margins


def fwd_standard(p, x, ctx):
    P = x @ p["W_enc"] + p["b_enc"]
    f = torch.relu(P)
    x_hat = f @ p["W_dec"] + p["b_dec"]
    rec = ((x - x_hat) ** 2).sum()
    l1 = (f * dec_norm(p["W_dec"])).sum()
    total = rec + LAMBDA_STD * l1
    return dict(rec=rec, l1=l1, total=total, P=P, f=f, x_hat=x_hat,
                decisions=[P > 0], margins=[P.detach().abs().min()])


def fwd_topk(p, x, ctx):
    P = x @ p["W_enc"] + p["b_enc"]
    sel = topk_mask_rows(P.detach(), K)
    f = torch.relu(P) * sel.to(P.dtype)
    x_hat = f @ p["W_dec"] + p["b_dec"]
    rec = ((x - x_hat) ** 2).sum()
    srt = torch.sort(P.detach(), dim=1, descending=True).values
    out = dict(rec=rec, P=P, f=f, x_hat=x_hat, decisions=[sel, P > 0],
               margins=[(srt[:, K - 1] - srt[:, K]).min(), P.detach().abs().min()])
    total = rec
    if ctx.get("auxk"):
        e = ctx["frozen"]["e"] if ctx.get("frozen") else (x - x_hat).detach()
        aux, a, asel, am = auxk_term(P, ctx["dead"], e, p["W_dec"], x.shape[0])
        out.update(aux=aux, aux_acts=a)
        out["decisions"].append(asel)
        out["margins"] += am
        total = rec + aux
        if ctx.get("frozen") is None:
            ctx["frozen_out"] = dict(e=e)
    out["total"] = total
    return out


def fwd_batchtopk(p, x, ctx):
    P = x @ p["W_enc"] + p["b_enc"]
    A = torch.relu(P)
    m_total = K * x.shape[0]
    sel = topk_mask_flat(A.detach(), m_total)
    f = A * sel.to(P.dtype)
    x_hat = f @ p["W_dec"] + p["b_dec"]
    rec = ((x - x_hat) ** 2).sum()
    srt = torch.sort(A.detach().reshape(-1), descending=True).values
    gap = srt[m_total - 1] - srt[m_total]
    if float(srt[m_total - 1]) == 0.0:  # fewer positives than N*k: the tie among zeros is harmless
        gap = torch.tensor(math.inf, dtype=P.dtype)
    out = dict(rec=rec, P=P, f=f, x_hat=x_hat, decisions=[sel, P > 0], margins=[gap, P.detach().abs().min()])
    total = rec
    if ctx.get("auxk"):
        e = ctx["frozen"]["e"] if ctx.get("frozen") else (x - x_hat).detach()
        aux, a, asel, am = auxk_term(P, ctx["dead"], e, p["W_dec"], x.shape[0])
        out.update(aux=aux, aux_acts=a)
        out["decisions"].append(asel)
        out["margins"] += am
        total = rec + aux
        if ctx.get("frozen") is None:
            ctx["frozen_out"] = dict(e=e)
    out["total"] = total
    return out


def threshold_of(p):
    return torch.exp(p["log_threshold"]) if "log_threshold" in p else p["threshold"]


def fwd_jumprelu(p, x, ctx):
    mode, ste = ctx["mode"], ctx["ste_to_input"]
    theta = threshold_of(p)
    P = x @ p["W_enc"] + p["b_enc"]
    f = JumpReLUFn.apply(P, theta, BANDWIDTH, ste)
    x_hat = f @ p["W_dec"] + p["b_dec"]
    rec = ((x - x_hat) ** 2).sum()
    n = dec_norm(p["W_dec"])
    out = dict(rec=rec, P=P, f=f, x_hat=x_hat, theta=theta)
    if mode == "step":
        l0 = StepFn.apply(P, theta, BANDWIDTH, ste).sum()
        out["l0"] = l0
        total = rec + LAMBDA_STEP * l0
    else:
        tanh_term = torch.tanh(TANH_C * f * n).sum()
        pre = (torch.relu(theta - P) * n).sum()
        out.update(tanh=tanh_term, pre_act=pre)
        total = rec + LAMBDA_TANH * tanh_term + LAMBDA_PRE * pre
    out["total"] = total
    dist = (P - theta).detach()
    out["decisions"] = [dist > 0, dist.abs() < BANDWIDTH / 2]
    out["margins"] = [dist.abs().min(), (dist.abs() - BANDWIDTH / 2).abs().min()]
    return out


def fwd_gated(p, x, ctx):
    pre = x @ p["W_enc"]
    pi_gate = pre + p["b_gate"]
    pi_mag = pre * torch.exp(p["r_mag"]) + p["b_mag"]
    f = GateFn.apply(pi_gate) * torch.relu(pi_mag)
    x_hat = f @ p["W_dec"] + p["b_dec"]
    rec = ((x - x_hat) ** 2).sum()
    g = torch.relu(pi_gate)
    l1 = (g * dec_norm(p["W_dec"])).sum()
    if ctx.get("frozen"):
        Wd, bd = ctx["frozen"]["W_dec"], ctx["frozen"]["b_dec"]
    else:
        Wd, bd = p["W_dec"].detach(), p["b_dec"].detach()
        ctx["frozen_out"] = dict(W_dec=Wd.clone(), b_dec=bd.clone())
    x_hat_gate = g @ Wd + bd
    aux = ((x - x_hat_gate) ** 2).sum()
    total = rec + LAMBDA_GATED * l1 + aux
    return dict(rec=rec, l1=l1, aux=aux, total=total, P=pi_mag, pi_gate=pi_gate, pi_mag=pi_mag, f=f, x_hat=x_hat,
                decisions=[pi_gate > 0, pi_mag > 0],
                margins=[pi_gate.detach().abs().min(), pi_mag.detach().abs().min()])


# ----------------------------------------------------------------------------------------------
# closed-form gradients of the doc (section 2), written without autograd, to check both.


def linear_backward(x, W_dec, f, G_xhat, G_P):
    return dict(W_enc=x.T @ G_P, b_enc=G_P.sum(0), W_dec=f.T @ G_xhat, b_dec=G_xhat.sum(0))


def manual_grads(arch, p, x, ctx):
    p = {k: v.detach() for k, v in p.items()}
    W_enc, W_dec = p["W_enc"], p["W_dec"]
    n = dec_norm(W_dec)
    u = W_dec / n[:, None]
    if arch == "gated":
        pre = x @ W_enc
        pg, pm = pre + p["b_gate"], pre * torch.exp(p["r_mag"]) + p["b_mag"]
        H = (pg > 0).to(x.dtype)
        f = H * torch.relu(pm)
        R = x - (f @ W_dec + p["b_dec"])
        G_xhat = -2 * R
        G_f = G_xhat @ W_dec.T
        G_pm = G_f * H * (pm > 0).to(x.dtype)
        g = torch.relu(pg)
        R_gate = x - (g @ W_dec + p["b_dec"])
        G_g = LAMBDA_GATED * n[None, :] + (-2 * R_gate) @ W_dec.T  # aux through the frozen decoder
        G_pg = G_g * (pg > 0).to(x.dtype)
        er = torch.exp(p["r_mag"])
        return dict(W_enc=x.T @ (G_pg + G_pm * er[None, :]), b_gate=G_pg.sum(0), b_mag=G_pm.sum(0),
                    r_mag=er * (G_pm * pre).sum(0),
                    W_dec=f.T @ G_xhat + LAMBDA_GATED * g.sum(0)[:, None] * u, b_dec=G_xhat.sum(0))
    P = x @ W_enc + p["b_enc"]
    if arch == "standard":
        f = torch.relu(P)
        G_xhat = -2 * (x - (f @ W_dec + p["b_dec"]))
        G_f = G_xhat @ W_dec.T + LAMBDA_STD * n[None, :]
        G = linear_backward(x, W_dec, f, G_xhat, G_f * (P > 0).to(x.dtype))
        G["W_dec"] = G["W_dec"] + LAMBDA_STD * f.sum(0)[:, None] * u
        return G
    if arch in ("topk", "batchtopk"):
        if arch == "topk":
            sel = topk_mask_rows(P, K)
        else:
            sel = topk_mask_flat(torch.relu(P), K * x.shape[0])
        act = sel & (P > 0)
        f = P * act.to(x.dtype)
        G_xhat = -2 * (x - (f @ W_dec + p["b_dec"]))
        G_P = (G_xhat @ W_dec.T) * act.to(x.dtype)
        G = linear_backward(x, W_dec, f, G_xhat, G_P)
        if ctx.get("auxk") and int(ctx["dead"].sum()) > 0:
            dead = ctx["dead"]
            k_aux = min(K_AUX, int(dead.sum()))
            asel = topk_mask_rows(torch.where(dead[None, :], P, torch.full_like(P, -math.inf)), k_aux)
            aact = asel & (P > 0)
            a = P * aact.to(x.dtype)
            e = x - (f @ W_dec + p["b_dec"])
            Z = ((e - e.mean(0, keepdim=True)) ** 2).sum()
            G_ehat = 2 * AUX_ALPHA * x.shape[0] * (a @ W_dec - e) / Z
            G_a = (G_ehat @ W_dec.T) * aact.to(x.dtype)
            G["W_enc"] = G["W_enc"] + x.T @ G_a
            G["b_enc"] = G["b_enc"] + G_a.sum(0)
            G["W_dec"] = G["W_dec"] + a.T @ G_ehat
        return G
    if arch == "jumprelu":
        theta = torch.exp(p["log_threshold"])
        d = P - theta
        H = (d > 0).to(x.dtype)
        Kr = rect(d / BANDWIDTH)
        f = P * H
        G_xhat = -2 * (x - (f @ W_dec + p["b_dec"]))
        G_f = G_xhat @ W_dec.T
        if ctx["mode"] == "tanh":
            tt = torch.tanh(TANH_C * f * n[None, :])
            G_f = G_f + LAMBDA_TANH * TANH_C * n[None, :] * (1 - tt ** 2)
        # through the JumpReLU pseudo-derivatives
        G_P = G_f * H
        G_theta = -(theta / BANDWIDTH) * (Kr * G_f).sum(0)
        if ctx["ste_to_input"]:
            G_P = G_P + (theta / BANDWIDTH) * Kr * G_f
        if ctx["mode"] == "step":
            G_theta = G_theta - LAMBDA_STEP / BANDWIDTH * Kr.sum(0)
            if ctx["ste_to_input"]:
                G_P = G_P + LAMBDA_STEP / BANDWIDTH * Kr
        else:
            below = (d < 0).to(x.dtype)  # relu(theta - P) active
            G_P = G_P - LAMBDA_PRE * below * n[None, :]
            G_theta = G_theta + LAMBDA_PRE * (below * n[None, :]).sum(0)
        G = linear_backward(x, W_dec, f, G_xhat, G_P)
        if ctx["mode"] == "tanh":
            tt = torch.tanh(TANH_C * f * n[None, :])
            coeff = LAMBDA_TANH * (TANH_C * f * (1 - tt ** 2)).sum(0) + LAMBDA_PRE * torch.relu(theta - P).sum(0)
            G["W_dec"] = G["W_dec"] + coeff[:, None] * u
        G["threshold"] = G_theta
        G["log_threshold"] = theta * G_theta
        return G
    raise ValueError(arch)


def project_rows(W_dec, G):
    """Removes from each row of G its component along the row of W_dec: G_i - (G_i . u_i) u_i."""
    u = W_dec / dec_norm(W_dec)[:, None]
    return G - (G * u).sum(1, keepdim=True) * u


# ----------------------------------------------------------------------------------------------
# the cases

FWD = dict(standard=fwd_standard, topk=fwd_topk, batchtopk=fwd_batchtopk, jumprelu=fwd_jumprelu, gated=fwd_gated)
CASES = {
    "standard": dict(arch="standard", unit_norm=False),
    "topk": dict(arch="topk", unit_norm=True),
    "topk_auxk": dict(arch="topk", unit_norm=True, auxk=True),
    "batchtopk": dict(arch="batchtopk", unit_norm=True, auxk=True),
    "jumprelu_step": dict(arch="jumprelu", unit_norm=True, mode="step", ste_to_input=False),
    "jumprelu_tanh": dict(arch="jumprelu", unit_norm=False, mode="tanh", ste_to_input=True),
    "gated": dict(arch="gated", unit_norm=False),
}
# parameters whose gradient a finite difference can verify (the rest carry STE terms)
FD_PARAMS = {
    "standard": ["W_enc", "b_enc", "W_dec", "b_dec"],
    "topk": ["W_enc", "b_enc", "W_dec", "b_dec"],
    "topk_auxk": ["W_enc", "b_enc", "W_dec", "b_dec"],
    "batchtopk": ["W_enc", "b_enc", "W_dec", "b_dec"],
    "jumprelu_step": ["W_enc", "b_enc", "W_dec", "b_dec"],
    "jumprelu_tanh": ["W_dec", "b_dec"],
    "gated": ["W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec"],
}


def draw_case(name, spec, gen, dtype=torch.float64):
    """x [N, D] and the initial parameters of one case (float64, from the generator)."""
    def randn(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float64)

    def unif(lo, hi, *s):
        return lo + (hi - lo) * torch.rand(*s, generator=gen, dtype=torch.float64)

    x = randn(N, D) * unif(0.5, 1.5, D) + unif(-0.5, 0.5, D)
    W_dec = randn(F, D)
    W_dec = W_dec / dec_norm(W_dec)[:, None] * (1.0 if spec["unit_norm"] else unif(0.5, 1.5, F)[:, None])
    W_enc = W_dec.T.clone() * 0.8 + 0.3 * randn(D, F)
    b_dec = 0.2 * randn(D)
    p = dict(W_enc=W_enc, W_dec=W_dec, b_dec=b_dec)
    arch = spec["arch"]
    if arch == "gated":
        p.update(b_gate=0.3 * randn(F), b_mag=0.3 * randn(F), r_mag=0.3 * randn(F))
    else:
        p["b_enc"] = 0.3 * randn(F) - (0.4 if arch == "standard" else 0.0)
    if arch == "jumprelu":
        p["log_threshold"] = torch.log(unif(0.3, 1.2, F))
    state = {}
    if spec.get("auxk"):
        state["tokens_since_fired"] = torch.randint(0, 45, (F,), generator=gen, dtype=torch.int64)
    if arch == "batchtopk":
        state["threshold"] = torch.tensor(float(unif(0.2, 0.6, 1)), dtype=torch.float64)
    p = {k: v.contiguous() for k, v in p.items()}
    return x.contiguous(), p, state


def make_ctx(spec, dead=None):
    ctx = dict(auxk=spec.get("auxk", False), mode=spec.get("mode"), ste_to_input=spec.get("ste_to_input", False))
    if dead is not None:
        ctx["dead"] = dead
    return ctx


def dead_after_update(f, counters, n_tokens):
    """Counters update of doc 2.6: +N for every latent, 0 for those that fired (f > 0) in this batch;
    dead = counter >= DEAD_TOKENS. Returns (new counters, dead mask)."""
    fired = (f.detach() > 0).any(0)
    c = counters + n_tokens
    c[fired] = 0
    return c, c >= DEAD_TOKENS


def run_trajectory(spec, x0, p0, state0, dtype):
    """STEPS Adam steps on the same batch. Returns per-step records and the final parameters."""
    x = x0.to(dtype)
    params = {k: torch.nn.Parameter(v.clone().to(dtype)) for k, v in p0.items()}
    opt = torch.optim.Adam(list(params.values()), lr=LR, betas=BETAS, eps=ADAM_EPS, foreach=False)
    counters = state0.get("tokens_since_fired")
    counters = counters.clone() if counters is not None else None
    bt_thr = state0.get("threshold")
    bt_thr = bt_thr.clone().to(dtype) if bt_thr is not None else None
    rec = dict(loss=[], rec=[], n_dead=[], threshold=[], decisions=[], margin=[])
    for _ in range(STEPS):
        opt.zero_grad()
        ctx = make_ctx(spec)
        if spec.get("auxk"):
            # the dead mask of this step comes from the counters updated with this batch's firings,
            # which need the forward's f: the selection does not depend on the mask, so a first
            # forward without aux gives f.
            with torch.no_grad():
                f_pre = FWD[spec["arch"]](params, x, make_ctx({**spec, "auxk": False}))["f"]
            counters, dead = dead_after_update(f_pre, counters, x.shape[0])
            ctx["dead"] = dead
            rec["n_dead"].append(int(dead.sum()))
        out = FWD[spec["arch"]](params, x, ctx)
        out["total"].backward()
        rec["loss"].append(float(out["total"].detach()))
        rec["rec"].append(float(out["rec"].detach()))
        rec["decisions"].append([d.clone() for d in out["decisions"]])
        rec["margin"].append(min(float(m) for m in out["margins"]))
        if spec["unit_norm"]:
            params["W_dec"].grad = project_rows(params["W_dec"].detach(), params["W_dec"].grad)
        opt.step()
        if spec["unit_norm"]:
            with torch.no_grad():
                params["W_dec"] /= dec_norm(params["W_dec"])[:, None]
        if spec["arch"] == "batchtopk":
            pos = out["f"].detach()[out["f"].detach() > 0]
            if pos.numel():
                bt_thr = (1 - BT_LR) * bt_thr + BT_LR * pos.min()
            rec["threshold"].append(float(bt_thr))
    final = {k: v.detach().clone() for k, v in params.items()}
    return rec, final, counters


def fd_check(spec, p, x, ctx_base, names):
    """Max relative error between central differences and autograd for the listed parameters, with
    the detached quantities (AuxK residual, Gated frozen decoder) frozen at the base point."""
    ctx = dict(ctx_base)
    params = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    out = FWD[spec["arch"]](params, x, ctx)
    out["total"].backward()
    frozen = ctx.get("frozen_out")
    worst = 0.0
    for name in names:
        g = params[name].grad.reshape(-1)
        base = p[name].reshape(-1)
        num = torch.zeros_like(g)
        for j in range(base.numel()):
            vals = []
            for s in (1, -1):
                q = {k: v.clone() for k, v in p.items()}
                q[name].view(-1)[j] += s * FD_H
                c2 = dict(ctx_base, frozen=frozen) if frozen is not None else dict(ctx_base)
                vals.append(float(FWD[spec["arch"]](q, x, c2)["total"].detach()))
            num[j] = (vals[0] - vals[1]) / (2 * FD_H)
        err = float((num - g).abs().max() / max(1.0, float(g.abs().max())))
        worst = max(worst, err)
    return worst


def build_case(name, spec, seed):
    """Draws until the case is well conditioned; returns the fixture tensors and metadata of the case."""
    for attempt in range(500):
        gen = torch.Generator().manual_seed(seed + 1000 * attempt)
        x, p, state = draw_case(name, spec, gen)
        # single-step gradient case: the dead mask is the one the trajectory's first step uses
        dead = None
        if spec.get("auxk"):
            with torch.no_grad():
                f0 = FWD[spec["arch"]](p, x, make_ctx({**spec, "auxk": False}))["f"]
            _, dead = dead_after_update(f0, state["tokens_since_fired"].clone(), N)
            if not (K_AUX < int(dead.sum()) < F - 2):
                continue
        ctx = make_ctx(spec, dead)
        params = {k: v.clone().requires_grad_(True) for k, v in p.items()}
        out = FWD[spec["arch"]](params, x, ctx)
        if min(float(m) for m in out["margins"]) < MARGIN:
            continue
        if spec.get("auxk") and int((out["aux_acts"] > 0).sum()) < 5:
            continue
        if spec["arch"] == "jumprelu":
            win = out["decisions"][1]
            if int(win.sum()) < 6 or int(out["decisions"][0].sum()) < 6:
                continue
        if spec["arch"] == "gated" and not (0.2 < float(out["decisions"][0].double().mean()) < 0.8):
            continue
        fr = (out["f"].detach() > 0).double().mean()
        if not (0.05 < float(fr) < 0.8):
            continue
        rec64, fin64, cnt64 = run_trajectory(spec, x, p, state, torch.float64)
        if min(rec64["margin"]) < MARGIN:
            continue
        rec32, fin32, _ = run_trajectory(spec, x, p, state, torch.float32)
        same = all(torch.equal(a, b) for s64, s32 in zip(rec64["decisions"], rec32["decisions"]) for a, b in zip(s64, s32))
        if spec.get("auxk"):
            same = same and rec64["n_dead"] == rec32["n_dead"]
        if not same:
            continue
        drift = max(float((fin64[k] - fin32[k].double()).abs().max()) for k in fin64)
        if drift > 1e-4:
            continue
        break
    else:
        raise RuntimeError(f"{name}: no well-conditioned draw")

    out["total"].backward()
    grads = {k: v.grad.detach().clone() for k, v in params.items()}
    if spec["arch"] == "jumprelu":
        grads["threshold"] = grads["log_threshold"] / torch.exp(p["log_threshold"])
    man = manual_grads(spec["arch"], p, x, ctx)
    man_err = max(float((man[k] - grads[k]).abs().max()) for k in grads)
    if man_err > 1e-12 * max(1.0, max(float(g.abs().max()) for g in grads.values())):
        raise RuntimeError(f"{name}: closed-form gradients disagree with autograd by {man_err}")
    fd_err = fd_check(spec, p, x, ctx, FD_PARAMS[name])
    if fd_err > 1e-6:
        raise RuntimeError(f"{name}: finite differences disagree by {fd_err}")

    T = {}
    T[f"{name}.x"] = x
    for k, v in p.items():
        T[f"{name}.param.{k}"] = v
    for k in (("pi_gate", "pi_mag") if spec["arch"] == "gated" else ("P",)) + ("f", "x_hat"):
        T[f"{name}.out.{k}"] = out[k].detach()
    if spec.get("auxk"):
        T[f"{name}.out.aux_acts"] = out["aux_acts"].detach()
        T[f"{name}.dead_mask"] = dead.to(torch.int64)
        T[f"{name}.state.tokens_since_fired"] = state["tokens_since_fired"]
        T[f"{name}.traj.n_dead"] = torch.tensor(rec64["n_dead"], dtype=torch.int64)
        T[f"{name}.final.tokens_since_fired"] = cnt64
    for term in ("rec", "l1", "aux", "l0", "tanh", "pre_act", "total"):
        if term in out:
            T[f"{name}.loss.{term}"] = out[term].detach().reshape(())
    for k, v in grads.items():
        T[f"{name}.grad.{k}"] = v
    if spec["unit_norm"]:
        T[f"{name}.grad_proj.W_dec"] = project_rows(p["W_dec"], grads["W_dec"])
    if spec["arch"] == "batchtopk":
        T[f"{name}.state.threshold"] = state["threshold"].reshape(())
        pos = out["f"].detach()[out["f"].detach() > 0]
        T[f"{name}.threshold_after"] = ((1 - BT_LR) * state["threshold"] + BT_LR * pos.min()).reshape(())
        T[f"{name}.traj.threshold"] = torch.tensor(rec64["threshold"], dtype=torch.float64)
    T[f"{name}.traj.loss"] = torch.tensor(rec64["loss"], dtype=torch.float64)
    T[f"{name}.traj.rec"] = torch.tensor(rec64["rec"], dtype=torch.float64)
    for k, v in fin64.items():
        T[f"{name}.final.{k}"] = v
    meta = dict(attempt=attempt, min_margin=min(min(rec64["margin"]), min(float(m) for m in out["margins"])),
                f32_drift=drift, closed_form_vs_autograd=man_err, fd_max_rel_err=fd_err,
                fd_params=FD_PARAMS[name], n_active=int((out["f"].detach() > 0).sum()))
    return T, meta


# ----------------------------------------------------------------------------------------------
# geometric median (Weiszfeld, as SAELens <= 5 did it) and the L0 controller


def weiszfeld(points, maxiter, eps=GM_EPS, ftol=GM_FTOL):
    """Start at the mean; each iteration: w_j = 1 / max(||x_j - m||, eps), m = sum w_j x_j / sum w_j;
    stop after maxiter iterations or when |obj_prev - obj| <= ftol * obj (obj = sum_j ||x_j - m||)."""
    m = points.mean(0)
    obj = torch.linalg.vector_norm(points - m, dim=1).sum()
    it = 0
    for it in range(1, maxiter + 1):
        prev = obj
        w = 1.0 / torch.clamp(torch.linalg.vector_norm(points - m, dim=1), min=eps)
        m = (w[:, None] * points).sum(0) / w.sum()
        obj = torch.linalg.vector_norm(points - m, dim=1).sum()
        if abs(float(prev - obj)) <= ftol * float(obj):
            break
    return m, it


def l0_controller(measured, c=CTL):
    """Doc 2.10: velocity-form PI on u = log(lambda) with an EMA of the measured L0."""
    u = math.log(c["lambda0"])
    ema = None
    e_prev = None
    lambdas, emas = [], []
    for L in measured:
        ema = L if ema is None else (1 - c["ema"]) * ema + c["ema"] * L
        e = math.log(ema / c["target"])
        du = c["ki"] * e + (c["kp"] * (e - e_prev) if e_prev is not None else 0.0)
        du = max(-c["max_step"], min(c["max_step"], du))
        u = max(c["log_min"], min(c["log_max"], u + du))
        e_prev = e
        lambdas.append(math.exp(u))
        emas.append(ema)
    return lambdas, emas


def build_all():
    torch.set_default_dtype(torch.float64)
    T, meta = {}, {}
    for i, (name, spec) in enumerate(CASES.items()):
        t, m = build_case(name, spec, SEED + 17 * i)
        T.update(t)
        meta[name] = m
    gen = torch.Generator().manual_seed(SEED + 999)
    pts = torch.randn(GM_POINTS, D, generator=gen, dtype=torch.float64) + 1.0
    pts[:4] += 25.0 * torch.randn(4, D, generator=gen, dtype=torch.float64)  # outliers pull the mean, not the median
    T["geomed.points"] = pts
    T["geomed.mean"] = pts.mean(0)
    T["geomed.iter3"], _ = weiszfeld(pts, 3)
    med, it = weiszfeld(pts, GM_MAXITER)
    T["geomed.median"] = med
    T["geomed.n_iter"] = torch.tensor(it, dtype=torch.int64)
    meas = [12.0, 11.0, 9.5, 8.0, 7.0, 6.0, 5.2, 4.6, 4.1, 3.8, 3.7, 3.9]
    lam, emas = l0_controller(meas)
    T["l0ctl.measured"] = torch.tensor(meas, dtype=torch.float64)
    T["l0ctl.ema"] = torch.tensor(emas, dtype=torch.float64)
    T["l0ctl.lambda"] = torch.tensor(lam, dtype=torch.float64)
    cfg = dict(D=D, F=F, N=N, k=K, k_aux=K_AUX, aux_alpha=AUX_ALPHA, bandwidth=BANDWIDTH, tanh_c=TANH_C,
               lambda_standard=LAMBDA_STD, lambda_step=LAMBDA_STEP, lambda_tanh=LAMBDA_TANH, lambda_pre=LAMBDA_PRE,
               lambda_gated=LAMBDA_GATED, batchtopk_threshold_lr=BT_LR, dead_tokens=DEAD_TOKENS, steps=STEPS,
               lr=LR, beta1=BETAS[0], beta2=BETAS[1], adam_eps=ADAM_EPS, gm_eps=GM_EPS, gm_maxiter=GM_MAXITER,
               gm_ftol=GM_FTOL, **{f"ctl_{k}": v for k, v in CTL.items()})
    for k, v in cfg.items():
        T[f"cfg.{k}"] = torch.tensor(v, dtype=torch.int64 if isinstance(v, int) else torch.float64)
    metadata = dict(format="sae-cpp-arch-reference", version="1", torch_version=torch.__version__, seed=str(SEED),
                    margin=str(MARGIN), cases=json.dumps(meta, sort_keys=True), cfg=json.dumps(cfg, sort_keys=True),
                    case_options=json.dumps(CASES, sort_keys=True))
    T = {k: v.detach().clone().contiguous() for k, v in T.items()}
    return T, metadata, meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "ref", "arch", "arch_reference.safetensors"))
    ap.add_argument("--check", action="store_true", help="compare a fresh build with the file at --out")
    args = ap.parse_args()
    from safetensors.torch import load_file, save_file

    T, metadata, meta = build_all()
    for name, m in meta.items():
        print(f"{name:14s} attempt {m['attempt']:3d}  min margin {m['min_margin']:.2e}  f32 drift {m['f32_drift']:.1e}  "
              f"closed-form {m['closed_form_vs_autograd']:.1e}  FD {m['fd_max_rel_err']:.1e} on {','.join(m['fd_params'])}")
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
