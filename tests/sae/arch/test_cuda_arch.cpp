// CUDA checks of the shared selection, sparse and decoder kernels, the units' own kernels (JumpReLU,
// Gated) and the units' steps against the CPU: the selections and
// by-feature lists exactly (they compare and copy values; no arithmetic but P = pre + bias), the
// dense kernels and the projection to rounding (every output NaN until the kernel writes it; the
// outputs that are zero by definition compared exactly), and three training steps of every
// architecture. Every test skips when no GPU is present. The CPU kernels these are compared with are
// checked against their formulas in tests/sae/arch/test_arch_dense_kernels.cpp.
#include <gtest/gtest.h>

#include <cmath>

#include "sae/arch/gated/gated_kernels.h"
#include "sae/arch/jumprelu/jumprelu_kernels.h"
#include "sae/arch/registry.h"
#include "sae/arch/sae_step.h"
#include "sae/arch/topk_family.h"
#include "sae/step/sae_ops.h"
#include "tensor/cuda/backend.h"
#include "tensor/ops.h"
#include "tests/sae/arch/arch_problem.h"
#include "tests/util/compare.h"
#include "tests/util/random_inputs.h"
#include "tests/util/gpu.h"
#include "tests/util/standard_sae.h"

using namespace sae;
using sae::testing::expect_bitwise_equal;
using sae::testing::expect_close_to_scale;
using sae::testing::nan_filled;
using sae::testing::quantized_cpu;
using sae::testing::random_cpu;

namespace {

SparseFeatures lists(int64_t rows, int64_t features, int64_t capacity, DType dtype, Device device) {
  SparseFeatures s;
  auto ints = [device](int64_t n) {
    return Tensor::from_vector(std::vector<double>(n, 0.0), Shape{n}, DType::I32, device);
  };
  s.col_ptr = ints(features + 1);
  s.row_ptr = ints(rows + 1);
  s.rows = ints(capacity);
  s.cols = ints(capacity);
  s.vals = Tensor::zeros(Shape{capacity}, dtype, device);
  s.row_vals = Tensor::zeros(Shape{capacity}, dtype, device);
  return s;
}

// The used part of by-token lists (rows row_ptr[0] .. row_ptr[rows]) must be equal.
void expect_same_token_lists(const SparseFeatures& gpu, const SparseFeatures& cpu, int64_t rows, const std::string& what) {
  expect_bitwise_equal(gpu.row_ptr.slice_rows(0, rows + 1), cpu.row_ptr.slice_rows(0, rows + 1), what + " row_ptr");
  const int64_t used = static_cast<int64_t>(cpu.row_ptr.to_vector()[rows]);
  if (used == 0) return;
  expect_bitwise_equal(gpu.cols.slice_rows(0, used), cpu.cols.slice_rows(0, used), what + " cols");
  expect_bitwise_equal(gpu.row_vals.slice_rows(0, used), cpu.row_vals.slice_rows(0, used), what + " row_vals");
}

}  // namespace

