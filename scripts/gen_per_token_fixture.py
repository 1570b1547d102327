#!/usr/bin/env python3
"""Writes tests/ref/per_token/: SAEs that normalise each token, as their tools save them, and what
their tools compute with them, for the tests of per-token normalisation (layer_norm,
constant_norm_rescale: docs/contract.md §4) and of reading OpenAI's .pt
(tests/experiments/test_cli_per_token.cpp).

    pip install sae-lens==6.54.12
    python3 scripts/gen_per_token_fixture.py [--out-dir DIR]

Writes (about 260 KB), each SAE on d 32 (the tiny GPT-Neo of tests/ref/eval) with 64 latents and
random weights and biases:

    saelens_layer_norm/     SAELens StandardSAE, normalize_activations layer_norm, at blocks.1.hook_resid_post
    saelens_norm_rescale/   SAELens TopKSAE k 6, normalize_activations constant_norm_rescale
    openai_topk.pt          OpenAI sparse_autoencoder's Autoencoder state dict: TopK k 6 (so layer_norm),
                            with its statistics buffers and the activation named as its state_dict() names it
    openai_relu.pt          the same with activation ReLU (no normalisation)
    openai_tied.pt          ReLU with a tied decoder (decoder.linear.weight)
    saelens_transcoder_layer_norm/   SAELens Transcoder (d_out 32), normalize_activations layer_norm, from
                            blocks.1.ln2.hook_normalized to blocks.1.hook_mlp_out
    saelens_skip_transcoder_norm_rescale/   SAELens SkipTranscoder, constant_norm_rescale, the same hooks
    openai_bad_*.pt         refused ones (d 4, 8 latents): activation Identity, postact_fn Identity, k 9, an extra
                            tensor, a NaN in encoder.weight, a tied decoder that is not the encoder
    x.npy                   inputs [40, 32] float32, each row with its own mean and scale
    expected.safetensors    for each NAME: NAME_f [40, 64] and NAME_x_hat [40, 32], float32

SAELens's are its own classes' encode() and forward(). Its transcoders normalise their input and
leave their output as decoded (Transcoder.decode applies no run_time_activation_norm_fn_out); a
SkipTranscoder's skip term reads the raw input. The transcoders are drawn after the OpenAI files, so
the files before them are as they were without them. OpenAI's package cannot be installed here;
what its model.py computes is written out below with torch (LN, encoder, TopK then ReLU, decoder,
the inverse LN) and its state_dict() layout is built by hand: pre_bias, latent_bias, encoder.weight,
decoder.weight, stats_last_nonzero (int64), latents_activation_frequency, latents_mean_square,
"activation": "TopK" and "activation_state_dict": {"k": 6, "postact_fn": "ReLU"}.

Rows whose k-th and (k+1)-th largest pre-activation lie within 1e-3 of each other are redrawn, and
no ReLU pre-activation lies within 1e-3 of 0, so float32 rounding cannot change a selection.
"""
import argparse
import os
import sys
from collections import OrderedDict

import numpy as np
import torch
from sae_lens import (SkipTranscoder, SkipTranscoderConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig,
                      Transcoder, TranscoderConfig)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_io import FixtureWriter  # noqa: E402

D, F, K, N = 32, 64, 6, 40
MARGIN = 1e-3
HOOK = "blocks.1.hook_resid_post"
# The transcoders' hooks: block 1's MLP, from its input (after ln_2) to its output.
HOOK_IN, HOOK_OUT = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"


def separated(pre, topk):
    if topk:
        top = pre.topk(K + 1, dim=-1).values
        return bool((top[:, K - 1] - top[:, K] > MARGIN).all()) and bool((top[:, K - 1].abs() > MARGIN).all())
    return bool((pre.abs() > MARGIN).all())


def layer_norm(x, eps=1e-5):
    mu = x.mean(dim=-1, keepdim=True)
    std = (x - mu).std(dim=-1, keepdim=True)  # unbiased, as torch's default
    return (x - mu) / (std + eps), mu, std


def openai_forward(state, x, topk, tied):
    """OpenAI's Autoencoder: latents = act(encoder(x - pre_bias) + latent_bias), x_hat = decoder(latents) + pre_bias,
    inside LN when the activation is TopK."""
    if topk:
        x, mu, std = layer_norm(x)
    pre = (x - state["pre_bias"]) @ state["encoder.weight"].T + state["latent_bias"]
    if topk:
        top = pre.topk(K, dim=-1)
        f = torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
    else:
        f = torch.relu(pre)
    decoder = state["encoder.weight"].T if tied else state["decoder.weight"]
    x_hat = f @ decoder.T + state["pre_bias"]
    if topk:
        x_hat = x_hat * std + mu
    return f, x_hat, pre


def openai_state(g, topk, tied):
    state = OrderedDict()
    state["pre_bias"] = torch.randn(D, generator=g) * 0.3
    state["latent_bias"] = torch.randn(F, generator=g) * 0.3
    state["encoder.weight"] = torch.randn(F, D, generator=g) / np.sqrt(D)
    if tied:
        state["decoder.linear.weight"] = state["encoder.weight"]
    else:
        state["decoder.weight"] = torch.randn(D, F, generator=g) / np.sqrt(F)
    state["stats_last_nonzero"] = torch.randint(0, 100, (F,), generator=g, dtype=torch.long)
    state["latents_activation_frequency"] = torch.rand(F, generator=g)
    state["latents_mean_square"] = torch.rand(F, generator=g)
    state["activation"] = "TopK" if topk else "ReLU"
    if topk:
        state["activation_state_dict"] = OrderedDict([("k", K), ("postact_fn", "ReLU")])
    return state


