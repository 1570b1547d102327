// Batcher, RandomPermutation and the normalisations (see batches.h).
#include "sae/data/batches.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <functional>
#include <tuple>

#include "tensor/ops.h"

#if defined(SAE_WITH_CUDA)
#include "sae/data/cuda_data.h"
#endif

namespace sae {

Normalization parse_normalization(const std::string& name) {
  if (name == "story") return Normalization::Story;
  if (name == "dataset") return Normalization::Dataset;
  if (name == "none") return Normalization::None;
  if (name == "layer_norm") return Normalization::LayerNorm;
  if (name == "constant_norm_rescale") return Normalization::NormRescale;
  throw UsageError(cat("--normalize: expected story, dataset, none, layer_norm or constant_norm_rescale, got '",
                       printable(name), "'"));
}

void check_story_normalization(int64_t batch_tokens, Normalization normalization) {
  if (batch_tokens > 0 && normalization == Normalization::Story)
    throw UsageError("--normalize story needs --batch story (per-story statistics); use --normalize dataset or none "
                     "with token batches");
}

const char* normalization_name(Normalization n) {
  switch (n) {
    case Normalization::Story: return "story";
    case Normalization::Dataset: return "dataset";
    case Normalization::LayerNorm: return "layer_norm";
    case Normalization::NormRescale: return "constant_norm_rescale";
    default: return "none";
  }
}

bool per_token(Normalization n) { return n == Normalization::LayerNorm || n == Normalization::NormRescale; }

namespace {
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
}  // namespace

RandomPermutation::RandomPermutation(uint64_t n, uint64_t seed) : n_(n) {
  uint64_t bits = 2;
  while (bits < 64 && (uint64_t(1) << bits) < n) bits += 2;
  half_bits_ = bits / 2;
  half_mask_ = (uint64_t(1) << half_bits_) - 1;
  for (int r = 0; r < 4; ++r) keys_[r] = mix64(seed * 4 + r + 0x9E3779B97F4A7C15ull);
}

uint64_t RandomPermutation::operator()(uint64_t index) const {
  uint64_t x = index;
  do {  // cycle walking: re-encrypt until the value falls inside [0, n)
    uint64_t left = x >> half_bits_, right = x & half_mask_;
    for (int r = 0; r < 4; ++r) {
      const uint64_t next = left ^ (mix64(right ^ keys_[r]) & half_mask_);
      left = right;
      right = next;
    }
    x = (left << half_bits_) | right;
  } while (x >= n_);
  return x;
}

void normalize_batch_on_device(Tensor& rows, Tensor& device_stats, Normalization normalization, double dataset_scale,
                               BatchStats& stats) {
  if (per_token(normalization))
    throw Error(cat("normalize_batch_on_device: ", normalization_name(normalization), " normalises on the host"));
  const int64_t n = rows.size(0), d = rows.size(1), count = n * d;
  stats.norm_shift = 0;
  stats.norm_scale = normalization == Normalization::Dataset ? dataset_scale : 1.0;
  const int mode = normalization == Normalization::Story ? 0 : (normalization == Normalization::Dataset ? 1 : 2);
  if (rows.device() == Device::CPU) {
    float* x = rows.data<float>();
    double* out = device_stats.data<double>();
    double sum = 0;  // normalize_batch's sums, in its order
    for (int64_t i = 0; i < count; ++i) sum += x[i];
    const double mean = count > 0 ? sum / double(count) : 0.0;
    double sq = 0;
    for (int64_t i = 0; i < count; ++i) sq += (x[i] - mean) * (x[i] - mean);
    out[0] = mean;
    out[1] = count > 1 ? std::sqrt(sq / double(count - 1)) : 0.0;
    if (mode == 2 || count == 0) return;
    const float shift = mode == 0 ? static_cast<float>(mean) : 0.0f;
    const float scale = static_cast<float>(mode == 0 ? std::sqrt(double(d)) / out[1] : dataset_scale);
    if (mode == 0 && out[1] > 0 && !std::isfinite(scale))  // as normalize_batch (zero variance: the loss says)
      throw DataError(cat("a story's activations have std ", out[1], ": its scale sqrt(d) / std is outside float32's "
                          "range (activations that small: multiply them by a constant first)"));
    for (int64_t i = 0; i < count; ++i) x[i] = (x[i] - shift) * scale;
    return;
  }
#if defined(SAE_WITH_CUDA)
  normalize_rows_cuda(rows.data<float>(), count, d, mode, dataset_scale, device_stats.data<double>());
#else
  throw Error("normalize_batch_on_device: this build has no CUDA support");
#endif
}

void read_device_stats(const Tensor& device_stats, BatchStats& stats) {
  const std::vector<double> v = device_stats.to_vector();
  stats.raw_mean = v[0];
  stats.raw_std = v[1];
}

namespace {
// The per-token normalisations, row by row in double (the rows are known finite): layer_norm's mean
// and unbiased sigma, constant_norm_rescale's norm.
void normalize_tokens(const float* raw, float* normalized, int64_t n, int64_t d, Normalization normalization,
                      const std::function<int64_t(int64_t)>& token_of_row, const std::string& source_name,
                      BatchStats& stats) {
  const bool layer_norm = normalization == Normalization::LayerNorm;
  if (layer_norm && d < 2)
    throw DataError(cat(source_name, ": layer_norm normalises each token by the std of its values, which needs d >= 2 "
                                     "(d is ", d, ")"));
  stats.row_shift.assign(static_cast<size_t>(n), 0.0);
  stats.row_scale.assign(static_cast<size_t>(n), 1.0);
  stats.row_unscale.assign(static_cast<size_t>(n), 1.0);
  for (int64_t r = 0; r < n; ++r) {
    const float* x = raw + r * d;
    double mean = 0, sq = 0;
    if (layer_norm) {
      for (int64_t c = 0; c < d; ++c) mean += x[c];
      mean /= double(d);
      for (int64_t c = 0; c < d; ++c) sq += (x[c] - mean) * (x[c] - mean);
      const double sigma = std::sqrt(sq / double(d - 1));
      stats.row_shift[r] = mean;
      stats.row_scale[r] = 1.0 / (sigma + 1e-5);
      stats.row_unscale[r] = sigma;
    } else {
      for (int64_t c = 0; c < d; ++c) sq += double(x[c]) * double(x[c]);
      const double norm = std::sqrt(sq);
      if (!(norm > 0))
        throw DataError(cat(source_name, ": the activations of token ", token_of_row(r), " are all zero: ",
                            "constant_norm_rescale divides each token by its norm (remove the token from the data: "
                            "a run meets it again on --resume)"));
      stats.row_scale[r] = std::sqrt(double(d)) / norm;
      stats.row_unscale[r] = norm / std::sqrt(double(d));
    }
    for (int64_t c = 0; c < d; ++c)
      normalized[r * d + c] = static_cast<float>((x[c] - stats.row_shift[r]) * stats.row_scale[r]);
  }
}
}  // namespace

BatchStats normalize_batch(const float* raw, float* normalized, int64_t n, int64_t d, Normalization normalization,
                           double dataset_scale, const std::function<int64_t(int64_t)>& token_of_row,
                           const std::string& source_name) {
  BatchStats stats;
  // Statistics of the raw batch (double accumulation), checking for NaN/Inf on the way.
  const int64_t count = n * d;
  double sum = 0;
  for (int64_t i = 0; i < count; ++i) sum += raw[i];
  if (!std::isfinite(sum)) {
    const int64_t i = first_non_finite(raw, count);
    if (i >= 0)
      throw DataError(cat(source_name, ": non-finite activation (", raw[i], ") at token ", token_of_row(i / d), ", column ",
                          i % d));
    throw DataError(cat(source_name, ": activations overflow float64 when summed"));
  }
  const double mean = sum / double(count);
  double sq = 0;
  for (int64_t i = 0; i < count; ++i) sq += (raw[i] - mean) * (raw[i] - mean);
  stats.raw_mean = mean;
  stats.raw_std = count > 1 ? std::sqrt(sq / double(count - 1)) : 0.0;
  stats.blocks = {RawMoments{count, mean, sq, stats.raw_std}};
  switch (normalization) {
    case Normalization::Story:
      // x_n = (x - mean) / std * sqrt(D), over all N*D elements of the story, std unbiased (n-1).
      if (!(stats.raw_std > 0))
        throw DataError(cat(source_name, ": the story at token ", token_of_row(0), " has zero variance (", n,
                            " tokens): cannot normalise it per story"));
      stats.norm_shift = mean;
      stats.norm_scale = std::sqrt(double(d)) / stats.raw_std;
      break;
    case Normalization::Dataset:
      stats.norm_shift = 0;
      stats.norm_scale = dataset_scale;
      break;
    case Normalization::None:
      stats.norm_shift = 0;
      stats.norm_scale = 1;
      break;
    case Normalization::LayerNorm:
    case Normalization::NormRescale:
      normalize_tokens(raw, normalized, n, d, normalization, token_of_row, source_name, stats);
      return stats;
  }
  const float shift = static_cast<float>(stats.norm_shift), scale = static_cast<float>(stats.norm_scale);
  // The scale multiplies in float32: one that overflows it (a story's std below sqrt(d) / FLT_MAX,
  // activations near 1e-38) or rounds to 0 would turn every input into inf or NaN, silently.
  if (!std::isfinite(scale) || !(scale > 0))
    throw DataError(cat(source_name, ": ",
                        normalization == Normalization::Story
                            ? cat("the story at token ", token_of_row(0), " has activations of std ", stats.raw_std,
                                  ": its scale sqrt(d) / std = ", stats.norm_scale)
                            : cat("the dataset scale ", stats.norm_scale),
                        " is outside float32's range (activations that small or large: multiply them by a constant "
                        "first)"));
  for (int64_t i = 0; i < count; ++i) normalized[i] = (raw[i] - shift) * scale;
  return stats;
}

void denormalize_blocks(const float* normalized, float* raw, int64_t n, const std::vector<int64_t>& widths,
                        Normalization normalization, const DatasetScales& scales, const BatchStats& stats) {
  if (scales.per_block.size() != widths.size() ||
      (normalization == Normalization::Story && stats.blocks.size() != widths.size()))
    throw Error(cat("denormalize_blocks: ", scales.per_block.size(), " scales and ", stats.blocks.size(),
                    " block statistics for ", widths.size(), " blocks"));
  int64_t d = 0;
  for (int64_t w : widths) d += w;
  if (per_token(normalization)) {
    if (widths.size() != 1 || stats.row_unscale.size() != static_cast<size_t>(n))
      throw Error(cat("denormalize_blocks: ", normalization_name(normalization), " needs one block and ", n,
                      " rows' statistics"));
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < d; ++c)
        raw[r * d + c] = static_cast<float>(normalized[r * d + c] * stats.row_unscale[r] + stats.row_shift[r]);
    return;
  }
  int64_t offset = 0;
  for (size_t b = 0; b < widths.size(); ++b) {
    const int64_t w = widths[b];
    double shift = 0, scale = 1;
    if (normalization == Normalization::Story) {
      shift = stats.blocks[b].mean;
      scale = std::sqrt(double(w)) / stats.blocks[b].std;
    } else if (normalization == Normalization::Dataset) {
      scale = scales.per_block[b];
    }
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = offset; c < offset + w; ++c)
        raw[r * d + c] = static_cast<float>(normalized[r * d + c] / scale + shift);
    offset += w;
  }
}

