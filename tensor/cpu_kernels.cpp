// CPU kernels for every entry of the op list (op_list.h): plain loops, OpenMP across cores for
// large tensors, cblas_sgemm/dgemm for matmul. Inputs were validated by the front-end (ops.cpp).
#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "tensor/op_list.h"

namespace sae {

namespace {

// Below this many elements a loop runs on one thread: thread wake-up costs more than it saves.
constexpr int64_t kParallelMin = 1 << 15;

template <typename T>
T apply_unary(UnaryOp op, T x) {
  switch (op) {
    case UnaryOp::neg: return -x;
    case UnaryOp::square: return x * x;
    case UnaryOp::sqrt: return std::sqrt(x);
    case UnaryOp::abs: return std::abs(x);
    case UnaryOp::relu: return x > T(0) ? x : T(0);
    case UnaryOp::step: return x > T(0) ? T(1) : T(0);
    case UnaryOp::sign: return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));
    case UnaryOp::exp: return std::exp(x);
    case UnaryOp::log: return std::log(x);
    default: return x;
  }
}

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

template <typename T>
T apply_binary(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::add: return a + b;
    case BinaryOp::sub: return a - b;
    case BinaryOp::mul: return a * b;
    case BinaryOp::div: return a / b;
    case BinaryOp::maximum: return a > b ? a : b;
    case BinaryOp::minimum: return a < b ? a : b;
    case BinaryOp::gt: return a > b ? T(1) : T(0);
    case BinaryOp::ge: return a >= b ? T(1) : T(0);
    case BinaryOp::lt: return a < b ? T(1) : T(0);
    case BinaryOp::le: return a <= b ? T(1) : T(0);
    case BinaryOp::eq: return a == b ? T(1) : T(0);
    default: return a;
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

// Splits [0, n) into one contiguous chunk per thread and adds the chunks' results in thread
// order, so a sum depends only on n and the thread count, never on timing (runs are repeatable).
template <typename ChunkSum>
double deterministic_sum(int64_t n, ChunkSum chunk_sum) {
  if (n < kParallelMin) return chunk_sum(0, n);
  std::vector<double> partial(omp_get_max_threads(), 0.0);
#pragma omp parallel
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    partial[t] = chunk_sum(n * t / nt, n * (t + 1) / nt);
  }
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
  const int64_t n = out.numel();
  if (out.dtype() == DType::F32) {
    float* p = out.data<float>();
    const float v = static_cast<float>(value);
#pragma omp parallel for simd if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) p[i] = v;
  } else {
    double* p = out.data<double>();
#pragma omp parallel for simd if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) p[i] = value;
  }
}

template <typename To, typename From>
void convert(To* out, const From* src, int64_t n) {
#pragma omp parallel for simd if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<To>(src[i]);
}

void copy_cpu(Tensor& out, const Tensor& src) {
  const int64_t n = out.numel();
  if (out.dtype() == src.dtype())
    std::memmove(out.raw(), src.raw(), out.nbytes());
  else if (out.dtype() == DType::F32)
    convert(out.data<float>(), src.data<double>(), n);
  else
    convert(out.data<double>(), src.data<float>(), n);
}

void unary_cpu(UnaryOp op, Tensor& out, const Tensor& x) {
  if (x.dtype() == DType::F32)
    unary_typed(op, out.data<float>(), x.data<float>(), x.numel());
  else
    unary_typed(op, out.data<double>(), x.data<double>(), x.numel());
}

void binary_cpu(BinaryOp op, Tensor& out, const Tensor& a, const Tensor& b, const Broadcast& plan) {
  if (a.dtype() == DType::F32)
    binary_typed(op, out.data<float>(), a.data<float>(), b.data<float>(), plan);
  else
    binary_typed(op, out.data<double>(), a.data<double>(), b.data<double>(), plan);
}

template <typename T>
void affine_typed(T* out, const T* x, int64_t n, T scale, T shift) {
#pragma omp parallel for simd if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) out[i] = scale * x[i] + shift;
}

void affine_cpu(Tensor& out, const Tensor& x, double scale, double shift) {
  if (x.dtype() == DType::F32)
    affine_typed<float>(out.data<float>(), x.data<float>(), x.numel(), static_cast<float>(scale),
                        static_cast<float>(shift));
  else
    affine_typed<double>(out.data<double>(), x.data<double>(), x.numel(), scale, shift);
}

