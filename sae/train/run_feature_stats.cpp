// RunFeatureStats (see run_feature_stats.h).
#include "sae/train/run_feature_stats.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "io/safetensors.h"

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
  if (!stats_ || stats_->steps() <= 0) return;
  stats_->save((fs::path(folder) / kFeatureStatsFile).string());
  // SAELens's sparsity.safetensors: "sparsity" [F] float32, log10 of each feature's firing
  // frequency over the window plus 1e-10 (its trainer's log_feature_sparsity).
  const std::vector<double> counts = stats_->counts();
  Tensor sparsity = Tensor::empty(Shape{static_cast<int64_t>(counts.size())}, DType::F32);
  const double tokens = static_cast<double>(std::max<int64_t>(stats_->tokens(), 1));
  for (size_t i = 0; i < counts.size(); ++i)
    sparsity.data<float>()[i] = static_cast<float>(std::log10(counts[i] / tokens + 1e-10));
  write_safetensors((fs::path(folder) / kSparsityFile).string(), {{"sparsity", sparsity}});
}

}  // namespace sae
