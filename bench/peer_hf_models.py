"""Hugging Face peer of bench/bench_models.cpp: the same families at the same shapes, randomly
initialised (the real weights cannot be downloaded here; the speed does not depend on them), eval
mode, torch.no_grad(), float32, one 128-token window per pass:

  extract   the forward as a user calls it to get activations: the whole model with
            output_hidden_states=True (all blocks and the [128, V] logits), taking hidden_states[m]
            (m = 6 for GPT-2 small, 3 for Pythia-70m: the middle block's hook_resid_pre)
  stop      the same work as ours: the base model (no unembedding) with only its first m blocks,
            as SAELens's ActivationsStore runs it (run_with_cache(stop_at_layer=m)); HF applies its
            final norm to the last hidden state, one norm of [128, d] more than ours
  generate  model.generate, greedy, 64 new tokens (min_new_tokens 64: no early stop) after a
            16-token prompt, with its KV cache
Families: gpt2 (GPT2LMHeadModel, GPT-2 small's config), pythia (GPTNeoXForCausalLM, Pythia-70m's),
qwen2 (Qwen2ForCausalLM, Qwen2.5-0.5B's), llama (LlamaForCausalLM, Llama-3.2-1B's), gemma2
(Gemma2ForCausalLM, Gemma-2-2B's; the whole model in float32 takes about 10.5 GB). "both" is gpt2
and pythia; "all" every family.

    python3 bench/peer_hf_models.py [--family gpt2|pythia|both] [--mode extract|stop|generate|both]
        [--threads N] [--tokens 128] [--rounds 5] [--label TEXT]

Prints one JSON line per measurement (medians over --rounds timed rounds, after warm-up).
"""
import argparse
import json
import platform
import statistics
import time

import torch

FAMILIES = {
    "gpt2": dict(middle=6, config=dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                                       activation_function="gelu_new", layer_norm_epsilon=1e-5)),
    "qwen2": dict(middle=12, config=dict(vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                                         num_key_value_heads=2, intermediate_size=4864, max_position_embeddings=32768,
                                         rms_norm_eps=1e-6, tie_word_embeddings=True,
                                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    "llama": dict(middle=8, config=dict(vocab_size=128256, hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                                        num_key_value_heads=8, intermediate_size=8192, head_dim=64,
                                        max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                         "original_max_position_embeddings": 8192})),
    "gemma2": dict(middle=12, config=dict(vocab_size=256000, hidden_size=2304, num_hidden_layers=26, num_attention_heads=8,
                                          num_key_value_heads=4, head_dim=256, intermediate_size=9216,
                                          max_position_embeddings=8192, rms_norm_eps=1e-6, query_pre_attn_scalar=256,
                                          sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                                          hidden_activation="gelu_pytorch_tanh",
                                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    "pythia": dict(middle=3, config=dict(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                                         intermediate_size=2048, max_position_embeddings=2048, rotary_pct=0.25,
                                         rotary_emb_base=10000, use_parallel_residual=True, hidden_act="gelu",
                                         layer_norm_eps=1e-5, tie_word_embeddings=False)),
}


def build(family):
    import transformers as t
    cfg = FAMILIES[family]["config"]
    classes = dict(gpt2=(t.GPT2Config, t.GPT2LMHeadModel), pythia=(t.GPTNeoXConfig, t.GPTNeoXForCausalLM),
                   qwen2=(t.Qwen2Config, t.Qwen2ForCausalLM), llama=(t.LlamaConfig, t.LlamaForCausalLM),
                   gemma2=(t.Gemma2Config, t.Gemma2ForCausalLM))
    config_class, model_class = classes[family]
    return model_class(config_class(**cfg)).eval()


def truncated_base(model, blocks):
    """The model's base (no LM head) keeping only its first `blocks` blocks."""
    base = model.base_model
    name = "h" if hasattr(base, "h") else "layers"
    setattr(base, name, torch.nn.ModuleList(list(getattr(base, name))[:blocks]))
    return base


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
    ap.add_argument("--family", choices=list(FAMILIES) + ["both", "all"], default="both")
    ap.add_argument("--mode", choices=["extract", "stop", "generate", "both"], default="both")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--windows", type=int, default=10, help="windows per timed round (extract)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--label", default="")
    args = ap.parse_args()

    import transformers
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    chosen = {"both": ["gpt2", "pythia"], "all": list(FAMILIES)}.get(args.family, [args.family])
    for family in chosen:
        model = build(family)
        vocab = model.config.vocab_size
        gen = torch.Generator().manual_seed(1)
        windows = [torch.randint(0, vocab, (1, args.tokens), generator=gen) for _ in range(8)]
        common = dict(family=family, torch=torch.__version__, transformers=transformers.__version__,
                      threads=args.threads, host=platform.node(), label=args.label)
        counter = [0]

        def extract():
            counter[0] += 1
            with torch.no_grad():
                out = model(windows[counter[0] % len(windows)], output_hidden_states=True)
            return out.hidden_states[FAMILIES[family]["middle"]][0]

        def measure(bench, fn, **extra):
            for _ in range(args.warmup):
                fn()
            rounds = timed_rounds(fn, args.rounds, args.windows)
            sec = statistics.median(rounds)
            print(json.dumps(dict(bench=bench, ms_per_window=round(sec * 1e3, 3),
                                  tokens_per_s=round(args.tokens / sec, 1), tokens=args.tokens, **extra,
                                  rounds_ms=[round(r * 1e3, 2) for r in rounds], **common)), flush=True)

        if args.mode in ("extract", "both"):
            measure("hf_model_extract", extract)

        if args.mode == "stop":
            base = truncated_base(model, FAMILIES[family]["middle"])

            def stop():
                counter[0] += 1
                with torch.no_grad():
                    return base(windows[counter[0] % len(windows)]).last_hidden_state[0]

            measure("hf_model_stop_at_layer", stop, blocks=FAMILIES[family]["middle"])

        if args.mode in ("generate", "both"):
            prompt = torch.randint(0, vocab, (1, args.prompt_tokens), generator=gen)

            def generate():
                with torch.no_grad():
                    model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                   do_sample=False, pad_token_id=0)

            for _ in range(args.warmup):
                generate()
            rounds = timed_rounds(generate, args.rounds, 1)
            sec = statistics.median(rounds)
            print(json.dumps(dict(bench="hf_model_generate", ms_per_generation=round(sec * 1e3, 3),
                                  new_tokens_per_s=round(args.new_tokens / sec, 1),
                                  rounds_ms=[round(r * 1e3, 2) for r in rounds], **common)), flush=True)


if __name__ == "__main__":
    main()
