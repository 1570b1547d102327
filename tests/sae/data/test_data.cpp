// Activation sources and batches: the synthetic generator's determinism and statistics, the token
// permutation, story and token batching, the three normalisations, and activation files.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>

#include "sae/data/batches.h"
#include "sae/data/synthetic.h"
#include "tensor/ops.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::TempDir;

namespace {
SyntheticOptions small_synthetic() {
  SyntheticOptions o;
  o.d = 24;
  o.concepts = 60;
  o.story_concepts = 8;
  o.story_active = 2;
  o.stories = 50;
  o.mean_length = 20;
  o.active = 3;
  o.seed = 7;
  return o;
}
}  // namespace

TEST(Synthetic, TokensArePureFunctionsOfTheirIndex) {
  SyntheticSource a(small_synthetic()), b(small_synthetic());
  const int64_t d = a.d(), n = 60;
  std::vector<float> block(n * d), single(d);
  a.read_tokens(100, n, block.data());
  // The same tokens read one at a time, in reverse, from a second source.
  for (int64_t t = n - 1; t >= 0; --t) {
    b.read_tokens(100 + t, 1, single.data());
    for (int64_t j = 0; j < d; ++j) ASSERT_EQ(single[j], block[t * d + j]) << "token " << 100 + t;
  }
  SyntheticOptions other = small_synthetic();
  other.seed = 8;
  SyntheticSource c(other);
  c.read_tokens(100, 1, single.data());
  EXPECT_NE(single[0], block[0]);
}

TEST(Synthetic, StoryLengthsAndUnitConcepts) {
  SyntheticOptions o = small_synthetic();
  o.stories = 400;
  o.mean_length = 218;
  o.noise = 0.0;
  o.mean_norm = 0.0;
  SyntheticSource s(o);
  EXPECT_EQ(s.num_stories(), 400);
  EXPECT_NEAR(double(s.num_tokens()) / 400.0, 218.0, 12.0);  // mean story length
  // Concepts are unit vectors.
  Tensor norms = norm2(s.concepts(), 1);
  EXPECT_NEAR(reduce(ReduceOp::min, norms).item(), 1.0, 1e-5);
  EXPECT_NEAR(reduce(ReduceOp::max, norms).item(), 1.0, 1e-5);
}

TEST(Synthetic, TokensAreSparsePositiveMixturesWithStoryConcepts) {
  // No noise and no mean: a token is sum_k m_k c_k with m_k in [0.5, 1.5). In d = 256 the random
  // concepts are nearly orthogonal, so projecting on them shows which are on.
  SyntheticOptions o;
  o.d = 256;
  o.concepts = 60;
  o.story_concepts = 8;
  o.story_active = 2;
  o.story_presence = 0.8;
  o.active = 3;
  o.zipf = 0.0;
  o.stories = 20;
  o.mean_length = 200;
  o.noise = 0.0;
  o.mean_norm = 0.0;
  o.seed = 3;
  SyntheticSource s(o);
  const int64_t story = 5, n = s.story_length(story);
  std::vector<float> x(n * o.d);
  s.read_tokens(s.story_begin(story), n, x.data());
  Tensor proj = matmul(Tensor::from_data(x.data(), Shape{n, o.d}), s.concepts(), false, true);  // [n, C]
  std::vector<double> p = proj.to_vector();
  std::vector<int> story_hits(o.story_concepts, 0);
  double active_per_token = 0;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t k = 0; k < o.concepts; ++k)
      if (p[t * o.concepts + k] > 0.35) {
        active_per_token += 1.0 / double(n);
        if (k < o.story_concepts) ++story_hits[k];
      }
  // About 0.8 * 2 story concepts + ~3 token concepts per token.
  EXPECT_GT(active_per_token, 3.0);
  EXPECT_LT(active_per_token, 6.5);
  // Exactly two story concepts are on for most tokens of this story; the others almost never.
  int frequent = 0;
  for (int hits : story_hits) {
    if (hits > 0.6 * n) ++frequent;
    else EXPECT_LT(hits, 0.1 * n);
  }
  EXPECT_EQ(frequent, 2);
}

