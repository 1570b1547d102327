// SyntheticSource: see synthetic.h for the generative model.
#include "sae/data/synthetic.h"

#include <algorithm>
#include <cmath>

#include "tensor/cuda/backend.h"
#include "tensor/rng.h"
#if defined(SAE_WITH_CUDA)
#include "sae/data/cuda_data.h"
#endif

namespace sae {

namespace {
// Independent seeds for (seed, a, b) triples: splitmix-style mixing.
uint64_t mix(uint64_t seed, uint64_t a, uint64_t b = 0) {
  uint64_t z = seed ^ (a * 0x9E3779B97F4A7C15ull) ^ (b * 0xC2B2AE3D27D4EB4Full) ^ 0x5851F42D4C957F2Dull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

constexpr uint64_t kStreamConcepts = 1, kStreamLengths = 2, kStreamStory = 3, kStreamToken = 4;

// Number of events of a Poisson(mean) draw (Knuth's method; mean is tens at most here).
int64_t poisson(Rng& rng, double mean) {
  const double limit = std::exp(-mean);
  int64_t k = 0;
  double p = rng.uniform();
  while (p > limit) {
    ++k;
    p *= rng.uniform();
  }
  return k;
}
}  // namespace

Json SyntheticOptions::to_json() const {
  Json j = Json::object();
  j["d"] = d;
  j["concepts"] = concepts;
  j["story_concepts"] = story_concepts;
  j["stories"] = stories;
  j["mean_length"] = mean_length;
  j["active"] = active;
  j["story_active"] = story_active;
  j["story_presence"] = story_presence;
  j["zipf"] = zipf;
  j["magnitude"] = magnitude;
  j["mean_norm"] = mean_norm;
  j["noise"] = noise;
  j["seed"] = static_cast<int64_t>(seed);
  return j;
}

void SyntheticOptions::validate() const {
  auto require = [](bool ok, const std::string& what) {
    if (!ok) throw UsageError("synthetic data: " + what);
  };
  require(d >= 1 && d <= 1000000, cat("--synthetic-d must be in [1, 1e6], got ", d));
  require(concepts >= 1, cat("--synthetic-concepts must be >= 1, got ", concepts));
  // The concept matrix holds concepts x d floats; the bound (4 GB) also keeps its size in int64.
  require(concepts <= (int64_t(1) << 30) / d,
          cat("--synthetic-concepts x --synthetic-d must be at most 2^30 (a 4 GB concept matrix), got ", concepts, " x ", d));
  require(story_concepts >= 0 && story_concepts < concepts,
          cat("--synthetic-story-concepts must be in [0, concepts), got ", story_concepts));
  require(story_active >= 0 && story_active <= story_concepts,
          cat("--synthetic-story-active must be in [0, story concepts], got ", story_active));
  // One int64 offset per story is kept (800 MB at the bound); token indices stay far inside int64.
  require(stories >= 1 && stories <= 100000000, cat("--synthetic-stories must be in [1, 1e8], got ", stories));
  require(mean_length >= 4 && mean_length <= 1e5, cat("--synthetic-mean-length must be in [4, 1e5], got ", mean_length));
  require(active >= 0 && active <= 1000, cat("--synthetic-active must be in [0, 1000], got ", active));
  require(story_presence >= 0 && story_presence <= 1, cat("--synthetic-story-presence must be in [0, 1], got ", story_presence));
  require(zipf >= 0 && zipf <= 10, cat("--synthetic-zipf must be in [0, 10], got ", zipf));
  // Activations are float32 and their squares are summed: larger scales would generate Inf.
  require(magnitude > 0 && magnitude <= 1e6, cat("--synthetic-magnitude must be in (0, 1e6], got ", magnitude));
  require(mean_norm >= 0 && mean_norm <= 1e6, cat("--synthetic-mean-norm must be in [0, 1e6], got ", mean_norm));
  require(noise >= 0 && noise <= 1e6, cat("--synthetic-noise must be in [0, 1e6], got ", noise));
}

SyntheticSource::SyntheticSource(const SyntheticOptions& options) : opt_(options) {
  opt_.validate();
  // Concepts: Gaussian directions, normalised.
  Rng rng(mix(opt_.seed, kStreamConcepts));
  concepts_ = Tensor::empty(Shape{opt_.concepts, opt_.d});
  float* c = concepts_.data<float>();
  for (int64_t k = 0; k < opt_.concepts; ++k) {
    double norm = 0;
    for (int64_t j = 0; j < opt_.d; ++j) {
      const double v = rng.normal();
      c[k * opt_.d + j] = static_cast<float>(v);
      norm += v * v;
    }
    for (int64_t j = 0; j < opt_.d; ++j) c[k * opt_.d + j] = static_cast<float>(c[k * opt_.d + j] / std::sqrt(norm));
  }
  mean_.resize(opt_.d);
  double mean_sq = 0;
  for (int64_t j = 0; j < opt_.d; ++j) {
    mean_[j] = static_cast<float>(rng.normal());
    mean_sq += double(mean_[j]) * mean_[j];
  }
  for (float& m : mean_) m = static_cast<float>(m * opt_.mean_norm / std::sqrt(std::max(mean_sq, 1e-30)));
  // Token-level concept frequencies: a power law over their index.
  const int64_t token_concepts = opt_.concepts - opt_.story_concepts;
  token_cdf_.resize(token_concepts);
  double total = 0;
  for (int64_t k = 0; k < token_concepts; ++k) token_cdf_[k] = total += std::pow(double(k + 1), -opt_.zipf);
  for (double& w : token_cdf_) w /= total;
  // Story lengths.
  Rng lengths(mix(opt_.seed, kStreamLengths));
  const int64_t lo = std::max<int64_t>(1, std::llround(opt_.mean_length / 4));
  const int64_t hi = std::max<int64_t>(lo, std::llround(opt_.mean_length * 7 / 4));
  story_offsets_.resize(opt_.stories + 1);
  story_offsets_[0] = 0;
  for (int64_t s = 0; s < opt_.stories; ++s)
    story_offsets_[s + 1] = story_offsets_[s] + lo + static_cast<int64_t>(lengths.below(hi - lo + 1));
}

int64_t SyntheticSource::story_of_token(int64_t token) const {
  auto it = std::upper_bound(story_offsets_.begin(), story_offsets_.end(), token);
  return static_cast<int64_t>(it - story_offsets_.begin()) - 1;
}

std::vector<int64_t> SyntheticSource::story_concept_ids(int64_t story) const {
  Rng rng(mix(opt_.seed, kStreamStory, story));
  std::vector<int64_t> ids;
  while (static_cast<int64_t>(ids.size()) < opt_.story_active) {
    const int64_t k = static_cast<int64_t>(rng.below(opt_.story_concepts));
    if (std::find(ids.begin(), ids.end(), k) == ids.end()) ids.push_back(k);
  }
  return ids;
}

void SyntheticSource::generate_token(int64_t story, int64_t position, const std::vector<int64_t>& story_concepts,
                                     float* out) const {
  Rng rng(mix(opt_.seed, kStreamToken, static_cast<uint64_t>(story_offsets_[story] + position)));
  const int64_t d = opt_.d;
  const float* c = concepts_.data<float>();
  // Noise: both outputs of each Box-Muller draw.
  for (int64_t j = 0; j < d; j += 2) {
    double u1 = rng.uniform();
    while (u1 <= 0.0) u1 = rng.uniform();
    const double radius = opt_.noise * std::sqrt(-2.0 * std::log(u1)), angle = 2.0 * M_PI * rng.uniform();
    out[j] = mean_[j] + static_cast<float>(radius * std::cos(angle));
    if (j + 1 < d) out[j + 1] = mean_[j + 1] + static_cast<float>(radius * std::sin(angle));
  }
  auto add_concept = [&](int64_t k) {
    const float magnitude = static_cast<float>(opt_.magnitude * rng.uniform(0.5, 1.5));
    const float* row = c + k * d;
    for (int64_t j = 0; j < d; ++j) out[j] += magnitude * row[j];
  };
  for (int64_t k : story_concepts)
    if (rng.uniform() < opt_.story_presence) add_concept(k);
  const int64_t draws = token_cdf_.empty() ? 0 : poisson(rng, opt_.active);
  for (int64_t i = 0; i < draws; ++i) {
    const double u = rng.uniform();
    const int64_t k = std::lower_bound(token_cdf_.begin(), token_cdf_.end(), u) - token_cdf_.begin();
    add_concept(opt_.story_concepts + std::min<int64_t>(k, static_cast<int64_t>(token_cdf_.size()) - 1));
  }
}

void SyntheticSource::read_tokens(int64_t begin, int64_t count, float* out) {
  if (begin < 0 || count < 0 || begin + count > num_tokens())
    throw Error(cat("synthetic data: tokens [", begin, ", ", begin + count, ") out of range (", num_tokens(), ")"));
  int64_t t = begin;
  while (t < begin + count) {
    const int64_t story = story_of_token(t);
    const int64_t end = std::min(begin + count, story_offsets_[story + 1]);
    const std::vector<int64_t> ids = story_concept_ids(story);
#pragma omp parallel for schedule(static) if (end - t >= 16)
    for (int64_t u = t; u < end; ++u) generate_token(story, u - story_offsets_[story], ids, out + (u - begin) * opt_.d);
    t = end;
  }
}

void SyntheticSource::read_token_list(const std::vector<int64_t>& tokens, float* out) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= num_tokens())
      throw Error(cat("synthetic data: token ", tokens[i], " out of range (", num_tokens(), ")"));
#pragma omp parallel for schedule(static) if (n >= 16)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t story = story_of_token(tokens[i]);
    generate_token(story, tokens[i] - story_offsets_[story], story_concept_ids(story), out + i * opt_.d);
  }
}

