// sae_features (sae/features/top_stories.h, experiments/sae_features.cpp) against a brute-force pass:
// every story of the fixture text through the fixture model, normalised, encoded, each feature's
// largest value per story sorted; the JSON entries (stories, positions, strengths, tokens, text,
// annotation) for every architecture; an activation file with token ids instead of text; the program
// itself, its --stats-out, and its errors. Plus the token-text helpers the JSON uses.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "lm/gpt_neo.h"
#include "lm/text_data.h"
#include "io/safetensors.h"
#include "lm/tokenizer.h"
#include "sae/arch/registry.h"
#include "tests/util/standard_sae.h"
#include "sae/data/activations.h"
#include "sae/data/synthetic.h"
#include "sae/features/token_text.h"
#include "sae/features/top_stories.h"
#include "sae/train/checkpoint.h"
#include "tests/util/compare.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::unit_settings;
using sae::testing::read_file;
using sae::testing::run_binary;
using sae::testing::TempDir;
namespace fs = std::filesystem;

namespace {

std::string ref(const std::string& name) { return sae::testing::ref_path("text_train/" + name); }

// A fresh SAE of `architecture` for the fixture's width (32), saved as a folder trained per story.
SaeParams make_sae(const std::string& architecture, uint64_t seed) {
  std::vector<std::pair<std::string, Json>> given = {{"init-b-dec", Json("zero")}};
  if (architecture != "standard") given.push_back({"unit-norm-decoder", Json("off")});
  if (architecture == "topk" || architecture == "batchtopk") given.push_back({"k", Json(3)});
  if (architecture == "jumprelu") given.push_back({"jumprelu-init-threshold", Json(0.3)});
  Rng rng(seed);
  SaeParams p = arch_unit(architecture).initial_params(unit_settings(architecture, given), 32, 24, rng, {});
  if (architecture == "batchtopk") p.settings["threshold"] = 0.2;
  return p;
}

void save_sae(const SaeParams& p, const std::string& dir) {
  Json extra = Json::object();
  extra["normalization"] = "story";
  extra["dataset_scale"] = 1.0;
  save_checkpoint(dir, p, extra, nullptr);
}

struct StoryData {
  std::vector<int32_t> ids;
  Tensor f;  // [T, F]
};

// Every story through the model, normalised per story and encoded: the brute force's own pass. With
// `bos` (>= 0) the model reads it before each story; `keep_bos`: its row joins the story's
// normalisation (a run trained with --bos-activations keep), then is dropped.
std::vector<StoryData> encode_all(const SaeParams& p, int32_t bos = -1, bool keep_bos = false) {
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(ref("model"));
  GptNeo model = GptNeo::load(ref("model"));
  std::vector<StoryData> out;
  StoryReader reader(ref("stories.txt"));
  TextStory story;
  while (reader.next(story)) {
    StoryData s;
    s.ids = tokenizer.encode(story.text, story.where);
    std::vector<int32_t> input = s.ids;
    if (bos >= 0) input.insert(input.begin(), bos);
    const Tensor all = model.hidden_states(input, 2);
    const int64_t first = bos >= 0 && !keep_bos ? 1 : 0, t = all.size(0) - first, d = all.size(1);
    Tensor x = Tensor::empty(Shape{t, d});
    normalize_batch(all.data<float>() + first * d, x.data<float>(), t, d, Normalization::Story, 1.0,
                    [](int64_t r) { return r; }, "test");
    s.f = sae_encode(p, bos >= 0 && keep_bos ? x.slice_rows(1, t).clone() : x);
    out.push_back(std::move(s));
  }
  return out;
}

struct Top {
  double max;
  int64_t story, position;
};
// Per feature: the stories where it is ever > 0, by largest value (then story), first N.
std::vector<std::vector<Top>> brute_force(const std::vector<StoryData>& stories, int64_t features, int64_t n) {
  std::vector<std::vector<Top>> out(features);
  for (int64_t j = 0; j < features; ++j) {
    for (size_t s = 0; s < stories.size(); ++s) {
      const std::vector<double> f = stories[s].f.to_vector();
      const int64_t t = stories[s].f.size(0);
      Top best{0.0, static_cast<int64_t>(s), -1};
      for (int64_t p = 0; p < t; ++p)
        if (f[p * features + j] > best.max) best = Top{f[p * features + j], static_cast<int64_t>(s), p};
      if (best.max > 0) out[j].push_back(best);
    }
    std::sort(out[j].begin(), out[j].end(),
              [](const Top& a, const Top& b) { return a.max != b.max ? a.max > b.max : a.story < b.story; });
    if (static_cast<int64_t>(out[j].size()) > n) out[j].resize(n);
  }
  return out;
}

// Checks the JSON entries against the brute force, field by field.
// ||W_dec[i]|| for every feature, summed in double as written (sae_features's "decoder_norm").
std::vector<double> decoder_row_norms(const SaeParams& sae) {
  const std::vector<double> w = sae.W_dec.to_vector();
  const int64_t features = sae.d_sae(), d = sae.W_dec.size(1);
  std::vector<double> norms(static_cast<size_t>(features));
  for (int64_t i = 0; i < features; ++i) {
    double sq = 0;
    for (int64_t j = 0; j < d; ++j) sq += w[i * d + j] * w[i * d + j];
    norms[i] = std::sqrt(sq);
  }
  return norms;
}

// Checks the JSON entries against the brute force, field by field; strengths are the tutorial's
// magnitudes, the activation times the decoder row's norm.
void expect_entries(const Json& entries, const SaeParams& sae, const std::vector<StoryData>& stories,
                    const std::vector<std::vector<Top>>& want, const BpeTokenizer& tokenizer, const std::string& what) {
  const std::vector<double> norms = decoder_row_norms(sae);
  size_t at = 0;
  int64_t compared = 0;
  for (size_t j = 0; j < want.size(); ++j)
    for (const Top& top : want[j]) {
      ASSERT_LT(at, entries.size()) << what;
      const Json& e = entries.at(at++);
      const std::string where = cat(what, " feature ", j, " story ", top.story);
      ASSERT_EQ(e.at("feature_idx").as_int(), static_cast<int64_t>(j)) << where;
      ASSERT_EQ(e.at("step").as_int(), top.story) << where;
      EXPECT_EQ(e.at("position").as_int(), top.position) << where;
      const double norm = norms[j];
      EXPECT_NE(norm, 1.0) << where;  // so that the magnitude is not the activation
      EXPECT_EQ(e.at("decoder_norm").as_number(), round_significant(norm)) << where;
      EXPECT_EQ(e.at("max_strength").as_number(), round_significant(double(float(top.max)) * norm)) << where;
      const StoryData& s = stories[top.story];
      const std::vector<double> f = s.f.to_vector();
      const int64_t features = s.f.size(1);
      ASSERT_EQ(e.at("tokens").size(), s.ids.size()) << where;
      ASSERT_EQ(e.at("strengths").size(), s.ids.size()) << where;
      std::string annotated;
      for (size_t p = 0; p < s.ids.size(); ++p) {
        EXPECT_EQ(e.at("tokens").at(p).as_int(), s.ids[p]);
        const double v = f[p * features + j];
        EXPECT_EQ(e.at("strengths").at(p).as_number(), round_significant(double(float(v)) * norm)) << where << " token " << p;
        const int level = v <= 0 || norm == 0 ? 0 : std::min(7, static_cast<int>(std::floor(8 * v / float(top.max))));
        const char blocks[8][4] = {"\u2581", "\u2582", "\u2583", "\u2584", "\u2585", "\u2586", "\u2587", "\u2588"};
        // A token holding part of a UTF-8 character ("ë", "“" in story 10) reads U+FFFD, as HF's decode.
        annotated += valid_utf8(tokenizer.token_text(s.ids[p])) + " " + blocks[level];
      }
      EXPECT_EQ(e.at("text").as_string(), tokenizer.decode(s.ids)) << where;
      EXPECT_EQ(e.at("annotated_text").as_string(), annotated) << where;
      ++compared;
    }
  EXPECT_EQ(at, entries.size()) << what;
  EXPECT_GT(compared, 20) << what;
}

}  // namespace