// Sizes that would overflow int64 (or need an absurd amount of memory) and scales that would make
// float32 activations infinite are refused by validate() with a UsageError, before the generator
// allocates anything (found by fuzz/fuzz_train_config).
TEST(Synthetic, ValidateRefusesSizesThatOverflowAndScalesThatMakeInf) {
  auto refused = [](auto change) {
    SyntheticOptions o;
    change(o);
    try {
      o.validate();
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_EQ(refused([](SyntheticOptions&) {}), "accepted");  // the defaults
  EXPECT_NE(refused([](SyntheticOptions& o) { o.d = int64_t(1) << 62, o.concepts = 4, o.story_concepts = 0, o.story_active = 0; })
                .find("--synthetic-d must be in [1, 1e6]"),
            std::string::npos);
  EXPECT_NE(refused([](SyntheticOptions& o) { o.d = 768, o.concepts = int64_t(1) << 53; }).find("at most 2^30"), std::string::npos);
  EXPECT_NE(refused([](SyntheticOptions& o) { o.stories = INT64_MAX; }).find("--synthetic-stories must be in [1, 1e8]"),
            std::string::npos);
  EXPECT_NE(refused([](SyntheticOptions& o) { o.stories = int64_t(1) << 53; }).find("--synthetic-stories"), std::string::npos);
  // Scales that would make float32 activations infinite; NaN and Inf too.
  EXPECT_NE(refused([](SyntheticOptions& o) { o.noise = 1e300; }).find("--synthetic-noise must be in [0, 1e6]"), std::string::npos);
  EXPECT_NE(refused([](SyntheticOptions& o) { o.magnitude = 1e39; }).find("--synthetic-magnitude"), std::string::npos);
  EXPECT_NE(refused([](SyntheticOptions& o) { o.mean_norm = INFINITY; }).find("--synthetic-mean-norm"), std::string::npos);
  EXPECT_NE(refused([](SyntheticOptions& o) { o.noise = NAN; }).find("--synthetic-noise"), std::string::npos);
  // The largest accepted sizes and scales; the generator's tokens stay finite.
  {
    SyntheticOptions o;
    o.d = 16, o.concepts = 32, o.story_concepts = 4, o.story_active = 2, o.stories = 3, o.mean_length = 8;
    o.magnitude = 1e6, o.mean_norm = 1e6, o.noise = 1e6, o.active = 1000;
    SyntheticSource s(o);
    std::vector<float> x(s.story_length(0) * o.d);
    s.read_tokens(0, s.story_length(0), x.data());
    for (float v : x) EXPECT_TRUE(std::isfinite(v));
  }
  EXPECT_EQ(refused([](SyntheticOptions& o) { o.d = 1000000, o.concepts = 1073, o.story_concepts = 0, o.story_active = 0; }),
            "accepted");
  EXPECT_EQ(refused([](SyntheticOptions& o) { o.stories = 100000000; }), "accepted");
}

TEST(RandomPermutation, IsABijection) {
  for (uint64_t n : {1ull, 2ull, 7ull, 1000ull, 4099ull}) {
    RandomPermutation p(n, 3);
    std::set<uint64_t> seen;
    for (uint64_t i = 0; i < n; ++i) {
      uint64_t v = p(i);
      ASSERT_LT(v, n);
      seen.insert(v);
    }
    EXPECT_EQ(seen.size(), n);
  }
  RandomPermutation a(1000, 1), b(1000, 2);
  int same = 0;
  for (uint64_t i = 0; i < 1000; ++i) same += a(i) == b(i);
  EXPECT_LT(same, 20);
}

TEST(Batcher, StoryModeIsFileOrderAndNormalisesPerStory) {
  SyntheticSource s(small_synthetic());
  Batcher batcher(s, 0, Normalization::Story, 1.0, 0);
  const int64_t d = s.d(), max = batcher.max_batch_tokens();
  EXPECT_EQ(max, s.longest_story());
  std::vector<float> raw(max * d), norm(max * d), expect(max * d);
  for (int64_t story = 0; story < s.num_stories() + 2; ++story) {
    BatchStats st;
    const int64_t n = batcher.next(raw.data(), norm.data(), st);
    const int64_t k = story % s.num_stories();  // wraps around after the last story
    ASSERT_EQ(n, s.story_length(k));
    s.read_tokens(s.story_begin(k), n, expect.data());
    double sum = 0;
    for (int64_t i = 0; i < n * d; ++i) {
      ASSERT_EQ(raw[i], expect[i]);
      sum += raw[i];
    }
    // x_n = (x - mean) / std * sqrt(d) with the unbiased std over all n*d elements
    const double mean = sum / double(n * d);
    double sq = 0;
    for (int64_t i = 0; i < n * d; ++i) sq += (raw[i] - mean) * (raw[i] - mean);
    const double stdev = std::sqrt(sq / double(n * d - 1));
    for (int64_t i = 0; i < n * d; i += 37)
      ASSERT_NEAR(norm[i], (raw[i] - mean) / stdev * std::sqrt(double(d)), 1e-4 * std::sqrt(double(d)));
  }
}

TEST(Batcher, TokenModeVisitsEveryTokenOncePerEpochAndResumes) {
  SyntheticOptions o = small_synthetic();
  o.stories = 10;
  SyntheticSource s(o);
  const int64_t n_tokens = s.num_tokens(), batch = 16, d = s.d();
  Batcher batcher(s, batch, Normalization::None, 1.0, 5);
  std::vector<float> raw(batch * d), norm(batch * d), token(d);
  // Identify tokens by their first value (distinct with overwhelming probability).
  std::map<float, int64_t> id;
  for (int64_t t = 0; t < n_tokens; ++t) {
    s.read_tokens(t, 1, token.data());
    id[token[0]] = t;
  }
  ASSERT_EQ(static_cast<int64_t>(id.size()), n_tokens);
  std::vector<int> visits(n_tokens, 0);
  const int64_t full_batches = n_tokens / batch;
  Json saved;
  std::vector<float> after_save;
  for (int64_t b = 0; b < full_batches; ++b) {
    BatchStats st;
    batcher.next(raw.data(), norm.data(), st);
    for (int64_t i = 0; i < batch; ++i) ++visits[id.at(raw[i * d])];
    if (b == 2) saved = batcher.state();
    if (b == 3) after_save.assign(raw.begin(), raw.end());
  }
  int64_t visited = 0;
  for (int v : visits) {
    EXPECT_LE(v, 1);
    visited += v;
  }
  EXPECT_EQ(visited, full_batches * batch);
  // A batcher restored from the saved position continues with the same batch.
  Batcher again(s, batch, Normalization::None, 1.0, 5);
  again.restore(saved);
  BatchStats st;
  again.next(raw.data(), norm.data(), st);
  EXPECT_EQ(std::vector<float>(raw.begin(), raw.end()), after_save);
}

TEST(Batcher, DatasetNormalisationScalesTheMeanNormToSqrtD) {
  // The estimate by its definition (docs/contract.md: s = sqrt(d) / mean ||x||, SAELens's norm
  // scaling factor, over up to `sample` tokens spread evenly through the data: token
  // floor((i + 1/2) T / n) for i < n), recomputed here; and the raw mean ||x||^2 of the same sample.
  SyntheticSource s(small_synthetic());
  const int64_t d = s.d(), tokens = s.num_tokens();
  ASSERT_GT(tokens, 600);
  std::vector<float> row(d);
  for (int64_t sample : {int64_t(1), int64_t(7), tokens / 3, tokens, int64_t(65536)}) {
    const int64_t n = std::min(sample, tokens);
    double norms = 0, squares = 0;
    for (int64_t i = 0; i < n; ++i) {
      s.read_tokens(static_cast<int64_t>((i + 0.5) * double(tokens) / double(n)), 1, row.data());
      double sq = 0;
      for (float v : row) sq += double(v) * v;
      norms += std::sqrt(sq);
      squares += sq;
    }
    const double want = std::sqrt(double(d)) / (norms / double(n));
    EXPECT_NEAR(estimate_dataset_scale(s, sample), want, 1e-12 * want) << "sample " << sample;
    std::vector<double> mean_squared_norms;
    estimate_dataset_scales(s, sample, &mean_squared_norms);
    ASSERT_EQ(mean_squared_norms.size(), 1u);
    EXPECT_NEAR(mean_squared_norms[0], squares / double(n), 1e-12 * squares / double(n)) << "sample " << sample;
  }
  // Over the whole data set the scaled mean norm is sqrt(d), and so the mean squared norm is above d
  // (by the variance of the norms): the two definitions differ on this data.
  const double scale = estimate_dataset_scale(s, tokens);
  std::vector<float> x(tokens * d);
  s.read_tokens(0, tokens, x.data());
  double norm_sum = 0, sq_sum = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    double sq = 0;
    for (int64_t j = 0; j < d; ++j) sq += double(x[t * d + j]) * x[t * d + j] * scale * scale;
    norm_sum += std::sqrt(sq);
    sq_sum += sq;
  }
  EXPECT_NEAR(norm_sum / double(tokens), std::sqrt(double(d)), 1e-12 * d);
  EXPECT_GT(sq_sum / double(tokens), 1.01 * double(d));
}

TEST(Batcher, RejectsImpossibleCombinations) {
  SyntheticSource s(small_synthetic());
  EXPECT_THROW(Batcher(s, 16, Normalization::Story, 1.0, 0), UsageError);   // story stats need story batches
  EXPECT_THROW(Batcher(s, 1 << 30, Normalization::None, 1.0, 0), UsageError);  // batch larger than the data
  EXPECT_THROW(parse_normalization("zscore"), UsageError);
}

TEST(Batcher, ScalesOutsideFloat32AreRefusedNotTurnedIntoInf) {
  // A story of std 1e-39 (sqrt(d) / std overflows float32) or a dataset scale past FLT_MAX made
  // every input inf or NaN, which the ReLU turned into all-zero features (sae_apply exit 0).
  std::vector<float> raw(4 * 8), out(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) raw[i] = static_cast<float>(((i * 7) % 5) * 1e-39);
  auto token = [](int64_t row) { return 30 + row; };
  try {
    normalize_batch(raw.data(), out.data(), 4, 8, Normalization::Story, 1.0, token, "acts.npy");
    FAIL() << "a scale past float32's range was used";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("acts.npy: the story at token 30"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("outside float32's range"), std::string::npos) << e.what();
  }
  EXPECT_THROW(normalize_batch(raw.data(), out.data(), 4, 8, Normalization::Dataset, 1e39, token, "acts.npy"), DataError);
  // Scaled up to a normal range, the same story normalises to what it does at any scale.
  for (float& v : raw) v *= 1e30f;
  normalize_batch(raw.data(), out.data(), 4, 8, Normalization::Story, 1.0, token, "acts.npy");
  for (float v : out) EXPECT_TRUE(std::isfinite(v));
  // A saved scale a float32 multiply cannot hold: refused where it is read.
  EXPECT_THROW(DatasetScales::from_json(Json(1e300)), DataError);
  EXPECT_THROW(DatasetScales::from_json(Json(1e-300)), DataError);
  EXPECT_EQ(DatasetScales::from_json(Json(2.5)).first(), 2.5);
}

TEST(Batcher, DenormalizeBlocksUndoesNormalizeBlocksBlockByBlock) {
  // Rows of two column blocks of different scales (widths 3 and 5): each block normalised on its own
  // and brought back by its own statistics, so the round trip gives the raw rows (to float rounding).
  const int64_t n = 6;
  const std::vector<int64_t> widths = {3, 5};
  std::vector<float> raw(n * 8), normalized(raw.size()), back(raw.size());
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < 8; ++c)
      raw[r * 8 + c] = static_cast<float>(c < 3 ? 1000.0 + 37.0 * std::sin(double(r * 8 + c)) : 0.01 * std::cos(double(r + 3 * c)));
  auto token = [](int64_t row) { return row; };
  for (Normalization kind : {Normalization::Story, Normalization::Dataset, Normalization::None}) {
    const DatasetScales scales(std::vector<double>{0.02, 300.0});
    const BatchStats stats = normalize_blocks(raw.data(), normalized.data(), n, widths, kind, scales, token, "acts");
    denormalize_blocks(normalized.data(), back.data(), n, widths, kind, scales, stats);
    for (size_t i = 0; i < raw.size(); ++i)
      EXPECT_NEAR(back[i], raw[i], 2e-6 * std::fabs(raw[i]) + 1e-9) << normalization_name(kind) << " element " << i;
    // Per story, the second block had its own mean and std: the first block's would not undo it.
    if (kind == Normalization::Story) {
      const double mean = stats.blocks[1].mean, scale = std::sqrt(5.0) / stats.blocks[1].std;
      EXPECT_NEAR(normalized[3], (raw[3] - mean) * scale, 1e-4);
    }
  }
  // One block: the output of a transcoder, with its target's scale.
  std::vector<float> one = {2.0f, -4.0f}, out(2);
  denormalize_blocks(one.data(), out.data(), 1, {2}, Normalization::Dataset, DatasetScales(4.0), BatchStats{});
  EXPECT_EQ(out, (std::vector<float>{0.5f, -1.0f}));
  EXPECT_THROW(denormalize_blocks(one.data(), out.data(), 1, {2}, Normalization::Story, DatasetScales(1.0), BatchStats{}),
               Error);
}