template <typename T>
void where_typed(T* out, const T* cond, const T* a, const T* b, int64_t n) {
#pragma omp parallel for simd if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) out[i] = cond[i] != T(0) ? a[i] : b[i];
}

void where_cpu(Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b) {
  if (a.dtype() == DType::F32)
    where_typed(out.data<float>(), cond.data<float>(), a.data<float>(), b.data<float>(), a.numel());
  else
    where_typed(out.data<double>(), cond.data<double>(), a.data<double>(), b.data<double>(), a.numel());
}

void reduce_all_cpu(ReduceOp op, Tensor& out, const Tensor& x) {
  if (x.dtype() == DType::F32)
    out.data<float>()[0] = static_cast<float>(reduce_range(op, x.data<float>(), x.numel()));
  else
    out.data<double>()[0] = reduce_range(op, x.data<double>(), x.numel());
}

void reduce_axis_cpu(ReduceOp op, Tensor& out, const Tensor& x, int64_t outer, int64_t len, int64_t inner) {
  if (x.dtype() == DType::F32)
    reduce_axis_typed(op, out.data<float>(), x.data<float>(), outer, len, inner);
  else
    reduce_axis_typed(op, out.data<double>(), x.data<double>(), outer, len, inner);
}

void matmul_cpu(Tensor& out, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, double alpha,
                double beta) {
  const int m = static_cast<int>(out.size(0)), n = static_cast<int>(out.size(1));
  const int k = static_cast<int>(trans_a ? a.size(0) : a.size(1));
  const int lda = static_cast<int>(a.size(1)), ldb = static_cast<int>(b.size(1));
  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
  if (m == 0 || n == 0) return;
  if (k == 0) {  // BLAS leaves out untouched when k == 0; the product is zero
    if (beta == 0.0) fill_cpu(out, 0.0); else affine_cpu(out, out, beta, 0.0);
    return;
  }
  if (out.dtype() == DType::F32)
    cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, static_cast<float>(alpha), a.data<float>(), lda, b.data<float>(),
                ldb, static_cast<float>(beta), out.data<float>(), n);
  else
    cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a.data<double>(), lda, b.data<double>(), ldb, beta,
                out.data<double>(), n);
}

template <typename T>
void transpose_typed(T* out, const T* x, int64_t rows, int64_t cols) {
  constexpr int64_t kBlock = 32;
#pragma omp parallel for if (rows * cols >= kParallelMin)
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock)
    for (int64_t c0 = 0; c0 < cols; c0 += kBlock)
      for (int64_t r = r0; r < std::min(rows, r0 + kBlock); ++r)
        for (int64_t c = c0; c < std::min(cols, c0 + kBlock); ++c) out[c * rows + r] = x[r * cols + c];
}

void transpose_cpu(Tensor& out, const Tensor& x) {
  if (x.dtype() == DType::F32)
    transpose_typed(out.data<float>(), x.data<float>(), x.size(0), x.size(1));
  else
    transpose_typed(out.data<double>(), x.data<double>(), x.size(0), x.size(1));
}

// torch.optim.Adam, single-tensor form (torch/optim/adam.py, _single_tensor_adam):
//   g += wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// Scalars in the parameter's precision as in PyTorch. adam_element is the one copy of the
// expression: the adam_step kernel and the fused sparse kernels below all call it.
template <typename T>
struct AdamConstants {
  T step_size, sqrt_bias2, b1, b2, eps, one_minus_b1, one_minus_b2, wd;
  explicit AdamConstants(const AdamScalars& s) {
    const double bias1 = 1.0 - std::pow(s.beta1, static_cast<double>(s.step));
    const double bias2 = 1.0 - std::pow(s.beta2, static_cast<double>(s.step));
    step_size = static_cast<T>(s.lr / bias1);
    sqrt_bias2 = static_cast<T>(std::sqrt(bias2));
    b1 = static_cast<T>(s.beta1);
    b2 = static_cast<T>(s.beta2);
    eps = static_cast<T>(s.eps);
    one_minus_b1 = static_cast<T>(1.0 - s.beta1);
    one_minus_b2 = static_cast<T>(1.0 - s.beta2);
    wd = static_cast<T>(s.weight_decay);
  }
};

template <typename T>
inline void adam_element(T& p, T& m, T& v, T g, const AdamConstants<T>& c) {
  const T grad = g + c.wd * p;
  const T mi = c.b1 * m + c.one_minus_b1 * grad;
  const T vi = c.b2 * v + c.one_minus_b2 * grad * grad;
  m = mi;
  v = vi;
  p -= c.step_size * (mi / (std::sqrt(vi) / c.sqrt_bias2 + c.eps));
}

