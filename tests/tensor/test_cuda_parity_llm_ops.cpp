// CUDA parity of the tensor library's parts for Llama- and Gemma-family models: bf16 / f16 storage
// (conversions on the device against the host's, embedding from 16-bit tables, matmul with 16-bit
// weights in every transpose case across widening tiles), rms_norm, glu and its backward, soft_cap;
// CUDA against the CPU on random inputs, float32 and float64, outputs poisoned with NaN first, on the
// shapes of a Gemma-2-2B block (2304 wide, 9216 MLP, 8 heads of 256) and small odd ones; then the
// autograd functions' gradients. Every test skips when no GPU is present.
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
Tolerance row_tol(DType d) { return d == DType::F32 ? Tolerance{1e-6, 2e-6} : Tolerance{1e-13, 1e-12}; }
double gemm_rel(DType d) { return d == DType::F32 ? 1e-5 : 1e-12; }

Tensor poisoned(const Shape& shape, DType d) {
  return Tensor::full(shape, std::numeric_limits<double>::quiet_NaN(), d, Device::CUDA);
}
Tensor gpu(const Tensor& t) { return t.to(Device::CUDA); }

}  // namespace

TEST(CudaParityLlmOps, HalfConversionsOnTheDeviceEqualTheHost) {
  SKIP_WITHOUT_GPU();
  Rng rng(201);
  Tensor x = random_cpu(Shape{1000}, DType::F32, rng, -70000.0, 70000.0);
  // Specials and tie cases too.
  Tensor special = Tensor::from_vector({0.0, -0.0, INFINITY, -INFINITY, NAN, 65519.0, 65520.0, 1.00048828125,
                                        1.0009765625, 5.96e-8, 2.98e-8, 1e-40, 3e38},
                                       Shape{13});
  for (const Tensor& t : {x, special}) {
    for (DType h : {DType::BF16, DType::F16}) {
      const Tensor on_host = t.to(h);
      const Tensor on_gpu = gpu(t).to(h);
      ASSERT_EQ(on_gpu.device(), Device::CUDA);
      expect_close(on_gpu.to(DType::F32), on_host.to(DType::F32), kExact, cat("to ", dtype_name(h)));
      expect_close(gpu(on_host).to(DType::F64), on_host.to(DType::F64), kExact, cat("widened ", dtype_name(h)));
      expect_close(gpu(t.to(DType::F64)).to(h).to(DType::F32), t.to(DType::F64).to(h).to(DType::F32), kExact,
                   cat("f64 to ", dtype_name(h)));
    }
  }
}

TEST(CudaParityLlmOps, EmbeddingOfA16BitTable) {
  SKIP_WITHOUT_GPU();
  Rng rng(202);
  for (DType h : {DType::BF16, DType::F16}) {
    for (auto [n, vocab, width] : {std::tuple<int64_t, int64_t, int64_t>{300, 32000, 256}, {7, 3, 5}}) {
      const Tensor table = random_cpu(Shape{vocab, width}, DType::F32, rng).to(h);
      std::vector<double> id_values(n);
      for (double& id : id_values) id = static_cast<double>(rng.below(vocab));
      const Tensor ids = Tensor::from_vector(id_values, Shape{n}, DType::I32);
      Tensor out = poisoned(Shape{n, width}, DType::F32);
      embedding_(out, gpu(table), gpu(ids));
      expect_close(out, embedding(table, ids), kExact, cat("embedding ", dtype_name(h)));
    }
  }
}

TEST(CudaParityLlmOps, MatmulWith16BitWeights) {
  SKIP_WITHOUT_GPU();
  Rng rng(203);
  struct Case {
    int64_t m, k, n;
  };
  // Gemma-2-2B's q projection (2304 -> 2048) and MLP (2304 -> 2 x 9216), a tied 256k x 256 unembedding
  // (several widening tiles), one row (generation), odd sizes.
  for (const Case& c : {Case{64, 2304, 2048}, Case{16, 2304, 18432}, Case{33, 256, 256000}, Case{1, 2304, 9216},
                        Case{5, 7, 3}}) {
    for (DType h : {DType::BF16, DType::F16}) {
      for (int flags = 0; flags < 4; ++flags) {
        const bool ta = flags & 1, tb = flags & 2;
        if (c.n > 10000 && flags != 2) continue;  // the big ones as the decoder runs them (a W^T)
        const Tensor a = random_cpu(ta ? Shape{c.k, c.m} : Shape{c.m, c.k}, DType::F32, rng);
        const Tensor b = random_cpu(tb ? Shape{c.n, c.k} : Shape{c.k, c.n}, DType::F32, rng).to(h);
        const Tensor start = random_cpu(Shape{c.m, c.n}, DType::F32, rng);
        Tensor ref = start.clone();
        matmul_(ref, a, ta, b, tb, 0.5, 1.0);
        Tensor out = gpu(start);
        matmul_(out, gpu(a), ta, gpu(b), tb, 0.5, 1.0);
        sae::testing::expect_close_to_scale(out, ref, 1e-5,
                                            cat(dtype_name(h), " m ", c.m, " k ", c.k, " n ", c.n, " flags ", flags));
      }
    }
  }
}

