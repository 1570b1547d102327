// The architecture units' autograd references (reference_loss) on their own: float64 gradchecks of every
// loss where it is differentiable (the stop-gradient values frozen, the selections held by margins),
// the straight-through gradients of JumpReLU checked element by element against their formulas,
// the selections against brute force, the inference rules, the geometric median against the
// fixture, and the initialisations.
#include <gtest/gtest.h>

#include <cmath>

#include "sae/arch/dictionary.h"
#include "sae/arch/jumprelu/jumprelu.h"
#include "sae/arch/registry.h"
#include "tensor/ops.h"
#include "tests/sae/arch/arch_fixture.h"
#include "tests/sae/arch/arch_problem.h"
#include "tests/util/compare.h"
#include "tests/util/gradcheck.h"

using namespace sae;
using sae::testing::arch_fixture;
using sae::testing::ArchProblem;
using sae::testing::expect_close_to_scale;
using sae::testing::gradcheck;
using sae::testing::max_abs;
using sae::testing::tensor_named;
using sae::testing::unit_settings;
using sae::testing::variable_named;
using sae::testing::well_conditioned_problem;

namespace {
constexpr int64_t kN = 6, kD = 5, kF = 12;

// Gradcheck of `term` of the unit's loss with respect to the named tensors; the others are constants.
double check_term(const ArchSettings& settings, const ArchProblem& prob, double lambda,
                  const std::vector<std::string>& names, const std::vector<uint8_t>* dead, const ArchFrozen* frozen,
                  Variable ReferenceLoss::*term = &ReferenceLoss::total, bool centred = false) {
  SaeParams base = prob.params;
  std::vector<Tensor> inputs;
  for (const std::string& name : names) inputs.push_back(tensor_named(base, name));
  const Tensor x = prob.x;
  const ArchUnit& unit = arch_unit(base.kind);
  auto f = [&, x, base](const std::vector<Variable>& v) {
    ArchVariables vars = ArchVariables::leaves(base, false);
    vars.centred = centred;
    for (size_t j = 0; j < names.size(); ++j) variable_named(vars, names[j]) = v[j];
    return unit.reference_loss(settings, vars, x, lambda, dead, frozen).*term;
  };
  return gradcheck(f, inputs);
}

// The unit's settings for these tests: k 3, bandwidth 0.5, no AuxK unless asked.
ArchSettings settings_for(const std::string& a, std::vector<std::pair<std::string, Json>> given = {}) {
  if (a == "topk" || a == "batchtopk") {
    given.push_back({"k", Json(3)});
    bool auxk = false;
    for (const auto& [name, value] : given) auxk |= name == "auxk-coefficient";
    if (!auxk) given.push_back({"auxk-coefficient", Json(0.0)});
  }
  if (a == "jumprelu") given.push_back({"jumprelu-bandwidth", Json(0.5)});
  return unit_settings(a, given);
}
}  // namespace

TEST(ArchReference, GradcheckTopKAndBatchTopK) {
  for (const std::string a : {"topk", "batchtopk"}) {
    SCOPED_TRACE(a);
    const ArchProblem prob = well_conditioned_problem(a, kN, kD, kF, 3, 100, 1e-3);
    EXPECT_LT(check_term(settings_for(a), prob, 0.0, {"W_enc", "b_enc", "W_dec", "b_dec"}, nullptr, nullptr), 1e-7);
  }
}

TEST(ArchReference, GradcheckAuxKWithTheResidualFrozen) {
  // Half the latents dead; the AuxK term alone and the total, e and Z held at the base point.
  std::vector<uint8_t> dead(kF, 0);
  for (int64_t i = 0; i < kF; i += 2) dead[i] = 1;
  for (const std::string a : {"topk", "batchtopk"}) {
    SCOPED_TRACE(a);
    const ArchSettings o = settings_for(a, {{"auxk-coefficient", Json(0.25)}, {"auxk-k", Json(2)}});
    const ArchProblem prob = well_conditioned_problem(a, kN, kD, kF, 3, 200, 1e-3, 0.5, &dead, 2);
    const ReferenceLoss base =
        arch_unit(a).reference_loss(o, ArchVariables::leaves(prob.params, false), prob.x, 0, &dead, nullptr);
    ASSERT_GT(base.aux.data().item(), 0.0);
    ArchFrozen frozen;
    frozen.residual = sub(prob.x, base.x_hat);
    const std::vector<std::string> all = {"W_enc", "b_enc", "W_dec", "b_dec"};
    EXPECT_LT(check_term(o, prob, 0.0, all, &dead, &frozen, &ReferenceLoss::aux), 1e-7);
    EXPECT_LT(check_term(o, prob, 0.0, all, &dead, &frozen), 1e-7);
  }
}

