// sae_features over a crosscoder's sources (sae/features/top_stories.h, experiments/sae_features.cpp)
// against a brute force written here: every story of the sae_eval fixture's text (cut to the model's
// 64 positions) through the model, each source read by its own hook (and through the second model
// for model diffing), scaled by its dataset scale, put side by side and encoded in double by plain
// loops from the crosscoder's weight file (ReLU, or TopK's k largest then ReLU); each feature's
// largest value per story sorted. The crosscoders are scripts/gen_crosscoder_eval_fixture.py's: xc
// (blocks.0 and blocks.2 hook_resid_post of the model) and diff (blocks.1.hook_resid_post of the model
// and of model_b/). The library's entries and the program's JSON must equal it; then the program's
// one-line refusals for what does not fit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "io/safetensors.h"
#include "lm/model_loader.h"
#include "lm/text_data.h"
#include "lm/tokenizer.h"
#include "sae/eval/sae_at_layer.h"
#include "sae/features/token_text.h"
#include "sae/features/top_stories.h"
#include "sae/train/checkpoint.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::read_file;
using sae::testing::run_binary;
using sae::testing::TempDir;
namespace fs = std::filesystem;

namespace {

std::string eval_ref(const std::string& name) { return std::string(SAE_SOURCE_DIR) + "/tests/ref/eval/" + name; }
std::string xc_ref(const std::string& name) {
  return std::string(SAE_SOURCE_DIR) + "/tests/ref/eval_crosscoder/" + name;
}

struct Source {
  int model;       // 0 the model, 1 model_b
  HookSite site;
  double scale;
};

struct Crosscoder {
  std::string folder;
  std::vector<Source> sources;
  int64_t k = 0;  // TopK's k (0: ReLU)
};

const Crosscoder kXc{"xc", {{0, {0, HookPoint::ResidPost}, 1.3}, {0, {2, HookPoint::ResidPost}, 0.7}}, 0};
const Crosscoder kDiff{"diff", {{0, {1, HookPoint::ResidPost}, 0.9}, {1, {1, HookPoint::ResidPost}, 1.1}}, 6};
constexpr int64_t kD = 32, kF = 48, kPositions = 64;

struct StoryFeatures {
  std::vector<int32_t> ids;
  std::vector<double> f;  // [T, F]
  std::vector<double> norms;  // [F, S]: each feature's decoder norm per source (the same for every story)
  std::vector<std::vector<double>> x;  // [S][T, d]: the raw sources
};

// The brute force: each story's features, computed without the library's data path.
std::vector<StoryFeatures> encode_all(const Crosscoder& c) {
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(eval_ref("model"));
  DecoderModel models[2] = {load_decoder_model(eval_ref("model")), load_decoder_model(xc_ref("model_b"))};
  const SafetensorsFile weights = SafetensorsFile::open(xc_ref(c.folder + "/sae_weights.safetensors"));
  const std::vector<double> w_enc = weights.read_f32("W_enc").to_vector(), b_enc = weights.read_f32("b_enc").to_vector();
  const std::vector<double> w_dec = weights.read_f32("W_dec").to_vector();
  const int64_t s_count = static_cast<int64_t>(c.sources.size());
  std::vector<double> norms(static_cast<size_t>(kF * s_count), 0.0);
  for (int64_t i = 0; i < kF; ++i)
    for (int64_t k = 0; k < s_count; ++k) {
      for (int64_t j = 0; j < kD; ++j) norms[i * s_count + k] += w_dec[i * s_count * kD + k * kD + j] * w_dec[i * s_count * kD + k * kD + j];
      norms[i * s_count + k] = std::sqrt(norms[i * s_count + k]);
    }
  std::vector<StoryFeatures> out;
  StoryReader reader(eval_ref("stories.txt"));
  TextStory story;
  while (reader.next(story)) {
    StoryFeatures s;
    s.norms = norms;
    s.ids = tokenizer.encode(story.text, story.where);
    if (static_cast<int64_t>(s.ids.size()) > kPositions) s.ids.resize(kPositions);
    const int64_t t = static_cast<int64_t>(s.ids.size());
    std::vector<std::vector<double>> x(s_count);
    for (int m = 0; m < 2; ++m) {
      SiteHooks hooks;
      for (int64_t k = 0; k < s_count; ++k)
        if (c.sources[k].model == m)
          hooks.at.emplace_back(c.sources[k].site, [&x, k](Tensor& state) { x[k] = state.to_vector(); });
      if (!hooks.empty()) models[m].logits_with(s.ids, hooks);
    }
    s.f.assign(static_cast<size_t>(t * kF), 0.0);
    for (int64_t r = 0; r < t; ++r) {
      std::vector<double> pre(b_enc);
      for (int64_t k = 0; k < s_count; ++k)
        for (int64_t j = 0; j < kD; ++j) {
          const double v = x[k][r * kD + j] * c.sources[k].scale;
          for (int64_t i = 0; i < kF; ++i) pre[i] += v * w_enc[(k * kD + j) * kF + i];
        }
      std::vector<double> keep = pre;
      if (c.k > 0) {  // the k largest pre-activations, then ReLU
        std::vector<double> sorted = pre;
        std::sort(sorted.begin(), sorted.end(), std::greater<double>());
        for (double& v : keep) v = v >= sorted[c.k - 1] ? v : 0.0;
      }
      for (int64_t i = 0; i < kF; ++i) s.f[r * kF + i] = std::max(0.0, keep[i]);
    }
    s.x = std::move(x);
    out.push_back(std::move(s));
  }
  return out;
}

struct Top {
  double max;
  int64_t story, position;
};

// Per feature: the stories where it is ever > 0, by largest value (then story), the first n.
std::vector<std::vector<Top>> brute_force(const std::vector<StoryFeatures>& stories, int64_t n) {
  std::vector<std::vector<Top>> out(kF);
  for (int64_t j = 0; j < kF; ++j) {
    for (size_t s = 0; s < stories.size(); ++s) {
      const int64_t t = static_cast<int64_t>(stories[s].ids.size());
      Top best{0.0, static_cast<int64_t>(s), -1};
      for (int64_t p = 0; p < t; ++p)
        if (stories[s].f[p * kF + j] > best.max) best = Top{stories[s].f[p * kF + j], static_cast<int64_t>(s), p};
      if (best.max > 0) out[j].push_back(best);
    }
    std::sort(out[j].begin(), out[j].end(),
              [](const Top& a, const Top& b) { return a.max != b.max ? a.max > b.max : a.story < b.story; });
    if (static_cast<int64_t>(out[j].size()) > n) out[j].resize(n);
  }
  return out;
}

// The JSON entries against the brute force (float32 encoding against double: 1e-5 relative).
void expect_entries(const Json& entries, const std::vector<StoryFeatures>& stories, int64_t n, const std::string& what) {
  const std::vector<std::vector<Top>> want = brute_force(stories, n);
  size_t at = 0;
  int64_t compared = 0;
  for (int64_t j = 0; j < kF; ++j)
    for (const Top& top : want[j]) {
      ASSERT_LT(at, entries.size()) << what;
      const Json& e = entries.at(at++);
      const std::string where = cat(what, " feature ", j, " story ", top.story);
      ASSERT_EQ(e.at("feature_idx").as_int(), j) << where;
      ASSERT_EQ(e.at("step").as_int(), top.story) << where;
      EXPECT_EQ(e.at("position").as_int(), top.position) << where;
      const StoryFeatures& s = stories[top.story];
      // The tutorial's magnitudes: the activation times the whole decoder row's norm.
      const double norm = std::hypot(s.norms[j * 2], s.norms[j * 2 + 1]);
      EXPECT_NEAR(e.at("decoder_norm").as_number(), norm, 1e-5 * norm) << where;
      EXPECT_NEAR(e.at("max_strength").as_number(), top.max * norm, 1e-5 * top.max * norm) << where;
      ASSERT_EQ(e.at("strengths").size(), s.ids.size()) << where;
      for (size_t p = 0; p < s.ids.size(); ++p) {
        EXPECT_EQ(e.at("tokens").at(p).as_int(), s.ids[p]) << where;
        const double v = s.f[p * kF + j] * norm;
        // float32 sums of D terms vs the float64 brute force; a strength is a difference of terms
        // of order 1 (an unvectorised build misses 1e-6 absolute on a 0.035 strength).
        EXPECT_NEAR(e.at("strengths").at(p).as_number(), v, 1e-5 * std::abs(v) + 1e-5) << where << " token " << p;
      }
      const Json& norms = e.at("source_norms");  // as sae_browser shows them
      ASSERT_EQ(norms.size(), 2u) << where;
      for (size_t k = 0; k < 2; ++k) EXPECT_NEAR(norms.at(k).as_number(), s.norms[j * 2 + k], 1e-5 * s.norms[j * 2 + k]);
      ++compared;
    }
  EXPECT_EQ(at, entries.size()) << what;
  EXPECT_GT(compared, 40) << what;
}

}  // namespace

