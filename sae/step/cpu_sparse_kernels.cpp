// CPU kernels of the sparse family (sae_kernels.h): f's positive entries listed by feature and by
// token, the decoder product from them, the two backward kernels that hand every gradient value to
// its ParamUpdate (written out, or one Adam step at once), and the by-feature lists of by-token lists
// (the selections' output). Plain loops, OpenMP across cores; every sum is taken by one thread in an
// order fixed by the data alone, so results do not depend on the number of threads. Inputs were
// validated by the front-end (sae_ops.cpp).
// Letters: N tokens (rows), D input width, F features (columns).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "sae/step/cpu_helpers.h"
#include "sae/step/decoder_math.h"
#include "sae/step/kernel_decls.h"
#include "tensor/adam_math.h"
#include "tensor/cpu/parallel.h"
#include "tensor/dispatch.h"

namespace sae {

namespace {

// ---- sparse SAE kernels (sae_kernels.h). Every sum (a row of x_hat, a dot product, an element of a
// gradient) is computed by one thread in an order fixed by the data alone, so the results do not
// depend on the number of threads or on which thread takes which task: dynamic scheduling
// balances the load and the runs stay bitwise repeatable.

// Raw pointers of a ParamUpdate: store(offset, grad, len) hands over the gradient of elements
// [offset, offset + len) of the parameter, which are written to grad or go through Adam at once.
template <typename T>
struct UpdateSink {
  T* param;
  T* grad = nullptr;
  T* m = nullptr;
  T* v = nullptr;
  bool adam;
  AdamConstants<T> c;
  explicit UpdateSink(ParamUpdate& u) : param(u.param.data<T>()), adam(u.adam), c(adam_constants<T>(u.scalars)) {
    if (adam) {
      m = u.m.data<T>();
      v = u.v.data<T>();
    } else {
      grad = u.grad.data<T>();
    }
  }
  void store(int64_t offset, const T* g, int64_t len) const {
    if (!adam) {
      std::memcpy(grad + offset, g, len * sizeof(T));
      return;
    }
    T* p = param + offset;
    T* mm = m + offset;
    T* vv = v + offset;
    const AdamConstants<T> constants = c;  // a local copy stays in registers through the loop
#pragma omp simd
    for (int64_t k = 0; k < len; ++k) adam_element(p[k], mm[k], vv[k], g[k], constants);
  }
};

// Builds both lists (sae_kernels.h: SparseFeatures).
// By feature: offsets come from the column counts; each thread scans every row of f over its own
// band of columns and appends the positive entries, so each column's entries arrive in token order.
// Float32 rows are tested 8 values at a time (at 2% density most groups of 8 hold no entry).
// By token: the same scan counts each token's entries in each band; a prefix over tokens and bands
// says where each band's share of each token's list goes, and each thread then walks its band's
// features in order and writes their entries there, so each token's list is in feature order.
// Neither list depends on the number of threads. f may be stored as bf16 (S; the values are widened
// into the lists).
template <typename T, typename S>
void sparse_index_typed(int32_t* col_ptr, int32_t* rows, T* vals, int32_t* row_ptr, int32_t* cols_out, T* row_vals,
                        const S* f, const T* col_count, int64_t n, int64_t cols) {
  col_ptr[0] = 0;
  for (int64_t j = 0; j < cols; ++j) col_ptr[j + 1] = col_ptr[j] + static_cast<int32_t>(col_count[j]);
  const bool threaded = n * cols >= kParallelMin;
  // band_offset[b * n + t]: first, entries of token t in feature band b; then where they go.
  std::vector<int32_t> band_offset(static_cast<size_t>(threaded ? omp_get_max_threads() : 1) * n);
#pragma omp parallel if (threaded)
  {
    const int band = omp_get_thread_num(), bands = omp_get_num_threads();
    const int64_t j0 = band == 0 ? 0 : (cols * band / bands) & ~int64_t(7);
    const int64_t j1 = band + 1 == bands ? cols : (cols * (band + 1) / bands) & ~int64_t(7);
    std::vector<int32_t> cursor(col_ptr + j0, col_ptr + j1);
    int32_t* next = cursor.data() - j0;  // next[j]: where column j's next entry goes
    int32_t* token_count = band_offset.data() + int64_t(band) * n;
    for (int64_t r = 0; r < n; ++r) {
      const S* row = f + r * cols;
      int64_t j = j0, found = 0;
#if defined(__AVX__)
      if constexpr (std::is_same_v<S, float>) {
        const __m256 zero = _mm256_setzero_ps();
        for (; j + 8 <= j1; j += 8) {
          unsigned mask = static_cast<unsigned>(
              _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(row + j), zero, _CMP_GT_OQ)));
          while (mask != 0) {
            const int64_t c = j + __builtin_ctz(mask);
            mask &= mask - 1;
            const int32_t e = next[c]++;
            rows[e] = static_cast<int32_t>(r);
            vals[e] = row[c];
            ++found;
          }
        }
      }
#endif
      for (; j < j1; ++j) {
        const T v = load_value(row[j]);
        if (v > T(0)) {
          const int32_t e = next[j]++;
          rows[e] = static_cast<int32_t>(r);
          vals[e] = v;
          ++found;
        }
      }
      token_count[r] = static_cast<int32_t>(found);
    }
#pragma omp barrier
#pragma omp single
    {
      int32_t running = 0;
      for (int64_t t = 0; t < n; ++t) {
        row_ptr[t] = running;
        for (int b = 0; b < bands; ++b) {
          const int32_t count = band_offset[int64_t(b) * n + t];
          band_offset[int64_t(b) * n + t] = running;
          running += count;
        }
      }
      row_ptr[n] = running;
    }  // implied barrier
    int32_t* place = band_offset.data() + int64_t(band) * n;
    for (int64_t j = j0; j < j1; ++j)
      for (int32_t e = col_ptr[j]; e < col_ptr[j + 1]; ++e) {
        const int32_t k = place[rows[e]]++;
        cols_out[k] = static_cast<int32_t>(j);
        row_vals[k] = vals[e];
      }
  }
}


