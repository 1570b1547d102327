#!/usr/bin/env python3
"""Writes the GPT-2 tokenizer fixtures in tests/ref/tokenizer/ that tests/lm/test_tokenizer.cpp reads.
The C++ tests need no Python; the files are committed. Re-run with:

    python3 scripts/gen_tokenizer_fixture.py [--slow-python PATH]

1. A byte-level BPE trained with the `tokenizers` package exactly as GPT-2's is set up: ByteLevel
   pre-tokenizer (add_prefix_space=False, GPT-2's pattern), ByteLevel decoder and post-processor,
   no normalizer, the 256 byte tokens as the initial alphabet, vocab of 4,096 learned tokens, then
   <|endoftext|> added as a special token with the next id (4096; like GPT-2's 50256, the last).
   Training text, all found on a Debian machine: the regular files in /usr/share/common-licenses/
   (GPL, LGPL, Apache, MPL, GFDL, Artistic, BSD, CC0) and Vim's user manual,
   /usr/share/vim/vim90/doc/usr_*.txt. Written as tokenizer.json (merges as [a, b] pairs, as
   tokenizers >= 0.20 writes them; the test makes the "a b" variant itself), vocab.json (with
   <|endoftext|>, as GPT-2's has) and merges.txt.
2. cases.jsonl: one JSON object per line, {"text": ..., "ids": [...], "pieces": [...]}: ids from
   `tokenizers` (Tokenizer.encode(text, add_special_tokens=False)) and the byte lengths of the pieces
   its ByteLevel pre-tokenizer cuts the text into (pre_tokenize_str; <|endoftext|> is plain text
   there). The pieces catch split errors that a small vocabulary hides: with few merges across a
   piece boundary, a wrong split often gives the same ids. Several thousand strings, seeded: English
   sentences and fragments from Vim's reference manual (not used for training) and the licences;
   letters and digits of other scripts; emoji with ZWJ and skin tones; combining marks; white-space
   runs of every White_Space character; contractions in both cases; stray apostrophes; the special
   token inside and next to words; letters new in Unicode 15-17; random mixtures of all of these.
3. witnesses.txt: the same strings encoded by transformers' slow, pure-Python GPT2Tokenizer
   (the `regex` module, transformers < 5; run with --slow-python pointing at a Python that has it,
   since transformers >= 5 has only the tokenizers-backed class) from vocab.json + merges.txt, and
   every disagreement with `tokenizers`. Expected disagreements: characters that are letters or
   numbers in Unicode 17 (the `regex` module's tables) but unassigned in Unicode 16 (Oniguruma's,
   used by tokenizers; see scripts/gen_unicode_tables.py).
Needs: tokenizers (0.23.3 made the committed files) and unicodedata2==16.0.0.
"""
import argparse
import glob
import json
import os
import random
import subprocess
import sys
import unicodedata

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "ref", "tokenizer")
EOT = "<|endoftext|>"
VOCAB_SIZE = 4096
SEED = 20261130


def training_files():
    licences = sorted(p for p in glob.glob("/usr/share/common-licenses/*") if os.path.isfile(p) and not os.path.islink(p))
    manual = sorted(glob.glob("/usr/share/vim/vim90/doc/usr_*.txt"))
    if not licences or not manual:
        sys.exit("training text not found: needs /usr/share/common-licenses and /usr/share/vim/vim90/doc (apt-get install vim-runtime)")
    return licences + manual


def train(files):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train(files, trainer)
    tok.add_special_tokens([EOT])
    return tok


