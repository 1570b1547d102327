// TextBatcher (see text_batches.h).
#include "sae/data/text_batches.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <optional>
#include <tuple>

namespace sae {

void check_tokenizer_fits_model(const BpeTokenizer& tokenizer, const DecoderConfig& model) {
  if (tokenizer.vocab_size() > model.vocab_size)
    throw DataError(cat(model.source, ": vocab_size ", model.vocab_size, " is smaller than the tokenizer's ",
                        tokenizer.vocab_size(), " ids (", tokenizer.source(), ")"));
}

void check_same_tokenizer(const std::string& dir_b, const BpeTokenizer& tokenizer, const DecoderModel& model_b) {
  if (tokenizer.vocab_size() > model_b.config().vocab_size)
    throw DataError(cat(dir_b, ": --model's tokenizer has ", tokenizer.vocab_size(), " ids, --model-b only ",
                        model_b.config().vocab_size));
  const std::filesystem::path b(dir_b);
  if (!std::filesystem::exists(b / "tokenizer.json") && !std::filesystem::exists(b / "vocab.json"))
    return;  // a folder without its own tokenizer reads --model's
  std::optional<BpeTokenizer> other;
  other.emplace(BpeTokenizer::from_model_dir(dir_b));
  const std::string probe = "Once upon a time, 42 foxes said: \"Don't!\" caf\xc3\xa9 \xe2\x80\x94 the end.\n";
  if (other->vocab_size() != tokenizer.vocab_size() || other->encode(probe) != tokenizer.encode(probe))
    throw DataError(cat(dir_b, ": its tokenizer is not --model's; a crosscoder over two models reads the same tokens "
                        "through both"));
}

Json TextBatcher::PiecePosition::to_json() const {
  Json j = Json::object();
  j["next_story"] = story.next_story;
  j["byte_offset"] = story.byte_offset;
  j["piece"] = piece;
  j["epoch"] = epoch;
  return j;
}

TextBatcher::PiecePosition TextBatcher::PiecePosition::from_json(const Json& j) {
  PiecePosition p;
  p.story.next_story = j.at("next_story").as_int();
  p.story.byte_offset = j.at("byte_offset").as_int();
  p.piece = j.at("piece").as_int();
  p.epoch = j.at("epoch").as_int();
  if (p.piece < 0 || p.epoch < 0) throw DataError("resume: a text position with a negative piece or epoch");
  return p;
}

std::vector<TextRead> resolve_text_reads(DecoderModel& model, DecoderModel* model_b, const TextDataOptions& options) {
  std::vector<TextRead> reads = options.reads.empty() ? std::vector<TextRead>{TextRead{0, options.site}} : options.reads;
  for (TextRead& r : reads) {
    if (r.model == 1 && !model_b) throw UsageError("a read of the second model without --model-b");
    r.site = (r.model == 0 ? model : *model_b).resolve(r.site);
  }
  return reads;
}

void window_activations(DecoderModel& model, DecoderModel* model_b, const std::vector<TextRead>& reads,
                        const std::vector<int32_t>& ids, bool skip_first, std::vector<float>& out) {
  const int64_t skip = skip_first ? 1 : 0, rows = static_cast<int64_t>(ids.size()) - skip;
  std::vector<int64_t> offsets;
  int64_t d = 0;
  for (const TextRead& r : reads) {
    offsets.push_back(d);
    d += (r.model == 0 ? model : *model_b).config().hook_width(r.site);
  }
  out.resize(static_cast<size_t>(rows * d));
  if (reads.size() == 1) {  // one read: the state where the run stops
    const int64_t w = d;
    const Tensor hidden = (reads[0].model == 0 ? model : *model_b).forward_to_site(ids, reads[0].site).to(Device::CPU);
    std::memcpy(out.data(), hidden.data<float>() + skip * w, sizeof(float) * rows * w);
    return;
  }
  for (int m = 0; m < 2; ++m) {
    DecoderModel* which = m == 0 ? &model : model_b;
    SiteHooks hooks;
    std::optional<HookSite> last;
    for (size_t k = 0; k < reads.size(); ++k) {
      if (reads[k].model != m) continue;
      const HookSite site = reads[k].site;
      if (!last || reached_before(*last, site, which->config().residual == ResidualWiring::Parallel)) last = site;
      const int64_t offset = offsets[k], w = which->config().hook_width(site);
      hooks.at.emplace_back(site, [&out, offset, w, d, skip, rows](Tensor& state) {
        const Tensor host = state.to(Device::CPU);
        const float* src = host.data<float>() + skip * w;
        for (int64_t r = 0; r < rows; ++r) std::memcpy(out.data() + r * d + offset, src + r * w, sizeof(float) * w);
      });
    }
    if (last) which->forward_to_site(ids, *last, hooks);
  }
}

TextBatcher::TextBatcher(DecoderModel& model, const BpeTokenizer& tokenizer, const TextDataOptions& options,
                         int64_t batch_tokens, Normalization normalization, DatasetScales dataset_scale, uint64_t seed,
                         DecoderModel* model_b)
    : model_(model), tokenizer_(tokenizer), options_(options), reader_(options.text, options.text_field),
      batch_tokens_(batch_tokens), normalization_(normalization), dataset_scale_(std::move(dataset_scale)), seed_(seed),
      model_b_(model_b) {
  const DecoderConfig& c = model.config();
  options_.site = model.resolve(options.site);
  options_.reads = resolve_text_reads(model, model_b, options);
  for (const TextRead& r : options_.reads) {
    widths_.push_back((r.model == 0 ? model : *model_b).config().hook_width(r.site));
    d_ += widths_.back();
  }
  if (dataset_scale_.per_block.size() != widths_.size())
    throw Error(cat("TextBatcher: ", widths_.size(), " reads but ", dataset_scale_.per_block.size(), " dataset scales"));
  if (model_b && model_b->config().max_positions < c.max_positions)
    throw UsageError(cat("--model-b has ", model_b->config().max_positions, " positions, fewer than --model's ",
                         c.max_positions));
  if (batch_tokens < 0) throw UsageError(cat("--batch: expected 'story' or a positive token count, got ", batch_tokens));
  check_story_normalization(batch_tokens, normalization);
  if (options.chunk_tokens <= 0) throw UsageError(cat("--text-chunk-tokens must be positive, got ", options.chunk_tokens));
  if (options.context_size > c.max_positions)
    throw UsageError(cat("--context-size ", options.context_size, " is more than the model's ", c.max_positions,
                         " positions"));
  windows_ = WindowOptions{options.bos, options.context_size > 0 ? options.context_size : c.max_positions};
  check_window_options(windows_);
  max_tokens_ = batch_tokens == 0 ? windows_.context : batch_tokens;
  part_end_ = batch_tokens;
  model_.reserve(windows_.context);
}

void TextBatcher::seek_piece(const PiecePosition& position) {
  reader_.seek(position.story);
  at_ = position;
  story_ids_.clear();
  if (position.piece > 0) {  // inside a split story: read it again to cut the remaining pieces
    TextStory story;
    if (!reader_.next(story)) throw DataError(cat(reader_.path(), ": resume: the text ends before the saved position"));
    story_ids_ = tokenizer_.encode(story.text, story.where);
    story_where_ = story.where;
    story_index_ = story.index;
  }
}

int64_t TextBatcher::next_piece(std::vector<float>& out, bool compute) {
  const int64_t positions = model_.config().max_positions;
  if (story_ids_.empty()) {
    TextStory story;
    while (story_ids_.empty()) {
      at_.story = reader_.position();
      if (!reader_.next(story)) {
        if (at_.story.next_story == 0) throw DataError(cat(reader_.path(), ": the text holds no stories"));
        reader_.rewind();  // a new epoch
        ++at_.epoch;
        continue;
      }
      story_ids_ = tokenizer_.encode(story.text, story.where);  // empty token lists are skipped
      story_where_ = story.where;
      story_index_ = story.index;
    }
    at_.piece = 0;
    const int64_t length = static_cast<int64_t>(story_ids_.size()) + (windows_.bos >= 0 ? 1 : 0);
    if (options_.context_size == 0 && length > positions && !options_.split_long_stories)
      throw DataError(cat(story_where_, ": ", length, " tokens", windows_.bos >= 0 ? " with the BOS" : "",
                          ", more than the model's ", positions,
                          " positions (--long-stories split cuts such stories into pieces; --context-size N into "
                          "windows)"));
  }
  const TokenWindow window = document_window(story_ids_, at_.piece, windows_);
  const int64_t skip = window.bos && !options_.keep_bos ? 1 : 0;
  const int64_t t = static_cast<int64_t>(window.input.size()) - skip;
  if (compute)
    window_activations(model_, model_b_, options_.reads, window.input, skip == 1, out);
  else
    out.assign(static_cast<size_t>(t * d()), 0.0f);
  ++at_.piece;
  piece_story_ = story_index_;
  piece_begin_ = window.first_token;
  piece_bos_row_ = window.bos && options_.keep_bos;
  if (recording_origins()) piece_story_ids_ = story_ids_;
  if (at_.piece == window_count(static_cast<int64_t>(story_ids_.size()), windows_)) {
    // the story is done: the next piece is the next story's
    story_ids_.clear();
    at_.story = reader_.position();
    at_.piece = 0;
  }
  return t;
}

std::pair<int64_t, int64_t> TextBatcher::piece_row_origin(int64_t r) const {
  if (piece_bos_row_) {
    if (r == 0) return {-1, -1};
    --r;
  }
  return {piece_story_, piece_begin_ + r};
}

void TextBatcher::fill_chunk() {
  chunk_start_ = at_;
  ++chunk_index_;
  chunk_.clear();
  chunk_story_.clear();
  chunk_position_.clear();
  chunk_ids_.clear();
  // Rows held, compared with the chunk's tokens (chunk_tokens * d overflowed int64 for a huge
  // --text-chunk-tokens: the chunk never filled and the run hung).
  for (int64_t piece = 0; static_cast<int64_t>(chunk_.size()) / d() < options_.chunk_tokens; ++piece) {
    // A replica's (or rank's) share of the pieces: round robin, starting one part further each chunk
    // (so that a chunk of few pieces does not always give its first to part 0).
    const bool mine = (piece + chunk_index_) % parts_ == part_;
    const int64_t t = next_piece(piece_, mine);
    chunk_.insert(chunk_.end(), piece_.begin(), piece_.end());
    ++counts_.windows;
    if (mine) ++counts_.windows_run;
    if (!recording_origins()) continue;
    for (int64_t r = 0; r < t; ++r) {
      const auto [story, position] = piece_row_origin(r);
      chunk_story_.push_back(story);
      chunk_position_.push_back(position);
      chunk_ids_.push_back(position >= 0 ? piece_story_ids_[static_cast<size_t>(position)] : -1);
    }
  }
  if (parts_ > 1) {  // the others' pieces
    sum_over_parts_(chunk_.data(), static_cast<int64_t>(chunk_.size()));
    counts_.floats_summed += static_cast<int64_t>(chunk_.size());
  }
  order_.emplace(static_cast<uint64_t>(chunk_.size()) / static_cast<uint64_t>(d()),
                 seed_ + 0x1000 * static_cast<uint64_t>(chunk_index_));
  cursor_ = 0;
}

int64_t TextBatcher::next(float* raw, float* normalized, BatchStats& stats) {
  const int64_t d = this->d();
  if (batch_tokens_ == 0) {
    const int64_t n = next_piece(piece_);
    std::memcpy(raw, piece_.data(), sizeof(float) * n * d);
    stats = normalize_blocks(raw, normalized, n, widths_, normalization_, dataset_scale_,
                             [&](int64_t row) { return piece_row_origin(row).second; }, story_where_);
    if (recording_origins()) record_story_origins(n);
    return n;
  }
  // Every row of the batch is drawn (the position moves on as for the whole batch); a replica keeps
  // rows [part_begin_, part_end_).
  const int64_t n = part_end_ - part_begin_;
  if (recording_origins()) origins_.resize(n, origins_radius_);
  for (int64_t i = 0; i < batch_tokens_; ++i) {
    if (chunk_index_ < 0 || cursor_ == static_cast<int64_t>(chunk_.size()) / d) fill_chunk();
    const int64_t token = static_cast<int64_t>((*order_)(static_cast<uint64_t>(cursor_++)));
    if (i < part_begin_ || i >= part_end_) continue;
    std::memcpy(raw + (i - part_begin_) * d, chunk_.data() + token * d, sizeof(float) * d);
    if (recording_origins()) record_chunk_origin(i - part_begin_, token);
  }
  stats = normalize_blocks(raw, normalized, n, widths_, normalization_, dataset_scale_, [&](int64_t row) { return row; },
                           cat(reader_.path(), " chunk ", chunk_index_, " (row of the batch)"));
  return n;
}

void TextBatcher::set_part(int64_t part, int64_t parts, const SumOverParts& sum_over_parts) {
  if (parts == 1) return;
  std::tie(part_begin_, part_end_) = replica_rows(batch_tokens_, part, parts);
  if (!sum_over_parts) throw Error("TextBatcher::set_part: replicas need a sum over the parts");
  part_ = part;
  parts_ = parts;
  sum_over_parts_ = sum_over_parts;
  max_tokens_ = part_end_ - part_begin_;
}

bool TextBatcher::share_computation(int64_t part, int64_t parts, const SumOverParts& sum_over_parts) {
  if (batch_tokens_ == 0 || parts == 1) return false;  // a story is one batch: every rank runs it itself
  if (!sum_over_parts) throw Error("TextBatcher::share_computation: needs a sum over the parts");
  if (part < 0 || part >= parts) throw Error(cat("TextBatcher::share_computation: part ", part, " of ", parts));
  part_ = part;
  parts_ = parts;
  sum_over_parts_ = sum_over_parts;
  counts_ = {};  // from here on: what the shared batches cost this rank
  return true;
}

void TextBatcher::record_story_origins(int64_t n) {
  origins_.resize(n, origins_radius_);
  origins_.has_token_ids = true;
  const int64_t radius = origins_.radius, width = origins_.width();
  const int64_t length = static_cast<int64_t>(piece_story_ids_.size());
  for (int64_t r = 0; r < n; ++r) {
    const auto [story, position] = piece_row_origin(r);
    origins_.story[r] = story;
    origins_.position[r] = position;
    if (position < 0) continue;  // a kept BOS row: no place in the story
    for (int64_t o = -radius; o <= radius; ++o)
      if (position + o >= 0 && position + o < length)
        origins_.context[r * width + o + radius] = piece_story_ids_[static_cast<size_t>(position + o)];
  }
}

// Neighbours come from the chunk, where a story's tokens lie in order; those of a story that began in
// the chunk before stay -1.
void TextBatcher::record_chunk_origin(int64_t row, int64_t chunk_token) {
  origins_.has_token_ids = true;
  const int64_t tokens = static_cast<int64_t>(chunk_story_.size());
  if (chunk_token >= tokens) return;  // a chunk filled while origins were not recorded
  const int64_t radius = origins_.radius, width = origins_.width();
  const int64_t story = chunk_story_[chunk_token], position = chunk_position_[chunk_token];
  origins_.story[row] = story;
  origins_.position[row] = position;
  if (story < 0) return;  // a kept BOS row
  for (int64_t o = -radius; o <= radius; ++o) {
    const int64_t t = chunk_token + o;
    if (t >= 0 && t < tokens && chunk_story_[t] == story && chunk_position_[t] == position + o)
      origins_.context[row * width + o + radius] = chunk_ids_[t];
  }
}

Json TextBatcher::state() const {
  Json j = Json::object();
  j["mode"] = batch_tokens_ == 0 ? "text_story" : "text_tokens";
  if (batch_tokens_ == 0) {
    j["at"] = at_.to_json();
  } else {
    j["chunk_start"] = chunk_start_.to_json();
    j["chunk_index"] = chunk_index_;
    j["cursor"] = cursor_;
  }
  return j;
}

void TextBatcher::restore(const Json& state) {
  const std::string mode = state.at("mode").as_string();
  if (mode != (batch_tokens_ == 0 ? "text_story" : "text_tokens"))
    throw DataError(cat("resume: the checkpoint was taken in ", printable(mode), " batch mode, but this run uses another"));
  if (batch_tokens_ == 0) {
    seek_piece(PiecePosition::from_json(state.at("at")));
    return;
  }
  const int64_t chunk_index = state.at("chunk_index").as_int(), cursor = state.at("cursor").as_int();
  if (chunk_index < 0) {  // saved before the first batch: back to the start (also after batches were drawn)
    seek_piece(PiecePosition::from_json(state.at("chunk_start")));
    chunk_start_ = at_;
    chunk_index_ = -1;
    cursor_ = 0;
    chunk_.clear();
    order_.reset();
    return;
  }
  seek_piece(PiecePosition::from_json(state.at("chunk_start")));
  chunk_index_ = chunk_index - 1;  // fill_chunk counts it again
  fill_chunk();
  if (cursor < 0 || cursor > static_cast<int64_t>(chunk_.size()) / d())
    throw DataError("resume: the checkpoint's position does not fit this text");
  cursor_ = cursor;
}

DatasetScales estimate_text_dataset_scale(DecoderModel& model, const BpeTokenizer& tokenizer,
                                          const TextDataOptions& options, int64_t sample_tokens, DecoderModel* model_b,
                                          std::vector<double>* mean_squared_norms) {
  StoryReader reader(options.text, options.text_field);
  TextStory story;
  const std::vector<TextRead> reads = resolve_text_reads(model, model_b, options);
  std::vector<int64_t> widths;
  int64_t d = 0;
  for (const TextRead& r : reads) {
    widths.push_back((r.model == 0 ? model : *model_b).config().hook_width(r.site));
    d += widths.back();
  }
  BlockNormSums sums(widths);
  int64_t tokens = 0;
  const int64_t positions = model.config().max_positions;
  if (options.context_size > positions)
    throw UsageError(cat("--context-size ", options.context_size, " is more than the model's ", positions, " positions"));
  const WindowOptions windows{options.bos, options.context_size > 0 ? options.context_size : positions};
  check_window_options(windows);
  std::vector<float> rows;
  while (tokens < sample_tokens && reader.next(story)) {
    const std::vector<int32_t> ids = tokenizer.encode(story.text, story.where);
    const int64_t count = window_count(static_cast<int64_t>(ids.size()), windows);
    for (int64_t k = 0; k < count && tokens < sample_tokens; ++k) {
      const TokenWindow window = document_window(ids, k, windows);
      const bool skip = window.bos && !options.keep_bos;
      window_activations(model, model_b, reads, window.input, skip, rows);
      const int64_t n = static_cast<int64_t>(rows.size()) / d;
      for (int64_t r = 0; r < n; ++r) sums.add(rows.data() + r * d);
      tokens += n;
    }
  }
  if (tokens == 0) throw DataError(cat(options.text, ": the text holds no stories"));
  if (mean_squared_norms) *mean_squared_norms = sums.mean_squared_norms();
  return sums.scales(cat(options.text, ": the model's activations"));
}

}  // namespace sae