TEST(CudaArch, SelectionsAndByFeatureListsEqualTheCpu) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 300, f = 1500;
  for (DType dtype : {DType::F32, DType::F64})
    for (bool ties : {false, true}) {
      SCOPED_TRACE(cat(dtype_name(dtype), ties ? " ties" : ""));
      Rng rng(ties ? 2 : 1);
      const Tensor pre = ties ? quantized_cpu(Shape{n, f}, dtype, rng) : random_cpu(Shape{n, f}, dtype, rng);
      const Tensor bias = random_cpu(Shape{f}, dtype, rng, -0.5, 0.5, false);
      std::vector<double> mask(f);
      for (double& m : mask) m = rng.below(4) == 0;
      const Tensor allowed = Tensor::from_vector(mask, Shape{f}, dtype);
      for (int64_t k : {int64_t(1), int64_t(32), int64_t(700)}) {
        SparseFeatures cpu = lists(2 * n, f, 2 * n * k, dtype, Device::CPU);
        SparseFeatures gpu = lists(2 * n, f, 2 * n * k, dtype, Device::CUDA);
        topk_select_(cpu, pre, bias, Tensor(), k, 0);
        topk_select_(gpu, pre.to(Device::CUDA), bias.to(Device::CUDA), Tensor(), k, 0);
        topk_select_(cpu, pre, bias, allowed, k, n);
        topk_select_(gpu, pre.to(Device::CUDA), bias.to(Device::CUDA), allowed.to(Device::CUDA), k, n);
        expect_same_token_lists(gpu, cpu, 2 * n, cat("topk k ", k));
        Tensor sum_cpu = Tensor::zeros(Shape{f}, dtype), count_cpu = Tensor::zeros(Shape{f}, dtype);
        Tensor sum_gpu = Tensor::zeros(Shape{f}, dtype, Device::CUDA), count_gpu = Tensor::zeros(Shape{f}, dtype, Device::CUDA);
        sparse_by_feature_(cpu, sum_cpu, count_cpu);
        sparse_by_feature_(gpu, sum_gpu, count_gpu);
        const int64_t used = static_cast<int64_t>(cpu.row_ptr.to_vector()[2 * n]);
        expect_bitwise_equal(gpu.col_ptr, cpu.col_ptr, "col_ptr");
        expect_bitwise_equal(gpu.rows.slice_rows(0, used), cpu.rows.slice_rows(0, used), "rows");
        expect_bitwise_equal(gpu.vals.slice_rows(0, used), cpu.vals.slice_rows(0, used), "vals");
        expect_bitwise_equal(count_gpu, count_cpu, "col_count");
        expect_bitwise_equal(sum_gpu, sum_cpu, "col_sum (one order: rows)");
      }
      for (int64_t total : {int64_t(1), int64_t(9000), n * f}) {
        SparseFeatures cpu = lists(n, f, total, dtype, Device::CPU), gpu = lists(n, f, total, dtype, Device::CUDA);
        batchtopk_select_(cpu, pre, bias, total);
        batchtopk_select_(gpu, pre.to(Device::CUDA), bias.to(Device::CUDA), total);
        expect_same_token_lists(gpu, cpu, n, cat("batchtopk total ", total));
      }
    }
}

TEST(CudaArch, SelectionsOfBf16PreActivationsEqualTheCpu) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 300, f = 1500;
  for (bool ties : {false, true}) {
    SCOPED_TRACE(ties ? "ties" : "no ties");
    Rng rng(ties ? 4 : 3);
    const Tensor pre =
        (ties ? quantized_cpu(Shape{n, f}, DType::F32, rng) : random_cpu(Shape{n, f}, DType::F32, rng)).to(DType::BF16);
    const Tensor bias = random_cpu(Shape{f}, DType::F32, rng, -0.5, 0.5, false);
    std::vector<double> mask(f);
    for (double& m : mask) m = rng.below(4) == 0;
    const Tensor allowed = Tensor::from_vector(mask, Shape{f});
    for (int64_t k : {int64_t(1), int64_t(32), int64_t(700)}) {
      SparseFeatures cpu = lists(2 * n, f, 2 * n * k, DType::F32, Device::CPU);
      SparseFeatures gpu = lists(2 * n, f, 2 * n * k, DType::F32, Device::CUDA);
      topk_select_(cpu, pre, bias, Tensor(), k, 0);
      topk_select_(gpu, pre.to(Device::CUDA), bias.to(Device::CUDA), Tensor(), k, 0);
      topk_select_(cpu, pre, bias, allowed, k, n);
      topk_select_(gpu, pre.to(Device::CUDA), bias.to(Device::CUDA), allowed.to(Device::CUDA), k, n);
      expect_same_token_lists(gpu, cpu, 2 * n, cat("bf16 topk k ", k));
    }
    for (int64_t total : {int64_t(1), int64_t(9000), n * f}) {
      SparseFeatures cpu = lists(n, f, total, DType::F32, Device::CPU), gpu = lists(n, f, total, DType::F32, Device::CUDA);
      batchtopk_select_(cpu, pre, bias, total);
      batchtopk_select_(gpu, pre.to(Device::CUDA), bias.to(Device::CUDA), total);
      expect_same_token_lists(gpu, cpu, n, cat("bf16 batchtopk total ", total));
    }
  }
}

