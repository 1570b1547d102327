// Checkpoints in SAELens's on-disk layout (docs/contract.md §4), plus our training state beside it:
//   DIR/sae_weights.safetensors   W_enc [D, F], W_dec [F, D], b_enc [F], b_dec [D], float32
//   DIR/cfg.json                  SAELens keys (architecture "standard", d_in, d_sae, ...) + ours
//   DIR/training_state.safetensors  Adam moments, dead-feature clocks and, in its metadata, the
//                                 step, tokens seen, data position and normalisation scale
// A directory is written as DIR.tmp-<pid> and renamed into place (after fsync), so a run killed at
// any moment leaves the old checkpoint or the new one, never a torn one.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "io/json.h"
#include "sae/params.h"

namespace sae {

struct TrainingState {
  int64_t step = 0;           // optimizer updates done
  int64_t tokens = 0;         // tokens seen
  double dataset_scale = 1.0;
  Json batcher;               // Batcher::state()
  std::vector<int64_t> last_fired;  // DeadFeatureTracker clocks [F]
  SaeAdamState adam;                // moments and steps taken (betas and eps come from the run's config)
};

// cfg.json for a model: SAELens's keys plus `extra` (our run description) under "sae_cpp".
Json saelens_config(const SaeParams& params, const Json& extra);

// Writes DIR (see the top of this file); the parameters may live on any device.
void save_checkpoint(const std::string& dir, const SaeParams& params, const Json& extra, const TrainingState* state);

struct Checkpoint {
  SaeParams params;
  Json cfg;
  std::optional<TrainingState> state;  // when the directory has training_state.safetensors
};
// Loads a SAELens-format standard SAE (any directory with sae_weights.safetensors + cfg.json) onto
// `device`. DataError for a missing/corrupt file, another architecture, or shapes that disagree
// with cfg.
Checkpoint load_checkpoint(const std::string& dir, Device device);

// The newest resumable checkpoint under a run directory (checkpoints/step_N or sae/, by step), or
// `dir` itself when it is a checkpoint. DataError when there is none.
std::string find_latest_checkpoint(const std::string& dir);

}  // namespace sae
