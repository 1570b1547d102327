#!/usr/bin/env python3
"""Writes tests/ref/sparsify/: SAE folders as EleutherAI's sparsify saves them (its own
SparseCoder.save_to_disk: cfg.json and sae.safetensors) and what sparsify's encode / forward compute
with them, for the tests of reading sparsify folders (tests/experiments/test_cli_sparsify.cpp).

    pip install eai-sparsify   # (or --no-deps, then natsort simple_parsing einops schedulefree)
    python3 scripts/gen_sparsify_fixture.py [--out-dir DIR]

(sparsify's eager decoder: SPARSIFY_DISABLE_TRITON=1 is set here; Triton's needs a GPU.)

Writes (about 50 KB):

    h.1/          an autoencoder (SparseCoderConfig num_latents 64, k 6) on d_in 32, the width of
                  the tiny GPT-Neo of tests/ref/eval; named as sparsify names the folder of the
                  hookpoint h.1 (block 1's output), b_dec and encoder.bias non-zero
    transcoder/   a skip transcoder (transcode, skip_connection) 32 -> 32, W_skip non-zero
    groupmax/     an autoencoder with activation groupmax (refused)
    x.npy         inputs [40, 32] float32
    expected.safetensors
                  sae_features [40, 64] (top_acts scattered at top_indices), sae_reconstruction
                  [40, 32] (forward's sae_out), transcoder_features, transcoder_prediction, all
                  float32 as sparsify computes them on the CPU

Rows whose k-th and (k+1)-th largest pre-activation lie within 1e-3 of each other are redrawn, so
float32 rounding cannot change a selection.
"""
import argparse
import os
import sys

import numpy as np
import torch

os.environ["SPARSIFY_DISABLE_TRITON"] = "1"  # its eager decoder (the Triton one needs a GPU)
from sparsify.config import SparseCoderConfig
from sparsify.sparse_coder import SparseCoder

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_io import FixtureWriter  # noqa: E402

D, F, K, N = 32, 64, 6, 40
MARGIN = 1e-3


def randomise(coder, generator):
    with torch.no_grad():
        for p in coder.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * (0.3 if p.ndim == 1 else 1 / np.sqrt(p.shape[-1])))


def dense(out, rows):
    f = torch.zeros(rows, F)
    f.scatter_(1, out.top_indices, out.top_acts)
    return f


def well_separated(coder, x, transcode):
    pre = torch.relu(torch.nn.functional.linear(x if transcode else x - coder.b_dec, coder.encoder.weight,
                                                coder.encoder.bias))
    top = pre.topk(K + 1, dim=-1).values
    return (top[:, K - 1] - top[:, K] > MARGIN) & (top[:, K - 1] > MARGIN)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                                          "ref", "sparsify"))
    out = parser.parse_args().out_dir
    os.makedirs(out, exist_ok=True)
    generator = torch.Generator().manual_seed(2025)
    sae = SparseCoder(D, SparseCoderConfig(num_latents=F, k=K))
    randomise(sae, generator)
    transcoder = SparseCoder(D, SparseCoderConfig(num_latents=F, k=K, transcode=True, skip_connection=True))
    randomise(transcoder, generator)
    groupmax = SparseCoder(D, SparseCoderConfig(num_latents=F, k=8, activation="groupmax"))

    rows = []
    while len(rows) < N:
        x = torch.randn(N, D, generator=generator)
        keep = well_separated(sae, x, False) & well_separated(transcoder, x, True)
        rows.extend(x[keep])
    x = torch.stack(rows[:N])

    with torch.no_grad():
        sae_out = sae(x)
        transcoder_out = transcoder(x)
        sae_f = dense(sae.encode(x), N)
        transcoder_f = dense(transcoder.encode(x), N)
    sae.save_to_disk(os.path.join(out, "h.1"))
    transcoder.save_to_disk(os.path.join(out, "transcoder"))
    groupmax.save_to_disk(os.path.join(out, "groupmax"))
    np.save(os.path.join(out, "x.npy"), x.numpy().astype(np.float32))

    w = FixtureWriter()
    w.put("sae_features", sae_f)
    w.put("sae_reconstruction", sae_out.sae_out)
    w.put("transcoder_features", transcoder_f)
    w.put("transcoder_prediction", transcoder_out.sae_out)
    w.put_text("torch_version", torch.__version__)
    w.save(os.path.join(out, "expected.safetensors"))
    print(f"wrote {out}: L0 {float((sae_f > 0).sum(1).float().mean()):.2f} (SAE), "
          f"{float((transcoder_f > 0).sum(1).float().mean()):.2f} (transcoder)")


if __name__ == "__main__":
    main()
