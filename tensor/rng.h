// Rng: a seeded, deterministic random generator (xoshiro256**, seeded through splitmix64) whose
// whole state is four 64-bit words, so training state can save and restore it exactly.
// Random tensors are always drawn on the host and then copied, so CPU and CUDA runs of one seed
// see the same numbers.
#pragma once
#include <array>
#include <cstdint>

#include "tensor/tensor.h"

namespace sae {

class Rng {
 public:
  explicit Rng(uint64_t seed = 0);
  uint64_t next_u64();
  double uniform();                         // [0, 1) with 53 random bits
  double uniform(double lo, double hi);     // [lo, hi)
  double normal();                          // standard normal (Box-Muller)
  uint64_t below(uint64_t n);               // integer in [0, n), unbiased
  std::array<uint64_t, 4> state() const { return s_; }
  void set_state(const std::array<uint64_t, 4>& s) { s_ = s; }

 private:
  std::array<uint64_t, 4> s_{};
};

Tensor uniform_tensor(const Shape& shape, double lo, double hi, Rng& rng, DType dtype = DType::F32,
                      Device device = Device::CPU);
Tensor normal_tensor(const Shape& shape, double mean, double stddev, Rng& rng, DType dtype = DType::F32,
                     Device device = Device::CPU);

}  // namespace sae