TEST(TopStoriesCrosscoder, EveryFeaturesTopStoriesEqualTheBruteForceEncodingOfAllSources) {
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(eval_ref("model"));
  DecoderModel model = load_decoder_model(eval_ref("model"));
  DecoderModel model_b = load_decoder_model(xc_ref("model_b"));
  for (const Crosscoder* c : {&kXc, &kDiff}) {
    SCOPED_TRACE(c->folder);
    const Checkpoint checkpoint = load_checkpoint(xc_ref(c->folder), Device::CPU, /*with_state=*/false);
    ASSERT_EQ(checkpoint.params.sources, 2);
    const InputNormalization normalization = trained_normalization(checkpoint.cfg, xc_ref(c->folder + "/cfg.json"));
    TextStoryOptions options{eval_ref("stories.txt"), "text", {}, -1, 0, {}};
    for (const Source& s : c->sources) options.reads.push_back(TextRead{s.model, s.site});
    auto inputs = text_story_inputs(model, tokenizer, options, normalization, 0, Device::CPU, &model_b);
    const std::vector<StoryFeatures> stories = encode_all(*c);
    for (int64_t n : {1, 3}) {
      GatherSummary summary;
      const FeatureStats stats = gather_feature_stats(checkpoint.params, *inputs, FeatureStatsOptions{n, 3}, &summary);
      EXPECT_EQ(summary.stories, 6);
      EXPECT_EQ(summary.truncated, 1);  // the long story, cut to the 64 positions
      const Json entries = top_story_entries(checkpoint.params, *inputs, stats, &tokenizer);
      expect_entries(entries, stories, n, cat(c->folder, " top ", n));
    }
  }
}

