"""Writes a PyTorch reference of the ORIGINAL SAE training loop (docs/contract.md §1) for sae::train().

Regenerate (PyTorch comes from the Debian package python3-torch, so use the system interpreter;
the `safetensors` package writes the activation file and the initial checkpoint):

    /usr/bin/python3 scripts/gen_torch_sae_loop_fixture.py              # writes into tests/ref/
    /usr/bin/python3 scripts/gen_torch_sae_loop_fixture.py --out-dir DIR

and commit what it writes; tests/sae/train/test_torch_sae_loop.cpp reads it with no Python:

    tests/ref/sae_loop_data.safetensors   activations F32 [N_TOKENS, D], story_lengths I64 [STORIES]
    tests/ref/sae_loop_init/              the initial SAE in SAELens layout: sae_weights.safetensors
                                          (W_enc [D, F], b_enc [F], W_dec [F, D], b_dec [D], F32)
                                          and cfg.json (architecture "standard", d_in, d_sae, ...)
    tests/ref/sae_loop.safetensors            (safetensors, scripts/fixture_io.py) the run's settings, what
                                          was logged at every step and the final weights

The data: D = 16, 7 stories of 5..30 tokens, x = story offset + per-dimension offset + per-dimension
scale * noise (mean about 3, std about 2.5, so the per-story normalisation changes everything).

The loop is the tutorial's, in float32 with torch.nn modules:

    encoder = nn.Linear(D, F); decoder = nn.Linear(F, D)          (PyTorch default init, F = 24)
    optimizer = Adam(params, lr, betas (0.9, 0.999), eps 1e-8)    (foreach=False)
    for step in 1..STEPS:   story = stories[(step - 1) % STORIES]   (file order, wrapping)
        x = (x - x.mean()) / x.std() * sqrt(D)                    (all seq*D elements, std unbiased)
        f = relu(encoder(x)); x_hat = decoder(f)
        rec = ((x_hat - x) ** 2).sum()
        l1 = (f * decoder.weight.norm(dim=0)).sum()               (norm of each feature's decoder row)
        loss = rec + LAMBDA * l1; zero_grad; backward; step

with LAMBDA = 0.5 and lr = 1e-3 (100x the original, so the weights move measurably in 20 steps).
SAELens layout: W_enc = encoder.weight.T, b_enc = encoder.bias, W_dec = decoder.weight.T,
b_dec = decoder.bias. Fixture arrays:

    cfg.d, cfg.features, cfg.steps, cfg.stories (int64); cfg.l1, cfg.lr, cfg.beta1, cfg.beta2,
    cfg.eps (float64); story_lengths [STORIES] (int64)
    step.tokens [STEPS] (int64, cumulative tokens after the step)
    step.loss, step.rec_loss, step.l1, step.nonzero_proportion, step.raw_mean, step.raw_std
        [STEPS] (float64 holding the float32 run's values; the losses are of the forward pass of
        that step, before its update, as the trainer logs them)
    final.W_enc, final.b_enc, final.W_dec, final.b_dec (float32, after STEPS updates)
    meta.torch_version (text), meta.seed, meta.attempts, meta.min_abs_pre, meta.f64_drift,
    meta.min_nonzero_proportion, meta.max_nonzero_proportion

Draws (data and init) are repeated until the reference is well conditioned for a float32
comparison:
  * no encoder pre-activation is within MARGIN of 0 at any step of the float32 or float64 run, so
    rounding differences cannot flip a ReLU;
  * at every step some (token, feature) pairs are zero and some are not (proportion in [0.2, 0.8]);
  * the float32 run agrees with the same run in float64 (same data and init) to 1e-4 in every final
    weight and 1e-5 relative in every logged loss, so the trajectory does not hinge on rounding.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_io import FixtureWriter, read_fixture  # noqa: E402

SEED = 20240611
D, F = 16, 24
STORIES, MIN_LEN, MAX_LEN = 7, 5, 30
STEPS = 20
LAMBDA = 0.5
LR = 1e-3
BETAS, EPS = (0.9, 0.999), 1e-8
MARGIN = 1e-3
DRIFT_LIMIT = 1e-4
LOSS_DRIFT_LIMIT = 1e-5
NONZERO_RANGE = (0.2, 0.8)


def draw_data():
    """Story lengths (int64 [STORIES]) and activations (float32 [sum, D])."""
    lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (STORIES,), dtype=torch.int64)
    lengths[0], lengths[1] = MIN_LEN, MAX_LEN  # the extremes, both present
    dim_offset = 3.0 + 1.5 * torch.randn(D)
    dim_scale = 2.5 * torch.exp(0.4 * torch.randn(D))
    pieces = []
    for length in lengths.tolist():
        story_offset = 0.8 * torch.randn(1)
        pieces.append(story_offset + dim_offset + dim_scale * torch.randn(length, D))
    return lengths, torch.cat(pieces).to(torch.float32)


def draw_init():
    """torch.nn.Linear's default init for both layers, as float32 state dicts."""
    encoder, decoder = torch.nn.Linear(D, F), torch.nn.Linear(F, D)
    return ({k: v.detach().clone() for k, v in encoder.state_dict().items()},
            {k: v.detach().clone() for k, v in decoder.state_dict().items()})