Json DatasetScales::to_json() const {
  if (per_block.size() == 1) return Json(per_block[0]);
  Json j = Json::array();
  for (double s : per_block) j.push_back(Json(s));
  return j;
}

DatasetScales DatasetScales::from_json(const Json& j) {
  std::vector<double> scales;
  if (j.is_array()) {
    for (const Json& v : j.elements()) scales.push_back(v.as_number());
  } else {
    scales.push_back(j.as_number());
  }
  if (scales.empty()) throw DataError("dataset_scale: an empty list");
  for (double s : scales)  // it multiplies inputs in float32 (normalize_batch)
    if (!std::isfinite(s) || !(s >= std::numeric_limits<float>::min()) || s > std::numeric_limits<float>::max())
      throw DataError(cat("dataset_scale must be a positive number in float32's range, got ", s));
  return DatasetScales(std::move(scales));
}

InputNormalization trained_normalization(const Json& cfg, const std::string& cfg_path) {
  InputNormalization n;
  // A folder from elsewhere: SAELens's per-token normalize_activations (the others it folds into the
  // weights when it saves, or it has none; checkpoint.cpp refuses what it does not know).
  if (cfg.has("normalize_activations") && cfg.at("normalize_activations").is_string()) {
    const std::string kind = cfg.at("normalize_activations").as_string();
    if (kind == "layer_norm") n.kind = Normalization::LayerNorm;
    if (kind == "constant_norm_rescale") n.kind = Normalization::NormRescale;
  }
  if (!cfg.has("sae_cpp")) return n;
  try {
    const Json& ours = cfg.at("sae_cpp");
    if (ours.has("normalization")) n.kind = parse_normalization(ours.at("normalization").as_string());
    if (ours.has("dataset_scale")) n.scales = DatasetScales::from_json(ours.at("dataset_scale"));
    n.with_bos_rows = ours.has("data") && ours.at("data").is_object() && ours.at("data").has("bos_activations") &&
                      ours.at("data").at("bos_activations") == Json("keep");
  } catch (const Error& e) {
    throw DataError(cat(cfg_path, ": sae_cpp: ", e.what()));
  }
  return n;
}

