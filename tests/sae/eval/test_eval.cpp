// The SAE spliced into the language model (sae/eval): against PyTorch, Hugging Face and SAELens
// (tests/ref/eval, made by scripts/gen_eval_fixture.py: a random GPT-Neo with local layers of window
// 8, six stories of which one is longer than the 64 positions, and three SAE folders whose weights
// are planted: +-basis features with noise, 8 that never fire, 4 that always fire):
//   - the CE and KL of the clean, spliced, zero- and mean-ablated runs, the scores, FVU, L0, the
//     feature densities and the mean-ablation vector, for a per-story-normalised standard SAE at
//     layer 2, a dataset-scaled TopK SAE at layer 1 and a plain SAELens folder (b_dec applied to the
//     input) at layer 3;
//   - planted truth: an SAE that reconstructs exactly scores CE 1, KL ~0, FVU ~0; the planted dead
//     and always-on features are found;
//   - the next-token helpers against double-precision sums;
//   - the layer and normalisation read from the folders and the refusals (one line each);
//   - steering: greedy generation with the steering hook equals HF generate with the same forward
//     hook; the text helpers;
//   - CUDA against the CPU (skips without a GPU).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "lm/generate.h"
#include "lm/model_loader.h"
#include "lm/text_data.h"
#include "lm/text_windows.h"
#include "sae/arch/registry.h"
#include "sae/eval/evaluate.h"
#include "sae/eval/next_token.h"
#include "sae/eval/sae_at_layer.h"
#include "sae/eval/steer.h"
#include "sae/train/checkpoint.h"
#include "tensor/cuda/backend.h"
#include "tensor/ops.h"
#include "tensor/rng.h"
#include "tests/util/errors.h"
#include "tests/util/gpu.h"
#include "tests/sae/eval/reconstruction_expect.h"
#include "tests/util/compare.h"
#include "tests/util/fixture.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::expect_relative;
using sae::testing::TempDir;
using sae::testing::error_of;
namespace fs = std::filesystem;

namespace {

std::string eval_ref(const std::string& name) { return std::string(SAE_SOURCE_DIR) + "/tests/ref/eval/" + name; }

std::vector<int32_t> to_ids(const std::vector<int64_t>& values) { return std::vector<int32_t>(values.begin(), values.end()); }

DecoderConfig model_config() { return read_model_config(eval_ref("model")).config; }

// --layer K (K >= 0), or nothing (the folder decides).
HookChoice layer_choice(int layer) { return hook_choice("", layer, layer >= 0); }

// A copy of a fixture SAE folder in `dir` with cfg.json changed by `edit`.
template <typename Edit>
std::string edited_copy(const TempDir& dir, const std::string& folder, Edit edit) {
  const std::string out = dir.str(folder);
  fs::create_directories(out);
  fs::copy_file(eval_ref(folder + "/sae_weights.safetensors"), out + "/sae_weights.safetensors");
  Json cfg = read_json_file(eval_ref(folder + "/cfg.json"));
  edit(cfg);
  std::ofstream(out + "/cfg.json") << cfg.dump(2);
  return out;
}

struct Loaded {
  DecoderModel model = load_decoder_model(eval_ref("model"));
  BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(eval_ref("model"));
};

EvalOptions fixture_options() {
  EvalOptions options;
  options.text = eval_ref("stories.txt");
  return options;
}

}  // namespace

// ---------------------------------------------------------------- against the PyTorch reference

namespace {
// Each fixture folder evaluated with `options`, against the reference numbers of `expected` (written
// by scripts/gen_eval_fixture.py with PyTorch, HF and SAELens).
void expect_each_folder_matches(const std::string& expected, const EvalOptions& options) {
  Loaded lm;
  const test::Fixture e(eval_ref(expected));
  const struct {
    const char* name;
    const char* folder;
    int layer_override;
    int layer;
  } cases[] = {{"story", "sae_story", -1, 2}, {"topk", "sae_topk", -1, 1}, {"saelens", "sae_saelens", 3, 3}};
  for (const auto& c : cases) {
    SCOPED_TRACE(cat(c.name, " ", expected));
    const SaeAtLayer sae = load_sae_at_layer(eval_ref(c.folder), lm.model.config(), layer_choice(c.layer_override), Device::CPU);
    ASSERT_EQ(sae.layer, c.layer);
    const EvalResult r = evaluate_sae(lm.model, lm.tokenizer, sae, options);
    const std::string p = std::string(c.name) + ".";
    EXPECT_EQ(r.stories, 6);
    EXPECT_EQ(r.pieces, 7);  // the long story is two pieces
    EXPECT_EQ(r.tokens, e.integer(p + "tokens"));
    EXPECT_EQ(r.predictions, e.integer(p + "predictions"));
    // float32 logits and log-softmax against float64 sums of HF's float32 logits
    const double rel = 2e-5;
    expect_relative(r.clean.ce, e.scalar(p + "ce_clean"), rel, "CE clean");
    expect_relative(r.spliced.ce, e.scalar(p + "ce_sae"), rel, "CE spliced");
    expect_relative(r.zero_ablated.ce, e.scalar(p + "ce_zero"), rel, "CE zero");
    expect_relative(r.mean_ablated.ce, e.scalar(p + "ce_mean"), rel, "CE mean");
    expect_relative(r.spliced.kl, e.scalar(p + "kl_sae"), 1e-4, "KL spliced");
    expect_relative(r.zero_ablated.kl, e.scalar(p + "kl_zero"), 1e-4, "KL zero");
    expect_relative(r.mean_ablated.kl, e.scalar(p + "kl_mean"), 1e-4, "KL mean");
    expect_relative(r.ce_score, e.scalar(p + "ce_score"), 1e-4, "CE score");
    expect_relative(r.kl_score, e.scalar(p + "kl_score"), 1e-4, "KL score");
    expect_relative(r.fvu, e.scalar(p + "fvu"), 1e-5, "FVU");
    expect_relative(r.l0, e.scalar(p + "l0"), 1e-12, "L0");
    sae::testing::expect_reconstruction_metrics(r.reconstruction, e, p);  // SAELens's (a missing key throws)
    EXPECT_EQ(r.density, e.values(p + "density"));
    const std::vector<double> mean = e.values(p + "mean");
    ASSERT_EQ(r.mean_activation.size(), mean.size());
    for (size_t j = 0; j < mean.size(); ++j) EXPECT_NEAR(r.mean_activation[j], mean[j], 1e-6) << "mean " << j;
    // The planted features: 64..71 never fire, 72..75 always do (except where TopK leaves them out).
    for (int i = 64; i < 72; ++i) EXPECT_EQ(r.density[i], 0.0) << i;
    if (sae.params.kind != "topk") {
      for (int i = 72; i < 76; ++i) EXPECT_EQ(r.density[i], 1.0) << i;
    }
    int64_t dead = 0, dense = 0;
    for (double d : e.values(p + "density")) {
      dead += d == 0;
      dense += d > 0.1;
    }
    EXPECT_EQ(r.dead, dead);
    EXPECT_GE(r.dead, 8);
    EXPECT_EQ(r.dense, dense);
    // The scores' definitions, from the result's own numbers.
    EXPECT_DOUBLE_EQ(r.ce_score, (r.zero_ablated.ce - r.spliced.ce) / (r.zero_ablated.ce - r.clean.ce));
    EXPECT_DOUBLE_EQ(r.kl_score_mean, (r.mean_ablated.kl - r.spliced.kl) / r.mean_ablated.kl);
  }
}
}  // namespace

