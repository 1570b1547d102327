// Activation caches (sae/data/activation_cache.h): shards written and read back as one source
// (F32 exactly, F16/BF16 rounded to nearest), story boundaries across shards, a cache killed
// mid-write continued to the same bytes as one written in one go, damaged manifests refused, and
// training from a cache equal to training from the same activations in one file.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "io/float_convert.h"
#include "sae/data/activation_cache.h"
#include "sae/train/options.h"
#include "sae/train/trainer.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::read_file;
using sae::testing::TempDir;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kD = 5;
const std::vector<int64_t> kLengths = {7, 3, 12, 1, 9, 6, 4, 10};

float value(int64_t token, int64_t j) { return 0.37f * float((token * 13 + j * 7) % 23) - 3.1f + 1e-3f * float(token); }

// Writes the stories of kLengths (story s gets index 100 + s) into a cache at `dir`; `stop_after`
// stories, then returns without finish() when stop_after < all.
void write_cache(const std::string& dir, const std::string& dtype, int64_t shard_tokens, size_t first = 0,
                 size_t stop_after = kLengths.size()) {
  ActivationCacheWriter writer(dir, kD, dtype, shard_tokens, Json("test source"));
  int64_t token = 0;
  for (size_t s = 0; s < first; ++s) token += kLengths[s];
  for (size_t s = first; s < stop_after; ++s) {
    std::vector<int32_t> ids;
    std::vector<float> acts;
    for (int64_t t = 0; t < kLengths[s]; ++t, ++token) {
      ids.push_back(static_cast<int32_t>(token));
      for (int64_t j = 0; j < kD; ++j) acts.push_back(value(token, j));
    }
    Json after = Json::object();
    after["next_story"] = static_cast<int64_t>(s + 1);
    writer.add_story(100 + static_cast<int64_t>(s), ids, acts.data(), after);
  }
  if (stop_after == kLengths.size()) writer.finish();
}

}  // namespace

TEST(ActivationCache, ShardsReadBackAsOneSource) {
  TempDir dir("cache_read");
  for (const char* dtype : {"F32", "F16", "BF16"}) {
    const std::string cache = dir.str(dtype);
    write_cache(cache, dtype, 10);  // shards end at story ends once >= 10 tokens are pending
    const CacheManifest m = read_cache_manifest(cache);
    EXPECT_TRUE(m.complete);
    EXPECT_EQ(m.tokens, 52);
    EXPECT_EQ(m.stories, 8);
    EXPECT_GE(m.shards.size(), 4u);
    EXPECT_EQ(m.shards[1].first_story, 101 + (m.shards[0].stories - 1));
    std::unique_ptr<ActivationSource> source = open_activations(cache, SyntheticOptions{});
    ASSERT_EQ(source->num_tokens(), 52);
    ASSERT_EQ(source->num_stories(), 8);
    int64_t token = 0;
    for (int64_t s = 0; s < 8; ++s) {
      EXPECT_EQ(source->story_begin(s), token) << dtype;
      EXPECT_EQ(source->story_length(s), kLengths[s]) << dtype;
      token += kLengths[s];
    }
    // All tokens in one read that crosses every shard boundary, and a shuffled list.
    std::vector<float> all(52 * kD);
    source->read_tokens(0, 52, all.data());
    for (int64_t t = 0; t < 52; ++t)
      for (int64_t j = 0; j < kD; ++j) {
        const float want = std::string(dtype) == "F32"   ? value(t, j)
                           : std::string(dtype) == "F16" ? f16_to_f32(f32_to_f16(value(t, j)))
                                                         : bf16_to_f32(f32_to_bf16(value(t, j)));
        ASSERT_EQ(all[t * kD + j], want) << dtype << " token " << t << " column " << j;
      }
    std::vector<float> some(3 * kD);
    source->read_token_list({51, 0, 23}, some.data());
    EXPECT_EQ(some[0], all[51 * kD]);
    EXPECT_EQ(some[2 * kD + 4], all[23 * kD + 4]);
  }
}

