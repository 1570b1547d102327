// The pre-tokenisation patterns of byte-level BPE tokenizers, written by hand (no regex engine): the
// text is cut into pieces, the consecutive matches of the pattern, each then merged by BPE on its
// own. Three patterns, matched as Oniguruma matches them inside the `tokenizers` package (Unicode
// classes from lm/unicode_tables.h: \p{L} letters, \p{N} numbers, \s White_Space):
//   Gpt2    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//           (GPT-2's, GPT-Neo's, GPT-NeoX's / Pythia's ByteLevel pre-tokenizer)
//   Llama3  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//           \s*[\r\n]+|\s+(?!\S)|\s+   (Llama 3's Split)
//   Qwen2   the same with \p{N} one at a time (Qwen 2's Split)
// Text must be valid UTF-8 (io/utf8.h check_utf8). Together the pieces cover every byte.
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sae {

enum class SplitPattern { Gpt2, Llama3, Qwen2 };

// The pattern a Split pre-tokenizer's regex (as tokenizer.json holds it, JSON-decoded) is, when it
// is one of ours.
std::optional<SplitPattern> split_pattern_of_regex(const std::string& regex);
std::string split_pattern_regex(SplitPattern pattern);

// Appends the pieces of `text` to `pieces` (views into text).
void pre_tokenize(SplitPattern pattern, std::string_view text, std::vector<std::string_view>& pieces);

// GPT-2's pattern (kept for its tests and the fuzz harness).
std::vector<std::string_view> gpt2_pre_tokenize(std::string_view text);

}  // namespace sae
