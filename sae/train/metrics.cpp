// Host-side metrics, dead features and concept recovery (see metrics.h).
#include "sae/train/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <functional>

#include "sae/step/sae_ops.h"
#include "tensor/ops.h"
#include "tensor/precision.h"

namespace sae {

MeanStd mean_std(const float* x, int64_t count) {
  MeanStd out;
  if (count <= 0) return out;
  double sum = 0;
  for (int64_t i = 0; i < count; ++i) sum += x[i];
  out.mean = sum / double(count);
  double sq = 0;
  for (int64_t i = 0; i < count; ++i) sq += (x[i] - out.mean) * (x[i] - out.mean);
  out.std = count > 1 ? std::sqrt(sq / double(count - 1)) : 0.0;
  return out;
}

double fraction_of_variance_unexplained(const float* x, const float* x_hat, int64_t n, int64_t d) {
  std::vector<double> column_mean(d, 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < d; ++j) column_mean[j] += x[t * d + j];
  for (double& m : column_mean) m /= double(n);
  double residual = 0, total = 0;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < d; ++j) {
      const double e = double(x[t * d + j]) - x_hat[t * d + j], c = x[t * d + j] - column_mean[j];
      residual += e * e;
      total += c * c;
    }
  return total > 0 ? residual / total : std::numeric_limits<double>::quiet_NaN();  // nothing to explain
}

BatchMetrics batch_metrics(const float* x, const float* x_hat, int64_t n, int64_t d) {
  return batch_metrics(x, d, x, x_hat, n, d);
}

BatchMetrics batch_metrics(const float* x, int64_t d_in, const float* target, const float* x_hat, int64_t n,
                           int64_t d) {
  BatchMetrics m;
  m.normalized = mean_std(x, n * d_in);
  m.reconstructed = mean_std(x_hat, n * d);
  m.fvu = fraction_of_variance_unexplained(target, x_hat, n, d);
  return m;
}

BatchMetrics batch_metrics(const Tensor& x, const Tensor& x_hat) {
  const int64_t n = x.size(0), d = x.size(1), count = n * d;
  BatchMetrics m;
  if (count == 0) return m;
  const Tensor x64 = x.to(DType::F64), h64 = x_hat.to(DType::F64);
  // Six sums into one tensor, read back together.
  Tensor sums = Tensor::empty(Shape{6}, DType::F64, x.device());
  auto put = [&](int64_t i, const Tensor& value) {
    Tensor slot = sums.slice_rows(i, i + 1);
    copy_(slot, value.reshape(Shape{1}));
  };
  const Tensor x_mean = mean(x64), h_mean = mean(h64);
  put(0, x_mean);
  put(1, sum(square(sub(x64, x_mean))));
  put(2, h_mean);
  put(3, sum(square(sub(h64, h_mean))));
  put(4, sum(square(sub(x64, h64))));
  put(5, sum(square(sub(x64, mean(x64, 0, true)))));
  const std::vector<double> v = sums.to_vector();
  m.normalized.mean = v[0];
  m.normalized.std = count > 1 ? std::sqrt(v[1] / double(count - 1)) : 0.0;
  m.reconstructed.mean = v[2];
  m.reconstructed.std = count > 1 ? std::sqrt(v[3] / double(count - 1)) : 0.0;
  m.fvu = v[5] > 0 ? v[4] / v[5] : std::numeric_limits<double>::quiet_NaN();
  return m;
}

DeadFeatureTracker::DeadFeatureTracker(int64_t features, int64_t window)
    : window_(window), clock_(Tensor::zeros(Shape{features}, DType::F64)) {}

DeadFeatureTracker::DeadFeatureTracker(int64_t window, const std::vector<int64_t>& last_fired, int64_t tokens_seen)
    : window_(window) {
  std::vector<double> clock(last_fired.size());
  for (size_t i = 0; i < clock.size(); ++i) clock[i] = double(tokens_seen - last_fired[i]);
  clock_ = Tensor::from_vector(clock, Shape{int64_t(clock.size())}, DType::F64);
}

void DeadFeatureTracker::update(const Tensor& counts, int64_t batch_tokens) {
  if (clock_.device() != counts.device()) clock_ = clock_.to(counts.device());
  Tensor no_mask;
  latent_clock_(clock_, no_mask, counts, double(batch_tokens), 0.0);
}

