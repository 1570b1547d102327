#!/usr/bin/env python3
"""Writes tests/ref/dictionary_learning/: SAEs as saprmarks/dictionary_learning saves them (torch.save
of the dictionary's state_dict as ae.pt, the trainer's config.json beside it) and what its own
classes' encode and forward compute with them, for the tests of reading ae.pt
(tests/experiments/test_cli_dictionary_learning.cpp).

    pip install --no-deps dictionary-learning==0.1.0 einops   # its classes; nnsight is stubbed here
    python3 scripts/gen_dictionary_learning_fixture.py [--out-dir DIR]

Writes (about 120 KB), each SAE on d 32 (the tiny GPT-Neo of tests/ref/eval) with 64 latents and
random weights, biases and thresholds (dictionary_learning's initialisations would leave them 0):

    standard/      AutoEncoder (config submodule_name resid_post_layer_1)
    new/           AutoEncoderNew (its config.json says AutoEncoder, as the standard trainers write)
    topk/          AutoEncoderTopK, k 6 (its threshold buffer set: encode's default does not use it)
    batchtopk/     BatchTopKSAE, k 6, threshold 0.4
    batchtopk_untrained/  BatchTopKSAE with its initial threshold -1 (every positive activation kept)
    matryoshka/    MatryoshkaBatchTopKSAE, group_sizes 16, 16, 32
    jumprelu/      JumpReluAutoEncoder (a quarter of its thresholds below 0, as its trainer leaves some)
    gated/         GatedAutoEncoder
    topk_bare/     AutoEncoderTopK's ae.pt alone (no config.json: refused, BatchTopKSAE has its tensors too)
    checkpoints/   a save dir's checkpoints/ae_10.pt (AutoEncoder) with config.json above it
    backup.pt      a training backup {"step", "ae", "optimizer", "config", "norm_factor": None}
                   of the AutoEncoder (its optimizer's state_dict holds tensors, lists, floats)
    x.npy          inputs [40, 32] float32
    expected.safetensors  for each folder NAME: NAME_f [40, 64] (encode(x)) and NAME_x_hat [40, 32]
                   (forward(x)), float32 as its class computes them on the CPU

Rows whose k-th and (k+1)-th largest pre-activation lie within 1e-3 of each other are redrawn (TopK),
and no pre-activation lies within 1e-3 of a threshold, so float32 rounding cannot change a selection.
"""
import argparse
import json
import os
import sys
import types

import numpy as np
import torch

sys.modules.setdefault("nnsight", types.SimpleNamespace(LanguageModel=object))  # buffer.py imports it
from dictionary_learning.dictionary import AutoEncoder, AutoEncoderNew, GatedAutoEncoder, JumpReluAutoEncoder  # noqa: E402
from dictionary_learning.trainers.batch_top_k import BatchTopKSAE  # noqa: E402
from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE  # noqa: E402
from dictionary_learning.trainers.top_k import AutoEncoderTopK  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_io import FixtureWriter  # noqa: E402

D, F, K, N = 32, 64, 6, 40
MARGIN = 1e-3


def randomise(ae, generator):
    with torch.no_grad():
        for name, p in ae.named_parameters():
            scale = 0.3 if p.ndim == 1 else 1 / np.sqrt(D)
            p.copy_(torch.randn(p.shape, generator=generator) * scale)
        if isinstance(ae, JumpReluAutoEncoder):  # some below 0, as its trainer (which learns them) leaves them
            ae.threshold.copy_((torch.rand(F, generator=generator) - 0.25) * 0.3)


def pre_activations(ae, x):
    """The values each class compares with its threshold or ranks (after its ReLU)."""
    if isinstance(ae, (AutoEncoderTopK, BatchTopKSAE)):
        return torch.relu(ae.encoder(x - ae.b_dec))
    if isinstance(ae, MatryoshkaBatchTopKSAE):
        return torch.relu((x - ae.b_dec) @ ae.W_enc + ae.b_enc)
    if isinstance(ae, JumpReluAutoEncoder):
        pre = x @ ae.W_enc + ae.b_enc  # distance to each latent's threshold, and to 0
        return torch.minimum((pre - ae.threshold).abs(), pre.abs())
    if isinstance(ae, GatedAutoEncoder):
        return ae.encoder(x - ae.decoder_bias) + ae.gate_bias
    return None