TEST(SaeEval, MatchesThePyTorchReferenceForEachFolder) { expect_each_folder_matches("expected.safetensors", fixture_options()); }

TEST(SaeEval, WithABosMatchesSaeLensMaskingForEachFolder) {
  // A BOS first in every window (--prepend-bos; SAELens folders usually ask for it): as SAELens's
  // evals mask it, the splice and the statistics leave its row, zero ablation zeroes it too, and CE
  // and KL leave out the prediction made from it and its position. Before, zero ablation kept the BOS
  // row and CE counted its prediction, so ce_loss_score and kl_div_score were not SAELens's.
  EvalOptions options = fixture_options();
  options.bos = static_cast<int32_t>(test::Fixture(eval_ref("expected_bos.safetensors")).integer("bos"));
  expect_each_folder_matches("expected_bos.safetensors", options);
}

TEST(SaeEval, ATranscoderSplicedForItsMlpMatchesThePyTorchSplice) {
  // scripts/gen_transcoder_eval_fixture.py: a skip transcoder of block 1's MLP (ln2.hook_normalized ->
  // hook_mlp_out, dataset scales 1.3 and 0.8), spliced in by PyTorch hooks on HF's GPT-Neo.
  Loaded lm;
  const std::string folder = std::string(SAE_SOURCE_DIR) + "/tests/ref/eval_transcoder/";
  const test::Fixture e(folder + "expected.safetensors");
  const SaeAtLayer tc = load_sae_at_layer(folder + "tc", lm.model.config(), HookChoice{}, Device::CPU);
  EXPECT_EQ(hook_name(tc.input_site), "blocks.1.ln2.hook_normalized");
  EXPECT_EQ(hook_name(tc.site), "blocks.1.hook_mlp_out");
  EXPECT_EQ(tc.layer_source, "cfg.json metadata.hook_name_out");  // what reports name beside `site`
  const EvalResult r = evaluate_sae(lm.model, lm.tokenizer, tc, fixture_options());
  EXPECT_EQ(r.tokens, e.integer("tc.tokens"));
  EXPECT_EQ(r.predictions, e.integer("tc.predictions"));
  expect_relative(r.clean.ce, e.scalar("tc.ce_clean"), 2e-5, "CE clean");
  expect_relative(r.spliced.ce, e.scalar("tc.ce_sae"), 2e-5, "CE spliced");
  expect_relative(r.zero_ablated.ce, e.scalar("tc.ce_zero"), 2e-5, "CE zero");
  expect_relative(r.mean_ablated.ce, e.scalar("tc.ce_mean"), 2e-5, "CE mean");
  expect_relative(r.spliced.kl, e.scalar("tc.kl_sae"), 1e-4, "KL spliced");
  expect_relative(r.zero_ablated.kl, e.scalar("tc.kl_zero"), 1e-4, "KL zero");
  expect_relative(r.mean_ablated.kl, e.scalar("tc.kl_mean"), 1e-4, "KL mean");
  expect_relative(r.ce_score, e.scalar("tc.ce_score"), 2e-3, "CE score");
  expect_relative(r.kl_score, e.scalar("tc.kl_score"), 1e-4, "KL score");
  expect_relative(r.fvu, e.scalar("tc.fvu"), 1e-5, "FVU of the MLP's output");
  expect_relative(r.l0, e.scalar("tc.l0"), 1e-12, "L0");
  EXPECT_EQ(r.density, e.values("tc.density"));
  const std::vector<double> mean = e.values("tc.mean");
  ASSERT_EQ(r.mean_activation.size(), mean.size());
  for (size_t j = 0; j < mean.size(); ++j) EXPECT_NEAR(r.mean_activation[j], mean[j], 1e-6) << "mean " << j;
  EXPECT_EQ(r.dead, 4);
  {  // A hand-edited folder that says per-story normalisation (training refuses it): refused, where
     // sae_eval had scored it with an output left in the normalised scale (FVU 287).
    TempDir dir("eval_transcoder_story");
    fs::copy(folder + "tc", dir.str("tc"), fs::copy_options::recursive);
    Json cfg = Json::parse(sae::testing::read_file(dir.str("tc/cfg.json")));
    cfg["sae_cpp"]["normalization"] = Json("story");
    std::ofstream(dir.str("tc/cfg.json")) << cfg.dump();
    const std::string message =
        error_of([&] { load_sae_at_layer(dir.str("tc"), lm.model.config(), HookChoice{}, Device::CPU); });
    EXPECT_NE(message.find("which a transcoder cannot have"), std::string::npos) << message;
  }
  {  // One dataset scale for a transcoder: its target's scale would silently have been its input's.
    TempDir dir("eval_transcoder_one_scale");
    fs::copy(folder + "tc", dir.str("tc"), fs::copy_options::recursive);
    Json cfg = Json::parse(sae::testing::read_file(dir.str("tc/cfg.json")));
    cfg["sae_cpp"]["dataset_scale"] = Json::parse("[1.3]");
    std::ofstream(dir.str("tc/cfg.json"), std::ios::trunc) << cfg.dump();
    const std::string message =
        error_of([&] { load_sae_at_layer(dir.str("tc"), lm.model.config(), HookChoice{}, Device::CPU); });
    EXPECT_NE(message.find("scales but a transcoder has 2"), std::string::npos) << message;
  }
  // A transcoder's hooks come from its folder: --hook is refused in one line.
  EXPECT_NE(error_of([&] { load_sae_at_layer(folder + "tc", lm.model.config(), layer_choice(2), Device::CPU); })
                .find("a transcoder's hooks are those its cfg.json names"),
            std::string::npos);
}