TEST(TopStoriesCrosscoder, TheProgramReadsEverySourceAndRefusesWhatDoesNotFit) {
  TempDir dir("sae_features_crosscoder");
  const std::string text = " --model " + eval_ref("model") + " --text " + eval_ref("stories.txt");
  const std::string model_b = " --model-b " + xc_ref("model_b");
  const struct {
    const Crosscoder* c;
    std::string extra;
  } runs[] = {{&kXc, ""}, {&kDiff, model_b}};
  for (const auto& run : runs) {
    SCOPED_TRACE(run.c->folder);
    const std::string out = dir.str(run.c->folder + ".json"), stats = dir.str(run.c->folder + ".safetensors");
    const sae::testing::CommandResult r =
        run_binary("sae_features",
                   " --sae " + xc_ref(run.c->folder) + text + run.extra + " --top 3 --out " + out + " --stats-out " + stats,
                   dir);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const std::vector<StoryFeatures> stories = encode_all(*run.c);
    size_t tokens = 0;
    for (const StoryFeatures& s : stories) tokens += s.ids.size();
    EXPECT_NE(r.out.find(cat("6 stories (", tokens, " tokens, 1 longer than the context size: only their first window read)")), std::string::npos)
        << r.out;
    expect_entries(Json::parse(read_file(out)), stories, 3, "sae_features " + run.c->folder);
    // The statistics say which sources they were gathered from (as the browser names them).
    const FeatureStats gathered = FeatureStats::load(stats);
    const Json& hooks = gathered.source().at("data").at("crosscoder_hooks");
    ASSERT_EQ(hooks.size(), 2u);
    EXPECT_EQ(hooks.at(1).as_string(), run.c == &kXc ? "blocks.2.hook_resid_post" : "model_b:blocks.1.hook_resid_post");
  }
  // From activation files, one per source (--data A,B): the same entries. Token ids in the first.
  {
    const std::vector<StoryFeatures> stories = encode_all(kXc);
    std::vector<int64_t> lengths;
    std::vector<int32_t> ids;
    std::vector<float> x[2];
    for (const StoryFeatures& s : stories) {
      lengths.push_back(static_cast<int64_t>(s.ids.size()));
      ids.insert(ids.end(), s.ids.begin(), s.ids.end());
      for (int k = 0; k < 2; ++k) x[k].insert(x[k].end(), s.x[k].begin(), s.x[k].end());
    }
    const int64_t tokens = static_cast<int64_t>(ids.size());
    for (int k = 0; k < 2; ++k) {
      std::vector<sae::testing::RawArray> arrays = {
          {"activations", "F32", {tokens, kD}, sae::testing::raw_bytes(x[k])},
          {"story_lengths", "I64", {static_cast<int64_t>(lengths.size())}, sae::testing::raw_bytes(lengths)}};
      if (k == 0) arrays.push_back({"token_ids", "I32", {tokens}, sae::testing::raw_bytes(ids)});
      sae::testing::write_raw_safetensors(dir.str(cat("source", k, ".safetensors")), arrays);
    }
    const sae::testing::CommandResult r =
        run_binary("sae_features", " --sae " + xc_ref("xc") + " --data " + dir.str("source0.safetensors") + "," +
                                       dir.str("source1.safetensors") + " --model " + eval_ref("model") +
                                       " --top 3 --out " + dir.str("files.json"), dir);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    expect_entries(Json::parse(read_file(dir.str("files.json"))), stories, 3, "sae_features --data A,B");
    // Files of other tokens are refused.
    x[1].resize(x[1].size() - kD);
    lengths.back() -= 1;
    sae::testing::write_raw_safetensors(dir.str("short.safetensors"),
        {{"activations", "F32", {tokens - 1, kD}, sae::testing::raw_bytes(x[1])},
         {"story_lengths", "I64", {static_cast<int64_t>(lengths.size())}, sae::testing::raw_bytes(lengths)}});
    const sae::testing::CommandResult bad =
        run_binary("sae_features", " --sae " + xc_ref("xc") + " --data " + dir.str("source0.safetensors") + "," +
                                       dir.str("short.safetensors") + " --out " + dir.str("o.json"), dir);
    EXPECT_EQ(bad.exit_code, 1) << bad.err;
    EXPECT_LE(std::count(bad.err.begin(), bad.err.end(), '\n'), 1) << bad.err;
  }
  const std::string xc = " --sae " + xc_ref("xc"), diff = " --sae " + xc_ref("diff");
  const std::tuple<std::string, int, std::string> cases[] = {
      {diff + text, 2, "give --model-b"},
      {xc + text + model_b, 2, "reads hooks of one model only"},
      {xc + text + " --hook blocks.1.hook_resid_post", 2, "a crosscoder's hooks are those its cfg.json names"},
      {" --sae " + eval_ref("sae_story") + text + model_b, 2, "is not a crosscoder"},
      {xc + " --data " + eval_ref("stories.txt"), 2, "one activation file per source"},
      {" --sae " + eval_ref("sae_story") + " --data a,b", 2, "reads one"},
      {xc + " --data a,,b", 2, "--data: an empty item in the comma-separated list 'a,,b'"},
      {xc + model_b + " --data a,b", 2, "--model-b DIR goes with --model and --text"},
  };
  for (const auto& [args, code, words] : cases) {
    const sae::testing::CommandResult r = run_binary("sae_features", args + " --out " + dir.str("o.json"), dir);
    EXPECT_EQ(r.exit_code, code) << args << ": " << r.err;
    EXPECT_NE(r.err.find(words), std::string::npos) << args << ": " << r.err;
    EXPECT_LE(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  EXPECT_FALSE(fs::exists(dir.str("o.json")));
}