def randomise_saelens(sae, g):
    with torch.no_grad():
        for _, p in sae.named_parameters():
            scale = 0.3 if p.ndim == 1 else 1 / np.sqrt(D)
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def save_saelens(name, sae, topk, x, g, out, expected):
    """Draws the SAELens SAE's weights until no selection is near a tie, saves it as SAELens does, and
    puts its encode(x) and forward(x) into expected."""
    for _ in range(1000):
        randomise_saelens(sae, g)
        with torch.no_grad():
            pre = sae.process_sae_in(x) @ sae.W_enc + sae.b_enc
        if separated(pre, topk):
            break
    else:
        raise SystemExit(f"{name}: no well-separated draw")
    sae.save_model(os.path.join(out, name))
    with torch.no_grad():
        expected.put(f"{name}_f", sae.encode(x))
        expected.put(f"{name}_x_hat", sae(x))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "..", "tests", "ref", "per_token"))
    out = parser.parse_args().out_dir
    os.makedirs(out, exist_ok=True)
    g = torch.Generator().manual_seed(2027)
    # Rows of different means and scales: a per-token normalisation changes each differently.
    x = torch.randn(N, D, generator=g) * (0.5 + 3 * torch.rand(N, 1, generator=g)) + 2 * torch.randn(N, 1, generator=g)
    expected = FixtureWriter()
    np.save(os.path.join(out, "x.npy"), x.numpy().astype(np.float32))

    saelens_cases = [
        ("saelens_layer_norm", lambda: StandardSAE(StandardSAEConfig(
            d_in=D, d_sae=F, normalize_activations="layer_norm", apply_b_dec_to_input=True)), False),
        ("saelens_norm_rescale", lambda: TopKSAE(TopKSAEConfig(
            d_in=D, d_sae=F, k=K, normalize_activations="constant_norm_rescale", apply_b_dec_to_input=True)), True),
    ]
    for name, make, topk in saelens_cases:
        sae = make()
        sae.cfg.metadata.hook_name = HOOK
        save_saelens(name, sae, topk, x, g, out, expected)

    for name, topk, tied in [("openai_topk", True, False), ("openai_relu", False, False), ("openai_tied", False, True)]:
        for _ in range(1000):
            state = openai_state(g, topk, tied)
            f, x_hat, pre = openai_forward(state, x, topk, tied)
            if separated(pre, topk):
                break
        else:
            raise SystemExit(f"{name}: no well-separated draw")
        torch.save(state, os.path.join(out, f"{name}.pt"))
        expected.put(f"{name}_f", f)
        expected.put(f"{name}_x_hat", x_hat)
    # Files refused (d 4, 8 latents): an activation not read, a TopK that does not rectify, a k past
    # the latents, a tensor not of the class.
    for name, edit in [("bad_identity", lambda st: st.update(activation="Identity")),
                       ("bad_postact", lambda st: st["activation_state_dict"].update(postact_fn="Identity")),
                       ("bad_k", lambda st: st["activation_state_dict"].update(k=9)),
                       ("bad_extra", lambda st: st.update(extra=torch.zeros(3))),
                       ("bad_nan", lambda st: st["encoder.weight"].__setitem__((3, 2), float("nan"))),
                       ("bad_tied", lambda st: st.update({"decoder.linear.weight": torch.zeros(8, 4),
                                                          "activation": "ReLU"}) or st.pop("decoder.weight"))]:
        state = OrderedDict([("pre_bias", torch.zeros(4)), ("latent_bias", torch.zeros(8)),
                             ("encoder.weight", torch.ones(8, 4)), ("decoder.weight", torch.ones(4, 8)),
                             ("activation", "TopK"), ("activation_state_dict", OrderedDict(k=2, postact_fn="ReLU"))])
        edit(state)
        torch.save(state, os.path.join(out, f"openai_{name}.pt"))
    transcoder_cases = [
        ("saelens_transcoder_layer_norm", lambda: Transcoder(TranscoderConfig(
            d_in=D, d_sae=F, d_out=D, normalize_activations="layer_norm", apply_b_dec_to_input=False))),
        ("saelens_skip_transcoder_norm_rescale", lambda: SkipTranscoder(SkipTranscoderConfig(
            d_in=D, d_sae=F, d_out=D, normalize_activations="constant_norm_rescale",
            apply_b_dec_to_input=False))),
    ]
    for name, make in transcoder_cases:
        sae = make()
        sae.cfg.metadata.hook_name = HOOK_IN
        sae.cfg.metadata.hook_name_out = HOOK_OUT
        save_saelens(name, sae, False, x, g, out, expected)
    expected.texts["torch"] = torch.__version__
    expected.save(os.path.join(out, "expected.safetensors"))


if __name__ == "__main__":
    main()
