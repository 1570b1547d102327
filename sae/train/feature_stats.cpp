// FeatureStats (see feature_stats.h): the per-batch scan and merge, and feature_stats.safetensors.
#include "sae/train/feature_stats.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <unordered_map>

#include "io/safetensors.h"
#include "sae/step/feature_stats_math.h"
#include "sae/step/sae_ops.h"
#include "tensor/cuda/backend.h"

namespace sae {

namespace {
constexpr const char* kFormat = "sae-cpp-feature-stats";
constexpr const char* kMetadataKey = "feature_stats";
constexpr int64_t kMaxK = 1000, kMaxContext = 256;
constexpr double kMaxListBytes = 8.0 * (int64_t(1) << 30);
const float kNaN = std::numeric_limits<float>::quiet_NaN();
// Below these many features (lists) or context look-ups, merging runs on one thread.
constexpr int64_t kParallelFeatures = 1024, kParallelLookUps = 1 << 14;

template <typename T>
std::string bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// Copies host values into a device (or host) tensor of the same element size.
void upload(Tensor& to, const void* from, size_t bytes) {
  if (bytes == 0) return;
  if (to.device() == Device::CPU)
    std::memcpy(to.raw(), from, bytes);
  else
    cuda_copy_to_device(to.raw(), from, bytes);
}

void download(void* to, const Tensor& from, size_t bytes) {
  if (bytes == 0) return;
  if (from.device() == Device::CPU)
    std::memcpy(to, from.raw(), bytes);
  else
    cuda_copy_to_host(to, from.raw(), bytes);
}

// Whether the batch holds the neighbour `offset` tokens from `row` in the same story (so the
// feature's value there can be looked up).
bool holds_neighbour(const BatchOrigins& origins, int64_t n, int64_t row, int64_t offset) {
  const int64_t t = row + offset;
  return offset != 0 && t >= 0 && t < n && origins.story[t] == origins.story[row] &&
         origins.position[t] == origins.position[row] + offset;
}

Tensor zero_i32(const Shape& shape, Device device) {
  Tensor t = Tensor::empty(shape, DType::I32, Device::CPU);
  if (t.nbytes() > 0) std::memset(t.raw(), 0, t.nbytes());
  return t.to(device);
}

}  // namespace

void check_feature_stats_options(int64_t features, const FeatureStatsOptions& options) {
  if (options.k < 1 || options.k > kMaxK)
    throw UsageError(cat("--feature-stats-k must be in [1, ", kMaxK, "], got ", options.k));
  if (options.context < 0 || options.context > kMaxContext)
    throw UsageError(cat("--feature-stats-context must be in [0, ", kMaxContext, "], got ", options.context));
  if (features < 1) throw UsageError(cat("feature statistics: need at least one feature, got ", features));
  // Per list entry: value, key, slot, story, position, step, pending row; W token ids and values.
  const double bytes = double(features) * double(options.k) * (40.0 + 8.0 * double(2 * options.context + 1));
  if (bytes > kMaxListBytes)
    throw UsageError(cat("--feature-stats-k ", options.k, " and --feature-stats-context ", options.context, " for ",
                         features, " features need ", bytes / double(int64_t(1) << 30),
                         " GiB of lists (at most 8): lower them"));
}

struct FeatureStats::Buffers {
  FeatureCandidates candidates;  // on the device
  Tensor histogram;              // [F, kHistogramBins] f64, on the device
  Tensor threshold;              // [F] f32, on the device
  Tensor group;                  // [rows] i32, grown as needed
  // Host copies of the candidates (CUDA only) and the batch's groups.
  std::vector<int32_t> count, rows, groups;
  std::vector<float> values;
  std::unordered_map<int64_t, int32_t> group_of_story;
  // The context look-ups of a batch, kept from batch to batch so that no step allocates them anew:
  // on the host (rows, features, where each answer goes, the answers) and on the device (grown as
  // needed, like group).
  std::vector<int32_t> query_rows, query_features;
  std::vector<int64_t> query_targets, query_offset;
  std::vector<float> found;
  Tensor query_rows_device, query_features_device, found_device;
};

namespace {
// The first n entries of `buffer` (re-made larger when it is too small).
Tensor first_n(Tensor& buffer, int64_t n, DType dtype, Device device) {
  if (!buffer.defined() || buffer.numel() < n) buffer = Tensor::empty(Shape{std::max<int64_t>(n, 1024)}, dtype, device);
  return buffer.slice_rows(0, n);
}
}  // namespace

FeatureStats::FeatureStats(int64_t features, const FeatureStatsOptions& options, Device device)
    : features_(features), options_(options), device_(device), source_(Json::object()) {
  check_feature_stats_options(features, options);
  const int64_t k = options.k, entries = features * k;
  value_.assign(entries, 0.0f);
  key_.assign(entries, 0);
  slot_.assign(entries, -1);
  count_.assign(features, 0);
  story_.assign(entries, -1);
  position_.assign(entries, -1);
  step_.assign(entries, -1);
  pending_row_.assign(entries, -1);
  tokens_at_.assign(entries * width(), -1);
  values_at_.assign(entries * width(), kNaN);
  threshold_.assign(features, 0.0f);
  touched_.assign(features, 0);
  buffers_ = std::make_unique<Buffers>();
  Buffers& b = *buffers_;
  b.candidates.values = Tensor::zeros(Shape{features, k}, DType::F32, device);
  b.candidates.rows = zero_i32(Shape{features, k}, device);
  b.candidates.groups = zero_i32(Shape{features, k}, device);
  b.candidates.count = zero_i32(Shape{features}, device);
  b.histogram = Tensor::zeros(Shape{features, kHistogramBins}, DType::F64, device);
  b.threshold = Tensor::zeros(Shape{features}, DType::F32, device);
}

FeatureStats::~FeatureStats() = default;
FeatureStats::FeatureStats(FeatureStats&&) noexcept = default;
FeatureStats& FeatureStats::operator=(FeatureStats&&) noexcept = default;

void FeatureStats::add(const StepFeatures& batch, const BatchOrigins& origins, int64_t step) {
  const int64_t n = batch.tokens;
  if (n <= 0) return;
  const Tensor& like = batch.sparse ? batch.lists.vals : batch.dense;
  if (!like.defined() || like.dtype() != DType::F32 || like.device() != device_)
    throw Error(cat("FeatureStats: expects float32 features on ", device_name(device_), ", got ",
                    like.defined() ? like.describe() : std::string("nothing")));
  if (!batch.sparse && batch.dense.shape() != Shape{n, features_})
    throw Error(cat("FeatureStats: f should be [", n, ", ", features_, "], got ", batch.dense.describe()));
  if (n >= (int64_t(1) << 30)) throw Error(cat("FeatureStats: a batch of ", n, " rows is too large"));
  const bool known = origins.rows() == n && origins.radius >= options_.context;
  Buffers& b = *buffers_;

  // Groups: the rows of one story count once; rows of no known story each on their own.
  b.groups.resize(static_cast<size_t>(n));
  b.group_of_story.clear();
  for (int64_t r = 0; r < n; ++r) {
    const int64_t story = known ? origins.story[r] : -1;
    if (story >= 0)
      b.groups[r] = b.group_of_story.try_emplace(story, static_cast<int32_t>(b.group_of_story.size())).first->second;
    else
      b.groups[r] = static_cast<int32_t>(n + r);
  }
  if (!b.group.defined() || b.group.numel() < n) b.group = Tensor::empty(Shape{n}, DType::I32, device_);
  Tensor group = b.group.slice_rows(0, n);
  upload(group, b.groups.data(), sizeof(int32_t) * n);

  if (batch.sparse)
    feature_stats_scan_sparse_(b.candidates, b.histogram, batch.lists, n, b.threshold, group);
  else
    feature_stats_scan_(b.candidates, b.histogram, batch.dense, b.threshold, group);

  merge_candidates(origins, known, n, step);
  look_up_context(batch, origins, known, n);
  upload_thresholds();
  tokens_ += n;
  ++steps_;
  if (first_step_ < 0) first_step_ = step;
  last_step_ = step;
  has_token_ids_ = has_token_ids_ || (known && origins.has_token_ids);
}

int32_t FeatureStats::free_slot(int64_t feature) const {
  const int64_t k = options_.k;
  uint64_t used[(kMaxK + 63) / 64] = {};  // a bit per slot, on the stack: this runs for every new entry
  for (int32_t a = 0; a < count_[feature]; ++a) {
    const int32_t s = slot_[feature * k + a];
    if (s >= 0) used[s / 64] |= uint64_t(1) << (s % 64);
  }
  for (int32_t s = 0; s < k; ++s)
    if (!(used[s / 64] >> (s % 64) & 1)) return s;
  return -1;  // a broken list
}

// Each feature's candidates merge into its own list (a thread owns whole features and takes their
// candidates in the order they came, so the lists do not depend on the number of threads). A new
// entry gets a free payload slot, its place, and its token ids; its context values are looked up next
// (look_up_context), counted here per feature so that the look-ups can be laid out in one array.
void FeatureStats::merge_candidates(const BatchOrigins& origins, bool known, int64_t n, int64_t step) {
  Buffers& b = *buffers_;
  const int64_t k = options_.k, w = width(), c = options_.context;
  // Origins recorded with a wider radius (another SAE trained on the same batches wants more): the
  // middle w of each row's ids.
  const int64_t origin_width = origins.width(), shift = origins.radius - options_.context;
  const int32_t* count = b.candidates.count.data<int32_t>();
  const float* values = nullptr;
  const int32_t* rows = nullptr;
  if (device_ == Device::CPU) {
    values = b.candidates.values.data<float>();
    rows = b.candidates.rows.data<int32_t>();
  } else {
    b.count.resize(static_cast<size_t>(features_));
    download(b.count.data(), b.candidates.count, sizeof(int32_t) * features_);
    count = b.count.data();
    int64_t total = 0;
    for (int64_t i = 0; i < features_; ++i) total += count[i];
    if (total > 0) {
      b.values.resize(static_cast<size_t>(features_ * k));
      b.rows.resize(static_cast<size_t>(features_ * k));
      download(b.values.data(), b.candidates.values, sizeof(float) * features_ * k);
      download(b.rows.data(), b.candidates.rows, sizeof(int32_t) * features_ * k);
      values = b.values.data();
      rows = b.rows.data();
    }
  }
  // Rows of no known story never match: each gets its own key below every key given so far.
  const int64_t unknown_base = unknown_key_;
  unknown_key_ -= n;
  std::vector<int64_t>& queries = b.query_offset;  // [F + 1]: the feature's look-ups, summed below
  queries.assign(static_cast<size_t>(features_ + 1), 0);
  bool bad_row = false, no_slot = false;  // a candidate row outside the batch; a list without a free slot
#pragma omp parallel for schedule(static) reduction(|| : bad_row, no_slot) if (features_ >= kParallelFeatures)
  for (int64_t i = 0; i < features_; ++i) {
    if (count[i] == 0) continue;
    const int64_t at = i * k;
    for (int32_t cand = 0; cand < count[i]; ++cand) {
      const float value = values[at + cand];
      const int32_t row = rows[at + cand];
      if (row < 0 || row >= n) {
        bad_row = true;
        continue;
      }
      const int64_t story = known ? origins.story[row] : -1;
      const int64_t key = story >= 0 ? story : unknown_base - row;
      if (!offer_candidate(value_.data() + at, slot_.data() + at, key_.data() + at, count_[i],
                           static_cast<int32_t>(k), value, int32_t(-1), key))
        continue;
      // The new entry holds slot -1: give it the payload slot no other entry uses.
      int32_t rank = 0;
      while (slot_[at + rank] != -1) ++rank;
      const int32_t slot = free_slot(i);
      if (slot < 0) {
        no_slot = true;
        slot_[at + rank] = 0;
        continue;
      }
      slot_[at + rank] = slot;
      const int64_t p = at + slot;
      story_[p] = story;
      position_[p] = known ? origins.position[row] : -1;
      step_[p] = step;
      pending_row_[p] = row;
      for (int64_t o = 0; o < w; ++o) {
        tokens_at_[p * w + o] = known ? origins.context[row * origin_width + shift + o] : -1;
        values_at_[p * w + o] = kNaN;
      }
      touched_[i] = 1;
    }
    if (!touched_[i] || !known) continue;
    for (int32_t rank = 0; rank < count_[i]; ++rank) {
      const int32_t row = pending_row_[at + slot_[at + rank]];
      if (row < 0) continue;
      for (int64_t o = -c; o <= c; ++o) queries[i + 1] += holds_neighbour(origins, n, row, o);
    }
  }
  if (no_slot) throw Error("FeatureStats: no free slot (a broken list)");
  if (bad_row) throw Error(cat("FeatureStats: a candidate row outside the batch of ", n));
  for (int64_t i = 0; i < features_; ++i) queries[i + 1] += queries[i];
}

// The feature's value on the neighbours of each new entry that the batch holds (same story, the
// positions next to it), looked up in one kernel call.
void FeatureStats::look_up_context(const StepFeatures& batch, const BatchOrigins& origins, bool known, int64_t n) {
  const int64_t k = options_.k, w = width(), c = options_.context;
  Buffers& b = *buffers_;
  const std::vector<int64_t>& offset = b.query_offset;
  const int64_t m = offset[features_];
  b.query_rows.resize(static_cast<size_t>(m));
  b.query_features.resize(static_cast<size_t>(m));
  b.query_targets.resize(static_cast<size_t>(m));  // into values_at_
#pragma omp parallel for schedule(static) if (features_ >= kParallelFeatures)
  for (int64_t i = 0; i < features_; ++i) {
    if (!touched_[i]) continue;
    int64_t q = offset[i];
    for (int32_t rank = 0; rank < count_[i]; ++rank) {
      const int64_t p = i * k + slot_[i * k + rank];
      const int32_t row = pending_row_[p];
      if (row < 0) continue;
      pending_row_[p] = -1;
      values_at_[p * w + c] = value_[i * k + rank];
      if (!known) continue;
      for (int64_t o = -c; o <= c; ++o) {
        if (!holds_neighbour(origins, n, row, o)) continue;
        b.query_rows[q] = static_cast<int32_t>(row + o);
        b.query_features[q] = static_cast<int32_t>(i);
        b.query_targets[q] = p * w + o + c;
        ++q;
      }
    }
  }
  if (m == 0) return;
  Tensor rows = first_n(b.query_rows_device, m, DType::I32, device_);
  Tensor features = first_n(b.query_features_device, m, DType::I32, device_);
  Tensor out = first_n(b.found_device, m, DType::F32, device_);
  upload(rows, b.query_rows.data(), sizeof(int32_t) * m);
  upload(features, b.query_features.data(), sizeof(int32_t) * m);
  if (batch.sparse)
    feature_values_at_sparse_(out, batch.lists, n, rows, features);
  else
    feature_values_at_(out, batch.dense, rows, features);
  b.found.resize(static_cast<size_t>(m));
  download(b.found.data(), out, sizeof(float) * m);
#pragma omp parallel for schedule(static) if (m >= kParallelLookUps)
  for (int64_t q = 0; q < m; ++q) values_at_[b.query_targets[q]] = b.found[q];
}

void FeatureStats::upload_thresholds() {
  const int64_t k = options_.k;
  bool changed = false;
  for (int64_t i = 0; i < features_; ++i) {
    if (!touched_[i]) continue;
    touched_[i] = 0;
    threshold_[i] = count_[i] == k ? value_[i * k + k - 1] : 0.0f;
    changed = true;
  }
  if (changed) upload(buffers_->threshold, threshold_.data(), sizeof(float) * features_);
}

std::vector<double> FeatureStats::histogram() const { return buffers_->histogram.to_vector(); }

std::vector<double> FeatureStats::counts() const {
  const std::vector<double> h = histogram();
  std::vector<double> out(static_cast<size_t>(features_), 0.0);
  for (int64_t i = 0; i < features_; ++i)
    for (int b = 0; b < kHistogramBins; ++b) out[i] += h[i * kHistogramBins + b];
  return out;
}

int32_t FeatureStats::top_count(int64_t feature) const {
  if (feature < 0 || feature >= features_) throw Error(cat("FeatureStats: no feature ", feature));
  return count_[feature];
}

FeatureTop FeatureStats::top(int64_t feature, int64_t rank) const {
  if (rank < 0 || rank >= top_count(feature)) throw Error(cat("FeatureStats: feature ", feature, " has no rank ", rank));
  const int64_t k = options_.k, w = width(), p = feature * k + slot_[feature * k + rank];
  FeatureTop t;
  t.value = value_[feature * k + rank];
  t.story = story_[p];
  t.position = position_[p];
  t.step = step_[p];
  t.tokens.assign(tokens_at_.begin() + p * w, tokens_at_.begin() + (p + 1) * w);
  t.values.assign(values_at_.begin() + p * w, values_at_.begin() + (p + 1) * w);
  return t;
}

// ---------------------------------------------------------------- the file

void FeatureStats::save(const std::string& path) const {
  const int64_t f = features_, k = options_.k, w = width();
  std::vector<float> top_value(f * k, 0.0f), top_values(f * k * w, kNaN);
  std::vector<int64_t> top_story(f * k, -1), top_position(f * k, -1), top_step(f * k, -1);
  std::vector<int32_t> top_tokens(f * k * w, -1);
  for (int64_t i = 0; i < f; ++i)
    for (int32_t rank = 0; rank < count_[i]; ++rank) {
      const int64_t r = i * k + rank, p = i * k + slot_[r];
      top_value[r] = value_[r];
      top_story[r] = story_[p];
      top_position[r] = position_[p];
      top_step[r] = step_[p];
      std::memcpy(&top_tokens[r * w], &tokens_at_[p * w], sizeof(int32_t) * w);
      std::memcpy(&top_values[r * w], &values_at_[p * w], sizeof(float) * w);
    }
  std::vector<double> edges(kHistogramBins + 1);
  for (int b = 0; b < kHistogramBins; ++b) edges[b] = histogram_lower_edge(b);
  edges[kHistogramBins] = std::numeric_limits<double>::infinity();

  Json info = Json::object();
  info["format"] = kFormat;
  info["version"] = 1;
  info["features"] = f;
  info["k"] = k;
  info["context"] = options_.context;
  Json window = Json::object();
  window["first_step"] = first_step_;
  window["last_step"] = last_step_;
  window["steps"] = steps_;
  window["tokens"] = tokens_;
  info["window"] = window;
  info["token_ids"] = has_token_ids_;
  info["histogram_bins"] = kHistogramBins;
  info["source"] = source_;
  const std::vector<int32_t>& count = count_;
  std::vector<RawTensor> tensors = {
      {"counts", "F64", {f}, bytes_of(counts())},
      {"histogram", "F64", {f, kHistogramBins}, bytes_of(histogram())},
      {"histogram_edges", "F64", {kHistogramBins + 1}, bytes_of(edges)},
      {"top_count", "I32", {f}, bytes_of(count)},
      {"top_value", "F32", {f, k}, bytes_of(top_value)},
      {"top_story", "I64", {f, k}, bytes_of(top_story)},
      {"top_position", "I64", {f, k}, bytes_of(top_position)},
      {"top_step", "I64", {f, k}, bytes_of(top_step)},
      {"top_tokens", "I32", {f, k, w}, bytes_of(top_tokens)},
      {"top_values", "F32", {f, k, w}, bytes_of(top_values)},
  };
  write_safetensors_raw(path, std::move(tensors), {{kMetadataKey, info.dump()}});
}

namespace {
// The entry `name` with this dtype and shape, its bytes copied into `out` (DataError naming the file).
template <typename T>
std::vector<T> read_exact(const SafetensorsFile& file, const std::string& name, const char* dtype,
                          const std::vector<int64_t>& shape) {
  const SafetensorsEntry& e = file.entry(name);
  if (e.dtype != dtype || e.shape != shape) {
    std::string want = "[";
    for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape[i]);
    throw DataError(cat(file.path(), ": ", name, " should be ", dtype, " ", want, "], got ", printable(e.dtype), " with ",
                        e.shape.size(), " dims"));
  }
  std::vector<T> out(static_cast<size_t>(e.numel()));
  if (!out.empty()) std::memcpy(out.data(), e.data, out.size() * sizeof(T));
  return out;
}

bool is_count(double v) { return std::isfinite(v) && v >= 0 && v == std::floor(v) && v <= 9007199254740992.0; }
}  // namespace

