// Where each row of a batch came from (BatchSource::record_origins, BatchOrigins): for an activation
// file with story_lengths and token_ids, story and token batches (whose rows carry their token index
// in column 0, so the test knows which token each row is) against the file itself; a file without
// ids (-2 inside the story, -1 outside); and text through the fixture model, where every row must be
// the activation of the story and position its origin names, with that story's token ids around it.
// Recording does not change the batches.
#include <gtest/gtest.h>

#include <cstring>

#include "lm/gpt_neo.h"
#include "lm/text_data.h"
#include "lm/tokenizer.h"
#include "sae/data/activations.h"
#include "sae/data/synthetic.h"
#include "sae/data/text_batches.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::raw_bytes;
using sae::testing::TempDir;
using sae::testing::write_raw_safetensors;

namespace {

std::string ref(const std::string& name) { return std::string(SAE_SOURCE_DIR) + "/tests/ref/text_train/" + name; }

// Tokens t = 0 .. 59 in stories of these lengths; activation column 0 holds t, token id 1000 + 3 t.
const std::vector<int64_t> kLengths = {7, 3, 12, 1, 9, 8, 20};

void write_file(const std::string& path, bool with_ids) {
  int64_t tokens = 0;
  for (int64_t l : kLengths) tokens += l;
  const int64_t d = 4;
  std::vector<float> x(tokens * d);
  std::vector<int32_t> ids(tokens);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < d; ++j) x[t * d + j] = j == 0 ? float(t) : float((t * 7 + j) % 5) - 2.0f;
    ids[t] = static_cast<int32_t>(1000 + 3 * t);
  }
  std::vector<sae::testing::RawArray> arrays = {
      {"activations", "F32", {tokens, d}, raw_bytes(x)},
      {"story_lengths", "I64", {static_cast<int64_t>(kLengths.size())}, raw_bytes(kLengths)}};
  if (with_ids) arrays.push_back({"token_ids", "I32", {tokens}, raw_bytes(ids)});
  write_raw_safetensors(path, arrays);
}

// What the origin of token t with `radius` should be.
void expect_origin(const BatchOrigins& o, int64_t row, int64_t t, bool with_ids, const std::string& what) {
  int64_t story = 0, begin = 0;
  while (t >= begin + kLengths[story]) begin += kLengths[story++];
  ASSERT_EQ(o.story[row], story) << what << " row " << row;
  ASSERT_EQ(o.position[row], t - begin) << what << " row " << row;
  for (int64_t k = -o.radius; k <= o.radius; ++k) {
    const int64_t u = t + k;
    const int32_t want = u < begin || u >= begin + kLengths[story] ? -1 : (with_ids ? int32_t(1000 + 3 * u) : -2);
    ASSERT_EQ(o.context[row * o.width() + k + o.radius], want) << what << " row " << row << " offset " << k;
  }
}

}  // namespace

TEST(BatchOrigins, StoryAndTokenBatchesOfAnActivationFile) {
  TempDir dir("origins_file");
  for (bool with_ids : {true, false}) {
    const std::string path = dir.str(with_ids ? "ids.safetensors" : "no_ids.safetensors");
    write_file(path, with_ids);
    for (int64_t batch : {int64_t(0), int64_t(13)}) {
      std::unique_ptr<ActivationSource> source = open_activations(path, SyntheticOptions{});
      EXPECT_EQ(source->has_token_ids(), with_ids);
      Batcher plain(*source, batch, batch ? Normalization::None : Normalization::Story, 1.0, 5);
      std::unique_ptr<ActivationSource> source2 = open_activations(path, SyntheticOptions{});
      Batcher recording(*source2, batch, Normalization::None, 1.0, 5);
      Batcher recording_story(*source2, 0, Normalization::Story, 1.0, 5);
      Batcher& with_origins = batch ? recording : recording_story;
      with_origins.record_origins(3);
      const int64_t max = with_origins.max_batch_tokens(), d = source->d();
      std::vector<float> raw(max * d), normalized(max * d), raw2(max * d), normalized2(max * d);
      BatchStats stats;
      for (int step = 0; step < 15; ++step) {
        const int64_t n = plain.next(raw.data(), normalized.data(), stats);
        ASSERT_EQ(with_origins.next(raw2.data(), normalized2.data(), stats), n);
        ASSERT_EQ(std::memcmp(raw.data(), raw2.data(), sizeof(float) * n * d), 0) << "recording changed the batch";
        const BatchOrigins& o = with_origins.origins();
        ASSERT_EQ(o.rows(), n);
        EXPECT_EQ(o.has_token_ids, with_ids);
        for (int64_t r = 0; r < n; ++r)
          expect_origin(o, r, static_cast<int64_t>(raw2[r * d]), with_ids,
                        cat(with_ids ? "ids" : "no ids", ", batch ", batch, ", step ", step));
      }
    }
  }
}

TEST(BatchOrigins, TextStoriesAndTokenBatches) {
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(ref("model"));
  GptNeo model = GptNeo::load(ref("model"));
  // The stories' ids, and each story's hidden_states[2] computed alone.
  std::vector<std::vector<int32_t>> ids;
  std::vector<Tensor> hidden;
  StoryReader reader(ref("stories.txt"));
  TextStory story;
  while (reader.next(story)) {
    ids.push_back(tokenizer.encode(story.text, story.where));
    hidden.push_back(model.hidden_states(ids.back(), 2).clone());
  }
  const int64_t d = model.config().hidden_size, radius = 4;
  for (int64_t batch : {int64_t(0), int64_t(50)}) {
    TextDataOptions options;
    options.text = ref("stories.txt");
    options.site = HookSite{2, HookPoint::ResidPre};
    options.chunk_tokens = 100;  // chunks of a few stories: rows come from several, shuffled
    TextBatcher batcher(model, tokenizer, options, batch, batch ? Normalization::None : Normalization::Story, 1.0, 3);
    batcher.record_origins(radius);
    const int64_t max = batcher.max_batch_tokens();
    std::vector<float> raw(max * d), normalized(max * d);
    BatchStats stats;
    int64_t known_neighbours = 0;
    for (int step = 0; step < 20; ++step) {
      const int64_t n = batcher.next(raw.data(), normalized.data(), stats);
      const BatchOrigins& o = batcher.origins();
      ASSERT_EQ(o.rows(), n);
      EXPECT_TRUE(o.has_token_ids);
      for (int64_t r = 0; r < n; ++r) {
        const int64_t s = o.story[r], p = o.position[r];
        ASSERT_TRUE(s >= 0 && s < static_cast<int64_t>(ids.size())) << s;
        ASSERT_TRUE(p >= 0 && p < static_cast<int64_t>(ids[s].size())) << p;
        // The row is that story's token p.
        ASSERT_EQ(std::memcmp(raw.data() + r * d, hidden[s].data<float>() + p * d, sizeof(float) * d), 0)
            << "batch " << batch << " step " << step << " row " << r;
        for (int64_t k = -radius; k <= radius; ++k) {
          const int32_t got = o.context[r * o.width() + k + radius];
          const int64_t u = p + k;
          const bool inside = u >= 0 && u < static_cast<int64_t>(ids[s].size());
          if (batch == 0) {
            ASSERT_EQ(got, inside ? ids[s][u] : -1) << "story mode, row " << r << " offset " << k;
          } else if (got != -1) {  // token mode: neighbours known when they are in the chunk
            ASSERT_TRUE(inside);
            ASSERT_EQ(got, ids[s][u]);
            ++known_neighbours;
          }
        }
      }
    }
    if (batch) {
      EXPECT_GT(known_neighbours, 100);
    }
  }
}
