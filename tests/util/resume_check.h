// The bit-exact resume check that the training tests share: a run straight to its end against the
// same run stopped at step 17 and resumed from its checkpoint of step 10.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <string>

#include "sae/train/options.h"
#include "sae/train/trainer.h"
#include "tests/util/test_util.h"

namespace sae::testing {

// Trains make(dir/full) straight to its --steps, and make(dir/split) to step 17 with a checkpoint
// every 10 steps; removes split's final folder (as if killed at step 17) and resumes it, from
// checkpoints/step_10, to the same --steps; expects the two runs' weights, training state and
// metrics.csv equal byte for byte. Returns the resumed run's result.
inline TrainResult expect_resume_is_bit_exact(const std::function<TrainConfig(const std::string&)>& make,
                                              const TempDir& dir) {
  const TrainConfig full = make(dir.str("full"));
  train(full);
  TrainConfig first = make(dir.str("split"));
  first.steps = 17;
  first.checkpoint_every = 10;
  train(first);
  std::filesystem::remove_all(dir.str("split/sae"));
  TrainConfig rest = make("");
  rest.resume = dir.str("split");
  give_every_control(rest);
  rest.steps = full.steps;
  const TrainResult r = train(rest);
  for (const char* file : {"sae/sae_weights.safetensors", "sae/training_state.safetensors", "metrics.csv"})
    EXPECT_EQ(read_file(dir.str("full/") + file), read_file(dir.str("split/") + file)) << file;
  return r;
}

}  // namespace sae::testing