TEST(TokenText, DisplayAndAnnotation) {
  EXPECT_EQ(display_token("<b>&\"'"), "<b>&\"'");  // markup stays text: the page escapes it
  EXPECT_EQ(display_token("a\nb\tc\x01"), "a\u21b5b\u21e5c\u2401");
  EXPECT_EQ(display_token("\x7f"), "\u2421");
  // A right-to-left override in a token had reversed every later token of the browser's line.
  EXPECT_EQ(display_token("\u202Eevil"), "<U+202E>evil");
  EXPECT_EQ(display_token("\u2029\xC2\x85"), "<U+2029><U+0085>");
  EXPECT_EQ(display_token("\u05E9\u0627"), "\u05E9\u0627");  // right-to-left letters stay
  EXPECT_EQ(display_token("\xe2\x96"), "\\xE2\\x96");  // half a character
  EXPECT_EQ(display_token(" caf\xc3\xa9"), " caf\xc3\xa9");
  EXPECT_EQ(display_token("\xed\xa0\x80"), "\\xED\\xA0\\x80");  // a surrogate is not UTF-8
  EXPECT_EQ(valid_utf8("ok\xff\xc3\xa9"), "ok\ufffd\xc3\xa9");
  // A cut sequence is one U+FFFD, as Python's decode("utf-8", "replace") gives (not one per byte).
  EXPECT_EQ(valid_utf8("a\xE6\x97"), "a\ufffd");
  EXPECT_EQ(valid_utf8("\xF0\x9F\x98x\xED\xA0\x80"), "\ufffdx\ufffd\ufffd\ufffd");
  EXPECT_EQ(activation_block(0, 5), "\u2581");
  EXPECT_EQ(activation_block(-1, 5), "\u2581");
  EXPECT_EQ(activation_block(5, 5), "\u2588");
  EXPECT_EQ(activation_block(2.5, 5), "\u2585");               // floor(8 * 0.5) = 4
  EXPECT_EQ(activation_block(std::nextafter(0.625, 0.0) * 5, 5), "\u2585");  // just below 5/8
  EXPECT_EQ(activation_block(0.625 * 5, 5), "\u2586");
  EXPECT_EQ(activation_block(1, 0), "\u2581");
  EXPECT_EQ(round_significant(0.1f), 0.1);
  EXPECT_EQ(round_significant(123456789.0), 123457000.0);
}

