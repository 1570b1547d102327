#!/usr/bin/env python3
"""Checks SAE folders in our format against SAELens, for every architecture of docs/architectures.md.

For each folder (cfg.json + sae_weights.safetensors) this loads the SAE with
`sae_lens.SAE.load_from_disk`, runs SAELens's encode and decode on the inputs, and compares them
with a numpy float64 re-implementation of our inference formulas (docs/architectures.md section 3)
computed from the folder's own weights and cfg.json:

    standard  f = relu(P)                                   P = x' W_enc + b_enc
    topk      f = relu(P) on the k largest P of each token (k from cfg.json), 0 elsewhere
              (rescale_acts_by_decoder_norm: P scaled by ||W_dec[i]|| before, f divided after)
    jumprelu  f = relu(P) * 1[P > threshold]                (BatchTopK is exported as this)
    gated     f = 1[x' W_enc + b_gate > 0] * relu(x' (W_enc * exp(r_mag)) + b_mag)
    x_hat = f W_dec + b_dec;  x' = x - b_dec when apply_b_dec_to_input, else x

It prints the max abs differences of f and x_hat and the active-set agreement (f > 0). A flipped
active entry whose decision quantity is within --tie-tolerance of its boundary (a float32 near tie)
is reported as a near tie and its token left out of the value comparison; any other disagreement
is a mismatch. Exit status: 0 when every folder matches, 1 on a mismatch (or a cfg that our format
forbids, e.g. topk without k, which SAELens would silently run with k = 100), 2 when SAELens
cannot load a folder.

    python3 scripts/check_saelens_archs.py DIR [DIR ...] [--input X.npy|X.safetensors] [--rows N]
    python3 scripts/check_saelens_archs.py --self-test [--keep DIR]

--input: a [rows, d_in] array (.npy, or a .safetensors whose tensor "x" or single tensor is used);
without it, --rows (default 256) rows of N(0, --input-scale^2) noise, seed 0. --self-test writes one
folder per architecture in our format into a temporary directory (or --keep DIR), checks each, and
checks that the formats SAELens must reject (a jumprelu with log_threshold instead of threshold,
a gated with b_enc, an architecture "batchtopk", a topk without k) are caught, and that a 1e-3
shift of b_dec in our re-implementation is reported as a mismatch.
Needs sae-lens (which brings torch), numpy and safetensors.
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np

SUPPORTED = ("standard", "topk", "jumprelu", "gated")


def load_folder(path):
    from safetensors.numpy import load_file

    with open(os.path.join(path, "cfg.json")) as fh:
        cfg = json.load(fh)
    w = {k: v.astype(np.float64) for k, v in load_file(os.path.join(path, "sae_weights.safetensors")).items()}
    return cfg, w


def format_problems(cfg, w):
    """What our format requires beyond what SAELens checks (SAELens accepts these silently)."""
    arch = cfg.get("architecture")
    problems = []
    if arch not in SUPPORTED:
        problems.append(f"architecture {arch!r} is not one of {SUPPORTED}")
    if arch == "topk":
        if "k" not in cfg:
            problems.append("topk cfg.json has no 'k' (SAELens would silently use its default k = 100)")
        elif not isinstance(cfg["k"], int) or cfg["k"] < 1:
            problems.append(f"topk k must be a positive integer, got {cfg['k']!r}")
    for key in ("d_in", "d_sae"):
        if key not in cfg:
            problems.append(f"cfg.json has no {key!r}")
    if "W_enc" in w and "d_in" in cfg and tuple(w["W_enc"].shape) != (cfg["d_in"], cfg["d_sae"]):
        problems.append(f"W_enc shape {w['W_enc'].shape} != (d_in, d_sae)")
    return problems


def numpy_encode(cfg, w, x):
    """Our inference formulas in float64. Returns (f, decision margins [rows, d_sae])."""
    arch = cfg["architecture"]
    xin = x - w["b_dec"] if cfg.get("apply_b_dec_to_input", False) else x
    if arch == "gated":
        pg = xin @ w["W_enc"] + w["b_gate"]
        pm = xin @ (w["W_enc"] * np.exp(w["r_mag"])) + w["b_mag"]
        f = (pg > 0) * np.maximum(pm, 0.0)
        return f, np.minimum(np.abs(pg), np.where(pg > 0, np.abs(pm), np.inf))
    P = xin @ w["W_enc"] + w["b_enc"]
    if arch == "standard":
        return np.maximum(P, 0.0), np.abs(P)
    if arch == "jumprelu":
        th = w["threshold"]
        return np.maximum(P, 0.0) * (P > th), np.minimum(np.abs(P - th), np.abs(P))
    if arch == "topk":
        k = int(cfg["k"])
        rescale = bool(cfg.get("rescale_acts_by_decoder_norm", False))
        S = P * np.linalg.norm(w["W_dec"], axis=1) if rescale else P
        order = np.argsort(-S, axis=1, kind="stable")
        sel = np.zeros_like(S, dtype=bool)
        np.put_along_axis(sel, order[:, :k], True, axis=1)
        f = np.where(sel, np.maximum(S, 0.0), 0.0)
        srt = np.take_along_axis(S, order, axis=1)
        if k < S.shape[1]:
            cut = 0.5 * (srt[:, k - 1] + srt[:, k])
            margin = np.minimum(np.abs(S - cut[:, None]), np.abs(S))
        else:
            margin = np.abs(S)
        return f, margin
    raise ValueError(arch)


def numpy_decode(cfg, w, f):
    if cfg["architecture"] == "topk" and cfg.get("rescale_acts_by_decoder_norm", False):
        f = f / np.linalg.norm(w["W_dec"], axis=1)
    return f @ w["W_dec"] + w["b_dec"]


def saelens_load(path):
    import sae_lens

    return sae_lens.SAE.load_from_disk(path, device="cpu")


def saelens_apply(sae, x):
    import torch

    with torch.no_grad():
        f = sae.encode(torch.from_numpy(x.astype(np.float32)))
        x_hat = sae.decode(f)
    return f.double().numpy(), x_hat.double().numpy()


def check_folder(path, x, tol, tie_tol, quiet=False, perturb=0.0):
    """Returns 0 (match), 1 (mismatch or format problem) or 2 (SAELens cannot load it).
    perturb (self-test only) shifts our copy of b_dec, to show that a mismatch is caught."""
    def say(msg):
        if not quiet:
            print(msg)

    try:
        cfg, w = load_folder(path)
    except Exception as e:  # noqa: BLE001
        say(f"  error: cannot read {path}: {type(e).__name__}: {e}")
        return 2
    try:
        sae = saelens_load(path)
    except Exception as e:  # noqa: BLE001
        say(f"  SAELens cannot load {path}: {type(e).__name__}: {str(e).strip().splitlines()[0]}"
            + (" ..." if len(str(e).strip().splitlines()) > 1 else ""))
        for line in str(e).strip().splitlines()[1:3]:
            say(f"    {line.strip()}")
        return 2
    import sae_lens

    say(f"  SAELens {sae_lens.__version__} loaded {type(sae).__name__}; params "
        + ", ".join(f"{k} {list(v.shape)}" for k, v in sae.state_dict().items()))
    if hasattr(sae.cfg, "k"):
        say(f"  SAELens cfg k = {sae.cfg.k!r}, rescale_acts_by_decoder_norm = {sae.cfg.rescale_acts_by_decoder_norm}")
    problems = format_problems(cfg, w)
    if problems:
        for p in problems:
            say(f"  format problem: {p}")
        return 1
    try:
        f_sl, xh_sl = saelens_apply(sae, x)
    except Exception as e:  # noqa: BLE001
        say(f"  SAELens cannot run {path}: {type(e).__name__}: {e}")
        return 2
    extra = cfg.get("sae_cpp", {})
    if isinstance(extra, dict) and extra.get("training_architecture"):
        say(f"  trained as {extra['training_architecture']!r}, exported as {cfg['architecture']!r}")
    if perturb:
        w = dict(w, b_dec=w["b_dec"] + perturb)
    f_np, margin = numpy_encode(cfg, w, x.astype(np.float32).astype(np.float64))
    xh_np = numpy_decode(cfg, w, f_np)
    a_np, a_sl = f_np > 0, f_sl > 0
    flips = a_np != a_sl
    near = flips & (margin <= tie_tol * max(1.0, float(np.abs(margin).max(initial=0.0))))
    hard = flips & ~near
    keep = ~flips.any(axis=1)
    d_f = float(np.abs(f_np - f_sl)[keep].max(initial=0.0))
    d_x = float(np.abs(xh_np - xh_sl)[keep].max(initial=0.0))
    s_f = max(1.0, float(np.abs(f_sl).max(initial=0.0)))
    s_x = max(1.0, float(np.abs(xh_sl).max(initial=0.0)))
    agree = 1.0 - flips.mean()
    say(f"  rows {x.shape[0]}: active entries ours {int(a_np.sum())}, SAELens {int(a_sl.sum())}, "
        f"mean L0 {a_sl.sum(1).mean():.3f}; active-set agreement {agree:.6f} "
        f"({int(flips.sum())} flips: {int(near.sum())} near ties, {int(hard.sum())} real)")
    say(f"  max |f ours - f SAELens| {d_f:.3e} (scale {s_f:.3g}), max |x_hat ours - x_hat SAELens| {d_x:.3e} "
        f"(scale {s_x:.3g}) over {int(keep.sum())} rows")
    ok = not hard.any() and d_f <= tol * s_f and d_x <= tol * s_x
    say("  MATCH" if ok else "  MISMATCH")
    return 0 if ok else 1


# ----------------------------------------------------------------------------------------------
# self test: folders written from Python in our export format (docs/architectures.md section 3)


def base_cfg(arch, d_in, d_sae, **extra):
    cfg = {
        "architecture": arch, "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.0.0", "sae_lens_training_version": "6.0.0"},
    }
    cfg.update(extra)
    return cfg


def write_folder(path, cfg, tensors):
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
              os.path.join(path, "sae_weights.safetensors"))
    with open(os.path.join(path, "cfg.json"), "w") as fh:
        json.dump(cfg, fh, indent=2)
        fh.write("\n")


def self_test_folders(root, d_in=16, d_sae=64, seed=1):
    """(name, path, expected exit status) for each folder written."""
    rng = np.random.default_rng(seed)
    W_dec = rng.standard_normal((d_sae, d_in))
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    W_enc = W_dec.T * 0.9 + 0.2 * rng.standard_normal((d_in, d_sae))
    b_dec = 0.1 * rng.standard_normal(d_in)
    b_enc = -0.5 + 0.2 * rng.standard_normal(d_sae)
    core = dict(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec)
    sae_cpp = lambda arch, **kw: {"training_architecture": arch, **kw}  # noqa: E731
    folders = []

    def add(name, cfg, tensors, expect):
        path = os.path.join(root, name)
        write_folder(path, cfg, tensors)
        folders.append((name, path, expect))

    add("standard", base_cfg("standard", d_in, d_sae, sae_cpp=sae_cpp("standard")), core, 0)
    add("topk", base_cfg("topk", d_in, d_sae, k=5, rescale_acts_by_decoder_norm=False,
                         sae_cpp=sae_cpp("topk", k=5)), core, 0)
    # a decoder that is not unit norm, exported with SAELens's rescale flag: SAELens selects on
    # P * ||W_dec[i]|| and divides by the norm again in decode
    Wd2 = W_dec * rng.uniform(0.5, 2.0, (d_sae, 1))
    add("topk_rescale", base_cfg("topk", d_in, d_sae, k=5, rescale_acts_by_decoder_norm=True,
                                 sae_cpp=sae_cpp("topk", k=5)), {**core, "W_dec": Wd2}, 0)
    bt_threshold = 0.35
    add("batchtopk_as_jumprelu", base_cfg("jumprelu", d_in, d_sae,
                                          sae_cpp=sae_cpp("batchtopk", k=5, threshold=bt_threshold)),
        {**core, "threshold": np.full(d_sae, bt_threshold)}, 0)
    log_th = np.log(rng.uniform(0.05, 0.6, d_sae))
    add("jumprelu", base_cfg("jumprelu", d_in, d_sae, sae_cpp=sae_cpp("jumprelu", sparsity="step")),
        {**core, "threshold": np.exp(log_th)}, 0)
    add("jumprelu_b_dec_in", base_cfg("jumprelu", d_in, d_sae, apply_b_dec_to_input=True,
                                      sae_cpp=sae_cpp("jumprelu", sparsity="tanh")),
        {**core, "threshold": np.exp(log_th)}, 0)
    gated = dict(W_enc=W_enc, W_dec=W_dec, b_dec=b_dec, b_gate=b_enc, b_mag=0.1 * rng.standard_normal(d_sae),
                 r_mag=0.3 * rng.standard_normal(d_sae))
    add("gated", base_cfg("gated", d_in, d_sae, sae_cpp=sae_cpp("gated")), gated, 0)
    # formats that must be rejected
    add("bad_jumprelu_log_threshold", base_cfg("jumprelu", d_in, d_sae), {**core, "log_threshold": log_th}, 2)
    add("bad_gated_with_b_enc", base_cfg("gated", d_in, d_sae), {**gated, "b_enc": b_enc}, 2)
    add("bad_batchtopk_architecture", base_cfg("batchtopk", d_in, d_sae, k=5), core, 2)
    # d_sae 128 > 100: SAELens loads this and would run it with its default k = 100
    wide = dict(W_enc=np.tile(W_enc, (1, 2)), b_enc=np.tile(b_enc, 2), W_dec=np.tile(W_dec, (2, 1)), b_dec=b_dec)
    add("bad_topk_without_k", base_cfg("topk", d_in, 2 * d_sae), wide, 1)
    # the trained end points of the float64 reference fixture, exported as docs/architectures.md says
    fixture = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref", "arch",
                           "arch_reference.safetensors")
    if os.path.exists(fixture):
        from safetensors.numpy import load_file

        t = load_file(fixture)
        dd, ff = int(t["cfg.D"]), int(t["cfg.F"])
        fin = lambda case: {k.split(".")[-1]: v for k, v in t.items() if k.startswith(case + ".final.")}  # noqa: E731
        p = fin("topk")
        add("fixture_topk", base_cfg("topk", dd, ff, k=int(t["cfg.k"]), sae_cpp=sae_cpp("topk")),
            {k: p[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}, 0)
        p = fin("batchtopk")
        thr = float(t["batchtopk.traj.threshold"][-1])
        add("fixture_batchtopk", base_cfg("jumprelu", dd, ff, sae_cpp=sae_cpp("batchtopk", threshold=thr)),
            {**{k: p[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}, "threshold": np.full(ff, thr)}, 0)
        for case in ("jumprelu_step", "jumprelu_tanh"):
            p = fin(case)
            add(f"fixture_{case}", base_cfg("jumprelu", dd, ff, sae_cpp=sae_cpp("jumprelu")),
                {**{k: p[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}, "threshold": np.exp(p["log_threshold"])}, 0)
        p = fin("gated")
        add("fixture_gated", base_cfg("gated", dd, ff, sae_cpp=sae_cpp("gated")), p, 0)
    return folders


def read_input(path, rows, scale, d_in):
    if path is None:
        return np.random.default_rng(0).standard_normal((rows, d_in)) * scale
    if path.endswith(".npy"):
        x = np.load(path)
    else:
        from safetensors.numpy import load_file

        t = load_file(path)
        x = t["x"] if "x" in t else (next(iter(t.values())) if len(t) == 1 else None)
        if x is None:
            raise SystemExit(f"error: {path} has several tensors and none named 'x'")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != d_in:
        raise SystemExit(f"error: {path} has shape {x.shape}, the SAE has d_in {d_in}")
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="*")
    ap.add_argument("--input", help="activations [rows, d_in]: .npy or .safetensors")
    ap.add_argument("--rows", type=int, default=256, help="random rows when no --input (default 256)")
    ap.add_argument("--input-scale", type=float, default=1.0)
    ap.add_argument("--tolerance", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
    ap.add_argument("--tie-tolerance", type=float, default=1e-5,
                    help="a flip within this (relative) distance of its boundary is a near tie (default 1e-5)")
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--keep", help="with --self-test: write the folders here instead of a temporary directory")
    args = ap.parse_args()
    if not args.folders and not args.self_test:
        ap.error("give SAE folders, or --self-test")

    import warnings

    warnings.filterwarnings("ignore")
    status = 0
    if args.self_test:
        root = args.keep or tempfile.mkdtemp(prefix="saelens_archs_")
        results = []
        folders = self_test_folders(root)
        folders.append(("mismatch_detected (b_dec+1e-3)", folders[1][1], 1))
        for name, path, expect in folders:
            cfg, _ = load_folder(path)
            x = read_input(args.input, args.rows, args.input_scale, cfg["d_in"])
            print(f"[self-test] {name} (expect exit {expect})")
            got = check_folder(path, x, args.tolerance, args.tie_tolerance,
                               perturb=1e-3 if name.startswith("mismatch") else 0.0)
            results.append((name, expect, got))
            if got != expect:
                status = 1
        print("self-test summary:")
        for name, expect, got in results:
            print(f"  {name:28s} expected {expect} got {got}  {'ok' if got == expect else 'FAILED'}")
        print(f"self-test folders in {root}")
    for path in args.folders:
        cfg, _ = load_folder(path)
        x = read_input(args.input, args.rows, args.input_scale, cfg["d_in"])
        print(f"{path} ({cfg.get('architecture')})")
        status = max(status, check_folder(path, x, args.tolerance, args.tie_tolerance))
    return status


if __name__ == "__main__":
    sys.exit(main())
