// file_fingerprint, weights_fingerprint and their comparison (see file_fingerprint.h).
#include "io/file_fingerprint.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "io/safetensors.h"

namespace sae {

namespace {

constexpr const char* kTensors = ":tensors=";
constexpr uint64_t kFnvStart = 1469598103934665603ull, kFnvPrime = 1099511628211ull;  // FNV-1a 64

void fnv(uint64_t& hash, const uint8_t* bytes, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    hash ^= bytes[i];
    hash *= kFnvPrime;
  }
}

std::string hex(uint64_t value) {
  char text[24];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(value));
  return text;
}

// `fingerprint` without its ":tensors=" parts (the marker and the 16 digits after it).
std::string without_tensor_parts(std::string fingerprint) {
  for (size_t at; (at = fingerprint.find(kTensors)) != std::string::npos;)
    fingerprint.erase(at, std::min(fingerprint.size() - at, std::strlen(kTensors) + 16));
  return fingerprint;
}

}  // namespace

std::string file_fingerprint(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return "";  // a FIFO would block the open
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return "";
  const std::streamoff size = in.tellg();
  if (size < 0) return "";
  constexpr std::streamoff kPart = 1 << 20;
  uint64_t hash = kFnvStart;
  std::vector<char> buffer(static_cast<size_t>(kPart));
  auto mix = [&](std::streamoff from, std::streamoff count) {
    in.seekg(from);
    in.read(buffer.data(), count);
    fnv(hash, reinterpret_cast<const uint8_t*>(buffer.data()), static_cast<size_t>(std::max<std::streamsize>(in.gcount(), 0)));
    in.clear();
  };
  mix(0, std::min(size, kPart));
  if (size > kPart) mix(std::max(kPart, size - kPart), std::min(kPart, size - kPart));
  return std::to_string(static_cast<long long>(size)) + ":" + hex(hash);
}

std::string weights_fingerprint(const std::string& path) {
  const std::string ends = file_fingerprint(path);
  if (ends.empty()) return "";
  const SafetensorsFile file = SafetensorsFile::open(path);  // its errors name the file and what is wrong
  // The header (its length and JSON), then each tensor's first and last 4 KiB in the file's order,
  // read without read-ahead around them.
  const MappedFile& mapping = file.mapping();
  mapping.advise_random(true);
  uint64_t header = 0;
  std::memcpy(&header, mapping.data(), 8);
  uint64_t hash = kFnvStart;
  fnv(hash, mapping.data(), 8 + static_cast<size_t>(header));
  std::vector<const SafetensorsEntry*> entries;
  for (const std::string& name : file.names()) entries.push_back(&file.entry(name));
  std::sort(entries.begin(), entries.end(), [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
    return a->begin < b->begin;
  });
  constexpr size_t kEnd = 4096;
  for (const SafetensorsEntry* e : entries) {
    const uint8_t* data = static_cast<const uint8_t*>(e->data);
    const size_t head = std::min(e->bytes, kEnd), tail = std::min(e->bytes - head, kEnd);
    fnv(hash, data, head);
    fnv(hash, data + e->bytes - tail, tail);
  }
  return ends + kTensors + hex(hash);
}

bool same_file_fingerprint(const std::string& recorded, const std::string& now) {
  if (recorded == now) return true;
  return recorded.find(kTensors) == std::string::npos && recorded == without_tensor_parts(now);
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
