// The JumpReLU and Gated units' kernels on the CPU (their front-ends jumprelu_forward_, jumprelu_backward_,
// gated_forward_, gated_backward_) against their formulas (docs/architectures.md §2.3 and §2.4)
// written out here as double loops, in float32 and float64, every penalty and straight-through
// setting, at a size that runs the kernels' threads. Every output starts as NaN, so one that is
// never written fails; the outputs that are zero by definition (step's relu(theta - P) sums and
// decoder scale) must be exactly zero. The inputs keep every P - theta, pi_gate and pi_mag away
// from the points where a mask flips (0 and the window's edges), so float32 rounding cannot flip one.
// Letters: N tokens (rows), F features, P the pre-activation, theta = exp(log_threshold), eps the
// bandwidth, n_i the decoder rows' norms.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "sae/arch/gated/gated_kernels.h"
#include "sae/arch/jumprelu/jumprelu_kernels.h"
#include "tensor/ops.h"
#include "tensor/rng.h"
#include "tests/util/compare.h"

using namespace sae;
using sae::testing::expect_close_to_scale;
using sae::testing::max_abs;
using sae::testing::nan_filled;

namespace {

constexpr int64_t kN = 257, kF = 300;  // N F > 2^15: the kernels split the columns across threads
constexpr double kLambda = 0.3;        // the sparsity coefficient

// Relative tolerances: element values, and column sums over the N rows (float32 sums N terms in
// one order; the loops here sum in double).
double element_rel(DType dtype) { return dtype == DType::F32 ? 1e-6 : 1e-14; }
double sum_rel(DType dtype) { return dtype == DType::F32 ? 3e-5 : 1e-12; }

Tensor host(const std::vector<double>& v, const Shape& shape, DType dtype) { return Tensor::from_vector(v, shape, dtype); }

// v as the kernel's dtype stores it.
double stored(double v, DType dtype) { return dtype == DType::F32 ? double(static_cast<float>(v)) : v; }

// ---- JumpReLU ----

struct JumpReluInputs {
  std::vector<double> pre, bias, log_threshold, norms, upstream;  // as stored in the kernel's dtype
};

// pre + bias - theta is at least 0.02 eps away from 0 and from +-eps/2.
JumpReluInputs jumprelu_inputs(DType dtype, double eps, uint64_t seed) {
  Rng rng(seed);
  auto stored = [dtype](double v) { return ::stored(v, dtype); };
  JumpReluInputs in;
  for (int64_t i = 0; i < kF; ++i) {
    in.bias.push_back(stored(rng.uniform(-0.5, 0.5)));
    in.log_threshold.push_back(stored(std::log(rng.uniform(0.2, 1.0))));
    in.norms.push_back(stored(rng.uniform(0.5, 1.5)));
  }
  for (int64_t t = 0; t < kN; ++t)
    for (int64_t i = 0; i < kF; ++i) {
      const double theta = std::exp(in.log_threshold[i]);
      double pre, u;
      do {
        pre = stored(rng.uniform(-2.0, 2.0));
        u = (pre + in.bias[i] - theta) / eps;
      } while (std::abs(u) < 0.02 || std::abs(std::abs(u) - 0.5) < 0.02);
      in.pre.push_back(pre);
      in.upstream.push_back(stored(rng.uniform(-1.0, 1.0)));
    }
  return in;
}

struct JumpReluForwardWant {
  std::vector<double> P, f, count, a, b;
};

// f = P H(P - theta); count = sum_t H; a = sum_t H (step) or tanh(c f n) (tanh);
// b = sum_t relu(theta - P) (tanh), 0 (step).
JumpReluForwardWant jumprelu_forward_by_hand(const JumpReluInputs& in, const JumpReluSettings& c) {
  JumpReluForwardWant w;
  w.P.resize(kN * kF);
  w.f.resize(kN * kF);
  w.count.assign(kF, 0.0);
  w.a.assign(kF, 0.0);
  w.b.assign(kF, 0.0);
  for (int64_t t = 0; t < kN; ++t)
    for (int64_t i = 0; i < kF; ++i) {
      const double theta = std::exp(in.log_threshold[i]), P = in.pre[t * kF + i] + in.bias[i];
      const bool H = P > theta;
      const double f = H ? P : 0.0;
      w.P[t * kF + i] = P;
      w.f[t * kF + i] = f;
      w.count[i] += H ? 1.0 : 0.0;
      if (c.tanh) {
        w.a[i] += std::tanh(c.tanh_c * f * in.norms[i]);
        w.b[i] += std::max(theta - P, 0.0);
      } else {
        w.a[i] += H ? 1.0 : 0.0;
      }
    }
  return w;
}

struct JumpReluBackwardWant {
  std::vector<double> grad_P, grad_bias, grad_log_threshold, decoder_scale;
};

// With d = P - theta, H = 1[d > 0], K = 1[|d| < eps / 2], G_f = upstream + [tanh] lambda c n (1 -
// tanh^2(c f n)):
//   G_P = G_f H + [ste] (theta / eps) K G_f + [step, ste] (lambda / eps) K - [tanh] lambda_P n 1[d < 0]
//   G_theta = -(theta / eps) sum_t K G_f - [step] (lambda / eps) sum_t K + [tanh] lambda_P n sum_t 1[d < 0]
//   grad_log_threshold = theta G_theta; grad_bias = sum_t G_P;
//   decoder_scale = [tanh] lambda c sum_t f (1 - tanh^2(c f n)) + lambda_P sum_t relu(theta - P); 0 for step.
JumpReluBackwardWant jumprelu_backward_by_hand(const JumpReluInputs& in, const std::vector<double>& P,
                                               const JumpReluSettings& c, double lambda) {
  const double eps = c.bandwidth;
  JumpReluBackwardWant w;
  w.grad_P.resize(kN * kF);
  w.grad_bias.assign(kF, 0.0);
  w.grad_log_threshold.assign(kF, 0.0);
  w.decoder_scale.assign(kF, 0.0);
  std::vector<double> grad_theta(kF, 0.0);
  for (int64_t t = 0; t < kN; ++t)
    for (int64_t i = 0; i < kF; ++i) {
      const double theta = std::exp(in.log_threshold[i]), n = in.norms[i], p = P[t * kF + i], d = p - theta;
      const bool H = d > 0, K = std::abs(d) < eps / 2, below = d < 0;
      const double f = H ? p : 0.0;
      double G_f = in.upstream[t * kF + i];
      double fade = 0.0;
      if (c.tanh) {
        fade = 1.0 - std::pow(std::tanh(c.tanh_c * f * n), 2);
        G_f += lambda * c.tanh_c * n * fade;
      }
      double G_P = H ? G_f : 0.0;
      if (c.ste_to_input && K) G_P += theta / eps * G_f;
      if (!c.tanh && c.ste_to_input && K) G_P += lambda / eps;
      if (c.tanh && below) G_P -= c.pre_act * n;
      double G_theta = K ? -theta / eps * G_f : 0.0;
      if (!c.tanh && K) G_theta -= lambda / eps;
      if (c.tanh && below) G_theta += c.pre_act * n;
      w.grad_P[t * kF + i] = G_P;
      w.grad_bias[i] += G_P;
      grad_theta[i] += G_theta;
      if (c.tanh) w.decoder_scale[i] += lambda * c.tanh_c * f * fade + c.pre_act * std::max(-d, 0.0);
    }
  for (int64_t i = 0; i < kF; ++i) w.grad_log_threshold[i] = std::exp(in.log_threshold[i]) * grad_theta[i];
  return w;
}

// ---- Gated ----

struct GatedInputs {
  std::vector<double> Q, b_gate, b_mag, r_mag, norms, upstream, upstream_gate;
};

// |Q + b_gate| and |Q exp(r_mag) + b_mag| at least 1e-3.
GatedInputs gated_inputs(DType dtype, uint64_t seed) {
  Rng rng(seed);
  auto stored = [dtype](double v) { return ::stored(v, dtype); };
  GatedInputs in;
  for (int64_t i = 0; i < kF; ++i) {
    in.b_gate.push_back(stored(rng.uniform(-1.0, 1.0)));
    in.b_mag.push_back(stored(rng.uniform(-1.0, 1.0)));
    in.r_mag.push_back(stored(rng.uniform(-0.5, 0.5)));
    in.norms.push_back(stored(rng.uniform(0.5, 1.5)));
  }
  for (int64_t t = 0; t < kN; ++t)
    for (int64_t i = 0; i < kF; ++i) {
      double Q;
      do {
        Q = stored(rng.uniform(-2.0, 2.0));
      } while (std::abs(Q + in.b_gate[i]) < 1e-3 || std::abs(Q * std::exp(in.r_mag[i]) + in.b_mag[i]) < 1e-3);
      in.Q.push_back(Q);
      in.upstream.push_back(stored(rng.uniform(-1.0, 1.0)));
      in.upstream_gate.push_back(stored(rng.uniform(-1.0, 1.0)));
    }
  return in;
}

}  // namespace