TEST(ArchReference, GradcheckGatedWithTheAuxiliaryDecoderFrozen) {
  const ArchProblem prob = well_conditioned_problem("gated", kN, kD, kF, 0, 300, 1e-3);
  ArchFrozen frozen;
  frozen.W_dec = prob.params.W_dec.clone();
  frozen.b_dec = prob.params.b_dec.clone();
  const std::vector<std::string> all = {"W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec"};
  const ArchSettings o = settings_for("gated");
  EXPECT_LT(check_term(o, prob, 0.3, all, nullptr, &frozen), 1e-7);
  EXPECT_LT(check_term(o, prob, 0.3, all, nullptr, &frozen, &ReferenceLoss::aux), 1e-7);
  EXPECT_LT(check_term(o, prob, 0.3, all, nullptr, &frozen, &ReferenceLoss::sparsity), 1e-7);
}

TEST(ArchReference, GradcheckWithTheInputCentred) {
  // --apply-b-dec-to-input: the encoder sees x - b_dec, so b_dec's gradient has an encoder part. Each
  // problem's encoder biases take the shift back out (b_enc + b_dec W_enc) so that its selections keep
  // their margins; gated's auxiliary decoder is frozen (its b_dec too), the encoder's b_dec is not.
  for (const std::string a : {"standard", "topk", "batchtopk", "jumprelu", "gated"}) {
    SCOPED_TRACE(a);
    ArchProblem prob = well_conditioned_problem(a, kN, kD, kF, a == "topk" || a == "batchtopk" ? 3 : 0, 500, 1e-3);
    ASSERT_GT(max_abs(prob.params.b_dec), 0.01);
    const Tensor shift = matmul(prob.params.b_dec.reshape(Shape{1, kD}), prob.params.W_enc).reshape(Shape{kF});
    arch_unit(a).fold_input_shift(prob.params, mul_scalar(shift, -1.0));
    std::vector<std::string> all = {"W_enc", "W_dec", "b_dec"};
    if (a == "gated") all.insert(all.end(), {"b_gate", "b_mag", "r_mag"});
    else all.push_back("b_enc");
    ArchFrozen frozen;
    if (a == "gated") {
      frozen.W_dec = prob.params.W_dec.clone();
      frozen.b_dec = prob.params.b_dec.clone();
    }
    const double lambda = a == "topk" || a == "batchtopk" ? 0.0 : 0.2;
    // JumpReLU without straight-through to the input: its P gradient (and so b_dec's) is the true one.
    EXPECT_LT(check_term(settings_for(a), prob, lambda, all, nullptr, a == "gated" ? &frozen : nullptr,
                         &ReferenceLoss::total, true),
              1e-7);
  }
}

TEST(ArchReference, GradcheckJumpReluWhereItIsADerivative) {
  // Without straight-through to the input, P's gradient is the true one; the threshold's is not.
  // With the tanh penalty the estimators also feed P, so only the decoder's gradient is a derivative.
  const ArchProblem prob = well_conditioned_problem("jumprelu", kN, kD, kF, 0, 400, 1e-3, 0.5);
  EXPECT_LT(check_term(settings_for("jumprelu"), prob, 0.2, {"W_enc", "b_enc", "W_dec", "b_dec"}, nullptr, nullptr),
            1e-7);
  const ArchSettings tanh =
      settings_for("jumprelu", {{"jumprelu-penalty", Json("tanh")}, {"jumprelu-pre-act", Json(0.05)}});
  EXPECT_LT(check_term(tanh, prob, 0.3, {"W_dec", "b_dec"}, nullptr, nullptr), 1e-7);
}

