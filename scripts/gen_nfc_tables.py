#!/usr/bin/env python3
"""Writes lm/unicode_nfc_tables.cpp: the data of Unicode normalization form C (NFC) as the `tokenizers`
package applies it (the NFC normalizer of GPT-NeoX / Pythia's and Qwen 2's tokenizer.json):

  kCombiningClasses   sorted ranges of code points with a nonzero canonical combining class
  kDecompositions     each code point's canonical decomposition (one or two code points; applied
                      again at run time until nothing decomposes), Hangul syllables excepted
                      (decomposed by formula)
  kCompositions       the primary composites: the pairs (first, second) that compose, and into what

Which data. tokenizers 0.23.3's NFC (Rust unicode-normalization-alignments) is probed here: it
agrees with Unicode 16.0.0 (PyPI unicodedata2 16.0.0) on every single code point, but does not
compose the pairs of the composites new in Unicode 16.0 (Tulu-Tigalari, Todhri, Gurung Khema, ...):
its tables are older. So the tables start from Unicode 16.0.0 and leave out every decomposition
and composition that tokenizers does not perform, and every combining class it does not know
(found by probing each mark's reordering); then a Python NFC written from the tables is compared
with tokenizers' on every code point, every canonical pair, every mark after every other mark
class, and random mixtures, and the script fails on any difference.

Run:  pip install "unicodedata2==16.0.0" && python3 scripts/gen_nfc_tables.py
"""
import os
import random
import sys

import unicodedata2 as u2
from tokenizers import normalizers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SBASE, LBASE, VBASE, TBASE = 0xAC00, 0x1100, 0x1161, 0x11A7
LCOUNT, VCOUNT, TCOUNT = 19, 21, 28
NCOUNT, SCOUNT = VCOUNT * TCOUNT, LCOUNT * VCOUNT * TCOUNT
HF = normalizers.NFC()


def code_points():
    return [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000]


def hf_nfc_many(strings):
    """tokenizers' NFC of many strings at once (joined by U+0000, which NFC leaves alone)."""
    out = HF.normalize_str("\x00".join(strings)).split("\x00")
    assert len(out) == len(strings)
    return out


def tables_from_unicode():
    ccc, decomp = {}, {}
    for cp in code_points():
        c = chr(cp)
        if u2.combining(c):
            ccc[cp] = u2.combining(c)
        d = u2.decomposition(c)
        if d and not d.startswith("<") and not SBASE <= cp < SBASE + SCOUNT:
            decomp[cp] = [int(x, 16) for x in d.split()]
    compose = {}
    for cp, parts in decomp.items():
        c = chr(cp)
        # A primary composite: its pair composes back (not excluded, not a non-starter decomposition).
        if len(parts) == 2 and u2.normalize("NFC", u2.normalize("NFD", c)) == c and u2.combining(c) == 0 and \
                u2.combining(chr(parts[0])) == 0:
            compose[(parts[0], parts[1])] = cp
    return ccc, decomp, compose