TEST(JumpReluKernels, ForwardAndBackwardFollowTheFormulas) {
  for (DType dtype : {DType::F32, DType::F64})
    for (bool tanh : {false, true})
      for (bool ste : {false, true}) {
        SCOPED_TRACE(cat(dtype_name(dtype), tanh ? " tanh" : " step", ste ? " ste_to_input" : ""));
        JumpReluSettings c;
        c.tanh = tanh;
        c.ste_to_input = ste;
        c.pre_act = 0.05;
        c.tanh_c = 4;
        c.bandwidth = 0.5;
        const JumpReluInputs in = jumprelu_inputs(dtype, c.bandwidth, 11 + 2 * tanh + ste);
        const Shape nf{kN, kF}, f1{kF};
        const Tensor bias = host(in.bias, f1, dtype), log_threshold = host(in.log_threshold, f1, dtype),
                     norms = host(in.norms, f1, dtype);

        Tensor pre = host(in.pre, nf, dtype), f = nan_filled(nf, dtype);
        Tensor count = nan_filled(f1, dtype), a = nan_filled(f1, dtype), b = nan_filled(f1, dtype);
        jumprelu_forward_(f, pre, bias, log_threshold, norms, c, count, a, b);
        const JumpReluForwardWant fw = jumprelu_forward_by_hand(in, c);
        expect_close_to_scale(pre, host(fw.P, nf, dtype), element_rel(dtype), "pre becomes P");
        expect_close_to_scale(f, host(fw.f, nf, dtype), element_rel(dtype), "f");
        expect_close_to_scale(count, host(fw.count, f1, dtype), 0.0, "col_count (exact)");
        expect_close_to_scale(a, host(fw.a, f1, dtype), sum_rel(dtype), "col_a");
        expect_close_to_scale(b, host(fw.b, f1, dtype), sum_rel(dtype), "col_b");
        if (!tanh) {
          EXPECT_EQ(max_abs(b), 0.0) << "step: no pre-activation loss";
        }
        // Enough of every case for the checks to mean something.
        double on = 0;
        for (double v : fw.count) on += v;
        EXPECT_GT(on, 0.2 * kN * kF);
        EXPECT_LT(on, 0.8 * kN * kF);

        // The backward from the P the test built (not from the forward's output).
        Tensor grad = host(in.upstream, nf, dtype);
        Tensor grad_bias = nan_filled(f1, dtype), grad_log = nan_filled(f1, dtype), scale = nan_filled(f1, dtype);
        jumprelu_backward_(grad, host(fw.P, nf, dtype), log_threshold, norms, c, kLambda, grad_bias, grad_log, scale);
        const JumpReluBackwardWant bw = jumprelu_backward_by_hand(in, fw.P, c, kLambda);
        expect_close_to_scale(grad, host(bw.grad_P, nf, dtype), element_rel(dtype), "dL/dP");
        expect_close_to_scale(grad_bias, host(bw.grad_bias, f1, dtype), sum_rel(dtype), "grad_bias");
        expect_close_to_scale(grad_log, host(bw.grad_log_threshold, f1, dtype), sum_rel(dtype), "grad_log_threshold");
        expect_close_to_scale(scale, host(bw.decoder_scale, f1, dtype), sum_rel(dtype), "decoder_scale");
        if (!tanh) {
          EXPECT_EQ(max_abs(scale), 0.0) << "step: the decoder scale is zero by definition";
        }
        // Tokens in the straight-through window, below and above it.
        int64_t in_window = 0;
        for (int64_t t = 0; t < kN; ++t)
          for (int64_t i = 0; i < kF; ++i) in_window += std::abs(fw.P[t * kF + i] - std::exp(in.log_threshold[i])) < 0.25;
        EXPECT_GT(in_window, kN * kF / 20);
      }
}