TEST(ArchReference, StraightThroughGradientsElementByElement) {
  // loss = sum_{t,i} w_ti f_ti (and sum w_ti H_ti) with random w; the formulas of
  // docs/architectures.md §2.3 written out with loops.
  const double eps = 0.5;
  const ArchProblem prob = well_conditioned_problem("jumprelu", kN, kD, kF, 0, 500, 1e-3, eps);
  const Tensor P = add(matmul(prob.x, prob.params.W_enc), prob.params.b_enc);
  Rng rng(7);
  const Tensor w = uniform_tensor(P.shape(), -1.0, 1.0, rng, DType::F64);
  const std::vector<double> p = P.to_vector(), wv = w.to_vector(), t = prob.params.own_tensor("log_threshold").to_vector();
  int64_t in_window = 0;
  for (bool ste_to_input : {false, true})
    for (bool step : {false, true}) {
      SCOPED_TRACE(std::string(step ? "step" : "jumprelu") + (ste_to_input ? " ste_to_input" : ""));
      Variable pre(P.clone(), true), log_threshold(prob.params.own_tensor("log_threshold").clone(), true);
      const Variable out = step ? step_ste(pre, log_threshold, eps, ste_to_input)
                                : jumprelu_ste(pre, log_threshold, eps, ste_to_input);
      ag::sum(out * Variable(w)).backward();
      const std::vector<double> gp = pre.grad().to_vector(), gt = log_threshold.grad().to_vector();
      for (int64_t i = 0; i < kF; ++i) {
        const double theta = std::exp(t[i]);
        double want_t = 0;
        for (int64_t r = 0; r < kN; ++r) {
          const double d = p[r * kF + i] - theta;
          const bool H = d > 0, K = std::abs(d / eps) < 0.5;
          in_window += K;
          const double g = wv[r * kF + i];
          // JumpReLU: dP = H g [+ theta/eps K g]; dtheta = -theta/eps K g.
          // Step: dP = [1/eps K g]; dtheta = -1/eps K g.
          const double ste = (step ? 1.0 : theta) / eps * (K ? g : 0.0);
          const double want_p = (step ? 0.0 : (H ? g : 0.0)) + (ste_to_input ? ste : 0.0);
          EXPECT_NEAR(gp[r * kF + i], want_p, 1e-12) << r << "," << i;
          want_t -= ste;
        }
        EXPECT_NEAR(gt[i], theta * want_t, 1e-12) << i;  // the log parameter: theta dL/dtheta
      }
    }
  EXPECT_GT(in_window, 10);  // the windows are not empty: the checks above test something
}

TEST(ArchReference, SelectionsBreakTiesByIndex) {
  // Rows with repeated values: the k largest, ties to the lower index (row-major for the flat one).
  const std::vector<double> v = {1, 3, 3, 2, 3, -1, /**/ 0, 0, 5, 5, 1, 5};
  const std::vector<uint8_t> rows = top_k_per_row(v, 2, 6, 3);
  EXPECT_EQ(rows, (std::vector<uint8_t>{0, 1, 1, 0, 1, 0, /**/ 0, 0, 1, 1, 0, 1}));
  const std::vector<uint8_t> allowed = {1, 0, 1, 1, 0, 1};
  // Row 0 among {0, 2, 3, 5}: 3 at 2, then 2 at 3; row 1: the three 5s (2, 3, 5), the lower two.
  EXPECT_EQ(top_k_per_row(v, 2, 6, 2, &allowed), (std::vector<uint8_t>{0, 0, 1, 1, 0, 0, /**/ 0, 0, 1, 1, 0, 0}));
  // Flat: the three 5s (8, 9, 11), then the 3s at 1 and 2 (not the one at 4).
  EXPECT_EQ(top_k_flat(v, 5), (std::vector<uint8_t>{0, 1, 1, 0, 0, 0, /**/ 0, 0, 1, 1, 0, 1}));
}