TEST(SaeEval, AnSaeThatReconstructsExactlyScoresOne) {
  // Planted truth: W_enc = [I, -I], W_dec = [I; -I], no biases: x_hat = relu(x) - relu(-x) = x.
  TempDir dir("eval_identity");
  const int64_t d = 32, f = 64;
  std::vector<double> w_enc(d * f, 0.0), w_dec(f * d, 0.0);
  for (int64_t j = 0; j < d; ++j) {
    w_enc[j * f + j] = 1, w_enc[j * f + d + j] = -1;
    w_dec[j * d + j] = 1, w_dec[(d + j) * d + j] = -1;
  }
  const SaeParams params = SaeParams::from_tensors(Tensor::from_vector(w_enc, Shape{d, f}), Tensor::zeros(Shape{f}),
                                                   Tensor::from_vector(w_dec, Shape{f, d}), Tensor::zeros(Shape{d}));
  Json extra = Json::object();
  extra["normalization"] = "story";
  extra["dataset_scale"] = 1.0;
  extra["data"] = Json::object();
  extra["data"]["layer"] = 2;
  save_checkpoint(dir.str("identity"), params, extra, nullptr);
  Loaded lm;
  const SaeAtLayer sae = load_sae_at_layer(dir.str("identity"), lm.model.config(), layer_choice(-1), Device::CPU);
  const EvalResult r = evaluate_sae(lm.model, lm.tokenizer, sae, fixture_options());
  EXPECT_NEAR(r.spliced.ce, r.clean.ce, 1e-5 * r.clean.ce);
  EXPECT_LT(r.spliced.kl, 1e-6);
  EXPECT_NEAR(r.ce_score, 1.0, 1e-4);
  EXPECT_NEAR(r.kl_score, 1.0, 1e-5);
  EXPECT_LT(r.fvu, 1e-10);
  EXPECT_GT(r.zero_ablated.kl, 0.1);  // the ablations do change the model
  EXPECT_GT(r.mean_ablated.kl, 0.1);
  // Every token has each coordinate nonzero on one side: L0 = d (up to exact zeros, none here).
  EXPECT_DOUBLE_EQ(r.l0, static_cast<double>(d));
  // SAELens's reconstruction metrics of x_hat = x: no error, the same norms, cosine 1.
  EXPECT_LT(r.reconstruction.mse, 1e-10);
  EXPECT_NEAR(r.reconstruction.cossim, 1.0, 1e-6);
  EXPECT_NEAR(r.reconstruction.l2_ratio, 1.0, 1e-6);
  EXPECT_NEAR(r.reconstruction.relative_reconstruction_bias, 1.0, 1e-6);
  EXPECT_NEAR(r.reconstruction.l2_norm_out, r.reconstruction.l2_norm_in, 1e-6 * r.reconstruction.l2_norm_in);
  EXPECT_GT(r.reconstruction.l2_norm_in, 0.1);
}

