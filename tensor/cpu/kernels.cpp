// CPU kernels for every entry of the op list (op_list.h): plain loops, OpenMP across cores for
// large tensors, cblas_sgemm/dgemm for matmul (float32 operands rounded first at --precision tf32 or
// bf16: gemm_precision.h). The transformer ops' kernels are in
// transformer_kernels.cpp; the table below holds both. Inputs were validated by the front-end (ops.cpp).
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "tensor/cpu/gemm_precision.h"
#include "tensor/cpu/parallel.h"
#include "tensor/cpu/transformer_kernels.h"
#include "tensor/dispatch.h"
#include "tensor/element_math.h"
#include "tensor/op_list.h"
#include "tensor/threads.h"

namespace sae {

namespace {

// The op is a template parameter so that each loop compiles to straight, vectorisable code.
template <typename T, UnaryOp Op>
void unary_loop(T* out, const T* x, int64_t n) {
#pragma omp parallel for simd if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) out[i] = apply_unary(Op, x[i]);
}

template <typename T>
void unary_typed(UnaryOp op, T* out, const T* x, int64_t n) {
  switch (op) {
#define SAE_UNARY_CASE(name) \
  case UnaryOp::name:        \
    return unary_loop<T, UnaryOp::name>(out, x, n);
    SAE_UNARY_OPS(SAE_UNARY_CASE)
#undef SAE_UNARY_CASE
    default: return;
  }
}

template <typename T, BinaryOp Op>
void binary_loop(T* out, const T* a, const T* b, const Broadcast& p) {
  const int64_t n = p.out_dims[0] * p.out_dims[1] * p.out_dims[2] * p.out_dims[3];
  if (p.same_shape) {
#pragma omp parallel for simd if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) out[i] = apply_binary(Op, a[i], b[i]);
    return;
  }
  // General case: the outer three dims index rows, the last dim is the inner loop.
  const int64_t rows = p.out_dims[0] * p.out_dims[1] * p.out_dims[2], cols = p.out_dims[3];
  const int64_t sa3 = p.a_strides[3], sb3 = p.b_strides[3];
#pragma omp parallel for if (n >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t i2 = r % p.out_dims[2], i1 = (r / p.out_dims[2]) % p.out_dims[1], i0 = r / (p.out_dims[2] * p.out_dims[1]);
    const T* ar = a + i0 * p.a_strides[0] + i1 * p.a_strides[1] + i2 * p.a_strides[2];
    const T* br = b + i0 * p.b_strides[0] + i1 * p.b_strides[1] + i2 * p.b_strides[2];
    T* o = out + r * cols;
    if (sa3 == 1 && sb3 == 1) {
      for (int64_t c = 0; c < cols; ++c) o[c] = apply_binary(Op, ar[c], br[c]);
    } else if (sa3 == 1) {
      const T bv = br[0];
      for (int64_t c = 0; c < cols; ++c) o[c] = apply_binary(Op, ar[c], bv);
    } else if (sb3 == 1) {
      const T av = ar[0];
      for (int64_t c = 0; c < cols; ++c) o[c] = apply_binary(Op, av, br[c]);
    } else {
      for (int64_t c = 0; c < cols; ++c) o[c] = apply_binary(Op, ar[0], br[0]);
    }
  }
}

template <typename T>
void binary_typed(BinaryOp op, T* out, const T* a, const T* b, const Broadcast& p) {
  switch (op) {
#define SAE_BINARY_CASE(name) \
  case BinaryOp::name:        \
    return binary_loop<T, BinaryOp::name>(out, a, b, p);
    SAE_BINARY_OPS(SAE_BINARY_CASE)
#undef SAE_BINARY_CASE
    default: return;
  }
}

// ---- reductions: one accumulator in double, finished by `finish` ----
struct Accumulator {
  ReduceOp op;
  double value;
  explicit Accumulator(ReduceOp o) : op(o) {
    value = op == ReduceOp::max ? -INFINITY : (op == ReduceOp::min ? INFINITY : 0.0);
  }
  void add(double x) {
    switch (op) {
      case ReduceOp::max: value = (x > value || std::isnan(x)) ? x : value; break;
      case ReduceOp::min: value = (x < value || std::isnan(x)) ? x : value; break;
      case ReduceOp::sum_squares:
      case ReduceOp::norm2: value += x * x; break;
      case ReduceOp::count_nonzero: value += (x != 0.0); break;
      default: value += x;
    }
  }
  double finish(int64_t count) const {
    if (op == ReduceOp::mean) return value / static_cast<double>(count);
    if (op == ReduceOp::norm2) return std::sqrt(value);
    return value;
  }
};

template <typename ChunkSum>
double deterministic_sum(int64_t n, ChunkSum chunk_sum) {
  // Fixed chunks of about kSumChunk values, summed in order: the result depends on n only, not on the
  // number of threads (--threads, OMP_NUM_THREADS, the machine's cores).
  constexpr int64_t kSumChunk = 1 << 15;
  if (n < 2 * kSumChunk) return chunk_sum(0, n);
  const int64_t chunks = n / kSumChunk;
  std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t c = 0; c < chunks; ++c)
    partial[c] = chunk_sum(n * c / chunks, n * (c + 1) / chunks);
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

template <typename T>
double reduce_range(ReduceOp op, const T* x, int64_t n) {
  // Sums (the hot ones): vectorised double accumulation, split across threads deterministically.
  if (op == ReduceOp::sum || op == ReduceOp::mean || op == ReduceOp::sum_squares || op == ReduceOp::norm2) {
    const bool squares = op == ReduceOp::sum_squares || op == ReduceOp::norm2;
    Accumulator acc(op);
    acc.value = deterministic_sum(n, [x, squares](int64_t begin, int64_t end) {
      double total = 0.0;
      if (squares) {
#pragma omp simd reduction(+ : total)
        for (int64_t i = begin; i < end; ++i) total += static_cast<double>(x[i]) * x[i];
      } else {
#pragma omp simd reduction(+ : total)
        for (int64_t i = begin; i < end; ++i) total += x[i];
      }
      return total;
    });
    return acc.finish(n);
  }
  Accumulator acc(op);
  for (int64_t i = 0; i < n; ++i) acc.add(x[i]);
  return acc.finish(n);
}

template <typename T>
void reduce_axis_typed(ReduceOp op, T* out, const T* x, int64_t outer, int64_t len, int64_t inner) {
  if (inner == 1) {
#pragma omp parallel for if (outer * len >= kParallelMin)
    for (int64_t o = 0; o < outer; ++o) out[o] = static_cast<T>(reduce_range(op, x + o * len, len));
    return;
  }
  // Reduce over a middle axis: sweep rows of `inner` contiguous values into double accumulators.
#pragma omp parallel if (outer * len * inner >= kParallelMin)
  {
    std::vector<Accumulator> acc;
#pragma omp for
    for (int64_t o = 0; o < outer * ((inner + 255) / 256); ++o) {
      int64_t block = o % ((inner + 255) / 256), oo = o / ((inner + 255) / 256);
      int64_t k0 = block * 256, k1 = std::min(inner, k0 + 256);
      acc.assign(k1 - k0, Accumulator(op));
      if (op == ReduceOp::sum || op == ReduceOp::mean) {  // the common case, vectorised
        double sums[256] = {};
        for (int64_t j = 0; j < len; ++j) {
          const T* row = x + (oo * len + j) * inner;
#pragma omp simd
          for (int64_t k = k0; k < k1; ++k) sums[k - k0] += row[k];
        }
        for (int64_t k = k0; k < k1; ++k) acc[k - k0].value = sums[k - k0];
      } else {
        for (int64_t j = 0; j < len; ++j) {
          const T* row = x + (oo * len + j) * inner;
          for (int64_t k = k0; k < k1; ++k) acc[k - k0].add(row[k]);
        }
      }
      for (int64_t k = k0; k < k1; ++k) out[oo * inner + k] = static_cast<T>(acc[k - k0].finish(len));
    }
  }
}

// ---- kernels registered in the table ----

void fill_cpu(Tensor& out, double value) {
  dispatch_float(out.dtype(), "fill", [&](auto zero) {
    using T = decltype(zero);
    T* p = out.data<T>();
    const T v = static_cast<T>(value);
    const int64_t n = out.numel();
#pragma omp parallel for simd if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) p[i] = v;
  });
}

template <typename To, typename From>
void convert(To* out, const From* src, int64_t n) {
#pragma omp parallel for if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) out[i] = convert_element<To>(src[i]);
}

void copy_cpu(Tensor& out, const Tensor& src) {
  const int64_t n = out.numel();
  if (out.dtype() == src.dtype()) {
    std::memmove(out.raw(), src.raw(), out.nbytes());
    return;
  }
  dispatch_storage(out.dtype(), "copy", [&](auto to) {
    dispatch_storage(src.dtype(), "copy", [&](auto from) {
      using To = decltype(to);
      using From = decltype(from);
      convert(out.data<To>(), src.data<From>(), n);
    });
  });
}

void unary_cpu(UnaryOp op, Tensor& out, const Tensor& x) {
  dispatch_float(x.dtype(), op_name(op), [&](auto zero) {
    using T = decltype(zero);
    unary_typed(op, out.data<T>(), x.data<T>(), x.numel());
  });
}

void binary_cpu(BinaryOp op, Tensor& out, const Tensor& a, const Tensor& b, const Broadcast& plan) {
  dispatch_float(a.dtype(), op_name(op), [&](auto zero) {
    using T = decltype(zero);
    binary_typed(op, out.data<T>(), a.data<T>(), b.data<T>(), plan);
  });
}

void affine_cpu(Tensor& out, const Tensor& x, double scale, double shift) {
  dispatch_float(x.dtype(), "affine", [&](auto zero) {
    using T = decltype(zero);
    T* o = out.data<T>();
    const T* in = x.data<T>();
    const T s = static_cast<T>(scale), b = static_cast<T>(shift);
    const int64_t n = x.numel();
#pragma omp parallel for simd if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) o[i] = s * in[i] + b;
  });
}

void where_cpu(Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b) {
  dispatch_float(a.dtype(), "where", [&](auto zero) {
    using T = decltype(zero);
    T* o = out.data<T>();
    const T *c = cond.data<T>(), *pa = a.data<T>(), *pb = b.data<T>();
    const int64_t n = a.numel();
#pragma omp parallel for simd if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) o[i] = c[i] != T(0) ? pa[i] : pb[i];
  });
}

void reduce_all_cpu(ReduceOp op, Tensor& out, const Tensor& x) {
  dispatch_float(x.dtype(), op_name(op), [&](auto zero) {
    using T = decltype(zero);
    out.data<T>()[0] = static_cast<T>(reduce_range(op, x.data<T>(), x.numel()));
  });
}

void reduce_axis_cpu(ReduceOp op, Tensor& out, const Tensor& x, int64_t outer, int64_t len, int64_t inner) {
  dispatch_float(x.dtype(), op_name(op), [&](auto zero) {
    using T = decltype(zero);
    reduce_axis_typed(op, out.data<T>(), x.data<T>(), outer, len, inner);
  });
}

// A 16-bit weight operand b: kTileFloats of it at a time widened to float32 (columns j0..j0+nb of
// op(b): rows of b when trans_b, else a block of its columns), then one GEMM (or GEMV for one row of a)
// into those columns of out. The rows of out are complete after each tile: no sum crosses tiles.
// At tf32 / bf16 the widened values are rounded as the precision rounds GEMM inputs (a no-op except
// for f16 weights at bf16: bf16 values are exact in both, f16 ones in tf32); the caller rounds a.
template <typename H>
void matmul_widened(float* out, const float* a, bool trans_a, const H* b, bool trans_b, int64_t m, int64_t n,
                    int64_t k, int64_t lda, int64_t ldb, float alpha, float beta, Precision precision) {
  constexpr int64_t kTileFloats = int64_t(1) << 18;  // 1 MB of float32
  const int64_t tile = std::max<int64_t>(16, kTileFloats / std::max<int64_t>(k, 1) / 16 * 16);
  std::vector<float> widened(static_cast<size_t>(std::min(tile, n) * k));
  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
  for (int64_t j0 = 0; j0 < n; j0 += tile) {
    const int64_t nb = std::min(tile, n - j0);
    float* w = widened.data();
    if (trans_b) {  // rows j0.. of b [n, k]: w [nb, k]
      const H* src = b + j0 * ldb;
#pragma omp parallel for if (nb * k >= kParallelMin)
      for (int64_t r = 0; r < nb; ++r)
        for (int64_t c = 0; c < k; ++c) w[r * k + c] = round_to_precision(widen(src[r * ldb + c]), precision);
    } else {  // columns j0.. of b [k, n]: w [k, nb]
#pragma omp parallel for if (nb * k >= kParallelMin)
      for (int64_t r = 0; r < k; ++r)
        for (int64_t c = 0; c < nb; ++c) w[r * nb + c] = round_to_precision(widen(b[r * ldb + j0 + c]), precision);
    }
    const int ldw = static_cast<int>(trans_b ? k : nb);
    if (m == 1 && !trans_a) {  // one row: y [nb] = op(w) x (GEMV reads w once)
      cblas_sgemv(CblasRowMajor, trans_b ? CblasNoTrans : CblasTrans, static_cast<int>(trans_b ? nb : k),
                  static_cast<int>(trans_b ? k : nb), alpha, w, ldw, a, 1, beta, out + j0, 1);
    } else {
      cblas_sgemm(CblasRowMajor, ta, trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m), static_cast<int>(nb),
                  static_cast<int>(k), alpha, a, static_cast<int>(lda), w, ldw, beta, out + j0, static_cast<int>(n));
    }
  }
}

