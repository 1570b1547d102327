// CPU kernel of the Matryoshka unit (matryoshka_kernels.h): token rows split into their groups'
// level rows. Each token row's entries are in feature order, so a group's entries are one run of
// them: counts per (group, token) in parallel over tokens, offsets in (group, token) order, copies in
// parallel over tokens. No sums: the result does not depend on the number of threads.
#include <omp.h>

#include <cstring>
#include <vector>

#include "sae/arch/matryoshka/matryoshka_kernels.h"
#include "sae/step/cpu_helpers.h"
#include "tensor/cpu/parallel.h"
#include "tensor/dispatch.h"

namespace sae {

namespace {

template <typename T>
void matryoshka_levels_typed(SparseFeatures& levels, const SparseFeatures& tokens, const int32_t* widths, int64_t m,
                             int64_t n, int64_t aux_rows) {
  const int32_t* row_ptr = tokens.row_ptr.data<int32_t>();
  const int32_t* cols = tokens.cols.data<int32_t>();
  const T* vals = tokens.row_vals.data<T>();
  int32_t* out_ptr = levels.row_ptr.data<int32_t>();
  int32_t* out_cols = levels.cols.data<int32_t>();
  T* out_vals = levels.row_vals.data<T>();
  thread_local std::vector<int32_t> counts_buffer;
  int32_t* counts = grow(counts_buffer, static_cast<size_t>(m * n + aux_rows));
#pragma omp parallel for schedule(static) if (n * m >= kParallelMin)
  for (int64_t t = 0; t < n; ++t) {
    int32_t e = row_ptr[t];
    for (int64_t g = 0; g < m; ++g) {
      const int32_t start = e;
      while (e < row_ptr[t + 1] && cols[e] < widths[g]) ++e;
      counts[g * n + t] = e - start;
    }
  }
  for (int64_t j = 0; j < aux_rows; ++j) counts[m * n + j] = row_ptr[n + j + 1] - row_ptr[n + j];
  out_ptr[0] = 0;
  for (int64_t r = 0; r < m * n + aux_rows; ++r) out_ptr[r + 1] = out_ptr[r] + counts[r];
#pragma omp parallel for schedule(static) if (n * m >= kParallelMin)
  for (int64_t t = 0; t < n; ++t) {
    int32_t e = row_ptr[t];
    for (int64_t g = 0; g < m; ++g)
      for (int32_t at = out_ptr[g * n + t]; at < out_ptr[g * n + t + 1]; ++at, ++e) {
        out_cols[at] = cols[e];
        out_vals[at] = vals[e];
      }
  }
  for (int64_t j = 0; j < aux_rows; ++j) {
    const int32_t from = row_ptr[n + j], count = counts[m * n + j], to = out_ptr[m * n + j];
    std::memcpy(out_cols + to, cols + from, count * sizeof(int32_t));
    std::memcpy(out_vals + to, vals + from, count * sizeof(T));
  }
}

}  // namespace

void matryoshka_levels_cpu(SparseFeatures& levels, const SparseFeatures& tokens, const Tensor& widths, int64_t n,
                           int64_t aux_rows) {
  dispatch_float(tokens.row_vals.dtype(), "matryoshka_levels", [&](auto zero) {
    using T = decltype(zero);
    matryoshka_levels_typed<T>(levels, tokens, widths.data<int32_t>(), widths.numel(), n, aux_rows);
  });
}

}  // namespace sae
