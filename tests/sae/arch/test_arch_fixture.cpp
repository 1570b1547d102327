// Every architecture against the PyTorch float64 fixture (scripts/gen_arch_fixtures.py): the autograd
// reference (each unit's reference_loss) and the fused step (SaeStep) in float64 and float32, on
// the loss terms, latents, AuxK's dead mask and activations, every raw and projected gradient, and
// the 5-step Adam trajectories (losses, final parameters, BatchTopK's threshold, the dead clock).
#include <gtest/gtest.h>

#include <cmath>

#include "sae/arch/sae_step.h"
#include "sae/arch/topk_family.h"
#include "sae/step/sae_ops.h"
#include "tensor/ops.h"
#include "tests/sae/arch/arch_fixture.h"
#include "tests/util/compare.h"

using namespace sae;
using sae::testing::arch_case;
using sae::testing::arch_case_params;
using sae::testing::arch_case_tensor;
using sae::testing::arch_cases;
using sae::testing::arch_fixture;
using sae::testing::ArchCase;
using sae::testing::expect_close_to_scale;
using sae::TopKFamilyStep;

namespace {

// |got - want| <= rel * max(|want|, 1e-3 floor).
void expect_scalar(double got, double want, double rel, const std::string& what) {
  EXPECT_LE(std::abs(got - want), rel * std::max(std::abs(want), 1e-3)) << what << ": got " << got << ", want " << want;
}

std::vector<int64_t> ints_of(const std::string& name) { return arch_fixture().ints(name); }

std::vector<uint8_t> fixture_dead_mask(const ArchCase& c) {
  const std::vector<int64_t> m = ints_of(c.name + ".dead_mask");
  return std::vector<uint8_t>(m.begin(), m.end());
}

double lr() { return arch_fixture().scalar("cfg.lr"); }

SaeAdamState fixture_adam(const SaeParams& p) {
  const auto& fx = arch_fixture();
  return SaeAdamState::zeros_like(p, fx.scalar("cfg.beta1"), fx.scalar("cfg.beta2"), fx.scalar("cfg.adam_eps"));
}

// The fused step of the case.
SaeStep make_step(const ArchCase& c, DType dtype, bool unit_norm) {
  const int64_t n = arch_fixture().integer("cfg.N"), d = arch_fixture().integer("cfg.D"),
                f = arch_fixture().integer("cfg.F");
  return SaeStep(c.arch(), c.settings(unit_norm), n, d, f, dtype, Device::CPU);
}

void set_clock(SaeStep& step, const ArchCase& c) {
  if (c.auxk) step.set_dead_clock(ints_of(c.name + ".state.tokens_since_fired"));
}

TopKFamilyStep& topk_step(SaeStep& step) { return dynamic_cast<TopKFamilyStep&>(step.unit_step()); }

}  // namespace

TEST(ArchFixture, ReferenceMatchesTheFixtureInFloat64) {
  for (const std::string& name : arch_cases()) {
    SCOPED_TRACE(name);
    const ArchCase c = arch_case(name);
    const SaeParams p = arch_case_params(c, DType::F64);
    const Tensor x = arch_case_tensor(c, "x", DType::F64);
    // The dead mask the reference uses is the one the clock gives after this batch's firings.
    std::vector<uint8_t> dead;
    const bool auxk = c.auxk;
    if (auxk) dead = fixture_dead_mask(c);
    const ArchVariables v = ArchVariables::leaves(p);
    ReferenceLoss loss = c.arch().reference_loss(c.settings(), v, x, c.lambda, auxk ? &dead : nullptr, nullptr);
    loss.total.backward();
    if (auxk) {
      std::vector<int64_t> clock = ints_of(name + ".state.tokens_since_fired");
      EXPECT_EQ(dead_after_batch(clock, loss.fired, x.size(0), c.dead_tokens), dead);
      expect_close_to_scale(loss.aux_acts, arch_case_tensor(c, "out.aux_acts", DType::F64), 1e-12, "aux_acts");
      expect_scalar(loss.aux.data().item(), arch_fixture().scalar(name + ".loss.aux"), 1e-12, "aux");
    }
    expect_scalar(loss.rec.data().item(), arch_fixture().scalar(name + ".loss.rec"), 1e-12, "rec");
    expect_scalar(loss.total.data().item(), arch_fixture().scalar(name + ".loss.total"), 1e-12, "total");
    expect_close_to_scale(loss.f, arch_case_tensor(c, "out.f", DType::F64), 1e-12, "f");
    expect_close_to_scale(loss.x_hat, arch_case_tensor(c, "out.x_hat", DType::F64), 1e-12, "x_hat");
    const SaeParams g = v.grads(p);
    for (const auto& [slot, tensor] : g.present())
      expect_close_to_scale(*tensor, arch_case_tensor(c, std::string("grad.") + slot, DType::F64), 1e-11,
                            std::string("grad ") + slot);
  }
}

