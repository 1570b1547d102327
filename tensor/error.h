// Exceptions thrown by library code. Binaries catch them in main() and map them to exit codes:
// UsageError -> 2 (bad option or configuration), DataError -> 1 (missing, corrupt or bad data file,
// I/O failure), any other Error -> 1. Library code throws and never exits.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace sae {

// A message stays on one line whatever text went into it: control characters (bytes below 0x20 and
// 0x7f: newlines, tabs, terminal escapes) are written as \xNN; other bytes are kept as they are.
inline std::string one_line(std::string_view text) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  for (const char ch : text) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c != 0x7f) {
      out += ch;
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// Every message is made one line (one_line) when the error is made, so text from a file or the
// command line cannot break the one-line error contract even where a message forgot printable().
struct Error : std::runtime_error {
  explicit Error(const std::string& message) : std::runtime_error(one_line(message)) {}
  explicit Error(const char* message) : Error(std::string(message)) {}
};
struct UsageError : Error {
  using Error::Error;
};
struct DataError : Error {
  using Error::Error;
};

// Builds a message from any streamable pieces: throw Error(cat("matmul: ", a, " vs ", b)).
template <typename... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream s;
  (s << ... << parts);
  return s.str();
}

// Text that came from a file or a command line, made safe to put in a one-line message: bytes
// below 0x20, 0x7f and above are written as \xNN (so no newline, terminal escape or broken
// UTF-8 reaches the terminal), and text longer than max_chars is cut with "...".
inline std::string printable(std::string_view text, size_t max_chars = 120) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (out.size() >= max_chars) return out + "...";
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// The one-line text of any error, as every program prints it after "PROGRAM: error: ". A
// std::filesystem error's library text ("filesystem error: cannot get file size: Is a directory
// [PATH]") is put as ours: the path first, then what could not be done and why.
std::string error_text(const std::exception& e);  // tensor/error.cpp

}  // namespace sae
