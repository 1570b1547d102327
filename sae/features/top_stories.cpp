// sae_features' two passes (see top_stories.h).
#include "sae/features/top_stories.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <memory>

#include "lm/text_data.h"
#include "sae/arch/registry.h"
#include "sae/features/token_text.h"
#include "tensor/ops.h"

namespace sae {

namespace {

// The scales of `blocks` column blocks: one per block from the trained normalisation (one block: its
// first, the input's, as a transcoder reads only its input here). DataError when a dataset
// normalisation has fewer scales than blocks.
DatasetScales block_scales(const InputNormalization& normalization, size_t blocks) {
  const std::vector<double>& all = normalization.scales.per_block;
  if (blocks == 1) return DatasetScales(normalization.input_scale());
  if (all.size() < blocks) {
    if (normalization.kind == Normalization::Dataset)
      throw DataError(cat("the SAE was trained with ", all.size(), " dataset scales, the data has ", blocks,
                          " column blocks"));
    return DatasetScales(std::vector<double>(blocks, 1.0));
  }
  return DatasetScales(std::vector<double>(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(blocks)));
}

// raw [T, D] host (column blocks of `widths`) -> the SAE's input on `device`.
Tensor normalised_input(const std::vector<float>& raw, int64_t t, const std::vector<int64_t>& widths,
                        const InputNormalization& normalization, const std::string& where, Device device) {
  int64_t d = 0;
  for (int64_t w : widths) d += w;
  Tensor x = Tensor::empty(Shape{t, d});
  normalize_blocks(raw.data(), x.data<float>(), t, widths, normalization.kind, block_scales(normalization, widths.size()),
                   [](int64_t row) { return row; }, where);
  return x.to(device);
}

class TextStoryInputs : public StoryInputs {
 public:
  TextStoryInputs(DecoderModel& model, const BpeTokenizer& tokenizer, const TextStoryOptions& options,
                  const InputNormalization& normalization, int64_t max_stories, Device device, DecoderModel* model_b)
      : model_(model), model_b_(model_b), tokenizer_(tokenizer), reader_(options.text, options.text_field),
        normalization_(normalization), max_stories_(max_stories), device_(device) {
    TextDataOptions reads;
    reads.site = options.site;
    reads.reads = options.reads;
    reads_ = resolve_text_reads(model, model_b, reads);
    for (const TextRead& r : reads_) widths_.push_back((r.model == 0 ? model : *model_b).config().hook_width(r.site));
    int64_t positions = model.config().max_positions;
    if (model_b) positions = std::min(positions, model_b->config().max_positions);
    if (options.context_size > positions)
      throw UsageError(cat("--context-size ", options.context_size, " is more than the model's ", positions, " positions"));
    windows_ = WindowOptions{options.bos, options.context_size > 0 ? options.context_size : positions};
    check_window_options(windows_);
  }

  bool next(StoryInput& out) override {
    if (max_stories_ > 0 && served_ >= max_stories_) return false;
    TextStory story;
    std::vector<int32_t> ids;
    do {
      if (!reader_.next(story)) return false;
      ids = tokenizer_.encode(story.text, story.where);
    } while (ids.empty());
    out.truncated = window_count(static_cast<int64_t>(ids.size()), windows_) > 1;
    const TokenWindow window = document_window(ids, 0, windows_);
    ids.resize(static_cast<size_t>(window.tokens));
    const int64_t t = window.tokens;
    // A run that kept BOS rows normalised each story with its BOS row: so here, then it is dropped.
    const bool bos_row = window.bos && normalization_.with_bos_rows && normalization_.kind == Normalization::Story;
    std::vector<float> raw;  // [t (+ the BOS row), sum of widths]: every read, one pass of each model
    window_activations(model_, model_b_, reads_, window.input, window.bos && !bos_row, raw);
    out.index = story.index;
    out.ids = std::move(ids);
    out.x = normalised_input(raw, t + (bos_row ? 1 : 0), widths_, normalization_, story.where, device_);
    if (bos_row) out.x = out.x.slice_rows(1, t + 1).clone();
    ++served_;
    return true;
  }

  void rewind() override {
    reader_.rewind();
    served_ = 0;
  }

