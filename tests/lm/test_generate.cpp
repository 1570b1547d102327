// Generation with the KV cache (lm/gpt_neo.h logits_cached, lm/generate.h), against the full
// forward and against Hugging Face (fixtures of scripts/gen_eval_fixture.py in tests/ref/eval: a
// random GPT-Neo with global layers 0, 2 and local layers 1, 3 of window 8, 64 positions):
//   - logits through the cache (the whole sequence at once, one token at a time, in uneven chunks,
//     with a residual hook) equal the full forward's rows, past the window and up to all P positions,
//     and HF's logits of the same sequence;
//   - greedy generation equals HF generate's token ids; sampling is a pure function of the seed and
//     follows softmax(logits / T) (restricted to the top k) in distribution; stopping at EOS;
//   - errors: a full cache, another model's cache, bad ids (the cache unchanged), bad options, a
//     prompt that does not fit, a hook that makes the logits NaN;
//   - CUDA against the CPU (skips without a GPU).
#include <gtest/gtest.h>

#include <algorithm>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>

#include "lm/generate.h"
#include "lm/gpt_neo.h"
#include "tensor/cuda/backend.h"
#include "tensor/ops.h"
#include "tests/util/gpu.h"
#include "tests/util/compare.h"
#include "tests/util/fixture.h"
#include "tests/util/test_util.h"

using namespace sae;

namespace {

constexpr double kRel = 1e-5;  // of the logits' max |value|: float rounding of GEMMs of other shapes

std::string eval_ref(const std::string& name) { return sae::testing::ref_path("eval/" + name); }

std::vector<int32_t> to_ids(const std::vector<int64_t>& values) { return std::vector<int32_t>(values.begin(), values.end()); }

test::Fixture expected() { return test::Fixture(eval_ref("expected.safetensors")); }

// Prompt 0 followed by HF's greedy continuation: 51 ids, longer than the window of 8.
std::vector<int32_t> fixture_sequence() {
  const test::Fixture e = expected();
  std::vector<int32_t> ids = to_ids(e.ints("gen0.prompt"));
  const std::vector<int32_t> more = to_ids(e.ints("gen0.greedy"));
  ids.insert(ids.end(), more.begin(), more.end());
  return ids;
}

// Rows [begin, end) of a [T, V] tensor, on the host.
Tensor rows(const Tensor& t, int64_t begin, int64_t end) { return t.to(Device::CPU).slice_rows(begin, end).clone(); }

// Runs `ids` through a fresh cache in chunks of the given sizes (cycled) and returns all logits [T, V].
Tensor cached_logits(GptNeo& model, const std::vector<int32_t>& ids, const std::vector<int64_t>& chunks,
                     const ResidualHook& hook = {}) {
  const int64_t t = static_cast<int64_t>(ids.size()), v = model.config().vocab_size;
  KvCache cache = model.new_cache(t);
  Tensor all = Tensor::empty(Shape{t, v});
  int64_t done = 0;
  for (size_t c = 0; done < t; ++c) {
    const int64_t n = std::min(chunks[c % chunks.size()], t - done);
    const std::vector<int32_t> part(ids.begin() + done, ids.begin() + done + n);
    Tensor got = model.logits_cached(part, cache, hook).to(Device::CPU);
    EXPECT_EQ(got.shape(), (Shape{n, v}));
    Tensor dst = all.slice_rows(done, done + n);
    copy_(dst, got);
    done += n;
    EXPECT_EQ(cache.length(), done);
  }
  return all;
}

}  // namespace

// ---------------------------------------------------------------- the cache against the full forward