TEST(GatedKernels, ForwardAndBackwardFollowTheFormulas) {
  for (DType dtype : {DType::F32, DType::F64}) {
    SCOPED_TRACE(dtype_name(dtype));
    const GatedInputs in = gated_inputs(dtype, 21);
    const Shape nf{kN, kF}, f1{kF};
    const Tensor Q = host(in.Q, nf, dtype), b_gate = host(in.b_gate, f1, dtype), b_mag = host(in.b_mag, f1, dtype),
                 r_mag = host(in.r_mag, f1, dtype), norms = host(in.norms, f1, dtype);
    const double lambda = 0.3;

    // Forward: pi_gate = Q + b_gate, pi_mag = Q exp(r_mag) + b_mag, f = H(pi_gate) relu(pi_mag),
    // gate = relu(pi_gate); count = sum_t 1[f > 0], col_gate = sum_t gate.
    std::vector<double> want_f(kN * kF), want_gate(kN * kF), want_count(kF, 0.0), want_col_gate(kF, 0.0);
    // Backward: g_mag = upstream H(pi_gate) H(pi_mag), g_gate = H(pi_gate) (lambda n + upstream_gate),
    // dL/dQ = g_gate + g_mag exp(r_mag); grad_b_gate = sum_t g_gate, grad_b_mag = sum_t g_mag,
    // grad_r_mag = exp(r_mag) sum_t g_mag Q.
    std::vector<double> want_dQ(kN * kF), want_b_gate(kF, 0.0), want_b_mag(kF, 0.0), want_r_mag(kF, 0.0);
    int64_t gate_open = 0, firing = 0;
    for (int64_t t = 0; t < kN; ++t)
      for (int64_t i = 0; i < kF; ++i) {
        const int64_t e = t * kF + i;
        const double q = in.Q[e], scale = std::exp(in.r_mag[i]);
        const double pi_gate = q + in.b_gate[i], pi_mag = q * scale + in.b_mag[i];
        const bool H = pi_gate > 0, H_mag = pi_mag > 0;
        want_f[e] = H ? std::max(pi_mag, 0.0) : 0.0;
        want_gate[e] = std::max(pi_gate, 0.0);
        want_count[i] += want_f[e] > 0 ? 1.0 : 0.0;
        want_col_gate[i] += want_gate[e];
        const double g_mag = H && H_mag ? in.upstream[e] : 0.0;
        const double g_gate = H ? lambda * in.norms[i] + in.upstream_gate[e] : 0.0;
        want_dQ[e] = g_gate + g_mag * scale;
        want_b_gate[i] += g_gate;
        want_b_mag[i] += g_mag;
        want_r_mag[i] += g_mag * q;
        gate_open += H;
        firing += want_f[e] > 0;
      }
    for (int64_t i = 0; i < kF; ++i) want_r_mag[i] *= std::exp(in.r_mag[i]);
    EXPECT_GT(gate_open, firing + kN * kF / 20);  // open gates with a negative magnitude: f = 0
    EXPECT_GT(firing, kN * kF / 5);

    Tensor f = nan_filled(nf, dtype), gate = nan_filled(nf, dtype), count = nan_filled(f1, dtype),
           col_gate = nan_filled(f1, dtype);
    gated_forward_(f, gate, Q, b_gate, b_mag, r_mag, count, col_gate);
    expect_close_to_scale(f, host(want_f, nf, dtype), element_rel(dtype), "gated f");
    expect_close_to_scale(gate, host(want_gate, nf, dtype), element_rel(dtype), "gated gate");
    expect_close_to_scale(count, host(want_count, f1, dtype), 0.0, "gated col_count (exact)");
    expect_close_to_scale(col_gate, host(want_col_gate, f1, dtype), sum_rel(dtype), "gated col_gate");

    Tensor grad = host(in.upstream, nf, dtype);
    Tensor grad_b_gate = nan_filled(f1, dtype), grad_b_mag = nan_filled(f1, dtype), grad_r_mag = nan_filled(f1, dtype);
    gated_backward_(grad, host(in.upstream_gate, nf, dtype), Q, b_gate, b_mag, r_mag, norms, lambda, grad_b_gate,
                    grad_b_mag, grad_r_mag);
    expect_close_to_scale(grad, host(want_dQ, nf, dtype), element_rel(dtype), "gated dL/dQ");
    expect_close_to_scale(grad_b_gate, host(want_b_gate, f1, dtype), sum_rel(dtype), "grad_b_gate");
    expect_close_to_scale(grad_b_mag, host(want_b_mag, f1, dtype), sum_rel(dtype), "grad_b_mag");
    expect_close_to_scale(grad_r_mag, host(want_r_mag, f1, dtype), sum_rel(dtype), "grad_r_mag");
  }
}

