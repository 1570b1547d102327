// Reader of the tensors in a PyTorch torch.save file, as dictionary_learning's ae.pt and OpenAI's
// sparse_autoencoder .pt are written:
// since PyTorch 1.6 a ZIP archive (io/zip_archive.h) of PREFIX/data.pkl, a pickle of the saved
// object, and PREFIX/data/KEY, one stored entry per tensor storage (PREFIX/byteorder "little").
//
// The pickle is run by a small machine of our own, never Python's: it knows the opcodes of
// protocols 2 to 4 that torch.save emits for dicts, lists, tuples, strings, numbers and tensors, and
// calls only collections.OrderedDict (an empty dict), torch._utils._rebuild_tensor_v2 and
// _rebuild_parameter (a tensor: a storage, an offset, sizes and strides) and the torch.*Storage
// types (a persistent id ('storage', TYPE, KEY, LOCATION, NUMEL)). Any other class or function named
// in the pickle is refused by name, so a file cannot make us run anything.
//
// The saved object must be a dict. Its tensors are named by their keys; a dict inside it names its
// own tensors "KEY.INNER" (one level: a training backup {"ae": state_dict, "optimizer": ...} gives
// ae.encoder.weight ...), and its numbers and strings are kept by name too. Every tensor is checked
// against its storage when the file is opened: dims at most 4, sizes and strides >= 0, every element
// it views inside the storage, the storage's entry holding exactly NUMEL elements of its type. A
// tensor may be a strided view (a transposed weight is saved so). Every violation is a one-line
// DataError naming the file.
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

struct TorchTensorEntry {
  std::string dtype;          // "F32", "F64", "F16", "BF16" (float) or "I64", "I32", "I16", "I8", "U8", "BOOL"
  size_t element_size = 0;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in elements
  int64_t offset = 0;            // in elements, into the storage
  const ZipEntry* storage = nullptr;
};

class TorchFile : public NamedTensorFile {
 public:
  static TorchFile open(const std::string& path);

  const std::string& path() const override { return archive_->path(); }
  std::vector<std::string> names() const override;  // the tensors', sorted
  bool has(const std::string& name) const override { return tensors_.count(name) > 0; }
  const TorchTensorEntry& entry(const std::string& name) const;  // DataError when missing
  // A float tensor as float32 (0-dim as shape [1]); DataError for an integer one.
  Tensor read_f32(const std::string& name) const override;
  // An integer or bool tensor's elements in row-major order; DataError for a float one.
  std::vector<int64_t> read_integers(const std::string& name) const;
  // The dict's numbers (int, float, bool) by name, as the tensors are named.
  const std::map<std::string, double>& scalars() const { return scalars_; }
  // The dict's strings by name (OpenAI's state dicts name their activation so).
  const std::map<std::string, std::string>& strings() const { return strings_; }

 private:
  TorchFile() = default;
  // The viewed elements, row-major, in their stored type (element_size bytes each).
  std::vector<uint8_t> gather(const TorchTensorEntry& e) const;

  std::unique_ptr<ZipArchive> archive_;
  std::map<std::string, TorchTensorEntry> tensors_;
  std::map<std::string, double> scalars_;
  std::map<std::string, std::string> strings_;
};

}  // namespace sae
