// FeatureStats (see feature_stats.h): the per-batch scan and merge, and feature_stats.safetensors.
#include "sae/train/feature_stats.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <type_traits>
#include <limits>
#include <map>
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
constexpr int64_t kMaxK = kMaxTopK, kMaxContext = 256;
constexpr double kMaxListBytes = 8.0 * (int64_t(1) << 30);
const float kNaN = std::numeric_limits<float>::quiet_NaN();

// Copies host values into a device (or host) tensor of the same element size.
void upload(Tensor& to, const void* from, size_t bytes) {
  if (bytes == 0) return;
  if (to.device() == Device::CPU)
    std::memcpy(to.raw(), from, bytes);
  else
    cuda_copy_to_device(to.raw(), from, bytes);
}

Tensor zero_i32(const Shape& shape, Device device) {
  Tensor t = Tensor::empty(shape, DType::I32, Device::CPU);
  if (t.nbytes() > 0) std::memset(t.raw(), 0, t.nbytes());
  return t.to(device);
}

}  // namespace

namespace {
// Per list entry: value, key, slot, story, position, step, pending row (44 bytes) and the scan's
// candidate value, row and group (12); W token ids and values.
double list_bytes(int64_t features, const FeatureStatsOptions& options) {
  return double(features) * double(options.k) * (56.0 + 8.0 * double(2 * options.context + 1));
}
}  // namespace

double feature_stats_bytes(int64_t features, const FeatureStatsOptions& options) {
  // Besides the lists, per feature: the histogram's kHistogramBins float64 counts, the list's count
  // and threshold and the candidates' count (12 bytes).
  return list_bytes(features, options) + double(features) * (8.0 * kHistogramBins + 12.0);
}

void check_feature_stats_options(int64_t features, const FeatureStatsOptions& options, const char* k_option,
                                 const char* context_option) {
  if (options.k < 1 || options.k > kMaxK)
    throw UsageError(cat(k_option, " must be in [1, ", kMaxK, "], got ", options.k));
  if (options.context < 0 || options.context > kMaxContext)
    throw UsageError(cat(context_option, " must be in [0, ", kMaxContext, "], got ", options.context));
  if (features < 1) throw UsageError(cat("feature statistics: need at least one feature, got ", features));
  const double bytes = list_bytes(features, options);
  if (bytes > kMaxListBytes)
    throw UsageError(cat(k_option, " ", options.k, " and ", context_option, " ", options.context, " for ",
                         features, " features need ", bytes / double(int64_t(1) << 30),
                         " GiB of lists (at most 8): lower them"));
}

struct FeatureStats::Buffers {
  FeatureTopLists lists;         // on the device
  FeatureCandidates candidates;  // on the device
  Tensor histogram;              // [F, kHistogramBins] f64, on the device
  // The batch's groups and rows (story, position, tokens), built on the host and copied to the
  // device tensors (grown as needed, kept from batch to batch).
  std::vector<int32_t> groups;
  std::vector<int32_t> row_tokens;
  std::unordered_map<int64_t, int32_t> group_of_story;
  Tensor group, story, position, tokens;
};

namespace {
// The first n rows of `buffer` ([n] or [n, width]; re-made larger when it is too small).
Tensor first_rows(Tensor& buffer, int64_t n, int64_t width, DType dtype, Device device) {
  if (!buffer.defined() || buffer.size(0) < n) {
    const int64_t rows = std::max<int64_t>(n, 1024);
    buffer = Tensor::empty(width > 0 ? Shape{rows, width} : Shape{rows}, dtype, device);
  }
  return buffer.slice_rows(0, n);
}

// Bytes [offset, offset + bytes) of a tensor, copied to the host.
void download_part(void* to, const Tensor& from, size_t offset, size_t bytes) {
  if (bytes == 0) return;
  HostWorkCounter::note_read();
  const char* start = static_cast<const char*>(from.raw()) + offset;
  if (from.device() == Device::CPU)
    std::memcpy(to, start, bytes);
  else
    cuda_copy_to_host(to, start, bytes);
}

template <typename T>
std::vector<T> host_copy(const Tensor& t) {
  std::vector<T> out(t.nbytes() / sizeof(T));
  download_part(out.data(), t, 0, t.nbytes());
  return out;
}

// A tensor's elements on the host: its own memory on the CPU, a copy from a GPU. (At 2^20 features
// the lists are gigabytes: save reads the CPU's in place.)
template <typename T>
class HostElements {
 public:
  explicit HostElements(const Tensor& t) {
    if (t.device() == Device::CPU) {
      data_ = static_cast<const T*>(t.raw());
    } else {
      copy_ = host_copy<T>(t);
      data_ = copy_.data();
    }
  }
  const T& operator[](int64_t i) const { return data_[i]; }
  const T* at(int64_t i) const { return data_ + i; }