TEST(CudaParityLlmOps, RmsNormGluAndSoftCap) {
  SKIP_WITHOUT_GPU();
  Rng rng(204);
  for (DType d : kDTypes) {
    for (const Shape& s : {Shape{218, 2304}, Shape{3, 5, 33}, Shape{1, 1}, Shape{2049, 64}}) {
      const int64_t width = s[s.ndim - 1], rows = s.numel() / width;
      const Tensor x = random_cpu(s, d, rng, -3.0, 5.0), w = random_cpu(Shape{width}, d, rng, 0.5, 1.5);
      Tensor out = poisoned(s, d), rstd = poisoned(Shape{rows}, d);
      rms_norm_(out, rstd, gpu(x), gpu(w), 1e-6);
      Tensor ref = Tensor::empty(s, d), ref_rstd = Tensor::empty(Shape{rows}, d);
      rms_norm_(ref, ref_rstd, x, w, 1e-6);
      expect_close(out, ref, row_tol(d), cat("rms_norm ", s.str()));
      expect_close(rstd, ref_rstd, row_tol(d), "rms_norm rstd");

      const Tensor scores = random_cpu(s, d, rng, -100.0, 100.0);
      Tensor capped = poisoned(s, d);
      soft_cap_(capped, gpu(scores), 50.0);
      expect_close(capped, soft_cap(scores, 50.0), row_tol(d), cat("soft_cap ", s.str()));
    }
    for (GluActivation act : {GluActivation::silu, GluActivation::gelu_tanh}) {
      for (auto [rows, f] : {std::tuple<int64_t, int64_t>{218, 9216}, {3, 5}, {1, 1}}) {
        const Tensor x = random_cpu(Shape{rows, 2 * f}, d, rng, -5.0, 5.0), g = random_cpu(Shape{rows, f}, d, rng);
        Tensor out = poisoned(Shape{rows, f}, d);
        glu_(out, gpu(x), act);
        expect_close(out, glu(x, act), row_tol(d), cat("glu ", glu_activation_name(act), " ", rows, "x", f));
        Tensor gx = poisoned(x.shape(), d), ref = Tensor::empty(x.shape(), d);
        glu_backward_(gx, gpu(x), gpu(g), act);
        glu_backward_(ref, x, g, act);
        expect_close(gx, ref, row_tol(d), cat("glu_backward ", glu_activation_name(act)));
      }
    }
  }
}

TEST(CudaParityLlmOps, AutogradGradients) {
  SKIP_WITHOUT_GPU();
  Rng rng(205);
  using Fn = std::function<Variable(const std::vector<Variable>&)>;
  struct Case {
    const char* name;
    Fn fn;
    std::vector<Shape> shapes;
  };
  const std::vector<Case> cases = {
      {"rms_norm", [](const std::vector<Variable>& v) { return ag::rms_norm(v[0], v[1], 1e-6); }, {Shape{9, 40}, Shape{40}}},
      {"glu silu", [](const std::vector<Variable>& v) { return ag::glu(v[0], GluActivation::silu); }, {Shape{9, 40}}},
      {"glu gelu_tanh", [](const std::vector<Variable>& v) { return ag::glu(v[0], GluActivation::gelu_tanh); },
       {Shape{9, 40}}},
      {"soft_cap", [](const std::vector<Variable>& v) { return ag::soft_cap(v[0], 3.0); }, {Shape{9, 40}}},
  };
  for (const Case& c : cases) {
    for (DType d : kDTypes) {
      std::vector<Variable> on_cpu, on_gpu;
      for (const Shape& s : c.shapes) {
        Tensor x = random_cpu(s, d, rng, -4.0, 4.0);
        on_cpu.emplace_back(x.clone(), true);
        on_gpu.emplace_back(gpu(x), true);
      }
      Tensor weights = random_cpu(c.fn(on_cpu).shape(), d, rng);
      ag::sum(c.fn(on_cpu) * Variable(weights)).backward();
      ag::sum(c.fn(on_gpu) * Variable(gpu(weights))).backward();
      for (size_t i = 0; i < on_cpu.size(); ++i) {
        ASSERT_EQ(on_gpu[i].grad().device(), Device::CUDA) << c.name;
        sae::testing::expect_close_to_scale(on_gpu[i].grad(), on_cpu[i].grad(), gemm_rel(d),
                                            cat(c.name, " gradient ", i, " ", dtype_name(d)));
      }
    }
  }
}