// The rows a tile of a 16-bit GEMM's scratch holds: about kScratchFloats float32 values of rows of
// `width`, at least 64 rows (fewer tiles re-pack op(b) fewer times). Whole rows of out per tile: no
// sum crosses tiles, so the products are those of one GEMM.
int64_t scratch_rows(int64_t width) {
  constexpr int64_t kScratchFloats = int64_t(1) << 26;  // 256 MB
  return std::max<int64_t>(64, kScratchFloats / std::max<int64_t>(width, 1));
}

// The first `floats` values of a float32 scratch kept between calls, remade (the old one freed
// first) when it is smaller.
Tensor kept_scratch(Tensor& kept, int64_t floats) {
  if (!kept.defined() || kept.numel() < floats) {
    kept = Tensor();
    kept = Tensor::empty(Shape{std::max<int64_t>(floats, 1)}, DType::F32, Device::CPU);
  }
  return kept.slice_rows(0, floats);
}

void matmul_cpu(Tensor& out, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, double alpha,
                double beta) {
  const int64_t out_rows = out.size(0);
  if (out.dtype() == DType::BF16) {  // the float32 product of a block of rows in scratch, then rounded
    // With trans_a, op(a)'s rows are a's columns: one block.
    const int64_t tile = trans_a ? std::max<int64_t>(out_rows, 1) : scratch_rows(out.size(1));
    thread_local Tensor scratch;
    for (int64_t r0 = 0; r0 < out_rows; r0 += tile) {
      const int64_t r1 = std::min(out_rows, r0 + tile);
      Tensor block = out.slice_rows(r0, r1);
      Tensor product = kept_scratch(scratch, block.numel()).reshape(block.shape());
      matmul_cpu(product, trans_a ? a : a.slice_rows(r0, r1), trans_a, b, trans_b, alpha, 0.0);
      copy_cpu(block, product);
    }
    return;
  }
  if (is_half_dtype(a.dtype())) {  // activations in 16 bits: a block of op(a)'s rows widened at a time
    const int64_t width = trans_a ? a.size(0) : a.size(1), tile = scratch_rows(width);
    thread_local Tensor wide;
    for (int64_t r0 = 0; r0 < out_rows; r0 += tile) {
      const int64_t r1 = std::min(out_rows, r0 + tile), rows = r1 - r0;
      Tensor block = out.slice_rows(r0, r1);
      if (!trans_a) {  // rows r0.. of a
        Tensor widened = kept_scratch(wide, rows * width).reshape(Shape{rows, width});
        copy_cpu(widened, a.slice_rows(r0, r1));
        matmul_cpu(block, widened, false, b, trans_b, alpha, beta);
      } else {  // columns r0.. of a [width, out_rows]: widened [width, rows], op = its transpose
        Tensor widened = kept_scratch(wide, width * rows).reshape(Shape{width, rows});
        float* w = widened.data<float>();
        const int64_t cols = a.size(1);
        const auto gather = [&](const auto* src) {
#pragma omp parallel for if (width * rows >= kParallelMin)
          for (int64_t t = 0; t < width; ++t)
            for (int64_t c = 0; c < rows; ++c) w[t * rows + c] = widen(src[t * cols + r0 + c]);
        };
        if (a.dtype() == DType::BF16) gather(a.data<BFloat16>()); else gather(a.data<Float16>());
        matmul_cpu(block, widened, true, b, trans_b, alpha, beta);
      }
    }
    return;
  }
  if (is_half_dtype(b.dtype())) {
    const int64_t m = out.size(0), n = out.size(1), k = trans_a ? a.size(0) : a.size(1);
    if (m == 0 || n == 0) return;
    if (k == 0) {
      if (beta == 0.0) fill_cpu(out, 0.0); else affine_cpu(out, out, beta, 0.0);
      return;
    }
    const Precision precision = matmul_precision();  // the activations a rounded as any float32 operand
    const float* pa = gemm_operand(a.data<float>(), a.numel(), precision, 0);
    const auto run = [&](const auto* weights) {
      matmul_widened(out.data<float>(), pa, trans_a, weights, trans_b, m, n, k, a.size(1), b.size(1),
                     static_cast<float>(alpha), static_cast<float>(beta), precision);
    };
    if (b.dtype() == DType::BF16) run(b.data<BFloat16>()); else run(b.data<Float16>());
    return;
  }
  const int m = static_cast<int>(out.size(0)), n = static_cast<int>(out.size(1));
  const int k = static_cast<int>(trans_a ? a.size(0) : a.size(1));
  const int lda = static_cast<int>(a.size(1)), ldb = static_cast<int>(b.size(1));
  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
  if (m == 0 || n == 0) return;
  if (k == 0) {  // BLAS leaves out untouched when k == 0; the product is zero
    if (beta == 0.0) fill_cpu(out, 0.0); else affine_cpu(out, out, beta, 0.0);
    return;
  }
  // A small product runs on one thread (kGemmParallelMin): the decision depends on the shape only, so
  // results stay repeatable. Not while another thread may run GEMMs too (OpenBLAS's thread count is
  // one global): see set_blas_shared_between_threads.
  const int threads = cpu_threads();
  const bool one_thread = threads > 1 && double(m) * double(n) * double(k) < kGemmParallelMin &&
                          !blas_shared_between_threads();
  if (one_thread) openblas_set_num_threads(1);
  // float32 at --precision tf32 / bf16: both paths multiply rounded copies (gemm_precision.h).
  const Precision precision = out.dtype() == DType::F32 ? matmul_precision() : Precision::FP32;
  const float* pa = out.dtype() == DType::F32 ? gemm_operand(a.data<float>(), a.numel(), precision, 0) : nullptr;
  const float* pb = out.dtype() == DType::F32 ? gemm_operand(b.data<float>(), b.numel(), precision, 1) : nullptr;
  // One row or one column: a matrix-vector product. OpenBLAS 0.3.21's GEMM would pack the whole
  // matrix first (for generation's [1, d] x [d, V] logits, 150 MB written for one token); GEMV reads
  // it once. y [1, n] = x op(b): op(b) [k, n] is b [n, k] untransposed when trans_b.
  if (m == 1 || n == 1) {
    const bool row = m == 1;
    const Tensor& mat = row ? b : a;
    const Tensor& vec = row ? a : b;
    // The matrix of y = M x, row-major as stored: [n, k] (row, trans_b) or [k, n] (row, !trans_b);
    // [m, k] (column, !trans_a) or [k, m] (column, trans_a).
    const bool mat_trans = row ? !trans_b : trans_a;
    const int rows = static_cast<int>(mat.size(0)), cols = static_cast<int>(mat.size(1));
    const int ld = cols, inc = 1;  // the vector is a row [1, k] or a column [k, 1]: contiguous either way
    const CBLAS_TRANSPOSE t = mat_trans ? CblasTrans : CblasNoTrans;
    if (out.dtype() == DType::F32)
      cblas_sgemv(CblasRowMajor, t, rows, cols, static_cast<float>(alpha), row ? pb : pa, ld, row ? pa : pb, inc,
                  static_cast<float>(beta), out.data<float>(), 1);
    else
      cblas_dgemv(CblasRowMajor, t, rows, cols, alpha, mat.data<double>(), ld, vec.data<double>(), inc, beta,
                  out.data<double>(), 1);
  } else if (out.dtype() == DType::F32) {
    cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, static_cast<float>(alpha), pa, lda, pb, ldb, static_cast<float>(beta),
                out.data<float>(), n);
  } else {
    cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a.data<double>(), lda, b.data<double>(), ldb, beta,
                out.data<double>(), n);
  }
  if (one_thread) openblas_set_num_threads(threads);  // (also restores this thread's OpenMP count)
}

