// CPU kernels of the transformer ops (SAE_TRANSFORMER_KERNELS in tensor/op_list.h): embedding
// gather and its scatter-add, LayerNorm, softmax, batched GEMM, the causal/local attention mask,
// the swap of two leading axes, the rotary position embedding, RMSNorm, the gated MLP activation (and
// its backward) and soft-capping. Plain loops, OpenMP over rows for large tensors, cblas for the
// GEMMs. Inputs were validated by the front-end (tensor/ops.cpp).
// Letters: N rows, D row width, B batch, M/N/K GEMM sizes, Tq queries, Tk keys.
#include "tensor/cpu/transformer_kernels.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "tensor/cpu/gemm_precision.h"
#include "tensor/cpu/parallel.h"
#include "tensor/dispatch.h"
#include "tensor/element_math.h"
#include "tensor/host_device.h"

namespace sae {

void embedding_cpu(Tensor& out, const Tensor& table, const Tensor& ids) {
  dispatch_storage(table.dtype(), "embedding", [&](auto zero) {
    using T = decltype(zero);
    const int64_t n = ids.numel(), d = table.size(1);
    const int32_t* id = ids.data<int32_t>();
    const T* rows = table.data<T>();
    if constexpr (std::is_same_v<T, BFloat16> || std::is_same_v<T, Float16>) {  // widened into float32 rows
      float* o = out.data<float>();
#pragma omp parallel for if (n * d >= kParallelMin)
      for (int64_t i = 0; i < n; ++i) {
        const T* row = rows + int64_t(id[i]) * d;
        for (int64_t j = 0; j < d; ++j) o[i * d + j] = widen(row[j]);
      }
    } else {
      T* o = out.data<T>();
#pragma omp parallel for if (n * d >= kParallelMin)
      for (int64_t i = 0; i < n; ++i) std::memcpy(o + i * d, rows + int64_t(id[i]) * d, d * sizeof(T));
    }
  });
}

// Each thread owns a block of columns and walks the rows in order, so a table row hit by several
// ids sums them in id order whatever the thread count (and no two threads write one element).
void embedding_backward_cpu(Tensor& table_grad, const Tensor& grad, const Tensor& ids) {
  dispatch_float(grad.dtype(), "embedding_backward", [&](auto zero) {
    using T = decltype(zero);
    const int64_t n = ids.numel(), d = table_grad.size(1);
    const int32_t* id = ids.data<int32_t>();
    const T* g = grad.data<T>();
    T* tg = table_grad.data<T>();
    constexpr int64_t kColumns = 64;
#pragma omp parallel for if (n * d >= kParallelMin)
    for (int64_t c0 = 0; c0 < d; c0 += kColumns) {
      const int64_t c1 = std::min(d, c0 + kColumns);
      for (int64_t i = 0; i < n; ++i) {
        T* dst = tg + int64_t(id[i]) * d;
        const T* src = g + i * d;
        for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
      }
    }
  });
}

// Mean and variance in double (two passes), then one pass in T. out may be x itself.
void layer_norm_cpu(Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& weight,
                    const Tensor& bias, double eps) {
  dispatch_float(x.dtype(), "layer_norm", [&](auto zero) {
    using T = decltype(zero);
    const int64_t d = x.size(-1), n = d == 0 ? 0 : x.numel() / d;
    const T *in = x.data<T>(), *w = weight.data<T>(), *b = bias.data<T>();
    T *o = out.data<T>(), *mean_out = mean.data<T>(), *rstd_out = rstd.data<T>();
#pragma omp parallel for if (n * d >= kParallelMin)
    for (int64_t r = 0; r < n; ++r) {
      const T* row = in + r * d;
      double sum = 0.0;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < d; ++j) sum += row[j];
      const double mu = sum / static_cast<double>(d);
      double squares = 0.0;
#pragma omp simd reduction(+ : squares)
      for (int64_t j = 0; j < d; ++j) {
        const double centred = row[j] - mu;
        squares += centred * centred;
      }
      const double inv = 1.0 / std::sqrt(squares / static_cast<double>(d) + eps);
      const T m = static_cast<T>(mu), s = static_cast<T>(inv);
      T* dst = o + r * d;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) dst[j] = (row[j] - m) * s * w[j] + b[j];
      mean_out[r] = m;
      rstd_out[r] = s;
    }
  });
}

// Max-subtracted softmax per row; the sum is taken in double. -inf entries (masked keys) are 0
// exactly (exp runs on every entry, in vector lanes, and those are then set to 0). A row of only
// -inf gives NaN, as in PyTorch. out may be x.
void softmax_cpu(Tensor& out, const Tensor& x) {
  dispatch_float(x.dtype(), "softmax", [&](auto zero) {
    using T = decltype(zero);
    const int64_t d = x.size(-1), n = d == 0 ? 0 : x.numel() / d;
    const T* in = x.data<T>();
    T* o = out.data<T>();
#pragma omp parallel for if (n * d >= kParallelMin / 8)
    for (int64_t r = 0; r < n; ++r) {
      const T* row = in + r * d;
      T* dst = o + r * d;
      T top = -INFINITY;
#pragma omp simd reduction(max : top)
      for (int64_t j = 0; j < d; ++j) top = row[j] > top ? row[j] : top;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) {
        const T e = math_exp(row[j] - top);  // computed for every entry, so the loop runs in vector lanes
        dst[j] = row[j] == -INFINITY ? T(0) : e;
      }
      double sum = 0.0;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < d; ++j) sum += dst[j];
      const T scale = static_cast<T>(1.0 / sum);
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) dst[j] *= scale;
    }
  });
}

