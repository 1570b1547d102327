// RunFeatureStats: a training run's feature statistics (--feature-stats-*, feature_stats.h): which
// steps they cover, what a resumed run keeps of the saved ones, and the file each checkpoint and the
// final model get (feature_stats.safetensors beside sae_weights.safetensors).
//   Window: the steps after config.steps - feature_stats_steps (all of them for a shorter run), so the
//   final model's statistics describe the features it ended with, and earlier steps cost nothing.
//   Resume: the statistics saved with the checkpoint continue when the checkpoint's step is inside the
//   window (what an uninterrupted run holds there, so resume stays bit-exact); a checkpoint from
//   before the window starts them empty. A run resumed with a larger --steps keeps the saved ones
//   only if they began inside its new window; otherwise (they cannot be cut back), and from a
//   checkpoint without statistics inside the window, it starts them at the checkpoint. The file
//   says which steps it covers.
#pragma once
#include <optional>
#include <string>

#include "sae/data/prefetch.h"
#include "sae/arch/sae_step.h"
#include "sae/train/feature_stats.h"
#include "sae/train/train_config.h"

namespace sae {

constexpr const char* kFeatureStatsFile = "feature_stats.safetensors";
constexpr const char* kSparsityFile = "sparsity.safetensors";  // SAELens's log10 feature frequencies

class RunFeatureStats {
 public:
  // Does nothing when config.feature_stats_steps is 0. Otherwise turns on origin recording in
  // `batches` (call before they are restored or prefetched) and, on --resume (resumed_from: the
  // checkpoint folder, at resumed_step), loads what the checkpoint saved. DataError for a bad file.
  RunFeatureStats(const TrainConfig& config, Device device, BatchSource& batches, const std::string& resumed_from,
                  int64_t resumed_step, const Json& data_description);
  // After training step `step_number` on `batch`: adds the step's features when inside the window.
  void add(const SaeStep& step, const PreparedBatch& batch, int64_t step_number);
  // Writes folder/feature_stats.safetensors when any step has been gathered.
  void write(const std::string& folder) const;
  const FeatureStats* stats() const { return stats_ ? &*stats_ : nullptr; }

 private:
  std::optional<FeatureStats> stats_;
  int64_t window_after_ = 0;  // steps after this one are gathered
};

}  // namespace sae
