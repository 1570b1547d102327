// NFC (see unicode_nfc.h): decompose, order, compose, over code points of the whole text.
#include "lm/unicode_nfc.h"

#include <algorithm>
#include <vector>

#include "io/utf8.h"

namespace sae::unicode {

namespace {

constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

const Decomposition* find_decomposition(uint32_t cp) {
  const Decomposition* end = kDecompositions + kDecompositionCount;
  const Decomposition* it = std::lower_bound(kDecompositions, end, cp,
                                             [](const Decomposition& d, uint32_t c) { return d.code_point < c; });
  return it != end && it->code_point == cp ? it : nullptr;
}

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  const Decomposition* d = find_decomposition(cp);
  if (!d) {
    out.push_back(cp);
    return;
  }
  decompose(d->first, out);
  if (d->second) decompose(d->second, out);
}

// The composite of a pair, or 0.
uint32_t compose(uint32_t first, uint32_t second) {
  if (first >= kLBase && first < kLBase + kLCount && second >= kVBase && second < kVBase + kVCount)
    return kSBase + ((first - kLBase) * kVCount + second - kVBase) * kTCount;
  if (first >= kSBase && first < kSBase + kSCount && (first - kSBase) % kTCount == 0 && second > kTBase &&
      second < kTBase + kTCount)
    return first + second - kTBase;
  const Composition* end = kCompositions + kCompositionCount;
  const Composition* it = std::lower_bound(kCompositions, end, std::make_pair(first, second),
                                           [](const Composition& c, const std::pair<uint32_t, uint32_t>& key) {
                                             return c.first < key.first || (c.first == key.first && c.second < key.second);
                                           });
  return it != end && it->first == first && it->second == second ? it->composite : 0;
}

}  // namespace

uint8_t combining_class(uint32_t cp) {
  const CombiningClassRange* end = kCombiningClasses + kCombiningClassCount;
  const CombiningClassRange* it = std::lower_bound(kCombiningClasses, end, cp,
                                                   [](const CombiningClassRange& r, uint32_t c) { return r.last < c; });
  return it != end && it->first <= cp ? it->combining_class : 0;
}

std::string nfc(std::string_view text) {
  // Below U+0300 every character is NFC and nothing combines with it: UTF-8 lead bytes < 0xCC.
  bool simple = true;
  for (char c : text)
    if (static_cast<uint8_t>(c) >= 0xCC) {
      simple = false;
      break;
    }
  if (simple) return std::string(text);

  std::vector<uint32_t> cps;
  cps.reserve(text.size());
  for (size_t pos = 0, length = 0; pos < text.size(); pos += length) decompose(utf8::decode(text, pos, length), cps);
  // Canonical ordering: a stable sort of each run of marks by class (adjacent swaps).
  for (size_t i = 1; i < cps.size();) {
    const uint8_t a = combining_class(cps[i - 1]), b = combining_class(cps[i]);
    if (b != 0 && a > b) {
      std::swap(cps[i - 1], cps[i]);
      i = i > 1 ? i - 1 : 1;
    } else {
      ++i;
    }
  }
  // Canonical composition (UAX #15): each mark joins the last starter when nothing between them
  // blocks it (a mark of the same or a higher class, or a starter).
  size_t kept = 0;
  if (!cps.empty()) {
    size_t starter_pos = 0;
    uint32_t starter = cps[0];
    int last_class = combining_class(starter) ? 256 : 0;
    kept = 1;
    for (size_t pos = 1; pos < cps.size(); ++pos) {
      const uint32_t ch = cps[pos];
      const int cls = combining_class(ch);
      const uint32_t composite = compose(starter, ch);
      if (composite != 0 && (last_class < cls || last_class == 0)) {
        cps[starter_pos] = composite;
        starter = composite;
      } else {
        if (cls == 0) {
          starter_pos = kept;
          starter = ch;
        }
        last_class = cls;
        cps[kept++] = ch;
      }
    }
  }
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < kept; ++i) utf8::append(cps[i], out);
  return out;
}

}  // namespace sae::unicode