// A batch of no rows: every column output is written, and is zero.
TEST(ArchDenseKernels, NoRowsGiveZeroColumns) {
  for (DType dtype : {DType::F32, DType::F64}) {
    SCOPED_TRACE(dtype_name(dtype));
    const Shape none{0, kF}, f1{kF};
    const Tensor zeros = Tensor::zeros(f1, dtype), ones = Tensor::full(f1, 1.0, dtype);
    JumpReluSettings c;
    c.tanh = true;
    Tensor pre = Tensor::zeros(none, dtype), f = Tensor::zeros(none, dtype), grad = Tensor::zeros(none, dtype),
           gate = Tensor::zeros(none, dtype);
    auto expect_written_zeros = [&](Tensor* outs, int count, const std::string& what) {
      for (int i = 0; i < count; ++i) {
        expect_close_to_scale(outs[i], zeros, 0.0, cat(what, " output ", i));
        fill_(outs[i], NAN);
      }
    };
    Tensor outs[3] = {nan_filled(f1, dtype), nan_filled(f1, dtype), nan_filled(f1, dtype)};
    jumprelu_forward_(f, pre, zeros, zeros, ones, c, outs[0], outs[1], outs[2]);
    expect_written_zeros(outs, 3, "jumprelu_forward");
    jumprelu_backward_(grad, pre, zeros, ones, c, 0.5, outs[0], outs[1], outs[2]);
    expect_written_zeros(outs, 3, "jumprelu_backward");
    gated_forward_(f, gate, pre, zeros, zeros, zeros, outs[0], outs[1]);
    expect_written_zeros(outs, 2, "gated_forward");
    gated_backward_(grad, gate, pre, zeros, zeros, zeros, ones, 0.5, outs[0], outs[1], outs[2]);
    expect_written_zeros(outs, 3, "gated_backward");
  }
}