// One pass over the four arrays.
template <typename T>
void adam_typed(T* p, T* m, T* v, const T* g, int64_t n, const AdamScalars& s) {
  const AdamConstants<T> c(s);
#pragma omp parallel for simd if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) adam_element(p[i], m[i], v[i], g[i], c);
}

void adam_step_cpu(Tensor& param, Tensor& m, Tensor& v, const Tensor& grad, const AdamScalars& s) {
  if (param.dtype() == DType::F32)
    adam_typed(param.data<float>(), m.data<float>(), v.data<float>(), grad.data<float>(), param.numel(), s);
  else
    adam_typed(param.data<double>(), m.data<double>(), v.data<double>(), grad.data<double>(), param.numel(), s);
}

// ---- SAE fused kernels. Threads split the F columns, so each column's sum is accumulated by one
// thread in row order (deterministic, no combining step).

#define SAE_FOR_THREAD_COLUMNS(rows, cols)                              \
  const int thread = omp_get_thread_num(), threads = omp_get_num_threads(); \
  const int64_t j0 = (cols) * thread / threads, j1 = (cols) * (thread + 1) / threads;

template <typename T>
void encoder_activate_typed(T* f, const T* bias, T* col_sum, T* col_count, int64_t rows, int64_t cols) {
#pragma omp parallel if (rows * cols >= kParallelMin)
  {
    SAE_FOR_THREAD_COLUMNS(rows, cols)
    for (int64_t j = j0; j < j1; ++j) col_sum[j] = col_count[j] = T(0);
    for (int64_t r = 0; r < rows; ++r) {
      T* row = f + r * cols;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) {
        // Branch-free so that the loop vectorises: max for the ReLU, a 0/1 conversion for the count.
        const T v = std::max(row[j] + bias[j], T(0));
        row[j] = v;
        col_sum[j] += v;
        col_count[j] += static_cast<T>(v > T(0));
      }
    }
  }
}

template <typename T>
void encoder_backward_typed(T* grad, const T* f, const T* row_add, T* col_sum, int64_t rows, int64_t cols) {
#pragma omp parallel if (rows * cols >= kParallelMin)
  {
    SAE_FOR_THREAD_COLUMNS(rows, cols)
    for (int64_t j = j0; j < j1; ++j) col_sum[j] = T(0);
    for (int64_t r = 0; r < rows; ++r) {
      T* g = grad + r * cols;
      const T* fr = f + r * cols;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) {
        // (g + row_add) * mask, branch-free; like autograd's g * step(pre), a non-finite g stays non-finite.
        const T v = (g[j] + row_add[j]) * static_cast<T>(fr[j] > T(0));
        g[j] = v;
        col_sum[j] += v;
      }
    }
  }
}
#undef SAE_FOR_THREAD_COLUMNS

void encoder_activate_cpu(Tensor& f, const Tensor& bias, Tensor& col_sum, Tensor& col_count) {
  if (f.dtype() == DType::F32)
    encoder_activate_typed(f.data<float>(), bias.data<float>(), col_sum.data<float>(), col_count.data<float>(),
                           f.size(0), f.size(1));
  else
    encoder_activate_typed(f.data<double>(), bias.data<double>(), col_sum.data<double>(), col_count.data<double>(),
                           f.size(0), f.size(1));
}

void encoder_backward_cpu(Tensor& grad, const Tensor& f, const Tensor& row_add, Tensor& col_sum) {
  if (f.dtype() == DType::F32)
    encoder_backward_typed(grad.data<float>(), f.data<float>(), row_add.data<float>(), col_sum.data<float>(),
                           f.size(0), f.size(1));
  else
    encoder_backward_typed(grad.data<double>(), f.data<double>(), row_add.data<double>(), col_sum.data<double>(),
                           f.size(0), f.size(1));
}

template <typename T>
void add_scaled_rows_typed(T* out, const T* x, const T* scale, int64_t rows, int64_t cols) {
#pragma omp parallel for if (rows * cols >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const T s = scale[r];
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] += s * x[r * cols + c];
  }
}

