// A crosscoder spliced into the language model at each of its hooks (sae/eval evaluate_crosscoder):
//   - against PyTorch and Hugging Face (tests/ref/eval_crosscoder, made by
//     scripts/gen_crosscoder_eval_fixture.py): a ReLU crosscoder over blocks.0 and blocks.2
//     hook_resid_post of the sae_eval fixture's model, and a TopK crosscoder over blocks.1.hook_resid_post
//     of that model and of a second one (model diffing): CE and KL of the clean, spliced, zero- and
//     mean-ablated runs per model, the scores, FVU per source and over all, L0, densities, means, and
//     SAELens's reconstruction metrics over the concatenated sources (expected_metrics.safetensors);
//   - planted truth: a crosscoder that reconstructs both sources exactly scores CE 1 and FVU ~0;
//   - the one-line refusals (--hook, a missing --model-b, a --model-b it does not read, bad folders);
//   - CUDA against the CPU (skips without a GPU).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>

#include "lm/model_loader.h"
#include "sae/eval/evaluate.h"
#include "sae/eval/sae_at_layer.h"
#include "sae/train/checkpoint.h"
#include "tests/sae/eval/reconstruction_expect.h"
#include "tests/util/compare.h"
#include "tests/util/errors.h"
#include "tests/util/fixture.h"
#include "tests/util/gpu.h"
#include "tests/util/test_util.h"
#include "tensor/ops.h"
#include "tensor/rng.h"

using namespace sae;
using sae::testing::expect_relative;
using sae::testing::TempDir;
using sae::testing::error_of;
namespace fs = std::filesystem;

namespace {

std::string eval_ref(const std::string& name) { return std::string(SAE_SOURCE_DIR) + "/tests/ref/eval/" + name; }
std::string xc_ref(const std::string& name) {
  return std::string(SAE_SOURCE_DIR) + "/tests/ref/eval_crosscoder/" + name;
}

struct Loaded {
  DecoderModel model = load_decoder_model(eval_ref("model"));
  DecoderModel model_b = load_decoder_model(xc_ref("model_b"));
  BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(eval_ref("model"));
};

EvalOptions fixture_options() {
  EvalOptions options;
  options.text = eval_ref("stories.txt");
  return options;
}

// The PyTorch numbers of one model's runs.
void expect_scores(const SpliceScores& s, const test::Fixture& e, const std::string& p) {
  expect_relative(s.clean.ce, e.scalar(p + "ce_clean"), 2e-5, p + "CE clean");
  expect_relative(s.spliced.ce, e.scalar(p + "ce_sae"), 2e-5, p + "CE spliced");
  expect_relative(s.zero_ablated.ce, e.scalar(p + "ce_zero"), 2e-5, p + "CE zero");
  expect_relative(s.mean_ablated.ce, e.scalar(p + "ce_mean"), 2e-5, p + "CE mean");
  expect_relative(s.spliced.kl, e.scalar(p + "kl_sae"), 1e-4, p + "KL spliced");
  expect_relative(s.zero_ablated.kl, e.scalar(p + "kl_zero"), 1e-4, p + "KL zero");
  expect_relative(s.mean_ablated.kl, e.scalar(p + "kl_mean"), 1e-4, p + "KL mean");
  expect_relative(s.ce_score, e.scalar(p + "ce_score"), 2e-3, p + "CE score");
  expect_relative(s.kl_score, e.scalar(p + "kl_score"), 1e-4, p + "KL score");
}

void expect_statistics(const CrosscoderEvalResult& r, const test::Fixture& e, const std::string& p) {
  EXPECT_EQ(r.stories, 6);
  EXPECT_EQ(r.pieces, 7);
  EXPECT_EQ(r.tokens, e.integer(p + "tokens"));
  EXPECT_EQ(r.predictions, e.integer(p + "predictions"));
  const std::vector<double> fvu = e.values(p + "fvu");
  ASSERT_EQ(r.fvu.size(), fvu.size());
  for (size_t k = 0; k < fvu.size(); ++k) expect_relative(r.fvu[k], fvu[k], 1e-5, cat(p, "FVU of source ", k));
  expect_relative(r.fvu_all, e.scalar(p + "fvu_all"), 1e-5, p + "FVU over all sources");
  expect_relative(r.l0, e.scalar(p + "l0"), 1e-12, p + "L0");
  EXPECT_EQ(r.density, e.values(p + "density"));
  EXPECT_EQ(r.dead, 4);  // the planted latents with b_enc -100
  const std::vector<double> mean = e.values(p + "mean");
  ASSERT_EQ(r.mean_activation.size(), fvu.size());
  for (size_t k = 0; k < r.mean_activation.size(); ++k) {
    ASSERT_EQ(r.mean_activation[k].size(), 32u);
    for (size_t j = 0; j < 32; ++j) EXPECT_NEAR(r.mean_activation[k][j], mean[k * 32 + j], 1e-5) << p << k << " " << j;
  }
}

}  // namespace