def run_loop(lengths, acts, init, dtype):
    """The original loop. Returns per-step logs, the final modules and the smallest |pre-activation|."""
    encoder, decoder = torch.nn.Linear(D, F).to(dtype), torch.nn.Linear(F, D).to(dtype)
    encoder.load_state_dict({k: v.to(dtype) for k, v in init[0].items()})
    decoder.load_state_dict({k: v.to(dtype) for k, v in init[1].items()})
    optimizer = torch.optim.Adam(list(encoder.parameters()) + list(decoder.parameters()), lr=LR, betas=BETAS,
                                 eps=EPS, foreach=False)
    stories = list(torch.split(acts.to(dtype), lengths.tolist()))
    logs = {k: [] for k in ["tokens", "loss", "rec_loss", "l1", "nonzero_proportion", "raw_mean", "raw_std"]}
    tokens, margin = 0, float("inf")
    for step in range(STEPS):
        x = stories[step % STORIES]
        x_n = (x - x.mean()) / x.std() * math.sqrt(D)  # torch.std: unbiased by default
        pre = encoder(x_n)
        f = torch.relu(pre)
        x_hat = decoder(f)
        rec = ((x_hat - x_n) ** 2).sum()
        l1 = (f * decoder.weight.norm(dim=0)).sum()
        loss = rec + LAMBDA * l1
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        tokens += x.shape[0]
        margin = min(margin, pre.detach().abs().min().item())
        logs["tokens"].append(tokens)
        logs["loss"].append(loss.item())
        logs["rec_loss"].append(rec.item())
        logs["l1"].append(l1.item())
        logs["nonzero_proportion"].append((f > 0).sum().item() / f.numel())
        logs["raw_mean"].append(x.mean().item())
        logs["raw_std"].append(x.std().item())
    return logs, encoder, decoder, margin


