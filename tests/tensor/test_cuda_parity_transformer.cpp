// CUDA parity of the transformer ops (SAE_TRANSFORMER_KERNELS in tensor/op_list.h): each kernel on
// random inputs, CUDA against the CPU, float32 and float64, outputs poisoned with NaN first; shapes
// of the GPT-Neo forward pass (218 tokens, 16 heads of 48, 768 wide, 3072 MLP, window 256) and
// small odd ones. Then the autograd functions' gradients on CUDA against the CPU. Every test skips
// when no GPU is present.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "autograd/functions.h"
#include "tensor/cuda/backend.h"
#include "tensor/ops.h"
#include "tensor/rng.h"
#include "tests/util/compare.h"
#include "tests/util/gpu.h"

using namespace sae;
using sae::testing::expect_close;
using sae::testing::kExact;
using sae::testing::random_cpu;
using sae::testing::Tolerance;

namespace {

const DType kDTypes[] = {DType::F32, DType::F64};
// Row sums in double on both sides, in another order: float32 results may land on a neighbouring
// float; the GPU's expf may differ by an ulp or two.
Tolerance row_tol(DType d) { return d == DType::F32 ? Tolerance{1e-6, 2e-6} : Tolerance{1e-13, 1e-12}; }
// GEMMs sum in other orders (cuBLAS vs OpenBLAS).
double gemm_rel(DType d) { return d == DType::F32 ? 1e-5 : 1e-12; }

Tensor poisoned(const Shape& shape, DType d) {
  return Tensor::full(shape, std::numeric_limits<double>::quiet_NaN(), d, Device::CUDA);
}
Tensor gpu(const Tensor& t) { return t.to(Device::CUDA); }

void expect_on_gpu_close(const Tensor& got, const Tensor& ref, Tolerance tol, const std::string& what) {
  ASSERT_EQ(got.device(), Device::CUDA) << what;
  expect_close(got, ref, tol, what);
}

Tensor random_ids(int64_t n, int64_t vocab, Rng& rng) {
  std::vector<double> ids(n);
  for (double& id : ids) id = static_cast<double>(rng.below(vocab));
  return Tensor::from_vector(ids, Shape{n}, DType::I32);
}

}  // namespace

TEST(CudaParityTransformer, EmbeddingAndItsBackward) {
  SKIP_WITHOUT_GPU();
  Rng rng(1);
  for (DType d : kDTypes) {
    for (auto [n, vocab, width] : {std::tuple<int64_t, int64_t, int64_t>{218, 50257, 768}, {7, 3, 5}, {1, 1, 1}}) {
      Tensor table = random_cpu(Shape{vocab, width}, d, rng);
      Tensor ids = random_ids(n, vocab, rng);
      Tensor out = poisoned(Shape{n, width}, d);
      embedding_(out, gpu(table), gpu(ids));
      expect_on_gpu_close(out, embedding(table, ids), kExact, cat("embedding ", n, "x", width));
      // Backward: many repeats of few ids, onto a non-zero gradient (it accumulates).
      Tensor few = random_ids(n, std::min<int64_t>(vocab, 5), rng);
      Tensor grad = random_cpu(Shape{n, width}, d, rng);
      Tensor table_grad = random_cpu(Shape{std::min<int64_t>(vocab, 5), width}, d, rng);
      Tensor table_grad_gpu = gpu(table_grad);
      embedding_backward_(table_grad, grad, few);
      embedding_backward_(table_grad_gpu, gpu(grad), gpu(few));
      expect_on_gpu_close(table_grad_gpu, table_grad, kExact, "embedding_backward (same order of additions)");
    }
    Tensor table = gpu(random_cpu(Shape{4, 3}, d, rng));
    EXPECT_THROW(embedding(table, gpu(Tensor::from_vector({0, 4}, Shape{2}, DType::I32))), Error);
  }
}

