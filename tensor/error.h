// Exceptions thrown by library code. Binaries catch them in main() and map them to exit codes:
// UsageError -> 2 (bad option or configuration), DataError -> 1 (missing, corrupt or bad data file,
// I/O failure), any other Error -> 1. Library code throws and never exits.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace sae {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
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

}  // namespace sae
