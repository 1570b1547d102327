// Metrics of a training step beyond the loss sums of SaeStep, computed at log steps (on the host, or
// on the device from tensors),
// plus dead-feature tracking and concept recovery against known (synthetic) concepts.
// Letters: N tokens, D input width, F features, C concepts.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "sae/arch/collectives.h"
#include "sae/data/batches.h"
#include "tensor/tensor.h"

namespace sae {

struct MeanStd {
  double mean = 0, std = 0;  // over all elements, std unbiased
};
MeanStd mean_std(const float* x, int64_t count);

// What a logged step reports about its n tokens: mean and std of the run's raw columns (raw: their
// moments in this batch, RunColumns::raw_moments; a count of 0 means n d_in elements), of the input x
// [n, d_in] and of the reconstruction x_hat [n, d_out], and the FVU of x_hat against target [n, d_out]
// (target = x for an SAE). With data-parallel replicas (c spans Group::Replicas) each holds part of
// the batch, and these are the whole batch's (up to rounding).
struct BatchSummary {
  MeanStd raw, normalized, reconstructed;
  double fvu = 0;
};
struct BatchRows {
  RawMoments raw;
  const float* x = nullptr;
  int64_t d_in = 0;
  const float* target = nullptr;
  const float* x_hat = nullptr;
  int64_t d_out = 0;
};
BatchSummary summarize_batch(Collectives* c, const BatchRows& rows, int64_t n);

// Fraction of variance unexplained: sum (x - x_hat)^2 / sum (x - mean_t x)^2, where mean_t x is the
// batch's mean token vector. x and x_hat are [n, d] row-major.
double fraction_of_variance_unexplained(const float* x, const float* x_hat, int64_t n, int64_t d);

// The batch-level columns of a metrics row: mean and std of the normalised batch x and of its
// reconstruction x_hat, and the FVU of x_hat against the target (x itself for an SAE).
struct BatchMetrics {
  MeanStd normalized, reconstructed;
  double fvu = 0;
};
// From host arrays [n, d] (mean_std, fraction_of_variance_unexplained).
BatchMetrics batch_metrics(const float* x, const float* x_hat, int64_t n, int64_t d);
// A transcoder's: x [n, d_in], target and x_hat [n, d].
BatchMetrics batch_metrics(const float* x, int64_t d_in, const float* target, const float* x_hat, int64_t n,
                           int64_t d);
// The same from tensors [n, d] on any device, computed there in float64 with tensor ops and read back
// once (what a GPU run does at a log step instead of copying x_hat to the host). Agrees with the host
// version to float64 rounding in another summation order.
BatchMetrics batch_metrics(const Tensor& x, const Tensor& x_hat);

// A feature is dead if it has not fired on any of the last `window` tokens seen. Each feature's
// clock (the tokens since it last fired, exact integers in f64) lives on the device of the counts it
// is given: a batch is one kernel (latent_clock), and the clocks are read back only when asked (at a
// log step, a checkpoint, the end).
class DeadFeatureTracker {
 public:
  DeadFeatureTracker(int64_t features, int64_t window);  // every clock at 0, on the CPU
  // From a checkpoint's last_fired (the token count when each last fired) at tokens_seen.
  DeadFeatureTracker(int64_t window, const std::vector<int64_t>& last_fired, int64_t tokens_seen);
  // counts [F] (float, any device: the clocks move there once) = tokens of the latest batch on which
  // each feature fired; batch_tokens = that batch's tokens.
  void update(const Tensor& counts, int64_t batch_tokens);
  int64_t dead() const;
  std::vector<bool> alive() const;
  std::vector<int64_t> clocks() const;                         // tokens since each last fired
  std::vector<int64_t> last_fired(int64_t tokens_seen) const;  // tokens_seen - clock, as checkpoints keep it

 private:
  int64_t window_;
  Tensor clock_;  // [F] f64
};

struct ConceptRecovery {
  double mmcs = 0;       // mean over concepts of the best cosine with any decoder row
  double recovered = 0;  // fraction of concepts whose best cosine >= threshold
  double purity = 0;     // fraction of alive features whose best concept cosine >= threshold
  int64_t concepts = 0, alive_features = 0;
};
// concepts [C, D] (unit rows), decoder [F, D] (any norms); alive: F flags (empty = all alive). With
// latent shards (shards spans Group::Shards), decoder and alive are this shard's rows, and the
// result is the whole SAE's.
ConceptRecovery concept_recovery(const Tensor& concepts, const Tensor& decoder, const std::vector<bool>& alive,
                                 double threshold = 0.9,
                                 Collectives* shards = nullptr);

// For each decoder row, the concept with the largest cosine (the matching concept_recovery counts):
// its index and the cosine. A zero row matches concept 0 at cosine 0.
struct ConceptMatch {
  int64_t index = -1;  // the concept
  double cosine = -1;
};
std::vector<ConceptMatch> best_concept_per_feature(const Tensor& concepts, const Tensor& decoder);

}  // namespace sae
