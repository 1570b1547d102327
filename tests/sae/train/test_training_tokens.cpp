// --training-tokens N (SAELens's training_tokens; sae/train/options.h resolve_training_tokens): the
// run's --steps is ceil(N / --batch), recorded beside N; on --resume a new N sets the steps from the
// run's own batch, and --steps given again replaces a recorded N; refused with story batches and
// beside --steps.
#include <gtest/gtest.h>

#include "io/json.h"
#include "tests/util/program_run.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::run_program;
using sae::testing::TempDir;

TEST(TrainingTokens, SetTheStepsFromTheBatchAndAreKeptOnResume) {
  TempDir dir("training_tokens");
  const std::string run = dir.str("run");
  const std::string base = " --synthetic-d 16 --features 32 --normalize dataset --progress none --device cpu";
  auto first = run_program("sae_train", base + " --batch 100 --training-tokens 1050 --out " + run, dir);
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
  auto both = run_program("sae_train", base + " --batch 10 --steps 3 --training-tokens 1050 --out " + dir.str("b"), dir);
  EXPECT_EQ(both.exit_code, 2);
  EXPECT_NE(both.err.find("give --steps or --training-tokens, not both"), std::string::npos) << both.err;
}
