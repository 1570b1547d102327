// Files' fingerprints, so that a run resumed on a replaced or rewritten file (same name, other
// bytes) can tell. Two kinds:
//   file_fingerprint     its size and an FNV-1a hash of its first and last MiB: cheap at any size
//                        (the text and activation files, which a run reads in part and may be huge);
//   weights_fingerprint  for a safetensors file (a model's weights), that plus ":tensors=" and an
//                        FNV-1a hash of its header and of the first and last 4 KiB of every tensor
//                        (a tensor of at most 8 KiB whole): a fine-tune changes every tensor it
//                        trains throughout, so it is seen even where it left the file's first and
//                        last MiB alone (frozen embeddings and final norm, say), while only a few MB
//                        are read (runs load a model only up to their hook; sae_browser reads its
//                        unembedding). A change inside one tensor that spares its first and last
//                        4 KiB is not seen.
// Runs and caches recorded by earlier builds hold model fingerprints without the ":tensors=" part;
// same_file_fingerprint compares those as they were compared then.
#pragma once
#include <initializer_list>
#include <string>

#include "io/json.h"

namespace sae {

// "<size>:<16 hex digits>"; "" when it is not a regular file or cannot be read (the reader then says why).
std::string file_fingerprint(const std::string& path);
// "<size>:<16 hex digits>:tensors=<16 hex digits>"; "" when the file cannot be read; DataError naming
// the file when it is not a valid safetensors file.
std::string weights_fingerprint(const std::string& path);
// Whether `now` (what this build computes) fingerprints the same files as `recorded`: equal, or
// `recorded` holds no ":tensors=" part and equals `now` without its ":tensors=" parts. Either may
// join several files' fingerprints (model_weights_fingerprint's "index|shard=...|shard=...").
bool same_file_fingerprint(const std::string& recorded, const std::string& now);
// Makes a description computed now (`now`, an object) comparable with one recorded earlier, for
// each key: a fingerprint the recorded one lacks (written before it was recorded) is left out, and
// one same_file_fingerprint finds the same is replaced by the recorded spelling.
void align_recorded_fingerprints(const Json& recorded, Json& now, std::initializer_list<const char*> keys);

}  // namespace sae