TEST(SaeEval, AKeptBosStorySaeIsScoredOnItsTrainingNormalisation) {
  // The per-story fixture SAE, said to be trained with --bos-activations keep: each window is
  // normalised with its BOS row (as training did), then that row is left out. L0 from a brute-force
  // pass over the same windows, and a check that leaving the BOS out of the statistics differs.
  TempDir dir("eval_keep_bos");
  const std::string folder = edited_copy(dir, "sae_story", [](Json& cfg) {
    cfg["sae_cpp"]["data"] = Json::object();
    cfg["sae_cpp"]["data"]["layer"] = 2;
    cfg["sae_cpp"]["data"]["bos_activations"] = "keep";
  });
  Loaded lm;
  const SaeAtLayer sae = load_sae_at_layer(folder, lm.model.config(), layer_choice(-1), Device::CPU);
  ASSERT_TRUE(sae.kept_bos);
  ASSERT_EQ(sae.normalization, Normalization::Story);
  EvalOptions options = fixture_options();
  options.max_stories = 3;
  options.bos = lm.tokenizer.bos_id();
  options.context_size = 24;
  ASSERT_GE(options.bos, 0);
  const EvalResult r = evaluate_sae(lm.model, lm.tokenizer, sae, options);
  double active[2] = {0, 0};  // [0]: the BOS row in the statistics, [1]: not
  int64_t tokens = 0;
  StoryReader reader(options.text);
  TextStory story;
  const WindowOptions windows{options.bos, options.context_size};
  for (int s = 0; s < 3 && reader.next(story); ++s) {
    const std::vector<int32_t> ids = lm.tokenizer.encode(story.text, story.where);
    for (int64_t k = 0; k < window_count(static_cast<int64_t>(ids.size()), windows); ++k) {
      const TokenWindow w = document_window(ids, k, windows);
      const Tensor state = lm.model.forward_to_site(w.input, sae.site).to(Device::CPU);
      const int64_t t = state.size(0), d = state.size(1);
      for (int skip = 0; skip < 2; ++skip) {
        Tensor x = Tensor::empty(Shape{t - skip, d});
        normalize_batch(state.data<float>() + skip * d, x.data<float>(), t - skip, d, Normalization::Story, 1.0,
                        [](int64_t row) { return row; }, "test");
        const Tensor f = sae_encode(sae.params, x).slice_rows(1 - skip, t - skip);
        active[skip] += reduce(ReduceOp::count_nonzero, f).item();
      }
      tokens += t - 1;
    }
  }
  EXPECT_EQ(r.tokens, tokens);
  EXPECT_DOUBLE_EQ(r.l0, active[0] / static_cast<double>(tokens));
  EXPECT_NE(active[0], active[1]);
}

TEST(SaeEval, MaxStoriesTakesTheFirstStories) {
  Loaded lm;
  const SaeAtLayer sae = load_sae_at_layer(eval_ref("sae_story"), lm.model.config(), layer_choice(-1), Device::CPU);
  EvalOptions options = fixture_options();
  options.max_stories = 2;
  const EvalResult r = evaluate_sae(lm.model, lm.tokenizer, sae, options);
  const test::Fixture e(eval_ref("expected.safetensors"));
  EXPECT_EQ(r.stories, 2);
  EXPECT_EQ(r.tokens, static_cast<int64_t>(e.ints("story0.ids").size() + e.ints("story1.ids").size()));
}

TEST(SaeEval, ReportsJsonTableAndHistogram) {
  Loaded lm;
  const SaeAtLayer sae = load_sae_at_layer(eval_ref("sae_story"), lm.model.config(), layer_choice(-1), Device::CPU);
  const EvalResult r = evaluate_sae(lm.model, lm.tokenizer, sae, fixture_options());
  const Json j = eval_json(r, sae, eval_ref("model"), fixture_options());
  EXPECT_EQ(j.at("ce_loss").at("sae").as_number(), r.spliced.ce);
  EXPECT_EQ(j.at("kl_div_score").as_number(), r.kl_score);
  EXPECT_EQ(j.at("feature_density").size(), 80u);
  EXPECT_EQ(j.at("layer").as_int(), 2);
  EXPECT_EQ(j.at("normalization").as_string(), "story");
  const std::string report = eval_report(r, sae);
  EXPECT_NE(report.find("| SAE spliced |"), std::string::npos) << report;
  EXPECT_NE(report.find("dead features 8 of 80"), std::string::npos) << report;
  const Figure figure = density_histogram(r, "sae");
  ASSERT_EQ(figure.series.size(), 1u);
  double features = 0;  // each bar is drawn as 4 points: (left, 0), (left, c), (right, c), (right, 0)
  for (size_t i = 1; i < figure.series[0].y.size(); i += 4) features += figure.series[0].y[i];
  EXPECT_EQ(features, 72.0);  // every feature that fired, once
  EvalResult nan = r;
  nan.ce_score = NAN;
  EXPECT_TRUE(eval_json(nan, sae, "m", fixture_options()).at("ce_loss_score").is_null());
}

TEST(SaeEval, RefusesCorporaWithoutPredictions) {
  Loaded lm;
  const SaeAtLayer sae = load_sae_at_layer(eval_ref("sae_story"), lm.model.config(), layer_choice(-1), Device::CPU);
  TempDir dir("eval_text");
  EvalOptions options;
  options.text = dir.str("empty.txt");
  std::ofstream(options.text) << "\n  \n<|endoftext|>\n";
  EXPECT_NE(error_of([&] { evaluate_sae(lm.model, lm.tokenizer, sae, options); }).find("no story"), std::string::npos);
  options.text = dir.str("one_token.txt");
  std::ofstream(options.text) << "A\n<|endoftext|>\nb\n";  // one byte, one token each
  EXPECT_NE(error_of([&] { evaluate_sae(lm.model, lm.tokenizer, sae, options); }).find("one token"), std::string::npos);
  // Long stories, but two positions with a BOS leave one story token per window: the option is named.
  options.text = eval_ref("stories.txt");
  options.bos = lm.tokenizer.bos_id();
  options.context_size = 2;
  EXPECT_THROW(evaluate_sae(lm.model, lm.tokenizer, sae, options), UsageError);
  EXPECT_NE(error_of([&] { evaluate_sae(lm.model, lm.tokenizer, sae, options); }).find("--context-size 2 with a BOS"),
            std::string::npos);
  options.bos = -1;
  options.context_size = 0;
  options.text = dir.str("missing.txt");
  EXPECT_THROW(evaluate_sae(lm.model, lm.tokenizer, sae, options), DataError);
}