TEST(TopStories, EveryArchitectureEqualsBruteForce) {
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(ref("model"));
  GptNeo model = GptNeo::load(ref("model"));
  for (const std::string a : {"standard", "topk", "batchtopk", "jumprelu", "gated"}) {
    const SaeParams sae = make_sae(a, 17);
    const std::vector<StoryData> stories = encode_all(sae);
    InputNormalization normalization;
    normalization.kind = Normalization::Story;
    auto inputs = text_story_inputs(model, tokenizer, TextStoryOptions{ref("stories.txt"), "text", {2, HookPoint::ResidPre}},
                                    normalization, 0, Device::CPU);
    for (int64_t n : {1, 4}) {
      GatherSummary summary;
      const FeatureStats stats = gather_feature_stats(sae, *inputs, FeatureStatsOptions{n, 3}, &summary);
      EXPECT_EQ(summary.stories, 16);
      EXPECT_EQ(summary.tokens, 578);
      const Json entries = top_story_entries(sae, *inputs, stats, &tokenizer);
      expect_entries(entries, sae, stories, brute_force(stories, 24, n), tokenizer,
                     cat(a, " top ", n));
    }
  }
}

TEST(TopStories, ActivationFileWithTokenIds) {
  // The fixture's activations (HF's hidden_states[2]) with its token ids: the stories are read from
  // the file, and named by the tokenizer.
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(ref("model"));
  const SaeParams sae = make_sae("standard", 5);
  std::unique_ptr<ActivationSource> source = open_activations(ref("acts.safetensors"), SyntheticOptions{});
  InputNormalization normalization;
  normalization.kind = Normalization::Story;
  auto inputs = file_story_inputs(*source, normalization, 10, Device::CPU);
  const FeatureStats stats = gather_feature_stats(sae, *inputs, FeatureStatsOptions{3, 2});
  EXPECT_EQ(stats.steps(), 10);  // --stories 10
  const Json entries = top_story_entries(sae, *inputs, stats, &tokenizer);
  ASSERT_GT(entries.size(), 10u);
  // Each entry's story, tokens and strengths straight from the file.
  for (const Json& e : entries.elements()) {
    const int64_t s = e.at("step").as_int(), j = e.at("feature_idx").as_int();
    ASSERT_LT(s, 10);
    const int64_t begin = source->story_begin(s), t = source->story_length(s);
    ASSERT_EQ(static_cast<int64_t>(e.at("tokens").size()), t);
    std::vector<int32_t> ids;
    for (int64_t p = 0; p < t; ++p) ids.push_back(source->token_id(begin + p));
    for (int64_t p = 0; p < t; ++p) EXPECT_EQ(e.at("tokens").at(p).as_int(), ids[p]);
    EXPECT_EQ(e.at("text").as_string(), tokenizer.decode(ids));
    std::vector<float> raw(t * 32);
    source->read_tokens(begin, t, raw.data());
    Tensor x = Tensor::empty(Shape{t, 32});
    normalize_batch(raw.data(), x.data<float>(), t, 32, Normalization::Story, 1.0, [](int64_t r) { return r; }, "t");
    const std::vector<double> f = sae_encode(sae, x).to_vector();
    double max = 0;
    for (int64_t p = 0; p < t; ++p) max = std::max(max, f[p * 24 + j]);
    EXPECT_EQ(e.at("max_strength").as_number(), round_significant(double(float(max)) * decoder_row_norms(sae)[j]));
  }
}