BatchStats normalize_blocks(const float* raw, float* normalized, int64_t n, const std::vector<int64_t>& widths,
                            Normalization normalization, const DatasetScales& scales,
                            const std::function<int64_t(int64_t)>& token_of_row, const std::string& source_name) {
  if (scales.per_block.size() != widths.size())
    throw Error(cat("normalize_blocks: ", scales.per_block.size(), " scales for ", widths.size(), " blocks"));
  int64_t d = 0;
  for (int64_t w : widths) d += w;
  if (widths.size() == 1) return normalize_batch(raw, normalized, n, d, normalization, scales.first(), token_of_row, source_name);
  // Each block gathered, normalised and put back; the whole row's statistics for the metrics.
  std::vector<float> block_raw, block_normalized;
  BatchStats first;
  std::vector<RawMoments> blocks;
  int64_t offset = 0;
  for (size_t b = 0; b < widths.size(); ++b) {
    const int64_t w = widths[b];
    block_raw.resize(static_cast<size_t>(n * w));
    block_normalized.resize(static_cast<size_t>(n * w));
    for (int64_t r = 0; r < n; ++r) std::copy_n(raw + r * d + offset, w, block_raw.data() + r * w);
    const BatchStats stats = normalize_batch(block_raw.data(), block_normalized.data(), n, w, normalization,
                                             scales.per_block[b], token_of_row,
                                             cat(source_name, " (column block ", b, ", first column ", offset, ")"));
    if (b == 0) first = stats;
    blocks.push_back(stats.blocks.at(0));
    for (int64_t r = 0; r < n; ++r) std::copy_n(block_normalized.data() + r * w, w, normalized + r * d + offset);
    offset += w;
  }
  double sum = 0, sq = 0;
  const int64_t count = n * d;
  for (int64_t i = 0; i < count; ++i) sum += raw[i];
  const double mean = sum / double(count);
  for (int64_t i = 0; i < count; ++i) sq += (raw[i] - mean) * (raw[i] - mean);
  first.raw_mean = mean;
  first.raw_std = count > 1 ? std::sqrt(sq / double(count - 1)) : 0.0;
  first.blocks = std::move(blocks);
  return first;
}