TEST(CudaArch, DenseKernelsMatchTheCpu) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 257, f = 300, d = 40;
  for (DType dtype : {DType::F32, DType::F64}) {
    SCOPED_TRACE(dtype_name(dtype));
    const double rel = dtype == DType::F32 ? 1e-5 : 1e-12;
    Rng rng(5);
    auto on_gpu = [](const Tensor& t) { return t.to(Device::CUDA); };
    // Unit-norm decoder.
    const Tensor W = random_cpu(Shape{f, d}, dtype, rng), grad = random_cpu(Shape{f, d}, dtype, rng);
    const Tensor norms = norm2(W, 1);
    Tensor g_cpu = grad.clone(), g_gpu = on_gpu(grad);
    decoder_project_(g_cpu, W, norms);
    decoder_project_(g_gpu, on_gpu(W), on_gpu(norms));
    expect_close_to_scale(g_gpu.to(Device::CPU), g_cpu, rel, "decoder_project");
    Tensor w_cpu = W.clone(), w_gpu = on_gpu(W);
    decoder_normalize_(w_cpu);
    decoder_normalize_(w_gpu);
    expect_close_to_scale(w_gpu.to(Device::CPU), w_cpu, rel, "decoder_normalize");
    // JumpReLU, both penalties.
    const Tensor pre = random_cpu(Shape{n, f}, dtype, rng), bias = random_cpu(Shape{f}, dtype, rng, -0.5, 0.5);
    const Tensor log_threshold = log(random_cpu(Shape{f}, dtype, rng, 0.2, 1.0, false));
    const Tensor fnorms = random_cpu(Shape{f}, dtype, rng, 0.5, 1.5, false), upstream = random_cpu(Shape{n, f}, dtype, rng);
    for (bool tanh : {false, true}) {
      JumpReluSettings c;
      const double lambda = 0.3;
      c.tanh = tanh;
      c.ste_to_input = tanh;
      c.pre_act = 0.05;
      c.tanh_c = 4;
      c.bandwidth = 0.5;
      // Every output starts as NaN: one a kernel never writes fails the comparison.
      Tensor P_cpu = pre.clone(), P_gpu = on_gpu(pre), f_cpu = nan_filled(pre.shape(), dtype),
             f_gpu = nan_filled(pre.shape(), dtype, Device::CUDA);
      Tensor cols_cpu[3], cols_gpu[3];
      for (int i = 0; i < 3; ++i) {
        cols_cpu[i] = nan_filled(Shape{f}, dtype);
        cols_gpu[i] = nan_filled(Shape{f}, dtype, Device::CUDA);
      }
      jumprelu_forward_(f_cpu, P_cpu, bias, log_threshold, fnorms, c, cols_cpu[0], cols_cpu[1], cols_cpu[2]);
      jumprelu_forward_(f_gpu, P_gpu, on_gpu(bias), on_gpu(log_threshold), on_gpu(fnorms), c, cols_gpu[0], cols_gpu[1],
                        cols_gpu[2]);
      expect_close_to_scale(f_gpu.to(Device::CPU), f_cpu, rel, "jumprelu f");
      expect_close_to_scale(P_gpu.to(Device::CPU), P_cpu, rel, "jumprelu P");
      // With the step penalty the relu(theta - P) sums are zero by definition: compared exactly.
      for (int i = 0; i < 3; ++i) expect_close_to_scale(cols_gpu[i].to(Device::CPU), cols_cpu[i], rel, cat("jumprelu sums ", i));
      Tensor g_c = upstream.clone(), g_g = on_gpu(upstream);
      for (int i = 0; i < 3; ++i) {
        fill_(cols_cpu[i], NAN);
        fill_(cols_gpu[i], NAN);
      }
      jumprelu_backward_(g_c, P_cpu, log_threshold, fnorms, c, lambda, cols_cpu[0], cols_cpu[1], cols_cpu[2]);
      jumprelu_backward_(g_g, P_gpu, on_gpu(log_threshold), on_gpu(fnorms), c, lambda, cols_gpu[0], cols_gpu[1],
                         cols_gpu[2]);
      expect_close_to_scale(g_g.to(Device::CPU), g_c, rel, "jumprelu dL/dP");
      // With the step penalty the decoder scale is zero by definition: compared exactly.
      for (int i = 0; i < 3; ++i)
        expect_close_to_scale(cols_gpu[i].to(Device::CPU), cols_cpu[i], 10 * rel, cat("jumprelu column grads ", i));
    }
    // Gated.
    const Tensor b_gate = random_cpu(Shape{f}, dtype, rng), b_mag = random_cpu(Shape{f}, dtype, rng),
                 r_mag = random_cpu(Shape{f}, dtype, rng, -0.5, 0.5);
    Tensor fc = nan_filled(pre.shape(), dtype), gc = nan_filled(pre.shape(), dtype);
    Tensor fg = nan_filled(pre.shape(), dtype, Device::CUDA), gg = nan_filled(pre.shape(), dtype, Device::CUDA);
    Tensor cc[3], cg[3];
    for (int i = 0; i < 3; ++i) {
      cc[i] = nan_filled(Shape{f}, dtype);
      cg[i] = nan_filled(Shape{f}, dtype, Device::CUDA);
    }
    gated_forward_(fc, gc, pre, b_gate, b_mag, r_mag, cc[0], cc[1]);
    gated_forward_(fg, gg, on_gpu(pre), on_gpu(b_gate), on_gpu(b_mag), on_gpu(r_mag), cg[0], cg[1]);
    expect_close_to_scale(fg.to(Device::CPU), fc, rel, "gated f");
    expect_close_to_scale(gg.to(Device::CPU), gc, rel, "gated gate");
    expect_bitwise_equal(cg[0], cc[0], "gated counts");
    expect_close_to_scale(cg[1].to(Device::CPU), cc[1], rel, "gated col_gate");
    for (int i = 0; i < 3; ++i) {
      fill_(cc[i], NAN);
      fill_(cg[i], NAN);
    }
    Tensor up_c = upstream.clone(), up_g = on_gpu(upstream);
    const Tensor aux = random_cpu(Shape{n, f}, dtype, rng);
    gated_backward_(up_c, aux, pre, b_gate, b_mag, r_mag, fnorms, 0.3, cc[0], cc[1], cc[2]);
    gated_backward_(up_g, on_gpu(aux), on_gpu(pre), on_gpu(b_gate), on_gpu(b_mag), on_gpu(r_mag), on_gpu(fnorms), 0.3,
                    cg[0], cg[1], cg[2]);
    expect_close_to_scale(up_g.to(Device::CPU), up_c, rel, "gated dL/dQ");
    for (int i = 0; i < 3; ++i) expect_close_to_scale(cg[i].to(Device::CPU), cc[i], 10 * rel, "gated column grads");
  }
}

