// ConcatSource: several activation sources read side by side, one row per token holding each
// source's row in turn (column blocks): a transcoder's input and target (--data X --target-data Y),
// a crosscoder's sources (--data A,B,C). The sources must hold the same tokens: equal token counts
// and, where they have story boundaries, equal ones (DataError naming both otherwise). Stories and
// token ids are the first source's (the others' when it has none).
#pragma once
#include <memory>
#include <vector>

#include "sae/data/activations.h"

namespace sae {

class ConcatSource : public ActivationSource {
 public:
  explicit ConcatSource(std::vector<std::unique_ptr<ActivationSource>> sources);
  int64_t d() const override { return d_; }
  std::vector<int64_t> block_widths() const override { return widths_; }
  int64_t num_tokens() const override { return sources_[0]->num_tokens(); }
  int64_t num_stories() const override { return stories_->num_stories(); }
  int64_t story_begin(int64_t story) const override { return stories_->story_begin(story); }
  int64_t story_length(int64_t story) const override { return stories_->story_length(story); }
  void read_tokens(int64_t begin, int64_t count, float* out) override;
  void read_token_list(const std::vector<int64_t>& tokens, float* out) override;
  Json describe() const override;
  std::string name() const override;
  void expect_random_access(bool random) override;
  bool has_token_ids() const override { return ids_ != nullptr; }
  int32_t token_id(int64_t token) const override { return ids_ ? ids_->token_id(token) : -1; }

 private:
  // Spreads `rows` rows of source k (packed in scratch_) into its column block of out.
  void place(size_t k, int64_t rows, float* out) const;

  std::vector<std::unique_ptr<ActivationSource>> sources_;
  std::vector<int64_t> widths_, offsets_;  // per source: its width and first column
  int64_t d_ = 0;
  const ActivationSource* stories_ = nullptr;  // whose story boundaries the rows have
  const ActivationSource* ids_ = nullptr;      // whose token ids
  std::vector<float> scratch_;
};

}  // namespace sae
