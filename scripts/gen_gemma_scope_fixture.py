#!/usr/bin/env python3
"""Writes tests/ref/gemma_scope/: a small SAE in Gemma Scope's release format (params.npz, as numpy
writes it) and the features and reconstructions numpy computes with it, for the tests of the .npz
reader (tests/io/test_npz.cpp) and of sae_apply / sae_eval / sae_features / sae_browser reading a
Gemma Scope SAE (tests/experiments/test_cli_gemma_scope.cpp).

    python3 scripts/gen_gemma_scope_fixture.py [--out-dir DIR]

Needs numpy. Writes (about 60 KB):

    stored/params.npz    np.savez (ZIP_STORED entries): W_enc [32, 64], W_dec [64, 32], b_enc [64],
                         b_dec [32], threshold [64], float32, as a Gemma Scope SAE holds them
    deflated.npz         the same arrays by np.savez_compressed (ZIP_DEFLATED entries)
    f64.npz              the same values as float64 ('<f8', exact), np.savez
    x.npy                inputs [50, 32] float32
    expected.safetensors pre [50, 64] = x W_enc + b_enc, features [50, 64] = pre * (pre > threshold)
                         (JumpReLU), reconstruction [50, 32] = features W_dec + b_dec, computed in
                         float64 from the float32 values

d_in is 32, the width of the tiny model of tests/ref/eval, so the programs that run a model can read
the SAE at one of its hook points. The thresholds are drawn so that part of the features with a
positive pre-activation are cut (where JumpReLU differs from ReLU), and no pre-activation lies within
1e-3 of its threshold (float32 rounding cannot flip a feature).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_io import FixtureWriter  # noqa: E402

D_IN, D_SAE, N = 32, 64, 50
MARGIN = 1e-3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                                          "ref", "gemma_scope"))
    out = parser.parse_args().out_dir
    os.makedirs(os.path.join(out, "stored"), exist_ok=True)
    rng = np.random.default_rng(2024)

    W_enc = (rng.standard_normal((D_IN, D_SAE)) / np.sqrt(D_IN)).astype(np.float32)
    W_dec = (rng.standard_normal((D_SAE, D_IN)) / np.sqrt(D_SAE)).astype(np.float32)
    b_enc = (0.1 * rng.standard_normal(D_SAE)).astype(np.float32)
    b_dec = (0.1 * rng.standard_normal(D_IN)).astype(np.float32)
    x = rng.standard_normal((N, D_IN)).astype(np.float32)
    pre = x.astype(np.float64) @ W_enc.astype(np.float64) + b_enc.astype(np.float64)

    # Per feature a threshold in [0.05, 1.2), redrawn until no pre-activation is within MARGIN of it.
    threshold = np.zeros(D_SAE, dtype=np.float32)
    for j in range(D_SAE):
        while True:
            t = np.float32(rng.uniform(0.05, 1.2))
            if np.min(np.abs(pre[:, j] - np.float64(t))) > MARGIN:
                threshold[j] = t
                break
    t64 = threshold.astype(np.float64)
    features = pre * (pre > t64)
    reconstruction = features @ W_dec.astype(np.float64) + b_dec.astype(np.float64)
    cut = np.sum((pre > 0) & (pre <= t64))
    fired = np.sum(pre > t64)
    assert cut > 0 and fired > 0, (cut, fired)

    arrays = dict(W_enc=W_enc, W_dec=W_dec, b_enc=b_enc, b_dec=b_dec, threshold=threshold)
    np.savez(os.path.join(out, "stored", "params.npz"), **arrays)
    np.savez_compressed(os.path.join(out, "deflated.npz"), **arrays)
    np.savez(os.path.join(out, "f64.npz"), **{k: v.astype(np.float64) for k, v in arrays.items()})
    np.save(os.path.join(out, "x.npy"), x)

    w = FixtureWriter()
    w.put("pre", pre)
    w.put("features", features)
    w.put("reconstruction", reconstruction)
    w.put_text("numpy_version", np.__version__)
    w.save(os.path.join(out, "expected.safetensors"))
    print(f"wrote {out}: {fired} of {N * D_SAE} features fire, {cut} positive pre-activations cut by the threshold")


if __name__ == "__main__":
    main()