TEST(KvCache, LogitsEqualTheFullForwardInAnyChunking) {
  GptNeo model = GptNeo::load(eval_ref("model"));
  ASSERT_EQ(model.config().window_size, 8);
  ASSERT_EQ(model.config().attention_layers[1], AttentionKind::Local);
  const std::vector<int32_t> ids = fixture_sequence();
  ASSERT_GT(ids.size(), 40u);
  const Tensor full = model.logits(ids);
  const std::vector<std::vector<int64_t>> chunkings = {{static_cast<int64_t>(ids.size())}, {1}, {11, 1}, {5, 7, 3},
                                                        {8}, {9, 2}};
  for (const auto& chunks : chunkings) {
    std::string name = "chunks";
    for (int64_t c : chunks) name += cat(" ", c);
    sae::testing::expect_close_to_scale(cached_logits(model, ids, chunks), full, kRel, name);
  }
}

TEST(KvCache, LogitsEqualHuggingFaceAtPositionsInsideAndPastTheWindow) {
  GptNeo model = GptNeo::load(eval_ref("model"));
  const test::Fixture e = expected();
  const Tensor got = cached_logits(model, fixture_sequence(), {1});
  const std::vector<int64_t> positions = e.ints("gen0.logit_positions");
  const Tensor want = e.tensor("gen0.logits");
  for (size_t i = 0; i < positions.size(); ++i)
    sae::testing::expect_close_to_scale(rows(got, positions[i], positions[i] + 1), rows(want, i, i + 1), kRel,
                                        cat("position ", positions[i]));
}

TEST(KvCache, FillsAllPositionsOfAModelWithTheirLogits) {
  // The tiny model of docs/gpt_neo.md: 64 positions, window 8; its seq3 is 64 tokens long.
  const std::string dir = std::string(SAE_SOURCE_DIR) + "/tests/ref/gpt_neo/";
  GptNeo model = GptNeo::load(dir + "tiny");
  const test::Fixture e(dir + "tiny_expected.safetensors");
  const std::vector<int32_t> ids = to_ids(e.ints("seq3.input_ids"));
  ASSERT_EQ(static_cast<int64_t>(ids.size()), model.config().max_positions);
  sae::testing::expect_close_to_scale(cached_logits(model, ids, {3, 1}), e.tensor("seq3.logits"), kRel, "HF seq3");
  KvCache cache = model.new_cache(64);
  model.logits_cached(ids, cache);
  EXPECT_THROW(model.logits_cached({1}, cache), DataError);  // full
  EXPECT_THROW(model.new_cache(65), DataError);
  EXPECT_THROW(model.new_cache(0), DataError);
}

TEST(KvCache, AppliesTheHookToEveryNewPositionAsTheFullForwardDoes) {
  GptNeo model = GptNeo::load(eval_ref("model"));
  const std::vector<int32_t> ids = fixture_sequence();
  // A position-independent change at each layer (as steering is): add a different vector per layer.
  std::vector<Tensor> shifts;
  for (int k = 0; k <= 4; ++k) {
    std::vector<double> v(32);
    for (int j = 0; j < 32; ++j) v[j] = 0.3 * std::sin(1.7 * j + k);
    shifts.push_back(Tensor::from_vector(v, Shape{32}));
  }
  int64_t rows_seen = 0;
  const ResidualHook hook = [&](int k, Tensor& state) {
    if (k == 2) rows_seen += state.size(0);
    add_(state, shifts[k]);
  };
  const Tensor full = model.logits(ids, hook);
  rows_seen = 0;
  const Tensor cached = cached_logits(model, ids, {4, 1}, hook);
  EXPECT_EQ(rows_seen, static_cast<int64_t>(ids.size()));  // each position hooked once, new rows only
  sae::testing::expect_close_to_scale(cached, full, kRel, "hooked");
  // And the hook matters: without it the logits are far away.
  EXPECT_GT(sae::testing::max_abs_diff(cached, model.logits(ids)), 100 * kRel * sae::testing::max_abs(full));
}