RawMoments combine_moments(const std::vector<RawMoments>& blocks) {
  if (blocks.empty()) throw Error("combine_moments: no blocks");
  if (blocks.size() == 1) return blocks[0];
  RawMoments out;
  double weighted = 0;
  for (const RawMoments& b : blocks) {
    out.count += b.count;
    weighted += double(b.count) * b.mean;
  }
  out.mean = weighted / double(out.count);
  for (const RawMoments& b : blocks) out.m2 += b.m2 + double(b.count) * (b.mean - out.mean) * (b.mean - out.mean);
  out.std = out.count > 1 ? std::sqrt(out.m2 / double(out.count - 1)) : 0.0;
  return out;
}

Batcher::Batcher(ActivationSource& source, int64_t batch_tokens, Normalization normalization,
                 DatasetScales dataset_scale, uint64_t seed)
    : source_(source), batch_tokens_(batch_tokens), normalization_(normalization),
      dataset_scale_(std::move(dataset_scale)), widths_(source.block_widths()), seed_(seed) {
  if (dataset_scale_.per_block.size() != widths_.size())
    throw DataError(cat(source.name(), ": ", widths_.size(), " column blocks but ", dataset_scale_.per_block.size(),
                        " dataset scales"));
  if (batch_tokens < 0) throw UsageError(cat("--batch: expected 'story' or a positive token count, got ", batch_tokens));
  if (batch_tokens == 0) {
    if (source.num_stories() == 0)
      throw UsageError("--batch story needs story boundaries, and this data has none (a .npy file, or a "
                       "safetensors file without story_lengths): use --batch N");
    max_tokens_ = source.longest_story();
  } else {
    check_story_normalization(batch_tokens, normalization);
    if (batch_tokens > source.num_tokens())
      throw UsageError(cat("--batch ", batch_tokens, " is larger than the data (", source.num_tokens(), " tokens)"));
    max_tokens_ = batch_tokens;
    token_list_.resize(batch_tokens);
    part_end_ = batch_tokens;
    source_.expect_random_access(true);
  }
}

