// check_utf8 and first_invalid_utf8 (see utf8.h): the reason a text is not UTF-8.
#include "io/utf8.h"

#include <cstdio>

#include "tensor/error.h"

namespace sae {

namespace {
std::string hex_byte(uint8_t byte) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02X", byte);
  return buf;
}
}  // namespace

void check_utf8(std::string_view text, std::string_view label) {
  std::string reason;
  const size_t pos = first_invalid_utf8(text, reason);
  if (pos != std::string_view::npos)
    throw DataError(cat(label.empty() ? std::string_view("text") : label, ": invalid UTF-8 at byte ", pos, ": ", reason));
}

size_t first_invalid_utf8(std::string_view text, std::string& reason) {
  const size_t n = text.size();
  size_t pos = 0;
  const auto fail = [&](std::string why) {
    reason = std::move(why);
    return pos;
  };
  while (pos < n) {
    const uint8_t lead = static_cast<uint8_t>(text[pos]);
    if (lead < 0x80) {
      ++pos;
      continue;
    }
    size_t length = 0;
    uint8_t second_low = 0x80, second_high = 0xBF;  // the allowed range of the second byte
    if (lead >= 0xC2 && lead <= 0xDF) {
      length = 2;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      length = 3;
      if (lead == 0xE0) second_low = 0xA0;   // below: overlong
      if (lead == 0xED) second_high = 0x9F;  // above: a surrogate U+D800..U+DFFF
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      length = 4;
      if (lead == 0xF0) second_low = 0x90;   // below: overlong
      if (lead == 0xF4) second_high = 0x8F;  // above: beyond U+10FFFF
    } else if (lead >= 0x80 && lead <= 0xBF) {
      return fail(cat("continuation byte ", hex_byte(lead), " without a lead byte"));
    } else if (lead == 0xC0 || lead == 0xC1) {
      return fail(cat("overlong encoding (lead byte ", hex_byte(lead), ")"));
    } else {
      return fail(cat("byte ", hex_byte(lead), " never occurs in UTF-8"));
    }
    if (pos + length > n) return fail(cat("sequence truncated (", length, " bytes expected, ", n - pos, " left)"));
    const uint8_t second = static_cast<uint8_t>(text[pos + 1]);
    if (second < 0x80 || second > 0xBF) return fail(cat("byte ", hex_byte(second), " after lead byte ", hex_byte(lead), " is not a continuation byte"));
    if (second < second_low || second > second_high) {
      if (lead == 0xED) return fail("surrogate code point (U+D800..U+DFFF)");
      if (lead == 0xF4) return fail("code point above U+10FFFF");
      return fail(cat("overlong encoding (", hex_byte(lead), " ", hex_byte(second), ")"));
    }
    for (size_t k = 2; k < length; ++k) {
      const uint8_t next = static_cast<uint8_t>(text[pos + k]);
      if (next < 0x80 || next > 0xBF) return fail(cat("byte ", hex_byte(next), " at position ", k + 1, " of a ", length, "-byte sequence is not a continuation byte"));
    }
    pos += length;
  }
  return std::string_view::npos;
}

}  // namespace sae
