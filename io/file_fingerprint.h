// Files' fingerprints, so that a run resumed on a replaced or rewritten file (same name, other
// bytes) can tell. Two kinds:
//   file_fingerprint        its size and an FNV-1a hash of its first and last MiB: cheap at any size
//                           (the text and activation files, which a run reads in part and may be huge);
//   whole_file_fingerprint  that, plus ":whole=" and a hash of every byte: a model's weight files,
//                           which a run reads whole anyway (2 GB in 0.3 s from the page cache here).
//                           A fine-tune that left the first and last MiB alone (frozen embeddings and
//                           final norm, say) is another model.
// Runs and caches recorded by earlier builds hold model fingerprints without that part;
// same_file_fingerprint compares those as they were compared then.
#pragma once
#include <initializer_list>
#include <string>

#include "io/json.h"

namespace sae {

// "<size>:<16 hex digits>"; "" when the file cannot be read (the reader then says why).
std::string file_fingerprint(const std::string& path);
// "<size>:<16 hex digits>:whole=<16 hex digits>"; "" when the file cannot be read.
std::string whole_file_fingerprint(const std::string& path);
// Whether `now` (what this build computes) fingerprints the same files as `recorded`: equal, or
// `recorded` holds no whole-file part and equals `now` without its whole-file parts. Either may
// join several files' fingerprints (model_weights_fingerprint's "index|shard=...|shard=...").
bool same_file_fingerprint(const std::string& recorded, const std::string& now);
// Makes a description computed now (`now`, an object) comparable with one recorded earlier, for
// each key: a fingerprint the recorded one lacks (written before it was recorded) is left out, and
// one same_file_fingerprint finds the same is replaced by the recorded spelling.
void align_recorded_fingerprints(const Json& recorded, Json& now, std::initializer_list<const char*> keys);

}  // namespace sae