TEST(SaeEvalCrosscoder, SplicedAtEachOfItsHooksMatchesThePyTorchSplice) {
  Loaded lm;
  const test::Fixture e(xc_ref("expected.safetensors"));
  const SaeAtLayer xc = load_sae_at_layer(xc_ref("xc"), lm.model.config(), HookChoice{}, Device::CPU);
  ASSERT_TRUE(xc.crosscoder());
  ASSERT_EQ(xc.sources.size(), 2u);
  EXPECT_EQ(hook_name(xc.sources[0].site), "blocks.0.hook_resid_post");
  EXPECT_EQ(hook_name(xc.sources[1].site), "blocks.2.hook_resid_post");
  EXPECT_EQ(xc.sources[1].scale, 0.7);
  EXPECT_FALSE(xc.reads_model_b());
  const CrosscoderEvalResult r = evaluate_crosscoder(lm.model, nullptr, lm.tokenizer, xc, fixture_options());
  ASSERT_EQ(r.models.size(), 1u);
  expect_scores(r.models[0], e, "xc.a.");
  expect_statistics(r, e, "xc.");
  sae::testing::expect_reconstruction_metrics(r.reconstruction, test::Fixture(xc_ref("expected_metrics.safetensors")),
                                              "xc.");
  // eval.json: the model's scores where an SAE's are, each source's FVU and mean.
  const Json j = crosscoder_eval_json(r, xc, "m", "", fixture_options());
  EXPECT_EQ(j.at("ce_loss").at("sae").as_number(), r.models[0].spliced.ce);
  EXPECT_EQ(j.at("sources").size(), 2u);
  EXPECT_EQ(j.at("sources").at(1).at("fvu").as_number(), r.fvu[1]);
  EXPECT_FALSE(j.has("model_b_scores"));
  EXPECT_EQ(j.at("cossim").as_number(), r.reconstruction.cossim);
  const std::string report = crosscoder_eval_report(r, xc);
  EXPECT_NE(report.find("| crosscoder spliced |"), std::string::npos) << report;
  EXPECT_NE(report.find("FVU of blocks.2.hook_resid_post"), std::string::npos) << report;
  EXPECT_NE(report.find("| relative reconstruction bias "), std::string::npos) << report;
}

TEST(SaeEvalCrosscoder, ModelDiffingSplicesEachModelWithItsOwnSources) {
  Loaded lm;
  const test::Fixture e(xc_ref("expected.safetensors"));
  const SaeAtLayer diff =
      load_sae_at_layer(xc_ref("diff"), lm.model.config(), HookChoice{}, Device::CPU, &lm.model_b.config());
  ASSERT_EQ(diff.sources.size(), 2u);
  EXPECT_EQ(diff.sources[1].model, 1);
  EXPECT_TRUE(diff.reads_model_b());
  EXPECT_EQ(diff.params.kind, "topk");
  const CrosscoderEvalResult r = evaluate_crosscoder(lm.model, &lm.model_b, lm.tokenizer, diff, fixture_options());
  ASSERT_EQ(r.models.size(), 2u);
  expect_scores(r.models[0], e, "diff.a.");
  expect_scores(r.models[1], e, "diff.b.");
  expect_statistics(r, e, "diff.");
  sae::testing::expect_reconstruction_metrics(r.reconstruction, test::Fixture(xc_ref("expected_metrics.safetensors")),
                                              "diff.");
  EXPECT_DOUBLE_EQ(r.l0, 6.0);  // TopK k 6, every selected latent positive here
  const Json j = crosscoder_eval_json(r, diff, "m", "mb", fixture_options());
  EXPECT_EQ(j.at("model_b").as_string(), "mb");
  EXPECT_EQ(j.at("model_b_scores").at("ce_loss").at("sae").as_number(), r.models[1].spliced.ce);
  EXPECT_EQ(j.at("sources").at(1).at("model").as_string(), "model_b");
}

