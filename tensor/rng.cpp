// Rng: xoshiro256** (Blackman and Vigna, 2018) seeded by splitmix64; Box-Muller normals.
#include "tensor/rng.h"

#include <cmath>

namespace sae {

namespace {
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Rng::Rng(uint64_t seed) {
  for (auto& word : s_) word = splitmix64(seed);
}

uint64_t Rng::next_u64() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

double Rng::uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

double Rng::normal() {
  double u1 = uniform();
  while (u1 <= 0.0) u1 = uniform();
  const double u2 = uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

uint64_t Rng::below(uint64_t n) {
  if (n == 0) throw Error("Rng::below: empty range");
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;  // reject the uneven tail
  uint64_t r = next_u64();
  while (r >= limit) r = next_u64();
  return r % n;
}

namespace {
template <typename Draw>
Tensor random_tensor(const Shape& shape, DType dtype, Device device, Draw draw) {
  Tensor host = Tensor::empty(shape, dtype, Device::CPU);
  const int64_t n = host.numel();
  if (dtype == DType::F32) {
    float* p = host.data<float>();
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(draw());
  } else {
    double* p = host.data<double>();
    for (int64_t i = 0; i < n; ++i) p[i] = draw();
  }
  return host.to(device);
}
}  // namespace

Tensor uniform_tensor(const Shape& shape, double lo, double hi, Rng& rng, DType dtype, Device device) {
  return random_tensor(shape, dtype, device, [&] { return rng.uniform(lo, hi); });
}

Tensor normal_tensor(const Shape& shape, double mean, double stddev, Rng& rng, DType dtype, Device device) {
  return random_tensor(shape, dtype, device, [&] { return mean + stddev * rng.normal(); });
}

}  // namespace sae