void BatchSource::set_part(int64_t part, int64_t parts, const SumOverParts&) {
  if (parts > 1) throw UsageError("this data source cannot be split between data-parallel replicas");
}

std::pair<int64_t, int64_t> replica_rows(int64_t batch_tokens, int64_t part, int64_t parts) {
  if (batch_tokens == 0)
    throw UsageError("--batch story cannot be split between data-parallel replicas (a story is one batch): use "
                     "--batch N, or --shards equal to the number of ranks");
  if (batch_tokens < parts)
    throw UsageError(cat("--batch ", batch_tokens, " is smaller than the ", parts, " data-parallel replicas"));
  // The same split as sae/arch/collectives.h part_begin.
  return {batch_tokens * part / parts, batch_tokens * (part + 1) / parts};
}

void Batcher::set_part(int64_t part, int64_t parts, const SumOverParts&) {
  if (parts == 1) return;
  std::tie(part_begin_, part_end_) = replica_rows(batch_tokens_, part, parts);
  max_tokens_ = part_end_ - part_begin_;
  part_list_.resize(max_tokens_);
}

void BatchOrigins::resize(int64_t rows, int64_t new_radius) {
  radius = new_radius;
  story.assign(static_cast<size_t>(rows), -1);
  position.assign(static_cast<size_t>(rows), -1);
  context.assign(static_cast<size_t>(rows * width()), -1);
}