TEST(CudaArch, DenseKernelsOnBf16StorageMatchTheCpu) {
  // f, dL/df and gated's Q and gate stored as bf16 (the dense units at --precision bf16), float32
  // vectors: as DenseKernelsMatchTheCpu, plus one bf16 step (2^-8 of a value, within 8e-3 of the
  // largest) where the GPU's float32 result lands on the other side of a rounding boundary.
  SKIP_WITHOUT_GPU();
  const int64_t n = 257, f = 300;
  const double rel = 1e-5, stored_rel = 8e-3;
  Rng rng(6);
  auto on_gpu = [](const Tensor& t) { return t.to(Device::CUDA); };
  auto wide = [](const Tensor& t) { return t.to(Device::CPU).to(DType::F32); };
  const Tensor pre = random_cpu(Shape{n, f}, DType::F32, rng), bias = random_cpu(Shape{f}, DType::F32, rng, -0.5, 0.5);
  const Tensor log_threshold = log(random_cpu(Shape{f}, DType::F32, rng, 0.2, 1.0, false));
  const Tensor norms = random_cpu(Shape{f}, DType::F32, rng, 0.5, 1.5, false);
  const Tensor up16 = random_cpu(Shape{n, f}, DType::F32, rng).to(DType::BF16);
  for (bool tanh : {false, true}) {
    JumpReluSettings c;
    c.tanh = tanh;
    c.ste_to_input = tanh;
    c.pre_act = 0.05;
    c.bandwidth = 0.5;
    Tensor P_cpu = pre.clone(), P_gpu = on_gpu(pre);
    Tensor f_cpu = Tensor::empty(Shape{n, f}, DType::BF16), f_gpu = Tensor::empty(Shape{n, f}, DType::BF16, Device::CUDA);
    Tensor cc[3], cg[3];
    for (int i = 0; i < 3; ++i) {
      cc[i] = nan_filled(Shape{f}, DType::F32);
      cg[i] = nan_filled(Shape{f}, DType::F32, Device::CUDA);
    }
    jumprelu_forward_(f_cpu, P_cpu, bias, log_threshold, norms, c, cc[0], cc[1], cc[2]);
    jumprelu_forward_(f_gpu, P_gpu, on_gpu(bias), on_gpu(log_threshold), on_gpu(norms), c, cg[0], cg[1], cg[2]);
    expect_close_to_scale(wide(f_gpu), wide(f_cpu), stored_rel, "jumprelu bf16 f");
    for (int i = 0; i < 3; ++i) expect_close_to_scale(cg[i].to(Device::CPU), cc[i], rel, cat("jumprelu sums ", i));
    Tensor g_c = up16.clone(), g_g = on_gpu(up16);
    jumprelu_backward_(g_c, P_cpu, log_threshold, norms, c, 0.3, cc[0], cc[1], cc[2]);
    jumprelu_backward_(g_g, P_gpu, on_gpu(log_threshold), on_gpu(norms), c, 0.3, cg[0], cg[1], cg[2]);
    expect_close_to_scale(wide(g_g), wide(g_c), stored_rel, "jumprelu bf16 dL/dP");
    for (int i = 0; i < 3; ++i) expect_close_to_scale(cg[i].to(Device::CPU), cc[i], 10 * rel, cat("jumprelu grads ", i));
  }
  const Tensor Q16 = pre.to(DType::BF16), b_gate = random_cpu(Shape{f}, DType::F32, rng),
               b_mag = random_cpu(Shape{f}, DType::F32, rng), r_mag = random_cpu(Shape{f}, DType::F32, rng, -0.5, 0.5);
  Tensor fc = Tensor::empty(Shape{n, f}, DType::BF16), gc = fc.clone();
  Tensor fg = Tensor::empty(Shape{n, f}, DType::BF16, Device::CUDA), gg = fg.clone();
  Tensor cc[3], cg[3];
  for (int i = 0; i < 3; ++i) {
    cc[i] = nan_filled(Shape{f}, DType::F32);
    cg[i] = nan_filled(Shape{f}, DType::F32, Device::CUDA);
  }
  gated_forward_(fc, gc, Q16, b_gate, b_mag, r_mag, cc[0], cc[1]);
  gated_forward_(fg, gg, on_gpu(Q16), on_gpu(b_gate), on_gpu(b_mag), on_gpu(r_mag), cg[0], cg[1]);
  expect_close_to_scale(wide(fg), wide(fc), stored_rel, "gated bf16 f");
  expect_close_to_scale(wide(gg), wide(gc), stored_rel, "gated bf16 gate");
  expect_close_to_scale(cg[1].to(Device::CPU), cc[1], rel, "gated col_gate");
  Tensor up_c = up16.clone(), up_g = on_gpu(up16);
  const Tensor aux16 = random_cpu(Shape{n, f}, DType::F32, rng).to(DType::BF16);
  gated_backward_(up_c, aux16, Q16, b_gate, b_mag, r_mag, norms, 0.3, cc[0], cc[1], cc[2]);
  gated_backward_(up_g, on_gpu(aux16), on_gpu(Q16), on_gpu(b_gate), on_gpu(b_mag), on_gpu(r_mag), on_gpu(norms), 0.3,
                  cg[0], cg[1], cg[2]);
  expect_close_to_scale(wide(up_g), wide(up_c), stored_rel, "gated bf16 dL/dQ");
  for (int i = 0; i < 3; ++i) expect_close_to_scale(cg[i].to(Device::CPU), cc[i], 10 * rel, "gated column grads");
}