// At --precision bf16 the dense units keep f and dL/df (and gated its Q and relu(pi_gate)) in bf16
// (sae/arch/dense_step.h): the kernels read each stored value widened, compute in float32, and round
// each [N, F] result once; their column sums are of the values before rounding. So each equals the
// float32 kernel (checked against the formulas above) on the widened inputs: [N, F] outputs rounded
// to bf16, [F] outputs bit for bit.
TEST(ArchDenseKernels, Bf16StorageIsTheFloat32KernelRoundedOnce) {
  const Shape nf{kN, kF}, f1{kF};
  auto bf16 = [](const Tensor& t) { return t.to(DType::BF16); };
  auto widened = [](const Tensor& t) { return t.to(DType::F32); };
  {
    const GatedInputs in = gated_inputs(DType::F32, 31);
    const Tensor Q16 = bf16(host(in.Q, nf, DType::F32)), b_gate = host(in.b_gate, f1, DType::F32),
                 b_mag = host(in.b_mag, f1, DType::F32), r_mag = host(in.r_mag, f1, DType::F32),
                 norms = host(in.norms, f1, DType::F32);
    Tensor f16 = Tensor::empty(nf, DType::BF16), gate16 = Tensor::empty(nf, DType::BF16);
    Tensor f32 = nan_filled(nf, DType::F32), gate32 = nan_filled(nf, DType::F32);
    Tensor c16 = nan_filled(f1, DType::F32), g16 = nan_filled(f1, DType::F32), c32 = c16.clone(), g32 = g16.clone();
    gated_forward_(f16, gate16, Q16, b_gate, b_mag, r_mag, c16, g16);
    gated_forward_(f32, gate32, widened(Q16), b_gate, b_mag, r_mag, c32, g32);
    sae::testing::expect_bitwise_equal(f16, bf16(f32), "gated f");
    sae::testing::expect_bitwise_equal(gate16, bf16(gate32), "gated gate");
    sae::testing::expect_bitwise_equal(c16, c32, "gated count");
    sae::testing::expect_bitwise_equal(g16, g32, "gated col_gate");

    const Tensor up16 = bf16(host(in.upstream, nf, DType::F32)), upg16 = bf16(host(in.upstream_gate, nf, DType::F32));
    Tensor grad16 = up16.clone(), grad32 = widened(up16);
    Tensor a16 = nan_filled(f1, DType::F32), b16 = a16.clone(), r16 = a16.clone(), a32 = a16.clone(),
           b32 = a16.clone(), r32 = a16.clone();
    gated_backward_(grad16, upg16, Q16, b_gate, b_mag, r_mag, norms, kLambda, a16, b16, r16);
    gated_backward_(grad32, widened(upg16), widened(Q16), b_gate, b_mag, r_mag, norms, kLambda, a32, b32, r32);
    sae::testing::expect_bitwise_equal(grad16, bf16(grad32), "gated dL/dQ");
    for (auto [got, want] : {std::pair<Tensor*, Tensor*>{&a16, &a32}, {&b16, &b32}, {&r16, &r32}})
      sae::testing::expect_bitwise_equal(*got, *want, "gated parameter gradient");
  }
  for (bool tanh : {false, true}) {
    SCOPED_TRACE(tanh ? "jumprelu tanh" : "jumprelu step");
    JumpReluSettings c;
    c.tanh = tanh;
    c.ste_to_input = tanh;
    c.bandwidth = 0.05;
    c.pre_act = 0.1;
    const JumpReluInputs in = jumprelu_inputs(DType::F32, c.bandwidth, 32);
    const Tensor bias = host(in.bias, f1, DType::F32), log_threshold = host(in.log_threshold, f1, DType::F32),
                 norms = host(in.norms, f1, DType::F32);
    Tensor pre16 = host(in.pre, nf, DType::F32), pre32 = pre16.clone();  // P stays float32
    Tensor f16 = Tensor::empty(nf, DType::BF16), f32 = nan_filled(nf, DType::F32);
    Tensor o16[3] = {nan_filled(f1, DType::F32), nan_filled(f1, DType::F32), nan_filled(f1, DType::F32)};
    Tensor o32[3] = {o16[0].clone(), o16[1].clone(), o16[2].clone()};
    jumprelu_forward_(f16, pre16, bias, log_threshold, norms, c, o16[0], o16[1], o16[2]);
    jumprelu_forward_(f32, pre32, bias, log_threshold, norms, c, o32[0], o32[1], o32[2]);
    sae::testing::expect_bitwise_equal(pre16, pre32, "P");
    sae::testing::expect_bitwise_equal(f16, bf16(f32), "f");
    for (int i = 0; i < 3; ++i) sae::testing::expect_bitwise_equal(o16[i], o32[i], cat("forward column output ", i));
    const Tensor up16 = bf16(host(in.upstream, nf, DType::F32));
    Tensor grad16 = up16.clone(), grad32 = widened(up16);
    for (int i = 0; i < 3; ++i) {
      fill_(o16[i], NAN);
      fill_(o32[i], NAN);
    }
    jumprelu_backward_(grad16, pre16, log_threshold, norms, c, kLambda, o16[0], o16[1], o16[2]);
    jumprelu_backward_(grad32, pre32, log_threshold, norms, c, kLambda, o32[0], o32[1], o32[2]);
    sae::testing::expect_bitwise_equal(grad16, bf16(grad32), "dL/dP");
    for (int i = 0; i < 3; ++i) sae::testing::expect_bitwise_equal(o16[i], o32[i], cat("backward column output ", i));
  }
  // bf16 storage needs float32 vectors (and, for JumpReLU, a float32 P).
  Tensor f = Tensor::empty(nf, DType::BF16), g = Tensor::empty(nf, DType::BF16);
  const Tensor v64 = Tensor::zeros(f1, DType::F64);
  Tensor w64 = v64.clone(), x64 = v64.clone();
  EXPECT_THROW(gated_forward_(f, g, Tensor::zeros(nf, DType::BF16), v64, v64, v64, w64, x64), Error);
  Tensor pre64 = Tensor::zeros(nf, DType::F64);
  JumpReluSettings c;
  EXPECT_THROW(jumprelu_forward_(f, pre64, v64, v64, v64, c, w64, x64, w64), Error);
}