// x_hat = f W_dec + b_dec, token by token over the by-token lists, in column slices of
// kDecodeWidth. Features are taken kDecodeFeatures at a time: the threads first copy those rows
// of W_dec (read in order, contiguous) into one tile per column slice ([kDecodeFeatures,
// kDecodeWidth], 256 KB, contiguous); then each slice's task adds, for every token, its entries in
// those features into kDecodeWidth sums held in registers. The sums for all tokens live in a
// slice-major buffer between feature blocks. Each x_hat value sums its features in feature order.
constexpr int64_t kDecodeWidth = 64, kDecodeFeatures = 1024;

// With few entries per token (TopK's k), each token's row is summed directly from its entries'
// rows of W_dec: the tiles above would copy all of W_dec and pass over every token's sums once per
// block of features. The arithmetic is the same, so the result is bit for bit the same.
constexpr int64_t kDirectDecodeEntriesPerToken = 64;

template <typename T>
void sparse_decode_direct(T* x_hat, const int32_t* row_ptr, const int32_t* cols_in, const T* row_vals, const T* W,
                          const T* b, int64_t n, int64_t d) {
#pragma omp parallel if (int64_t(row_ptr[n]) * d >= kParallelMin)
  {
    std::vector<T> acc(d);
#pragma omp for schedule(dynamic, 16)
    for (int64_t t = 0; t < n; ++t) {
      std::fill(acc.begin(), acc.end(), T(0));
      T* a = acc.data();
      for (int32_t k = row_ptr[t]; k < row_ptr[t + 1]; ++k) {
        const T* w = W + int64_t(cols_in[k]) * d;
        const T value = row_vals[k];
        if (k + 1 < row_ptr[t + 1]) {
          const char* next = reinterpret_cast<const char*>(W + int64_t(cols_in[k + 1]) * d);
          for (int64_t line = 0; line < d * int64_t(sizeof(T)); line += 64) __builtin_prefetch(next + line);
        }
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) a[c] += value * w[c];
      }
      T* out = x_hat + t * d;
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) out[c] = a[c] + b[c];
    }
  }
}

