// sae_features' two passes (see top_stories.h).
#include "sae/features/top_stories.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>

#include "lm/text_data.h"
#include "sae/arch/registry.h"
#include "sae/features/token_text.h"

namespace sae {

namespace {

// raw [T, D] host -> the SAE's input on `device`.
Tensor normalised_input(const std::vector<float>& raw, int64_t t, int64_t d, const InputNormalization& normalization,
                        const std::string& where, Device device) {
  Tensor x = Tensor::empty(Shape{t, d});
  normalize_batch(raw.data(), x.data<float>(), t, d, normalization.kind, normalization.input_scale(),
                  [](int64_t row) { return row; }, where);
  return x.to(device);
}

class TextStoryInputs : public StoryInputs {
 public:
  TextStoryInputs(DecoderModel& model, const BpeTokenizer& tokenizer, const TextStoryOptions& options,
                  const InputNormalization& normalization, int64_t max_stories, Device device)
      : model_(model), tokenizer_(tokenizer), reader_(options.text, options.text_field), site_(model.resolve(options.site)),
        normalization_(normalization), max_stories_(max_stories), device_(device) {
    const int64_t positions = model.config().max_positions;
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
    const int64_t d = model_.config().hook_width(site_);
    out.truncated = window_count(static_cast<int64_t>(ids.size()), windows_) > 1;
    const TokenWindow window = document_window(ids, 0, windows_);
    ids.resize(static_cast<size_t>(window.tokens));
    const int64_t t = window.tokens, skip = window.bos ? 1 : 0;
    const Tensor hidden = model_.forward_to_site(window.input, site_).to(Device::CPU);  // a view: copy it
    std::vector<float> raw(static_cast<size_t>(t * d));
    std::memcpy(raw.data(), hidden.data<float>() + skip * d, sizeof(float) * t * d);
    out.index = story.index;
    out.ids = std::move(ids);
    out.x = normalised_input(raw, t, d, normalization_, story.where, device_);
    ++served_;
    return true;
  }

  void rewind() override {
    reader_.rewind();
    served_ = 0;
  }

 private:
  DecoderModel& model_;
  const BpeTokenizer& tokenizer_;
  StoryReader reader_;
  HookSite site_;
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
    out.x = normalised_input(raw, t, d, normalization_, cat(source_.name(), " story ", next_), device_);
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

// The origins of one whole story's rows.
void story_origins(const StoryInput& story, int64_t radius, BatchOrigins& origins) {
  const int64_t t = story.x.size(0), width = 2 * radius + 1;
  origins.resize(t, radius);
  origins.has_token_ids = !story.ids.empty();
  for (int64_t r = 0; r < t; ++r) {
    origins.story[r] = story.index;
    origins.position[r] = r;
    for (int64_t o = -radius; o <= radius; ++o)
      if (r + o >= 0 && r + o < t) origins.context[r * width + o + radius] = origins.has_token_ids ? story.ids[r + o] : -2;
  }
}

}  // namespace

std::unique_ptr<StoryInputs> text_story_inputs(DecoderModel& model, const BpeTokenizer& tokenizer,
                                               const TextStoryOptions& options, const InputNormalization& normalization,
                                               int64_t max_stories, Device device) {
  return std::make_unique<TextStoryInputs>(model, tokenizer, options, normalization, max_stories, device);
}

std::unique_ptr<StoryInputs> file_story_inputs(ActivationSource& source, const InputNormalization& normalization,
                                               int64_t max_stories, Device device) {
  return std::make_unique<FileStoryInputs>(source, normalization, max_stories, device);
}

FeatureStats gather_feature_stats(const SaeParams& params, StoryInputs& inputs, const FeatureStatsOptions& options,
                                  GatherSummary* summary) {
  FeatureStats stats(params.d_sae(), options, params.device());
  BatchOrigins origins;
  StoryInput story;
  GatherSummary counted;
  inputs.rewind();
  while (inputs.next(story)) {
    if (story.x.size(1) != params.d_in())
      throw DataError(cat("story ", story.index, " has width ", story.x.size(1), ", the SAE's d_in is ", params.d_in()));
    StepFeatures features;
    features.tokens = story.x.size(0);
    features.dense = sae_encode(params, story.x);
    story_origins(story, options.context, origins);
    stats.add(features, origins, story.index);
    ++counted.stories;
    counted.tokens += features.tokens;
    counted.truncated += story.truncated;
  }
  if (summary) *summary = counted;
  return stats;
}

Json top_story_entries(const SaeParams& params, StoryInputs& inputs, const FeatureStats& stats,
                       const BpeTokenizer* tokenizer) {
  // Which (feature, rank) each story is wanted for.
  std::map<int64_t, std::vector<std::pair<int64_t, int32_t>>> wanted;
  std::vector<std::vector<Json>> entries(static_cast<size_t>(stats.features()));
  for (int64_t i = 0; i < stats.features(); ++i) {
    entries[i].resize(static_cast<size_t>(stats.top_count(i)));
    for (int32_t r = 0; r < stats.top_count(i); ++r) wanted[stats.top(i, r).story].push_back({i, r});
  }
  StoryInput story;
  inputs.rewind();
  while (!wanted.empty() && inputs.next(story)) {
    auto it = wanted.find(story.index);
    if (it == wanted.end()) continue;
    const Tensor f = sae_encode(params, story.x).to(Device::CPU);
    const int64_t t = f.size(0), features = f.size(1);
    const float* values = f.data<float>();
    // Each token's text once per story.
    std::vector<std::string> labels(static_cast<size_t>(t));
    std::string text;
    for (int64_t p = 0; p < t; ++p) {
      if (story.ids.empty())
        labels[p] = cat("[#", p, "]");
      else if (tokenizer)
        labels[p] = valid_utf8(tokenizer->token_text(story.ids[p]));
      else
        labels[p] = cat("[", story.ids[p], "]");
    }
    if (tokenizer && !story.ids.empty())
      text = valid_utf8(tokenizer->decode(story.ids));
    else
      for (const std::string& label : labels) text += label;
    Json tokens = Json::array();
    for (int32_t id : story.ids) tokens.push_back(static_cast<int64_t>(id));
    for (const auto& [feature, rank] : it->second) {
      const FeatureTop top = stats.top(feature, rank);
      const double max = top.value;
      Json strengths = Json::array();
      std::string annotated;
      for (int64_t p = 0; p < t; ++p) {
        const double v = values[p * features + feature];
        strengths.push_back(round_significant(v));
        annotated += labels[p] + " " + activation_block(v, max);
      }
      Json e = Json::object();
      e["feature_idx"] = feature;
      e["step"] = story.index;
      e["position"] = top.position;
      e["max_strength"] = round_significant(max);
      e["tokens"] = tokens;
      e["strengths"] = strengths;
      e["text"] = text;
      e["annotated_text"] = annotated;
      entries[feature][rank] = std::move(e);
    }
    wanted.erase(it);
  }
  if (!wanted.empty())
    throw DataError(cat("the stories changed between the two passes: story ", wanted.begin()->first, " is gone"));
  Json out = Json::array();
  for (std::vector<Json>& list : entries)
    for (Json& e : list) out.push_back(std::move(e));
  return out;
}

}  // namespace sae