TEST(CudaParityTransformer, LayerNormAndSoftmax) {
  SKIP_WITHOUT_GPU();
  Rng rng(2);
  for (DType d : kDTypes) {
    for (const Shape& s : {Shape{218, 768}, Shape{3, 5, 33}, Shape{1, 1}, Shape{2049, 64}}) {
      const int64_t width = s[s.ndim - 1], rows = s.numel() / width;
      Tensor x = random_cpu(s, d, rng, -3.0, 5.0), w = random_cpu(Shape{width}, d, rng, 0.5, 1.5);
      Tensor b = random_cpu(Shape{width}, d, rng);
      Tensor out = poisoned(s, d), mean = poisoned(Shape{rows}, d), rstd = poisoned(Shape{rows}, d);
      layer_norm_(out, mean, rstd, gpu(x), gpu(w), gpu(b), 1e-5);
      Tensor ref_mean = Tensor::empty(Shape{rows}, d), ref_rstd = Tensor::empty(Shape{rows}, d);
      Tensor ref = Tensor::empty(s, d);
      layer_norm_(ref, ref_mean, ref_rstd, x, w, b, 1e-5);
      expect_on_gpu_close(out, ref, row_tol(d), cat("layer_norm ", s.str()));
      expect_on_gpu_close(mean, ref_mean, row_tol(d), "layer_norm mean");
      expect_on_gpu_close(rstd, ref_rstd, row_tol(d), "layer_norm rstd");

      Tensor scores = random_cpu(s, d, rng, -20.0, 20.0);
      Tensor p = poisoned(s, d);
      softmax_(p, gpu(scores));
      expect_on_gpu_close(p, softmax(scores), row_tol(d), cat("softmax ", s.str()));
    }
    // Masked rows: -inf entries are exact zeros on both; a row of -inf is NaN on both.
    Tensor masked = Tensor::from_vector({1, -INFINITY, 2, -INFINITY, -INFINITY, -INFINITY}, Shape{2, 3}, d);
    expect_on_gpu_close(softmax(gpu(masked)), softmax(masked), row_tol(d), "softmax with -inf");
  }
}

TEST(CudaParityTransformer, BatchedMatmulAllFlagsAlphaBeta) {
  SKIP_WITHOUT_GPU();
  Rng rng(3);
  struct Case {
    int64_t batch, m, k, n;
  };
  for (DType d : kDTypes) {
    for (const Case& c : {Case{16, 218, 48, 218}, Case{16, 218, 218, 48}, Case{3, 7, 5, 9}, Case{1, 1, 1, 1}}) {
      for (int flags = 0; flags < 4; ++flags) {
        const bool ta = flags & 1, tb = flags & 2;
        Tensor a = random_cpu(ta ? Shape{c.batch, c.k, c.m} : Shape{c.batch, c.m, c.k}, d, rng);
        Tensor b = random_cpu(tb ? Shape{c.batch, c.n, c.k} : Shape{c.batch, c.k, c.n}, d, rng);
        Tensor acc = random_cpu(Shape{c.batch, c.m, c.n}, d, rng);
        Tensor acc_gpu = gpu(acc);
        batched_matmul_(acc, a, ta, b, tb, 0.75, -1.25);
        batched_matmul_(acc_gpu, gpu(a), ta, gpu(b), tb, 0.75, -1.25);
        ASSERT_EQ(acc_gpu.device(), Device::CUDA);
        sae::testing::expect_close_to_scale(acc_gpu, acc, gemm_rel(d),
                                            cat("batched_matmul ", dtype_name(d), " ", c.batch, "x", c.m, "x", c.k,
                                                "x", c.n, " flags ", flags));
      }
    }
    Tensor out = gpu(Tensor::full(Shape{2, 3, 4}, 3.0, d));
    batched_matmul_(out, gpu(Tensor::zeros(Shape{2, 3, 0}, d)), false, gpu(Tensor::zeros(Shape{2, 0, 4}, d)), false,
                    1.0, 0.5);
    expect_on_gpu_close(out, Tensor::full(Shape{2, 3, 4}, 1.5, d), kExact, "k = 0");
  }
}

TEST(CudaParityTransformer, AttentionMaskAndSwapAxes) {
  SKIP_WITHOUT_GPU();
  Rng rng(4);
  for (DType d : kDTypes) {
    for (auto [tq, tk, window] : {std::tuple<int64_t, int64_t, int64_t>{300, 300, 256}, {218, 218, 0},
                                  {3, 8, 4}, {1, 1, 0}, {5, 5, 1}}) {
      Tensor scores = random_cpu(Shape{16, tq, tk}, d, rng);
      Tensor out = poisoned(scores.shape(), d);
      attention_mask_(out, gpu(scores), window, -INFINITY);
      expect_on_gpu_close(out, attention_mask(scores, window), kExact, cat("mask ", tq, "x", tk, " window ", window));
      Tensor in_place = gpu(scores);
      attention_mask_(in_place, in_place, window, 0.0);
      expect_on_gpu_close(in_place, attention_mask(scores, window, 0.0), kExact, "mask in place");
    }
    for (const Shape& s : {Shape{218, 16, 48}, Shape{48, 218, 16}, Shape{1, 3, 1}, Shape{5, 1, 7}}) {
      Tensor x = random_cpu(s, d, rng);
      Tensor out = poisoned(Shape{s[1], s[0], s[2]}, d);
      swap_axes01_(out, gpu(x));
      expect_on_gpu_close(out, swap_axes01(x), kExact, cat("swap_axes01 ", s.str()));
    }
  }
}