def saelens_weights(encoder, decoder):
    """SAELens layout: W_enc [D, F], b_enc [F], W_dec [F, D], b_dec [D], float32, contiguous."""
    return {
        "W_enc": encoder.weight.detach().t().contiguous().to(torch.float32),
        "b_enc": encoder.bias.detach().contiguous().to(torch.float32),
        "W_dec": decoder.weight.detach().t().contiguous().to(torch.float32),
        "b_dec": decoder.bias.detach().contiguous().to(torch.float32),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--out-dir", default=os.path.join(repo, "tests", "ref"))
    args = parser.parse_args()
    from safetensors.torch import save_file  # the reference writer, not ours

    torch.manual_seed(SEED)
    for attempt in range(1, 10001):
        lengths, acts = draw_data()
        init = draw_init()
        logs32, enc32, dec32, m32 = run_loop(lengths, acts, init, torch.float32)
        logs64, enc64, dec64, m64 = run_loop(lengths, acts, init, torch.float64)
        w32 = saelens_weights(enc32, dec32)
        w64 = {"W_enc": enc64.weight.detach().t(), "b_enc": enc64.bias.detach(), "W_dec": dec64.weight.detach().t(),
               "b_dec": dec64.bias.detach()}
        drift = max((w32[k].double() - w64[k]).abs().max().item() for k in w32)
        loss_drift = max(abs(a - b) / abs(b) for key in ["loss", "rec_loss", "l1"]
                         for a, b in zip(logs32[key], logs64[key]))
        proportions = logs32["nonzero_proportion"]
        if (min(m32, m64) >= MARGIN and drift <= DRIFT_LIMIT and loss_drift <= LOSS_DRIFT_LIMIT
                and logs32["nonzero_proportion"] == logs64["nonzero_proportion"]
                and NONZERO_RANGE[0] <= min(proportions) and max(proportions) <= NONZERO_RANGE[1]):
            break
    else:
        raise SystemExit("no well-conditioned draw found")

    os.makedirs(args.out_dir, exist_ok=True)
    # ---- the activation file ----
    data_path = os.path.join(args.out_dir, "sae_loop_data.safetensors")
    save_file({"activations": acts.contiguous(), "story_lengths": lengths.contiguous()}, data_path,
              metadata={"generator": "scripts/gen_torch_sae_loop_fixture.py", "seed": str(SEED)})
    # ---- the initial SAE, SAELens layout ----
    init_dir = os.path.join(args.out_dir, "sae_loop_init")
    os.makedirs(init_dir, exist_ok=True)
    encoder0, decoder0 = torch.nn.Linear(D, F), torch.nn.Linear(F, D)
    encoder0.load_state_dict(init[0])
    decoder0.load_state_dict(init[1])
    save_file(saelens_weights(encoder0, decoder0), os.path.join(init_dir, "sae_weights.safetensors"))
    cfg = {
        "architecture": "standard", "d_in": D, "d_sae": F, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.0.0"},
        "sae_cpp": {"note": "torch.nn.Linear default init (scripts/gen_torch_sae_loop_fixture.py)", "seed": SEED},
    }
    with open(os.path.join(init_dir, "cfg.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    # ---- the reference run ----
    w = FixtureWriter()
    w.put_text("meta.torch_version", torch.__version__)
    w.put("meta.seed", SEED)
    w.put("meta.attempts", attempt)
    w.put("meta.min_abs_pre", min(m32, m64))
    w.put("meta.f64_drift", drift)
    w.put("meta.f64_loss_drift", loss_drift)
    w.put("meta.min_nonzero_proportion", min(proportions))
    w.put("meta.max_nonzero_proportion", max(proportions))
    w.put("cfg.d", D)
    w.put("cfg.features", F)
    w.put("cfg.steps", STEPS)
    w.put("cfg.stories", STORIES)
    w.put("cfg.l1", LAMBDA)
    w.put("cfg.lr", LR)
    w.put("cfg.beta1", BETAS[0])
    w.put("cfg.beta2", BETAS[1])
    w.put("cfg.eps", EPS)
    w.put("story_lengths", lengths.numpy().astype(np.int64))
    w.put("step.tokens", np.array(logs32["tokens"], dtype=np.int64))
    for key in ["loss", "rec_loss", "l1", "nonzero_proportion", "raw_mean", "raw_std"]:
        w.put("step." + key, np.array(logs32[key], dtype=np.float64))
    for name, value in w32.items():
        w.put("final." + name, value)
    fixture_path = os.path.join(args.out_dir, "sae_loop.safetensors")
    w.save(fixture_path)

    back, _ = read_fixture(fixture_path)  # round trip through the reader
    assert set(back) == set(w.arrays)
    print(f"wrote {data_path}, {init_dir}/, {fixture_path} ({os.path.getsize(fixture_path)} bytes): "
          f"torch {torch.__version__}, seed {SEED}, accepted draw {attempt}, story lengths {lengths.tolist()}, "
          f"min |pre| {min(m32, m64):.3g}, f32-f64 weight drift {drift:.3g}, loss drift {loss_drift:.3g}, "
          f"nonzero proportion {min(proportions):.3f}..{max(proportions):.3f}, "
          f"loss {logs32['loss'][0]:.6g} -> {logs32['loss'][-1]:.6g}")


if __name__ == "__main__":
    main()
