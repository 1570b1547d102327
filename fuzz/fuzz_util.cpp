// Scratch files, input splitting and the shared checks of the harnesses (see fuzz_util.h).
#include "fuzz_util.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <typeinfo>

#include "tensor/error.h"

namespace fs = std::filesystem;

namespace sae::fuzz {

std::vector<std::string_view> split_parts(const uint8_t* data, size_t size) {
  std::string_view all(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> parts;
  size_t begin = 0;
  while (true) {
    size_t at = all.find(kPartMarker, begin);
    if (at == std::string_view::npos) {
      parts.push_back(all.substr(begin));
      return parts;
    }
    parts.push_back(all.substr(begin, at - begin));
    begin = at + kPartMarker.size();
  }
}

namespace {
void remove_scratch_dir() {
  std::error_code ec;
  fs::remove_all(scratch_dir(), ec);
}
}  // namespace

const std::string& scratch_dir() {
  // Never destroyed, so the exit handler that removes the folder can still read its name.
  static const std::string* dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    fs::path base = (tmp && *tmp) ? fs::path(tmp) : fs::path("/tmp");
    fs::path path = base / ("sae_fuzz_" + std::to_string(::getpid()));
    std::error_code ec;
    fs::remove_all(path, ec);
    fs::create_directories(path);
    return new std::string(path.string());
  }();
  static const bool cleanup_registered = std::atexit(remove_scratch_dir) == 0;
  (void)cleanup_registered;
  return *dir;
}

std::string write_scratch_file(const std::string& relative, std::string_view bytes) {
  const fs::path path = fs::path(scratch_dir()) / relative;
  fs::create_directories(path.parent_path());
  // A new file each time: ext4 flushes a file to disk on close when it was truncated and
  // rewritten, which made every run wait for the disk.
  std::error_code ec;
  fs::remove(path, ec);
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) fail("cannot write the scratch file " + path.string());
  const bool ok = bytes.empty() || std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  if (std::fclose(f) != 0 || !ok) fail("cannot write the scratch file " + path.string());
  return path.string();
}

void remove_scratch(const std::string& relative) {
  std::error_code ec;
  fs::remove_all(fs::path(scratch_dir()) / relative, ec);
}

bool attempt(const std::function<void()>& body) {
  try {
    body();
    return true;
  } catch (const sae::Error& e) {
    check_error_message(e.what());
    static const bool verbose = std::getenv("SAE_FUZZ_VERBOSE") != nullptr;
    if (verbose) std::fprintf(stderr, "refused: %s\n", escaped(e.what()).c_str());
    return false;
  } catch (const std::exception& e) {
    fail(std::string("an exception that is not a sae::Error escaped (") + typeid(e).name() + "): " + escaped(e.what()));
  }
}

void fail(const std::string& what) {
  std::fprintf(stderr, "\nfuzz finding: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

void check_error_message(const std::string& message) {
  if (message.empty()) fail("an error with an empty message");
  static const bool skip_characters = std::getenv("SAE_FUZZ_ALLOW_CONTROL_CHARACTERS") != nullptr;
  if (skip_characters) return;
  for (unsigned char c : message)
    if (c < 0x20 || c == 0x7f)
      fail("an error message with a control character or line break (one line expected): \"" + escaped(message) + "\"");
}

std::string escaped(std::string_view bytes, size_t max_bytes) {
  std::string out;
  for (size_t i = 0; i < bytes.size() && i < max_bytes; ++i) {
    unsigned char c = static_cast<unsigned char>(bytes[i]);
    if (c < 0x20 || c >= 0x7f || c == '\\') {
      char buffer[8];
      std::snprintf(buffer, sizeof buffer, "\\x%02x", c);
      out += buffer;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (bytes.size() > max_bytes) out += "... (" + std::to_string(bytes.size()) + " bytes)";
  return out;
}

}  // namespace sae::fuzz