// Steering where a transcoder writes (hook_mlp_out), or at any other point inside a block: the cached
// positions are hooked as the full forward hooks them, one new row at a time.
TEST(KvCache, AppliesASiteHookInsideABlockAsTheFullForwardDoes) {
  GptNeo model = GptNeo::load(eval_ref("model"));
  const std::vector<int32_t> ids = fixture_sequence();
  const int64_t t = static_cast<int64_t>(ids.size()), v = model.config().vocab_size;
  for (HookPoint point : {HookPoint::AttnOut, HookPoint::ResidMid, HookPoint::Ln2Normalized, HookPoint::MlpOut,
                          HookPoint::ResidPost, HookPoint::AttnZ}) {
    const HookSite site{1, point};
    SCOPED_TRACE(hook_name(site));
    int64_t rows_seen = 0;
    const SiteHooks hooks(site, [&](Tensor& state) {
      rows_seen += state.size(0);
      std::vector<double> shift(static_cast<size_t>(state.size(1)));
      for (size_t j = 0; j < shift.size(); ++j) shift[j] = 0.5 * std::sin(1.3 * double(j) + 0.7);
      add_(state, Tensor::from_vector(shift, Shape{state.size(1)}));
    });
    const Tensor full = model.logits_with(ids, hooks);
    rows_seen = 0;
    KvCache cache = model.new_cache(t);
    Tensor cached = Tensor::empty(Shape{t, v});
    for (int64_t p = 0; p < t; p += 3) {  // three positions at a time
      const std::vector<int32_t> part(ids.begin() + p, ids.begin() + std::min(t, p + 3));
      Tensor dst = cached.slice_rows(p, p + static_cast<int64_t>(part.size()));
      copy_(dst, model.logits_cached(part, cache, hooks).to(Device::CPU));
    }
    EXPECT_EQ(rows_seen, t);
    sae::testing::expect_close_to_scale(cached, full, kRel, "hooked");
    EXPECT_GT(sae::testing::max_abs_diff(cached, model.logits(ids)), 100 * kRel * sae::testing::max_abs(full));
  }
}

TEST(KvCache, RefusesBadUseAndStaysUsableAfterAnError) {
  GptNeo model = GptNeo::load(eval_ref("model")), other = GptNeo::load(eval_ref("model"));
  const std::vector<int32_t> ids = fixture_sequence();
  KvCache cache = model.new_cache(20);
  model.logits_cached({ids.begin(), ids.begin() + 10}, cache);
  EXPECT_THROW(other.logits_cached({1}, cache), UsageError);
  EXPECT_THROW(model.logits_cached({1, 5000}, cache), DataError);  // id outside the vocabulary
  EXPECT_THROW(model.logits_cached({}, cache), DataError);
  EXPECT_THROW(model.logits_cached(std::vector<int32_t>(11, 1), cache), DataError);  // no room
  const ResidualHook throwing = [](int k, Tensor&) {
    if (k == 3) throw DataError("hook failed");
  };
  EXPECT_THROW(model.logits_cached({ids[10]}, cache, throwing), DataError);
  EXPECT_EQ(cache.length(), 10);
  // The failed calls left no trace: the next rows still match the full forward.
  const Tensor got = model.logits_cached({ids.begin() + 10, ids.begin() + 20}, cache);
  sae::testing::expect_close_to_scale(got, rows(model.logits({ids.begin(), ids.begin() + 20}), 10, 20), kRel, "after errors");
  // A moved model keeps its caches.
  GptNeo moved = std::move(model);
  cache.clear();
  EXPECT_NO_THROW(moved.logits_cached({ids[0]}, cache, SiteHooks{}, /*last_only=*/true));
  EXPECT_EQ(moved.logits_cached({ids[1], ids[2]}, cache, SiteHooks{}, true).shape(), (Shape{1, moved.config().vocab_size}));
}

// ---------------------------------------------------------------- generate

TEST(Generate, GreedyEqualsHuggingFaceGenerate) {
  GptNeo model = GptNeo::load(eval_ref("model"));
  const test::Fixture e = expected();
  for (int p = 0; p < 2; ++p) {
    GenerateOptions options;
    options.greedy = true;
    options.max_new_tokens = 40;
    const std::vector<int32_t> got = generate(model, to_ids(e.ints(cat("gen", p, ".prompt"))), options);
    EXPECT_EQ(got, to_ids(e.ints(cat("gen", p, ".greedy")))) << "prompt " << p;
  }
}