// ---------------------------------------------------------------- the next-token helpers

TEST(NextToken, LogSoftmaxLossesAndKlEqualDoubleSums) {
  Rng rng(5);
  const int64_t t = 7, v = 50;
  const Tensor a = normal_tensor(Shape{t, v}, 0.0, 3.0, rng), b = normal_tensor(Shape{t, v}, 1.0, 2.0, rng);
  std::vector<int32_t> ids(t);
  for (auto& id : ids) id = static_cast<int32_t>(rng.below(v));
  const Tensor log_a = log_softmax_rows(a), log_b = log_softmax_rows(b);
  const std::vector<double> av = a.to_vector(), bv = b.to_vector(), la = log_a.to_vector();
  auto log_sum_exp = [&](const std::vector<double>& x, int64_t row) {
    double m = -INFINITY, s = 0;
    for (int64_t k = 0; k < v; ++k) m = std::max(m, x[row * v + k]);
    for (int64_t k = 0; k < v; ++k) s += std::exp(x[row * v + k] - m);
    return m + std::log(s);
  };
  const std::vector<double> losses = next_token_losses(log_a, ids), kl = kl_per_position(log_a, log_b);
  ASSERT_EQ(losses.size(), static_cast<size_t>(t - 1));
  ASSERT_EQ(kl.size(), static_cast<size_t>(t));
  for (int64_t row = 0; row < t; ++row) {
    const double za = log_sum_exp(av, row), zb = log_sum_exp(bv, row);
    for (int64_t k = 0; k < v; ++k) EXPECT_NEAR(la[row * v + k], av[row * v + k] - za, 2e-6);
    if (row + 1 < t) {
      EXPECT_NEAR(losses[row], za - av[row * v + ids[row + 1]], 2e-6);
    }
    double want = 0;
    for (int64_t k = 0; k < v; ++k) {
      const double lp = av[row * v + k] - za, lq = bv[row * v + k] - zb;
      want += std::exp(lp) * (lp - lq);
    }
    EXPECT_NEAR(kl[row], want, 1e-5 * want + 1e-6);
    EXPECT_GT(kl[row], 0.0);
  }
  for (double x : kl_per_position(log_a, log_a)) EXPECT_EQ(x, 0.0);
  EXPECT_TRUE(next_token_losses(log_a.slice_rows(0, 1), {ids[0]}).empty());
  EXPECT_THROW(next_token_losses(log_a, {1, 2}), Error);
  EXPECT_THROW(kl_per_position(log_a, log_a.slice_rows(0, 3)), Error);
}

// ---------------------------------------------------------------- folders: layer, normalisation, refusals

TEST(SaeAtLayer, ReadsTheLayerAndNormalisationFromTheFolder) {
  const DecoderConfig config = model_config();
  const SaeAtLayer story = load_sae_at_layer(eval_ref("sae_story"), config, layer_choice(-1), Device::CPU);
  EXPECT_EQ(story.layer, 2);
  EXPECT_EQ(story.normalization, Normalization::Story);
  EXPECT_NE(story.layer_source.find("sae_cpp.data.layer"), std::string::npos);
  const SaeAtLayer topk = load_sae_at_layer(eval_ref("sae_topk"), config, layer_choice(-1), Device::CPU);
  EXPECT_EQ(topk.layer, 1);
  EXPECT_EQ(topk.normalization, Normalization::Dataset);
  EXPECT_DOUBLE_EQ(topk.dataset_scale, 1.7);
  EXPECT_EQ(topk.params.kind, "topk");
  EXPECT_EQ(topk.params.settings.at("k").as_int(), 12);
  const SaeAtLayer overridden = load_sae_at_layer(eval_ref("sae_story"), config, layer_choice(4), Device::CPU);
  EXPECT_EQ(overridden.layer, 4);
  EXPECT_EQ(overridden.layer_source, "--layer");

  TempDir dir("eval_hooks");
  const struct {
    const char* hook;
    int layer;
  } hooks[] = {{"blocks.1.hook_resid_pre", 1}, {"blocks.0.hook_resid_pre", 0}, {"blocks.2.hook_resid_post", 3}};
  int n = 0;
  for (const auto& h : hooks) {
    const std::string folder = edited_copy(dir, "sae_saelens", [&](Json& cfg) { cfg["metadata"]["hook_name"] = h.hook; });
    EXPECT_EQ(load_sae_at_layer(folder, config, layer_choice(-1), Device::CPU).layer, h.layer) << h.hook;
    fs::rename(folder, dir.str(cat("hook", n++)));
  }
}

