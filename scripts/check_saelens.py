#!/usr/bin/env python3
"""Loads one of our SAE checkpoints with SAELens itself and checks it computes what we compute.

docs/contract.md §4: our checkpoint directory (cfg.json + sae_weights.safetensors) must load with
`sae_lens.SAE.load_from_disk`. This script loads it, prints SAELens's view of the config, runs
SAELens's encode/decode on an input .npy [N, d_in] and compares with our sae_apply outputs.
Needs `pip install sae-lens` (which brings torch and numpy). Usage:
    python3 scripts/check_saelens.py SAE_DIR --input X.npy --features F.npy --reconstruction XHAT.npy
        [--tolerance 1e-4]
where F.npy and XHAT.npy were written by
    build/bin/sae_apply --sae SAE_DIR --input X.npy --features-out F.npy --reconstruction-out XHAT.npy
or, with --sae-apply BIN, are produced by running that binary here (into a temporary directory).
With --sae-apply, the reverse direction is checked too: SAELens's own save_model() writes the SAE
to a temporary directory and sae_apply must give bit-identical outputs from that copy.
With --make-input N, X.npy is first written with N random rows (normal, seed 0, scaled by
--input-scale) so the check needs no data of its own.
Exits 0 when max |ours - SAELens| <= tolerance * max(1, max |SAELens|) for both outputs, 1 on a
mismatch, 2 when SAELens cannot load the checkpoint.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np


def load_sae(sae_dir):
    import sae_lens
    import torch

    # SAELens 6.x: SAE.load_from_disk(path, device) reads cfg.json + sae_weights.safetensors and
    # picks the class from cfg["architecture"] (StandardSAE for "standard").
    sae = sae_lens.SAE.load_from_disk(sae_dir, device="cpu")
    return sae_lens, torch, sae


def summarize(a):
    return f"shape {list(a.shape)}, max |.| {float(np.max(np.abs(a))) if a.size else 0.0:.6g}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sae_dir", help="checkpoint directory (cfg.json + sae_weights.safetensors)")
    parser.add_argument("--input", required=True, help="activations .npy [N, d_in]")
    parser.add_argument("--features", help="our features .npy [N, d_sae] (from sae_apply --features-out)")
    parser.add_argument("--reconstruction", help="our reconstruction .npy [N, d_in] (sae_apply --reconstruction-out)")
    parser.add_argument("--sae-apply", help="path of build/bin/sae_apply: run it to produce our outputs")
    parser.add_argument("--make-input", type=int, default=0, metavar="N",
                        help="first write --input with N random normal rows (seed 0)")
    parser.add_argument("--input-scale", type=float, default=1.0, help="scale of the --make-input rows")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
    args = parser.parse_args()

    try:
        sae_lens, torch, sae = load_sae(args.sae_dir)
    except Exception as e:  # report SAELens's own reason, in one line, and stop
        print(f"error: SAELens could not load {args.sae_dir}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(f"sae_lens {sae_lens.__version__}, torch {torch.__version__}, numpy {np.__version__}")
    print(f"loaded {type(sae).__module__}.{type(sae).__name__} from {args.sae_dir}")
    cfg = sae.cfg.to_dict() if hasattr(sae.cfg, "to_dict") else vars(sae.cfg)
    print("cfg: " + json.dumps(cfg, indent=2, sort_keys=True, default=str))
    for name, p in sae.state_dict().items():
        print(f"  param {name}: {list(p.shape)} {p.dtype}")

    d_in = int(cfg["d_in"])
    if args.make_input:
        rng = np.random.default_rng(0)
        x = (rng.standard_normal((args.make_input, d_in)) * args.input_scale).astype(np.float32)
        np.save(args.input, x)
        print(f"wrote {args.input}: {args.make_input} x {d_in} normal * {args.input_scale:g}")
    x = np.load(args.input)
    if x.ndim != 2 or x.shape[1] != d_in:
        print(f"error: {args.input} has shape {x.shape}, SAE d_in is {d_in}", file=sys.stderr)
        return 1
    x = x.astype(np.float32)

    tmp = None
    features_path, reconstruction_path = args.features, args.reconstruction
    if args.sae_apply:
        tmp = tempfile.TemporaryDirectory(prefix="check_saelens_")
        features_path = os.path.join(tmp.name, "f.npy")
        reconstruction_path = os.path.join(tmp.name, "xhat.npy")
        command = [args.sae_apply, "--sae", args.sae_dir, "--input", args.input,
                   "--features-out", features_path, "--reconstruction-out", reconstruction_path]
        print("running: " + " ".join(command))
        result = subprocess.run(command, capture_output=True, text=True)
        sys.stdout.write(result.stdout)
        if result.returncode != 0:
            print(f"error: sae_apply failed (exit {result.returncode}): {result.stderr.strip()}", file=sys.stderr)
            return 1
    if not features_path and not reconstruction_path:
        print("error: give --features/--reconstruction or --sae-apply", file=sys.stderr)
        return 2

    with torch.no_grad():
        xt = torch.from_numpy(x)
        f_ref = sae.encode(xt)
        xhat_ref = sae.decode(f_ref)
        # forward() is encode then decode (with SAELens's hooks), so it must agree with decode(encode).
        fwd = sae(xt)
    f_ref, xhat_ref, fwd = f_ref.numpy(), xhat_ref.numpy(), fwd.numpy()
    print(f"SAELens forward vs decode(encode): max abs diff {float(np.max(np.abs(fwd - xhat_ref))):.3g}")

    ok = True
    for label, path, ref in (("features", features_path, f_ref), ("reconstruction", reconstruction_path, xhat_ref)):
        if not path:
            continue
        ours = np.load(path)
        if ours.shape != ref.shape:
            print(f"{label}: MISMATCH shape ours {ours.shape} vs SAELens {ref.shape}")
            ok = False
            continue
        diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
        max_diff = float(diff.max()) if diff.size else 0.0
        scale = max(1.0, float(np.max(np.abs(ref))) if ref.size else 0.0)
        within = max_diff <= args.tolerance * scale and not math.isnan(max_diff)
        extra = ""
        if label == "features":
            active_ours, active_ref = ours > 0, ref > 0
            extra = (f", L0 ours {active_ours.sum(1).mean():.3f} vs SAELens {active_ref.sum(1).mean():.3f}, "
                     f"active sets differ in {int((active_ours != active_ref).sum())} of {ref.size} entries")
        print(f"{label}: {summarize(ref)}; max abs diff {max_diff:.3g} "
              f"(limit {args.tolerance * scale:.3g}){extra} -> {'OK' if within else 'MISMATCH'}")
        ok = ok and within
    if args.sae_apply:
        # Reverse direction: a checkpoint written by SAELens itself must load in our code.
        resaved = os.path.join(tmp.name, "saved_by_saelens")
        sae.save_model(resaved)
        with open(os.path.join(resaved, "cfg.json")) as f:
            print(f"SAELens save_model cfg.json: {f.read().strip()}")
        f2, x2 = os.path.join(tmp.name, "f2.npy"), os.path.join(tmp.name, "xhat2.npy")
        result = subprocess.run([args.sae_apply, "--sae", resaved, "--input", args.input, "--features-out", f2,
                                 "--reconstruction-out", x2], capture_output=True, text=True)
        if result.returncode != 0:
            print(f"error: sae_apply on SAELens's save_model output failed: {result.stderr.strip()}", file=sys.stderr)
            ok = False
        else:
            same = (np.array_equal(np.load(f2), np.load(features_path))
                    and np.array_equal(np.load(x2), np.load(reconstruction_path)))
            print(f"sae_apply on SAELens's save_model copy: {'bit-identical' if same else 'DIFFERENT'} outputs")
            ok = ok and same
    print("PASS: SAELens loads the checkpoint and agrees with sae_apply" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
