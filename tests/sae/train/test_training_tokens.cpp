// --training-tokens N (SAELens's training_tokens; sae/train/options.h resolve_training_tokens): the
// run's --steps is ceil(N / --batch), recorded beside N; on --resume a new N sets the steps from the
// run's own batch, and --steps given again replaces a recorded N; refused with story batches and
// beside --steps.
#include <gtest/gtest.h>

#include "io/json.h"
#include "tests/util/program_run.h"
#include "tests/util/test_util.h"

#include <filesystem>
namespace fs = std::filesystem;

using namespace sae;
using sae::testing::run_program;
using sae::testing::TempDir;

namespace {
const std::string kSmallRun = " --synthetic-d 16 --features 32 --normalize dataset --progress none --device cpu";
}  // namespace

TEST(TrainingTokens, SetTheStepsFromTheBatchAndAreKeptOnResume) {
  TempDir dir("training_tokens");
  const std::string run = dir.str("run");
  auto first = run_program("sae_train", kSmallRun + " --batch 100 --training-tokens 1050 --out " + run, dir);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_NE(first.out.find("trained 11 steps (1100 tokens)"), std::string::npos) << first.out;
  Json config = read_json_file(run + "/config.json");
  EXPECT_EQ(config.at("steps").as_int(), 11);
  EXPECT_EQ(config.at("training_tokens").as_int(), 1050);
  auto more = run_program("sae_train", "--resume " + run + " --training-tokens 2000 --progress none", dir);
  ASSERT_EQ(more.exit_code, 0) << more.err;
  EXPECT_NE(more.out.find("trained 20 steps (2000 tokens)"), std::string::npos) << more.out;
  auto by_steps = run_program("sae_train", "--resume " + run + " --steps 25 --progress none", dir);
  ASSERT_EQ(by_steps.exit_code, 0) << by_steps.err;
  config = read_json_file(run + "/config.json");
  EXPECT_EQ(config.at("steps").as_int(), 25);
  EXPECT_EQ(config.at("training_tokens").as_int(), 0);  // --steps replaced it

  auto story = run_program("sae_train", " --synthetic-d 16 --features 32 --training-tokens 1050 --progress none --out " +
                                            dir.str("a"), dir);
  EXPECT_EQ(story.exit_code, 2);
  EXPECT_NE(story.err.find("--training-tokens counts token batches (--batch N)"), std::string::npos) << story.err;
  auto both = run_program("sae_train", kSmallRun + " --batch 10 --steps 3 --training-tokens 1050 --out " + dir.str("b"), dir);
  EXPECT_EQ(both.exit_code, 2);
  EXPECT_NE(both.err.find("give --steps or --training-tokens, not both"), std::string::npos) << both.err;
}

TEST(TrainingTokens, WrittenAsSaelensWritesThemAndCheckedOnResume) {
  TempDir dir("training_tokens_more");
  const std::string run = dir.str("run");
  auto first = run_program("sae_train", kSmallRun + " --batch 100 --training-tokens 1.5e3 --out " + run, dir);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_NE(first.out.find("trained 15 steps"), std::string::npos) << first.out;
  auto fraction = run_program("sae_train", kSmallRun + " --batch 100 --training-tokens 1.5 --out " + dir.str("f"), dir);
  EXPECT_EQ(fraction.exit_code, 2);
  EXPECT_NE(fraction.err.find("a whole number of at most 2^53 (e.g. 2000000000 or 2e9)"), std::string::npos)
      << fraction.err;
  // On --resume both given must agree (batch 100: 3000 tokens are 30 steps).
  auto both = run_program("sae_train", "--resume " + run + " --steps 40 --training-tokens 3000 --progress none", dir);
  EXPECT_EQ(both.exit_code, 2);
  EXPECT_NE(both.err.find("give --steps or --training-tokens, not both"), std::string::npos) << both.err;
  auto agreeing = run_program("sae_train", "--resume " + run + " --steps 30 --training-tokens 3e3 --progress none", dir);
  EXPECT_EQ(agreeing.exit_code, 0) << agreeing.err;
  EXPECT_NE(agreeing.out.find("trained 30 steps"), std::string::npos) << agreeing.out;
}

TEST(TrainingTokens, AnL1SweepContinuesItsRunToThreeTimesItsSteps) {
  // The continued run's length is --continue-steps (default 3 x the runs' steps as resolved), not the
  // token count its config.json would otherwise carry.
  TempDir dir("training_tokens_sweep");
  const std::string out = dir.str("sweep");
  auto r = run_program("l1_sweep", " --synthetic-d 8 --features 16 --synthetic-concepts 12 --synthetic-story-concepts 4 "
                                   "--synthetic-active 1 --synthetic-story-active 1 --l1-list 0,1 --continue-lambda 1 "
                                   "--batch 100 --normalize none --training-tokens 1000 --summary-step 10 --progress "
                                   "none --device cpu --out " + out, dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json continued = read_json_file(out + "/l1_1_to_30/config.json");
  EXPECT_EQ(continued.at("steps").as_int(), 30);
  EXPECT_EQ(continued.at("training_tokens").as_int(), 0);
  EXPECT_TRUE(fs::exists(out + "/l1_1_to_30/sae/sae_weights.safetensors"));
  const std::string metrics = sae::testing::read_file(out + "/l1_1_to_30/metrics.csv");
  EXPECT_NE(metrics.find("\n30,3000,"), std::string::npos) << metrics.substr(metrics.size() > 300 ? metrics.size() - 300 : 0);
}
