// The L0 set-point controller (--target-l0, docs/architectures.md §2.9): its update against the
// formulas worked by hand, its clamps and band, exact state round trip; training reaching the target
// within 5% on fresh planted data (several dictionaries, widths, targets; from the data's scale and
// 100x below and above it) and for JumpReLU with the tanh penalty, bit-exact resume, bad options.
#include <gtest/gtest.h>

#include <cmath>

#include "sae/train/options.h"
#include "sae/study/study.h"
#include "sae/train/l0_controller.h"
#include "sae/train/trainer.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::read_file;
using sae::testing::planted_dictionary_config;
using sae::testing::small_synthetic_config;
using sae::testing::TempDir;

TEST(L0Controller, FollowsTheFormulasStepByStep) {
  L0ControllerSettings s;
  s.target = 4;
  s.ki = 0.1;
  s.kp = 0.5;
  s.ema = 0.5;
  s.max_change = 0.2;
  L0Controller c(s, 2.0);
  EXPECT_DOUBLE_EQ(c.lambda(), 2.0);
  // Step 1: Lbar = 8, e = log 2 = 0.693..., clamped to 0.5 in the integral term: du = 0.1 * 0.5 = 0.05
  // (no K_p term on the first step).
  c.update(8);
  EXPECT_DOUBLE_EQ(c.smoothed_l0(), 8);
  EXPECT_NEAR(c.lambda(), 2.0 * std::exp(0.05), 1e-12);
  // Step 2: Lbar = 0.5*8 + 0.5*2 = 5, e = log 1.25; du = 0.1 e + 0.5 (e - log 2) = -0.2127... -> clamped to -0.2.
  c.update(2);
  EXPECT_DOUBLE_EQ(c.smoothed_l0(), 5);
  EXPECT_NEAR(c.lambda(), 2.0 * std::exp(0.05 - 0.2), 1e-12);
  // Step 3: Lbar = 0.5*5 + 0.5*3 = 4 = L*: e = 0; du = 0.5 (0 - log 1.25) = -0.1116.
  c.update(3);
  EXPECT_NEAR(c.lambda(), 2.0 * std::exp(0.05 - 0.2 - 0.5 * std::log(1.25)), 1e-12);
}

TEST(L0Controller, WithTheDataScaleLambdaApproachesFromBelowWithinItsBand) {
  L0ControllerSettings s;
  s.target = 8;
  s.max_change = 0.01;
  s.scale = lambda_scale(false, 256.0, 8.0);  // sqrt(256 / 8)
  EXPECT_DOUBLE_EQ(s.scale, std::sqrt(32.0));
  EXPECT_DOUBLE_EQ(lambda_scale(true, 256.0, 8.0), 32.0);  // an L0-like penalty: E / L*
  EXPECT_THROW(lambda_scale(false, 0.0, 8.0), DataError);
  // Any start above lambda_s / 3 starts there; L0 far above the target then raises lambda by at most
  // delta a step (the ceiling rises as fast), up to 10 lambda_s.
  for (double lambda0 : {s.scale, 100 * s.scale, 1e9}) {
    L0Controller c(s, lambda0);
    EXPECT_NEAR(c.lambda(), s.scale / 3, 1e-9);
    c.update(1000);
    EXPECT_NEAR(c.lambda(), s.scale / 3 * std::exp(0.01), 1e-9);
    for (int i = 0; i < 2000; ++i) c.update(1000);
    EXPECT_NEAR(c.lambda(), 10 * s.scale, 1e-9);
  }
  // Below: it starts where asked, down to lambda_s / 1000.
  EXPECT_NEAR(L0Controller(s, s.scale / 100).lambda(), s.scale / 100, 1e-12);
  EXPECT_NEAR(L0Controller(s, 1e-9).lambda(), s.scale / 1000, 1e-12);
}

TEST(L0Controller, StaysWithinItsBoundsAndSurvivesAnEmptyBatch) {
  L0ControllerSettings s;
  s.target = 10;
  s.ki = 1;
  s.kp = 0;
  s.ema = 1;
  s.max_change = 5;
  L0Controller c(s, 1.0);
  for (int i = 0; i < 100; ++i) c.update(0);  // nothing fires: lambda falls, but only to e^-10
  EXPECT_TRUE(std::isfinite(c.lambda()));
  EXPECT_NEAR(c.lambda(), std::exp(-10.0), 1e-15);
  for (int i = 0; i < 100; ++i) c.update(1e6);
  EXPECT_NEAR(c.lambda(), std::exp(10.0), 1e-6);
}

