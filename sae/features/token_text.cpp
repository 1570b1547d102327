// Token text for display and JSON (see token_text.h).
#include "sae/features/token_text.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "io/utf8.h"

namespace sae {

namespace {
// The length of the valid UTF-8 sequence starting at text[at] (1 to 4), or 0 when it is not one
// (overlong forms, surrogates and values above U+10FFFF are invalid).
size_t utf8_sequence(std::string_view text, size_t at) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char b0 = byte(at);
  if (b0 < 0x80) return 1;
  size_t length;
  uint32_t code;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    length = 2;
    code = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    length = 3;
    code = b0 & 0x0F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    length = 4;
    code = b0 & 0x07;
  } else {
    return 0;
  }
  if (at + length > text.size()) return 0;
  for (size_t i = 1; i < length; ++i) {
    if ((byte(at + i) & 0xC0) != 0x80) return 0;
    code = (code << 6) | (byte(at + i) & 0x3F);
  }
  if ((length == 3 && (code < 0x800 || (code >= 0xD800 && code <= 0xDFFF))) || (length == 4 && (code < 0x10000 || code > 0x10FFFF)))
    return 0;
  return length;
}

void append_code_point(std::string& out, uint32_t code) {  // code < 0x10000
  if (code < 0x80) {
    out += static_cast<char>(code);
  } else if (code < 0x800) {
    out += static_cast<char>(0xC0 | (code >> 6));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (code >> 12));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  }
}
}  // namespace

std::string display_token(std::string_view bytes) {
  std::string out;
  for (size_t at = 0; at < bytes.size();) {
    const size_t length = utf8_sequence(bytes, at);
    const unsigned char b = static_cast<unsigned char>(bytes[at]);
    if (length == 0) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\x%02X", b);
      out += escaped;
      ++at;
      continue;
    }
    if (length == 1 && (b < 0x20 || b == 0x7F)) {
      if (b == '\n')
        append_code_point(out, 0x21B5);  // ↵
      else if (b == '\t')
        append_code_point(out, 0x21E5);  // ⇥
      else
        append_code_point(out, b == 0x7F ? 0x2421 : 0x2400 + b);  // ␀ .. ␟, ␡
    } else {
      out.append(bytes.substr(at, length));
    }
    at += length;
  }
  return out;
}

std::string valid_utf8(std::string_view bytes) { return utf8::replace_invalid(bytes); }

std::string activation_block(double value, double max) {
  int level = 0;
  if (max > 0 && value > 0) level = static_cast<int>(std::floor(8.0 * value / max));
  if (level > 7) level = 7;
  if (level < 0) level = 0;
  std::string out;
  append_code_point(out, 0x2581 + level);
  return out;
}

double round_significant(double value, int digits) {
  if (!std::isfinite(value) || value == 0) return value;
  char text[64];
  std::snprintf(text, sizeof text, "%.*g", digits, value);
  return std::strtod(text, nullptr);
}

}  // namespace sae