TEST(Generate, EqualsChoosingFromTheFullForwardAtEveryStep) {
  // An independent loop: no cache, the whole sequence run again for every new token.
  GptNeo model = GptNeo::load(eval_ref("model"));
  const std::vector<int32_t> prompt = to_ids(expected().ints("gen1.prompt"));
  for (const bool greedy : {true, false}) {
    GenerateOptions options;
    options.greedy = greedy;
    options.max_new_tokens = 30;
    options.temperature = 0.8;
    options.top_k = 50;
    options.seed = 11;
    const std::vector<int32_t> got = generate(model, prompt, options);
    Rng rng(options.seed);
    std::vector<int32_t> sequence = prompt, want;
    for (int i = 0; i < options.max_new_tokens; ++i) {
      const Tensor logits = model.logits(sequence);
      const int64_t v = logits.size(1);
      const Tensor last = rows(logits, logits.size(0) - 1, logits.size(0));
      want.push_back(choose_next_token(last.data<float>(), v, options, rng));
      sequence.push_back(want.back());
    }
    EXPECT_EQ(got, want) << (greedy ? "greedy" : "sampled");
  }
}

TEST(Generate, SamplingIsAFunctionOfTheSeed) {
  GptNeo model = GptNeo::load(eval_ref("model"));
  const std::vector<int32_t> prompt = to_ids(expected().ints("gen0.prompt"));
  GenerateOptions options;
  options.max_new_tokens = 25;
  options.seed = 42;
  const std::vector<int32_t> first = generate(model, prompt, options);
  EXPECT_EQ(generate(model, prompt, options), first);
  EXPECT_EQ(static_cast<int64_t>(first.size()), 25);
  int differing = 0;
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    options.seed = seed;
    differing += generate(model, prompt, options) != first;
  }
  EXPECT_EQ(differing, 4);
  // Temperature near 0 is greedy.
  options.temperature = 1e-6;
  GenerateOptions greedy = options;
  greedy.greedy = true;
  EXPECT_EQ(generate(model, prompt, options), generate(model, prompt, greedy));
}

// A model whose vocabulary is padded past its tokenizer's (Pythia, Qwen 2.5): ids without text are
// never chosen, sampled or greedy.
TEST(Generate, NeverChoosesAnIdAtOrPastTheVocabLimit) {
  GptNeo model = GptNeo::load(eval_ref("model"));
  const std::vector<int32_t> prompt = to_ids(expected().ints("gen0.prompt"));
  GenerateOptions options;
  options.max_new_tokens = 25;
  options.seed = 42;
  options.top_k = 0;
  const std::vector<int32_t> free = generate(model, prompt, options);
  std::vector<int32_t> sorted = free;
  std::sort(sorted.begin(), sorted.end());
  // The median free draw: about half of them are at or past it (so the check below can fail).
  const int32_t limit = sorted[sorted.size() / 2];
  options.vocab_limit = limit;
  for (bool greedy : {false, true}) {
    options.greedy = greedy;
    for (int32_t id : generate(model, prompt, options)) EXPECT_LT(id, limit) << (greedy ? "greedy" : "sampled");
  }
  options.greedy = false;
  options.vocab_limit = model.config().vocab_size;  // no padding: as without a limit
  EXPECT_EQ(generate(model, prompt, options), free);
  options.vocab_limit = -1;
  EXPECT_THROW(generate(model, prompt, options), UsageError);
}

