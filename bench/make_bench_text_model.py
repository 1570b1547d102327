"""Makes what the text-training benchmarks need, in one folder (default /tmp/sae_bench_text):

    model/       a GPT-Neo with TinyStories-33M's architecture (d 768, 4 layers, 16 heads, 50257
                 ids, window 256), randomly initialised by transformers (the real weights cannot be
                 downloaded here; the cost does not depend on them), saved as model.safetensors
                 (float32), with the test tokenizer of tests/ref/tokenizer/ (a GPT-2 byte-level BPE
                 of 4097 ids, all below 50257)
    stories.txt  --stories stories of exactly --tokens tokens each under that tokenizer (sentences of
                 the fixture stories shuffled together, cut at the token count), in TinyStories'
                 format (separated by <|endoftext|> lines)

    python3 bench/make_bench_text_model.py [--out DIR] [--stories 400] [--tokens 218]

Needs torch, transformers, tokenizers.
"""
import argparse
import os
import random
import shutil

import torch
from tokenizers import Tokenizer
from transformers import GPTNeoConfig, GPTNeoForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINYSTORIES_33M = dict(vocab_size=50257, max_position_embeddings=2048, hidden_size=768, num_layers=4,
                       attention_types=[[["global", "local"], 2]], num_heads=16, intermediate_size=None,
                       window_size=256, layer_norm_epsilon=1e-5, activation_function="gelu_new",
                       bos_token_id=50256, eos_token_id=50256, architectures=["GPTNeoForCausalLM"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/sae_bench_text")
    ap.add_argument("--stories", type=int, default=400)
    ap.add_argument("--tokens", type=int, default=218)
    args = ap.parse_args()

    model_dir = os.path.join(args.out, "model")
    os.makedirs(model_dir, exist_ok=True)
    tokenizer_json = os.path.join(ROOT, "tests/ref/tokenizer/tokenizer.json")
    shutil.copy(tokenizer_json, os.path.join(model_dir, "tokenizer.json"))
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        torch.manual_seed(0)
        model = GPTNeoForCausalLM(GPTNeoConfig(**TINYSTORIES_33M)).eval()
        model.save_pretrained(model_dir, safe_serialization=True)

    tokenizer = Tokenizer.from_file(tokenizer_json)
    fixture = open(os.path.join(ROOT, "tests/ref/text_train/stories.txt"), encoding="utf-8").read()
    sentences = [s.strip() + "." for part in fixture.split("<|endoftext|>") for s in part.split(".") if s.strip()]
    rng = random.Random(0)
    stories = []
    while len(stories) < args.stories:
        words = []
        text = ""
        while len(tokenizer.encode(text).ids) < args.tokens:
            words.append(rng.choice(sentences))
            text = " ".join(words)
        ids = tokenizer.encode(text).ids[: args.tokens]
        story = tokenizer.decode(ids)
        if len(tokenizer.encode(story).ids) == args.tokens:  # decode/encode round trip kept the count
            stories.append(story.replace("<|endoftext|>", ""))
    with open(os.path.join(args.out, "stories.txt"), "w", encoding="utf-8") as f:
        for story in stories:
            f.write(story + "\n<|endoftext|>\n")
    print(f"wrote {model_dir} and {args.out}/stories.txt ({len(stories)} stories of {args.tokens} tokens)")


if __name__ == "__main__":
    main()