void add_scaled_rows_cpu(Tensor& out, const Tensor& x, const Tensor& row_scale) {
  if (x.dtype() == DType::F32)
    add_scaled_rows_typed(out.data<float>(), x.data<float>(), row_scale.data<float>(), x.size(0), x.size(1));
  else
    add_scaled_rows_typed(out.data<double>(), x.data<double>(), row_scale.data<double>(), x.size(0), x.size(1));
}

// ---- sparse SAE kernels (op_list.h). Every feature's work (its entries in token order, its row
// of W_dec, its column of W_enc) is done by one thread in a fixed order, so the results do not
// depend on the number of threads or on which thread takes which feature: dynamic scheduling
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
  explicit UpdateSink(ParamUpdate& u) : param(u.param.data<T>()), adam(u.adam), c(u.scalars) {
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
#pragma omp simd
    for (int64_t k = 0; k < len; ++k) adam_element(p[k], mm[k], vv[k], g[k], c);
  }
};

// Builds the CSC lists. Offsets come from the column counts; then each thread scans every row of
// f over its own band of columns and appends the positive entries, so each column's entries
// arrive in token order. Float32 rows are tested 8 values at a time (at 2% density most groups of
// 8 hold no entry at all).
template <typename T>
void sparse_columns_typed(int32_t* col_ptr, int32_t* rows, T* vals, const T* f, const T* col_count, int64_t n,
                          int64_t cols) {
  col_ptr[0] = 0;
  for (int64_t j = 0; j < cols; ++j) col_ptr[j + 1] = col_ptr[j] + static_cast<int32_t>(col_count[j]);
#pragma omp parallel if (n * cols >= kParallelMin)
  {
    const int thread = omp_get_thread_num(), threads = omp_get_num_threads();
    const int64_t j0 = (cols * thread / threads) & ~int64_t(7);
    const int64_t j1 = thread + 1 == threads ? cols : (cols * (thread + 1) / threads) & ~int64_t(7);
    std::vector<int32_t> cursor(col_ptr + j0, col_ptr + j1);
    int32_t* next = cursor.data() - j0;  // next[j]: where column j's next entry goes
    for (int64_t r = 0; r < n; ++r) {
      const T* row = f + r * cols;
      int64_t j = j0;
#if defined(__AVX__)
      if constexpr (std::is_same_v<T, float>) {
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
          }
        }
      }
#endif
      for (; j < j1; ++j) {
        if (row[j] > T(0)) {
          const int32_t e = next[j]++;
          rows[e] = static_cast<int32_t>(r);
          vals[e] = row[j];
        }
      }
    }
  }
}

// x_hat = f W_dec + b_dec, feature by feature: each W_dec row is read once per block of tokens and
// added into the rows of the tokens it fires on. Work is cut into tiles of kDecodeTokens tokens x
// kDecodeWidth columns of x_hat (256 KB, so a tile stays in L2 while every feature is added into
// it); each x_hat value sums its features in feature order.
constexpr int64_t kDecodeTokens = 512, kDecodeWidth = 128;

template <typename T>
void sparse_decode_typed(T* x_hat, const int32_t* col_ptr, const int32_t* rows, const T* vals, const T* W,
                         const T* b, int64_t n, int64_t d, int64_t cols) {
  const int64_t blocks = (n + kDecodeTokens - 1) / kDecodeTokens, widths = (d + kDecodeWidth - 1) / kDecodeWidth;
  // start[k * cols + i]: feature i's first entry with token >= k * kDecodeTokens (k = blocks: its end).
  std::vector<int32_t> start;
  if (blocks > 1) {
    start.resize((blocks + 1) * cols);
#pragma omp parallel for if (n * cols >= kParallelMin)
    for (int64_t i = 0; i < cols; ++i) {
      int32_t e = col_ptr[i];
      for (int64_t k = 0; k < blocks; ++k) {
        while (e < col_ptr[i + 1] && rows[e] < k * kDecodeTokens) ++e;
        start[k * cols + i] = e;
      }
      start[blocks * cols + i] = col_ptr[i + 1];
    }
  }
  const int32_t* first = blocks > 1 ? start.data() : col_ptr;
#pragma omp parallel for schedule(dynamic, 1) if (n * d >= 4096)
  for (int64_t task = 0; task < blocks * widths; ++task) {
    const int64_t k = task / widths, t0 = k * kDecodeTokens, t1 = std::min(n, t0 + kDecodeTokens);
    const int64_t d0 = (task % widths) * kDecodeWidth, width = std::min(d, d0 + kDecodeWidth) - d0;
    const int32_t* begin = blocks > 1 ? first + k * cols : col_ptr;
    const int32_t* end = blocks > 1 ? first + (k + 1) * cols : col_ptr + 1;
    for (int64_t t = t0; t < t1; ++t) std::fill(x_hat + t * d + d0, x_hat + t * d + d0 + width, T(0));
    for (int64_t i = 0; i < cols; ++i) {
      const T* w = W + i * d + d0;
      for (int32_t e = begin[i]; e < end[i]; ++e) {
        T* out = x_hat + int64_t(rows[e]) * d + d0;
        const T value = vals[e];
#pragma omp simd
        for (int64_t c = 0; c < width; ++c) out[c] += value * w[c];
      }
    }
    for (int64_t t = t0; t < t1; ++t) {
      T* out = x_hat + t * d + d0;
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) out[c] += b[d0 + c];
    }
  }
}