 private:
  std::vector<T> copy_;
  const T* data_ = nullptr;
};

// n elements of T, each `fill` until set, kept as the bytes a safetensors file holds (handed over
// without another copy).
template <typename T>
class TensorBytes {
 public:
  TensorBytes(int64_t n, T fill) : bytes_(static_cast<size_t>(n) * sizeof(T), '\0') {
    for (int64_t i = 0; i < n; ++i) set(i, fill);
  }
  void set(int64_t i, const T& v) { std::memcpy(&bytes_[static_cast<size_t>(i) * sizeof(T)], &v, sizeof(T)); }
  void set(int64_t i, const T* v, int64_t count) {
    std::memcpy(&bytes_[static_cast<size_t>(i) * sizeof(T)], v, sizeof(T) * static_cast<size_t>(count));
  }
  std::string take() { return std::move(bytes_); }

 private:
  std::string bytes_;
};

template <typename T>
T host_at(const Tensor& t, int64_t index) {
  T v;
  download_part(&v, t, sizeof(T) * index, sizeof(T));
  return v;
}

}  // namespace

FeatureStats::FeatureStats(int64_t features, const FeatureStatsOptions& options, Device device)
    : features_(features), options_(options), device_(device), source_(Json::object()) {
  check_feature_stats_options(features, options);
  const int64_t k = options.k;
  buffers_ = std::make_unique<Buffers>();
  Buffers& b = *buffers_;
  b.lists = empty_top_lists(features, k, options.context, device);
  const Shape fk{features, k};
  b.candidates.values = Tensor::zeros(fk, DType::F32, device);
  b.candidates.rows = zero_i32(fk, device);
  b.candidates.groups = zero_i32(fk, device);
  b.candidates.count = zero_i32(Shape{features}, device);
  b.histogram = Tensor::zeros(Shape{features, kHistogramBins}, DType::F64, device);
}

FeatureStats FeatureStats::on_host() const {
  check_lists();
  FeatureStats h(features_, options_, Device::CPU);
  h.tokens_ = tokens_;
  h.steps_ = steps_;
  h.first_step_ = first_step_;
  h.last_step_ = last_step_;
  h.has_token_ids_ = has_token_ids_;
  h.source_ = source_;
  h.unknown_key_ = unknown_key_;
  const FeatureTopLists& from = buffers_->lists;
  FeatureTopLists& to = h.buffers_->lists;
  for (const auto& [mine, theirs] :
       {std::pair<const Tensor*, Tensor*>{&from.value, &to.value}, {&from.key, &to.key}, {&from.slot, &to.slot},
        {&from.count, &to.count}, {&from.threshold, &to.threshold}, {&from.story, &to.story},
        {&from.position, &to.position}, {&from.step, &to.step}, {&from.pending_row, &to.pending_row},
        {&from.tokens, &to.tokens}, {&from.values, &to.values}, {&from.error, &to.error},
        {&buffers_->histogram, &h.buffers_->histogram}})
    if (mine->defined()) *theirs = mine->device() == Device::CPU ? mine->clone() : mine->to(Device::CPU);
  return h;
}

FeatureStats::~FeatureStats() = default;
FeatureStats::FeatureStats(FeatureStats&&) noexcept = default;
FeatureStats& FeatureStats::operator=(FeatureStats&&) noexcept = default;

