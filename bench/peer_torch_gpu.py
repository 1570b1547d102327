"""PyTorch peer of the GPU step benchmarks (bench/bench_cuda_sae.cpp BM_Cuda_SaeStep,
BM_Cuda_TopKStep): the standard SAE step and a TopK SAE step in eager PyTorch, each at three
precisions, written as the peers write them:
  fp32  plain float32 (torch.backends.cuda.matmul.allow_tf32 = False);
  tf32  float32 with TF32 tensor-core GEMMs allowed (allow_tf32 = True);
  bf16  the forward under torch.autocast(dtype=torch.bfloat16): GEMM inputs bf16, float32 weights,
        gradients and Adam (the usual mixed-precision recipe).
standard: relu(x W_enc + b_enc), x_hat = f W_dec + b_dec, rec = sum (x_hat - x)^2 plus lambda times
the decoder-norm-weighted L1, backward, torch.optim.Adam (as bench/peer_torch_step.py).
topk: P = x W_enc + b_enc, torch.topk(P, k), relu of the kept values scattered into a dense f, the
decoder gradient projected off its rows, Adam, rows renormalised (as bench/peer_torch_topk.py).
Each configuration: 3 warm-up steps, then the median of --rounds rounds of --steps steps, the GPU
synchronised around each round; also the peak memory the step allocated (CUDA). One line each:
  peer <step> tokens <N> features <F> [k <k>] d <D> precision <p>: <ms> ms/step (...), peak <MiB> MiB
Run it in the same sitting as ours (scripts/device_check.sh does). On a machine without a GPU,
--device cpu with small sizes checks the script itself (bf16 autocast on the CPU is slow: not a peer).
Usage: python3 bench/peer_torch_gpu.py [--device cuda] [--steps standard,topk] [--tokens 218,4096]
       [--features 10000] [--topk-features 16384,65536] [--k 32] [--d 768] [--precisions fp32,tf32,bf16]
       [--rounds 5] [--steps-per-round 20]
"""
import argparse
import contextlib
import statistics
import time

import torch


def make_standard(d, f, dev):
    torch.manual_seed(0)
    enc = torch.nn.Linear(d, f).to(dev)
    dec = torch.nn.Linear(f, d).to(dev)
    return list(enc.parameters()) + list(dec.parameters()), enc, dec


def standard_step(enc, dec, opt, x, lam, autocast):
    opt.zero_grad(set_to_none=True)
    with autocast():
        feats = torch.relu(enc(x))
        x_hat = dec(feats)
    rec = ((x_hat.float() - x) ** 2).sum()
    l1 = (feats.float() * dec.weight.norm(dim=0)).sum()
    (rec + lam * l1).backward()
    opt.step()


def make_topk(d, f, dev):
    torch.manual_seed(0)
    W_dec = torch.randn(f, d, device=dev)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_dec = torch.nn.Parameter(W_dec)
    W_enc = torch.nn.Parameter(W_dec.detach().T.clone())
    b_enc = torch.nn.Parameter(torch.zeros(f, device=dev))
    b_dec = torch.nn.Parameter(torch.zeros(d, device=dev))
    return [W_enc, b_enc, W_dec, b_dec]


def topk_step(params, opt, x, k, autocast):
    W_enc, b_enc, W_dec, b_dec = params
    opt.zero_grad(set_to_none=True)
    with autocast():
        pre = x @ W_enc + b_enc
        vals, idx = torch.topk(pre, k, dim=1)
        feats = torch.zeros_like(pre).scatter_(1, idx, torch.relu(vals))
        x_hat = feats @ W_dec + b_dec
    ((x_hat.float() - x) ** 2).sum().backward()
    with torch.no_grad():
        u = W_dec / W_dec.norm(dim=1, keepdim=True)
        W_dec.grad -= (W_dec.grad * u).sum(dim=1, keepdim=True) * u
    opt.step()
    with torch.no_grad():
        W_dec.div_(W_dec.norm(dim=1, keepdim=True))


def set_precision(precision, dev):
    """Returns the autocast context factory of `precision` and sets the TF32 switches."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if precision == "bf16":
        return lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def timed(step, dev, rounds, steps):
    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(rounds):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        times.append((time.perf_counter() - t0) / steps * 1e3)
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else float("nan")
    return statistics.median(times), times, peak


def report(label, ms, times, peak, rounds, steps):
    print(f"peer {label}: {ms:.3f} ms/step (median of {rounds} rounds of {steps} steps: "
          f"{', '.join(f'{t:.3f}' for t in times)}), peak {peak:.0f} MiB", flush=True)


def ints(text):
    return [int(v) for v in text.split(",") if v]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", default="standard,topk", help="which steps: standard, topk")
    ap.add_argument("--tokens", default="218,4096", help="standard step: token counts")
    ap.add_argument("--topk-tokens", default="4096", help="topk step: token counts")
    ap.add_argument("--features", default="10000", help="standard step: F values")
    ap.add_argument("--topk-features", default="16384,65536", help="topk step: F values")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--lam", type=float, default=50.0)
    ap.add_argument("--precisions", default="fp32,tf32,bf16")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps-per-round", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {name}", flush=True)
    which = args.steps.split(",")
    for precision in args.precisions.split(","):
        if precision not in ("fp32", "tf32", "bf16"):
            raise SystemExit(f"--precisions: expected fp32, tf32 or bf16, got '{precision}'")
        autocast = set_precision(precision, dev)
        if "standard" in which:
            for f in ints(args.features):
                params, enc, dec = make_standard(args.d, f, dev)
                opt = torch.optim.Adam(params, lr=1e-5)
                for n in ints(args.tokens):
                    x = torch.randn(n, args.d, device=dev) * args.d ** 0.5
                    ms, times, peak = timed(lambda: standard_step(enc, dec, opt, x, args.lam, autocast), dev,
                                            args.rounds, args.steps_per_round)
                    report(f"standard tokens {n} features {f} d {args.d} precision {precision}", ms, times, peak,
                           args.rounds, args.steps_per_round)
                del params, enc, dec, opt
        if "topk" in which:
            for f in ints(args.topk_features):
                params = make_topk(args.d, f, dev)
                opt = torch.optim.Adam(params, lr=1e-4)
                for n in ints(args.topk_tokens):
                    x = torch.randn(n, args.d, device=dev)
                    ms, times, peak = timed(lambda: topk_step(params, opt, x, args.k, autocast), dev, args.rounds,
                                            args.steps_per_round)
                    report(f"topk tokens {n} features {f} k {args.k} d {args.d} precision {precision}", ms, times,
                           peak, args.rounds, args.steps_per_round)
                del params, opt
        if dev.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