template <typename T>
void sparse_decode_typed(T* x_hat, const int32_t* row_ptr, const int32_t* cols_in, const T* row_vals, const T* W,
                         const T* b, int64_t n, int64_t d, int64_t cols) {
  if (int64_t(row_ptr[n]) <= kDirectDecodeEntriesPerToken * n) {
    sparse_decode_direct(x_hat, row_ptr, cols_in, row_vals, W, b, n, d);
    return;
  }
  constexpr int64_t C = kDecodeWidth;
  const int64_t widths = (d + C - 1) / C;
  thread_local std::vector<T> tiles_buffer, sums_buffer;
  thread_local std::vector<int32_t> cursor_buffer;
  T* tiles = grow(tiles_buffer, widths * kDecodeFeatures * C);  // [widths][kDecodeFeatures][C]
  T* sums = grow(sums_buffer, widths * n * C);                   // [widths][n][C]
  int32_t* cursor = grow(cursor_buffer, widths * n);             // [widths][n]: next entry per token
  std::fill(sums, sums + widths * n * C, T(0));
  for (int64_t w = 0; w < widths; ++w) std::copy(row_ptr, row_ptr + n, cursor + w * n);
#pragma omp parallel if (int64_t(row_ptr[n]) * d + cols * d >= kParallelMin)
  {
    for (int64_t i0 = 0; i0 < cols; i0 += kDecodeFeatures) {
      const int64_t i1 = std::min(cols, i0 + kDecodeFeatures);
#pragma omp for schedule(static)
      for (int64_t i = i0; i < i1; ++i) {
        const T* row = W + i * d;
        for (int64_t w = 0; w < widths; ++w) {
          T* out = tiles + (w * kDecodeFeatures + (i - i0)) * C;
          const int64_t width = std::min(d - w * C, C);
          std::memcpy(out, row + w * C, width * sizeof(T));
          std::fill(out + width, out + C, T(0));  // columns past d
        }
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t w = 0; w < widths; ++w) {
        const T* tile = tiles + w * kDecodeFeatures * C;
        int32_t* next = cursor + w * n;
        for (int64_t t = 0; t < n; ++t) {
          int32_t k = next[t];
          const int32_t end = row_ptr[t + 1];
          if (k == end || cols_in[k] >= i1) continue;
          T acc[C];
          T* out = sums + (w * n + t) * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) acc[c] = out[c];
          for (; k < end && cols_in[k] < i1; ++k) {
            const T* wk = tile + (cols_in[k] - i0) * C;
            const T value = row_vals[k];
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) acc[c] += value * wk[c];
          }
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) out[c] = acc[c];
          next[t] = k;
        }
      }
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n; ++t)
      for (int64_t w = 0; w < widths; ++w) {
        const int64_t d0 = w * C, width = std::min(d - d0, C);
        const T* in = sums + (w * n + t) * C;
        T* out = x_hat + t * d + d0;
#pragma omp simd
        for (int64_t c = 0; c < width; ++c) out[c] = in[c] + b[d0 + c];
      }
  }
}

constexpr int64_t kDotLanes = 32, kPairLanes = 16;