TEST(SaeAtLayer, RefusesWhatDoesNotFitWithOneLine) {
  const DecoderConfig config = model_config();
  // No layer in the folder: ask for --layer.
  std::string message = error_of([&] { load_sae_at_layer(eval_ref("sae_saelens"), config, layer_choice(-1), Device::CPU); });
  EXPECT_NE(message.find("--layer"), std::string::npos) << message;
  EXPECT_THROW(load_sae_at_layer(eval_ref("sae_saelens"), config, layer_choice(-1), Device::CPU), UsageError);
  // The last block's resid_post is before the final norm: no hidden_states index, but a hook point
  // we splice at; a hook point we do not read is refused (from the folder: a data error).
  TempDir dir("eval_refuse");
  std::string folder = edited_copy(dir, "sae_saelens", [](Json& cfg) { cfg["metadata"]["hook_name"] = "blocks.3.hook_resid_post"; });
  const SaeAtLayer last = load_sae_at_layer(folder, config, layer_choice(-1), Device::CPU);
  EXPECT_EQ(last.site, (HookSite{3, HookPoint::ResidPost}));
  EXPECT_EQ(last.layer, -1);
  fs::remove_all(folder);
  folder = edited_copy(dir, "sae_saelens", [](Json& cfg) { cfg["metadata"]["hook_name"] = "blocks.1.attn.hook_q"; });
  message = error_of([&] { load_sae_at_layer(folder, config, layer_choice(-1), Device::CPU); });
  EXPECT_NE(message.find("hook_q"), std::string::npos) << message;
  EXPECT_THROW(load_sae_at_layer(folder, config, layer_choice(-1), Device::CPU), DataError);
  fs::remove_all(folder);
  // Out of range: from --layer a usage error, from the folder a data error.
  message = error_of([&] { load_sae_at_layer(eval_ref("sae_story"), config, layer_choice(5), Device::CPU); });
  EXPECT_NE(message.find("hidden states 0 to 4"), std::string::npos) << message;
  EXPECT_THROW(load_sae_at_layer(eval_ref("sae_story"), config, layer_choice(5), Device::CPU), UsageError);
  folder = edited_copy(dir, "sae_story", [](Json& cfg) { cfg["sae_cpp"]["data"]["layer"] = 9; });
  EXPECT_THROW(load_sae_at_layer(folder, config, layer_choice(-1), Device::CPU), DataError);
  fs::remove_all(folder);
  // Width.
  DecoderConfig wider = config;
  wider.hidden_size = 64;
  message = error_of([&] { load_sae_at_layer(eval_ref("sae_story"), wider, layer_choice(-1), Device::CPU); });
  EXPECT_NE(message.find("d_in is 32 but blocks.2.hook_resid_pre"), std::string::npos) << message;
  EXPECT_NE(message.find("is 64 wide"), std::string::npos) << message;
  // SAELens options we do not apply.
  for (const char* key : {"normalize_activations", "reshape_activations"}) {
    folder = edited_copy(dir, "sae_story", [&](Json& cfg) { cfg[key] = "layer_norm"; });
    message = error_of([&] { load_sae_at_layer(folder, config, layer_choice(-1), Device::CPU); });
    EXPECT_NE(message.find(key), std::string::npos) << message;
    fs::remove_all(folder);
  }
  folder = edited_copy(dir, "sae_story", [](Json& cfg) { cfg["sae_cpp"]["normalization"] = "sideways"; });
  EXPECT_THROW(load_sae_at_layer(folder, config, layer_choice(-1), Device::CPU), DataError);
  fs::remove_all(folder);
  folder = edited_copy(dir, "sae_topk", [](Json& cfg) { cfg["sae_cpp"]["dataset_scale"] = -1.0; });
  EXPECT_THROW(load_sae_at_layer(folder, config, layer_choice(-1), Device::CPU), DataError);
  fs::remove_all(folder);
  EXPECT_THROW(load_sae_at_layer(dir.str("nothing"), config, layer_choice(-1), Device::CPU), DataError);
}

TEST(SaeAtLayer, ReconstructUndoesTheNormalisation) {
  // With dataset scale s the SAE sees s x and its output is divided by s: for a linear SAE (no ReLU
  // effect: +-basis pairs) the reconstruction is then independent of s.
  const DecoderConfig config = model_config();
  const SaeAtLayer topk = load_sae_at_layer(eval_ref("sae_topk"), config, layer_choice(-1), Device::CPU);
  SaeAtLayer story = load_sae_at_layer(eval_ref("sae_story"), config, layer_choice(-1), Device::CPU);
  Rng rng(3);
  const Tensor x = normal_tensor(Shape{9, 32}, 0.4, 1.3, rng);
  // Encoded 4 rows at a time: the features come in blocks at rows 0, 4 and 8.
  Tensor f = Tensor::empty(Shape{9, 80});
  std::vector<int64_t> firsts;
  const Tensor x_hat = reconstruct(story, x, [&](int64_t first, const Tensor& block) {
    firsts.push_back(first);
    Tensor rows = f.slice_rows(first, first + block.size(0));
    copy_(rows, block);
  }, 4);
  EXPECT_EQ(firsts, (std::vector<int64_t>{0, 4, 8}));
  // By hand: per-story statistics, encode, decode, back.
  const std::vector<double> xv = x.to_vector();
  double mean = 0, var = 0;
  for (double v : xv) mean += v;
  mean /= xv.size();
  for (double v : xv) var += (v - mean) * (v - mean);
  const double scale = std::sqrt(32.0) / std::sqrt(var / (xv.size() - 1));
  const Tensor normalized = affine(x, scale, -mean * scale);
  const Tensor want = affine(sae_decode(story.params, sae_encode(story.params, normalized)), 1 / scale, mean);
  sae::testing::expect_close_to_scale(x_hat, want, 1e-6, "story");
  sae::testing::expect_close_to_scale(f, sae_encode(story.params, normalized), 1e-6, "story's features");
  sae::testing::expect_close_to_scale(reconstruct(story, x), x_hat, 1e-6, "in one block");
  sae::testing::expect_close_to_scale(reconstruct(topk, x), affine(sae_decode(topk.params, sae_encode(topk.params, mul_scalar(x, 1.7))), 1 / 1.7, 0), 1e-6, "dataset");
  Tensor bad = x.clone();
  bad.data<float>()[5] = NAN;
  EXPECT_THROW(reconstruct(story, bad), DataError);
}

// ---------------------------------------------------------------- steering

