// ConcatSource (see concat_source.h).
#include "sae/data/concat_source.h"

#include <cstring>

namespace sae {

ConcatSource::ConcatSource(std::vector<std::unique_ptr<ActivationSource>> sources) : sources_(std::move(sources)) {
  if (sources_.empty()) throw Error("ConcatSource: no sources");
  const ActivationSource& first = *sources_[0];
  for (const auto& s : sources_) {
    if (s->num_tokens() != first.num_tokens())
      throw DataError(cat(s->name(), " has ", s->num_tokens(), " tokens but ", first.name(), " has ", first.num_tokens(),
                          ": activations read together must be of the same tokens"));
    if (!stories_ && s->num_stories() > 0) stories_ = s.get();
    if (!ids_ && s->has_token_ids()) ids_ = s.get();
    offsets_.push_back(d_);
    for (int64_t w : s->block_widths()) widths_.push_back(w);
    d_ += s->d();
  }
  if (!stories_) stories_ = sources_[0].get();
  for (const auto& s : sources_) {
    if (s->num_stories() == 0 || s.get() == stories_) continue;
    bool same = s->num_stories() == stories_->num_stories();
    for (int64_t k = 0; same && k < s->num_stories(); ++k)
      same = s->story_begin(k) == stories_->story_begin(k) && s->story_length(k) == stories_->story_length(k);
    if (!same)
      throw DataError(cat(s->name(), " and ", stories_->name(),
                          " have different story boundaries: activations read together must be of the same stories"));
  }
}

void ConcatSource::place(size_t k, int64_t rows, float* out) const {
  const int64_t w = sources_[k]->d();
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(out + r * d_ + offsets_[k], scratch_.data() + r * w, sizeof(float) * w);
}

void ConcatSource::read_tokens(int64_t begin, int64_t count, float* out) {
  for (size_t k = 0; k < sources_.size(); ++k) {
    scratch_.resize(static_cast<size_t>(count * sources_[k]->d()));
    sources_[k]->read_tokens(begin, count, scratch_.data());
    place(k, count, out);
  }
}

void ConcatSource::read_token_list(const std::vector<int64_t>& tokens, float* out) {
  const int64_t rows = static_cast<int64_t>(tokens.size());
  for (size_t k = 0; k < sources_.size(); ++k) {
    scratch_.resize(static_cast<size_t>(rows * sources_[k]->d()));
    sources_[k]->read_token_list(tokens, scratch_.data());
    place(k, rows, out);
  }
}

Json ConcatSource::describe() const {
  Json j = Json::object();
  j["kind"] = "side_by_side";
  Json parts = Json::array();
  for (const auto& s : sources_) parts.push_back(s->describe());
  j["sources"] = parts;
  j["tokens"] = num_tokens();
  j["d"] = d_;
  return j;
}

std::string ConcatSource::name() const {
  std::string out;
  for (const auto& s : sources_) out += (out.empty() ? "" : " + ") + s->name();
  return out;
}

void ConcatSource::expect_random_access(bool random) {
  for (auto& s : sources_) s->expect_random_access(random);
}

}  // namespace sae