// Feature by feature: for each entry, one pass over the token's dx row gives both the dot product
// with W_dec[i] (-> dpre) and its share of dW_dec[i]; then the L1 term, then the row's update.
// Both use fused multiply-adds (std::fma): one rounding per product-and-sum, and half the
// arithmetic instructions, which this memory-bound loop needs to keep up with its row reads.
template <typename T>
void sparse_decoder_backward_typed(T* dpre, ParamUpdate& update, const T* dx, const int32_t* col_ptr,
                                   const int32_t* rows, const T* vals, const T* norms, const T* col_sum, double l1,
                                   bool unit_norm, int64_t d, int64_t cols) {
  const UpdateSink<T> sink(update);
  const T* W = update.param.data<T>();
  const T lambda = static_cast<T>(l1), tiny = static_cast<T>(1e-30);
#pragma omp parallel if (int64_t(col_ptr[cols]) * d + cols * d >= kParallelMin)
  {
    std::vector<T> grad(d);
    T* g = grad.data();
#pragma omp for schedule(dynamic, 16)
    for (int64_t i = 0; i < cols; ++i) {
      const T* w = W + i * d;
      // The dense path's expressions (sae_step.cpp, dense_backward): affine(norms, l1, 0), then
      // affine(col_sum / max(norms, tiny), l1, 0).
      const T row_add = lambda * norms[i] + T(0);
      const T scale = lambda * (col_sum[i] / (norms[i] > tiny ? norms[i] : tiny)) + T(0);  // maximum op
      std::fill(g, g + d, T(0));
      int32_t e = col_ptr[i];
      // Four entries at a time, then two, then one: W_dec's row and g are loaded (and g stored)
      // once per group. Each g element adds its entries in token order whatever the grouping.
      for (; e + 3 < col_ptr[i + 1]; e += 4) {
        const T* dx_r[4];
        T value[4];
        for (int q = 0; q < 4; ++q) {
          dx_r[q] = dx + int64_t(rows[e + q]) * d;
          value[q] = vals[e + q];
          if (e + 4 + q < col_ptr[cols]) {
            const char* next = reinterpret_cast<const char*>(dx + int64_t(rows[e + 4 + q]) * d);
            for (int line = 0; line < 8; ++line) __builtin_prefetch(next + 64 * line);
          }
        }
        T lanes[4][kPairLanes] = {};
        int64_t c = 0;
        for (; c + kPairLanes <= d; c += kPairLanes) {
#pragma omp simd
          for (int64_t k = 0; k < kPairLanes; ++k) {
            const T wk = w[c + k];
            lanes[0][k] = std::fma(dx_r[0][c + k], wk, lanes[0][k]);
            lanes[1][k] = std::fma(dx_r[1][c + k], wk, lanes[1][k]);
            lanes[2][k] = std::fma(dx_r[2][c + k], wk, lanes[2][k]);
            lanes[3][k] = std::fma(dx_r[3][c + k], wk, lanes[3][k]);
            T gk = std::fma(value[0], dx_r[0][c + k], g[c + k]);
            gk = std::fma(value[1], dx_r[1][c + k], gk);
            gk = std::fma(value[2], dx_r[2][c + k], gk);
            g[c + k] = std::fma(value[3], dx_r[3][c + k], gk);
          }
        }
        for (int64_t k = 0; c < d; ++c, ++k) {
          for (int q = 0; q < 4; ++q) lanes[q][k] = std::fma(dx_r[q][c], w[c], lanes[q][k]);
          for (int q = 0; q < 4; ++q) g[c] = std::fma(value[q], dx_r[q][c], g[c]);
        }
        for (int q = 0; q < 4; ++q) {
          T dot = 0;
          for (int64_t k = 0; k < kPairLanes; ++k) dot += lanes[q][k];
          dpre[e + q] = dot + row_add;
        }
      }
      // Two entries at a time (the same operations, in the same order, as one at a time).
      for (; e + 1 < col_ptr[i + 1]; e += 2) {
        const T* dx_a = dx + int64_t(rows[e]) * d;
        const T* dx_b = dx + int64_t(rows[e + 1]) * d;
        const T value_a = vals[e], value_b = vals[e + 1];
        if (e + 2 < col_ptr[cols]) {
          const char* next = reinterpret_cast<const char*>(dx + int64_t(rows[e + 2]) * d);
          for (int line = 0; line < 8; ++line) __builtin_prefetch(next + 64 * line);
        }
        T lanes_a[kPairLanes] = {}, lanes_b[kPairLanes] = {};
        int64_t c = 0;
        for (; c + kPairLanes <= d; c += kPairLanes) {
#pragma omp simd
          for (int64_t k = 0; k < kPairLanes; ++k) {
            lanes_a[k] = std::fma(dx_a[c + k], w[c + k], lanes_a[k]);
            lanes_b[k] = std::fma(dx_b[c + k], w[c + k], lanes_b[k]);
            g[c + k] = std::fma(value_b, dx_b[c + k], std::fma(value_a, dx_a[c + k], g[c + k]));
          }
        }
        for (int64_t k = 0; c < d; ++c, ++k) {
          lanes_a[k] = std::fma(dx_a[c], w[c], lanes_a[k]);
          lanes_b[k] = std::fma(dx_b[c], w[c], lanes_b[k]);
          g[c] = std::fma(value_b, dx_b[c], std::fma(value_a, dx_a[c], g[c]));
        }
        T dot_a = 0, dot_b = 0;
        for (int64_t k = 0; k < kPairLanes; ++k) {
          dot_a += lanes_a[k];
          dot_b += lanes_b[k];
        }
        dpre[e] = dot_a + row_add;
        dpre[e + 1] = dot_b + row_add;
      }
      for (; e < col_ptr[i + 1]; ++e) {
        const T* dx_t = dx + int64_t(rows[e]) * d;
        const T value = vals[e];
        // Start the next entry's row early (random rows: the hardware prefetcher starts late).
        if (e + 1 < col_ptr[cols]) {
          const char* next = reinterpret_cast<const char*>(dx + int64_t(rows[e + 1]) * d);
          for (int line = 0; line < 8; ++line) __builtin_prefetch(next + 64 * line);
        }
        // kDotLanes independent partial sums (several vector registers), added in a fixed order:
        // one running sum would wait on the adder's latency at every step.
        T lanes[kDotLanes] = {};
        int64_t c = 0;
        for (; c + kDotLanes <= d; c += kDotLanes) {
#pragma omp simd
          for (int64_t k = 0; k < kDotLanes; ++k) {
            lanes[k] = std::fma(dx_t[c + k], w[c + k], lanes[k]);
            g[c + k] = std::fma(value, dx_t[c + k], g[c + k]);
          }
        }
        for (int64_t k = 0; c < d; ++c, ++k) {
          lanes[k] = std::fma(dx_t[c], w[c], lanes[k]);
          g[c] = std::fma(value, dx_t[c], g[c]);
        }
        T dot = 0;
        for (int64_t k = 0; k < kDotLanes; ++k) dot += lanes[k];
        dpre[e] = dot + row_add;
      }
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) g[c] = g[c] + scale * w[c];
      if (unit_norm) project_out_row(g, w, norms[i], d);
      sink.store(i * d, g, d);  // the row's old values have all been read
      if (unit_norm && update.adam) normalize_row(sink.param + i * d, d);
    }
  }
}

