// The pre-tokenisation patterns (see pre_tokenizer.h), each a loop that tries the pattern's
// alternatives in order at every position, as a backtracking regex engine would.
#include "lm/pre_tokenizer.h"

#include "lm/unicode_tables.h"
#include "io/utf8.h"

namespace sae {

namespace {

// ---- character classes ----

enum class CharClass : uint8_t { Letter, Number, Space, Other };

struct AsciiClasses {
  CharClass of[128];
  AsciiClasses() {
    for (uint32_t c = 0; c < 128; ++c) {
      if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        of[c] = CharClass::Letter;
      } else if (c >= '0' && c <= '9') {
        of[c] = CharClass::Number;
      } else if (c == ' ' || (c >= 0x09 && c <= 0x0D)) {
        of[c] = CharClass::Space;
      } else {
        of[c] = CharClass::Other;
      }
    }
  }
};
const AsciiClasses kAsciiClasses;

CharClass char_class(uint32_t code_point) {
  if (code_point < 128) return kAsciiClasses.of[code_point];
  if (unicode::is_letter(code_point)) return CharClass::Letter;
  if (unicode::is_number(code_point)) return CharClass::Number;
  if (unicode::is_white_space(code_point)) return CharClass::Space;
  return CharClass::Other;
}

// The code point at a position of valid UTF-8 text, with its length and class.
struct Char {
  uint32_t code_point;
  size_t length;
  CharClass cls;
};

Char char_at(std::string_view text, size_t pos) {
  const uint8_t lead = static_cast<uint8_t>(text[pos]);
  if (lead < 0x80) return {lead, 1, kAsciiClasses.of[lead]};
  Char c;
  c.code_point = utf8::decode(text, pos, c.length);
  c.cls = char_class(c.code_point);
  return c;
}

bool is_newline(uint32_t cp) { return cp == '\r' || cp == '\n'; }

// The end of the run of `cls` characters starting at pos (at most `max` of them; 0: no limit).
size_t run_end(std::string_view text, size_t pos, CharClass cls, size_t max = 0) {
  size_t count = 0;
  while (pos < text.size() && (max == 0 || count < max)) {
    const Char c = char_at(text, pos);
    if (c.cls != cls) break;
    pos += c.length;
    ++count;
  }
  return pos;
}

// ---- contractions ----

// Length of 's 't 're 've 'm 'll 'd (lower case only) at text[pos], or 0.
size_t contraction_length(std::string_view text, size_t pos) {
  if (text[pos] != '\'' || pos + 1 >= text.size()) return 0;
  const char a = text[pos + 1];
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (pos + 2 >= text.size()) return 0;
  const char b = text[pos + 2];
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

// The same, any case ((?i:...)): Oniguruma also folds U+017F LATIN SMALL LETTER LONG S to s and
// U+212A KELVIN SIGN to k (no contraction has a k).
size_t contraction_length_any_case(std::string_view text, size_t pos) {
  if (text[pos] != '\'' || pos + 1 >= text.size()) return 0;
  const auto lower = [&](size_t at) -> char {
    const char c = text[at];
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  };
  if (static_cast<uint8_t>(text[pos + 1]) == 0xC5 && pos + 2 < text.size() &&
      static_cast<uint8_t>(text[pos + 2]) == 0xBF)
    return 3;  // 'ſ
  const char a = lower(pos + 1);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (pos + 2 >= text.size()) return 0;
  const char b = lower(pos + 2);
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

// ---- the patterns ----

// White space at pos (a Space character): \s+(?!\S) then \s+ — the run up to the end of the text,
// or all but its last character when something else follows and the run has two or more, or the
// lone character before something else.
size_t white_space_piece_end(std::string_view text, size_t pos) {
  size_t last_start = pos, count = 0;
  while (pos < text.size()) {
    const Char c = char_at(text, pos);
    if (c.cls != CharClass::Space) break;
    last_start = pos;
    pos += c.length;
    ++count;
  }
  if (pos < text.size() && count >= 2) pos = last_start;  // leave the last one to join what follows
  return pos;
}

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
void gpt2_pieces(std::string_view text, std::vector<std::string_view>& pieces) {
  const size_t n = text.size();
  size_t pos = 0;
  while (pos < n) {
    const size_t start = pos;
    const size_t contraction = contraction_length(text, pos);
    if (contraction > 0) {
      pos += contraction;
      pieces.push_back(text.substr(start, contraction));
      continue;
    }
    const Char first = char_at(text, pos);
    // A run of letters, numbers or "other" characters, after an optional U+0020 (taken only when
    // such a run follows).
    size_t run_start = pos;
    CharClass run_class = first.cls;
    if (first.code_point == ' ' && pos + 1 < n) {
      const Char next = char_at(text, pos + 1);
      if (next.cls != CharClass::Space) {
        run_start = pos + 1;
        run_class = next.cls;
      }
    }
    pos = run_class != CharClass::Space ? run_end(text, run_start, run_class) : white_space_piece_end(text, pos);
    pieces.push_back(text.substr(start, pos - start));
  }
}

// Llama 3 (max_digits 3) and Qwen 2 (1):
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//   \s*[\r\n]+|\s+(?!\S)|\s+
void llama3_pieces(std::string_view text, size_t max_digits, std::vector<std::string_view>& pieces) {
  const size_t n = text.size();
  size_t pos = 0;
  while (pos < n) {
    const size_t start = pos;
    const size_t contraction = contraction_length_any_case(text, pos);
    if (contraction > 0) {
      pos += contraction;
      pieces.push_back(text.substr(start, contraction));
      continue;
    }
    const Char first = char_at(text, pos);
    const bool has_next = pos + first.length < n;
    const Char next = has_next ? char_at(text, pos + first.length) : Char{0, 0, CharClass::Space};
    if (first.cls == CharClass::Letter) {
      // [^\r\n\p{L}\p{N}]? \p{L}+ without the optional character
      pos = run_end(text, pos, CharClass::Letter);
    } else if (first.cls != CharClass::Number && !is_newline(first.code_point) && has_next &&
               next.cls == CharClass::Letter) {
      // one character that is no letter, number, CR or LF, then letters
      pos = run_end(text, pos + first.length, CharClass::Letter);
    } else if (first.cls == CharClass::Number) {
      pos = run_end(text, pos, CharClass::Number, max_digits);
    } else if (first.cls == CharClass::Other || (first.code_point == ' ' && has_next && next.cls == CharClass::Other)) {
      // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
      if (first.code_point == ' ') pos += 1;
      pos = run_end(text, pos, CharClass::Other);
      while (pos < n && is_newline(static_cast<uint8_t>(text[pos]))) ++pos;
    } else {
      // White space. \s*[\r\n]+: the run up to and including its last CR or LF, when it has one.
      size_t end = pos, after_newline = 0;
      while (end < n) {
        const Char c = char_at(text, end);
        if (c.cls != CharClass::Space) break;
        end += c.length;
        if (is_newline(c.code_point)) after_newline = end;
      }
      pos = after_newline > 0 ? after_newline : white_space_piece_end(text, pos);
    }
    pieces.push_back(text.substr(start, pos - start));
  }
}

constexpr const char* kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

}  // namespace

std::string split_pattern_regex(SplitPattern pattern) {
  switch (pattern) {
    case SplitPattern::Gpt2: return kGpt2Regex;
    case SplitPattern::Llama3: return kLlama3Regex;
    case SplitPattern::Qwen2: return kQwen2Regex;
  }
  return "";
}

std::optional<SplitPattern> split_pattern_of_regex(const std::string& regex) {
  for (SplitPattern p : {SplitPattern::Gpt2, SplitPattern::Llama3, SplitPattern::Qwen2})
    if (regex == split_pattern_regex(p)) return p;
  return std::nullopt;
}

void pre_tokenize(SplitPattern pattern, std::string_view text, std::vector<std::string_view>& pieces) {
  switch (pattern) {
    case SplitPattern::Gpt2: gpt2_pieces(text, pieces); break;
    case SplitPattern::Llama3: llama3_pieces(text, 3, pieces); break;
    case SplitPattern::Qwen2: llama3_pieces(text, 1, pieces); break;
  }
}

std::vector<std::string_view> gpt2_pre_tokenize(std::string_view text) {
  std::vector<std::string_view> pieces;
  gpt2_pieces(text, pieces);
  return pieces;
}

}  // namespace sae