int64_t Batcher::pick_tokens(int64_t& story, int64_t& first_token) {
  story = -1;
  first_token = 0;
  if (batch_tokens_ == 0) {
    story = next_story_;
    first_token = source_.story_begin(story);
    next_story_ = (next_story_ + 1) % source_.num_stories();
    return source_.story_length(story);
  }
  const int64_t n = batch_tokens_;
  RandomPermutation perm(source_.num_tokens(), seed_ + 0x1000 * static_cast<uint64_t>(epoch_));
  for (int64_t i = 0; i < n; ++i) {
    token_list_[i] = static_cast<int64_t>(perm(cursor_));
    if (++cursor_ == source_.num_tokens()) {
      cursor_ = 0;
      ++epoch_;
      perm = RandomPermutation(source_.num_tokens(), seed_ + 0x1000 * static_cast<uint64_t>(epoch_));
    }
  }
  return n;
}

int64_t Batcher::next(float* raw, float* normalized, BatchStats& stats) {
  int64_t first_token = 0, story = -1;
  int64_t n = pick_tokens(story, first_token);
  if (story >= 0) {
    source_.read_tokens(first_token, n, raw);
  } else if (part_list_.empty()) {
    source_.read_token_list(token_list_, raw);
  } else {  // a replica's rows only
    n = part_end_ - part_begin_;
    std::copy(token_list_.begin() + part_begin_, token_list_.begin() + part_end_, part_list_.begin());
    source_.read_token_list(part_list_, raw);
  }
  auto token_of_row = [&](int64_t row) {
    return batch_tokens_ == 0 ? first_token + row : token_list_[part_begin_ + row];
  };
  stats = normalize_blocks(raw, normalized, n, widths_, normalization_, dataset_scale_, token_of_row, source_.name());
  if (recording_origins()) record_batch_origins(n, story, first_token);
  return n;
}

int64_t BatchSource::next_on_device(Tensor&, Tensor&, BatchStats&) {
  throw Error("this data source cannot make its batches on a device");
}

bool Batcher::generates_on_device(Device device) const {
  // not a replica's part; a per-token normalisation runs on the host
  return generate_on_device_ && part_list_.empty() && !per_token(normalization_) && source_.generates_on(device);
}

int64_t Batcher::next_on_device(Tensor& out, Tensor& device_stats, BatchStats& stats) {
  if (!generates_on_device(out.device())) throw Error(cat(source_.name(), ": cannot make batches on ", device_name(out.device())));
  int64_t first_token = 0, story = -1;
  const int64_t n = pick_tokens(story, first_token);
  std::vector<int64_t> story_tokens;
  if (story >= 0) {
    story_tokens.resize(n);
    for (int64_t i = 0; i < n; ++i) story_tokens[i] = first_token + i;
  }
  const std::vector<int64_t>& tokens = story >= 0 ? story_tokens : token_list_;
  if (!device_stats.defined()) device_stats = Tensor::zeros(Shape{2}, DType::F64, out.device());
  Tensor rows = out.slice_rows(0, n);
  source_.generate_on(tokens, rows);
  stats = BatchStats();
  // A source that makes its batches on a device (synthetic data) has one column block.
  if (widths_.size() != 1) throw Error(cat(source_.name(), ": batches of ", widths_.size(), " column blocks cannot be made on a device"));
  normalize_batch_on_device(rows, device_stats, normalization_, dataset_scale_.first(), stats);
  if (recording_origins()) record_batch_origins(n, story, first_token);
  return n;
}

void Batcher::record_batch_origins(int64_t n, int64_t story, int64_t first_token) {
  origins_.resize(n, origins_radius_);
  origins_.has_token_ids = source_.has_token_ids();
  const int64_t radius = origins_.radius, width = origins_.width();
  for (int64_t r = 0; r < n; ++r) {
    const int64_t token = story >= 0 ? first_token + r : token_list_[part_begin_ + r];
    const int64_t s = story >= 0 ? story : source_.story_containing(token);
    // The tokens of its story (of the whole source when there are no stories).
    const int64_t begin = s >= 0 ? source_.story_begin(s) : 0;
    const int64_t end = s >= 0 ? begin + source_.story_length(s) : source_.num_tokens();
    origins_.story[r] = s;
    origins_.position[r] = token - begin;
    for (int64_t o = -radius; o <= radius; ++o)
      if (token + o >= begin && token + o < end)
        origins_.context[r * width + o + radius] = origins_.has_token_ids ? source_.token_id(token + o) : -2;
  }
}

