// Transcoders (with and without a skip path) and crosscoders through the architecture units, against
// the PyTorch float64 fixture tests/ref/arch/dictionary_reference.safetensors
// (scripts/gen_dictionary_fixtures.py): each unit's reference and the fused step (SaeStep, float64 and
// float32) on the loss terms, latents, reconstruction and every gradient (W_skip's included), and a
// float64 gradcheck of the references.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "sae/arch/registry.h"
#include "sae/arch/sae_step.h"
#include "tensor/ops.h"
#include "tests/util/compare.h"
#include "tests/util/fixture.h"
#include "tests/util/gradcheck.h"
#include "tests/util/standard_sae.h"

using namespace sae;
using sae::testing::expect_close_to_scale;
using sae::testing::unit_settings;

namespace {

const test::Fixture& fx() {
  static const test::Fixture fixture(std::string(SAE_SOURCE_DIR) + "/tests/ref/arch/dictionary_reference.safetensors");
  return fixture;
}

struct Case {
  std::string name, unit;
  int64_t sources = 1;
};

const std::vector<Case>& cases() {
  static const std::vector<Case> all = {
      {"transcoder_standard", "standard"},   {"transcoder_standard_skip", "standard"}, {"transcoder_topk", "topk"},
      {"transcoder_topk_skip", "topk"},      {"transcoder_batchtopk", "batchtopk"},   {"transcoder_jumprelu", "jumprelu"},
      {"transcoder_jumprelu_skip", "jumprelu"}, {"crosscoder_standard", "standard", 3}, {"crosscoder_topk", "topk", 3},
  };
  return all;
}

ArchSettings settings_of(const Case& c) {
  std::vector<std::pair<std::string, Json>> given;
  if (c.unit == "standard") given.push_back({"sparse", Json("off")});
  if (c.unit == "topk" || c.unit == "batchtopk") {
    given.push_back({"k", Json(fx().integer("cfg.k"))});
    given.push_back({"auxk-coefficient", Json(0.0)});
  }
  if (c.unit == "jumprelu") given.push_back({"jumprelu-bandwidth", Json(fx().scalar("cfg.bandwidth"))});
  if (c.unit != "standard") given.push_back({"unit-norm-decoder", Json("off")});
  return unit_settings(c.unit, given);
}

SaeParams params_of(const Case& c, DType dtype) {
  SaeParams p;
  p.kind = c.unit;
  p.sources = c.sources;
  p.transcoder = c.sources == 1;
  auto read = [&](const char* name) { return fx().tensor(c.name + ".param." + name, dtype); };
  p.W_enc = read("W_enc");
  p.b_enc = read("b_enc");
  p.W_dec = read("W_dec");
  p.b_dec = read("b_dec");
  if (fx().has(c.name + ".param.W_skip")) p.W_skip = read("W_skip");
  if (c.unit == "jumprelu") p.own.push_back({"log_threshold", read("log_threshold")});
  if (c.unit == "topk" || c.unit == "batchtopk") p.settings["k"] = fx().integer("cfg.k");
  if (c.unit == "batchtopk") p.settings["threshold"] = 0.0;
  return p;
}

Tensor tensor_of(const Case& c, const std::string& what, DType dtype) { return fx().tensor(c.name + "." + what, dtype); }

void expect_scalar(double got, double want, double rel, const std::string& what) {
  EXPECT_LE(std::abs(got - want), rel * std::max(std::abs(want), 1e-3)) << what << ": got " << got << ", want " << want;
}

}  // namespace

TEST(Dictionaries, ReferencesMatchTheFixture) {
  const double lambda = fx().scalar("cfg.lambda");
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const SaeParams p = params_of(c, DType::F64);
    const ArchVariables v = ArchVariables::leaves(p);
    ReferenceLoss loss = arch_unit(c.unit).reference_loss(settings_of(c), v, tensor_of(c, "x", DType::F64),
                                                          tensor_of(c, "y", DType::F64), lambda, nullptr, nullptr);
    loss.total.backward();
    expect_scalar(loss.rec.data().item(), fx().scalar(c.name + ".loss.rec"), 1e-12, "rec");
    expect_scalar(loss.total.data().item(), fx().scalar(c.name + ".loss.total"), 1e-12, "total");
    expect_close_to_scale(loss.f, tensor_of(c, "out.f", DType::F64), 1e-12, "f");
    expect_close_to_scale(loss.x_hat, tensor_of(c, "out.y_hat", DType::F64), 1e-12, "y_hat");
    const SaeParams g = v.grads(p);
    for (const auto& [name, t] : g.present())
      expect_close_to_scale(*t, tensor_of(c, "grad." + name, DType::F64), 1e-11, "grad " + name);
  }
}

