"""PyTorch peer of bench/bench_dictionaries.cpp's crosscoder (kind 3) and transcoder (kind 1) steps:
1024 tokens, F = 4096, standard ReLU latents, lambda 1, eager float32, Adam. The crosscoder is written
as public crosscoder code writes it: per-source encoders W_enc [S, d, F] summed into shared latents
(einsum), per-source decoders W_dec [F, S, d], loss = sum over sources of the squared error +
lambda * sum_i f_i sum_s ||W_dec[i, s]||. Usage: python3 bench/peer_torch_crosscoder.py [--threads 2]
[--kind crosscoder|transcoder]. Prints one line: ms per step (median of 5 rounds)."""
import argparse
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kind", default="crosscoder", choices=["crosscoder", "transcoder"])
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, f, d, lam = 1024, 4096, 768, 1.0
    s = 4 if args.kind == "crosscoder" else 1
    w_enc = torch.nn.Parameter(torch.randn(s, d, f) / d ** 0.5)
    b_enc = torch.nn.Parameter(torch.zeros(f))
    w_dec = torch.nn.Parameter(torch.randn(f, s, d) / f ** 0.5)
    b_dec = torch.nn.Parameter(torch.zeros(s, d))
    opt = torch.optim.Adam([w_enc, b_enc, w_dec, b_dec], lr=1e-4)
    x = torch.randn(n, s, d)
    y = torch.randn(n, s, d) if args.kind == "transcoder" else x

    def step():
        opt.zero_grad()
        feats = torch.relu(torch.einsum("nsd,sdf->nf", x, w_enc) + b_enc)
        y_hat = torch.einsum("nf,fsd->nsd", feats, w_dec) + b_dec
        rec = ((y_hat - y) ** 2).sum()
        l1 = (feats * w_dec.norm(dim=2).sum(1)).sum()
        (rec + lam * l1).backward()
        opt.step()

    for _ in range(2):
        step()
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        rounds.append((time.perf_counter() - start) / args.steps * 1e3)
    print(f"{args.kind}: {n} tokens, F {f}, {s} x {d}: {statistics.median(rounds):.2f} ms per step (torch {torch.__version__}, {args.threads} threads)")


if __name__ == "__main__":
    main()