std::vector<int64_t> DeadFeatureTracker::clocks() const {
  const std::vector<double> c = clock_.to_vector();
  return std::vector<int64_t>(c.begin(), c.end());
}

std::vector<int64_t> DeadFeatureTracker::last_fired(int64_t tokens_seen) const {
  std::vector<int64_t> out = clocks();
  for (int64_t& c : out) c = tokens_seen - c;
  return out;
}

int64_t DeadFeatureTracker::dead() const {
  int64_t n = 0;
  for (int64_t c : clocks()) n += c >= window_;
  return n;
}

std::vector<bool> DeadFeatureTracker::alive() const {
  const std::vector<int64_t> c = clocks();
  std::vector<bool> out(c.size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = c[i] < window_;
  return out;
}

namespace {
// The cosines of every concept with every decoder row, a block of decoder rows and a block of
// concepts at a time: visit(first concept, concepts, first feature, features, cos [concepts,
// features]). Each block's decoder rows are copied to the host and made unit there, so neither a
// unit copy of the whole decoder nor a [512, F] block is held (F 2^19 at d 768: 1.6 GB and 1.1 GB). Zero decoder
// rows have cosine 0 with everything. Concepts ascend within each feature block.
void for_each_cosine_block(const Tensor& concepts, const Tensor& decoder, const char* who,
                           const std::function<void(int64_t, int64_t, int64_t, int64_t, const float*)>& visit) {
  const Tensor c = concepts.to(Device::CPU).to(DType::F32);
  const int64_t n_concepts = c.size(0), n_features = decoder.size(0), d = decoder.size(1);
  if (c.size(1) != d)
    throw Error(cat(who, ": concepts ", c.describe(), " and decoder ", decoder.describe(), " differ in width"));
  // An evaluation, not part of the run: cosines at float32 whatever the run's --precision (a bf16
  // product of rounded rows moves a cosine by up to ~1%, enough to flip "recovered" at 0.9). The
  // precision is this thread's (tensor/precision.h): a prefetch worker keeps the run's.
  const ScopedMatmulPrecision exact(Precision::FP32);
  const int64_t concept_block = 512, feature_block = 16384;
  for (int64_t f0 = 0; f0 < n_features; f0 += feature_block) {
    const int64_t cols = std::min(feature_block, n_features - f0);
    Tensor dec = decoder.slice_rows(f0, f0 + cols).to(Device::CPU).to(DType::F32).clone();
    float* rows = dec.data<float>();
    for (int64_t i = 0; i < cols; ++i) {  // unit rows; zero rows stay zero and match nothing
      double sq = 0;
      for (int64_t j = 0; j < d; ++j) sq += double(rows[i * d + j]) * rows[i * d + j];
      const float inv = sq > 0 ? static_cast<float>(1.0 / std::sqrt(sq)) : 0.0f;
      for (int64_t j = 0; j < d; ++j) rows[i * d + j] *= inv;
    }
    for (int64_t c0 = 0; c0 < n_concepts; c0 += concept_block) {
      const int64_t count = std::min(concept_block, n_concepts - c0);
      Tensor cos = matmul(c.slice_rows(c0, c0 + count), dec, false, true);  // [count, cols]
      visit(c0, count, f0, cols, cos.data<float>());
    }
  }
}
}  // namespace

std::vector<ConceptMatch> best_concept_per_feature(const Tensor& concepts, const Tensor& decoder) {
  std::vector<ConceptMatch> best(static_cast<size_t>(decoder.size(0)));
  for_each_cosine_block(concepts, decoder, "best_concept_per_feature",
                        [&](int64_t c0, int64_t rows, int64_t f0, int64_t cols, const float* p) {
                          for (int64_t r = 0; r < rows; ++r)
                            for (int64_t i = 0; i < cols; ++i) {
                              ConceptMatch& b = best[f0 + i];
                              if (b.index < 0 || p[r * cols + i] > b.cosine) {
                                b.index = c0 + r;
                                b.cosine = p[r * cols + i];
                              }
                            }
                        });
  return best;
}

ConceptRecovery concept_recovery(const Tensor& concepts, const Tensor& decoder, const std::vector<bool>& alive,
                                 double threshold, Collectives* shards) {
  const int64_t n_concepts = concepts.size(0), n_features = decoder.size(0);
  std::vector<float> best_for_concept(n_concepts, -1.0f), best_for_feature(n_features, -1.0f);
  for_each_cosine_block(concepts, decoder, "concept_recovery",
                        [&](int64_t c0, int64_t rows, int64_t f0, int64_t cols, const float* p) {
                          for (int64_t r = 0; r < rows; ++r)
                            for (int64_t i = 0; i < cols; ++i) {
                              const float v = p[r * cols + i];
                              best_for_concept[c0 + r] = std::max(best_for_concept[c0 + r], v);
                              best_for_feature[f0 + i] = std::max(best_for_feature[f0 + i], v);
                            }
                        });
  if (spans(shards, Group::Shards)) {  // every shard's best cosine of each concept
    std::vector<double> best(best_for_concept.begin(), best_for_concept.end());
    shards->max(Group::Shards, best.data(), n_concepts);
    for (int64_t c = 0; c < n_concepts; ++c) best_for_concept[c] = static_cast<float>(best[c]);
  }
  ConceptRecovery out;
  out.concepts = n_concepts;
  double sum = 0;
  int64_t recovered = 0;
  for (float v : best_for_concept) {
    sum += v;
    recovered += v >= threshold;
  }
  out.mmcs = n_concepts ? sum / double(n_concepts) : 0.0;
  out.recovered = n_concepts ? double(recovered) / double(n_concepts) : 0.0;
  int64_t pure = 0;
  for (int64_t i = 0; i < n_features; ++i) {
    if (!alive.empty() && !alive[i]) continue;
    ++out.alive_features;
    pure += best_for_feature[i] >= threshold;
  }
  if (spans(shards, Group::Shards)) {
    out.alive_features = shards->sum(Group::Shards, out.alive_features);
    pure = shards->sum(Group::Shards, pure);
  }
  out.purity = out.alive_features ? double(pure) / double(out.alive_features) : 0.0;
  return out;
}

BatchSummary summarize_batch(Collectives* c, const BatchRows& rows, int64_t n) {
  const float *x = rows.x, *target = rows.target, *x_hat = rows.x_hat;
  const int64_t d = rows.d_out;
  BatchSummary out;
  out.normalized = mean_std(x, n * rows.d_in);
  out.reconstructed = mean_std(x_hat, n * d);
  out.raw = {rows.raw.mean, rows.raw.std};
  if (!spans(c, Group::Replicas)) {
    out.fvu = fraction_of_variance_unexplained(target, x_hat, n, d);
    return out;
  }
  // Means and stds from each part's count, mean and sum of squared deviations.
  const double counts[3] = {rows.raw.count > 0 ? double(rows.raw.count) : double(n) * double(rows.d_in),
                             double(n) * double(rows.d_in), double(n) * double(d)};
  double parts[9] = {};
  for (int k = 0; k < 3; ++k) {
    const MeanStd& m = k == 0 ? out.raw : k == 1 ? out.normalized : out.reconstructed;
    const double count = counts[k];
    parts[3 * k] = count;
    parts[3 * k + 1] = count * m.mean;
    parts[3 * k + 2] = (count - 1) * m.std * m.std + count * m.mean * m.mean;
  }
  c->sum(Group::Replicas, parts, 9);
  for (int k = 0; k < 3; ++k) {
    MeanStd& m = k == 0 ? out.raw : k == 1 ? out.normalized : out.reconstructed;
    const double count = parts[3 * k];
    m.mean = count > 0 ? parts[3 * k + 1] / count : 0.0;
    const double squares = parts[3 * k + 2] - count * m.mean * m.mean;
    m.std = count > 1 ? std::sqrt(std::max(0.0, squares) / (count - 1)) : 0.0;
  }
  // FVU: the whole batch's column means of the target first, then both sums.
  std::vector<double> column(d + 1, 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < d; ++j) column[j] += target[t * d + j];
  column[d] = double(n);
  c->sum(Group::Replicas, column.data(), d + 1);
  for (int64_t j = 0; j < d; ++j) column[j] /= column[d];
  double sums[2] = {0, 0};
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < d; ++j) {
      const double e = double(target[t * d + j]) - x_hat[t * d + j], centred = target[t * d + j] - column[j];
      sums[0] += e * e;
      sums[1] += centred * centred;
    }
  c->sum(Group::Replicas, sums, 2);
  out.fvu = sums[1] > 0 ? sums[0] / sums[1] : std::numeric_limits<double>::quiet_NaN();
  return out;
}

}  // namespace sae