// An id the tokenizer does not know (data from another model's tokenizer) is written [id], as
// without a tokenizer, and the story's text is its labels joined; it threw after the whole first
// pass.
TEST(TopStories, AnIdTheTokenizerDoesNotKnowIsWrittenAsItsNumber) {
  TempDir dir("top_stories_unknown_id");
  const SafetensorsFile file = SafetensorsFile::open(ref("acts.safetensors"));
  std::vector<int64_t> ids = file.read_i64("token_ids"), lengths = file.read_i64("story_lengths");
  ids[1] = 9999999;  // story 0's second token
  const Tensor activations = file.read_f32("activations");
  std::vector<int32_t> ids32(ids.begin(), ids.end());
  write_safetensors_raw(
      dir.str("acts.safetensors"),
      {{"activations", "F32", {activations.size(0), activations.size(1)},
        std::string(static_cast<const char*>(static_cast<const void*>(activations.data<float>())), activations.nbytes())},
       {"story_lengths", "I64", {int64_t(lengths.size())},
        std::string(reinterpret_cast<const char*>(lengths.data()), lengths.size() * sizeof(int64_t))},
       {"token_ids", "I32", {int64_t(ids32.size())},
        std::string(reinterpret_cast<const char*>(ids32.data()), ids32.size() * sizeof(int32_t))}});
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(ref("model"));
  const SaeParams sae = make_sae("standard", 5);
  std::unique_ptr<ActivationSource> source = open_activations(dir.str("acts.safetensors"), SyntheticOptions{});
  InputNormalization normalization;
  normalization.kind = Normalization::Story;
  auto inputs = file_story_inputs(*source, normalization, 3, Device::CPU);
  const FeatureStats stats = gather_feature_stats(sae, *inputs, FeatureStatsOptions{3, 2});
  const Json entries = top_story_entries(sae, *inputs, stats, &tokenizer);
  size_t story0 = 0;
  for (const Json& e : entries.elements()) {
    if (e.at("step").as_int() != 0) {
      EXPECT_EQ(e.at("text").as_string().find("[9999999]"), std::string::npos);
      continue;
    }
    ++story0;
    const std::string text = e.at("text").as_string(), annotated = e.at("annotated_text").as_string();
    EXPECT_EQ(text.substr(0, text.find("[9999999]")), valid_utf8(tokenizer.token_text(int32_t(ids[0])))) << text;
    EXPECT_NE(annotated.find("[9999999] "), std::string::npos) << annotated;
    EXPECT_EQ(e.at("tokens").at(1).as_int(), 9999999);
  }
  EXPECT_GT(story0, 0u);
}