TEST(Generate, StopsRightAfterTheEndOfTextId) {
  GptNeo model = GptNeo::load(eval_ref("model"));
  const test::Fixture e = expected();
  const std::vector<int32_t> prompt = to_ids(e.ints("gen0.prompt")), greedy = to_ids(e.ints("gen0.greedy"));
  GenerateOptions options;
  options.greedy = true;
  options.max_new_tokens = 40;
  options.eos_ids = {greedy[6]};
  size_t first = 0;
  while (greedy[first] != greedy[6]) ++first;
  const std::vector<int32_t> got = generate(model, prompt, options);
  EXPECT_EQ(got, std::vector<int32_t>(greedy.begin(), greedy.begin() + first + 1));
  // Any of several: the first generated of them ends it.
  options.eos_ids = {greedy[9], greedy[4], -1};
  size_t earliest = 0;
  while (greedy[earliest] != greedy[9] && greedy[earliest] != greedy[4]) ++earliest;
  EXPECT_EQ(generate(model, prompt, options), std::vector<int32_t>(greedy.begin(), greedy.begin() + earliest + 1));
  options.max_new_tokens = 0;
  EXPECT_TRUE(generate(model, prompt, options).empty());
}

TEST(Generate, RefusesBadOptionsAndPromptsThatDoNotFit) {
  GptNeo model = GptNeo::load(eval_ref("model"));
  GenerateOptions options;
  options.temperature = 0;
  EXPECT_THROW(generate(model, {1, 2}, options), UsageError);
  options.temperature = NAN;
  EXPECT_THROW(generate(model, {1, 2}, options), UsageError);
  options = GenerateOptions{};
  options.top_k = -1;
  EXPECT_THROW(generate(model, {1, 2}, options), UsageError);
  options = GenerateOptions{};
  options.max_new_tokens = -2;
  EXPECT_THROW(generate(model, {1, 2}, options), UsageError);
  options = GenerateOptions{};
  EXPECT_THROW(generate(model, {}, options), DataError);
  options.max_new_tokens = 60;
  EXPECT_THROW(generate(model, std::vector<int32_t>(5, 1), options), DataError);  // 65 > 64 positions
  options.max_new_tokens = std::numeric_limits<int64_t>::max();  // the sum overflowed: "a cache of -9.2e18 positions"
  sae::testing::expect_error<DataError>([&] { generate(model, std::vector<int32_t>(5, 1), options); },
                                        {"a prompt of 5 tokens plus 9223372036854775807 new tokens is more than the "
                                         "model's 64 positions"});
  options.max_new_tokens = 59;
  EXPECT_EQ(generate(model, std::vector<int32_t>(5, 1), options).size(), 59u);  // exactly 64
  const ResidualHook poison = [](int k, Tensor& state) {
    if (k == 2) fill_(state, NAN);
  };
  options.max_new_tokens = 3;
  try {
    generate(model, {1, 2}, options, poison);
    ADD_FAILURE() << "NaN logits accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("not finite"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------- choosing a token

TEST(ChooseNextToken, GreedyTakesTheLowestIdAmongEqualMaxima) {
  const std::vector<float> logits = {0.5f, 2.0f, -1.0f, 2.0f};
  GenerateOptions options;
  options.greedy = true;
  Rng rng(1);
  EXPECT_EQ(choose_next_token(logits.data(), 4, options, rng), 1);
}

TEST(ChooseNextToken, SamplesSoftmaxOfLogitsOverTemperatureRestrictedToTopK) {
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f, 2.5f, 2.0f};
  const int n = 60000;
  for (const double temperature : {1.0, 0.6, 2.5}) {
    for (const int64_t top_k : {int64_t(0), int64_t(3)}) {
      GenerateOptions options;
      options.temperature = temperature;
      options.top_k = top_k;
      // Expected: softmax(l / T) over all, or over the 3 largest (ids 4, then 1 and 5 tied at 2.0).
      std::vector<double> p(6, 0.0);
      double z = 0;
      for (int v = 0; v < 6; ++v) {
        const bool kept = top_k == 0 || v == 4 || v == 1 || v == 5;
        if (kept) p[v] = std::exp(logits[v] / temperature), z += p[v];
      }
      for (double& x : p) x /= z;
      Rng rng(7);
      std::map<int, int> counts;
      for (int i = 0; i < n; ++i) ++counts[choose_next_token(logits.data(), 6, options, rng)];
      for (int v = 0; v < 6; ++v) {
        const double sigma = std::sqrt(n * p[v] * (1 - p[v]));
        EXPECT_NEAR(counts[v], n * p[v], 5 * sigma + 1) << "T " << temperature << " top_k " << top_k << " id " << v;
      }
    }
  }
  // A top k that ties at the boundary keeps every tied id, as transformers' TopKLogitsWarper does:
  // top_k 2 keeps 4 (2.5) and both 1 and 5 (2.0), each of the tied ones drawn with its softmax share.
  GenerateOptions options;
  options.top_k = 2;
  Rng rng(3);
  std::map<int, int> counts;
  for (int i = 0; i < n; ++i) ++counts[choose_next_token(logits.data(), 6, options, rng)];
  const double z = std::exp(2.5) + 2 * std::exp(2.0);
  for (int v = 0; v < 6; ++v) {
    const double p = v == 4 ? std::exp(2.5) / z : v == 1 || v == 5 ? std::exp(2.0) / z : 0.0;
    const double sigma = std::sqrt(n * p * (1 - p));
    EXPECT_NEAR(counts[v], n * p, 5 * sigma + 1) << "top_k 2 with a tie at the boundary, id " << v;
  }
}

// ---------------------------------------------------------------- CUDA

TEST(KvCacheCuda, LogitsAndGenerationMatchTheCpu) {
  SKIP_WITHOUT_GPU();
  GptNeo cpu = GptNeo::load(eval_ref("model")), gpu = GptNeo::load(eval_ref("model"), Device::CUDA);
  const std::vector<int32_t> ids = fixture_sequence();
  sae::testing::expect_close_to_scale(cached_logits(gpu, ids, {5, 1}), cpu.logits(ids), kRel, "cuda cached vs cpu full");
  const ResidualHook hook = [](int k, Tensor& state) {
    if (k == 2) add_(state, Tensor::full(Shape{state.size(1)}, 0.5, DType::F32, state.device()));
  };
  sae::testing::expect_close_to_scale(cached_logits(gpu, ids, {1}, hook), cpu.logits(ids, hook), kRel, "cuda hooked");
  const test::Fixture e = expected();
  GenerateOptions options;
  options.greedy = true;
  options.max_new_tokens = 40;
  EXPECT_EQ(generate(gpu, to_ids(e.ints("gen0.prompt")), options), to_ids(e.ints("gen0.greedy")));
}

TEST(Generate, EndOfTextIdsAreTheTokenizersAndTheModelFolders) {
  sae::testing::TempDir dir("eos_ids");
  const std::string folder = dir.str("model");
  std::filesystem::create_directories(folder);
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(folder + "/" + name, std::ios::trunc) << text;
  };
  EXPECT_EQ(end_of_text_ids(folder, 4096, 4097), std::vector<int32_t>({4096}));  // no config files
  EXPECT_TRUE(end_of_text_ids(folder, -1, 4097).empty());
  write("config.json", R"({"eos_token_id": 7})");
  EXPECT_EQ(end_of_text_ids(folder, 4096, 4097), std::vector<int32_t>({4096, 7}));
  // generation_config.json, when there, is read instead (as transformers' GenerationConfig);
  // duplicates and ids outside the vocabulary are left out.
  write("generation_config.json", R"({"eos_token_id": [5, 4096, 99999, 5, -3]})");
  EXPECT_EQ(end_of_text_ids(folder, 4096, 4097), std::vector<int32_t>({4096, 5}));
  write("generation_config.json", R"({"eos_token_id": null})");
  EXPECT_EQ(end_of_text_ids(folder, 4096, 4097), std::vector<int32_t>({4096}));
  for (const char* bad : {R"({"eos_token_id": 1.5})", R"({"eos_token_id": ["2"]})", R"({"eos_token_id": {}})"}) {
    write("generation_config.json", bad);
    EXPECT_THROW(
        {
          try {
            end_of_text_ids(folder, 4096, 4097);
          } catch (const DataError& e) {
            EXPECT_NE(std::string(e.what()).find("generation_config.json: 'eos_token_id' must be"), std::string::npos)
                << e.what();
            throw;
          }
        },
        DataError)
        << bad;
  }
}
