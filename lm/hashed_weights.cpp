// Hashed GPT-Neo test weights and token ids (see hashed_weights.h; docs/gpt_neo.md section 7).
// Integer arithmetic is on uint64_t (wrapping mod 2^64 as specified); each value is formed in
// double, where it is exact, and rounded to float once.
#include "lm/hashed_weights.h"

#include <cmath>

namespace sae {

namespace {
constexpr uint64_t kFnvOffset = 0xCBF29CE484222325ull;
constexpr uint64_t kFnvPrime = 0x100000001B3ull;
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// The smallest e >= 0 with 4^e >= fan_in.
int linear_exponent(int64_t fan_in) {
  int e = 0;
  while ((int64_t(1) << (2 * e)) < fan_in) ++e;
  return e;
}

int64_t integer_from_hash(uint64_t h) { return static_cast<int64_t>(h >> 40) - (int64_t(1) << 23); }
}  // namespace

uint64_t fnv1a64(std::string_view text) {
  uint64_t h = kFnvOffset;
  for (unsigned char c : text) h = (h ^ c) * kFnvPrime;
  return h;
}

uint64_t splitmix64(uint64_t z) {
  z += kGolden;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

HashedKind hashed_kind(const std::string& name, const std::vector<int64_t>& shape) {
  if (ends_with(name, "wte.weight")) return {"token_embedding", 0.0, 1};
  if (ends_with(name, "wpe.weight")) return {"position_embedding", 0.0, 2};
  // The module name: the component before the last dot.
  const size_t last_dot = name.rfind('.');
  if (last_dot != std::string::npos) {
    const size_t before = name.rfind('.', last_dot == 0 ? 0 : last_dot - 1);
    const std::string module = name.substr(before == std::string::npos ? 0 : before + 1,
                                           last_dot - (before == std::string::npos ? 0 : before + 1));
    if (module.rfind("ln_", 0) == 0) {
      if (ends_with(name, ".weight")) return {"layernorm_weight", 1.0, 3};
      if (ends_with(name, ".bias")) return {"layernorm_bias", 0.0, 4};
    }
  }
  if (ends_with(name, ".weight") && shape.size() == 2) return {"linear_weight", 0.0, linear_exponent(shape[1])};
  if (ends_with(name, ".bias") && shape.size() == 1) return {"linear_bias", 0.0, 4};
  throw Error(cat("hashed weights: no rule for tensor '", name, "' of ", shape.size(), " dims"));
}

int64_t hashed_integer(const std::string& name, int64_t index) {
  return integer_from_hash(splitmix64(fnv1a64(name) + static_cast<uint64_t>(index) * kGolden));
}

float hashed_value(const std::string& name, const std::vector<int64_t>& shape, int64_t index) {
  const HashedKind kind = hashed_kind(name, shape);
  const double u = static_cast<double>(hashed_integer(name, index)) / double(1 << 23);
  return static_cast<float>(kind.offset + std::ldexp(u, -kind.exponent));
}

Tensor hashed_tensor(const std::string& name, const std::vector<int64_t>& shape) {
  const HashedKind kind = hashed_kind(name, shape);
  Tensor t = Tensor::empty(Shape::from_vector(shape), DType::F32);
  float* p = t.data<float>();
  const int64_t n = t.numel();
  const uint64_t seed = fnv1a64(name);
  const double scale = std::ldexp(1.0, -23 - kind.exponent);  // m / 2^23 * 2^-e in one exact multiply
#pragma omp parallel for if (n >= (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    const int64_t m = integer_from_hash(splitmix64(seed + static_cast<uint64_t>(i) * kGolden));
    p[i] = static_cast<float>(kind.offset + static_cast<double>(m) * scale);
  }
  return t;
}

NamedTensors hashed_gpt_neo_weights(const GptNeoConfig& config) {
  NamedTensors weights;
  for (const auto& [name, shape] : config.parameter_shapes()) weights[name] = hashed_tensor(name, shape);
  return weights;
}

std::vector<int32_t> hashed_token_ids(const std::string& name, int64_t length, int64_t vocab) {
  if (vocab <= 0 || length < 0) throw Error(cat("hashed_token_ids: bad length ", length, " or vocab ", vocab));
  std::vector<int32_t> ids(static_cast<size_t>(length));
  const uint64_t seed = fnv1a64(name);
  for (int64_t k = 0; k < length; ++k)
    ids[k] = static_cast<int32_t>((splitmix64(seed + static_cast<uint64_t>(k) * kGolden) >> 32) %
                                  static_cast<uint64_t>(vocab));
  return ids;
}

}  // namespace sae