def well_separated(ae, x):
    pre = pre_activations(ae, x)
    if pre is None:
        return True
    if isinstance(ae, AutoEncoderTopK):
        top = pre.topk(K + 1, dim=-1).values
        return bool((top[:, K - 1] - top[:, K] > MARGIN).all())
    if isinstance(ae, (BatchTopKSAE, MatryoshkaBatchTopKSAE)):
        return bool(((pre - ae.threshold).abs() > MARGIN).all())
    return bool((pre.abs() > MARGIN).all())


def config(dict_class, **extra):
    trainer = {"dict_class": dict_class, "trainer_class": "Trainer", "activation_dim": D, "dict_size": F,
               "layer": 1, "lm_name": "tiny-gpt-neo", "submodule_name": "resid_post_layer_1", "lr": 1e-3}
    trainer.update(extra)
    return {"trainer": trainer, "buffer": {"d_submodule": D, "n_ctxs": 8}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "..", "tests", "ref",
                                                          "dictionary_learning"))
    out = parser.parse_args().out_dir
    os.makedirs(out, exist_ok=True)
    g = torch.Generator().manual_seed(2026)
    x = torch.randn(N, D, generator=g)

    def topk_ae():
        ae = AutoEncoderTopK(D, F, K)
        ae.threshold.fill_(0.25)
        return ae

    def batchtopk_ae(threshold):
        ae = BatchTopKSAE(D, F, K)
        ae.threshold.fill_(threshold)
        return ae

    def matryoshka_ae():
        ae = MatryoshkaBatchTopKSAE(D, F, K, [16, 16, 32])
        ae.threshold.fill_(0.4)
        return ae

    cases = [
        ("standard", lambda: AutoEncoder(D, F), config("AutoEncoder")),
        # dictionary_learning's standard trainers write dict_class AutoEncoder whatever they trained.
        ("new", lambda: AutoEncoderNew(D, F), config("AutoEncoder", submodule_name="mlp_out_layer_0")),
        ("topk", topk_ae, config("AutoEncoderTopK", k=K)),
        ("batchtopk", lambda: batchtopk_ae(0.4), config("BatchTopKSAE", k=K)),
        ("batchtopk_untrained", lambda: batchtopk_ae(-1.0), config("BatchTopKSAE", k=K)),
        ("matryoshka", matryoshka_ae, config("MatryoshkaBatchTopKSAE", k=K, group_fractions=[0.25, 0.25, 0.5])),
        ("jumprelu", lambda: JumpReluAutoEncoder(D, F), config("JumpReluAutoEncoder", submodule_name="attn_out_layer_1")),
        ("gated", lambda: GatedAutoEncoder(D, F), config("GatedAutoEncoder")),
        ("topk_bare", topk_ae, None),
    ]
    expected = FixtureWriter()
    expected.put("x", x)
    np.save(os.path.join(out, "x.npy"), x.numpy().astype(np.float32))
    for name, make, cfg in cases:
        ae = make()
        for _ in range(1000):
            randomise(ae, g)
            if well_separated(ae, x):
                break
        else:
            raise SystemExit(f"{name}: no well-separated draw")
        os.makedirs(os.path.join(out, name), exist_ok=True)
        state = {k: v.cpu() for k, v in ae.state_dict().items()}  # as training.py saves the final ae.pt
        torch.save(state, os.path.join(out, name, "ae.pt"))
        if cfg is not None:
            with open(os.path.join(out, name, "config.json"), "w") as f:
                json.dump(cfg, f, indent=4)
        with torch.no_grad():
            expected.put(f"{name}_f", ae.encode(x))
            expected.put(f"{name}_x_hat", ae(x))
        if name == "standard":
            # A save dir's checkpoint (config.json above checkpoints/) and a training backup.
            os.makedirs(os.path.join(out, "checkpoints", "checkpoints"), exist_ok=True)
            torch.save(state, os.path.join(out, "checkpoints", "checkpoints", "ae_10.pt"))
            with open(os.path.join(out, "checkpoints", "config.json"), "w") as f:
                json.dump(cfg, f, indent=4)
            optimizer = torch.optim.Adam(ae.parameters(), lr=1e-3, betas=(0.9, 0.999))
            ae(x).pow(2).sum().backward()
            optimizer.step()
            with torch.no_grad():
                expected.put("backup_x_hat", ae(x))
            torch.save({"step": 10, "ae": ae.state_dict(), "optimizer": optimizer.state_dict(), "config": cfg["trainer"],
                        "norm_factor": None}, os.path.join(out, "backup.pt"))
    expected.texts["torch"] = torch.__version__
    expected.save(os.path.join(out, "expected.safetensors"))


if __name__ == "__main__":
    main()