TEST(SaeEvalCrosscoder, ACrosscoderThatReconstructsExactlyScoresOne) {
  // Planted truth: over blocks.1.hook_resid_post and blocks.3.hook_resid_pre (x = [x_1 | x_2], 64
  // wide), W_enc = [I, -I], W_dec = [I; -I], no biases: x_hat = relu(x) - relu(-x) = x for both.
  TempDir dir("eval_crosscoder_identity");
  const int64_t d = 64, f = 128;
  std::vector<double> w_enc(d * f, 0.0), w_dec(f * d, 0.0);
  for (int64_t j = 0; j < d; ++j) {
    w_enc[j * f + j] = 1, w_enc[j * f + d + j] = -1;
    w_dec[j * d + j] = 1, w_dec[(d + j) * d + j] = -1;
  }
  SaeParams params = SaeParams::from_tensors(Tensor::from_vector(w_enc, Shape{d, f}), Tensor::zeros(Shape{f}),
                                             Tensor::from_vector(w_dec, Shape{f, d}), Tensor::zeros(Shape{d}));
  params.sources = 2;
  Json extra = Json::object();
  extra["normalization"] = "dataset";
  extra["dataset_scale"] = Json::array();
  extra["dataset_scale"].push_back(Json(0.5));
  extra["dataset_scale"].push_back(Json(2.0));
  extra["data"] = Json::object();
  extra["data"]["saelens_metadata"] = Json::object();
  Json hooks = Json::array();
  hooks.push_back(Json("blocks.1.hook_resid_post"));
  hooks.push_back(Json("blocks.3.hook_resid_pre"));
  extra["data"]["saelens_metadata"]["crosscoder_hooks"] = hooks;
  save_checkpoint(dir.str("identity"), params, extra, nullptr);
  Loaded lm;
  const SaeAtLayer xc = load_sae_at_layer(dir.str("identity"), lm.model.config(), HookChoice{}, Device::CPU);
  const CrosscoderEvalResult r = evaluate_crosscoder(lm.model, nullptr, lm.tokenizer, xc, fixture_options());
  const SpliceScores& s = r.models.at(0);
  EXPECT_NEAR(s.spliced.ce, s.clean.ce, 1e-5 * s.clean.ce);
  EXPECT_LT(s.spliced.kl, 1e-6);
  EXPECT_NEAR(s.ce_score, 1.0, 1e-4);
  EXPECT_NEAR(s.kl_score, 1.0, 1e-5);
  for (double v : r.fvu) EXPECT_LT(v, 1e-10);
  EXPECT_LT(r.fvu_all, 1e-10);
  EXPECT_NEAR(r.reconstruction.cossim, 1.0, 1e-6);
  EXPECT_NEAR(r.reconstruction.l2_ratio, 1.0, 1e-6);
  EXPECT_NEAR(r.reconstruction.relative_reconstruction_bias, 1.0, 1e-6);
  EXPECT_GT(s.zero_ablated.kl, 0.1);  // ablating both hooks does change the model
  EXPECT_GT(s.mean_ablated.kl, 0.01);
  EXPECT_DOUBLE_EQ(r.l0, static_cast<double>(d));
}

