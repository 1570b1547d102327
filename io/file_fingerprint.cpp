// file_fingerprint (see file_fingerprint.h).
#include "io/file_fingerprint.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <vector>

namespace sae {

std::string file_fingerprint(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return "";
  const std::streamoff size = in.tellg();
  if (size < 0) return "";
  constexpr std::streamoff kPart = 1 << 20;
  uint64_t hash = 1469598103934665603ull;  // FNV-1a 64
  std::vector<char> buffer(static_cast<size_t>(kPart));
  auto mix = [&](std::streamoff from, std::streamoff count) {
    in.seekg(from);
    in.read(buffer.data(), count);
    for (std::streamoff i = 0; i < in.gcount(); ++i) {
      hash ^= static_cast<uint8_t>(buffer[static_cast<size_t>(i)]);
      hash *= 1099511628211ull;
    }
    in.clear();
  };
  mix(0, std::min(size, kPart));
  if (size > kPart) mix(std::max(kPart, size - kPart), std::min(kPart, size - kPart));
  char text[64];
  std::snprintf(text, sizeof text, "%lld:%016llx", static_cast<long long>(size), static_cast<unsigned long long>(hash));
  return text;
}

}  // namespace sae
