"""PyTorch peer of bench/bench_sae_step.cpp: the original study's step (F = 10000, d = 768, one
218-token story, lambda = 50; forward, the decoder-norm-weighted L1, backward, Adam) in eager
float32, timed over repeated steps. Usage: /usr/bin/python3 bench/peer_torch_step.py [--threads 2]
[--tokens 218] [--device cpu|cuda]. Prints one line: tokens, ms per step (median of 5 rounds)."""
import argparse
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=218)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d, f, lam = 768, 10000, 50.0
    dev = torch.device(args.device)
    enc = torch.nn.Linear(d, f).to(dev)
    dec = torch.nn.Linear(f, d).to(dev)
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-5)
    x = torch.randn(args.tokens, d, device=dev) * d ** 0.5

    def step():
        opt.zero_grad()
        feats = torch.relu(enc(x))
        x_hat = dec(feats)
        rec = ((x_hat - x) ** 2).sum()
        l1 = (feats * dec.weight.norm(dim=0)).sum()
        (rec + lam * l1).backward()
        opt.step()

    for _ in range(3):
        step()
    rounds = []
    for _ in range(5):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        rounds.append((time.perf_counter() - t0) / args.steps * 1e3)
    print(f"torch {torch.__version__} device {args.device} threads {args.threads} tokens {args.tokens}: "
          f"{statistics.median(rounds):.1f} ms/step (rounds: {', '.join(f'{r:.1f}' for r in rounds)})")


if __name__ == "__main__":
    main()