TEST(ActivationFile, ReadsSafetensorsWithStoriesAndChecksThem) {
  TempDir dir("actfile");
  const std::string path = dir.str("acts.safetensors");
  sae::testing::write_activation_file(path, 3, {2, 4, 1}, [](int64_t t, int64_t j) { return 10.0 * t + j; });
  auto source = open_activations(path, SyntheticOptions{});
  EXPECT_EQ(source->d(), 3);
  EXPECT_EQ(source->num_tokens(), 7);
  EXPECT_EQ(source->num_stories(), 3);
  EXPECT_EQ(source->story_begin(2), 6);
  EXPECT_EQ(source->story_length(1), 4);
  std::vector<float> row(3 * 2);
  source->read_tokens(4, 2, row.data());
  EXPECT_EQ(row, (std::vector<float>{40, 41, 42, 50, 51, 52}));
}

TEST(ActivationFile, HostileStoryLengthsAreRefusedWithoutOverflow) {
  using sae::testing::raw_bytes;
  using sae::testing::write_raw_safetensors;
  TempDir dir("hostile_lengths");
  const std::vector<float> x(42 * 2, 0.5f);
  auto expect_refused = [&](const std::string& name, const std::vector<int64_t>& shape, const std::vector<int64_t>& lengths,
                            const std::string& mention) {
    const std::string path = dir.str(name);
    write_raw_safetensors(path, {{"activations", "F32", {42, 2}, raw_bytes(x)}, {"story_lengths", "I64", shape, raw_bytes(lengths)}});
    try {
      open_activations(path, SyntheticOptions{});
      ADD_FAILURE() << name << ": accepted";
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find(mention), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  };
  // Two lengths of 2^63 - 1 would wrap a running sum to exactly 42 - 42 and pass a final check.
  const int64_t max = std::numeric_limits<int64_t>::max();
  expect_refused("wrap.safetensors", {3}, {max, max, 42}, "run past the 42 tokens");
  expect_refused("square.safetensors", {2, 2}, {10, 10, 11, 11}, "1-D");
  expect_refused("short.safetensors", {2}, {10, 11}, "sum to 21");
}

TEST(ActivationFile, ANonFiniteValueIsReportedWithFileAndToken) {
  TempDir dir("nan_middle");
  const std::string path = dir.str("acts.safetensors");
  // Long enough that the NaN at token 7013 is in none of the 4096-token samples checked on open.
  sae::testing::write_activation_file(path, 3, {5000, 5000, 5000}, [](int64_t t, int64_t j) {
    return t == 7013 && j == 1 ? std::nan("") : 0.1 * double((t + j) % 17);
  });
  std::unique_ptr<ActivationSource> source = open_activations(path, SyntheticOptions{});
  Batcher batcher(*source, 0, Normalization::Story, 1.0, 0);
  std::vector<float> raw(5000 * 3), normalized(5000 * 3);
  BatchStats stats;
  batcher.next(raw.data(), normalized.data(), stats);  // story 0: tokens 0..4999
  try {
    batcher.next(raw.data(), normalized.data(), stats);  // story 1 holds token 7013
    FAIL() << "NaN accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(path + ": non-finite activation (nan) at token 7013, column 1"), std::string::npos)
        << e.what();
  }
  // The dataset scale's sample (every token here) names it too.
  try {
    estimate_dataset_scales(*source, 15000);
    FAIL() << "NaN accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(path + ": non-finite activation (nan) at token 7013, column 1 (estimating"),
              std::string::npos)
        << e.what();
  }
  // A folder that is not a cache: said so, not "is a directory".
  std::filesystem::create_directories(dir.str("folder"));
  try {
    open_activations(dir.str("folder"), SyntheticOptions{});
    FAIL() << "a folder accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("a folder without a cache's manifest.json"), std::string::npos) << e.what();
  }
}