def nfc(text, ccc, decomp, compose):
    """NFC from the tables, as lm/unicode_nfc.cpp computes it."""
    out = []

    def decompose(cp):
        if SBASE <= cp < SBASE + SCOUNT:
            s = cp - SBASE
            out.append(LBASE + s // NCOUNT)
            out.append(VBASE + (s % NCOUNT) // TCOUNT)
            if s % TCOUNT:
                out.append(TBASE + s % TCOUNT)
        elif cp in decomp:
            for p in decomp[cp]:
                decompose(p)
        else:
            out.append(cp)

    for ch in text:
        decompose(ord(ch))
    # canonical ordering
    i = 1
    while i < len(out):
        a, b = ccc.get(out[i - 1], 0), ccc.get(out[i], 0)
        if b and a > b:
            out[i - 1], out[i] = out[i], out[i - 1]
            i = max(1, i - 1)
        else:
            i += 1
    if not out:
        return ""

    def pair(first, second):
        if LBASE <= first < LBASE + LCOUNT and VBASE <= second < VBASE + VCOUNT:
            return SBASE + ((first - LBASE) * VCOUNT + second - VBASE) * TCOUNT
        if SBASE <= first < SBASE + SCOUNT and (first - SBASE) % TCOUNT == 0 and TBASE < second < TBASE + TCOUNT:
            return first + second - TBASE
        return compose.get((first, second))

    starter_pos, starter = 0, out[0]
    last_class = 256 if ccc.get(starter, 0) else 0
    kept = 1
    for pos in range(1, len(out)):
        ch = out[pos]
        cls = ccc.get(ch, 0)
        composite = pair(starter, ch)
        if composite is not None and (last_class < cls or last_class == 0):
            out[starter_pos] = composite
            starter = composite
        else:
            if cls == 0:
                starter_pos, starter = kept, ch
            last_class = cls
            out[kept] = ch
            kept += 1
    return "".join(chr(c) for c in out[:kept])


def fit_to_tokenizers(ccc, decomp, compose):
    """Drops what tokenizers' NFC does not do (see the module docstring)."""
    # Pairs it does not compose: their composites are unknown to it (it leaves them as they are).
    pairs = list(compose.items())
    got = hf_nfc_many(["".join(map(chr, p)) for p, _ in pairs])
    for (p, cp), g in zip(pairs, got):
        if g != chr(cp):
            del compose[p]
            decomp.pop(cp, None)
    # Marks whose class it does not know: after "#" (which composes with nothing) and a mark of class
    # 240, 230, 220 or 1, a mark of class c is reordered before it exactly when c < that class.
    marks = sorted(ccc)
    for other in (0x0345, 0x0301, 0x0316, 0x0334):
        tests = ["#" + chr(other) + chr(m) for m in marks]  # "#" composes with nothing
        got = hf_nfc_many(tests)
        for m, t, g in zip(marks, tests, got):
            if m in ccc and g != nfc(t, ccc, decomp, compose):
                del ccc[m]


def verify(ccc, decomp, compose):
    rng = random.Random(7)
    cps = code_points()
    cases = [chr(cp) for cp in cps if cp]
    cases += ["".join(map(chr, d)) for d in decomp.values()]
    marks = sorted(ccc)
    cases += ["a" + chr(m) + chr(n) for m in marks[::3] for n in marks[::7]]
    interesting = [cp for cp in cps if cp in decomp or cp in ccc or SBASE <= cp < SBASE + SCOUNT or
                   LBASE <= cp < LBASE + 0x100] + [0x41, 0x61, 0x20, 0x3B1]
    for _ in range(20000):
        cases.append("".join(chr(rng.choice(interesting)) for _ in range(rng.randint(1, 8))))
    got = hf_nfc_many(cases)
    bad = [(c, g) for c, g in zip(cases, got) if g != nfc(c, ccc, decomp, compose)]
    if bad:
        for c, g in bad[:10]:
            print("differs:", [hex(ord(x)) for x in c], "tokenizers", [hex(ord(x)) for x in g],
                  "ours", [hex(ord(x)) for x in nfc(c, ccc, decomp, compose)])
        sys.exit(f"{len(bad)} of {len(cases)} strings differ from tokenizers' NFC")
    return len(cases)


def ccc_ranges(ccc):
    out = []
    for cp in sorted(ccc):
        if out and out[-1][1] == cp - 1 and out[-1][2] == ccc[cp]:
            out[-1][1] = cp
        else:
            out.append([cp, cp, ccc[cp]])
    return out


def write(ccc, decomp, compose, checked):
    lines = [
        "// GENERATED by scripts/gen_nfc_tables.py from Unicode 16.0.0 (PyPI unicodedata2==16.0.0), fitted to",
        "// the NFC of the `tokenizers` package (see the script). Do not edit.",
        f"// {len(ccc)} code points with a nonzero combining class, {len(decomp)} canonical decompositions,",
        f"// {len(compose)} primary composites; checked against tokenizers on {checked} strings.",
        '#include "lm/unicode_nfc.h"',
        "",
        "namespace sae::unicode {",
        "",
        "// clang-format off",
        "const CombiningClassRange kCombiningClasses[] = {",
    ]
    ranges = ccc_ranges(ccc)
    row = []
    for first, last, cls in ranges:
        row.append(f"{{0x{first:X}, 0x{last:X}, {cls}}}")
        if len(row) == 6:
            lines.append("  " + ", ".join(row) + ",")
            row = []
    if row:
        lines.append("  " + ", ".join(row) + ",")
    lines += ["};", f"const size_t kCombiningClassCount = {len(ranges)};", "",
              "const Decomposition kDecompositions[] = {"]
    row = []
    for cp in sorted(decomp):
        parts = decomp[cp] + [0]
        row.append(f"{{0x{cp:X}, 0x{parts[0]:X}, 0x{parts[1]:X}}}")
        if len(row) == 5:
            lines.append("  " + ", ".join(row) + ",")
            row = []
    if row:
        lines.append("  " + ", ".join(row) + ",")
    lines += ["};", f"const size_t kDecompositionCount = {len(decomp)};", "",
              "const Composition kCompositions[] = {"]
    row = []
    for (a, b) in sorted(compose):
        row.append(f"{{0x{a:X}, 0x{b:X}, 0x{compose[(a, b)]:X}}}")
        if len(row) == 5:
            lines.append("  " + ", ".join(row) + ",")
            row = []
    if row:
        lines.append("  " + ", ".join(row) + ",")
    lines += ["};", f"const size_t kCompositionCount = {len(compose)};", "// clang-format on", "",
              "}  // namespace sae::unicode", ""]
    path = os.path.join(ROOT, "lm", "unicode_nfc_tables.cpp")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {path}: {len(ranges)} class ranges, {len(decomp)} decompositions, {len(compose)} compositions")


def main():
    assert u2.unidata_version == "16.0.0", u2.unidata_version
    ccc, decomp, compose = tables_from_unicode()
    fit_to_tokenizers(ccc, decomp, compose)
    checked = verify(ccc, decomp, compose)
    write(ccc, decomp, compose, checked)


if __name__ == "__main__":
    main()
