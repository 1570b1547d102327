// Reader of NumPy .npz archives (np.savez: entries stored; np.savez_compressed: deflated), the
// format of Gemma Scope's params.npz. An .npz is a ZIP archive of .npy files, one per array, named
// "NAME.npy"; the array is read back as NAME. The archive is memory-mapped and checked when opened:
//   the end-of-central-directory record (and, when a field is saturated or a locator is present,
//   the ZIP64 locator and record), one disk only, the central directory inside the file, each
//   entry's ZIP64 extra field (numpy writes entries with force_zip64, so sizes may read 0xFFFFFFFF
//   in the main record), its local header (signature, name, method and CRC agreeing with the
//   central directory), its data inside the file, no duplicate names, no encryption, method 0
//   (stored, compressed size = size) or 8 (deflate, with a declared size that deflate can produce
//   from the compressed bytes: at most 1032 times them, checked before anything is allocated).
// read_f32 parses the entry's .npy header (io/npy.h: '<f4', '<f2' or '<f8', C order, exact data
// size), converts the data to float32 (stored: from the mapping; deflated: inflated in a stream
// straight into the tensor), checks the entry's CRC-32 and drops the entry's mapped pages (the
// array has its own copy: reading a whole archive needs about its size once). Every violation is a one-line DataError
// naming the file (and the entry).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/named_tensor_file.h"
#include "io/zip_archive.h"
#include "tensor/tensor.h"

namespace sae {

// A ZIP entry (io/zip_archive.h; `name` as stored, e.g. "W_enc.npy") and the array's name.
struct NpzEntry : ZipEntry {
  std::string array;  // the archive name without ".npy"
};

class NpzFile : public NamedTensorFile {
 public:
  static NpzFile open(const std::string& path);

  const std::string& path() const override { return archive_->path(); }
  std::vector<std::string> names() const override;  // sorted
  bool has(const std::string& name) const override { return entries_.count(name) > 0; }
  const NpzEntry& entry(const std::string& name) const;  // DataError when missing
  // The array NAME as a float32 CPU tensor (at most 4 dims; 0-dim comes back as shape [1]).
  Tensor read_f32(const std::string& name) const override;

 private:
  NpzFile() = default;

  std::unique_ptr<ZipArchive> archive_;
  std::map<std::string, NpzEntry> entries_;
};

}  // namespace sae