// Blocks of kEncoderRows rows of W_enc (row j of W_enc: feature weights of input dimension j),
// so that Adam streams through W_enc, m and v in memory order. For a block j0..j0+R and each
// feature i, the R sums dW_enc[j0:j0+R, i] = sum_e dpre[e] x[rows[e], j0:j0+R] over the feature's
// entries (in token order) stay in registers; groups of 8 features are transposed into the block's
// gradient rows [R, F] (in L2), and then each row goes through the update. db_enc is summed apart.
constexpr int64_t kEncoderRows = 16;

// out[jj * stride + ii] = tile[ii * 16 + jj] for a full group of 8 features (ii) and 16 rows (jj):
// two 8 x 8 transposes in AVX registers. Returns false (nothing done) where it does not apply.
template <typename T>
bool transpose_group(const T* tile, T* out, int64_t stride, int64_t group) {
#if defined(__AVX__)
  if constexpr (std::is_same_v<T, float>) {
    static_assert(kEncoderRows == 16);
    if (group != 8) return false;
    for (int half = 0; half < 2; ++half) {
      __m256 r[8], t[8];
      for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(tile + k * 16 + half * 8);
      t[0] = _mm256_unpacklo_ps(r[0], r[1]);
      t[1] = _mm256_unpackhi_ps(r[0], r[1]);
      t[2] = _mm256_unpacklo_ps(r[2], r[3]);
      t[3] = _mm256_unpackhi_ps(r[2], r[3]);
      t[4] = _mm256_unpacklo_ps(r[4], r[5]);
      t[5] = _mm256_unpackhi_ps(r[4], r[5]);
      t[6] = _mm256_unpacklo_ps(r[6], r[7]);
      t[7] = _mm256_unpackhi_ps(r[6], r[7]);
      r[0] = _mm256_shuffle_ps(t[0], t[2], _MM_SHUFFLE(1, 0, 1, 0));
      r[1] = _mm256_shuffle_ps(t[0], t[2], _MM_SHUFFLE(3, 2, 3, 2));
      r[2] = _mm256_shuffle_ps(t[1], t[3], _MM_SHUFFLE(1, 0, 1, 0));
      r[3] = _mm256_shuffle_ps(t[1], t[3], _MM_SHUFFLE(3, 2, 3, 2));
      r[4] = _mm256_shuffle_ps(t[4], t[6], _MM_SHUFFLE(1, 0, 1, 0));
      r[5] = _mm256_shuffle_ps(t[4], t[6], _MM_SHUFFLE(3, 2, 3, 2));
      r[6] = _mm256_shuffle_ps(t[5], t[7], _MM_SHUFFLE(1, 0, 1, 0));
      r[7] = _mm256_shuffle_ps(t[5], t[7], _MM_SHUFFLE(3, 2, 3, 2));
      for (int k = 0; k < 4; ++k) {
        _mm256_storeu_ps(out + (half * 8 + k) * stride, _mm256_permute2f128_ps(r[k], r[k + 4], 0x20));
        _mm256_storeu_ps(out + (half * 8 + k + 4) * stride, _mm256_permute2f128_ps(r[k], r[k + 4], 0x31));
      }
    }
    return true;
  }
#endif
  return false;
}