TEST(ArchFixture, FusedStepGradientsMatchTheFixture) {
  for (DType dtype : {DType::F64, DType::F32}) {
    const double rel = dtype == DType::F64 ? 1e-10 : 2e-5;
    for (const std::string& name : arch_cases()) {
      SCOPED_TRACE(name + (dtype == DType::F64 ? " f64" : " f32"));
      const ArchCase c = arch_case(name);
      const Tensor x = arch_case_tensor(c, "x", dtype);
      // Raw gradients (the projection off), then the projected decoder gradient of unit-norm cases.
      for (bool unit_norm : {false, true}) {
        if (unit_norm && !c.unit_norm) continue;
        const SaeParams p = arch_case_params(c, dtype);
        SaeStep step = make_step(c, dtype, unit_norm);
        set_clock(step, c);
        SaeParams g = SaeParams::zeros_like(p);
        const StepSums s = step.forward_backward(p, x, c.lambda, g);
        expect_scalar(s.loss, arch_fixture().scalar(name + ".loss.total"), rel, "total");
        expect_scalar(s.rec, arch_fixture().scalar(name + ".loss.rec"), rel, "rec");
        expect_close_to_scale(step.features().to(DType::F64), arch_case_tensor(c, "out.f", DType::F64), rel, "f");
        expect_close_to_scale(step.reconstruction().to(DType::F64), arch_case_tensor(c, "out.x_hat", DType::F64), rel,
                              "x_hat");
        if (c.auxk) {
          EXPECT_EQ(topk_step(step).dead_mask(), fixture_dead_mask(c));
          expect_close_to_scale(topk_step(step).aux_activations().to(DType::F64),
                                arch_case_tensor(c, "out.aux_acts", DType::F64), rel, "aux_acts");
          expect_scalar(s.aux, arch_fixture().scalar(name + ".loss.aux"), rel, "aux");
        }
        for (const auto& [slot, tensor] : g.present()) {
          const std::string which = unit_norm && slot == "W_dec" ? "grad_proj." : "grad.";
          expect_close_to_scale(tensor->to(DType::F64), arch_case_tensor(c, which + slot, DType::F64), rel,
                                which + slot);
        }
      }
    }
  }
}

TEST(ArchFixture, FiveAdamStepsFollowTheFixtureTrajectory) {
  const auto& fx = arch_fixture();
  const int64_t steps = fx.integer("cfg.steps");
  for (DType dtype : {DType::F64, DType::F32}) {
    // float32: the fixture's draws keep every decision 1e-3 from its boundary, and a float32 torch
    // run of the same trajectories stays within 2e-7 of float64 (docs/architectures.md §4).
    const double rel = dtype == DType::F64 ? 1e-9 : 1e-4;
    for (const std::string& name : arch_cases()) {
      SCOPED_TRACE(name + (dtype == DType::F64 ? " f64" : " f32"));
      const ArchCase c = arch_case(name);
      SaeParams p = arch_case_params(c, dtype);
      SaeAdamState adam = fixture_adam(p);
      const Tensor x = arch_case_tensor(c, "x", dtype);
      SaeStep step = make_step(c, dtype, c.unit_norm);
      set_clock(step, c);
      const std::vector<double> losses = fx.values(name + ".traj.loss"), recs = fx.values(name + ".traj.rec");
      for (int64_t t = 0; t < steps; ++t) {
        const StepSums s = step.train_step(p, adam, x, c.lambda, lr());
        expect_scalar(s.loss, losses[t], rel, "loss at step " + std::to_string(t + 1));
        expect_scalar(s.rec, recs[t], rel, "rec at step " + std::to_string(t + 1));
        if (c.auxk) {
          int64_t dead = 0;
          for (uint8_t m : topk_step(step).dead_mask()) dead += m;
          EXPECT_EQ(dead, ints_of(name + ".traj.n_dead")[t]) << "step " << t + 1;
        }
        if (name == "batchtopk")
          expect_scalar(p.settings.at("threshold").as_number(), fx.values("batchtopk.traj.threshold")[t], rel,
                        "threshold");
      }
      const SaeParams want = arch_case_params(c, DType::F64, "final");
      const auto got = p.present();
      const auto wanted = want.present();
      ASSERT_EQ(got.size(), wanted.size());
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(got[i].first, wanted[i].first);
        expect_close_to_scale(got[i].second->to(DType::F64), *wanted[i].second, rel, "final " + got[i].first);
      }
      if (c.auxk) {
        EXPECT_EQ(*step.dead_clock(), ints_of(name + ".final.tokens_since_fired"));
      }
    }
  }
}

TEST(ArchFixture, DecoderProjectionAndNormalisation) {
  // The dense path's kernels on the fixture's unit-norm cases: projection of the raw gradient, and
  // rows renormalised to 1.
  for (const std::string name : {"topk", "topk_auxk", "batchtopk", "jumprelu_step"}) {
    SCOPED_TRACE(name);
    const ArchCase c = arch_case(name);
    for (DType dtype : {DType::F64, DType::F32}) {
      const SaeParams p = arch_case_params(c, dtype);
      Tensor grad = arch_case_tensor(c, "grad.W_dec", dtype);
      Tensor norms = norm2(p.W_dec, 1);
      decoder_project_(grad, p.W_dec, norms);
      expect_close_to_scale(grad.to(DType::F64), arch_case_tensor(c, "grad_proj.W_dec", DType::F64),
                            dtype == DType::F64 ? 1e-14 : 1e-6, "projected");
      Tensor W = mul_scalar(p.W_dec, 3.0);
      decoder_normalize_(W);
      const std::vector<double> n = norm2(W.to(DType::F64), 1).to_vector();
      for (double v : n) EXPECT_NEAR(v, 1.0, dtype == DType::F64 ? 1e-15 : 1e-6);
    }
  }
}