SyntheticTokenSettings SyntheticSource::token_settings() const {
  SyntheticTokenSettings t;
  t.seed = opt_.seed;
  t.d = opt_.d;
  t.story_concepts = opt_.story_concepts;
  t.story_active = opt_.story_active;
  t.token_concepts = opt_.concepts - opt_.story_concepts;
  t.noise = opt_.noise;
  t.story_presence = opt_.story_presence;
  t.magnitude = opt_.magnitude;
  t.poisson_limit = std::exp(-opt_.active);
  return t;
}

void SyntheticSource::generate_token_split(int64_t token, float* out) const {
  const SyntheticTokenSettings t = token_settings();
  const int64_t d = opt_.d, story = story_of_token(token);
  std::vector<int64_t> story_ids(static_cast<size_t>(std::max<int64_t>(t.story_active, 1)));
  if (t.story_active > 0) synthetic_story_concept_ids(t.seed, story, t.story_concepts, t.story_active, story_ids.data());
  SyntheticRng rng(synthetic_mix(t.seed, kSyntheticStreamToken, static_cast<uint64_t>(token)));
  for (int64_t j = 0; j < d; j += 2) {
    double u1, u2, first, second;
    synthetic_noise_draw(rng, u1, u2);
    synthetic_noise_values(t.noise, u1, u2, first, second);
    out[j] = mean_[j] + static_cast<float>(first);
    if (j + 1 < d) out[j + 1] = mean_[j + 1] + static_cast<float>(second);
  }
  const float* c = concepts_.data<float>();
  SyntheticConceptDraws draws;
  int64_t concept_index = 0;
  float magnitude = 0;
  while (draws.next(rng, t, story_ids.data(), token_cdf_.data(), concept_index, magnitude))
    for (int64_t j = 0; j < d; ++j) out[j] += magnitude * c[concept_index * d + j];
}

