"""Writes tests/ref/mlp_adam.safetensors: a PyTorch reference for our autograd, nn and Adam.

Regenerate (PyTorch comes from the Debian package python3-torch, so use the system interpreter):

    /usr/bin/python3 scripts/gen_torch_mlp_fixture.py            # writes tests/ref/mlp_adam.safetensors
    /usr/bin/python3 scripts/gen_torch_mlp_fixture.py --out PATH

and commit the fixture; tests/nn/test_torch_reference.cpp reads it with no Python.

The model: Linear(D_in=6 -> H=16) -> ReLU -> Linear(H -> D_out=5), float32, torch.nn.Linear's
default init under a fixed seed, one batch of N=8 random inputs and targets,
loss = sum of squared errors (the MSE is stored too). Stored (names as in the fixture):

    input [N, D_in], target [N, D_out]
    fc1.weight [H, D_in], fc1.bias [H], fc2.weight [D_out, H], fc2.bias [D_out]   (initial values)
    hidden_pre [N, H] (before the ReLU), output [N, D_out], loss_sse, loss_mse
    grad.fc1.weight, grad.fc1.bias, grad.fc2.weight, grad.fc2.bias, grad.input     (of loss_sse)
    for each Adam case C in {adam, adam_wd}:
      C.lr, C.beta1, C.beta2, C.eps, C.weight_decay (float64), C.steps (int64)
      C.losses [steps]: loss_sse of the forward pass before step t (C.losses[0] == loss_sse)
      C.final.fc1.weight, ... : the parameters after all steps
    meta.torch_version: text (int64 UTF-8 bytes), meta.seed, meta.attempts, meta.min_abs_hidden_pre

Each Adam step is zero_grad, forward, backward, torch.optim.Adam.step (foreach=False, i.e. the
single-tensor form our nn::Adam follows), all on the same batch starting from the same initial
parameters. Case adam: lr 1e-2, betas (0.9, 0.999), eps 1e-8, no weight decay, 10 steps. Case
adam_wd: lr 3e-3, weight_decay 0.1, 5 steps.

Draws are repeated until the fixture is well conditioned for a float32 comparison:
  * no hidden pre-activation is within 1e-3 of 0 in any forward pass (initial and every Adam step),
    so rounding differences cannot flip a ReLU;
  * every hidden unit is active for at least one sample (all of fc1 gets a non-zero gradient);
  * the float32 run agrees with the same run in float64 to 1e-4, so the stored trajectory does not
    hinge on rounding (e.g. a near-zero gradient whose sign decides an Adam step).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_io import FixtureWriter, read_fixture  # noqa: E402

SEED = 1234
N, D_IN, H, D_OUT = 8, 6, 16, 5
MARGIN = 1e-3
CASES = [  # (prefix, lr, weight_decay, steps)
    ("adam", 1e-2, 0.0, 10),
    ("adam_wd", 3e-3, 0.1, 5),
]
BETAS, EPS = (0.9, 0.999), 1e-8
PARAM_NAMES = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


def make_params(init, dtype):
    """Fresh leaf tensors (requires_grad) holding the initial values, in PARAM_NAMES order."""
    return {name: init[name].to(dtype).clone().requires_grad_(True) for name in PARAM_NAMES}


def forward(params, x):
    hidden_pre = torch.nn.functional.linear(x, params["fc1.weight"], params["fc1.bias"])
    output = torch.nn.functional.linear(torch.relu(hidden_pre), params["fc2.weight"], params["fc2.bias"])
    return hidden_pre, output


def run_adam(init, x, y, dtype, lr, weight_decay, steps):
    """Returns (losses, final parameters, smallest |hidden pre-activation| seen)."""
    params = make_params(init, dtype)
    x, y = x.to(dtype), y.to(dtype)
    optimizer = torch.optim.Adam(list(params.values()), lr=lr, betas=BETAS, eps=EPS, weight_decay=weight_decay,
                                 foreach=False)
    losses, margin = [], float("inf")
    for _ in range(steps):
        optimizer.zero_grad()
        hidden_pre, output = forward(params, x)
        loss = ((output - y) ** 2).sum()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        margin = min(margin, hidden_pre.abs().min().item())
    final = {name: p.detach().clone() for name, p in params.items()}
    return losses, final, margin


def draw():
    """One candidate: initial parameters (torch.nn.Linear's default init), inputs and targets."""
    fc1, fc2 = torch.nn.Linear(D_IN, H), torch.nn.Linear(H, D_OUT)
    init = {"fc1.weight": fc1.weight, "fc1.bias": fc1.bias, "fc2.weight": fc2.weight, "fc2.bias": fc2.bias}
    init = {name: p.detach().clone() for name, p in init.items()}
    x = torch.randn(N, D_IN)
    y = torch.randn(N, D_OUT)
    return init, x, y


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--out", default=os.path.join(repo, "tests", "ref", "mlp_adam.safetensors"))
    args = parser.parse_args()

    torch.manual_seed(SEED)
    for attempt in range(1, 10001):
        init, x, y = draw()
        with torch.no_grad():
            hidden_pre, _ = forward(init, x)
        if hidden_pre.abs().min().item() < MARGIN or not bool((hidden_pre > 0).any(dim=0).all()):
            continue
        runs, ok, margin = {}, True, float("inf")
        for prefix, lr, wd, steps in CASES:
            losses32, final32, m32 = run_adam(init, x, y, torch.float32, lr, wd, steps)
            losses64, final64, m64 = run_adam(init, x, y, torch.float64, lr, wd, steps)
            drift = max((final32[k].double() - final64[k]).abs().max().item() for k in PARAM_NAMES)
            ok = ok and min(m32, m64) >= MARGIN and drift <= 1e-4
            margin = min(margin, m32, m64)
            runs[prefix] = (losses32, final32)
        if ok:
            break
    else:
        raise SystemExit("no well-conditioned draw found")

    # The reference forward and backward pass, float32.
    params = make_params(init, torch.float32)
    x_in = x.clone().requires_grad_(True)
    hidden_pre, output = forward(params, x_in)
    loss_sse = ((output - y) ** 2).sum()
    loss_mse = torch.nn.functional.mse_loss(output, y)
    loss_sse.backward()

    w = FixtureWriter()
    w.put_text("meta.torch_version", torch.__version__)
    w.put("meta.seed", SEED)
    w.put("meta.attempts", attempt)
    w.put("meta.min_abs_hidden_pre", margin)
    w.put("input", x)
    w.put("target", y)
    for name in PARAM_NAMES:
        w.put(name, init[name])
    w.put("hidden_pre", hidden_pre)
    w.put("output", output)
    w.put("loss_sse", loss_sse)
    w.put("loss_mse", loss_mse)
    for name in PARAM_NAMES:
        w.put("grad." + name, params[name].grad)
    w.put("grad.input", x_in.grad)
    for prefix, lr, wd, steps in CASES:
        losses, final = runs[prefix]
        w.put(prefix + ".lr", lr)
        w.put(prefix + ".beta1", BETAS[0])
        w.put(prefix + ".beta2", BETAS[1])
        w.put(prefix + ".eps", EPS)
        w.put(prefix + ".weight_decay", wd)
        w.put(prefix + ".steps", steps)
        w.put(prefix + ".losses", torch.tensor(losses, dtype=torch.float32))
        for name in PARAM_NAMES:
            w.put(prefix + ".final." + name, final[name])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    w.save(args.out)

    back, _ = read_fixture(args.out)  # round trip through the reader
    assert set(back) == set(w.arrays)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, {len(back)} arrays): torch {torch.__version__}, "
          f"seed {SEED}, accepted draw {attempt}, min |hidden_pre| {margin:.3g}, loss_sse {loss_sse.item():.6f}")


if __name__ == "__main__":
    main()
