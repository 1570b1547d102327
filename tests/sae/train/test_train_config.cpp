// The training schedules (TrainConfig::lr_at, l1_at) against SAELens's own schedulers, step by step
// (tests/ref/schedules.safetensors, from scripts/gen_schedule_fixture.py): the lr warm-up and the
// linear decay around its constant, cosine and cosine-with-restarts schedules, and its
// CoefficientScheduler for lambda.
#include <gtest/gtest.h>

#include <string>

#include "sae/train/train_config.h"
#include "tests/util/fixture.h"
#include "tests/util/test_util.h"

using namespace sae;

TEST(TrainConfig, SchedulesAreSaeLenssStepByStep) {
  const test::Fixture fixture = test::load_fixture(sae::testing::ref_path("schedules.safetensors"));
  const int64_t cases = fixture.integer("cases");
  ASSERT_GE(cases, 13);
  for (int64_t c = 0; c < cases; ++c) {
    const std::string p = std::to_string(c) + "_";
    TrainConfig config;
    config.steps = fixture.integer(p + "steps");
    config.lr_warmup_steps = fixture.integer(p + "lr_warmup");
    config.lr_decay_steps = fixture.integer(p + "lr_decay");
    config.l1_warmup_steps = fixture.integer(p + "l1_warmup");
    config.lr_schedule = LrSchedule(fixture.integer(p + "schedule"));
    config.lr_cycles = fixture.integer(p + "cycles");
    config.lr_end = c % 2 ? -1.0 : 3e-5;  // SAELens's default lr / 10, left to it or given
    config.lr = 3e-4;
    config.l1 = 5.0;
    const std::vector<double> lr = fixture.values(p + "lr"), l1 = fixture.values(p + "l1");
    ASSERT_EQ(static_cast<int64_t>(lr.size()), config.steps);
    for (int64_t step = 1; step <= config.steps; ++step) {
      EXPECT_NEAR(config.lr_at(step), 3e-4 * lr[step - 1], 1e-15) << "case " << c << " step " << step;
      EXPECT_NEAR(config.l1_at(step), 5.0 * l1[step - 1], 1e-12) << "case " << c << " step " << step;
    }
    // The last step still trains: the decay reaches 1/N there, not 0.
    EXPECT_GT(config.lr_at(config.steps), 0.0) << "case " << c;
  }
}