// Feature by feature: for each entry, one pass over the token's dx row gives both the dot product
// with W_dec[i] (-> dpre) and its share of dW_dec[i]; then the L1 term, then the row's update.
template <typename T>
void sparse_decoder_backward_typed(T* dpre, ParamUpdate& update, const T* dx, const int32_t* col_ptr,
                                   const int32_t* rows, const T* vals, const T* norms, const T* col_sum, double l1,
                                   int64_t d, int64_t cols) {
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
      // The dense path's expressions (sae_step.cpp): affine(norms, l1, 0), then
      // affine(col_sum / max(norms, tiny), l1, 0).
      const T row_add = lambda * norms[i] + T(0);
      const T scale = lambda * (col_sum[i] / (norms[i] > tiny ? norms[i] : tiny)) + T(0);  // maximum op
      std::fill(g, g + d, T(0));
      for (int32_t e = col_ptr[i]; e < col_ptr[i + 1]; ++e) {
        const T* dx_t = dx + int64_t(rows[e]) * d;
        const T value = vals[e];
        T dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int64_t c = 0; c < d; ++c) {
          dot += dx_t[c] * w[c];
          g[c] += value * dx_t[c];
        }
        dpre[e] = dot + row_add;
      }
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) g[c] = g[c] + scale * w[c];
      sink.store(i * d, g, d);  // the row's old values have all been read
    }
  }
}

// Blocks of kEncoderFeatures features: G[ii, :] = sum_e dpre[e] x[rows[e], :] for each feature of
// the block (a contiguous row, summed in token order), then the block's columns of W_enc are
// updated row by row (G read transposed, 8 rows at a time through a small buffer), and b_enc.
constexpr int64_t kEncoderFeatures = 32;

template <typename T>
void sparse_encoder_backward_typed(ParamUpdate& W_update, ParamUpdate& b_update, const T* x, const int32_t* col_ptr,
                                   const int32_t* rows, const T* dpre, int64_t d, int64_t cols) {
  const UpdateSink<T> W_sink(W_update), b_sink(b_update);
  const int64_t blocks = (cols + kEncoderFeatures - 1) / kEncoderFeatures;
#pragma omp parallel if (int64_t(col_ptr[cols]) * d + cols * d >= kParallelMin)
  {
    std::vector<T> G_buffer(kEncoderFeatures * d), G_rows(8 * kEncoderFeatures), db(kEncoderFeatures);
    T* G = G_buffer.data();
#pragma omp for schedule(dynamic, 1)
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t i0 = block * kEncoderFeatures, width = std::min(cols, i0 + kEncoderFeatures) - i0;
      for (int64_t ii = 0; ii < width; ++ii) {
        T* Gi = G + ii * d;
        std::fill(Gi, Gi + d, T(0));
        T bias_grad = 0;
        for (int32_t e = col_ptr[i0 + ii]; e < col_ptr[i0 + ii + 1]; ++e) {
          const T* x_t = x + int64_t(rows[e]) * d;
          const T p = dpre[e];
#pragma omp simd
          for (int64_t c = 0; c < d; ++c) Gi[c] += p * x_t[c];
          bias_grad += p;
        }
        db[ii] = bias_grad;
      }
      for (int64_t j0 = 0; j0 < d; j0 += 8) {
        const int64_t h = std::min<int64_t>(8, d - j0);
        for (int64_t ii = 0; ii < width; ++ii)
          for (int64_t jj = 0; jj < h; ++jj) G_rows[jj * width + ii] = G[ii * d + j0 + jj];
        for (int64_t jj = 0; jj < h; ++jj) W_sink.store((j0 + jj) * cols + i0, G_rows.data() + jj * width, width);
      }
      b_sink.store(i0, db.data(), width);
    }
  }
}

