// What the CPU kernels of the step's families and of the units share: scratch memory that only
// grows (kernels that run once per training step should not pay for allocating, and faulting in,
// megabytes each time), and the split of F columns over OpenMP threads used by the passes over
// [N, F] that sum each column in row order (one thread per column: deterministic, no combining).
#pragma once
#include <omp.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace sae {

template <typename T>
T* grow(std::vector<T>& buffer, size_t count) {
  if (buffer.size() < count) buffer.resize(count);
  return buffer.data();
}

}  // namespace sae

// Inside `#pragma omp parallel`: this thread's columns [j0, j1) of `cols`.
#define SAE_THREAD_COLUMNS(cols)                                            \
  const int thread = omp_get_thread_num(), threads = omp_get_num_threads(); \
  const int64_t j0 = (cols) * thread / threads, j1 = (cols) * (thread + 1) / threads;