// One cblas GEMM per batch entry. With at least as many entries as threads and enough work in
// all, the entries are spread over the threads and each GEMM runs on one (OpenBLAS's OpenMP build
// does not thread a call made inside a parallel region); otherwise the GEMMs run in turn, each
// threaded by OpenBLAS as it sees fit. OpenBLAS splits a GEMM over rows and columns, never over
// k, so both ways give the same bits.
void batched_matmul_cpu(Tensor& out, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, double alpha,
                        double beta) {
  const int64_t batch = out.size(0);
  const int m = static_cast<int>(out.size(1)), n = static_cast<int>(out.size(2));
  const int k = static_cast<int>(trans_a ? a.size(1) : a.size(2));
  const int lda = static_cast<int>(a.size(2)), ldb = static_cast<int>(b.size(2));
  const int64_t stride_a = a.size(1) * a.size(2), stride_b = b.size(1) * b.size(2), stride_out = int64_t(m) * n;
  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
  if (batch == 0 || m == 0 || n == 0) return;
  dispatch_float(out.dtype(), "batched_matmul", [&](auto zero) {
    using T = decltype(zero);
    T* o = out.data<T>();
    const T *pa = a.data<T>(), *pb = b.data<T>();
    if constexpr (std::is_same_v<T, float>) {  // tf32 / bf16: rounded copies (gemm_precision.h)
      pa = gemm_operand(pa, a.numel(), matmul_precision(), 0);
      pb = gemm_operand(pb, b.numel(), matmul_precision(), 1);
    }
    if (k == 0) {  // BLAS leaves out untouched when k == 0; the product is zero
      const int64_t total = batch * stride_out;
      for (int64_t i = 0; i < total; ++i) o[i] = beta == 0.0 ? T(0) : static_cast<T>(beta) * o[i];
      return;
    }
    auto one = [&](int64_t i) {
      if constexpr (std::is_same_v<T, float>)
        cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, static_cast<float>(alpha), pa + i * stride_a, lda,
                    pb + i * stride_b, ldb, static_cast<float>(beta), o + i * stride_out, n);
      else
        cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, pa + i * stride_a, lda, pb + i * stride_b, ldb, beta,
                    o + i * stride_out, n);
    };
    const double work = static_cast<double>(batch) * m * n * k;  // multiply-adds
    if (batch >= omp_get_max_threads() && batch > 1 && work >= kParallelMin * 8) {
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < batch; ++i) one(i);
    } else {
      for (int64_t i = 0; i < batch; ++i) one(i);
    }
  });
}

// Row (b, r) is query position p = Tk - Tq + r; keys [lo, p] are kept, lo = max(0, p - window + 1)
// for a local window, 0 for global attention. out may be scores itself.
void attention_mask_cpu(Tensor& out, const Tensor& scores, int64_t window, double masked_value) {
  dispatch_float(scores.dtype(), "attention_mask", [&](auto zero) {
    using T = decltype(zero);
    const int64_t batch = scores.size(0), tq = scores.size(1), tk = scores.size(2);
    const T* in = scores.data<T>();
    T* o = out.data<T>();
    const T masked = static_cast<T>(masked_value);
    const bool in_place = in == o;
#pragma omp parallel for if (batch * tq * tk >= kParallelMin)
    for (int64_t row = 0; row < batch * tq; ++row) {
      const int64_t p = tk - tq + row % tq;
      const int64_t lo = window > 0 ? std::max<int64_t>(0, p - window + 1) : 0;
      const T* src = in + row * tk;
      T* dst = o + row * tk;
      for (int64_t j = 0; j < lo; ++j) dst[j] = masked;
      if (!in_place)
        for (int64_t j = lo; j <= p; ++j) dst[j] = src[j];
      for (int64_t j = p + 1; j < tk; ++j) dst[j] = masked;
    }
  });
}

void swap_axes01_cpu(Tensor& out, const Tensor& x) {
  const int64_t a = x.size(0), b = x.size(1), c = x.size(2);
  const size_t row_bytes = c * dtype_size(x.dtype());
  const char* in = static_cast<const char*>(x.raw());
  char* o = static_cast<char*>(out.raw());
#pragma omp parallel for if (a * b * c >= kParallelMin)
  for (int64_t j = 0; j < b; ++j)
    for (int64_t i = 0; i < a; ++i) std::memcpy(o + (j * a + i) * row_bytes, in + (i * b + j) * row_bytes, row_bytes);
}

