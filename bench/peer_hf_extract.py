"""PyTorch / Hugging Face peer for the C++ GPT-Neo benchmarks, doing what the original tutorial does:

  extract   GPTNeoForCausalLM with the TinyStories-33M architecture (randomly initialised by HF: the
            real weights cannot be downloaded here, and the speed does not depend on them), eval mode,
            torch.no_grad(), output_hidden_states=True, a full forward pass (all layers and the
            50257-way logits, as the tutorial computes them) over one story of --tokens ids at a time.
            Reports tokens/s.
  stop      the same work as ours: the base model (no unembedding) with only its first 2 blocks, as
            SAELens's ActivationsStore runs it (run_with_cache(stop_at_layer=2)); HF applies its
            final norm to the last hidden state, one norm of [T, 768] more than ours.
  step      the tutorial's whole training step from token ids: the forward pass above, x =
            hidden_states[2] (the raw residual stream after block 2), per-story normalisation
            x = (x - x.mean()) / x.std() * sqrt(768) (all elements, unbiased std), the SAE
            f = relu(x W_enc + b_enc), x_hat = f W_dec + b_dec,
            loss = sum((x - x_hat)^2) + lambda * sum_{t,i} f[t,i] * ||W_dec[i,:]||, backward, Adam
            (lr 1e-5) step; F = 10000, lambda = 50, a fresh nn.Linear init (the dense regime, about
            half the features active). Reports ms per step and its split (model forward / SAE).

    python3 bench/peer_hf_extract.py [--mode extract|stop|step|both] [--threads N] [--device cpu|cuda]
        [--tokens 218] [--stories 20] [--steps 10] [--rounds 5] [--features 10000] [--label TEXT]

Prints one JSON line per measurement (times are medians over --rounds rounds, after warm-up).
Token ids are random (no tokenizer needed). float32 throughout.
"""
import argparse
import json
import platform
import statistics
import time

import torch

TINYSTORIES_33M = dict(vocab_size=50257, max_position_embeddings=2048, hidden_size=768, num_layers=4,
                       attention_types=[[["global", "local"], 2]], num_heads=16, intermediate_size=None,
                       window_size=256, layer_norm_epsilon=1e-5, activation_function="gelu_new",
                       bos_token_id=50256, eos_token_id=50256)
LAYER = 2


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed_rounds(fn, rounds, reps, dev):
    out = []
    for _ in range(rounds):
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(dev)
        out.append((time.perf_counter() - t0) / reps)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["extract", "stop", "step", "both"], default="both")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=218, help="tokens per story (one story per forward)")
    ap.add_argument("--stories", type=int, default=20, help="stories per timed round (extract)")
    ap.add_argument("--steps", type=int, default=10, help="training steps per timed round (step)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--features", type=int, default=10000)
    ap.add_argument("--l1", type=float, default=50.0)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--label", default="", help="free text saved in the JSON (e.g. the machine)")
    args = ap.parse_args()

    import transformers
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = GPTNeoForCausalLM(GPTNeoConfig(**TINYSTORIES_33M)).to(dev).eval()
    gen = torch.Generator().manual_seed(1)
    # a few different stories, cycled (ids only; their values do not change the cost)
    stories = [torch.randint(0, 50257, (1, args.tokens), generator=gen).to(dev) for _ in range(8)]
    common = dict(torch=torch.__version__, transformers=transformers.__version__, device=args.device,
                  threads=args.threads, tokens_per_story=args.tokens, host=platform.node(),
                  cpu=platform.processor() or platform.machine(), label=args.label)
    if dev.type == "cuda":
        common["gpu"] = torch.cuda.get_device_name(dev)

    counter = [0]

    def next_story():
        counter[0] += 1
        return stories[counter[0] % len(stories)]

    def forward_hidden():
        with torch.no_grad():
            out = model(next_story(), output_hidden_states=True)
        return out.hidden_states[LAYER][0]

    if args.mode in ("extract", "both"):
        for _ in range(args.warmup):
            forward_hidden()
        rounds = timed_rounds(forward_hidden, args.rounds, args.stories, dev)
        sec = statistics.median(rounds)
        print(json.dumps(dict(bench="hf_extract", ms_per_story=round(sec * 1e3, 3),
                              tokens_per_s=round(args.tokens / sec, 1),
                              rounds_ms=[round(r * 1e3, 2) for r in rounds], stories_per_round=args.stories,
                              **common)), flush=True)

    if args.mode == "stop":
        base = model.base_model
        base.h = torch.nn.ModuleList(list(base.h)[:LAYER])

        def stop():
            with torch.no_grad():
                return base(next_story()).last_hidden_state[0]

        for _ in range(args.warmup):
            stop()
        rounds = timed_rounds(stop, args.rounds, args.stories, dev)
        sec = statistics.median(rounds)
        print(json.dumps(dict(bench="hf_stop_at_layer", ms_per_story=round(sec * 1e3, 3),
                              tokens_per_s=round(args.tokens / sec, 1), blocks=LAYER,
                              rounds_ms=[round(r * 1e3, 2) for r in rounds], stories_per_round=args.stories,
                              **common)), flush=True)

    if args.mode in ("step", "both"):
        d, f = 768, args.features
        enc = torch.nn.Linear(d, f).to(dev)
        dec = torch.nn.Linear(f, d).to(dev)
        opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=args.lr)
        split = {"forward": [], "sae": []}
        active = []

        def step():
            sync(dev)
            t0 = time.perf_counter()
            x = forward_hidden()
            sync(dev)
            t1 = time.perf_counter()
            x = (x - x.mean()) / x.std() * d ** 0.5
            opt.zero_grad()
            feats = torch.relu(enc(x))
            x_hat = dec(feats)
            rec = ((x_hat - x) ** 2).sum()
            l1 = (feats * dec.weight.norm(dim=0)).sum()
            (rec + args.l1 * l1).backward()
            opt.step()
            sync(dev)
            t2 = time.perf_counter()
            split["forward"].append(t1 - t0)
            split["sae"].append(t2 - t1)
            active.append((feats > 0).float().mean().item())

        for _ in range(args.warmup):
            step()
        split["forward"].clear()
        split["sae"].clear()
        rounds = timed_rounds(step, args.rounds, args.steps, dev)
        sec = statistics.median(rounds)
        print(json.dumps(dict(bench="hf_train_step", ms_per_step=round(sec * 1e3, 3),
                              tokens_per_s=round(args.tokens / sec, 1),
                              forward_ms_median=round(statistics.median(split["forward"]) * 1e3, 3),
                              sae_ms_median=round(statistics.median(split["sae"]) * 1e3, 3),
                              rounds_ms=[round(r * 1e3, 2) for r in rounds], steps_per_round=args.steps,
                              features=f, l1=args.l1, lr=args.lr, layer=LAYER,
                              active_fraction_last=round(active[-1], 4), **common)), flush=True)


if __name__ == "__main__":
    main()
