// UTF-8: why a text is not UTF-8 (check_utf8, first_invalid_utf8), decode the code point at a byte
// offset of checked text, append one; the well-formed sequences (JSON's strings), and bytes made
// valid UTF-8 for display.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sae {

// Throws DataError "<label>: invalid UTF-8 at byte <offset>: <reason>" unless `text` is valid
// UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF). An empty label reads "text".
void check_utf8(std::string_view text, std::string_view label = "");

// The byte offset of the first invalid UTF-8 sequence of `text` with its reason, or npos.
size_t first_invalid_utf8(std::string_view text, std::string& reason);

}  // namespace sae

namespace sae::utf8 {

// The code point at text[pos] of valid UTF-8; sets `length` to its byte count.
inline uint32_t decode(std::string_view text, size_t pos, size_t& length) {
  const auto byte = [&](size_t k) { return static_cast<uint32_t>(static_cast<uint8_t>(text[pos + k])); };
  const uint32_t lead = byte(0);
  if (lead < 0x80) {
    length = 1;
    return lead;
  }
  if (lead < 0xE0) {
    length = 2;
    return ((lead & 0x1F) << 6) | (byte(1) & 0x3F);
  }
  if (lead < 0xF0) {
    length = 3;
    return ((lead & 0x0F) << 12) | ((byte(1) & 0x3F) << 6) | (byte(2) & 0x3F);
  }
  length = 4;
  return ((lead & 0x07) << 18) | ((byte(1) & 0x3F) << 12) | ((byte(2) & 0x3F) << 6) | (byte(3) & 0x3F);
}

// Characters that act on the text around them where shown rather than being seen: C1 controls, the
// bidirectional marks, embeddings, overrides and isolates (an override reverses every later token
// of a line), the line and paragraph separators. Text for a screen shows them escaped.
inline bool acts_on_surrounding_text(uint32_t cp) {
  return (cp >= 0x80 && cp <= 0x9F) || cp == 0x061C || cp == 0x200E || cp == 0x200F || (cp >= 0x202A && cp <= 0x202E) ||
         (cp >= 0x2066 && cp <= 0x2069) || cp == 0x2028 || cp == 0x2029;
}

// "<U+202E>": such a character as text.
inline std::string escaped(uint32_t cp) {
  static const char digits[] = "0123456789ABCDEF";
  std::string hex;
  for (uint32_t v = cp; v > 0 || hex.size() < 4; v >>= 4) hex.insert(hex.begin(), digits[v & 15]);
  return "<U+" + hex + ">";
}

inline void append(uint32_t code_point, std::string& out) {
  if (code_point < 0x80) {
    out += static_cast<char>(code_point);
  } else if (code_point < 0x800) {
    out += static_cast<char>(0xC0 | (code_point >> 6));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else if (code_point < 0x10000) {
    out += static_cast<char>(0xE0 | (code_point >> 12));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (code_point >> 18));
    out += static_cast<char>(0x80 | ((code_point >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  }
}

// The byte count (1 to 4) of the well-formed sequence at bytes[pos] (no overlong forms, no
// surrogates, nothing above U+10FFFF), or 0 when none starts there; `checked` is then the length of
// the longest valid start (Unicode's "maximal subpart", at least 1).
inline size_t sequence_length(std::string_view bytes, size_t pos, size_t& checked) {
  const unsigned char c = static_cast<unsigned char>(bytes[pos]);
  checked = 1;
  if (c < 0x80) return 1;
  const size_t length = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
  for (; checked < length && pos + checked < bytes.size(); ++checked) {
    const unsigned char b = static_cast<unsigned char>(bytes[pos + checked]);
    unsigned char lo = 0x80, hi = 0xBF;
    if (checked == 1) {
      if (c == 0xE0) lo = 0xA0;       // no overlong 3-byte forms
      else if (c == 0xED) hi = 0x9F;  // no surrogates
      else if (c == 0xF0) lo = 0x90;  // no overlong 4-byte forms
      else if (c == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
    }
    if (b < lo || b > hi) break;
  }
  return length > 0 && checked == length ? length : 0;
}

inline bool is_valid(std::string_view bytes) {
  size_t checked = 0;
  for (size_t i = 0; i < bytes.size(); i += checked)
    if (sequence_length(bytes, i, checked) == 0) return false;
  return true;
}

// `bytes` as valid UTF-8, what Python's bytes.decode("utf-8", "replace") and so Hugging Face's
// byte-level decode give (its ByteFallback decoder's rule is lm/tokenizer.h decode's): the longest
// valid start of a broken sequence (Unicode's "maximal subpart"), or a byte that starts none,
// becomes one U+FFFD.
inline std::string replace_invalid(std::string_view bytes) {
  std::string out;
  size_t checked = 0;
  for (size_t i = 0; i < bytes.size(); i += checked) {
    if (sequence_length(bytes, i, checked) > 0) out.append(bytes.substr(i, checked));
    else out += "\xEF\xBF\xBD";  // U+FFFD
  }
  return out;
}

}  // namespace sae::utf8