TEST(L0Controller, StateRoundTripsExactly) {
  L0ControllerSettings s;
  s.target = 3;
  L0Controller a(s, 0.7), b(s, 0.7);
  for (double l0 : {5.0, 4.1, 3.3, 2.9}) a.update(l0);
  b.restore(Json::parse(a.state().dump()));
  for (double l0 : {3.5, 2.0, 7.0}) {
    a.update(l0);
    b.update(l0);
    EXPECT_EQ(a.lambda(), b.lambda());
  }
  Json broken = a.state();
  broken["log_lambda"] = 1e9;
  EXPECT_THROW(b.restore(broken), DataError);
  EXPECT_THROW(b.restore(Json::parse("{}")), DataError);
}

namespace {
TrainConfig controlled_run(const std::string& out, double target, double l1) {
  TrainConfig c = small_synthetic_config(out);
  c.features = 64;
  c.lr = 3e-3;
  c.l1 = l1;
  c.steps = 3000;
  c.log_every = 1;
  c.checkpoint_every = 1000;
  c.target_l0 = target;
  return c;
}

// Mean L0 over the last tenth of the logged steps.
double last_tenth_l0(const std::string& out) {
  const Metrics m = read_metrics(out + "/metrics.csv");
  return m.tail_mean("l0", m.rows.size() - 1, 0.1);
}

// A planted dictionary the controller was not tuned on: `concepts` unit directions in width d,
// `active` per token, token batches of 256, dataset normalisation, lr 1e-3, 4000 steps (the setting
// where the former gains missed by 12%, scaled down so the test is quick).
TrainConfig fresh_planted(const std::string& out, int64_t d, int64_t concepts, double active, double zipf,
                          uint64_t seed, int64_t features, double target) {
  TrainConfig c = planted_dictionary_config(out);
  c.synthetic.d = d;
  c.synthetic.concepts = concepts;
  c.synthetic.active = active;
  c.synthetic.zipf = zipf;
  c.synthetic.seed = seed;
  c.features = features;
  c.lr = 1e-3;
  c.steps = 4000;
  c.log_every = 10;
  c.feature_stats_steps = 0;
  c.target_l0 = target;
  return c;
}
}  // namespace

// With the former gains the set point missed by 12% on planted data it was not tuned on, and the
// controller could not start without --l1. Several dictionaries, widths and targets, each from the
// data's scale (--l1 0) and from 100x below and above it: the mean L0 of the last 10% of a
// 4000-step run is within 5%.
TEST(L0Controller, ReachesTheTargetOnFreshPlantedDataFromAnyStart) {
  TempDir dir("l0_target");
  struct Case {
    const char* name;
    int64_t d, concepts;
    double active, zipf;
    uint64_t seed;
    int64_t features;
    double target;
    std::vector<double> starts;  // --l1, in units of the data's scale (0: --l1 0, start at the scale)
  };
  for (const Case& k : {Case{"d32_c64", 32, 64, 3, 0, 21, 96, 4, {0, 0.01, 100}},
                        Case{"d48_c128_zipf", 48, 128, 5, 1, 22, 192, 10, {0}},
                        Case{"d24_c48", 24, 48, 2, 0.5, 23, 64, 2, {0.01}}}) {
    const double scale = std::sqrt(double(k.d) / k.target);  // E ||x||^2 = d after dataset normalisation
    for (double start : k.starts) {
      const double l1 = start * scale;
      SCOPED_TRACE(cat(k.name, ", --l1 ", l1));
      TrainConfig c = fresh_planted(dir.str(cat(k.name, "_", l1)), k.d, k.concepts, k.active, k.zipf, k.seed,
                                    k.features, k.target);
      c.l1 = l1;
      train(c);
      EXPECT_NEAR(last_tenth_l0(c.out), k.target, 0.05 * k.target);
      const Json cfg = read_json_file(c.out + "/config.json");
      EXPECT_NEAR(cfg.at("resolved").at("target_l0_lambda_scale").as_number(), scale, 1e-9 * scale);
      if (l1 == 0) {
        EXPECT_NEAR(cfg.at("l1").as_number(), scale, 1e-9 * scale);  // the start it picked, recorded
      }
    }
  }
}

