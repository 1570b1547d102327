// RunFeatureStats (see run_feature_stats.h).
#include "sae/train/run_feature_stats.h"

#include <algorithm>
#include <filesystem>

namespace fs = std::filesystem;

namespace sae {

RunFeatureStats::RunFeatureStats(const TrainConfig& config, Device device, BatchSource& batches,
                                 const std::string& resumed_from, int64_t resumed_step, const Json& data_description) {
  if (config.feature_stats_steps <= 0) return;
  const FeatureStatsOptions options{config.feature_stats_k, config.feature_stats_context};
  window_after_ = std::max<int64_t>(0, config.steps - config.feature_stats_steps);
  // SAEs trained together share the batches: they record the widest context any of them keeps.
  if (batches.origins_radius() < options.context) batches.record_origins(options.context);
  const fs::path saved = fs::path(resumed_from) / kFeatureStatsFile;
  if (!resumed_from.empty() && resumed_step > window_after_ && fs::exists(saved)) {
    FeatureStats loaded = FeatureStats::load(saved.string(), device);
    if (loaded.features() != config.features || loaded.k() != options.k || loaded.context() != options.context)
      throw DataError(cat(saved.string(), ": ", loaded.features(), " features, k ", loaded.k(), ", context ",
                          loaded.context(), " do not match the run's ", config.features, ", ", options.k, ", ",
                          options.context));
    // Continued only when they lie inside this window: a run extended with --resume --steps has a
    // later window, and statistics begun before it cannot be cut back (they start again here).
    if (loaded.steps() > 0 && loaded.last_step() == resumed_step && loaded.first_step() > window_after_)
      stats_.emplace(std::move(loaded));
  }
  if (!stats_) stats_.emplace(config.features, options, device);
  Json& source = stats_->source();
  source["gathered_by"] = "sae_train";
  source["data"] = data_description;
  source["window_steps"] = config.feature_stats_steps;
  source["normalization"] = normalization_name(config.normalize);
}

void RunFeatureStats::add(const SaeStep& step, const PreparedBatch& batch, int64_t step_number) {
  if (!stats_ || step_number <= window_after_) return;
  stats_->add(step.step_features(), batch.origins, step_number);
}

void RunFeatureStats::write(const std::string& folder) const {
  if (stats_ && stats_->steps() > 0) stats_->save((fs::path(folder) / kFeatureStatsFile).string());
}

}  // namespace sae