TEST(ActivationCache, AKilledWriteContinuesToTheSameBytes) {
  TempDir dir("cache_resume");
  write_cache(dir.str("whole"), "F16", 10);
  // Stopped after 5 stories (some shards written, some stories pending and lost), with a half-written
  // shard file left behind as a kill during its write would.
  write_cache(dir.str("cut"), "F16", 10, 0, 5);
  const CacheManifest cut = read_cache_manifest(dir.str("cut"));
  EXPECT_FALSE(cut.complete);
  std::ofstream(dir.str("cut/" + std::string("shard_00009.safetensors"))) << "half";
  EXPECT_THROW(CacheSource(dir.str("cut")), DataError);  // incomplete caches are not trained on
  // Continue from where the manifest says the text continues.
  const int64_t next = cut.text_position.at("next_story").as_int();
  write_cache(dir.str("cut"), "F16", 10, static_cast<size_t>(next));
  EXPECT_FALSE(fs::exists(dir.str("cut/shard_00009.safetensors")));
  const CacheManifest whole = read_cache_manifest(dir.str("whole")), resumed = read_cache_manifest(dir.str("cut"));
  ASSERT_EQ(whole.shards.size(), resumed.shards.size());
  for (const CacheShard& s : whole.shards)
    EXPECT_EQ(read_file(dir.str("whole/" + s.file)), read_file(dir.str("cut/" + s.file))) << s.file;
  // Another kind of activations in the same folder is refused, naming what differs.
  try {
    ActivationCacheWriter(dir.str("cut"), kD, "F32", 10, Json("test source"));
    FAIL() << "another dtype accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("dtype: F16 (the cache) / F32 (asked)"), std::string::npos) << e.what();
  }
}

TEST(ActivationCache, DamagedManifestsAreRefused) {
  TempDir dir("cache_damaged");
  write_cache(dir.str("c"), "F32", 10);
  const std::string manifest = read_file(dir.str("c/manifest.json"));
  auto expect_refused = [&](const std::string& from, const std::string& to, const std::string& mention) {
    std::string damaged = manifest;
    const size_t at = damaged.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    damaged.replace(at, from.size(), to);
    std::ofstream(dir.str("c/manifest.json"), std::ios::trunc) << damaged;
    try {
      CacheSource source(dir.str("c"));
      ADD_FAILURE() << "accepted: " << to;
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find(mention), std::string::npos) << e.what();
    }
  };
  expect_refused("\"shard_00000.safetensors\"", "\"../../etc/passwd\"", "plain name");
  expect_refused("\"dtype\": \"F32\"", "\"dtype\": \"F8\"", "dtype");
  expect_refused("\"tokens\": 52", "\"tokens\": 53", "disagree");
  expect_refused("\"dtype\": \"F32\"", "\"dtype\": \"F16\"", "as the manifest says");
}

TEST(ActivationCache, ANonFiniteValueIsRefusedOnOpenNamingItsShard) {
  // As a single file is (its first and last 4096 tokens, here all 21): the error names the shard and
  // the token in it, not only the token of the whole cache. The writer refuses such a value (below),
  // so the shard is changed on disk afterwards, as a damaged or foreign cache would be.
  TempDir dir("cache_nan");
  ActivationCacheWriter writer(dir.str("c"), kD, "F32", 10, Json("test source"));
  int64_t token = 0;
  for (int64_t s = 0; s < 3; ++s) {
    std::vector<int32_t> ids;
    std::vector<float> acts;
    for (int64_t t = 0; t < 7; ++t, ++token) {
      ids.push_back(static_cast<int32_t>(token));
      for (int64_t j = 0; j < kD; ++j) acts.push_back(value(token, j));
    }
    Json after = Json::object();
    after["next_story"] = s + 1;
    writer.add_story(s, ids, acts.data(), after);
  }
  writer.finish();
  ASSERT_GE(read_cache_manifest(dir.str("c")).shards.size(), 2u);  // shards of 14 and 7 tokens
  {  // token 16 = shard_00001's token 2, column 3
    const std::string shard = dir.str("c/shard_00001.safetensors");
    std::string bytes = read_file(shard);
    uint64_t header = 0;
    std::memcpy(&header, bytes.data(), 8);
    const Json h = Json::parse(bytes.substr(8, header));
    const int64_t begin = h.at("activations").at("data_offsets").elements()[0].as_int();
    const float nan = NAN;
    std::memcpy(&bytes[8 + header + begin + (2 * kD + 3) * 4], &nan, 4);
    std::ofstream(shard, std::ios::binary) << bytes;
  }
  try {
    CacheSource source(dir.str("c"));
    ADD_FAILURE() << "a NaN was accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("token 16 (shard_00001.safetensors token 2), column 3"), std::string::npos)
        << e.what();
  }
}