// Each row (b, t) of x [B, T, D]: the pairs (j, j + R) turned by the angle whose cos and sin are
// row t of the tables; both values are read before either is written, so out may be x.
void rotary_cpu(Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin) {
  dispatch_float(x.dtype(), "rotary", [&](auto zero) {
    using T = decltype(zero);
    const int64_t batch = x.size(0), t = x.size(1), d = x.size(2), r = cos.size(1);
    const T *in = x.data<T>(), *c = cos.data<T>(), *s = sin.data<T>();
    T* o = out.data<T>();
#pragma omp parallel for if (batch * t * d >= kParallelMin)
    for (int64_t row = 0; row < batch * t; ++row) {
      const T* src = in + row * d;
      T* dst = o + row * d;
      const T* cr = c + (row % t) * r;
      const T* sr = s + (row % t) * r;
#pragma omp simd
      for (int64_t j = 0; j < r; ++j) {
        const T x1 = src[j], x2 = src[j + r];
        dst[j] = x1 * cr[j] - x2 * sr[j];
        dst[j + r] = x2 * cr[j] + x1 * sr[j];
      }
      if (dst != src)
        for (int64_t j = 2 * r; j < d; ++j) dst[j] = src[j];
    }
  });
}

// Sum of squares in double, rstd = 1 / sqrt(mean + eps) rounded to T, then out = (x * rstd) * weight in
// T, the order Hugging Face's LlamaRMSNorm multiplies in. out may be x.
void rms_norm_cpu(Tensor& out, Tensor& rstd, const Tensor& x, const Tensor& weight, double eps) {
  dispatch_float(x.dtype(), "rms_norm", [&](auto zero) {
    using T = decltype(zero);
    const int64_t d = x.size(-1), n = d == 0 ? 0 : x.numel() / d;
    const T *in = x.data<T>(), *w = weight.data<T>();
    T *o = out.data<T>(), *rstd_out = rstd.data<T>();
#pragma omp parallel for if (n * d >= kParallelMin)
    for (int64_t r = 0; r < n; ++r) {
      const T* row = in + r * d;
      double squares = 0.0;
#pragma omp simd reduction(+ : squares)
      for (int64_t j = 0; j < d; ++j) squares += double(row[j]) * double(row[j]);
      const T s = static_cast<T>(1.0 / std::sqrt(squares / static_cast<double>(d) + eps));
      T* dst = o + r * d;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) dst[j] = (row[j] * s) * w[j];
      rstd_out[r] = s;
    }
  });
}

void glu_cpu(Tensor& out, const Tensor& x, GluActivation act) {
  dispatch_float(x.dtype(), "glu", [&](auto zero) {
    using T = decltype(zero);
    const int64_t n = out.size(0), f = out.size(1);
    const T* in = x.data<T>();
    T* o = out.data<T>();
    const auto rows = [&](auto gate_of) {
#pragma omp parallel for if (n * f >= kParallelMin)
      for (int64_t r = 0; r < n; ++r) {
        const T *gate = in + r * 2 * f, *up = gate + f;
        T* dst = o + r * f;
#pragma omp simd
        for (int64_t j = 0; j < f; ++j) dst[j] = gate_of(gate[j]) * up[j];
      }
    };
    if (act == GluActivation::silu)
      rows([](T z) { return silu_value(z); });
    else
      rows([](T z) { return gelu_new_value(z); });
  });
}

void glu_backward_cpu(Tensor& grad_x, const Tensor& x, const Tensor& grad, GluActivation act) {
  dispatch_float(x.dtype(), "glu_backward", [&](auto zero) {
    using T = decltype(zero);
    const int64_t n = grad.size(0), f = grad.size(1);
    const T *in = x.data<T>(), *g = grad.data<T>();
    T* gx = grad_x.data<T>();
#pragma omp parallel for if (n * f >= kParallelMin)
    for (int64_t r = 0; r < n; ++r) {
      const T *gate = in + r * 2 * f, *up = gate + f, *gr = g + r * f;
      T *grad_gate = gx + r * 2 * f, *grad_up = grad_gate + f;
      for (int64_t j = 0; j < f; ++j) {
        grad_gate[j] = gr[j] * up[j] * glu_gate_derivative(act, gate[j]);
        grad_up[j] = gr[j] * glu_gate(act, gate[j]);
      }
    }
  });
}

// tanh(x / cap) * cap, the order Hugging Face's Gemma 2 computes it in. out may be x.
void soft_cap_cpu(Tensor& out, const Tensor& x, double cap) {
  dispatch_float(x.dtype(), "soft_cap", [&](auto zero) {
    using T = decltype(zero);
    const int64_t n = x.numel();
    const T* in = x.data<T>();
    T* o = out.data<T>();
    const T c = static_cast<T>(cap);
#pragma omp parallel for if (n >= kParallelMin / 4)
    for (int64_t i = 0; i < n; ++i) o[i] = math_tanh(in[i] / c) * c;
  });
}

}  // namespace sae