 private:
  DecoderModel& model_;
  DecoderModel* model_b_;
  const BpeTokenizer& tokenizer_;
  StoryReader reader_;
  std::vector<TextRead> reads_;
  std::vector<int64_t> widths_;
  WindowOptions windows_;
  InputNormalization normalization_;
  int64_t max_stories_, served_ = 0;
  Device device_;
};

class FileStoryInputs : public StoryInputs {
 public:
  FileStoryInputs(ActivationSource& source, const InputNormalization& normalization, int64_t max_stories, Device device)
      : source_(source), normalization_(normalization), max_stories_(max_stories), device_(device) {
    if (source.num_stories() == 0)
      throw UsageError(cat(source.name(), " has no story boundaries (story_lengths): the top stories of a feature "
                           "need them"));
  }

  bool next(StoryInput& out) override {
    const int64_t limit = max_stories_ > 0 ? std::min(max_stories_, source_.num_stories()) : source_.num_stories();
    if (next_ >= limit) return false;
    const int64_t begin = source_.story_begin(next_), t = source_.story_length(next_), d = source_.d();
    std::vector<float> raw(static_cast<size_t>(t * d));
    source_.read_tokens(begin, t, raw.data());
    out.index = next_;
    out.ids.clear();
    if (source_.has_token_ids())
      for (int64_t i = 0; i < t; ++i) out.ids.push_back(source_.token_id(begin + i));
    out.truncated = false;
    out.x = normalised_input(raw, t, source_.block_widths(), normalization_, cat(source_.name(), " story ", next_),
                             device_);
    ++next_;
    return true;
  }

  void rewind() override { next_ = 0; }

