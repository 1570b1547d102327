// FeatureStats: what each feature of an SAE fires on, gathered from batches a step has already
// encoded, so that no second pass over the data is needed (docs/contract.md §4, "Feature statistics"):
//   - per feature, the number of tokens it fired on (f > 0) and a histogram of its positive values
//     (half-octave bins, sae/step/feature_stats_math.h);
//   - per feature, its K largest activations, at most one per story (the story's largest; of equal
//     ones the first seen; data without stories: one per token, over epochs), each with where it happened (story, position, step) and its context: the
//     token ids of the C tokens on either side and the feature's value on each of them (NaN where the
//     batch did not hold that neighbour, e.g. in shuffled token batches).
// Per batch, one kernel pass over the step's features (its sparse entry lists when it has them, f
// otherwise; sae/step/sae_kernels.h "feature statistics") fills the histograms and lists each
// feature's candidates: the batch's largest values above the feature's threshold (its K-th largest so
// far, 0 while it has fewer). A second kernel merges those few into the lists, in the order they came
// (each list by one thread), and looks up the context values of the new entries; the lists stay on
// the device (read back to save them). The result equals a brute-force pass that sorts
// every story's largest value (tests/sae/train/test_feature_stats.cpp).
// Letters: F features, K top activations per feature, C context tokens on either side, W = 2C + 1,
// N rows (tokens) of a batch.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/json.h"
#include "sae/data/batches.h"
#include "sae/arch/unit.h"

namespace sae {

struct FeatureStatsOptions {
  int64_t k = 10;       // K: top activations kept per feature
  int64_t context = 8;  // C: tokens kept on either side of each
};

// Limits of the options (UsageError naming them beyond, by the caller's option names): K up to 1000,
// C up to 256, and the lists of all features together up to 8 GiB.
void check_feature_stats_options(int64_t features, const FeatureStatsOptions& options,
                                 const char* k_option = "--feature-stats-k",
                                 const char* context_option = "--feature-stats-context");
// The bytes the statistics of `features` hold on their device: the lists with their contexts, the
// scan's candidates and the histogram (2.4 GB for 2^20 features at K 10, C 8). sae_train's memory
// count adds them (memory_check.h).
double feature_stats_bytes(int64_t features, const FeatureStatsOptions& options);

// One of a feature's top activations.
struct FeatureTop {
  float value = 0;
  int64_t story = -1;     // -1: the data has no stories (position is then the token's index)
  int64_t position = -1;  // of the token in its story
  int64_t step = -1;      // the step (sae_train) or story number (sae_features) it was seen at
  std::vector<int32_t> tokens;  // [W] ids at position - C .. position + C (-1: no token, -2: id not known)
  std::vector<float> values;    // [W] the feature's value there (NaN: not known)
};

class FeatureStats {
 public:
  FeatureStats(int64_t features, const FeatureStatsOptions& options, Device device = Device::CPU);
  ~FeatureStats();
  FeatureStats(FeatureStats&&) noexcept;
  FeatureStats& operator=(FeatureStats&&) noexcept;

  // Adds one batch: the step's features (float32) and where its rows came from (origins of a wider
  // radius give their middle; origins with another row count or a smaller radius count as unknown:
  // no stories, no tokens, no neighbours).
  // `new_step` false: the batch continues the step of the last add (a story added in blocks of
  // rows: its steps count once).
  void add(const StepFeatures& batch, const BatchOrigins& origins, int64_t step, bool new_step = true);

  int64_t features() const { return features_; }
  int64_t k() const { return options_.k; }
  int64_t context() const { return options_.context; }
  int64_t width() const { return 2 * options_.context + 1; }
  int64_t tokens() const { return tokens_; }  // rows added
  int64_t steps() const { return steps_; }    // batches added
  int64_t first_step() const { return first_step_; }  // -1 before the first batch
  int64_t last_step() const { return last_step_; }
  bool has_token_ids() const { return has_token_ids_; }
  Device device() const { return device_; }
  std::vector<double> histogram() const;  // [F, kHistogramBins], row-major
  std::vector<double> counts() const;     // [F]: tokens each feature fired on (the histogram's row sums)
  int32_t top_count(int64_t feature) const;
  FeatureTop top(int64_t feature, int64_t rank) const;  // rank < top_count(feature), largest first

  // The same statistics on the host: one copy of the lists, where reading a GPU run's entry by entry
  // (top, top_count) is a synchronised copy per number (sae_features' second pass, at 2^20 features).
  FeatureStats on_host() const;

  // Free-form description saved with the statistics (the data, the run); metadata() on a loaded file.
  Json& source() { return source_; }
  const Json& source() const { return source_; }

  // feature_stats.safetensors (docs/contract.md §4), written atomically.
  void save(const std::string& path) const;
  // DataError naming the file for anything missing, malformed or inconsistent.
  static FeatureStats load(const std::string& path, Device device = Device::CPU);

 private:
  struct Buffers;  // on the device: the lists (sae_kernels.h FeatureTopLists), the scan's outputs
  void check_lists() const;  // Error when a merge found a broken list or a bad candidate

  int64_t features_;
  FeatureStatsOptions options_;
  Device device_;
  int64_t tokens_ = 0, steps_ = 0, first_step_ = -1, last_step_ = -1;
  bool has_token_ids_ = false;
  Json source_;
  int64_t unknown_key_ = -1;  // keys of entries of no known story count down: a batch's row r gets unknown_key_ - r
  std::unique_ptr<Buffers> buffers_;
};

}  // namespace sae