TEST(TopStories, TheProgramWritesTheJsonAndTheStatistics) {
  TempDir dir("sae_features_cli");
  const SaeParams sae = make_sae("topk", 23);
  save_sae(sae, dir.str("sae"));
  const std::string args = " --sae " + dir.str("sae") + " --model " + ref("model") + " --text " + ref("stories.txt") +
                           " --top 3 --out " + dir.str("features.json") + " --stats-out " + dir.str("stats.safetensors");
  const sae::testing::CommandResult r = run_binary("sae_features", args, dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("16 stories (578 tokens)"), std::string::npos) << r.out;
  const Json entries = Json::parse(read_file(dir.str("features.json")));
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(ref("model"));
  const std::vector<StoryData> stories = encode_all(sae);
  expect_entries(entries, sae, stories, brute_force(stories, 24, 3), tokenizer, "sae_features");
  const FeatureStats stats = FeatureStats::load(dir.str("stats.safetensors"));
  EXPECT_EQ(stats.features(), 24);
  EXPECT_EQ(stats.tokens(), 578);
  EXPECT_EQ(stats.source().at("gathered_by").as_string(), "sae_features");
  // Each top activation's context ids are the story's own.
  for (int64_t j = 0; j < 24; ++j)
    for (int32_t rank = 0; rank < stats.top_count(j); ++rank) {
      const FeatureTop t = stats.top(j, rank);
      for (int64_t k = -8; k <= 8; ++k) {
        const int64_t p = t.position + k;
        const std::vector<int32_t>& ids = stories[t.story].ids;
        EXPECT_EQ(t.tokens[k + 8], p >= 0 && p < static_cast<int64_t>(ids.size()) ? ids[p] : -1);
      }
    }
}