void FeatureStats::add(const StepFeatures& batch, const BatchOrigins& origins, int64_t step, bool new_step) {
  const int64_t n = batch.tokens;
  if (n <= 0) return;
  const Tensor& like = batch.sparse ? batch.lists.vals : batch.dense;
  const bool bf16_dense = !batch.sparse && like.defined() && like.dtype() == DType::BF16;
  if (!like.defined() || (like.dtype() != DType::F32 && !bf16_dense) || like.device() != device_)
    throw Error(cat("FeatureStats: expects float32 (or dense bf16) features on ", device_name(device_), ", got ",
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
  Tensor group = first_rows(b.group, n, 0, DType::I32, device_);
  upload(group, b.groups.data(), sizeof(int32_t) * n);

  // Where the rows came from, for the merge: origins recorded with a wider radius (another SAE
  // trained on the same batches wants more) give the middle W of each row's ids.
  FeatureStatsRows rows;
  rows.step = step;
  rows.unknown_base = unknown_key_;
  unknown_key_ -= n;
  if (known) {
    const int64_t w = width(), origin_width = origins.width(), shift = origins.radius - options_.context;
    b.row_tokens.resize(static_cast<size_t>(n * w));
    for (int64_t r = 0; r < n; ++r)
      std::memcpy(&b.row_tokens[r * w], &origins.context[r * origin_width + shift], sizeof(int32_t) * w);
    rows.story = first_rows(b.story, n, 0, DType::F64, device_);
    rows.position = first_rows(b.position, n, 0, DType::F64, device_);
    rows.tokens = first_rows(b.tokens, n, w, DType::I32, device_);
    upload(rows.story, origins.story.data(), sizeof(int64_t) * n);
    upload(rows.position, origins.position.data(), sizeof(int64_t) * n);
    upload(rows.tokens, b.row_tokens.data(), sizeof(int32_t) * n * w);
  }

  if (batch.sparse) {
    feature_stats_scan_sparse_(b.candidates, b.histogram, batch.lists, n, b.lists.threshold, group);
    feature_stats_merge_sparse_(b.lists, b.candidates, rows, batch.lists, n);
  } else {
    feature_stats_scan_(b.candidates, b.histogram, batch.dense, b.lists.threshold, group);
    feature_stats_merge_(b.lists, b.candidates, rows, batch.dense);
  }
  if (device_ == Device::CPU) check_lists();  // on a GPU: when the lists are read (no wait per step)
  tokens_ += n;
  if (new_step || steps_ == 0) ++steps_;
  if (first_step_ < 0) first_step_ = step;
  last_step_ = step;
  has_token_ids_ = has_token_ids_ || (known && origins.has_token_ids);
}

void FeatureStats::check_lists() const {
  const int32_t error = host_at<int32_t>(buffers_->lists.error, 0);
  if (error & kStatsBadRow) throw Error("FeatureStats: a candidate row outside its batch");
  if (error & kStatsNoSlot) throw Error("FeatureStats: no free slot (a broken list)");
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
  return host_at<int32_t>(buffers_->lists.count, feature);
}

FeatureTop FeatureStats::top(int64_t feature, int64_t rank) const {
  if (rank < 0 || rank >= top_count(feature)) throw Error(cat("FeatureStats: feature ", feature, " has no rank ", rank));
  check_lists();
  const FeatureTopLists& l = buffers_->lists;
  const int64_t k = options_.k, w = width(), r = feature * k + rank;
  const int64_t p = feature * k + host_at<int32_t>(l.slot, r);
  FeatureTop t;
  t.value = host_at<float>(l.value, r);
  t.story = host_at<int64_t>(l.story, p);
  t.position = host_at<int64_t>(l.position, p);
  t.step = host_at<int64_t>(l.step, p);
  t.tokens.resize(static_cast<size_t>(w));
  t.values.resize(static_cast<size_t>(w));
  download_part(t.tokens.data(), l.tokens, sizeof(int32_t) * p * w, sizeof(int32_t) * w);
  download_part(t.values.data(), l.values, sizeof(float) * p * w, sizeof(float) * w);
  return t;
}

// ---------------------------------------------------------------- the file

void FeatureStats::save(const std::string& path) const {
  const int64_t f = features_, k = options_.k, w = width();
  check_lists();
  // Each tensor is written when the file reaches it, from the lists in rank order (slots hold them in
  // the order they came), 65536 features at a time: at 2^20 features an [F, K, W] tensor is 713 MB,
  // a block of it 45 MB. The histogram goes from its own storage on the CPU.
  const FeatureTopLists& l = buffers_->lists;
  const HostElements<int32_t> count(l.count), slot(l.slot);
  const int64_t block = int64_t{1} << 16;
  // The bytes of an [F, K] (or [F, K, W] with `width` W) tensor, a block of features at a time:
  // element r = i K + rank (rank `rank` of feature i) from `at(bytes, r - first K, r, p)` with p its
  // slot's index, `fill` where the list is shorter.
  auto by_rank = [&](const SafetensorsSink& write, auto fill, int64_t width, const auto& at) {
    using T = decltype(fill);
    for (int64_t first = 0; first < f; first += block) {
      const int64_t end = std::min(f, first + block);
      TensorBytes<T> bytes((end - first) * k * width, fill);
      for (int64_t i = first; i < end; ++i)
        for (int32_t rank = 0; rank < count[i]; ++rank) {
          const int64_t r = i * k + rank, p = i * k + slot[r];
          at(bytes, r - first * k, r, p);
        }
      const std::string piece = bytes.take();
      write(piece.data(), piece.size());
    }
  };
  std::vector<double> edges(kHistogramBins + 1);
  for (int b = 0; b < kHistogramBins; ++b) edges[b] = histogram_lower_edge(b);
  edges[kHistogramBins] = std::numeric_limits<double>::infinity();
  const HostElements<double> histogram(buffers_->histogram);  // the tensor's own bytes on the CPU
  // Each tensor once: its name, dtype, shape and how its bytes are written when the file reaches it.
  struct Part {
    SafetensorsSpec spec;
    std::function<void(const SafetensorsSink&)> write;
  };
  auto slot_list = [&](const Tensor& by_slot) {  // an [F, K] int64 list kept by slot
    return [&by_slot, &by_rank](const SafetensorsSink& write) {
      const HostElements<int64_t> list(by_slot);
      by_rank(write, int64_t(-1), 1, [&](TensorBytes<int64_t>& b, int64_t at, int64_t, int64_t p) { b.set(at, list[p]); });
    };
  };
  const std::vector<Part> parts = {
      {{"counts", "F64", {f}},
       [&](const SafetensorsSink& write) {
         std::vector<double> sums(static_cast<size_t>(f), 0.0);
         for (int64_t i = 0; i < f; ++i)
           for (int b = 0; b < kHistogramBins; ++b) sums[i] += histogram[i * kHistogramBins + b];
         write(sums.data(), sizeof(double) * sums.size());
       }},
      {{"histogram", "F64", {f, kHistogramBins}},
       [&](const SafetensorsSink& write) { write(histogram.at(0), sizeof(double) * f * kHistogramBins); }},
      {{"histogram_edges", "F64", {kHistogramBins + 1}},
       [&](const SafetensorsSink& write) { write(edges.data(), sizeof(double) * edges.size()); }},
      {{"top_count", "I32", {f}}, [&](const SafetensorsSink& write) { write(count.at(0), sizeof(int32_t) * f); }},
      {{"top_value", "F32", {f, k}},
       [&](const SafetensorsSink& write) {
         const HostElements<float> value(l.value);  // by rank already
         by_rank(write, 0.0f, 1, [&](TensorBytes<float>& b, int64_t at, int64_t r, int64_t) { b.set(at, value[r]); });
       }},
      {{"top_story", "I64", {f, k}}, slot_list(l.story)},
      {{"top_position", "I64", {f, k}}, slot_list(l.position)},
      {{"top_step", "I64", {f, k}}, slot_list(l.step)},
      {{"top_tokens", "I32", {f, k, w}},
       [&](const SafetensorsSink& write) {
         const HostElements<int32_t> tokens(l.tokens);
         by_rank(write, int32_t(-1), w,
                 [&](TensorBytes<int32_t>& b, int64_t at, int64_t, int64_t p) { b.set(at * w, tokens.at(p * w), w); });
       }},
      {{"top_values", "F32", {f, k, w}},
       [&](const SafetensorsSink& write) {
         const HostElements<float> values(l.values);
         by_rank(write, kNaN, w,
                 [&](TensorBytes<float>& b, int64_t at, int64_t, int64_t p) { b.set(at * w, values.at(p * w), w); });
       }},
  };

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
  std::vector<SafetensorsSpec> specs;
  std::map<std::string, const Part*> by_name;
  for (const Part& part : parts) {
    specs.push_back(part.spec);
    by_name[part.spec.name] = &part;
  }
  write_safetensors_streamed(path, specs, {{kMetadataKey, info.dump()}},
                             [&](const std::string& name, const SafetensorsSink& write) { by_name.at(name)->write(write); });
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
  // The copy is what is read from here on: the mapped pages leave this process (gigabytes at 2^20).
  file.mapping().release_pages(static_cast<size_t>(static_cast<const uint8_t*>(e.data) - file.mapping().data()), e.bytes);
  return out;
}

// Host values copied into `to` (a tensor of the same bytes, on any device); the vector is freed.
template <typename T>
void move_into(Tensor& to, std::vector<T>& from) {
  if (to.nbytes() != from.size() * sizeof(T))
    throw Error(cat("FeatureStats::load: ", from.size() * sizeof(T), " bytes for a tensor of ", to.nbytes()));
  upload(to, from.data(), to.nbytes());
  std::vector<T>().swap(from);
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
  std::vector<int32_t> top_count = read_exact<int32_t>(file, "top_count", "I32", {f});
  std::vector<float> top_value = read_exact<float>(file, "top_value", "F32", {f, k});
  std::vector<int64_t> top_story = read_exact<int64_t>(file, "top_story", "I64", {f, k});
  std::vector<int64_t> top_position = read_exact<int64_t>(file, "top_position", "I64", {f, k});
  std::vector<int64_t> top_step = read_exact<int64_t>(file, "top_step", "I64", {f, k});
  std::vector<int32_t> top_tokens = read_exact<int32_t>(file, "top_tokens", "I32", {f, k, w});
  std::vector<float> top_values = read_exact<float>(file, "top_values", "F32", {f, k, w});
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
  // The lists with rank r in slot r; entries past a list's count as a new list's. The arrays read
  // become the lists in place, each freed once copied into its tensor: at 2^20 features they are
  // gigabytes, held once beside the statistics' own buffers.
  const int64_t entries = f * k;
  std::vector<float> threshold(static_cast<size_t>(f), 0.0f);
  std::vector<int64_t> key(static_cast<size_t>(entries), 0);
  std::vector<int32_t> slot(static_cast<size_t>(entries), -1);
  for (int64_t i = 0; i < f; ++i) {
    for (int32_t r = 0; r < k; ++r) {
      const int64_t e = i * k + r;
      if (r < top_count[i]) {
        slot[e] = r;
        key[e] = top_entry_key(top_story[e], top_position[e], top_story[e] < 0 && top_position[e] < 0 ? s.unknown_key_-- : 0);
        continue;
      }
      top_value[e] = 0.0f;
      top_story[e] = top_position[e] = top_step[e] = -1;
      std::fill_n(&top_tokens[e * w], w, -1);
      std::fill_n(&top_values[e * w], w, kNaN);
    }
    threshold[i] = top_count[i] == k ? top_value[i * k + k - 1] : 0.0f;
  }
  FeatureTopLists& l = s.buffers_->lists;
  move_into(l.value, top_value);
  move_into(l.key, key);
  move_into(l.slot, slot);
  move_into(l.count, top_count);
  move_into(l.threshold, threshold);
  move_into(l.story, top_story);
  move_into(l.position, top_position);
  move_into(l.step, top_step);
  move_into(l.tokens, top_tokens);
  move_into(l.values, top_values);
  upload(s.buffers_->histogram, hist.data(), sizeof(double) * hist.size());
  return s;
}

}  // namespace sae
