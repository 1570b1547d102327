// The unit-norm decoder's row formulas on the host (cpu_decoder_kernels.cpp; the CUDA kernels split
// rows across threads and sum in the same precision).
#pragma once
#include <cmath>
#include <cstdint>

namespace sae {

// g loses its component along u = w / n: g -= (g . u) u, the dot product summed in double.
template <typename T>
inline void project_out_row(T* g, const T* w, T n, int64_t d) {
  if (!(n > T(0))) return;
  double dot = 0;
  for (int64_t c = 0; c < d; ++c) dot += double(g[c]) * double(w[c] / n);
  const T along = static_cast<T>(dot);
  for (int64_t c = 0; c < d; ++c) g[c] = g[c] - along * (w[c] / n);
}

// w /= ||w||, the norm summed in double and rounded once; a zero row stays zero.
template <typename T>
inline void normalize_row(T* w, int64_t d) {
  double squares = 0;
  for (int64_t c = 0; c < d; ++c) squares += double(w[c]) * double(w[c]);
  const T n = static_cast<T>(std::sqrt(squares));
  if (n > T(0))
    for (int64_t c = 0; c < d; ++c) w[c] = w[c] / n;
}

}  // namespace sae
