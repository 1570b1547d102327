// Documents into the model's inputs (lm/text_windows.h) and TextBatcher on them: windows of
// --context-size positions with a BOS first (SAELens's prepend_bos), the BOS rows left out of the
// batches unless kept, --prepend-bos auto / on / off against the tokenizers of the fixtures, and
// hook points other than the residual stream (attn.hook_z) read from a GPT-2 fixture model.
#include <gtest/gtest.h>

#include "lm/model_loader.h"
#include "lm/text_windows.h"
#include "sae/data/text_batches.h"
#include "tests/util/compare.h"
#include "tests/util/test_util.h"

using namespace sae;

namespace {

std::string stories() { return sae::testing::ref_path("text_train/stories.txt"); }
std::string gpt2_dir() { return sae::testing::ref_path("models/gpt2"); }

}  // namespace

TEST(TextWindows, WindowsCutDocumentsAsSaeLensDoes) {
  const std::vector<int32_t> doc = {10, 11, 12, 13, 14, 15, 16};
  const WindowOptions with_bos{99, 4}, without{-1, 4};
  EXPECT_EQ(window_count(7, with_bos), 3);  // 3 + 3 + 1 tokens, each after the BOS
  EXPECT_EQ(window_count(7, without), 2);   // 4 + 3
  EXPECT_EQ(window_count(0, with_bos), 0);
  EXPECT_EQ(window_count(6, with_bos), 2);
  TokenWindow w = document_window(doc, 1, with_bos);
  EXPECT_EQ(w.input, (std::vector<int32_t>{99, 13, 14, 15}));
  EXPECT_EQ(w.first_token, 3);
  EXPECT_EQ(w.tokens, 3);
  EXPECT_TRUE(w.bos);
  w = document_window(doc, 2, with_bos);
  EXPECT_EQ(w.input, (std::vector<int32_t>{99, 16}));
  w = document_window(doc, 1, without);
  EXPECT_EQ(w.input, (std::vector<int32_t>{14, 15, 16}));
  EXPECT_FALSE(w.bos);
  EXPECT_THROW(check_window_options(WindowOptions{99, 1}), UsageError);
  EXPECT_THROW(check_window_options(WindowOptions{-1, 0}), UsageError);
  EXPECT_NO_THROW(check_window_options(WindowOptions{-1, 1}));
  EXPECT_THROW(parse_bos_mode("yes"), UsageError);
}

TEST(TextWindows, PrependBosAutoFollowsTheTokenizer) {
  // Llama 3's post-processor adds <|begin_of_text|>; GPT-2's tokenizer adds nothing, but its folder
  // names <|endoftext|> as BOS for --prepend-bos on; a tokenizer that names none refuses on.
  const BpeTokenizer llama = BpeTokenizer::from_model_dir(sae::testing::ref_path("tokenizers/llama3"));
  EXPECT_EQ(resolve_bos(BosMode::Auto, llama), 1024);
  EXPECT_EQ(resolve_bos(BosMode::Off, llama), -1);
  const BpeTokenizer gpt2 = BpeTokenizer::from_model_dir(gpt2_dir());
  EXPECT_EQ(resolve_bos(BosMode::Auto, gpt2), -1);
  EXPECT_EQ(gpt2.token_text(resolve_bos(BosMode::On, gpt2)), "<|endoftext|>");
  const BpeTokenizer qwen = BpeTokenizer::from_model_dir(sae::testing::ref_path("tokenizers/qwen2"));
  try {
    resolve_bos(BosMode::On, qwen);
    ADD_FAILURE() << "no error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("names no BOS"), std::string::npos) << e.what();
  }
}

// Story batches at attn.hook_z of the GPT-2 fixture with a BOS and 16-position windows: each batch is
// the rows of one window after its BOS (or with it, when kept), as the model computes them.
TEST(TextWindows, TextBatcherLeavesBosRowsOutUnlessKept) {
  DecoderModel model = load_decoder_model(gpt2_dir());
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(gpt2_dir());
  const int32_t bos = resolve_bos(BosMode::On, tokenizer);
  const HookSite site{1, HookPoint::AttnZ};
  StoryReader reader(stories());
  TextStory story;
  ASSERT_TRUE(reader.next(story));
  const std::vector<int32_t> doc = tokenizer.encode(story.text);
  ASSERT_GT(doc.size(), 15u);
  for (bool keep : {false, true}) {
    TextDataOptions options;
    options.text = stories();
    options.site = site;
    options.bos = bos;
    options.context_size = 16;
    options.keep_bos = keep;
    TextBatcher batcher(model, tokenizer, options, 0, Normalization::None, 1.0, 1);
    EXPECT_EQ(batcher.d(), 32);
    std::vector<float> raw(static_cast<size_t>(batcher.max_batch_tokens() * 32)), normalized(raw.size());
    BatchStats stats;
    int64_t served = 0;
    for (int64_t k = 0; k < window_count(static_cast<int64_t>(doc.size()), WindowOptions{bos, 16}); ++k) {
      const int64_t n = batcher.next(raw.data(), normalized.data(), stats);
      const TokenWindow w = document_window(doc, k, WindowOptions{bos, 16});
      const Tensor want = model.forward_to_site(w.input, site).clone();
      const int64_t skip = keep ? 0 : 1;
      ASSERT_EQ(n, static_cast<int64_t>(w.input.size()) - skip) << k;
      const Tensor got = Tensor::from_data(raw.data(), Shape{n, 32});
      sae::testing::expect_bitwise_equal(got, want.slice_rows(skip, want.size(0)), cat("window ", k, " keep ", keep));
      served += n;
    }
    const int64_t windows = window_count(static_cast<int64_t>(doc.size()), WindowOptions{bos, 16});
    EXPECT_EQ(served, static_cast<int64_t>(doc.size()) + (keep ? windows : 0));
  }
  // The context may not pass the model's positions.
  TextDataOptions too_long;
  too_long.text = stories();
  too_long.context_size = 65;
  EXPECT_THROW(TextBatcher(model, tokenizer, too_long, 0, Normalization::None, 1.0, 1), UsageError);
}
