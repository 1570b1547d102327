// NamedTensorFile: a read-only file of named float tensors, as an SAE's weights are stored. Both
// SafetensorsFile (sae_weights.safetensors, io/safetensors.h) and NpzFile (a NumPy .npz such as
// Gemma Scope's params.npz, io/npz.h) are one, so the architecture units import an SAE from
// either without knowing which.
#pragma once
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace sae {

class NamedTensorFile {
 public:
  virtual ~NamedTensorFile() = default;
  virtual const std::string& path() const = 0;
  virtual bool has(const std::string& name) const = 0;
  virtual std::vector<std::string> names() const = 0;  // sorted
  // The whole tensor as a float32 CPU tensor (F16 / BF16 / F64 converted); DataError naming the
  // file when it is missing, not a float array, or corrupt.
  virtual Tensor read_f32(const std::string& name) const = 0;
};

}  // namespace sae
