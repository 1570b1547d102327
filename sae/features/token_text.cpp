// Token text for display and JSON (see token_text.h).
#include "sae/features/token_text.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "io/utf8.h"

namespace sae {

std::string display_token(std::string_view bytes) {
  std::string out;
  for (size_t at = 0; at < bytes.size();) {
    size_t checked = 0;
    const size_t length = utf8::sequence_length(bytes, at, checked);
    const unsigned char b = static_cast<unsigned char>(bytes[at]);
    if (length == 0) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\x%02X", b);
      out += escaped;
      ++at;
      continue;
    }
    size_t decoded = 0;
    const uint32_t cp = utf8::decode(bytes, at, decoded);
    if (length == 1 && (b < 0x20 || b == 0x7F)) {
      if (b == '\n')
        utf8::append(0x21B5, out);  // ↵
      else if (b == '\t')
        utf8::append(0x21E5, out);  // ⇥
      else
        utf8::append(b == 0x7F ? 0x2421 : 0x2400 + b, out);  // ␀ .. ␟, ␡
    } else if (utf8::acts_on_surrounding_text(cp)) {
      out += utf8::escaped(cp);
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
  utf8::append(0x2581 + level, out);
  return out;
}

double round_significant(double value, int digits) {
  if (!std::isfinite(value) || value == 0) return value;
  char text[64];
  std::snprintf(text, sizeof text, "%.*g", digits, value);
  return std::strtod(text, nullptr);
}

}  // namespace sae