template <typename T>
void sparse_encoder_backward_typed(ParamUpdate& W_update, ParamUpdate& b_update, const T* x, const int32_t* col_ptr,
                                   const int32_t* rows, const T* dpre, int64_t n, int64_t d, int64_t cols) {
  const UpdateSink<T> W_sink(W_update), b_sink(b_update);
  constexpr int64_t R = kEncoderRows, kGroup = 8;
  const int64_t blocks = (d + R - 1) / R;
  const bool threaded = int64_t(col_ptr[cols]) * d + cols * d >= kParallelMin;
#pragma omp parallel if (threaded)
  {
    thread_local std::vector<T> grad_rows_buffer, x_columns_buffer;
    T* grad_rows = grow(grad_rows_buffer, R * cols);
#pragma omp for schedule(dynamic, 1)
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t j0 = block * R, height = std::min(d, j0 + R) - j0;
      // x[:, j0:j0+R] copied to a contiguous [N, R] buffer (in L2), read once per entry.
      T* xj = grow(x_columns_buffer, n * R);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t jj = 0; jj < R; ++jj) xj[t * R + jj] = jj < height ? x[t * d + j0 + jj] : T(0);
      for (int64_t i0 = 0; i0 < cols; i0 += kGroup) {
        const int64_t group = std::min(kGroup, cols - i0);
        T tile[kGroup][R];
        for (int64_t ii = 0; ii < group; ++ii) {
          T acc[R] = {};
          for (int32_t e = col_ptr[i0 + ii]; e < col_ptr[i0 + ii + 1]; ++e) {
            const T* x_t = xj + int64_t(rows[e]) * R;
            const T p = dpre[e];
#pragma omp simd
            for (int64_t jj = 0; jj < R; ++jj) acc[jj] += p * x_t[jj];
          }
          for (int64_t jj = 0; jj < R; ++jj) tile[ii][jj] = acc[jj];
        }
        if (!transpose_group(&tile[0][0], grad_rows + i0, cols, group))
          for (int64_t jj = 0; jj < height; ++jj)
            for (int64_t ii = 0; ii < group; ++ii) grad_rows[jj * cols + i0 + ii] = tile[ii][jj];
      }
      for (int64_t jj = 0; jj < height; ++jj) W_sink.store((j0 + jj) * cols, grad_rows + jj * cols, cols);
    }
    // db_enc[i] = sum_e dpre[e], in token order, in chunks of the grad_rows buffer.
#pragma omp for schedule(static)
    for (int64_t c0 = 0; c0 < cols; c0 += R * 64) {
      const int64_t c1 = std::min(cols, c0 + R * 64);
      for (int64_t i = c0; i < c1; ++i) {
        T sum = 0;
        for (int32_t e = col_ptr[i]; e < col_ptr[i + 1]; ++e) sum += dpre[e];
        grad_rows[i - c0] = sum;
      }
      b_sink.store(c0, grad_rows, c1 - c0);
    }
  }
}

// ---- by-feature lists from by-token lists: a counting sort by feature, rows in order ----

template <typename T>
void sparse_by_feature_typed(SparseFeatures& s, T* col_sum, T* col_count, int64_t rows, int64_t cols) {
  const int32_t* row_ptr = s.row_ptr.data<int32_t>();
  const int32_t* token_cols = s.cols.data<int32_t>();
  const T* token_vals = s.row_vals.data<T>();
  int32_t* col_ptr = s.col_ptr.data<int32_t>();
  int32_t* rows_out = s.rows.data<int32_t>();
  T* vals_out = s.vals.data<T>();
  std::fill(col_count, col_count + cols, T(0));
  std::fill(col_sum, col_sum + cols, T(0));
  thread_local std::vector<int32_t> next_buffer;
  int32_t* next = grow(next_buffer, cols + 1);
  std::fill(next, next + cols + 1, 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int32_t e = row_ptr[r]; e < row_ptr[r + 1]; ++e) {
      ++next[token_cols[e]];
      col_sum[token_cols[e]] += token_vals[e];
    }
  col_ptr[0] = 0;
  for (int64_t j = 0; j < cols; ++j) {
    col_count[j] = static_cast<T>(next[j]);
    col_ptr[j + 1] = col_ptr[j] + next[j];
    next[j] = col_ptr[j];
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int32_t e = row_ptr[r]; e < row_ptr[r + 1]; ++e) {
      const int32_t at = next[token_cols[e]]++;
      rows_out[at] = static_cast<int32_t>(r);
      vals_out[at] = token_vals[e];
    }
}

}  // namespace