// Rotary embedding at Pythia's shapes (12 heads of 64, 16 rotated columns: R 8) and small odd ones,
// in place and not, and the exact GELU beside it.
TEST(CudaParityTransformer, RotaryAndGelu) {
  SKIP_WITHOUT_GPU();
  Rng rng(12);
  for (DType d : kDTypes) {
    for (auto [b, t, width, r] : {std::tuple<int64_t, int64_t, int64_t, int64_t>{24, 218, 64, 8}, {3, 5, 8, 4},
                                  {2, 7, 9, 1}, {1, 1, 2, 1}}) {
      const Tensor x = random_cpu(Shape{b, t, width}, d, rng);
      const Tensor c = random_cpu(Shape{t, r}, d, rng), s = random_cpu(Shape{t, r}, d, rng);
      Tensor out = poisoned(x.shape(), d);
      rotary_(out, gpu(x), gpu(c), gpu(s));
      const Tensor want = rotary(x, c, s);
      expect_on_gpu_close(out, want, kExact, cat("rotary ", x.shape().str()));
      Tensor in_place = gpu(x);
      rotary_(in_place, in_place, gpu(c), gpu(s));
      expect_on_gpu_close(in_place, want, kExact, "rotary in place");
    }
    const Tensor z = random_cpu(Shape{9, 301}, d, rng) * 4.0;
    expect_on_gpu_close(gelu(gpu(z)), gelu(z), row_tol(d), "gelu");
    expect_on_gpu_close(gelu_grad(gpu(z)), gelu_grad(z), row_tol(d), "gelu_grad");
  }
}

// The gradients of each autograd function of the transformer ops, on CUDA against the CPU.
TEST(CudaParityTransformer, AutogradGradients) {
  SKIP_WITHOUT_GPU();
  Rng rng(5);
  using Fn = std::function<Variable(const std::vector<Variable>&)>;
  Tensor ids = random_ids(20, 6, rng);
  const Tensor ids_gpu = gpu(ids);
  struct Case {
    const char* name;
    Fn cpu, cuda;
    std::vector<Shape> shapes;
  };
  const std::vector<Case> cases = {
      {"embedding", [ids](const std::vector<Variable>& v) { return ag::embedding(v[0], ids); },
       [ids_gpu](const std::vector<Variable>& v) { return ag::embedding(v[0], ids_gpu); }, {Shape{6, 8}}},
      {"layer_norm", [](const std::vector<Variable>& v) { return ag::layer_norm(v[0], v[1], v[2], 1e-5); },
       [](const std::vector<Variable>& v) { return ag::layer_norm(v[0], v[1], v[2], 1e-5); },
       {Shape{9, 40}, Shape{40}, Shape{40}}},
      {"gelu_new", [](const std::vector<Variable>& v) { return ag::gelu_new(v[0]); },
       [](const std::vector<Variable>& v) { return ag::gelu_new(v[0]); }, {Shape{9, 40}}},
      {"gelu", [](const std::vector<Variable>& v) { return ag::gelu(v[0]); },
       [](const std::vector<Variable>& v) { return ag::gelu(v[0]); }, {Shape{9, 40}}},
      {"masked softmax", [](const std::vector<Variable>& v) { return ag::softmax(ag::attention_mask(v[0], 3)); },
       [](const std::vector<Variable>& v) { return ag::softmax(ag::attention_mask(v[0], 3)); }, {Shape{4, 10, 10}}},
      {"batched_matmul", [](const std::vector<Variable>& v) { return ag::batched_matmul(v[0], v[1], false, true); },
       [](const std::vector<Variable>& v) { return ag::batched_matmul(v[0], v[1], false, true); },
       {Shape{4, 10, 6}, Shape{4, 12, 6}}},
      {"swap_axes01", [](const std::vector<Variable>& v) { return ag::swap_axes01(v[0]); },
       [](const std::vector<Variable>& v) { return ag::swap_axes01(v[0]); }, {Shape{3, 5, 7}}},
  };
  for (const Case& c : cases) {
    for (DType d : kDTypes) {
      std::vector<Variable> on_cpu, on_gpu;
      for (const Shape& s : c.shapes) {
        Tensor x = random_cpu(s, d, rng);
        on_cpu.emplace_back(x.clone(), true);
        on_gpu.emplace_back(gpu(x), true);
      }
      Tensor weights = random_cpu(c.cpu(on_cpu).shape(), d, rng);
      ag::sum(c.cpu(on_cpu) * Variable(weights)).backward();
      ag::sum(c.cuda(on_gpu) * Variable(gpu(weights))).backward();
      for (size_t i = 0; i < on_cpu.size(); ++i) {
        ASSERT_EQ(on_gpu[i].grad().device(), Device::CUDA) << c.name;
        sae::testing::expect_close_to_scale(on_gpu[i].grad(), on_cpu[i].grad(), gemm_rel(d),
                                            cat(c.name, " gradient ", i, " ", dtype_name(d)));
      }
    }
  }
}