Json Batcher::state() const {
  Json j = Json::object();
  j["mode"] = batch_tokens_ == 0 ? "story" : "tokens";
  j["next_story"] = next_story_;
  j["epoch"] = epoch_;
  j["cursor"] = cursor_;
  return j;
}

void Batcher::restore(const Json& state) {
  const std::string mode = state.at("mode").as_string();
  if (mode != (batch_tokens_ == 0 ? "story" : "tokens"))
    throw DataError(cat("resume: the checkpoint was taken in ", mode, " batch mode, but this run uses the other"));
  next_story_ = state.at("next_story").as_int();
  epoch_ = state.at("epoch").as_int();
  cursor_ = state.at("cursor").as_int();
  if (next_story_ < 0 || (source_.num_stories() > 0 && next_story_ >= source_.num_stories()) || cursor_ < 0 ||
      cursor_ >= std::max<int64_t>(1, source_.num_tokens()))
    throw DataError("resume: the checkpoint's data position does not fit this data set");
}

BlockNormSums::BlockNormSums(std::vector<int64_t> widths)
    : widths_(std::move(widths)), norms_(widths_.size(), 0.0), squares_(widths_.size(), 0.0) {}

void BlockNormSums::add(const float* row) {
  int64_t j = 0;
  for (size_t b = 0; b < widths_.size(); ++b) {
    double sq = 0;
    for (const int64_t end = j + widths_[b]; j < end; ++j) sq += double(row[j]) * row[j];
    norms_[b] += std::sqrt(sq);
    squares_[b] += sq;
  }
  ++rows_;
}

DatasetScales BlockNormSums::scales(const std::string& source) const {
  std::vector<double> scales;
  for (size_t b = 0; b < widths_.size(); ++b) {
    const std::string block = widths_.size() > 1 ? cat(" (column block ", b, ")") : std::string();
    if (!std::isfinite(squares_[b]))
      throw DataError(cat(source, block, ": the activations' squares overflow float64 while estimating the dataset scale"));
    if (!(norms_[b] > 0))
      throw DataError(cat(source, block, ": all sampled activations are zero; cannot normalise"));
    scales.push_back(std::sqrt(double(widths_[b])) / (norms_[b] / double(rows_)));
  }
  return DatasetScales(std::move(scales));
}

std::vector<double> BlockNormSums::mean_squared_norms() const {
  std::vector<double> out;
  for (double sq : squares_) out.push_back(sq / double(rows_));
  return out;
}

DatasetScales estimate_dataset_scales(ActivationSource& source, int64_t sample_tokens,
                                      std::vector<double>* mean_squared_norms) {
  const int64_t n = std::min(sample_tokens, source.num_tokens()), d = source.d();
  if (n <= 0) throw DataError("data: no tokens to estimate the dataset normalisation from");
  source.expect_random_access(true);
  std::vector<float> row(d);
  BlockNormSums sums(source.block_widths());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t token = static_cast<int64_t>((static_cast<double>(i) + 0.5) * source.num_tokens() / n);
    source.read_tokens(token, 1, row.data());
    const int64_t c = first_non_finite(row.data(), d);
    if (c >= 0)
      throw DataError(cat(source.name(), ": non-finite activation (", row[c], ") at ", source.locate(token), ", column ", c,
                          " (estimating the dataset scale)"));
    sums.add(row.data());
  }
  source.expect_random_access(false);  // a Batcher in token mode sets it again
  if (mean_squared_norms) *mean_squared_norms = sums.mean_squared_norms();
  return sums.scales(source.name());
}

double estimate_dataset_scale(ActivationSource& source, int64_t sample_tokens) {
  return estimate_dataset_scales(source, sample_tokens).first();
}

}  // namespace sae
