#!/usr/bin/env python3
"""Writes the SentencePiece-style BPE tokenizer fixtures of tests/ref/tokenizers/ that
tests/lm/test_sp_tokenizer.cpp reads: one BPE vocabulary of 1,024 pieces trained with the `tokenizers`
package on the local text of scripts/gen_tokenizer_fixture.py (pieces of Unicode characters, "▁" for a
space, as SentencePiece writes them), laid out and set up six ways: four as the families ship their
tokenizer.json, two for Metaspace split:

  llama2    as Llama 2 (and Mistral v0.1's "legacy" files): <unk> 0, <s> 1, </s> 2, the byte pieces
            <0x00>..<0xFF> 3..258, then the trained pieces; normalizer Sequence[Prepend("▁"),
            Replace(" ", "▁")], no pre-tokenizer (a text between special tokens is one word), BPE with
            byte_fallback and fuse_unk, post-processor TemplateProcessing("<s> $A"), decoder
            Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)]; tokenizer_config.json
            with add_bos_token true
  gemma     as Gemma / Gemma 2: <pad> 0, <eos> 1, <bos> 2, <unk> 3, the byte pieces 4..259, the trained
            pieces, then <start_of_turn> and <end_of_turn> (special); normalizer Replace(" ", "▁"),
            pre-tokenizer Split(" ", merged_with_previous) (what transformers' GemmaConverter writes),
            TemplateProcessing("<bos> $A"), decoder Sequence[Replace, ByteFallback, Fuse]
  mistral   as newer Llama / Mistral files ("legacy": false): no normalizer, pre-tokenizer
            Metaspace("▁", prepend_scheme "first", split false), decoder Metaspace, TemplateProcessing
            ("<s> $A")
  metaspace older conversions: Metaspace("▁", prepend_scheme "always", split true), BPE without byte
            fallback: characters outside the vocabulary become <unk> (fuse_unk false); no post-processor
  split_first, split_never
            Metaspace("▁", prepend_scheme "first" / "never", split true), laid out as mistral, with
            merges across a "▁" ranked first (a letter or a mark, then "▁": pieces "a▁", ...), which a
            vocabulary trained with split on never has: they show where each piece begins (a segment
            without a prepended "▁", as after a special token or under "never", is cut before its
            first "▁" too). Their cases are the strings written here and every 16th of the others.

For the styles whose decoder has ByteFallback (llama2, gemma), decode_cases.jsonl holds
{"ids", "decoded"} for id lists that end or break a character's byte pieces (what a generation cut
short gives): tokenizers writes one U+FFFD per piece of a run that is not valid UTF-8.

For each, tests/ref/tokenizers/NAME/ holds tokenizer.json (and tokenizer_config.json) and cases.jsonl:
a first line {"bos": ids the post-processor puts before a text, "vocab_size", "transformers_bos":
what transformers' AutoTokenizer puts before it from the folder}, then {"text", "ids", "decoded"}
for every 4th string of scripts/gen_tokenizer_fixture.py's cases (every script, emoji, combining
marks, white space runs, digits, random mixtures) and strings written here for what these tokenizers
do differently (leading, trailing and repeated spaces, "▁" itself in the text, characters outside the
vocabulary, the special tokens and byte pieces written as text). ids = encode(text,
add_special_tokens=False).ids; decoded = decode(ids, skip_special_tokens=False).

Run:  python3 scripts/gen_sp_tokenizer_fixtures.py   (tokenizers 0.23.3 and transformers 5.25 made
the committed files)
"""
import json
import os
import shutil
import sys
import tempfile

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_tokenizer_fixture import make_cases, training_files  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "ref", "tokenizers")
PIECES = 1024
SPACE = "\u2581"
BYTES = [f"<0x{b:02X}>" for b in range(256)]

