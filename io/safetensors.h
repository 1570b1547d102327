// Reader and writer of the safetensors format:
//   8 bytes   N, the header length, unsigned little-endian
//   N bytes   JSON header: {"__metadata__": {str: str} (optional),
//                           NAME: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...}
//   the rest  the data region; each tensor's bytes are [begin, end) of it, row-major, little-endian
// The reader memory-maps the file and validates it the way the reference implementation does:
// header length within the file, valid JSON object, known dtype, shape * dtype size == end - begin,
// and the tensors tile the data region exactly (no overlap, no gap, no trailing bytes). Every
// violation is a DataError naming the file and what was expected. Rows are dim 0 (for activation
// files: N tokens by D width), so a loader can convert a block of rows without touching the rest.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "io/mapped_file.h"
#include "io/named_tensor_file.h"
#include "tensor/tensor.h"

namespace sae {

// Bytes per element of a safetensors dtype name ("F32" -> 4); 0 when the name is unknown.
size_t safetensors_dtype_size(const std::string& dtype);

struct SafetensorsEntry {
  std::string name;
  std::string dtype;            // "F32", "F16", "BF16", "F64", "I32", "I64", ...
  std::vector<int64_t> shape;   // may be empty (a scalar)
  const void* data = nullptr;   // into the mapping; any alignment
  size_t bytes = 0;             // end - begin
  size_t begin = 0, end = 0;    // data_offsets, relative to the data region
  int64_t elements = 0;         // the shape's product (0 when a dimension is 0), checked to fit int64
  int64_t numel() const { return elements; }
};

class SafetensorsFile : public NamedTensorFile {
 public:
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const override { return file_.path(); }
  const MappedFile& mapping() const { return file_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::vector<std::string> names() const override;  // sorted
  bool has(const std::string& name) const override { return entries_.count(name) > 0; }
  const SafetensorsEntry& entry(const std::string& name) const;  // DataError when missing

  // The whole tensor as a float32 CPU tensor, from F32, F16, BF16 or F64 (at most 4 dims; a
  // 0-dim entry comes back as shape [1], the library's scalar).
  Tensor read_f32(const std::string& name) const override;
  // Rows [row_begin, row_begin + row_count) along dim 0, as [row_count, ...rest] or into out,
  // which must hold row_count * (numel / shape[0]) floats. Only those rows are read.
  Tensor read_rows_f32(const std::string& name, int64_t row_begin, int64_t row_count) const;
  void read_rows_f32(const std::string& name, int64_t row_begin, int64_t row_count, float* out) const;
  // Integer arrays (story lengths, token ids) from I32 or I64, flattened.
  std::vector<int64_t> read_i64(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  const SafetensorsEntry& float_entry(const std::string& name) const;

  MappedFile file_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, SafetensorsEntry> entries_;
};

// One tensor for write_safetensors_raw: any safetensors dtype name, its shape, and its bytes
// (little-endian, row-major; exactly numel * dtype size of them).
struct RawTensor {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};
// The layout write_safetensors gives tensors of these names, dtypes and shapes: the header (its
// 8-byte length and the JSON, padded), each tensor's first byte in the file, their order, the
// file's size. For writers that fill a file in parts (the shards of a distributed run's checkpoint).
struct SafetensorsSpec {
  std::string name, dtype;
  std::vector<int64_t> shape;
};
struct SafetensorsLayout {
  std::string header;
  std::map<std::string, uint64_t> begin;
  std::vector<std::string> order;
  uint64_t file_bytes = 0;
};
SafetensorsLayout safetensors_layout(std::vector<SafetensorsSpec> tensors,
                                     const std::map<std::string, std::string>& metadata = {},
                                     const std::string& path = "");
// Writes raw tensors and string metadata atomically, laid out as write_safetensors does.
// Throws Error for an unknown dtype, a size that does not match the shape, a duplicate or reserved name.
void write_safetensors_raw(const std::string& path, std::vector<RawTensor> tensors,
                           const std::map<std::string, std::string>& metadata = {});
// Where a streamed writer puts a tensor's bytes: called once or in consecutive pieces.
using SafetensorsSink = std::function<void(const void* data, size_t bytes)>;
// The same, each tensor's bytes handed to `write` by `write_tensor(name, write)` only when the file
// reaches it (in the layout's order), so that no more than one piece need be held at a time. Throws
// Error when a tensor's pieces do not add up to its shape's size.
void write_safetensors_streamed(const std::string& path, const std::vector<SafetensorsSpec>& specs,
                                const std::map<std::string, std::string>& metadata,
                                const std::function<void(const std::string& name, const SafetensorsSink& write)>& write_tensor);

// Writes tensors of every dtype as they are held (F32, F64, I32, BF16, F16; a host tensor's bytes
// straight from its storage, a CUDA tensor's copied to the host in blocks of rows of about 64 MiB, at
// least one row: no host copy of a whole large tensor is made) and string metadata atomically
// (PATH.tmp, fsync, rename). Layout as the reference writer: "__metadata__" first in the header
// (omitted when empty), tensors ordered by dtype (the reverse of the reference's Dtype enum order:
// I64, F64, F32, I32, BF16, F16, ...) then name, data packed without gaps, header padded with
// spaces to a multiple of 8 bytes so the data region starts 8-byte aligned. Throws Error for an undefined tensor, a duplicate or reserved name.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace sae
