// A file's fingerprint: its size and an FNV-1a hash of its first and last MiB, cheap at any size,
// so that a run resumed on a replaced or rewritten file (same name, other bytes) can tell.
#pragma once
#include <string>

namespace sae {

// "<size>:<16 hex digits>"; "" when the file cannot be read (the reader then says why).
std::string file_fingerprint(const std::string& path);

}  // namespace sae