// A run trained with --bos-activations keep normalised each story together with its BOS row; its
// features are ranked from the same inputs (the BOS row itself is still not a candidate).
TEST(TopStories, AKeptBosRunNormalisesEachStoryWithItsBosRow) {
  TempDir dir("sae_features_keep_bos");
  SaeParams sae = make_sae("standard", 29);
  float* row = sae.W_dec.data<float>() + 5 * sae.d_in();  // feature 5 adds nothing: strengths 0, ▁ shading
  for (int64_t j = 0; j < sae.d_in(); ++j) row[j] = 0.0f;
  const int32_t bos = BpeTokenizer::from_model_dir(ref("model")).bos_id();
  ASSERT_GE(bos, 0);
  Json extra = Json::object();
  extra["normalization"] = "story";
  extra["dataset_scale"] = 1.0;
  extra["data"] = Json::object();
  extra["data"]["bos_activations"] = "keep";
  save_checkpoint(dir.str("sae"), sae, extra, nullptr);
  const std::string args = " --sae " + dir.str("sae") + " --model " + ref("model") + " --text " + ref("stories.txt") +
                           " --prepend-bos on --top 3 --out " + dir.str("features.json");
  const sae::testing::CommandResult r = run_binary("sae_features", args, dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json entries = Json::parse(read_file(dir.str("features.json")));
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(ref("model"));
  const std::vector<StoryData> kept = encode_all(sae, bos, true), skipped = encode_all(sae, bos, false);
  expect_entries(entries, sae, kept, brute_force(kept, 24, 3), tokenizer, "kept BOS");
  int64_t zero_row_entries = 0;
  for (const Json& e : entries.elements()) {
    if (e.at("feature_idx").as_int() != 5) continue;
    ++zero_row_entries;
    EXPECT_EQ(e.at("decoder_norm").as_number(), 0.0);
    EXPECT_EQ(e.at("max_strength").as_number(), 0.0);
    EXPECT_EQ(e.at("annotated_text").as_string().find("\u2588"), std::string::npos);  // no █: it adds nothing
  }
  EXPECT_GT(zero_row_entries, 0) << "feature 5 never fires: the zero row is not checked";
  // The BOS row moves the normalisation: the inputs differ from a run that skipped it.
  double apart = 0;
  for (size_t s = 0; s < kept.size(); ++s)
    apart = std::max(apart, sae::testing::max_abs_diff(kept[s].f, skipped[s].f));
  EXPECT_GT(apart, 1e-3);
}

TEST(TopStories, BadInputGetsOneLine) {
  TempDir dir("sae_features_errors");
  save_sae(make_sae("standard", 2), dir.str("sae"));
  // Finite weights that overflow float32 on the stories: a top activation is inf, which reached the
  // JSON writer ("JSON: cannot write inf", naming neither the SAE nor the cause). Latent j reads
  // input j alone, times 3.4e38: it overflows wherever that input exceeds 1.0001, whatever order
  // the GEMM sums in (a W_enc of 3e38 everywhere overflowed or not by the order OpenBLAS's kernel
  // for the CPU summed the tokens' mixed signs in: finite with OPENBLAS_CORETYPE=Sandybridge).
  SaeParams big = make_sae("standard", 2);
  big.W_enc = Tensor::zeros(big.W_enc.shape());
  for (int64_t j = 0; j < big.W_enc.size(1); ++j) big.W_enc.data<float>()[j * big.W_enc.size(1) + j] = 3.4e38f;
  save_sae(big, dir.str("big"));
  const std::string sae = " --sae " + dir.str("sae"), text = " --model " + ref("model") + " --text " + ref("stories.txt");
  std::vector<float> flat(10 * 32, 0.5f);
  sae::testing::write_raw_safetensors(dir.str("npy_like.safetensors"),
                                      {{"activations", "F32", {10, 32}, sae::testing::raw_bytes(flat)}});
  const std::tuple<std::string, int, std::string> cases[] = {
      {text, 2, "--sae DIR is required"},
      {sae, 2, "give the stories"},
      {sae + " --text " + ref("stories.txt"), 2, "--text FILE needs --model"},
      {sae + text + " --top 0", 2, "--top"},
      {sae + text + " --stories -1", 2, "--stories"},
      {sae + text + " --layer 9", 2, "--layer 9"},
      {sae + " --data synthetic", 2, "--data synthetic"},
      {sae + " --data " + dir.str("npy_like.safetensors"), 2, "story boundaries"},
      {sae + " --data " + ref("acts.safetensors") + " --layer 2", 2, "--layer goes with"},
      // options that would do nothing: how text is read, with a file's stories; the statistics'
      // context, with no statistics written
      {sae + " --data " + ref("acts.safetensors") + " --context-size 16", 2, "--context-size says how text is read"},
      {sae + " --data " + ref("acts.safetensors") + " --prepend-bos on", 2, "--prepend-bos says how text is read"},
      {sae + text + " --context 4", 2, "--context sets the tokens kept around each top activation in --stats-out"},
      {" --sae " + dir.str("missing") + text, 1, "missing"},
      {" --sae " + dir.str("big") + text, 1, "activation is inf, not finite: the SAE's weights overflow float32"},
      {sae + " --model " + ref("model") + " --text " + dir.str("nothing.txt"), 1, "nothing.txt"},
  };
  for (const auto& [args, code, words] : cases) {
    const sae::testing::CommandResult r = run_binary("sae_features", args + " --out " + dir.str("o.json"), dir);
    EXPECT_EQ(r.exit_code, code) << args << ": " << r.err;
    EXPECT_NE(r.err.find(words), std::string::npos) << args << ": " << r.err;
    EXPECT_LE(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
}

TEST(TopStories, AStoryLongerThanOneEncodingBlockIsEncodedInBlocks) {
  // A long file story encoded 64 rows at a time (by default as many rows as 256 MB of [rows, F]
  // hold, so that T x F is never made: a 1M-token story at F 16384 would be 65 GB). The statistics
  // and entries equal brute force over the whole story, and equal those made in one block.
  TempDir dir("top_stories_blocks");
  const int64_t d = 4, f = 24, t = 700;
  sae::testing::write_activation_file(dir.str("long.safetensors"), d, {t},
                                      [](int64_t r, int64_t j) { return std::sin(0.37 * r + 1.3 * j) + 0.1 * j; });
  Rng rng(3);
  const SaeParams sae = SaeParams::standard_init(d, f, rng);
  std::unique_ptr<ActivationSource> source = open_activations(dir.str("long.safetensors"), SyntheticOptions{});
  auto inputs = file_story_inputs(*source, InputNormalization{}, 0, Device::CPU);
  const FeatureStats stats = gather_feature_stats(sae, *inputs, FeatureStatsOptions{1, 16}, nullptr, 64);
  EXPECT_EQ(stats.steps(), 1);  // one story, however many blocks
  EXPECT_EQ(stats.tokens(), t);
  std::vector<float> x(t * d);
  source->read_tokens(0, t, x.data());
  const std::vector<double> W = sae.W_enc.to_vector(), b = sae.b_enc.to_vector();
  const Json entries = top_story_entries(sae, *inputs, stats, nullptr, 64);
  ASSERT_GE(entries.size(), 15u);  // latents that never fire have no entry
  const std::vector<double> norms = decoder_row_norms(sae);
  for (const Json& e : entries.elements()) {
    const int64_t i = e.at("feature_idx").as_int();
    double best = 0;
    int64_t at = -1;
    for (int64_t p = 0; p < t; ++p) {
      double pre = b[i];
      for (int64_t j = 0; j < d; ++j) pre += double(x[p * d + j]) * W[j * f + i];
      const double v = std::max(pre, 0.0) * norms[i];
      EXPECT_NEAR(e.at("strengths").at(p).as_number(), v, 1e-4 * (1 + v)) << "feature " << i << " position " << p;
      if (v > best) best = v, at = p;
    }
    EXPECT_EQ(e.at("position").as_int(), at) << i;
    EXPECT_NEAR(e.at("max_strength").as_number(), best, 1e-4 * (1 + best)) << i;
  }
  const FeatureStats whole = gather_feature_stats(sae, *inputs, FeatureStatsOptions{1, 16}, nullptr, t);
  EXPECT_EQ(top_story_entries(sae, *inputs, whole, nullptr, t).dump(), entries.dump());
  // The context values: a neighbour in the top's own block of 64 rows as in one block; one across
  // the block's edge not known (NaN), as the header says.
  int across = 0;
  for (int64_t i = 0; i < f; ++i) {
    ASSERT_EQ(whole.top_count(i), stats.top_count(i)) << i;
    if (whole.top_count(i) == 0) continue;
    const FeatureTop a = whole.top(i, 0), c = stats.top(i, 0);
    EXPECT_EQ(a.position, c.position) << i;
    for (size_t k = 0; k < a.values.size(); ++k) {
      const int64_t p = a.position + static_cast<int64_t>(k) - 16;
      if (p >= 0 && p < t && p / 64 != a.position / 64) {
        EXPECT_TRUE(std::isnan(c.values[k])) << "feature " << i << " position " << p << " across the edge";
        EXPECT_FALSE(std::isnan(a.values[k]));
        ++across;
        continue;
      }
      EXPECT_TRUE(a.values[k] == c.values[k] || (std::isnan(a.values[k]) && std::isnan(c.values[k])))
          << "feature " << i << " value " << k << ": " << a.values[k] << " vs " << c.values[k];
    }
  }
  EXPECT_GT(across, 0);  // (a context of 16: some top lies within 16 rows of an edge)
  RecordProperty("context_values_across_a_block_edge", across);
}

TEST(TopStories, StoriesShareEncodingBlocksAndOneThatFitsABlockIsNeverSplit) {
  // The 16 fixture stories (11 to 63 tokens) encoded 40 rows at a time: consecutive stories share a
  // block, a story of at most 40 tokens is never split, a longer one is. The entries are the same
  // for every block size; the statistics' context values are the story's own features wherever the
  // story was whole in its block, and NaN (not known) only across the edge of a split one.
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(ref("model"));
  GptNeo model = GptNeo::load(ref("model"));
  const SaeParams sae = make_sae("topk", 5);
  const std::vector<StoryData> stories = encode_all(sae);
  InputNormalization normalization;
  normalization.kind = Normalization::Story;
  auto inputs = text_story_inputs(model, tokenizer, TextStoryOptions{ref("stories.txt"), "text", {2, HookPoint::ResidPre}},
                                  normalization, 0, Device::CPU);
  const int64_t block = 40, features = sae.d_sae();
  int64_t short_stories = 0, long_stories = 0;
  for (const StoryData& s : stories) (s.f.size(0) <= block ? short_stories : long_stories) += 1;
  ASSERT_GE(short_stories, 4);
  ASSERT_GE(long_stories, 1);
  const FeatureStatsOptions options{4, 3};
  const FeatureStats blocked = gather_feature_stats(sae, *inputs, options, nullptr, block);
  const FeatureStats whole = gather_feature_stats(sae, *inputs, options, nullptr, 100000);
  const std::string entries = top_story_entries(sae, *inputs, whole, &tokenizer, 100000).dump();
  EXPECT_EQ(top_story_entries(sae, *inputs, blocked, &tokenizer, block).dump(), entries);
  int64_t known = 0, unknown = 0;
  for (const FeatureStats* stats : {&blocked, &whole}) {
    EXPECT_EQ(stats->steps(), 16);
    EXPECT_EQ(stats->tokens(), 578);
  }
  for (int64_t i = 0; i < features; ++i) {
    ASSERT_EQ(blocked.top_count(i), whole.top_count(i)) << i;
    for (int32_t r = 0; r < whole.top_count(i); ++r) {
      const FeatureTop a = whole.top(i, r), b = blocked.top(i, r);
      ASSERT_EQ(a.story, b.story);
      ASSERT_EQ(a.position, b.position);
      const StoryData& s = stories[static_cast<size_t>(a.story)];
      const std::vector<double> f = s.f.to_vector();
      const int64_t t = s.f.size(0);
      for (int64_t o = -options.context; o <= options.context; ++o) {
        const int64_t p = a.position + o;
        const size_t k = static_cast<size_t>(o + options.context);
        if (p < 0 || p >= t) {  // outside the story
          EXPECT_TRUE(std::isnan(a.values[k]) && std::isnan(b.values[k]));
          continue;
        }
        EXPECT_EQ(a.values[k], static_cast<float>(f[p * features + i])) << "feature " << i << " position " << p;
        if (t <= block) {
          EXPECT_EQ(b.values[k], a.values[k]) << "a whole story: feature " << i << " position " << p;
        } else {
          EXPECT_TRUE(b.values[k] == a.values[k] || std::isnan(b.values[k]));
        }
        known += !std::isnan(b.values[k]);
        unknown += std::isnan(b.values[k]);
      }
    }
  }
  EXPECT_GT(known, 0);
  EXPECT_GT(unknown, 0);  // (some top's context crosses the edge of a split story's block)
  RecordProperty("context_values_not_known_across_a_split", unknown);

  // The blocks themselves, of 40 rows and of 90 (which every story fits): the segments of one block
  // are views of one encoding, in story order; no block holds more rows than that, a story that fits
  // comes whole in one segment, every row of every story comes once, and at 90 rows the 16 stories
  // share at most 8 blocks.
  for (const int64_t rows_at_once : {block, int64_t{90}}) {
    struct Seen {
      int64_t story, begin, end;
      Tensor f;
    };
    std::vector<Seen> seen;
    encode_stories(sae, *inputs, rows_at_once, [](const StoryInput&) { return true; }, [] { return true; },
                   [&](const StoryInput& story, int64_t begin, int64_t end, const Tensor& f) {
                     seen.push_back({story.index, begin, end, f});
                   });
    std::vector<std::vector<size_t>> blocks;  // segments by the encoding they are views of
    for (size_t i = 0; i < seen.size(); ++i) {
      if (blocks.empty() || !seen[i].f.shares_storage(seen[blocks.back().front()].f)) blocks.emplace_back();
      blocks.back().push_back(i);
    }
    if (rows_at_once == 90) {  // stories taken in order, a new block when the next one does not fit
      size_t expected = 0;
      int64_t filled = 0;
      for (const StoryData& story : stories) {
        const int64_t t = story.f.size(0);
        if (expected == 0 || filled + t > rows_at_once) ++expected, filled = 0;
        filled += t;
      }
      EXPECT_EQ(blocks.size(), expected);
      EXPECT_LE(blocks.size(), stories.size() / 2);
    }
    for (const std::vector<size_t>& b : blocks) {
      int64_t rows = 0;
      for (size_t i : b) rows += seen[i].end - seen[i].begin;
      EXPECT_LE(rows, rows_at_once);
    }
    std::vector<int64_t> next(stories.size(), 0);  // the next row expected of each story
    for (const Seen& s : seen) {
      const int64_t t = stories[static_cast<size_t>(s.story)].f.size(0);
      EXPECT_EQ(s.begin, next[static_cast<size_t>(s.story)]) << "story " << s.story;
      if (t <= rows_at_once) {
        EXPECT_TRUE(s.begin == 0 && s.end == t) << "a short story split: " << s.story;
      }
      next[static_cast<size_t>(s.story)] = s.end;
      EXPECT_LT(sae::testing::max_abs_diff(s.f, stories[static_cast<size_t>(s.story)].f.slice_rows(s.begin, s.end)), 1e-4);
    }
    for (size_t i = 0; i < stories.size(); ++i) EXPECT_EQ(next[i], stories[i].f.size(0)) << "story " << i;
    RecordProperty(cat("blocks_of_", rows_at_once), static_cast<int>(blocks.size()));
  }
}
