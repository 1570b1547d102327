"""Checks sae_train --apply-b-dec-to-input against SAELens's own training SAE: a standard SAE trained
200 steps on the same 64 rows (every step the whole set, so that the order of sae_train's shuffled
batches does not matter) from the same weights, SAELens's StandardTrainingSAE (apply_b_dec_to_input
True) driven by its training_forward_pass and torch's Adam; then both again with SAELens's trainer's
gradient clipping (clip_grad_norm_ at 1; ours --max-grad-norm 1). Our loss is a sum over the batch's
tokens where SAELens's is a mean: the same Adam steps with eps x 64 (docs/architectures.md 2.10).
Prints the largest relative difference of the trained tensors, and the same for a run of ours
without the option (which must differ: the check can see the centring). Exit 1 on a mismatch.

Usage: python3 scripts/check_saelens_centred_training.py [WORK_DIR] (BUILD=dir, default build)
"""
import json
import os
import subprocess
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

D, F, N, STEPS, LR, L1 = 16, 32, 64, 200, 1e-3, 0.05


def main():
    work = sys.argv[1] if len(sys.argv) > 1 else "/tmp/sae_check_centred"
    build = os.environ.get("BUILD", "build")
    os.makedirs(work, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    offset = 3.0 * torch.randn(D, generator=g)  # a mean far from 0: b_dec has something to centre
    x = torch.randn(N, D, generator=g) + offset
    np.save(f"{work}/x.npy", x.numpy())
    start = {
        "W_enc": 0.3 * torch.randn(D, F, generator=g),
        "b_enc": 0.1 * torch.randn(F, generator=g),
        "W_dec": 0.3 * torch.randn(F, D, generator=g),
        "b_dec": offset + 0.5 * torch.randn(D, generator=g),
    }
    init = f"{work}/init"
    os.makedirs(init, exist_ok=True)
    save_file({k: v.contiguous() for k, v in start.items()}, f"{init}/sae_weights.safetensors")
    with open(f"{init}/cfg.json", "w") as f:
        json.dump({"architecture": "standard", "d_in": D, "d_sae": F, "dtype": "float32", "device": "cpu",
                   "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
                   "metadata": {}}, f)

    def ours(name, centred, clip=False):
        out = f"{work}/{name}"
        subprocess.run([f"{build}/bin/sae_train", "--data", f"{work}/x.npy", "--batch", str(N), "--normalize", "none",
                        "--steps", str(STEPS), "--lr", str(LR), "--l1", str(L1), "--eps", str(1e-8 * N), "--sparse",
                        "off", "--init", init, "--out", out, "--overwrite", "--progress", "none",
                        "--feature-stats-steps", "0", "--checkpoint-every", "100000"]
                       + (["--apply-b-dec-to-input"] if centred else []) + (["--max-grad-norm", "1"] if clip else []),
                       check=True, stdout=subprocess.DEVNULL)
        return load_file(f"{out}/sae/sae_weights.safetensors")

    def saelens(clip):
        cfg = StandardTrainingSAEConfig(d_in=D, d_sae=F, apply_b_dec_to_input=True, dtype="float32", device="cpu",
                                        normalize_activations="none")
        sae = StandardTrainingSAE(cfg)
        with torch.no_grad():
            for name, value in start.items():
                getattr(sae, name).copy_(value)
        opt = torch.optim.Adam(sae.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8)
        for step in range(STEPS):
            out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={"l1": L1}, dead_neuron_mask=None,
                                                           n_training_steps=step, is_logging_step=False))
            opt.zero_grad()
            out.loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
            opt.step()
        return {name: getattr(sae, name).detach() for name in start}

    def worst(mine, theirs):
        return max(float((mine[k] - theirs[k]).abs().max() / theirs[k].abs().max()) for k in start)

    theirs, theirs_clipped = saelens(False), saelens(True)
    centred, plain = worst(ours("centred", True), theirs), worst(ours("plain", False), theirs)
    clipped = worst(ours("clipped", True, clip=True), theirs_clipped)
    moved = max(float((theirs[k] - start[k]).abs().max() / start[k].abs().max()) for k in start)
    print(f"{STEPS} steps, d {D}, F {F}, {N} rows: SAELens's weights moved by up to {moved:.3f} (relative)")
    print(f"  sae_train --apply-b-dec-to-input vs SAELens (apply_b_dec_to_input True): worst relative {centred:.2e}")
    print(f"  the same with --max-grad-norm 1 vs clip_grad_norm_(1):                  worst relative {clipped:.2e}")
    print(f"  sae_train without the option vs SAELens:                              worst relative {plain:.2e}")
    clip_moved = worst(theirs_clipped, theirs)
    print(f"  (SAELens clipped vs not: {clip_moved:.2e}: the clip was at work)")
    ok = centred < 1e-4 and clipped < 1e-4 and plain > 1e-2 and moved > 1e-2 and clip_moved > 1e-3
    print("MATCH" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