def save(tok):
    os.makedirs(OUT, exist_ok=True)
    tok.save(os.path.join(OUT, "tokenizer.json"))
    spec = json.loads(tok.to_str())
    vocab = dict(spec["model"]["vocab"])
    vocab[EOT] = tok.token_to_id(EOT)
    with open(os.path.join(OUT, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(OUT, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for merge in spec["model"]["merges"]:
            f.write((merge if isinstance(merge, str) else " ".join(merge)) + "\n")


# ---- test strings ----

SCRIPTS = {
    "greek": "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο. Ωραία!",
    "cyrillic": "Съешь же ещё этих мягких французских булок, да выпей чаю. Ёлка ҐЄЇ Ꙋ",
    "cjk": "我能吞下玻璃而不伤身体。日本語のテキスト、カタカナとひらがな。한국어 문장입니다.",
    "arabic": "نص حكيم له سر قاطع وذو شأن عظيم ١٢٣٤٥٦٧٨٩٠ مكتوب على ثوب أخضر",
    "devanagari": "ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले ०१२३४५६७८९",
    "thai": "เป็นมนุษย์สุดประเสริฐเลิศคุณค่า ๐๑๒๓๔๕๖๗๘๙ บาท",
    "hebrew": "דג סקרן שט בים מאוכזב ולפתע מצא חברה",
    "fullwidth": "ＡＢＣ ｄｅｆ ０１２３４５６７８９ ！？（）",
    "numbers": "Ⅰ Ⅱ Ⅻ ⅻ ½ ¾ ² ³ ¹ ⁴ ① ② ⑳ ㊿ 𝟘𝟙𝟚 ᛮ ⅓ 〇 〡〢 𐄇 𒐀",
    "math": "𝐀𝐁𝐂 𝑎𝑏𝑐 ∀x∈ℝ: x²≥0 ∑ᵢ aᵢ ≈ ∞ ℵ₀ ħ ℏ",
    "latin": "Ça s'écrit naïve façade, Ærøskøbing, Straße, İstanbul, ǅemal, ĳ, ŉ, Ȿ, ꞵ",
    "misc_letters": "ᐊᐃᐅ ᚠᚢᚦ ꓐꓑ ߊߋ ܐܒ ގ ⴰⴱ ꦄ ᮃ ሀሁ ᎠᎡ",
}

EMOJI = ["😀", "👍", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇫🇷", "🧑🏿‍🚀", "✋🏻", "🫶", "🙂‍↔️", "#️⃣", "1️⃣", "©️", "🐈‍⬛"]

COMBINING = ["e\u0301", "a\u0308\u0304", "n\u0303", "Z\u0335\u0336", "\u0301", "\u0301abc", "x\u20d7", "क\u093f",
             "क्\u200dष", "ঁ", "ا\u064e", "\u0e31", "ก\u0e34\u0e48", "\u3099", "i\u0307", "\u200d", "\u200c", "\ufe0f"]

SPACES = [" ", "  ", "   ", "\t", "\n", "\r", "\r\n", "\n\n", "\x0b", "\x0c", "\x85", "\u00a0", "\u1680", "\u2000",
          "\u2002", "\u2003", "\u2009", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000",
          # not White_Space (so "other" characters): zero-width space, BOM, Mongolian vowel separator
          "\u200b", "\ufeff", "\u180e", "\x1c", "\x1f"]

CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M", "'LL", "'D", "'Re", "'rE",
                "'st", "'ss", "'mm", "'lll", "'x", "'", "''", "'''", "’s", "‘t", "`s", "'1", "' s"]

WORDS = ["don't", "DON'T", "Don't", "it's", "IT'S", "we've", "WE'VE", "they're", "I'm", "I'M", "you'll", "YOU'LL", "he'd",
         "HE'D", "can't", "won't", "o'clock", "rock'n'roll", "'tis", "'Twas", "students'", "the '90s", "'quoted'",
         "it’s", "don’t", "y'all", "ma'am", "Mc'Donald", "l'amour", "aujourd'hui", "'s'", "a'b'c'd", "x''s", "!'s", "5's"]

PUNCT = [".", ",", "!", "?", "...", "!!!", "?!", "--", "—", "–", "(", ")", "[", "]", "{", "}", "<", ">", "<<", ">>", "\"",
         "“", "”", "«", "»", "/", "\\", "|", "||", "@", "#", "$", "%", "^", "&", "*", "_", "__", "+", "=", "~", "`", ";", ":",
         "::", "->", "=>", "…", "•", "·", "§", "¶", "©", "®", "™", "€", "£", "¥", "¤", "°", "±", "×", "÷", "¬", "\u00ad", "\x7f",
         "\x00", "\x01", "\x1b", "\x80", "\x9f", "۔", "।", "。", "、", "？", "！", "؟", "¿", "¡"]

DIGITS = ["0", "1", "42", "2024", "3.14159", "1,000,000", "1e10", "0x1F", "v2.0.1", "10:30", "24/7", "-5", "+7", "007",
          "١٢٣", "०९", "๓๔", "０１２", "Ⅻ", "½", "²", "①", "𝟗", "12345678901234567890", "٣.١٤"]

MIXED = ["abc123", "123abc", "a1b2c3", "GPT2", "mp3s", "4x4", "3rd", "21st", "iPhone15", "covid19", "H2O", "β2", "x²",
         "Ⅻth", "٣rd", "Ａ１", "CO₂", "km²", "ß3", "ǅ9"]


def unicode_diff_letters():
    """Code points whose class changed between Python's unicodedata and Unicode 16 (unicodedata2
    16.0.0, required: without it these probe cases were left out silently and the committed
    fixtures were not reproduced), to probe the tables' version."""
    samples = []
    try:
        import unicodedata2
    except ImportError:
        sys.exit("gen_tokenizer_fixture.py needs unicodedata2==16.0.0 (pip install unicodedata2==16.0.0): "
                 "the committed fixtures hold its Unicode 16 probe cases")
    if unicodedata2.unidata_version != "16.0.0":
        sys.exit(f"gen_tokenizer_fixture.py needs unicodedata2==16.0.0, found Unicode {unicodedata2.unidata_version}")
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        new = unicodedata2.category(chr(cp))[0]
        old = unicodedata.category(chr(cp))[0]
        if new in "LN" and new != old:
            samples.append(chr(cp))
    # Unicode 17.0 letters and digits, unassigned in 16.0 (regex module knows them, tokenizers does not).
    samples_17 = ["\ua7ce", "\ua7cf", "\ua7d2", "\u088f", "\u0c5c", "\u0cdc", "\U00011de0", "\U00011de1"]
    return samples, samples_17


def english_lines(rng):
    files = sorted(p for p in glob.glob("/usr/share/vim/vim90/doc/*.txt") if not os.path.basename(p).startswith("usr_"))
    files += sorted(p for p in glob.glob("/usr/share/common-licenses/*") if os.path.isfile(p) and not os.path.islink(p))
    lines = []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.rstrip("\n")
                if 20 <= len(line) <= 160 and "\ufffd" not in line:
                    lines.append(line)
    rng.shuffle(lines)
    return lines


def make_cases():
    rng = random.Random(SEED)
    cases = []
    add = cases.append

    # Edge cases written out.
    for s in ["", " ", "a", "  a", "a  ", "a   b", "a \tb", "a\t b", "\n\nHello", "Hello\n\n", " \n ", "\u00a0a", " \u00a0a",
              "a\u00a0", "   ", "\t\t\t", "hello world", "Hello, World!", "  leading", "trailing  ", "x \n y", "x\r\n\r\ny",
              EOT, EOT + EOT, "a" + EOT, EOT + "a", " " + EOT + " ", "word" + EOT + "word", "<|endoftext|", "<|endoftext|>>",
              "<<|endoftext|>", "<|endoftext|><|endoftext|", "The end." + EOT + "Once upon a time", "\n" + EOT + "\n",
              "<|ENDOFTEXT|>", "<| endoftext |>", "< |endoftext|>", "'s", "'", "''s", " 's", "s's", "ab'", "'ab", "a'sb", "A'S",
              "I'M", "'ll'll", "'re're", "'''", "don'tdon't", "😀😀", " 😀", "e\u0301", "\u0301", "ﬁ", "ǲ"]:
        add(s)
    for group in (WORDS, CONTRACTIONS, PUNCT, DIGITS, MIXED, EMOJI, COMBINING, SPACES):
        for s in group:
            add(s)
            add(" " + s)
            add("x" + s + "y")
            add("the " + s + " end")
    for name, text in SCRIPTS.items():
        add(text)
        words = text.split(" ")
        for w in words:
            add(" " + w)
        for _ in range(10):
            k = rng.randrange(1, len(words) + 1)
            add(" ".join(rng.sample(words, k)))
    new_16, new_17 = unicode_diff_letters()
    for s in rng.sample(new_16, min(60, len(new_16))) + new_17:
        add(s)
        add("a" + s + "b")
        add(" " + s + s)
        add("1" + s)
        add(s + "'s")  # "other" + "'" joins into one piece; a letter leaves "'s" to its own rule

    # Every White_Space character (and some look-alikes) in runs before and after words.
    for sp in SPACES:
        for other in SPACES[:12]:
            add("a" + sp + other + "b")
            add(sp + other + "word")
            add("word" + sp + other)
        add(sp * 3 + "x")
        add("x" + sp * 3)

    # English sentences and fragments.
    lines = english_lines(rng)
    for line in lines[:1200]:
        add(line)
    for line in lines[1200:2000]:
        a = rng.randrange(len(line))
        b = rng.randrange(a, len(line) + 1)
        add(line[a:b])
    for i in range(2000, 2300, 3):  # a few multi-line passages, with the story separator
        add("\n".join(lines[i:i + 3]) + "\n" + EOT + lines[i + 3])

    # Random mixtures of every kind of atom.
    pools = [WORDS, CONTRACTIONS, PUNCT, DIGITS, MIXED, EMOJI, COMBINING, SPACES, [EOT],
             [w for text in SCRIPTS.values() for w in text.split(" ")], ["the", "a", "of", "and", "tokenizer", "Hello"],
             new_16[:200] + new_17]
    for _ in range(1800):
        parts = [rng.choice(rng.choice(pools)) for _ in range(rng.randrange(1, 12))]
        add("".join(parts) if rng.random() < 0.5 else " ".join(parts))
    # Random code points from the whole range (no surrogates), alone and next to letters.
    for _ in range(300):
        cp = rng.randrange(0x20, 0x30000)
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        add(rng.choice(["", "a", " ", "1", "!", " x"]) + c + rng.choice(["", "b", " ", "2", "?", c]))

    unique, seen = [], set()
    for s in cases:
        if s not in seen:
            seen.add(s)
            unique.append(s)
    return unique


SLOW_WITNESS = r"""
import json, sys
from transformers import GPT2Tokenizer
import transformers
tok = GPT2Tokenizer(sys.argv[1], sys.argv[2])
texts = json.load(open(sys.argv[3], encoding="utf-8"))
ids = [tok.convert_tokens_to_ids(tok.tokenize(t)) for t in texts]
print(json.dumps({"version": transformers.__version__, "ids": ids}))
"""


def slow_witness(python, texts):
    path = os.path.join(OUT, "slow_witness_input.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(texts, f)
    try:
        out = subprocess.run([python, "-c", SLOW_WITNESS, os.path.join(OUT, "vocab.json"), os.path.join(OUT, "merges.txt"), path],
                             check=True, capture_output=True, text=True).stdout
    finally:
        os.remove(path)
    result = json.loads(out.strip().splitlines()[-1])
    return result["version"], result["ids"]


def main():
    parser = argparse.ArgumentParser(description="GPT-2 tokenizer fixtures for tests/lm/test_tokenizer.cpp")
    parser.add_argument("--slow-python", help="a Python with transformers < 5 (the slow GPT2Tokenizer)")
    args = parser.parse_args()

    import tokenizers
    tok = train(training_files())
    save(tok)
    tok = Tokenizer.from_file(os.path.join(OUT, "tokenizer.json"))  # exactly what the test loads
    texts = make_cases()
    expected = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    for t, ids in zip(texts, expected):
        assert tok.decode(ids, skip_special_tokens=False) == t or EOT in t, repr(t)
    # The pre-tokenizer's pieces of the whole text (<|endoftext|> is plain text to it), as byte
    # lengths: each character of a piece in the byte alphabet is one byte.
    split = tok.pre_tokenizer.pre_tokenize_str
    with open(os.path.join(OUT, "cases.jsonl"), "w", encoding="utf-8") as f:
        for t, ids in zip(texts, expected):
            pieces = [len(piece) for piece, _ in split(t)]
            assert sum(pieces) == len(t.encode("utf-8"))
            f.write(json.dumps({"text": t, "ids": ids, "pieces": pieces}, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"tokenizers {tokenizers.__version__}: {len(texts)} cases, vocab {tok.get_vocab_size()}, eot {tok.token_to_id(EOT)}")

    lines = [f"Second witness for tests/ref/tokenizer/cases.jsonl (scripts/gen_tokenizer_fixture.py).",
             f"First witness: tokenizers {tokenizers.__version__} from tokenizer.json (the ids in cases.jsonl)."]
    if args.slow_python:
        version, slow = slow_witness(args.slow_python, texts)
        differ = [(t, a, b) for t, a, b in zip(texts, expected, slow) if a != b]
        lines.append(f"Second witness: transformers {version} GPT2Tokenizer (slow, the regex module) from vocab.json + merges.txt.")
        lines.append(f"{len(texts)} strings, {len(texts) - len(differ)} agree, {len(differ)} disagree:")
        for t, a, b in differ:
            code_points = " ".join(f"U+{ord(c):04X}" for c in t if ord(c) > 0x7E or ord(c) < 0x20)
            lines.append(f"  {json.dumps(t, ensure_ascii=True)} [{code_points}]\n    tokenizers {a}\n    slow       {b}")
        lines.append("Each string that differs holds a character that is a letter or number in Unicode 17.0 (the regex\n"
                     "module's tables) but unassigned in Unicode 16.0 (Oniguruma's, used by tokenizers), so the two\n"
                     "split it differently (see scripts/gen_unicode_tables.py). Our tokenizer follows tokenizers.")
        print(f"slow witness: {len(differ)} of {len(texts)} disagree")
    else:
        lines.append("Second witness not run (no --slow-python).")
    with open(os.path.join(OUT, "witnesses.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