EXTRA = [
    # spaces: leading, trailing, repeated, alone; tabs and line ends (byte pieces when not in the vocabulary)
    "", " ", "  ", "   ", " a", "  a", "a ", "a  ", "a  b", "a   b", " a b ", "\ta", "a\nb", "a\n\nb", "\r\n", " \n ",
    "hello world", "Hello World", "  hello  world  ", "end.\n", "x" + " " * 9 + "y",
    # the meta symbol itself, and look-alikes
    SPACE, SPACE + "a", "a" + SPACE + "b", SPACE * 3, "_a", "a_b", "\u2582",
    # characters the vocabulary lacks: byte pieces (or <unk>)
    "é", "ü", "ß", "ñ", "Ω", "Ж", "中", "日本", "한", "😀", "👍🏽", "👩‍💻", "🇫🇷", "\x00", "\x7f", "\u00a0", "\u200b", "\ufeff",
    "a😀b", "😀😀", " 😀", "x\u0301", "\U0001F9D1\u200d\U0001F680", "\U00010348", "\uffff", "\U0010FFFD",
    # special tokens and byte pieces written as text
    "<s>", "</s>", "<unk>", "<pad>", "<bos>", "<eos>", "<s>hello", "hello</s>", "a<s>b", "<s> a", " <s>", "<s><s>",
    "<start_of_turn>user\nhi<end_of_turn>", "<0x41>", "<0x0A>", "<0xZZ>", "<s", "s>", "<<s>>",
    # words the vocabulary has whole, and their pieces
    "the", " the", "The", "license", "License", "licenses", "software", "Software Foundation", "vim", ":help",
    "Copyright (C) 2007", "GNU General Public License", "WITHOUT ANY WARRANTY", "distribute", "redistribute",
]


def train(size=PIECES):
    """The trained pieces and merges (special tokens and byte pieces excluded), in rank order: size - 1
    pieces (the trainer counts <unk>)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=size, min_frequency=2, show_progress=False, special_tokens=["<unk>"])
    tok.train(training_files(), trainer)
    spec = json.loads(tok.to_str())
    vocab = sorted(spec["model"]["vocab"].items(), key=lambda item: item[1])
    pieces = [p for p, _ in vocab if p != "<unk>"]
    merges = [m if isinstance(m, list) else m.split(" ") for m in spec["model"]["merges"]]
    return pieces, merges


# Strings for the split styles: text after a special token, spaces within a piece's first bytes.
SPLIT_EXTRA = ["<s>a b", "<s>ab cd ef", "a b", "xa b", "a b<s>c d", "<s>a", "<s> a b", ". a", "<s>.a b.",
               "hello world<s>hello world", "a" + SPACE + "b", "<s>a" + SPACE + "b", "ab  cd", "<s>a  b"]
CROSS = list("abcdefghijklmnopqrstuvwxyz.,")


def added(content, id_, special=True):
    return {"id": id_, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": not special, "special": special}


def template(bos, bos_id):
    return {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}


def spec_for(style, pieces, merges):
    """The tokenizer.json of one style (see the module docstring) and its tokenizer_config.json."""
    if style == "gemma":
        head = ["<pad>", "<eos>", "<bos>", "<unk>"]
        tail = ["<start_of_turn>", "<end_of_turn>"]
    else:
        head, tail = ["<unk>", "<s>", "</s>"], []
    with_bytes = style != "metaspace"
    if style.startswith("split_"):  # merges across a "▁", ranked first
        pieces = pieces + [c + SPACE for c in CROSS]
        merges = [[c, SPACE] for c in CROSS] + merges
    order = head + (BYTES if with_bytes else []) + pieces + tail
    vocab = {p: i for i, p in enumerate(order)}
    assert len(vocab) == len(order), "a piece repeats"
    specials = [added(p, vocab[p]) for p in head + tail]
    model = {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": style != "metaspace", "byte_fallback": with_bytes,
             "ignore_merges": False, "vocab": vocab, "merges": merges}
    spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": specials, "model": model}
    config = {}
    if style == "llama2":
        spec["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": SPACE}, {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]}
        spec["pre_tokenizer"] = None
        spec["post_processor"] = template("<s>", vocab["<s>"])
        spec["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
        config = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
                  "unk_token": "<unk>", "legacy": True, "tokenizer_class": "LlamaTokenizer"}
    elif style == "gemma":
        spec["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
        spec["pre_tokenizer"] = {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious",
                                 "invert": False}
        spec["post_processor"] = template("<bos>", vocab["<bos>"])
        spec["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}]}
        config = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<bos>", "eos_token": "<eos>",
                  "pad_token": "<pad>", "unk_token": "<unk>", "tokenizer_class": "GemmaTokenizer"}
    elif style == "mistral" or style.startswith("split_"):
        scheme = "never" if style == "split_never" else "first"
        split = style.startswith("split_")
        spec["normalizer"] = None
        spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": SPACE, "prepend_scheme": scheme,
                                 "split": split}
        spec["post_processor"] = template("<s>", vocab["<s>"])
        spec["decoder"] = {"type": "Metaspace", "replacement": SPACE, "prepend_scheme": scheme, "split": split}
        config = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
                  "unk_token": "<unk>", "legacy": False, "tokenizer_class": "LlamaTokenizer"}
    else:
        spec["normalizer"] = None
        spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": SPACE, "prepend_scheme": "always",
                                 "split": True}
        spec["post_processor"] = None
        spec["decoder"] = {"type": "Metaspace", "replacement": SPACE, "prepend_scheme": "always", "split": True}
    return spec, config


def transformers_bos(folder):
    """The ids transformers' AutoTokenizer puts before a text, from the folder as saved."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    tok = AutoTokenizer.from_pretrained(folder)
    plain = tok("x", add_special_tokens=False)["input_ids"]
    full = tok("x")["input_ids"]
    assert full[len(full) - len(plain):] == plain, (folder, full, plain)
    return full[:len(full) - len(plain)]


