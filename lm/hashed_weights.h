// Hashed test weights for GPT-Neo (docs/gpt_neo.md section 7; reference scripts/hashed_weights.py):
// every float32 parameter is a pure function of (tensor name, flat index), so tests and benchmarks
// build a whole model in memory, bit for bit the weights the Hugging Face fixtures were made with,
// without any file. Also the hashed token ids of the fixtures' input sequences.
//   h = splitmix64(fnv1a64(name) + index * 0x9E3779B97F4A7C15),  m = (h >> 40) - 2^23,
//   value = float(offset + m / 2^23 * 2^-e), offset and e from the tensor's kind.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "lm/gpt_neo.h"
#include "tensor/tensor.h"

namespace sae {

uint64_t fnv1a64(std::string_view text);  // 64-bit FNV-1a over the bytes
uint64_t splitmix64(uint64_t z);           // adds the golden gamma, then SplitMix64's mix

// The kind of a tensor, decided from its name and shape (first matching rule of section 7).
struct HashedKind {
  const char* kind;  // "token_embedding", "position_embedding", "layernorm_weight", "layernorm_bias",
                     // "linear_weight", "linear_bias"
  double offset;
  int exponent;      // values are offset + u * 2^-exponent, u in [-1, 1)
};
// Throws Error for a name no rule covers.
HashedKind hashed_kind(const std::string& name, const std::vector<int64_t>& shape);

// The integer m in [-2^23, 2^23) and the float32 value of element `index`.
int64_t hashed_integer(const std::string& name, int64_t index);
float hashed_value(const std::string& name, const std::vector<int64_t>& shape, int64_t index);
// A whole tensor, float32 on the host.
Tensor hashed_tensor(const std::string& name, const std::vector<int64_t>& shape);
// Every parameter of the config (GptNeoConfig::parameter_shapes), for GptNeo::from_tensors.
NamedTensors hashed_gpt_neo_weights(const GptNeoConfig& config);

// Token k of the sequence `name`: (splitmix64(fnv1a64(name) + k * 0x9E3779B97F4A7C15) >> 32) mod vocab.
std::vector<int32_t> hashed_token_ids(const std::string& name, int64_t length, int64_t vocab);

}  // namespace sae