TEST(ArchReference, TopKInferenceBreaksTiesAsTheStep) {
  // sae_encode of a TopK SAE selects as training does: per row the k largest P, ties to the lower
  // index, those <= 0 dropped. Here W_enc is the identity and b_enc 0.5, so P = x + 0.5.
  for (const DType dtype : {DType::F32, DType::F64}) {
    SCOPED_TRACE(dtype_name(dtype));
    const int64_t n = 3, features = 6;
    const std::vector<double> x = {1, 3, 3, 2, 3, -1, /**/ 0, 0, 5, 5, 1, 5, /**/ -1, -2, -0.5, -3, -1, -4};
    std::vector<double> eye(features * features, 0.0), bias(features, 0.5);
    for (int64_t i = 0; i < features; ++i) eye[i * features + i] = 1;
    SaeParams p = SaeParams::from_tensors(Tensor::from_vector(eye, Shape{features, features}, dtype),
                                          Tensor::from_vector(bias, Shape{features}, dtype),
                                          Tensor::from_vector(eye, Shape{features, features}, dtype),
                                          Tensor::zeros(Shape{features}, dtype));
    p.kind = "topk";
    p.settings["k"] = 3;
    const std::vector<double> f = sae_encode(p, Tensor::from_vector(x, Shape{n, features}, dtype)).to_vector();
    // Row 0: the 3s at 1, 2, 4 (not the 2 at 3); row 1: the three 5s; row 2: the three largest
    // P are 0, -0.5 and 0 (x -0.5, -1, -1): none above 0.
    const std::vector<double> want = {0, 3.5, 3.5, 0, 3.5, 0, /**/ 0, 0, 5.5, 5.5, 0, 5.5, /**/ 0, 0, 0, 0, 0, 0};
    EXPECT_EQ(f, want);
  }
}

TEST(ArchReference, InferenceRules) {
  // sae_encode against the rules of docs/architectures.md §3, element by element.
  for (const std::string a : {"standard", "topk", "batchtopk", "jumprelu", "gated"}) {
    SCOPED_TRACE(a);
    Rng rng(11);
    ArchProblem prob = sae::testing::draw_arch_problem(a, kN, kD, kF, 4, rng);
    if (a == "batchtopk") prob.params.settings["threshold"] = 0.4;
    const std::vector<double> f = sae_encode(prob.params, prob.x).to_vector();
    const SaeParams& p = prob.params;
    const std::vector<double> Q = matmul(prob.x, p.W_enc).to_vector();
    std::vector<double> want(kN * kF, 0.0);
    for (int64_t t = 0; t < kN; ++t) {
      std::vector<std::pair<double, int64_t>> row;
      for (int64_t i = 0; i < kF; ++i) {
        const double q = Q[t * kF + i];
        if (a == "gated") {
          const double gate = q + p.own_tensor("b_gate").to_vector()[i];
          const double mag = q * std::exp(p.own_tensor("r_mag").to_vector()[i]) + p.own_tensor("b_mag").to_vector()[i];
          want[t * kF + i] = gate > 0 ? std::max(mag, 0.0) : 0.0;
          continue;
        }
        const double P = q + p.b_enc.to_vector()[i];
        if (a == "standard") want[t * kF + i] = std::max(P, 0.0);
        if (a == "batchtopk") want[t * kF + i] = P > 0.4 ? P : 0.0;
        if (a == "jumprelu") want[t * kF + i] = P > std::exp(p.own_tensor("log_threshold").to_vector()[i]) ? P : 0.0;
        row.push_back({-P, i});
      }
      if (a == "topk") {
        std::sort(row.begin(), row.end());
        for (int64_t j = 0; j < 4; ++j) want[t * kF + row[j].second] = std::max(-row[j].first, 0.0);
      }
    }
    expect_close_to_scale(Tensor::from_vector(f, Shape{kN, kF}, DType::F64),
                          Tensor::from_vector(want, Shape{kN, kF}, DType::F64), 1e-14, "f");
    const Tensor x_hat = sae_decode(p, Tensor::from_vector(f, Shape{kN, kF}, DType::F64));
    expect_close_to_scale(x_hat, add(matmul(Tensor::from_vector(f, Shape{kN, kF}, DType::F64), p.W_dec), p.b_dec),
                          1e-14, "x_hat");
  }
}