TEST(CudaArch, ThreeTrainingStepsMatchTheCpu) {
  SKIP_WITHOUT_GPU();
  struct Setting {
    const char* unit;
    const char* penalty;
    bool unit_norm;
    int64_t encoder_chunk = 0;  // topk: tokens per encoder GEMM (10: 7 chunks of the 64 tokens)
    bool centred = false;       // --apply-b-dec-to-input
  };
  const Setting settings[] = {
      {"topk", "step", true},          {"topk", "step", true, 10},    {"batchtopk", "step", true},
      {"jumprelu", "step", true},      {"jumprelu", "tanh", false},   {"gated", "step", false},
      {"topk", "step", true, 10, true}, {"gated", "step", false, 0, true}};
  const int64_t n = 64, d = 24, f = 80, k = 6;
  for (const Setting& s : settings) {
    const std::string a = s.unit;
    SCOPED_TRACE(a + " " + s.penalty + " encoder-chunk " + std::to_string(s.encoder_chunk) +
                 (s.centred ? " centred" : ""));
    std::vector<std::pair<std::string, Json>> given = {{"unit-norm-decoder", Json(s.unit_norm ? "on" : "off")}};
    const bool topk = a == "topk" || a == "batchtopk";
    if (topk) {
      given.push_back({"k", Json(k)});
      given.push_back({"auxk-coefficient", Json(0.1)});
      given.push_back({"auxk-k", Json(5)});
    }
    if (s.encoder_chunk > 0) given.push_back({"encoder-chunk", Json(s.encoder_chunk)});
    if (a == "jumprelu") {
      given.push_back({"jumprelu-penalty", Json(s.penalty)});
      given.push_back({"jumprelu-bandwidth", Json(0.5)});
      given.push_back({"jumprelu-pre-act", Json(0.05)});
    }
    const ArchSettings settings_ = sae::testing::unit_settings(a, given, 40);
    const sae::testing::ArchProblem prob =
        sae::testing::to_dtype(sae::testing::well_conditioned_problem(a, n, d, f, k, 77, 1e-3, 0.5), DType::F32);
    SaeStep cpu(arch_unit(a), settings_, n, d, f, DType::F32, Device::CPU);
    SaeStep gpu(arch_unit(a), settings_, n, d, f, DType::F32, Device::CUDA);
    cpu.set_input_centring(s.centred);
    gpu.set_input_centring(s.centred);
    if (topk) {
      std::vector<int64_t> clock(f);
      for (int64_t i = 0; i < f; ++i) clock[i] = i % 3 == 0 ? 100 : 0;
      cpu.set_dead_clock(clock);
      gpu.set_dead_clock(clock);
    }
    SaeParams p_cpu = prob.params.clone(), p_gpu = prob.params.to(Device::CUDA);
    SaeAdamState a_cpu = SaeAdamState::zeros_like(p_cpu), a_gpu = SaeAdamState::zeros_like(p_gpu);
    const Tensor x_gpu = prob.x.to(Device::CUDA);
    for (int step = 0; step < 3; ++step) {
      const StepSums sc = cpu.train_step(p_cpu, a_cpu, prob.x, 0.3, 1e-3);
      const StepSums sg = gpu.train_step(p_gpu, a_gpu, x_gpu, 0.3, 1e-3);
      EXPECT_NEAR(sg.loss, sc.loss, 1e-4 * std::abs(sc.loss)) << "step " << step;
      EXPECT_EQ(sg.active, sc.active) << "step " << step;
      if (topk) {
        EXPECT_EQ(dynamic_cast<TopKFamilyStep&>(gpu.unit_step()).dead_mask(),
                  dynamic_cast<TopKFamilyStep&>(cpu.unit_step()).dead_mask());
      }
    }
    const auto got = p_gpu.present();
    const auto want = p_cpu.present();
    for (size_t i = 0; i < got.size(); ++i)
      expect_close_to_scale(got[i].second->to(Device::CPU), *want[i].second, 1e-5, got[i].first);
    if (a == "batchtopk") {
      EXPECT_NEAR(p_gpu.settings.at("threshold").as_number(), p_cpu.settings.at("threshold").as_number(), 1e-6);
    }
  }
}