TEST(SaeEvalCrosscoder, RefusesWhatDoesNotFitWithOneLine) {
  const DecoderConfig config = read_model_config(eval_ref("model")).config;
  const DecoderConfig config_b = read_model_config(xc_ref("model_b")).config;
  // Its hooks are its folder's.
  std::string message = error_of([&] {
    load_sae_at_layer(xc_ref("xc"), config, hook_choice("blocks.1.hook_resid_post", -1, false), Device::CPU);
  });
  EXPECT_NE(message.find("a crosscoder's hooks are those its cfg.json names"), std::string::npos) << message;
  // A crosscoder over two models needs the second; a crosscoder of one model or an SAE refuses it.
  message = error_of([&] { load_sae_at_layer(xc_ref("diff"), config, HookChoice{}, Device::CPU); });
  EXPECT_NE(message.find("give --model-b"), std::string::npos) << message;
  EXPECT_THROW(load_sae_at_layer(xc_ref("diff"), config, HookChoice{}, Device::CPU), UsageError);
  message = error_of([&] { load_sae_at_layer(xc_ref("xc"), config, HookChoice{}, Device::CPU, &config_b); });
  EXPECT_NE(message.find("reads hooks of one model only"), std::string::npos) << message;
  message = error_of([&] { load_sae_at_layer(eval_ref("sae_story"), config, HookChoice{}, Device::CPU, &config_b); });
  EXPECT_NE(message.find("is not a crosscoder"), std::string::npos) << message;
  // Bad folders: no hooks, the wrong count, per-story normalisation, a scale per source missing, a
  // hook read twice, a second model's hook first. Each a data error naming the folder.
  TempDir dir("eval_crosscoder_refuse");
  const auto edited = [&](const std::string& name, auto edit) {
    const std::string out = dir.str(name);
    fs::create_directories(out);
    fs::copy_file(xc_ref("xc/sae_weights.safetensors"), out + "/sae_weights.safetensors");
    Json cfg = read_json_file(xc_ref("xc/cfg.json"));
    edit(cfg);
    std::ofstream(out + "/cfg.json") << cfg.dump(2);
    return out;
  };
  const struct {
    const char* name;
    std::function<void(Json&)> edit;
    const char* says;
  } cases[] = {
      {"no_hooks", [](Json& c) { c["metadata"] = Json::object(); }, "without metadata.crosscoder_hooks"},
      {"count", [](Json& c) { c["metadata"]["crosscoder_hooks"].push_back(Json("blocks.3.hook_resid_post")); },
       "names 3 hooks for 2 sources"},
      {"story", [](Json& c) { c["sae_cpp"]["normalization"] = "story"; }, "normalised per story"},
      {"scales", [](Json& c) { c["sae_cpp"]["dataset_scale"] = 1.5; }, "holds 1 scales for 2 sources"},
      {"twice", [](Json& c) { c["metadata"]["crosscoder_hooks"] = Json::parse("[\"blocks.0.hook_resid_post\", \"blocks.0.hook_resid_post\"]"); },
       "twice"},
      {"b_first", [](Json& c) { c["metadata"]["crosscoder_hooks"] = Json::parse("[\"model_b:blocks.0.hook_resid_post\", \"blocks.0.hook_resid_post\"]"); },
       "must start with a hook of the model"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string folder = edited(c.name, c.edit);
    message = error_of([&] { load_sae_at_layer(folder, config, HookChoice{}, Device::CPU, &config_b); });
    EXPECT_NE(message.find(folder), std::string::npos) << message;
    EXPECT_NE(message.find(c.says), std::string::npos) << message;
    EXPECT_THROW(load_sae_at_layer(folder, config, HookChoice{}, Device::CPU, &config_b), DataError);
  }
  // A model whose hooks are wider than the crosscoder's sources.
  DecoderConfig wider = config;
  wider.hidden_size = 64;
  message = error_of([&] { load_sae_at_layer(xc_ref("xc"), wider, HookChoice{}, Device::CPU); });
  EXPECT_NE(message.find("sources are 32 wide (d_in 64 / 2) but blocks.0.hook_resid_post"), std::string::npos) << message;
  // evaluate_sae is not for a crosscoder, reconstruct neither.
  const SaeAtLayer xc = load_sae_at_layer(xc_ref("xc"), config, HookChoice{}, Device::CPU);
  EXPECT_THROW(reconstruct(xc, Tensor::zeros(Shape{2, 64})), Error);
  // Steering along a crosscoder's decoder rows is not done: one line.
  message = error_of([&] { decoder_direction(xc, 1); });
  EXPECT_NE(message.find("is a crosscoder"), std::string::npos) << message;
  EXPECT_TRUE(is_crosscoder_folder(xc_ref("xc")));
  EXPECT_FALSE(is_crosscoder_folder(eval_ref("sae_story")));
  EXPECT_FALSE(is_crosscoder_folder(xc_ref("no_such_folder")));
}

TEST(SaeEvalCrosscoder, ItsSourcesAreReconstructedABlockOfRowsAtATime) {
  // reconstruct_sources 3 rows at a time: the features come in blocks at rows 0, 3 and 6, and they
  // and each source's reconstruction are those of the 7 rows in one block.
  const DecoderConfig config = read_model_config(eval_ref("model")).config;
  const SaeAtLayer xc = load_sae_at_layer(xc_ref("xc"), config, HookChoice{}, Device::CPU);
  Rng rng(5);
  const std::vector<Tensor> x = {normal_tensor(Shape{7, 32}, 0.2, 1.1, rng), normal_tensor(Shape{7, 32}, -0.3, 0.9, rng)};
  Tensor whole;
  const std::vector<Tensor> at_once = reconstruct_sources(xc, x, [&](int64_t first, const Tensor& f) {
    EXPECT_EQ(first, 0);
    whole = f;
  }, 7);
  Tensor blocked = Tensor::empty(whole.shape());
  std::vector<int64_t> firsts;
  const std::vector<Tensor> in_blocks = reconstruct_sources(xc, x, [&](int64_t first, const Tensor& f) {
    firsts.push_back(first);
    Tensor rows = blocked.slice_rows(first, first + f.size(0));
    copy_(rows, f);
  }, 3);
  EXPECT_EQ(firsts, (std::vector<int64_t>{0, 3, 6}));
  EXPECT_GT(sae::testing::max_abs(whole), 0.0);
  sae::testing::expect_close_to_scale(blocked, whole, 1e-6, "features");
  ASSERT_EQ(in_blocks.size(), 2u);
  for (size_t k = 0; k < 2; ++k) sae::testing::expect_close_to_scale(in_blocks[k], at_once[k], 1e-6, "source");
}

TEST(SaeEvalCrosscoderCuda, BothFixturesMatchTheCpu) {
  SKIP_WITHOUT_GPU();
  Loaded lm;
  DecoderModel gpu = load_decoder_model(eval_ref("model"), Device::CUDA);
  DecoderModel gpu_b = load_decoder_model(xc_ref("model_b"), Device::CUDA);
  for (const bool two_models : {false, true}) {
    const std::string folder = xc_ref(two_models ? "diff" : "xc");
    SCOPED_TRACE(folder);
    const SaeAtLayer cpu_xc = load_sae_at_layer(folder, lm.model.config(), HookChoice{}, Device::CPU,
                                                two_models ? &lm.model_b.config() : nullptr);
    const SaeAtLayer gpu_xc = load_sae_at_layer(folder, gpu.config(), HookChoice{}, Device::CUDA,
                                                two_models ? &gpu_b.config() : nullptr);
    const CrosscoderEvalResult want =
        evaluate_crosscoder(lm.model, two_models ? &lm.model_b : nullptr, lm.tokenizer, cpu_xc, fixture_options());
    const CrosscoderEvalResult got =
        evaluate_crosscoder(gpu, two_models ? &gpu_b : nullptr, lm.tokenizer, gpu_xc, fixture_options());
    ASSERT_EQ(got.models.size(), want.models.size());
    for (size_t m = 0; m < want.models.size(); ++m) {
      const SpliceScores &g = got.models[m], &w = want.models[m];
      for (const auto& [a, b] : {std::pair{g.clean, w.clean}, std::pair{g.spliced, w.spliced},
                                 std::pair{g.zero_ablated, w.zero_ablated}, std::pair{g.mean_ablated, w.mean_ablated}}) {
        expect_relative(a.ce, b.ce, 1e-5, "CE");
        if (b.kl > 0) expect_relative(a.kl, b.kl, 1e-4, "KL");
      }
    }
    for (size_t k = 0; k < want.fvu.size(); ++k) expect_relative(got.fvu[k], want.fvu[k], 1e-5, "FVU");
    expect_relative(got.reconstruction.cossim, want.reconstruction.cossim, 1e-5, "cossim");
    expect_relative(got.reconstruction.relative_reconstruction_bias, want.reconstruction.relative_reconstruction_bias,
                    1e-5, "relative_reconstruction_bias");
    EXPECT_EQ(got.density, want.density);
  }
}