void transpose_cpu(Tensor& out, const Tensor& x) {
  dispatch_float(x.dtype(), "transpose", [&](auto zero) {
    using T = decltype(zero);
    constexpr int64_t kBlock = 32;
    T* o = out.data<T>();
    const T* in = x.data<T>();
    const int64_t rows = x.size(0), cols = x.size(1);
#pragma omp parallel for if (rows * cols >= kParallelMin)
    for (int64_t r0 = 0; r0 < rows; r0 += kBlock)
      for (int64_t c0 = 0; c0 < cols; c0 += kBlock)
        for (int64_t r = r0; r < std::min(rows, r0 + kBlock); ++r)
          for (int64_t c = c0; c < std::min(cols, c0 + kBlock); ++c) o[c * rows + r] = in[r * cols + c];
  });
}

// One pass over the four arrays with the shared element formula (tensor/adam_math.h).
void adam_step_cpu(Tensor& param, Tensor& m, Tensor& v, const Tensor& grad, const AdamScalars& s) {
  dispatch_float(param.dtype(), "adam_step", [&](auto zero) {
    using T = decltype(zero);
    T *p = param.data<T>(), *pm = m.data<T>(), *pv = v.data<T>();
    const T* g = grad.data<T>();
    const AdamConstants<T> c = adam_constants<T>(s);
    const int64_t n = param.numel();
#pragma omp parallel for simd if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) adam_element(p[i], pm[i], pv[i], g[i], c);
  });
}

}  // namespace

void set_cpu_threads(int n) {
  if (n < 1) throw UsageError(cat("threads: expected a positive count, got ", n));
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int cpu_threads() { return omp_get_max_threads(); }

namespace {
std::atomic<int> blas_sharers{0};
}  // namespace

void set_blas_shared_between_threads(bool shared) { blas_sharers += shared ? 1 : -1; }
bool blas_shared_between_threads() { return blas_sharers.load() > 0; }

#define SAE_CPU_ENTRY(name, signature) name##_cpu,
const KernelTable& cpu_kernels() {
  static const KernelTable table{SAE_KERNELS(SAE_CPU_ENTRY)};
  return table;
}
#undef SAE_CPU_ENTRY

}  // namespace sae