TEST(ArchReference, GeometricMedianMatchesTheFixture) {
  const auto& fx = arch_fixture();
  const Tensor points = fx.tensor("geomed.points", DType::F64);
  const int64_t n = points.size(0), d = points.size(1);
  const std::vector<double> values = points.to_vector();
  const GeometricMedian three = geometric_median(values, n, d, 3);
  expect_close_to_scale(Tensor::from_vector(three.point, Shape{d}, DType::F64), fx.tensor("geomed.iter3", DType::F64),
                        1e-13, "after 3 iterations");
  // Run to convergence, where the stopping rule (the objective no longer changes in float64) meets
  // PyTorch's summation order: an iteration more or less, the same point to 1e-7.
  const GeometricMedian full = geometric_median(values, n, d);
  expect_close_to_scale(Tensor::from_vector(full.point, Shape{d}, DType::F64), fx.tensor("geomed.median", DType::F64),
                        1e-7, "converged");
  EXPECT_LE(std::abs(full.iterations - fx.integer("geomed.n_iter")), 2);
  // The outliers pull the mean away; the median stays with the bulk (the points are N(1, I)).
  const std::vector<double> mean = fx.values("geomed.mean");
  double mean_off = 0, median_off = 0;
  for (int64_t j = 0; j < d; ++j) {
    mean_off += (mean[j] - 1) * (mean[j] - 1);
    median_off += (full.point[j] - 1) * (full.point[j] - 1);
  }
  EXPECT_LT(median_off, mean_off);
  EXPECT_THROW(geometric_median({}, 0, d), DataError);
}

TEST(ArchReference, Initialisations) {
  // Tied: unit rows, W_enc = W_dec^T, zero biases; each architecture's own tensors; the standard
  // init unchanged; b_dec at the geometric median of the sample.
  Rng rng_a(5), rng_b(5);
  const SaeParams s = arch_unit("standard").initial_params(unit_settings("standard"), 4, 6, rng_a, {});
  const SaeParams s_ref = SaeParams::standard_init(4, 6, rng_b);
  const auto got = s.present();
  const auto want = s_ref.present();
  ASSERT_EQ(got.size(), 4u);
  for (size_t i = 0; i < got.size(); ++i) sae::testing::expect_bitwise_equal(*got[i].second, *want[i].second, got[i].first);
  const std::vector<double> sample = {0, 0, 0, 1, /**/ 1, 1, 1, 1, /**/ 1, 1, 1, 1, /**/ 9, 9, 9, 9, /**/ 1, 1, 1, 2};
  for (const std::string a : {"topk", "jumprelu", "gated"}) {
    SCOPED_TRACE(a);
    std::vector<std::pair<std::string, Json>> given = {{"init-tied", Json("on")},
                                                       {"unit-norm-decoder", Json("on")},
                                                       {"init-b-dec", Json("geometric_median")}};
    if (a == "topk") given.push_back({"k", Json(2)});
    if (a == "jumprelu") given.push_back({"jumprelu-init-threshold", Json(0.05)});
    Rng rng(9);
    const SaeParams p = arch_unit(a).initial_params(unit_settings(a, given), 4, 6, rng, sample);
    EXPECT_EQ(p.kind, a);
    for (double n : norm2(p.W_dec, 1).to_vector()) EXPECT_NEAR(n, 1.0, 1e-6);
    sae::testing::expect_bitwise_equal(p.W_enc, transpose(p.W_dec), "W_enc = W_dec^T");
    const GeometricMedian m = geometric_median(sample, 5, 4);
    expect_close_to_scale(p.b_dec.to(DType::F64), Tensor::from_vector(m.point, Shape{4}, DType::F64), 1e-7, "b_dec");
    EXPECT_LT(std::abs(m.point[0] - 1.0), 0.2);  // the outlier row (9, 9, 9, 9) does not pull it
    if (a == "gated") {
      EXPECT_FALSE(p.b_enc.defined());
      EXPECT_EQ(max_abs(p.own_tensor("b_gate")) + max_abs(p.own_tensor("b_mag")) + max_abs(p.own_tensor("r_mag")), 0.0);
    } else {
      EXPECT_EQ(max_abs(p.b_enc), 0.0);
    }
    if (a == "jumprelu") {
      for (double t : p.own_tensor("log_threshold").to_vector()) EXPECT_NEAR(std::exp(t), 0.05, 1e-8);
    }
    if (a == "topk") {
      EXPECT_EQ(p.settings.at("k").as_int(), 2);
    }
  }
  Rng rng(1);
  EXPECT_THROW(arch_unit("standard").initial_params(unit_settings("standard", {{"init-b-dec", Json("geometric_median")}}),
                                                     4, 6, rng, {}),
               DataError);
}
