"""PyTorch peer of bench/bench_topk.cpp: one training step of a TopK SAE in eager float32, written as
the peers write it (SAELens / dictionary_learning style): P = x W_enc + b_enc, torch.topk(P, k),
relu on the kept values scattered into a dense f, x_hat = f W_dec + b_dec, rec = sum (x - x_hat)^2,
backward, the decoder gradient projected off its rows, torch.optim.Adam, rows renormalised. d 768,
k 32, 4096 tokens, F from --features. No AuxK (nothing is dead in the C++ benchmark either).
Usage: python3 bench/peer_torch_topk.py --features 16384 [--threads 2] [--tokens 4096] [--k 32]
[--d 768] [--steps 1] (per round). Prints one line: ms per step (median of 3 rounds, after one warm-up step)."""
import argparse
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--steps", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d, f, n, k = args.d, args.features, args.tokens, args.k
    W_dec = torch.randn(f, d)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_dec = torch.nn.Parameter(W_dec)
    W_enc = torch.nn.Parameter(W_dec.detach().T.clone())
    b_enc = torch.nn.Parameter(torch.zeros(f))
    b_dec = torch.nn.Parameter(torch.zeros(d))
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=1e-4)
    x = torch.randn(n, d)

    def step():
        opt.zero_grad()
        pre = x @ W_enc + b_enc
        vals, idx = torch.topk(pre, k, dim=1)
        feats = torch.zeros_like(pre).scatter_(1, idx, torch.relu(vals))
        x_hat = feats @ W_dec + b_dec
        ((x_hat - x) ** 2).sum().backward()
        with torch.no_grad():
            u = W_dec / W_dec.norm(dim=1, keepdim=True)
            W_dec.grad -= (W_dec.grad * u).sum(dim=1, keepdim=True) * u
        opt.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=1, keepdim=True))

    step()
    rounds = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        rounds.append((time.perf_counter() - t0) / args.steps * 1e3)
    print(f"torch {torch.__version__} threads {args.threads} tokens {n} features {f} k {k}: "
          f"{statistics.median(rounds):.1f} ms/step (rounds: {', '.join(f'{r:.1f}' for r in rounds)})")


if __name__ == "__main__":
    main()