FeatureStats FeatureStats::load(const std::string& path, Device device) {
  SafetensorsFile file = SafetensorsFile::open(path);
  auto fail = [&](const std::string& what) { return DataError(cat(path, ": ", what)); };
  auto meta = file.metadata().find(kMetadataKey);
  if (meta == file.metadata().end()) throw fail("no feature_stats metadata (not a feature statistics file)");
  int64_t f = 0, first_step = 0, last_step = 0, steps = 0, tokens = 0;
  FeatureStatsOptions options;
  bool token_ids = false;
  Json source;
  try {
    const Json info = Json::parse(meta->second);
    if (!info.is_object() || info.at("format").as_string() != kFormat || info.at("version").as_int() != 1)
      throw DataError("unknown format (expected sae-cpp-feature-stats version 1)");
    f = info.at("features").as_int();
    options.k = info.at("k").as_int();
    options.context = info.at("context").as_int();
    const Json& window = info.at("window");
    first_step = window.at("first_step").as_int();
    last_step = window.at("last_step").as_int();
    steps = window.at("steps").as_int();
    tokens = window.at("tokens").as_int();
    token_ids = info.at("token_ids").as_bool();
    if (info.at("histogram_bins").as_int() != kHistogramBins)
      throw DataError(cat("histogram_bins should be ", kHistogramBins));
    source = info.at("source");
    if (!source.is_object()) throw DataError("source must be an object");
  } catch (const DataError& e) {
    throw fail(cat("feature_stats metadata: ", e.what()));
  }
  try {
    check_feature_stats_options(f, options);
  } catch (const UsageError& e) {
    throw fail(cat("feature_stats metadata: ", e.what()));
  }
  if (steps < 0 || tokens < 0 || (steps == 0) != (first_step < 0) || (steps > 0 && last_step < first_step))
    throw fail(cat("window: steps ", steps, ", tokens ", tokens, ", first_step ", first_step, ", last_step ", last_step,
                   " do not fit together"));
  const int64_t k = options.k, w = 2 * options.context + 1;
  const std::vector<double> counts = read_exact<double>(file, "counts", "F64", {f});
  const std::vector<double> hist = read_exact<double>(file, "histogram", "F64", {f, kHistogramBins});
  const std::vector<double> edges = read_exact<double>(file, "histogram_edges", "F64", {kHistogramBins + 1});
  const std::vector<int32_t> top_count = read_exact<int32_t>(file, "top_count", "I32", {f});
  const std::vector<float> top_value = read_exact<float>(file, "top_value", "F32", {f, k});
  const std::vector<int64_t> top_story = read_exact<int64_t>(file, "top_story", "I64", {f, k});
  const std::vector<int64_t> top_position = read_exact<int64_t>(file, "top_position", "I64", {f, k});
  const std::vector<int64_t> top_step = read_exact<int64_t>(file, "top_step", "I64", {f, k});
  const std::vector<int32_t> top_tokens = read_exact<int32_t>(file, "top_tokens", "I32", {f, k, w});
  const std::vector<float> top_values = read_exact<float>(file, "top_values", "F32", {f, k, w});
  for (int b = 0; b <= kHistogramBins; ++b)
    if (edges[b] != (b == kHistogramBins ? std::numeric_limits<double>::infinity() : histogram_lower_edge(b)))
      throw fail(cat("histogram_edges[", b, "] is ", edges[b], ", not this program's bins"));
  for (int64_t i = 0; i < f; ++i) {
    double sum = 0;
    for (int b = 0; b < kHistogramBins; ++b) {
      const double v = hist[i * kHistogramBins + b];
      if (!is_count(v)) throw fail(cat("histogram[", i, ", ", b, "] is ", v, ", not a count"));
      sum += v;
    }
    if (!is_count(counts[i]) || counts[i] != sum || counts[i] > double(tokens))
      throw fail(cat("counts[", i, "] is ", counts[i], ": it must be the histogram's row sum (", sum,
                     ") and at most the window's ", tokens, " tokens"));
    if (top_count[i] < 0 || top_count[i] > k) throw fail(cat("top_count[", i, "] is ", top_count[i], ", not in [0, ", k, "]"));
    for (int32_t r = 0; r < top_count[i]; ++r) {
      const int64_t e = i * k + r;
      const float v = top_value[e];
      if (!std::isfinite(v) || !(v > 0) || (r > 0 && v > top_value[e - 1]))
        throw fail(cat("top_value[", i, ", ", r, "] is ", v, ": values must be positive and in decreasing order"));
      if (top_story[e] < -1 || top_position[e] < -1 || (top_story[e] >= 0 && top_position[e] < 0))
        throw fail(cat("top_story/top_position[", i, ", ", r, "] are ", top_story[e], ", ", top_position[e]));
      if (top_step[e] < first_step || top_step[e] > last_step)
        throw fail(cat("top_step[", i, ", ", r, "] is ", top_step[e], ", outside the window's steps ", first_step, " to ",
                       last_step));
      for (int32_t q = 0; q < r; ++q)
        if (top_story[e] >= 0 && top_story[i * k + q] == top_story[e])
          throw fail(cat("feature ", i, " lists story ", top_story[e], " twice"));
      for (int64_t o = 0; o < w; ++o) {
        const int32_t id = top_tokens[e * w + o];
        const float a = top_values[e * w + o];
        if (id < -2) throw fail(cat("top_tokens[", i, ", ", r, ", ", o, "] is ", id, " (ids are >= 0, -1: no token, -2: id not known)"));
        if (!std::isnan(a) && !(std::isfinite(a) && a >= 0))
          throw fail(cat("top_values[", i, ", ", r, ", ", o, "] is ", a, " (activations are >= 0, or NaN: not known)"));
      }
    }
  }

  FeatureStats s(f, options, device);
  s.tokens_ = tokens;
  s.steps_ = steps;
  s.first_step_ = first_step;
  s.last_step_ = last_step;
  s.has_token_ids_ = token_ids;
  s.source_ = source;
  for (int64_t i = 0; i < f; ++i) {
    s.count_[i] = top_count[i];
    for (int32_t r = 0; r < top_count[i]; ++r) {
      const int64_t e = i * k + r;  // rank r lives in slot r
      s.value_[e] = top_value[e];
      s.slot_[e] = r;
      s.key_[e] = top_story[e] >= 0 ? top_story[e] : s.unknown_key_--;
      s.story_[e] = top_story[e];
      s.position_[e] = top_position[e];
      s.step_[e] = top_step[e];
      std::memcpy(&s.tokens_at_[e * w], &top_tokens[e * w], sizeof(int32_t) * w);
      std::memcpy(&s.values_at_[e * w], &top_values[e * w], sizeof(float) * w);
    }
    s.touched_[i] = 1;
  }
  upload(s.buffers_->histogram, hist.data(), sizeof(double) * hist.size());
  s.upload_thresholds();
  return s;
}

}  // namespace sae