TEST(Steer, GreedySteeredGenerationEqualsHuggingFaceWithTheSameHook) {
  Loaded lm;
  const test::Fixture e(eval_ref("expected.safetensors"));
  const SaeAtLayer sae = load_sae_at_layer(eval_ref("sae_story"), lm.model.config(), layer_choice(-1), Device::CPU);
  ASSERT_EQ(sae.layer, e.integer("steer.layer"));
  const Tensor direction = decoder_direction(sae, e.integer("steer.feature"));
  EXPECT_NEAR(std::sqrt(reduce(ReduceOp::sum_squares, direction).item()), 1.0, 1e-6);
  const Tensor vector = mul_scalar(direction, e.scalar("steer.strength"));
  GenerateOptions options;
  options.greedy = true;
  options.max_new_tokens = 40;
  for (int p = 0; p < 2; ++p) {
    const std::vector<int32_t> prompt = to_ids(e.ints(cat("gen", p, ".prompt")));
    EXPECT_EQ(generate(lm.model, prompt, options, steering_hook(sae.site, vector)), to_ids(e.ints(cat("gen", p, ".steered"))))
        << "prompt " << p;
  }
  // steer() runs both; its prompt is the tokenizer's.
  SteerOptions steer_options;
  steer_options.feature = e.integer("steer.feature");
  steer_options.strength = e.scalar("steer.strength");
  steer_options.generate = options;
  const SteerResult r = steer(lm.model, lm.tokenizer, sae, "Once upon a time, there was a little", steer_options);
  EXPECT_EQ(r.prompt, to_ids(e.ints("gen0.prompt")));
  EXPECT_EQ(r.unsteered, to_ids(e.ints("gen0.greedy")));
  EXPECT_EQ(r.steered, to_ids(e.ints("gen0.steered")));
  const Json j = steer_json(r, lm.tokenizer, sae, "Once upon a time, there was a little", steer_options);
  EXPECT_EQ(j.at("steered").at("ids").size(), 40u);
  EXPECT_EQ(j.at("feature").as_int(), steer_options.feature);
  // Strength 0 steers nothing.
  steer_options.strength = 0;
  const SteerResult same = steer(lm.model, lm.tokenizer, sae, "The dog ran to the park and", steer_options);
  EXPECT_EQ(same.steered, same.unsteered);
}

TEST(Steer, RefusesBadFeaturesStrengthsAndPrompts) {
  Loaded lm;
  const SaeAtLayer sae = load_sae_at_layer(eval_ref("sae_story"), lm.model.config(), layer_choice(-1), Device::CPU);
  SteerOptions options;
  options.strength = 3;
  options.generate.max_new_tokens = 4;
  options.feature = 80;
  EXPECT_THROW(steer(lm.model, lm.tokenizer, sae, "Hi", options), UsageError);
  options.feature = -1;
  EXPECT_THROW(steer(lm.model, lm.tokenizer, sae, "Hi", options), UsageError);
  options.feature = 79;  // its decoder row is zero
  std::string message = error_of([&] { steer(lm.model, lm.tokenizer, sae, "Hi", options); });
  EXPECT_NE(message.find("zero decoder row"), std::string::npos) << message;
  options.feature = 3;
  options.strength = INFINITY;
  EXPECT_THROW(steer(lm.model, lm.tokenizer, sae, "Hi", options), UsageError);
  options.strength = -1e39;  // a finite double, -inf once added in float32
  message = error_of([&] { steer(lm.model, lm.tokenizer, sae, "Hi", options); });
  EXPECT_NE(message.find("float32's range"), std::string::npos) << message;
  options.strength = 3;
  EXPECT_THROW(steer(lm.model, lm.tokenizer, sae, "", options), DataError);
  EXPECT_THROW(steer(lm.model, lm.tokenizer, sae, "bad \xff utf-8", options), DataError);
  options.generate.max_new_tokens = 64;
  EXPECT_THROW(steer(lm.model, lm.tokenizer, sae, "Hi", options), DataError);  // prompt + 64 > 64 positions
}

TEST(Steer, DisplayTextReplacesBrokenUtf8AndColumnsWrap) {
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(eval_ref("model"));
  const std::vector<int32_t> ids = tokenizer.encode("Zoë the café owner “hi”");
  EXPECT_EQ(display_text(tokenizer, ids), "Zoë the café owner “hi”");
  // Find a token whose bytes are an incomplete UTF-8 sequence: it shows as U+FFFD.
  int32_t partial = -1;
  for (int32_t id = 0; id < tokenizer.vocab_size() && partial < 0; ++id) {
    const std::string bytes = tokenizer.token_text(id);
    if (bytes.size() == 1 && static_cast<unsigned char>(bytes[0]) >= 0xC2 && static_cast<unsigned char>(bytes[0]) <= 0xF4)
      partial = id;
  }
  ASSERT_GE(partial, 0);
  EXPECT_EQ(display_text(tokenizer, {ids[0], partial}), display_text(tokenizer, {ids[0]}) + "\xEF\xBF\xBD");
  EXPECT_EQ(display_text(tokenizer, {partial, ids[0]}), "\xEF\xBF\xBD" + display_text(tokenizer, {ids[0]}));
  // Control bytes (byte-level tokens of NUL, tab, escape, DEL) show as their Unicode pictures; a
  // newline stays one (it breaks the column). A NUL had ended sae_steer's printed columns there.
  auto byte_token = [&](unsigned char b) {
    for (int32_t id = 0; id < tokenizer.vocab_size(); ++id)
      if (tokenizer.token_text(id) == std::string(1, static_cast<char>(b))) return id;
    return int32_t(-1);
  };
  const std::vector<int32_t> controls = {byte_token(0), byte_token('\t'), byte_token(0x1B), byte_token(0x7F),
                                         byte_token('\n')};
  for (int32_t id : controls) ASSERT_GE(id, 0);
  EXPECT_EQ(display_text(tokenizer, controls), "\xE2\x90\x80\xE2\x90\x89\xE2\x90\x9B\xE2\x90\xA1\n");  // ␀␉␛␡ and a newline
  // Characters that act on the text around them are shown escaped: a right-to-left override had
  // reversed the rest of the terminal line, C1 controls and U+2028 reached the terminal raw.
  EXPECT_EQ(display_text(std::string("a\u202Eb\u2028c\xC2\x9B" "d\u200Fe\u2067f")),
            "a<U+202E>b<U+2028>c<U+009B>d<U+200F>e<U+2067>f");
  EXPECT_EQ(display_text(std::string("caf\u00E9 \u05E9\u05DC")), "caf\u00E9 \u05E9\u05DC");  // letters of any script stay
  const std::string columns = side_by_side("left", "one two three four five six", "right", "alpha\nbeta", 10);
  EXPECT_EQ(columns,
            "left       | right\n"
            "-----------+-----------\n"
            "one two    | alpha\n"
            "three four | beta\n"
            "five six   |\n");
}