#if defined(SAE_WITH_CUDA)
namespace {
// Device memory of the generator's tables (cuda_alloc), given back with the source.
struct DeviceBytes {
  void* ptr = nullptr;
  DeviceBytes() = default;
  DeviceBytes(const void* host, size_t bytes) : ptr(cuda_alloc(std::max<size_t>(bytes, 1))) {
    if (bytes > 0) cuda_copy_to_device(ptr, host, bytes);
  }
  ~DeviceBytes() { cuda_free(ptr); }
  DeviceBytes(const DeviceBytes&) = delete;
  DeviceBytes& operator=(const DeviceBytes&) = delete;
};
}  // namespace
struct SyntheticSource::DeviceTables {
  DeviceBytes concepts, mean, cdf, offsets;
  std::unique_ptr<DeviceBytes> tokens;  // the token list of a batch that is not one story's run
  size_t token_room = 0;
  DeviceTables(const SyntheticSource& s)
      : concepts(s.concepts_.data<float>(), s.concepts_.nbytes()),
        mean(s.mean_.data(), s.mean_.size() * sizeof(float)),
        cdf(s.token_cdf_.data(), s.token_cdf_.size() * sizeof(double)),
        offsets(s.story_offsets_.data(), s.story_offsets_.size() * sizeof(int64_t)) {}
};
#else
struct SyntheticSource::DeviceTables {};
#endif