// The data's scale of lambda takes E = mean ||x||^2 as the normalisation makes it: d^2 per story
// (every element of a story at variance d), which had been taken as d, so lambda_s came out sqrt(d)
// too small and its ceiling of 10 lambda_s held lambda below what the target needs (a story run of
// the demo's data ended 28% over its L0). Checked against the normalised batches' own statistics.
TEST(L0Controller, TheDataScaleOfStoryNormalisedInputsIsTheirMeanSquaredNorm) {
  TempDir dir("l0_story_scale");
  TrainConfig c = small_synthetic_config(dir.str("run"));
  c.normalize = Normalization::Story;
  c.batch_tokens = 0;  // story batches
  c.features = 64;
  c.steps = 20;
  c.log_every = 1;
  c.target_l0 = 4;
  train(c);
  const double d = double(c.synthetic.d);
  const Json cfg = read_json_file(c.out + "/config.json");
  const double e = cfg.at("resolved").at("target_l0_mean_squared_norm").as_number();
  EXPECT_DOUBLE_EQ(e, d * d);
  EXPECT_DOUBLE_EQ(cfg.at("resolved").at("target_l0_lambda_scale").as_number(), std::sqrt(d * d / 4));
  // Every logged batch: mean ||x||^2 = d (normalized_std^2 + normalized_mean^2), within 1% of E.
  const Metrics m = read_metrics(c.out + "/metrics.csv");
  ASSERT_EQ(m.rows.size(), 20u);
  const std::vector<double> sd = m.column("normalized_std"), mean = m.column("normalized_mean");
  for (size_t r = 0; r < m.rows.size(); ++r)
    EXPECT_NEAR(d * (sd[r] * sd[r] + mean[r] * mean[r]), e, 0.01 * e) << "row " << r;
}

TEST(L0Controller, JumpReluWithTheTanhPenaltyReachesTheTarget) {
  // The tanh penalty's gradient reaches the pre-activations; the step penalty's reaches only the
  // thresholds of latents firing within the bandwidth of them (docs/architectures.md §7.7).
  TempDir dir("l0_jumprelu");
  TrainConfig c = controlled_run(dir.str("tanh"), 4.0, 0.0);
  c.architecture = "jumprelu";
  c.arch.set("jumprelu-penalty", Json("tanh"));
  train(c);
  EXPECT_NEAR(last_tenth_l0(c.out), 4.0, 0.2);
  const Metrics m = read_metrics(c.out + "/metrics.csv");
  EXPECT_EQ(m.column("l0_smoothed").size(), m.rows.size());
}

TEST(L0Controller, ResumeIsBitExact) {
  TempDir dir("l0_resume");
  TrainConfig full = controlled_run(dir.str("full"), 4.0, 1.0);
  full.steps = 60;
  full.checkpoint_every = 25;
  train(full);
  TrainConfig cut = full;
  cut.out = dir.str("cut");
  cut.steps = 40;
  train(cut);
  std::filesystem::remove_all(cut.out + "/sae");  // resume from checkpoints/step_25
  TrainConfig rest;
  rest.resume = cut.out;
  give_every_control(rest);
  rest.steps = 60;
  rest.checkpoint_every = 25;
  rest.log_every = 1;
  rest.progress = ProgressMode::None;
  rest.device = DeviceChoice::Cpu;
  train(rest);
  EXPECT_EQ(read_file(full.out + "/sae/sae_weights.safetensors"), read_file(cut.out + "/sae/sae_weights.safetensors"));
  EXPECT_EQ(read_file(full.out + "/metrics.csv"), read_file(cut.out + "/metrics.csv"));
}

TEST(L0Controller, BadOptionsAreRefused) {
  TrainConfig c = small_synthetic_config("/tmp/unused");
  c.features = 16;
  c.l1 = 1;
  auto refused = [](TrainConfig config, const std::string& words) {
    try {
      config.validate();
      ADD_FAILURE() << "accepted; expected: " << words;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  };
  TrainConfig t = c;
  t.target_l0 = 17;
  refused(t, "--target-l0 must be in (0, --features = 16]");
  t.target_l0 = -1;
  refused(t, "--target-l0 must be in");
  t = c;
  t.architecture = "topk";
  t.arch.set("k", Json(4));
  t.l1 = TrainConfig().l1;
  t.target_l0 = 4;
  refused(t, "sets its L0 with --k");
  t = c;
  t.target_l0_ki = 0.5;
  t.given.push_back("target-l0-ki");
  refused(t, "apply only with --target-l0");
  t = c;
  t.target_l0 = 3;
  t.l1 = 0;  // the controller starts at the data's scale
  EXPECT_NO_THROW(t.validate());
  t = c;
  t.target_l0 = 3;
  t.target_l0_ema = 0;
  refused(t, "--target-l0-ema");
}
