"""PyTorch / Hugging Face peer of bench/bench_eval.cpp, doing what sae_eval and sae_steer do:

  splice    GPTNeoForCausalLM with the TinyStories-33M architecture (randomly initialised by HF: the
            speed does not depend on the weights), eval mode, torch.no_grad(); a forward hook on
            transformer.h[1] (its output is hidden_states[2]) replaces the residual stream by an SAE's
            reconstruction (d 768, F 10000, nn.Linear init): per-story normalisation
            (x - mean) / std * sqrt(768), f = relu(x W_enc + b_enc), x_hat = f W_dec + b_dec, brought
            back by * std / sqrt(768) + mean; then the logits and F.cross_entropy of the 217 next
            tokens of one 218-token story. Reports tokens/s (also without the hook: "clean").
  generate  model.generate, greedy, 64 new tokens (min_new_tokens 64: no early stop) after a 16-token
            prompt, its KV cache, with a forward hook on transformer.h[1] adding 8 * a unit vector to
            every position (sae_steer's steering). Reports new tokens/s.

    python3 bench/peer_hf_eval.py [--mode splice|generate|both] [--threads N] [--rounds 5] [--label TEXT]

Prints one JSON line per measurement (medians over --rounds timed rounds, after warm-up). Token ids
are random. float32 throughout.
"""
import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

TINYSTORIES_33M = dict(vocab_size=50257, max_position_embeddings=2048, hidden_size=768, num_layers=4,
                       attention_types=[[["global", "local"], 2]], num_heads=16, intermediate_size=None,
                       window_size=256, layer_norm_epsilon=1e-5, activation_function="gelu_new",
                       bos_token_id=50256, eos_token_id=50256)
LAYER = 2  # hidden_states[2] = the output of transformer.h[1]


def timed_rounds(fn, rounds, reps):
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        out.append((time.perf_counter() - t0) / reps)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["splice", "generate", "both"], default="both")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=218)
    ap.add_argument("--features", type=int, default=10000)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--stories", type=int, default=5, help="stories per timed round (splice)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--label", default="")
    args = ap.parse_args()

    import transformers
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPTNeoForCausalLM(GPTNeoConfig(**TINYSTORIES_33M)).eval()
    block = model.transformer.h[LAYER - 1]
    d = 768
    enc = torch.nn.Linear(d, args.features)
    dec = torch.nn.Linear(args.features, d)
    gen = torch.Generator().manual_seed(1)
    story = torch.randint(0, 50257, (1, args.tokens), generator=gen)
    prompt = torch.randint(0, 50257, (1, args.prompt_tokens), generator=gen)
    common = dict(torch=torch.__version__, transformers=transformers.__version__, threads=args.threads,
                  host=platform.node(), cpu=platform.processor() or platform.machine(), label=args.label)

    def splice_hook(module, inputs, output):
        x = output[0]
        mean, std = x.mean(), x.std()
        xn = (x - mean) / std * d ** 0.5
        x_hat = dec(torch.relu(enc(xn))) / d ** 0.5 * std + mean
        return (x_hat,) + tuple(output[1:])

    def ce_pass():
        with torch.no_grad():
            logits = model(story).logits[0]
            return F.cross_entropy(logits[:-1], story[0, 1:]).item()

    if args.mode in ("splice", "both"):
        for name, hooked in (("hf_eval_clean_ce", False), ("hf_eval_spliced_ce", True)):
            handle = block.register_forward_hook(splice_hook) if hooked else None
            for _ in range(args.warmup):
                ce_pass()
            rounds = timed_rounds(ce_pass, args.rounds, args.stories)
            if handle is not None:
                handle.remove()
            sec = statistics.median(rounds)
            print(json.dumps(dict(bench=name, ms_per_story=round(sec * 1e3, 3), tokens_per_s=round(args.tokens / sec, 1),
                                  rounds_ms=[round(r * 1e3, 2) for r in rounds], tokens_per_story=args.tokens,
                                  features=args.features, **common)), flush=True)

    if args.mode in ("generate", "both"):
        direction = torch.randn(d, generator=gen)
        vector = 8.0 * direction / direction.norm()

        def steer_hook(module, inputs, output):
            return (output[0] + vector,) + tuple(output[1:])

        handle = block.register_forward_hook(steer_hook)

        def generate():
            with torch.no_grad():
                out = model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                     do_sample=False, pad_token_id=50256)
            assert out.shape[1] == args.prompt_tokens + args.new_tokens

        for _ in range(args.warmup):
            generate()
        rounds = timed_rounds(generate, args.rounds, 1)
        handle.remove()
        sec = statistics.median(rounds)
        print(json.dumps(dict(bench="hf_generate", ms_per_generation=round(sec * 1e3, 3),
                              new_tokens_per_s=round(args.new_tokens / sec, 1),
                              rounds_ms=[round(r * 1e3, 2) for r in rounds], prompt_tokens=args.prompt_tokens,
                              new_tokens=args.new_tokens, **common)), flush=True)


if __name__ == "__main__":
    main()