bool SyntheticSource::generates_on(Device device) const {
  if (device == Device::CPU) return true;
#if defined(SAE_WITH_CUDA)
  return cuda_available() && opt_.story_active <= kSyntheticDeviceMaxStoryActive;
#else
  return false;
#endif
}

void SyntheticSource::generate_on(const std::vector<int64_t>& tokens, Tensor& out) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (out.ndim() != 2 || out.size(0) != n || out.size(1) != opt_.d || out.dtype() != DType::F32)
    throw Error(cat("synthetic data: generate_on into ", out.describe(), " for ", n, " tokens of width ", opt_.d));
  for (int64_t token : tokens)
    if (token < 0 || token >= num_tokens())
      throw Error(cat("synthetic data: token ", token, " out of range (", num_tokens(), ")"));
  if (!generates_on(out.device())) throw Error(cat("synthetic data: cannot make tokens on ", device_name(out.device())));
  if (out.device() == Device::CPU) {
    float* o = out.data<float>();
#pragma omp parallel for schedule(static) if (n >= 16)
    for (int64_t i = 0; i < n; ++i) generate_token_split(tokens[i], o + i * opt_.d);
    return;
  }
#if defined(SAE_WITH_CUDA)
  if (!device_) device_ = std::make_shared<DeviceTables>(*this);
  SyntheticDeviceTables tables;
  tables.concepts = static_cast<const float*>(device_->concepts.ptr);
  tables.mean = static_cast<const float*>(device_->mean.ptr);
  tables.token_cdf = static_cast<const double*>(device_->cdf.ptr);
  tables.story_offsets = static_cast<const int64_t*>(device_->offsets.ptr);
  tables.stories = opt_.stories;
  if (n == 0) return;
  // One story's consecutive tokens (story batches) need no token list on the device.
  const int64_t story = story_of_token(tokens[0]);
  bool one_run = tokens.back() < story_offsets_[story + 1];
  for (int64_t i = 1; i < n && one_run; ++i) one_run = tokens[i] == tokens[0] + i;
  if (one_run) {
    synthetic_tokens_cuda(out.data<float>(), n, nullptr, story, tokens[0], token_settings(), tables);
    return;
  }
  const size_t bytes = static_cast<size_t>(n) * sizeof(int64_t);
  if (device_->token_room < bytes) {
    device_->tokens = std::make_unique<DeviceBytes>(tokens.data(), bytes);
    device_->token_room = bytes;
  } else {
    cuda_copy_to_device(device_->tokens->ptr, tokens.data(), bytes);  // pageable: staged before it returns
  }
  synthetic_tokens_cuda(out.data<float>(), n, static_cast<const int64_t*>(device_->tokens->ptr), -1, 0,
                        token_settings(), tables);
#endif
}

Json SyntheticSource::describe() const {
  Json j = Json::object();
  j["kind"] = "synthetic";
  j["generator"] = opt_.to_json();
  j["tokens"] = num_tokens();
  return j;
}

}  // namespace sae