void sparse_index_cpu(SparseFeatures& s, const Tensor& f, const Tensor& col_count) {
  dispatch_compute_and_storage(f.dtype(), "sparse_index", [&](auto zero, auto stored) {
    using T = decltype(zero);
    using S = decltype(stored);
    sparse_index_typed(s.col_ptr.data<int32_t>(), s.rows.data<int32_t>(), s.vals.data<T>(), s.row_ptr.data<int32_t>(),
                       s.cols.data<int32_t>(), s.row_vals.data<T>(), f.data<S>(), col_count.data<T>(), f.size(0),
                       f.size(1));
  });
}

void sparse_decode_cpu(Tensor& x_hat, const SparseFeatures& s, const Tensor& W_dec, const Tensor& b_dec) {
  dispatch_float(x_hat.dtype(), "sparse_decode", [&](auto zero) {
    using T = decltype(zero);
    sparse_decode_typed(x_hat.data<T>(), s.row_ptr.data<int32_t>(), s.cols.data<int32_t>(), s.row_vals.data<T>(),
                        W_dec.data<T>(), b_dec.data<T>(), x_hat.size(0), x_hat.size(1), W_dec.size(0));
  });
}

void sparse_scatter_cpu(Tensor& f, const SparseFeatures& s, int64_t row0) {
  dispatch_float(f.dtype(), "sparse_scatter", [&](auto zero) {
    using T = decltype(zero);
    T* out = f.data<T>();
    const int32_t* row_ptr = s.row_ptr.data<int32_t>() + row0;
    const int32_t* cols = s.cols.data<int32_t>();
    const T* vals = s.row_vals.data<T>();
    const int64_t rows = f.size(0), features = f.size(1);
#pragma omp parallel for schedule(static) if (int64_t(row_ptr[rows] - row_ptr[0]) >= kParallelMin)
    for (int64_t r = 0; r < rows; ++r)
      for (int32_t e = row_ptr[r]; e < row_ptr[r + 1]; ++e) out[r * features + cols[e]] = vals[e];
  });
}

void sparse_decoder_backward_cpu(Tensor& dpre, ParamUpdate& W_dec, const Tensor& grad_x_hat, const SparseFeatures& s,
                                 const Tensor& norms, const Tensor& col_sum, double l1, bool unit_norm) {
  dispatch_float(grad_x_hat.dtype(), "sparse_decoder_backward", [&](auto zero) {
    using T = decltype(zero);
    sparse_decoder_backward_typed(dpre.data<T>(), W_dec, grad_x_hat.data<T>(), s.col_ptr.data<int32_t>(),
                                  s.rows.data<int32_t>(), s.vals.data<T>(), norms.data<T>(), col_sum.data<T>(), l1,
                                  unit_norm, grad_x_hat.size(1), W_dec.param.size(0));
  });
}

void sparse_encoder_backward_cpu(ParamUpdate& W_enc, ParamUpdate& b_enc, const Tensor& x, const SparseFeatures& s,
                                 const Tensor& dpre) {
  dispatch_float(x.dtype(), "sparse_encoder_backward", [&](auto zero) {
    using T = decltype(zero);
    sparse_encoder_backward_typed(W_enc, b_enc, x.data<T>(), s.col_ptr.data<int32_t>(), s.rows.data<int32_t>(),
                                  dpre.data<T>(), x.size(0), x.size(1), W_enc.param.size(1));
  });
}

void sparse_by_feature_cpu(SparseFeatures& s, Tensor& col_sum, Tensor& col_count) {
  dispatch_float(col_sum.dtype(), "sparse_by_feature", [&](auto zero) {
    using T = decltype(zero);
    sparse_by_feature_typed(s, col_sum.data<T>(), col_count.data<T>(), s.row_ptr.numel() - 1, col_sum.numel());
  });
}

}  // namespace sae