 private:
  ActivationSource& source_;
  InputNormalization normalization_;
  int64_t max_stories_, next_ = 0;
  Device device_;
};

// The origins of rows [begin, end) of one story.
void story_origins(const StoryInput& story, int64_t begin, int64_t end, int64_t radius, BatchOrigins& origins) {
  const int64_t t = story.x.size(0), width = 2 * radius + 1;
  origins.resize(end - begin, radius);
  origins.has_token_ids = !story.ids.empty();
  for (int64_t r = begin; r < end; ++r) {
    origins.story[r - begin] = story.index;
    origins.position[r - begin] = r;
    for (int64_t o = -radius; o <= radius; ++o)
      if (r + o >= 0 && r + o < t)
        origins.context[(r - begin) * width + o + radius] = origins.has_token_ids ? story.ids[r + o] : -2;
  }
}


}  // namespace

void encode_stories(const SaeParams& params, StoryInputs& inputs, int64_t block,
                    const std::function<bool(const StoryInput&)>& take, const std::function<bool()>& more,
                    const std::function<void(const StoryInput&, int64_t, int64_t, const Tensor&)>& use) {
  struct Segment {
    std::shared_ptr<const StoryInput> story;
    int64_t begin, end;
  };
  std::vector<Segment> pending;
  int64_t rows = 0;
  const auto flush = [&] {
    if (pending.empty()) return;
    Tensor x = pending[0].story->x.slice_rows(pending[0].begin, pending[0].end);
    if (pending.size() > 1) {
      x = Tensor::empty(Shape{rows, params.d_in()}, x.dtype(), x.device());
      int64_t at = 0;
      for (const Segment& s : pending) {
        Tensor to = x.slice_rows(at, at + s.end - s.begin);
        copy_(to, s.story->x.slice_rows(s.begin, s.end));
        at += s.end - s.begin;
      }
    }
    const Tensor f = sae_encode(params, x);
    int64_t at = 0;
    for (const Segment& s : pending) {
      use(*s.story, s.begin, s.end, f.slice_rows(at, at + s.end - s.begin));
      at += s.end - s.begin;
    }
    pending.clear();
    rows = 0;
  };
  inputs.rewind();
  while (more()) {
    auto story = std::make_shared<StoryInput>();
    if (!inputs.next(*story)) break;
    if (!take(*story)) continue;
    const int64_t t = story->x.size(0);
    if (rows + t > block) flush();
    for (int64_t begin = 0; begin < t;) {
      const int64_t end = std::min(t, begin + block - rows);
      pending.push_back({story, begin, end});
      rows += end - begin;
      begin = end;
      if (rows == block) flush();
    }
  }
  flush();
}

std::unique_ptr<StoryInputs> text_story_inputs(DecoderModel& model, const BpeTokenizer& tokenizer,
                                               const TextStoryOptions& options, const InputNormalization& normalization,
                                               int64_t max_stories, Device device, DecoderModel* model_b) {
  return std::make_unique<TextStoryInputs>(model, tokenizer, options, normalization, max_stories, device, model_b);
}

std::unique_ptr<StoryInputs> file_story_inputs(ActivationSource& source, const InputNormalization& normalization,
                                               int64_t max_stories, Device device) {
  return std::make_unique<FileStoryInputs>(source, normalization, max_stories, device);
}

FeatureStats gather_feature_stats(const SaeParams& params, StoryInputs& inputs, const FeatureStatsOptions& options,
                                  GatherSummary* summary, int64_t block_rows) {
  FeatureStats stats(params.d_sae(), options, params.device());
  BatchOrigins origins;
  GatherSummary counted;
  const auto take = [&](const StoryInput& story) {
    if (story.x.size(1) != params.d_in())
      throw DataError(cat("story ", story.index, " has width ", story.x.size(1), ", the SAE's d_in is ", params.d_in()));
    ++counted.stories;
    counted.tokens += story.x.size(0);
    counted.truncated += story.truncated;
    return true;
  };
  const auto use = [&](const StoryInput& story, int64_t begin, int64_t end, const Tensor& f) {
    StepFeatures features;
    features.tokens = end - begin;
    features.dense = f;
    story_origins(story, begin, end, options.context, origins);
    stats.add(features, origins, story.index, /*new_step=*/begin == 0);
  };
  encode_stories(params, inputs, encode_block_rows(params, block_rows), take, [] { return true; }, use);
  if (summary) *summary = counted;
  return stats;
}

namespace {

// ||W_dec[i, s w:(s+1) w]|| for every feature i and each of `sources` equal blocks of its row, [F, S]
// (one block: the whole row's norm).
std::vector<double> decoder_norms(const SaeParams& params, int64_t sources) {
  const int64_t features = params.d_sae();
  const Tensor w = params.W_dec.to(Device::CPU);
  const int64_t columns = w.size(1), width = columns / sources;
  const float* data = w.data<float>();
  std::vector<double> norms(static_cast<size_t>(features * sources), 0.0);
  for (int64_t i = 0; i < features; ++i)
    for (int64_t src = 0; src < sources; ++src) {
      double sq = 0;
      for (int64_t j = 0; j < width; ++j) {
        const double v = data[i * columns + src * width + j];
        sq += v * v;
      }
      norms[static_cast<size_t>(i * sources + src)] = std::sqrt(sq);
    }
  return norms;
}

}  // namespace

std::vector<double> source_decoder_norms(const SaeParams& params) {
  if (params.sources <= 1) return {};
  return decoder_norms(params, params.sources);
}

std::vector<std::string> top_story_entry_texts(const SaeParams& params, StoryInputs& inputs, const FeatureStats& stats,
                                               const BpeTokenizer* tokenizer, int64_t block_rows) {
  const std::vector<double> source_norms = source_decoder_norms(params);
  // The tutorial's strengths are its SAE's feature magnitudes, f_i ||W_dec[i]||: the length of what
  // feature i adds to the reconstruction of the normalised input (its L1 penalty's terms).
  const std::vector<double> row_norms = decoder_norms(params, 1);
  // Which (feature, rank) each story is wanted for.
  std::map<int64_t, std::vector<std::pair<int64_t, int32_t>>> wanted;
  std::vector<std::vector<std::string>> entries(static_cast<size_t>(stats.features()));
  for (int64_t i = 0; i < stats.features(); ++i) {
    entries[i].resize(static_cast<size_t>(stats.top_count(i)));
    for (int32_t r = 0; r < stats.top_count(i); ++r) wanted[stats.top(i, r).story].push_back({i, r});
  }
  // The wanted features' values at every position of each wanted story (feature -> [t]), filled a
  // block of rows at a time; the story's entries are written once its last row is in.
  std::map<int64_t, std::map<int64_t, std::vector<float>>> columns;  // story -> feature -> [t]
  size_t unread = wanted.size();
  const auto take = [&](const StoryInput& story) {
    auto it = wanted.find(story.index);
    if (it == wanted.end()) return false;
    --unread;
    for (const auto& [feature, rank] : it->second) columns[story.index][feature].resize(static_cast<size_t>(story.x.size(0)));
    return true;
  };
  const auto use = [&](const StoryInput& story, int64_t begin, int64_t end, const Tensor& block) {
    const int64_t features = params.d_sae();
    const Tensor f = block.to(Device::CPU);
    const float* values = f.data<float>();
    std::map<int64_t, std::vector<float>>& column = columns.at(story.index);
    for (auto& [feature, v] : column)
      for (int64_t p = begin; p < end; ++p) {
        v[static_cast<size_t>(p)] = values[(p - begin) * features + feature];
        if (!std::isfinite(v[static_cast<size_t>(p)]))  // (it reached the JSON writer as "cannot write inf")
          throw DataError(cat("story ", story.index, ", token ", p, ": feature ", feature, "'s activation is ",
                              v[static_cast<size_t>(p)], ", not finite: the SAE's weights overflow float32 on "
                              "this input"));
      }
    if (end < story.x.size(0)) return;
    const int64_t t = story.x.size(0);
    auto it = wanted.find(story.index);
    // Each token's text once per story.
    // An id the tokenizer does not know (data from elsewhere) is written [id], as without one, and the
    // story's text is then its tokens' labels joined.
    std::vector<std::string> labels(static_cast<size_t>(t));
    std::string text;
    bool all_known = tokenizer != nullptr && !story.ids.empty();
    for (int64_t p = 0; p < t; ++p) {
      if (story.ids.empty()) {
        labels[p] = cat("[#", p, "]");
        continue;
      }
      if (tokenizer && tokenizer->has_id(story.ids[p])) {
        labels[p] = valid_utf8(tokenizer->token_text(story.ids[p]));
      } else {
        labels[p] = cat("[", story.ids[p], "]");
        all_known = false;
      }
    }
    if (all_known)
      text = valid_utf8(tokenizer->decode(story.ids));
    else
      for (const std::string& label : labels) text += label;
    Json tokens = Json::array();
    for (int32_t id : story.ids) tokens.push_back(static_cast<int64_t>(id));
    for (const auto& [feature, rank] : it->second) {
      const FeatureTop top = stats.top(feature, rank);
      const double max = top.value, norm = row_norms[static_cast<size_t>(feature)];
      Json strengths = Json::array();
      std::string annotated;
      const std::vector<float>& values = column.at(feature);
      for (int64_t p = 0; p < t; ++p) {
        const double v = values[static_cast<size_t>(p)];
        strengths.push_back(round_significant(v * norm));
        annotated += labels[p] + " " + activation_block(norm > 0 ? v : 0.0, max);  // a zero row adds nothing
      }
      Json e = Json::object();
      e["feature_idx"] = feature;
      e["step"] = story.index;
      e["position"] = top.position;
      e["max_strength"] = round_significant(max * norm);
      e["tokens"] = tokens;
      e["strengths"] = strengths;
      e["text"] = text;
      e["annotated_text"] = annotated;
      e["decoder_norm"] = round_significant(norm);
      if (!source_norms.empty()) {
        Json norms = Json::array();
        for (int64_t src = 0; src < params.sources; ++src)
          norms.push_back(round_significant(source_norms[static_cast<size_t>(feature * params.sources + src)]));
        e["source_norms"] = norms;
      }
      entries[feature][rank] = e.dump();
    }
    wanted.erase(it);
    columns.erase(story.index);
  };
  encode_stories(params, inputs, encode_block_rows(params, block_rows), take,
                 [&] { return unread > 0; }, use);
  if (!wanted.empty())
    throw DataError(cat("the stories changed between the two passes: story ", wanted.begin()->first, " is gone"));
  std::vector<std::string> out;
  for (std::vector<std::string>& list : entries)
    for (std::string& e : list) out.push_back(std::move(e));
  return out;
}

Json top_story_entries(const SaeParams& params, StoryInputs& inputs, const FeatureStats& stats,
                       const BpeTokenizer* tokenizer, int64_t block_rows) {
  Json out = Json::array();
  for (const std::string& text : top_story_entry_texts(params, inputs, stats, tokenizer, block_rows))
    out.push_back(Json::parse(text));
  return out;
}

}  // namespace sae