// What a cache cannot hold is refused as it is written, naming the story, token and column: a
// non-finite activation, and in an F16 cache a value beyond f16's range (it was written as inf with
// exit 0, and found only by a run from the cache, hours later).
TEST(ActivationCache, TheWriterRefusesValuesTheCacheCannotHold) {
  TempDir dir("cache_range");
  const std::vector<int32_t> ids = {1, 2};
  std::vector<float> acts(2 * kD, 0.5f);
  Json after = Json::object();
  after["next_story"] = int64_t(1);
  {
    ActivationCacheWriter f16(dir.str("f16"), kD, "F16", 10, Json("test source"));
    acts[kD + 2] = 65504.0f;  // f16's largest: kept
    f16.add_story(7, ids, acts.data(), after);
    acts[kD + 2] = 70000.0f;
    try {
      f16.add_story(8, ids, acts.data(), after);
      ADD_FAILURE() << "70000 was written into an F16 cache";
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find("story 8, token 1, column 2: activation 70000 is beyond f16's range (65504): "
                                           "use --dtype bf16 or f32"),
                std::string::npos)
          << e.what();
    }
  }
  ActivationCacheWriter bf16(dir.str("bf16"), kD, "BF16", 10, Json("test source"));
  bf16.add_story(7, ids, acts.data(), after);  // bf16 has float32's range
  acts[3] = NAN;
  try {
    bf16.add_story(8, ids, acts.data(), after);
    ADD_FAILURE() << "a NaN was written into the cache";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("story 8, token 0, column 3: activation nan is not finite"), std::string::npos)
        << e.what();
  }
}

TEST(ActivationCache, TrainingFromACacheEqualsTrainingFromOneFile) {
  TempDir dir("cache_train");
  write_cache(dir.str("cache"), "F32", 10);
  // The same activations and stories as one activation file.
  sae::testing::write_activation_file(dir.str("acts.safetensors"), kD, kLengths,
                                      [](int64_t t, int64_t j) { return double(value(t, j)); });
  TrainConfig c = sae::testing::small_synthetic_config("");
  c.batch_tokens = 0;
  c.normalize = Normalization::Story;
  c.features = 12;
  c.lr = 1e-2;
  c.l1 = 0.3;
  c.steps = 20;  // wraps around the 8 stories
  c.checkpoint_every = 1000;
  c.data = dir.str("cache");
  c.out = dir.str("from_cache");
  train(c);
  c.data = dir.str("acts.safetensors");
  c.out = dir.str("from_file");
  train(c);
  EXPECT_EQ(read_file(dir.str("from_cache/sae/sae_weights.safetensors")),
            read_file(dir.str("from_file/sae/sae_weights.safetensors")));
  EXPECT_EQ(read_json_file(dir.str("from_cache/config.json")).at("resolved").at("data").at("kind").as_string(),
            "activation_cache");
  // The cache replaced by another at the same path (here its F16 rounding): a resume refuses it, as
  // it refuses a replaced activation file (it had continued on the other data with the old scale).
  c.data = dir.str("cache");
  c.out = dir.str("from_cache");
  fs::remove_all(dir.str("cache"));
  write_cache(dir.str("cache"), "F16", 10);
  TrainConfig more;
  more.resume = c.out;
  give_every_control(more);
  more.steps = 30;
  more.progress = ProgressMode::None;
  more.device = DeviceChoice::Cpu;
  try {
    train(more);
    ADD_FAILURE() << "a resume on a replaced cache";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("the data is not what the run started on"), std::string::npos) << e.what();
  }
}
