// file_fingerprint, whole_file_fingerprint and their comparison (see file_fingerprint.h).
#include "io/file_fingerprint.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <vector>

namespace sae {

namespace {

constexpr const char* kWhole = ":whole=";

std::string hex(uint64_t value) {
  char text[24];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(value));
  return text;
}

// A hash of every byte of `in` (`size` bytes), read a MiB at a time: four lanes of 8-byte words,
// each multiplied and folded (fast enough to be lost in reading the file), then the tail's bytes.
uint64_t hash_all_bytes(std::ifstream& in, std::streamoff size) {
  constexpr uint64_t kMul = 0x9e3779b97f4a7c15ull;
  uint64_t lane[4] = {0x243f6a8885a308d3ull, 0x13198a2e03707344ull, 0xa4093822299f31d0ull, 0x082efa98ec4e6c89ull};
  std::vector<char> buffer(size_t(1) << 20);
  in.seekg(0);
  std::streamoff left = size;
  uint64_t tail = 0;
  while (left > 0) {
    in.read(buffer.data(), static_cast<std::streamsize>(std::min<std::streamoff>(left, std::streamoff(buffer.size()))));
    const size_t got = static_cast<size_t>(in.gcount());
    if (got == 0) break;
    left -= static_cast<std::streamoff>(got);
    const size_t words = got / 32 * 4;  // whole groups of four words; a MiB is always whole
    for (size_t w = 0; w < words; w += 4)
      for (size_t l = 0; l < 4; ++l) {
        uint64_t word;
        std::memcpy(&word, buffer.data() + 8 * (w + l), 8);
        lane[l] = (lane[l] ^ word) * kMul;
        lane[l] ^= lane[l] >> 29;
      }
    for (size_t i = words * 8; i < got; ++i) tail = (tail ^ static_cast<uint8_t>(buffer[i])) * 1099511628211ull;
  }
  uint64_t hash = static_cast<uint64_t>(size) ^ tail;
  for (uint64_t l : lane) {
    hash = (hash ^ l) * kMul;
    hash ^= hash >> 31;
  }
  return hash;
}

// `fingerprint` without its whole-file parts (":whole=" and the 16 digits after it).
std::string without_whole_parts(std::string fingerprint) {
  for (size_t at; (at = fingerprint.find(kWhole)) != std::string::npos;)
    fingerprint.erase(at, std::min(fingerprint.size() - at, std::strlen(kWhole) + 16));
  return fingerprint;
}

}  // namespace

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
  return std::to_string(static_cast<long long>(size)) + ":" + hex(hash);
}

std::string whole_file_fingerprint(const std::string& path) {
  const std::string ends = file_fingerprint(path);
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (ends.empty() || !in) return "";
  const std::streamoff size = in.tellg();
  return ends + kWhole + hex(hash_all_bytes(in, size));
}

bool same_file_fingerprint(const std::string& recorded, const std::string& now) {
  if (recorded == now) return true;
  return recorded.find(kWhole) == std::string::npos && recorded == without_whole_parts(now);
}

void align_recorded_fingerprints(const Json& recorded, Json& now, std::initializer_list<const char*> keys) {
  if (!recorded.is_object() || !now.is_object()) return;
  for (const char* key : keys) {
    if (!recorded.has(key)) {
      now.erase(key);
    } else if (now.has(key) && recorded.at(key).is_string() && now.at(key).is_string() &&
               same_file_fingerprint(recorded.at(key).as_string(), now.at(key).as_string())) {
      now[key] = recorded.at(key);
    }
  }
}

}  // namespace sae