def write_decode_cases(tok, folder):
    """decode_cases.jsonl: id lists with byte pieces cut short or broken, and tokenizers' decode of each."""
    byte = {b: tok.token_to_id(f"<0x{b:02X}>") for b in range(256)}
    a, b = tok.token_to_id("a"), tok.token_to_id("b")
    bos = tok.token_to_id("<s>") if tok.token_to_id("<s>") is not None else tok.token_to_id("<bos>")
    e_acute, check = [byte[0xC3], byte[0xA9]], [byte[0xE2], byte[0x9C], byte[0x93]]
    smile = [byte[0xF0], byte[0x9F], byte[0x98], byte[0x80]]
    lists = [e_acute, smile, check + [a], [byte[0xE2], byte[0x96], a], e_acute + [byte[0xFF], a],
             [a] + smile[:3], [byte[0xFF]], [byte[0xC3], b, byte[0xA9]], [a] + e_acute + [bos] + smile[1:],
             smile[:2] + smile[:2], [byte[0x80]] + e_acute, [bos] + check[:2], e_acute + smile + [byte[0xC3]],
             [byte[0x41], byte[0x0A]], [byte[0xED], byte[0xA0], byte[0x80]], [byte[0xC0], byte[0xAF]]]
    with open(os.path.join(folder, "decode_cases.jsonl"), "w", encoding="utf-8") as f:
        for ids in lists:
            f.write(json.dumps({"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)},
                               ensure_ascii=False, separators=(",", ":")) + "\n")


def write(style, pieces, merges, texts):
    folder = os.path.join(OUT, "sp_" + style)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    spec, config = spec_for(style, pieces, merges)
    path = os.path.join(folder, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False, indent=1)
    if config:
        with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
            json.dump(config, f, indent=2)
    tok = Tokenizer.from_file(path)  # exactly what the test loads
    plain = tok.encode("x", add_special_tokens=False).ids
    full = tok.encode("x").ids
    bos = full[:len(full) - len(plain)]
    with tempfile.TemporaryDirectory() as scratch:  # AutoTokenizer on a copy (it may write nothing, but be safe)
        for name in os.listdir(folder):
            shutil.copy(os.path.join(folder, name), scratch)
        hf_bos = transformers_bos(scratch) if config else bos
    with open(os.path.join(folder, "cases.jsonl"), "w", encoding="utf-8") as f:
        f.write(json.dumps({"bos": bos, "vocab_size": tok.get_vocab_size(), "transformers_bos": hf_bos}) + "\n")
        for t in texts:
            ids = tok.encode(t, add_special_tokens=False).ids
            decoded = tok.decode(ids, skip_special_tokens=False)
            f.write(json.dumps({"text": t, "ids": ids, "decoded": decoded}, ensure_ascii=False,
                               separators=(",", ":")) + "\n")
    if style in ("llama2", "gemma"):
        write_decode_cases(tok, folder)
    size = os.path.getsize(os.path.join(folder, "cases.jsonl"))
    print(f"sp_{style}: {len(texts)} cases ({size} bytes), vocab {tok.get_vocab_size()}, bos {bos}, "
          f"transformers' bos {hf_bos}")


def main():
    import tokenizers
    print(f"tokenizers {tokenizers.__version__}")
    pieces, merges = train()
    texts, seen = [], set()
    for t in make_cases()[::4] + EXTRA:
        if t not in seen:
            seen.add(t)
            texts.append(t)
    for style in ("llama2", "gemma", "mistral", "metaspace"):
        write(style, pieces, merges, texts)
    split_texts, seen = [], set()
    for t in SPLIT_EXTRA + EXTRA + make_cases()[::16]:
        if t not in seen:
            seen.add(t)
            split_texts.append(t)
    for style in ("split_first", "split_never"):
        write(style, pieces, merges, split_texts)


if __name__ == "__main__":
    main()