TEST(Dictionaries, FusedStepsMatchTheFixture) {
  const double lambda = fx().scalar("cfg.lambda");
  for (DType dtype : {DType::F64, DType::F32}) {
    const double rel = dtype == DType::F64 ? 1e-10 : 2e-5;
    for (const Case& c : cases()) {
      SCOPED_TRACE(c.name + " " + dtype_name(dtype));
      const SaeParams p = params_of(c, dtype);
      const Tensor x = tensor_of(c, "x", dtype), y = tensor_of(c, "y", dtype);
      SaeStep step(arch_unit(c.unit), settings_of(c), StepShape{x.size(0), x.size(1), y.size(1), p.d_sae()}, dtype,
                   Device::CPU);
      SaeParams g = SaeParams::zeros_like(p);
      for (const auto& [name, t] : g.present()) fill_(*t, NAN);  // every gradient must be written
      const StepSums s = step.forward_backward(p, x, y, lambda, g);
      expect_scalar(s.rec, fx().scalar(c.name + ".loss.rec"), rel, "rec");
      expect_scalar(s.loss, fx().scalar(c.name + ".loss.total"), rel, "total");
      expect_close_to_scale(step.features().to(DType::F64), tensor_of(c, "out.f", DType::F64), rel, "f");
      expect_close_to_scale(step.reconstruction().to(DType::F64), tensor_of(c, "out.y_hat", DType::F64), rel,
                            "y_hat (with the skip path)");
      for (const auto& [name, t] : g.present())
        expect_close_to_scale(t->to(DType::F64), tensor_of(c, "grad." + name, DType::F64), rel, "grad " + name);
    }
  }
}

TEST(Dictionaries, OneAdamStepMovesW_skipLikeTheOthers) {
  // train_step's Adam covers the skip path: after one step from zero moments, every parameter
  // (W_skip included) moved by lr in the direction of minus its gradient's sign (Adam's first step).
  const Case c = cases()[1];  // transcoder_standard_skip
  SaeParams p = params_of(c, DType::F64);
  const SaeParams before = p.clone();
  SaeAdamState adam = SaeAdamState::zeros_like(p);
  const Tensor x = tensor_of(c, "x", DType::F64), y = tensor_of(c, "y", DType::F64);
  SaeStep step(arch_unit(c.unit), settings_of(c), StepShape{x.size(0), x.size(1), y.size(1), p.d_sae()}, DType::F64,
               Device::CPU);
  step.train_step(p, adam, x, y, fx().scalar("cfg.lambda"), 1e-3);
  const std::vector<double> grad = tensor_of(c, "grad.W_skip", DType::F64).to_vector();
  const std::vector<double> moved = sub(p.W_skip, before.W_skip).to_vector();
  for (size_t i = 0; i < grad.size(); ++i) {
    if (std::abs(grad[i]) > 1e-6) {
      EXPECT_NEAR(moved[i], grad[i] > 0 ? -1e-3 : 1e-3, 1e-6) << i;
    }
  }
}

TEST(Dictionaries, GradcheckOfTheReferences) {
  // The true derivatives (no selection near its boundary: the fixture's draws keep them 1e-3 away).
  const double lambda = fx().scalar("cfg.lambda");
  for (const Case& c : cases()) {
    if (c.unit == "jumprelu") continue;  // its threshold's gradient is a straight-through one
    SCOPED_TRACE(c.name);
    const SaeParams p = params_of(c, DType::F64);
    const Tensor x = tensor_of(c, "x", DType::F64), y = tensor_of(c, "y", DType::F64);
    const ArchSettings s = settings_of(c);
    std::vector<Tensor> inputs = {p.W_enc, p.b_enc, p.W_dec, p.b_dec};
    if (p.W_skip.defined()) inputs.push_back(p.W_skip);
    auto f = [&](const std::vector<Variable>& v) {
      ArchVariables vars = ArchVariables::leaves(p, false);
      vars.W_enc = v[0];
      vars.b_enc = v[1];
      vars.W_dec = v[2];
      vars.b_dec = v[3];
      if (v.size() > 4) vars.W_skip = v[4];
      return arch_unit(c.unit).reference_loss(s, vars, x, y, lambda, nullptr, nullptr).total;
    };
    EXPECT_LT(sae::testing::gradcheck(f, inputs), 1e-7);
  }
}