void sparse_columns_cpu(Tensor& col_ptr, Tensor& rows, Tensor& vals, const Tensor& f, const Tensor& col_count) {
  if (f.dtype() == DType::F32)
    sparse_columns_typed(col_ptr.data<int32_t>(), rows.data<int32_t>(), vals.data<float>(), f.data<float>(),
                         col_count.data<float>(), f.size(0), f.size(1));
  else
    sparse_columns_typed(col_ptr.data<int32_t>(), rows.data<int32_t>(), vals.data<double>(), f.data<double>(),
                         col_count.data<double>(), f.size(0), f.size(1));
}

void sparse_decode_cpu(Tensor& x_hat, const Tensor& f, const Tensor& col_ptr, const Tensor& rows, const Tensor& vals,
                       const Tensor& W_dec, const Tensor& b_dec) {
  if (f.dtype() == DType::F32)
    sparse_decode_typed(x_hat.data<float>(), col_ptr.data<int32_t>(), rows.data<int32_t>(), vals.data<float>(),
                        W_dec.data<float>(), b_dec.data<float>(), f.size(0), W_dec.size(1), f.size(1));
  else
    sparse_decode_typed(x_hat.data<double>(), col_ptr.data<int32_t>(), rows.data<int32_t>(), vals.data<double>(),
                        W_dec.data<double>(), b_dec.data<double>(), f.size(0), W_dec.size(1), f.size(1));
}

void sparse_decoder_backward_cpu(Tensor& dpre, ParamUpdate& W_dec, const Tensor& grad_x_hat, const Tensor& col_ptr,
                                 const Tensor& rows, const Tensor& vals, const Tensor& norms, const Tensor& col_sum,
                                 double l1) {
  const int64_t d = grad_x_hat.size(1), cols = W_dec.param.size(0);
  if (grad_x_hat.dtype() == DType::F32)
    sparse_decoder_backward_typed(dpre.data<float>(), W_dec, grad_x_hat.data<float>(), col_ptr.data<int32_t>(),
                                  rows.data<int32_t>(), vals.data<float>(), norms.data<float>(),
                                  col_sum.data<float>(), l1, d, cols);
  else
    sparse_decoder_backward_typed(dpre.data<double>(), W_dec, grad_x_hat.data<double>(), col_ptr.data<int32_t>(),
                                  rows.data<int32_t>(), vals.data<double>(), norms.data<double>(),
                                  col_sum.data<double>(), l1, d, cols);
}

void sparse_encoder_backward_cpu(ParamUpdate& W_enc, ParamUpdate& b_enc, const Tensor& x, const Tensor& col_ptr,
                                 const Tensor& rows, const Tensor& dpre) {
  const int64_t d = x.size(1), cols = W_enc.param.size(1);
  if (x.dtype() == DType::F32)
    sparse_encoder_backward_typed(W_enc, b_enc, x.data<float>(), col_ptr.data<int32_t>(), rows.data<int32_t>(),
                                  dpre.data<float>(), d, cols);
  else
    sparse_encoder_backward_typed(W_enc, b_enc, x.data<double>(), col_ptr.data<int32_t>(), rows.data<int32_t>(),
                                  dpre.data<double>(), d, cols);
}

KernelTable make_cpu_table() {
  KernelTable t;
  t.fill = fill_cpu;
  t.copy = copy_cpu;
  t.unary = unary_cpu;
  t.binary = binary_cpu;
  t.affine = affine_cpu;
  t.where = where_cpu;
  t.reduce_all = reduce_all_cpu;
  t.reduce_axis = reduce_axis_cpu;
  t.matmul = matmul_cpu;
  t.transpose = transpose_cpu;
  t.adam_step = adam_step_cpu;
  t.encoder_activate = encoder_activate_cpu;
  t.encoder_backward = encoder_backward_cpu;
  t.add_scaled_rows = add_scaled_rows_cpu;
  t.sparse_columns = sparse_columns_cpu;
  t.sparse_decode = sparse_decode_cpu;
  t.sparse_decoder_backward = sparse_decoder_backward_cpu;
  t.sparse_encoder_backward = sparse_encoder_backward_cpu;
  return t;
}

}  // namespace

const KernelTable& cpu_kernels() {
  static const KernelTable table = make_cpu_table();
  return table;
}

}  // namespace sae
