#!/usr/bin/env python3
"""Writes the byte-level BPE tokenizer fixtures of tests/ref/tokenizers/ that tests/lm/test_tokenizer.cpp
reads (the GPT-2 fixture is scripts/gen_tokenizer_fixture.py's). Three tokenizers trained with the
`tokenizers` package on the same local text, each set up as a family ships its tokenizer.json:

  llama3  Sequence[Split(Llama 3's regex, Isolated), ByteLevel(use_regex=False)], BPE with
          ignore_merges, special tokens <|begin_of_text|> and <|end_of_text|>, and a post-processor
          Sequence[ByteLevel, TemplateProcessing("<|begin_of_text|> $A")] that adds BOS
  qwen2   NFC normalizer, Sequence[Split(Qwen 2's regex), ByteLevel(use_regex=False)], special
          tokens <|endoftext|>, <|im_start|>, <|im_end|>, ByteLevel post-processor
  neox    as GPT-NeoX / Pythia: NFC normalizer, ByteLevel pre-tokenizer (GPT-2's pattern), special
          <|endoftext|> and <|padding|>, and runs of 2, 3, 4, 8, 16 and 24 spaces as added tokens
          that are not special and are normalized (matched after normalisation, before pre-tokenisation);
          tokenizer_config.json names <|endoftext|> as bos_token and eos_token
Vocabularies of 1,024 tokens. For each, tests/ref/tokenizers/NAME/cases.jsonl: {"text", "ids",
"pieces"} for every 4th string of scripts/gen_tokenizer_fixture.py's cases (every script, emoji,
combining marks, white space runs, digits, contractions, random mixtures) and strings written here
for what these tokenizers do differently (digit groups, CR/LF runs, contractions in any case,
letters after punctuation, NFC, space runs, special tokens). ids = encode(text,
add_special_tokens=False); pieces = the byte lengths of the pre-tokenizer's pieces of the raw text;
bos = encode("x").ids minus encode("x", add_special_tokens=False).ids, saved in the first line.

Run:  python3 scripts/gen_bpe_tokenizer_fixtures.py   (tokenizers 0.23.3 made the committed files)
"""
import json
import os
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_tokenizer_fixture import make_cases, training_files  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "ref", "tokenizers")
VOCAB_SIZE = 1024
LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SPACE_RUNS = [24, 16, 8, 4, 3, 2]

EXTRA = [
    # digits: groups of three (Llama 3), one at a time (Qwen 2)
    "1", "12", "123", "1234", "12345", "1234567", "12 345 6789", "x1234y", "3.14159265", "१२३४", "٣٤٥٦", "½¾⅓",
    # CR / LF runs: \s*[\r\n]+ keeps the white space before the last line end with it
    "a\nb", "a\n\nb", "a \n b", "a  \n\n  b", "a\r\n\r\nb", "\n\n\n", "  \n", "\n  ", "x \t\n\t y", "end.\n\n",
    "...\n\nNext", "!!\r\n", "a\u2028b", "a\u0085\nb", " \n\u3000x",
    # contractions in any case, and the long s
    "'S", "'T", "'RE", "'Re", "'rE", "'VE", "'M", "'LL", "'D", "DON'T", "IT'S", "she'S", "'ſ", "x'ſy", "'\u212a",
    # a letter run takes one non-letter, non-number, non-newline character before it
    "!hello", "(word)", "\thello", "\u3000hello", "\u00a0a", "$x", "--flag", "x!y", "é!é", "1a", "a1", "_name",
    # NFC: decomposed and composed forms, Hangul jamo, marks out of order, compatibility characters untouched
    "e\u0301", "A\u030a", "\u1100\u1161\u11a8", "\u1100\u1161", "a\u0323\u0302", "a\u0302\u0323", "\u212b", "\u2126",
    "ﬁ", "①", "ｶ", "e\u0301\u0301", "\u0301e", "Cafe\u0301 au lait", "\u0915\u093c", "\u0958", "\u05d0\u05b7",
    # space runs (the NeoX-style added tokens) and tabs
    " " * 2, " " * 3, " " * 5, " " * 9, " " * 30, "a" + " " * 7 + "b", "\t\t", "a  \tb", " " * 4 + "\n" + " " * 4,
    # special tokens, as text
    "<|endoftext|>", "a<|endoftext|>b", "<|begin_of_text|>hi", "<|im_start|>user\nhi<|im_end|>", "<|padding|>",
    "<|end_of_text|>", "<|im_start|><|im_end|>", "<|IM_START|>",
]


def train(name):
    files = training_files()
    if name == "llama3":
        tok = Tokenizer(models.BPE(ignore_merges=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    elif name == "qwen2":
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    else:
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        specials = ["<|endoftext|>", "<|padding|>"]
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train(files, trainer)
    tok.add_special_tokens(specials)
    if name == "llama3":
        bos = "<|begin_of_text|>"
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, tok.token_to_id(bos))])])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    if name == "neox":
        tok.add_tokens([AddedToken(" " * n, normalized=True, special=False) for n in SPACE_RUNS])
    return tok


def write(name):
    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    train(name).save(os.path.join(folder, "tokenizer.json"))
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))  # exactly what the test loads
    if name == "neox":
        with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
            json.dump({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}, f, indent=2)
    texts = make_cases()[::4] + EXTRA
    seen, unique = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            unique.append(t)
    split = tok.pre_tokenizer.pre_tokenize_str
    plain = tok.encode("x", add_special_tokens=False).ids
    bos = tok.encode("x").ids[:len(tok.encode("x").ids) - len(plain)]
    with open(os.path.join(folder, "cases.jsonl"), "w", encoding="utf-8") as f:
        f.write(json.dumps({"bos": bos, "vocab_size": tok.get_vocab_size()}) + "\n")
        for t in unique:
            ids = tok.encode(t, add_special_tokens=False).ids
            pieces = [len(piece) for piece, _ in split(t)]
            assert sum(pieces) == len(t.encode("utf-8")), (name, t)
            f.write(json.dumps({"text": t, "ids": ids, "pieces": pieces}, ensure_ascii=False,
                               separators=(",", ":")) + "\n")
    size = os.path.getsize(os.path.join(folder, "cases.jsonl"))
    print(f"{name}: {len(unique)} cases ({size} bytes), vocab {tok.get_vocab_size()}, bos {bos}")


def main():
    import tokenizers
    print(f"tokenizers {tokenizers.__version__}")
    for name in ("llama3", "qwen2", "neox"):
        write(name)


if __name__ == "__main__":
    main()