// ---------------------------------------------------------------- CUDA

TEST(SaeEvalCuda, EvaluationAndSteeringMatchTheCpu) {
  SKIP_WITHOUT_GPU();
  Loaded lm;
  DecoderModel gpu = load_decoder_model(eval_ref("model"), Device::CUDA);
  const test::Fixture e(eval_ref("expected.safetensors"));
  for (const char* folder : {"sae_story", "sae_topk"}) {
    SCOPED_TRACE(folder);
    const SaeAtLayer cpu_sae = load_sae_at_layer(eval_ref(folder), lm.model.config(), layer_choice(-1), Device::CPU);
    const SaeAtLayer gpu_sae = load_sae_at_layer(eval_ref(folder), gpu.config(), layer_choice(-1), Device::CUDA);
    const EvalResult want = evaluate_sae(lm.model, lm.tokenizer, cpu_sae, fixture_options());
    const EvalResult got = evaluate_sae(gpu, lm.tokenizer, gpu_sae, fixture_options());
    for (const auto& [g, w] : {std::pair{got.clean, want.clean}, std::pair{got.spliced, want.spliced},
                               std::pair{got.zero_ablated, want.zero_ablated}, std::pair{got.mean_ablated, want.mean_ablated}}) {
      expect_relative(g.ce, w.ce, 1e-5, "CE");
      if (w.kl > 0) expect_relative(g.kl, w.kl, 1e-4, "KL");
    }
    expect_relative(got.fvu, want.fvu, 1e-5, "FVU");
    expect_relative(got.reconstruction.cossim, want.reconstruction.cossim, 1e-5, "cossim");
    expect_relative(got.reconstruction.relative_reconstruction_bias, want.reconstruction.relative_reconstruction_bias,
                    1e-5, "relative_reconstruction_bias");
    EXPECT_EQ(got.density, want.density);
  }
  const SaeAtLayer gpu_sae = load_sae_at_layer(eval_ref("sae_story"), gpu.config(), layer_choice(-1), Device::CUDA);
  SteerOptions options;
  options.feature = e.integer("steer.feature");
  options.strength = e.scalar("steer.strength");
  options.generate.greedy = true;
  options.generate.max_new_tokens = 40;
  const SteerResult r = steer(gpu, lm.tokenizer, gpu_sae, "Once upon a time, there was a little", options);
  EXPECT_EQ(r.unsteered, to_ids(e.ints("gen0.greedy")));
  EXPECT_EQ(r.steered, to_ids(e.ints("gen0.steered")));
}

// The fused host scoring (score_clean_run, score_run) against the tensor-op helpers in float64:
// rows shorter than the fused code's chunk of 1024 and longer, logits close together and so
// widely spread that most of exp(z - max) underflows float32 (those terms count as 0 there).
TEST(NextToken, FusedScoresEqualTheOpByOpHelpers) {
  for (const auto& [v, spread] : std::vector<std::pair<int64_t, double>>{{1003, 3.0}, {2500, 3.0}, {2500, 80.0}}) {
    SCOPED_TRACE(cat("V ", v, ", logits' std ", spread));
    Rng rng(21);
    const int64_t t = 37;
    const Tensor zp = normal_tensor(Shape{t, v}, 0.0, spread, rng),
                 zq = normal_tensor(Shape{t, v}, 0.2, spread * 2.5 / 3.0, rng);
    std::vector<int32_t> ids(t);
    for (int32_t& id : ids) id = static_cast<int32_t>(rng.below(v));
    const Tensor lp = log_softmax_rows(zp.to(DType::F64)), lq = log_softmax_rows(zq.to(DType::F64));
    double ce_p = 0, ce_q = 0, kl = 0;
    for (double x : next_token_losses(lp, ids)) ce_p += x;
    for (double x : next_token_losses(lq, ids)) ce_q += x;
    for (double x : kl_per_position(lp, lq)) kl += x;
    const CleanScores clean = score_clean_run(zp.clone(), ids);
    const RunScoreSums run = score_run(zq, ids, clean);
    EXPECT_NEAR(clean.ce, ce_p, 1e-6 * ce_p);
    EXPECT_NEAR(next_token_ce(zp, ids), ce_p, 1e-6 * ce_p);
    EXPECT_NEAR(run.ce, ce_q, 1e-6 * ce_q);
    EXPECT_NEAR(run.kl, kl, 1e-5 * kl);
    EXPECT_GT(kl, 1.0);
    const RunScoreSums same = score_run(zp, ids, clean);
    EXPECT_NEAR(same.kl, 0.0, 1e-5 * t);
    EXPECT_THROW(score_run(zq.slice_rows(0, 5), ids, clean), Error);
  }
}
