"""Writes tests/ref/text_train/: the pieces of the test "SAE training from text equals training on
activations dumped by Hugging Face" (tests/sae/data/test_text_batches.cpp), made the way the
original tutorial makes its activations: each story tokenized with a GPT-2 byte-level BPE tokenizer
(no BOS), run through GPTNeoForCausalLM with output_hidden_states=True, hidden_states[2] kept.

    python3 scripts/gen_text_train_fixture.py [--out-dir DIR]

Needs torch, transformers, tokenizers, numpy. Writes:

    model/        a tiny GPT-Neo (vocab = the tokenizer's 4097 ids, hidden 32, 4 layers alternating
                  global/local with window 8, 4 heads, 128 positions) with the hashed weights of
                  docs/gpt_neo.md, saved by save_pretrained in F16 (so the C++ loader widens F16),
                  plus the tokenizer (tokenizer.json of tests/ref/tokenizer/) as a model folder has it
    stories.txt   16 short stories in TinyStories' format (separated by <|endoftext|> lines)
    acts.safetensors   activations [n_tokens, 32] F32 (hidden_states[2] of the F16 model loaded in
                  float32, story after story), story_lengths [16] I64, token_ids [n_tokens] I32
"""
import argparse
import os
import shutil
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hashed_weights as hw  # noqa: E402
from fixture_io import FixtureWriter  # noqa: E402

from tokenizers import Tokenizer  # noqa: E402
from transformers import GPTNeoConfig, GPTNeoForCausalLM  # noqa: E402

LAYER = 2
STORIES = [
    "Once upon a time, there was a little cat named Tom. Tom liked to play with a red ball in the garden.",
    "Lily had a big dog. The dog was very happy when Lily came home from school. They ran to the park together.",
    "One day, a bird found a shiny stone. It was blue and bright. The bird took it to its nest and smiled.",
    "Ben wanted to build a tall tower with his blocks. It fell down twice, but he did not give up.",
    "The sun was hot, so Mia and her mom went to the beach. They made a sandcastle and swam in the sea.",
    "A small frog lived in a pond. Every night he sang a song to the moon. The moon liked his song.",
    "Sam lost his hat in the wind. He looked everywhere. At last his friend found it in a tree.",
    "There was a kind old man who gave apples to the children. They said thank you and shared them.",
    "Anna's toy car broke. Her dad fixed it with glue and tape. Anna hugged him and played all day.",
    "The little fish was scared of the big shark. But the shark only wanted a friend to swim with.",
    "It was raining. Max and Zoe stayed inside and read a book about dragons. They laughed a lot.",
    "A brave girl named Sue climbed the hill to see the stars. She counted ten, then twenty, then more.",
    "The puppy dug a hole and found a bone. He was so proud that he showed it to everyone.",
    "Grandma baked cookies for the party. They smelled sweet and warm. Everyone wanted one more.",
    "Tim saw a rainbow after the storm. \"Look, Mom!\" he said. The colors were red, green and blue.",
    "Zoë the café owner met a bee. The bee buzzed: “hello!” They became friends — the end.",
]


def tiny_config(vocab_size):
    return GPTNeoConfig(vocab_size=vocab_size, max_position_embeddings=128, hidden_size=32, num_layers=4,
                        attention_types=[[["global", "local"], 2]], num_heads=4, intermediate_size=96,
                        window_size=8, activation_function="gelu_new", resid_dropout=0.0, embed_dropout=0.0,
                        attention_dropout=0.0, layer_norm_epsilon=1e-5, bos_token_id=vocab_size - 1,
                        eos_token_id=vocab_size - 1, architectures=["GPTNeoForCausalLM"])


def main():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default=os.path.join(repo, "tests", "ref", "text_train"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = args.out_dir
    model_dir = os.path.join(out, "model")
    os.makedirs(model_dir, exist_ok=True)

    tokenizer_json = os.path.join(repo, "tests", "ref", "tokenizer", "tokenizer.json")
    tokenizer = Tokenizer.from_file(tokenizer_json)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    model = GPTNeoForCausalLM(tiny_config(vocab_size))
    hw.fill_model(model)
    model.half().save_pretrained(model_dir, safe_serialization=True)
    shutil.copyfile(tokenizer_json, os.path.join(model_dir, "tokenizer.json"))
    loaded = GPTNeoForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    with open(os.path.join(out, "stories.txt"), "w", encoding="utf-8") as f:
        for story in STORIES:
            f.write(story + "\n<|endoftext|>\n")

    acts, lengths, ids_all = [], [], []
    for story in STORIES:
        ids = tokenizer.encode(story, add_special_tokens=False).ids
        with torch.no_grad():
            hidden = loaded(torch.tensor([ids], dtype=torch.long), output_hidden_states=True).hidden_states
        acts.append(hidden[LAYER][0].float().numpy())
        lengths.append(len(ids))
        ids_all.extend(ids)
    w = FixtureWriter()
    w.put("activations", np.concatenate(acts).astype(np.float32))
    w.put("story_lengths", np.asarray(lengths, dtype=np.int64))
    w.put("token_ids", np.asarray(ids_all, dtype=np.int32))
    w.put_text("source", f"hidden_states[{LAYER}] of {os.path.relpath(model_dir, repo)} (F16 weights in float32), "
                         "transformers")
    w.save(os.path.join(out, "acts.safetensors"))
    print(f"wrote {out}: vocab {vocab_size}, {len(STORIES)} stories, {sum(lengths)} tokens "
          f"(lengths {min(lengths)}..{max(lengths)}), max |act| {np.abs(np.concatenate(acts)).max():.3f}")


if __name__ == "__main__":
    main()
