// Per-token normalisation (SAELens's normalize_activations layer_norm and constant_norm_rescale,
// OpenAI's LN) and OpenAI's sparse_autoencoder .pt, read as their tools compute them
// (tests/ref/per_token, written by scripts/gen_per_token_fixture.py: SAELens's own classes, and
// OpenAI's model.py written out with torch): sae_apply and the splice into the model (reconstruct)
// give their features and reconstructions; the normalisation's numbers against hand-computed ones;
// training with --normalize layer_norm normalises as SAELens does (its first step's FVU from
// SAELens's reconstruction) and writes a folder that says so; what is not read (another activation,
// a k past the latents, a tensor not of the class, --init at another normalisation, training a
// transcoder per token, several column blocks) is a one-line error. SAELens's Transcoder and
// SkipTranscoder normalise their input per token and leave their output as decoded: read as it
// computes them.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "io/csv.h"
#include "io/json.h"
#include "lm/model_loader.h"
#include "sae/data/batches.h"
#include "sae/eval/sae_at_layer.h"
#include "tests/util/compare.h"
#include "tests/util/errors.h"
#include "tests/util/fixture.h"
#include "tests/util/foreign_sae.h"
#include "tests/util/test_util.h"

using namespace sae;
using namespace sae::testing;

namespace {

std::string per_token_ref(const std::string& name) { return std::string(SAE_SOURCE_DIR) + "/tests/ref/per_token/" + name; }
std::string eval_ref(const std::string& name) { return std::string(SAE_SOURCE_DIR) + "/tests/ref/eval/" + name; }

}  // namespace

TEST(PerToken, SaeApplyGivesSaelensAndOpenAisOutputs) {
  const test::Fixture expected(per_token_ref("expected.safetensors"));
  for (const std::string name : {"saelens_layer_norm", "saelens_norm_rescale", "openai_topk", "openai_relu", "openai_tied",
                                 "saelens_transcoder_layer_norm", "saelens_skip_transcoder_norm_rescale"}) {
    SCOPED_TRACE(name);
    TempDir dir("per_token_apply");
    const std::string given = per_token_ref(name.rfind("openai", 0) == 0 ? name + ".pt" : name);
    const auto [f, out] = sae_apply_outputs(given, per_token_ref("x.npy"), dir);
    const Tensor want_f = expected.tensor(name + "_f", DType::F32);
    expect_same_outputs(f, want_f, "features");
    expect_same_outputs(out, expected.tensor(name + "_x_hat", DType::F32), "reconstruction");
    for (int64_t i = 0; i < f.numel(); ++i)  // the same latents fire
      ASSERT_EQ(f.data<float>()[i] > 0, want_f.data<float>()[i] > 0) << i;
    // --raw: no normalisation, so a per-token SAE's outputs change (the test above is not vacuous).
    if (name == "saelens_layer_norm" || name == "openai_topk" || name == "saelens_skip_transcoder_norm_rescale") {
      const CommandResult raw = run_binary(
          "sae_apply", cat("--sae ", given, " --input ", per_token_ref("x.npy"), " --reconstruction-out ", dir.str("raw.npy"), " --raw"),
          dir);
      ASSERT_EQ(raw.exit_code, 0) << raw.err;
      EXPECT_GT(max_abs_diff(NpyFile::open(dir.str("raw.npy")).read_f32(), out), 0.1);
    }
  }
}

TEST(PerToken, TheSpliceBringsEachTokenBack) {
  // reconstruct(), what sae_eval, sae_steer and sae_features' text runs splice, on the fixture's x.
  const test::Fixture expected(per_token_ref("expected.safetensors"));
  const DecoderConfig model = read_model_config(eval_ref("model")).config;
  const Tensor x = NpyFile::open(per_token_ref("x.npy")).read_f32();
  const struct {
    std::string name, given;
    HookChoice choice;
    Normalization kind;
  } cases[] = {
      {"saelens_layer_norm", per_token_ref("saelens_layer_norm"), HookChoice{}, Normalization::LayerNorm},
      {"saelens_norm_rescale", per_token_ref("saelens_norm_rescale"), hook_choice("blocks.0.hook_resid_post", 0, false),
       Normalization::NormRescale},
      {"openai_topk", per_token_ref("openai_topk.pt"), hook_choice("blocks.1.hook_resid_mid", 0, false), Normalization::LayerNorm},
      // SAELens's transcoders: the input normalised per token, the output as decoded (the skip on the raw input).
      {"saelens_transcoder_layer_norm", per_token_ref("saelens_transcoder_layer_norm"), HookChoice{}, Normalization::LayerNorm},
      {"saelens_skip_transcoder_norm_rescale", per_token_ref("saelens_skip_transcoder_norm_rescale"), HookChoice{},
       Normalization::NormRescale},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const SaeAtLayer sae = load_sae_at_layer(c.given, model, c.choice, Device::CPU);
    EXPECT_EQ(sae.normalization, c.kind);
    Tensor f = Tensor::empty(Shape{x.size(0), sae.params.d_sae()});
    const Tensor x_hat = reconstruct(sae, x, [&](int64_t first, const Tensor& block) {
      Tensor rows = f.slice_rows(first, first + block.size(0));
      copy_(rows, block);
    });
    expect_same_outputs(x_hat, expected.tensor(c.name + "_x_hat", DType::F32), "reconstruction");
    expect_same_outputs(f, expected.tensor(c.name + "_f", DType::F32), "features");
  }
  // The OpenAI file names no hook point: --hook or --layer says.
  EXPECT_NE(error_of([&] { load_sae_at_layer(per_token_ref("openai_topk.pt"), model, HookChoice{}, Device::CPU); }).find("--hook"),
            std::string::npos);
}

TEST(PerToken, NormalisesEachRowWithItsOwnNumbers) {
  // Two tokens of d 4: layer_norm's mean and unbiased sigma, constant_norm_rescale's norm, by hand.
  const float raw[8] = {1, 2, 3, 6, -2, 0, 0, 2};
  float normalized[8], back[8];
  const auto row = [](int64_t r) { return r; };
  BatchStats ln = normalize_batch(raw, normalized, 2, 4, Normalization::LayerNorm, 1.0, row, "x");
  const double mu0 = 3.0, sigma0 = std::sqrt((4.0 + 1.0 + 0.0 + 9.0) / 3.0);
  const double mu1 = 0.0, sigma1 = std::sqrt((4.0 + 0.0 + 0.0 + 4.0) / 3.0);
  for (int c = 0; c < 4; ++c) {
    EXPECT_NEAR(normalized[c], (raw[c] - mu0) / (sigma0 + 1e-5), 1e-6);
    EXPECT_NEAR(normalized[4 + c], (raw[4 + c] - mu1) / (sigma1 + 1e-5), 1e-6);
  }
  // Back: x_n * sigma + mu, as SAELens and OpenAI do (not quite the inverse: sigma + 1e-5 went in).
  denormalize_blocks(normalized, back, 2, {4}, Normalization::LayerNorm, DatasetScales(), ln);
  for (int c = 0; c < 4; ++c) {
    EXPECT_NEAR(back[c], (raw[c] - mu0) / (sigma0 + 1e-5) * sigma0 + mu0, 1e-6);
    EXPECT_NEAR(back[4 + c], (raw[4 + c] - mu1) / (sigma1 + 1e-5) * sigma1 + mu1, 1e-6);
  }
  BatchStats nr = normalize_batch(raw, normalized, 2, 4, Normalization::NormRescale, 1.0, row, "x");
  const double norm0 = std::sqrt(1.0 + 4 + 9 + 36), norm1 = std::sqrt(8.0);
  for (int c = 0; c < 4; ++c) {
    EXPECT_NEAR(normalized[c], raw[c] * 2.0 / norm0, 1e-6);
    EXPECT_NEAR(normalized[4 + c], raw[4 + c] * 2.0 / norm1, 1e-6);
  }
  denormalize_blocks(normalized, back, 2, {4}, Normalization::NormRescale, DatasetScales(), nr);
  for (int c = 0; c < 8; ++c) EXPECT_NEAR(back[c], raw[c], 1e-6);
  // A token of one equal value: sigma 0, so x_n = 0 (the 1e-5 keeps it finite).
  const float flat[4] = {5, 5, 5, 5};
  normalize_batch(flat, normalized, 1, 4, Normalization::LayerNorm, 1.0, row, "x");
  for (int c = 0; c < 4; ++c) EXPECT_EQ(normalized[c], 0.0f);

  // Refused: a token of zeros to rescale, layer_norm of d 1, a row of several blocks.
  const float zeros[4] = {1, 1, 0, 0};
  EXPECT_NE(error_of([&] { normalize_batch(zeros, normalized, 2, 2, Normalization::NormRescale, 1.0, row, "src"); })
                .find("src: the activations of token 1 are all zero"),
            std::string::npos);
  EXPECT_NE(error_of([&] { normalize_batch(raw, normalized, 8, 1, Normalization::LayerNorm, 1.0, row, "src"); })
                .find("needs d >= 2"),
            std::string::npos);
  // Several blocks (SAEs trained side by side, --hook-list): each block per token on its own.
  float blocks[8];
  normalize_blocks(raw, blocks, 2, {2, 2}, Normalization::NormRescale, DatasetScales({1.0, 1.0}), row, "src");
  for (int r = 0; r < 2; ++r)
    for (int b = 0; b < 2; ++b) {
      const float* x = raw + r * 4 + b * 2;
      const double norm = std::sqrt(double(x[0]) * x[0] + double(x[1]) * x[1]);
      for (int c = 0; c < 2; ++c) EXPECT_NEAR(blocks[r * 4 + b * 2 + c], x[c] * std::sqrt(2.0) / norm, 1e-6);
    }
  // --normalize takes SAELens's names.
  EXPECT_EQ(parse_normalization("layer_norm"), Normalization::LayerNorm);
  EXPECT_EQ(parse_normalization("constant_norm_rescale"), Normalization::NormRescale);
}

TEST(PerToken, WhatIsNotReadIsOneLine) {
  TempDir dir("per_token_refusals");
  const auto apply = [&](const std::string& file) {
    return cat("--sae ", per_token_ref(file), " --input ", per_token_ref("x.npy"), " --features-out ", dir.str("f.npy"));
  };
  const auto init = [&](const std::string& sae, const std::string& out) {
    return cat("--init ", per_token_ref(sae), " --data synthetic --synthetic-d 32 --steps 1 --out ", dir.str(out));
  };
  const struct {
    std::string program, args, needle;
    int code;
  } cases[] = {
      {"sae_apply", apply("openai_bad_identity.pt"), "activation \"Identity\" is not read", 1},
      {"sae_apply", apply("openai_bad_postact.pt"), "TopK's postact_fn \"Identity\" is not read", 1},
      {"sae_apply", apply("openai_bad_k.pt"), "activation_state_dict.k must be a whole number in 1..8, got 9", 1},
      {"sae_apply", apply("openai_bad_extra.pt"), "tensor 'extra' is not one of OpenAI's Autoencoder", 1},
      {"sae_apply", apply("openai_bad_nan.pt"), "encoder.weight holds nan at element 14", 1},  // [3, 2] of [8, 4]
      {"sae_apply", apply("openai_bad_tied.pt"), "decoder.linear.weight (a tied decoder) differs from encoder.weight", 1},
      // The file names no hook point: no program falls back to a default one.
      {"sae_features", cat("--sae ", per_token_ref("openai_relu.pt"), " --model ", eval_ref("model"), " --text ",
                           eval_ref("stories.txt"), " --out ", dir.str("features.json")),
       "give --hook", 2},
      // A per-token SAE's weights read inputs its own normalisation gives; a transcoder has none.
      {"sae_train", init("saelens_layer_norm", "run"), "normalises each token (normalize_activations \"layer_norm\")", 2},
      {"sae_train", init("openai_topk.pt", "run2"), "give --normalize layer_norm", 2},
      {"sae_train", cat("--init ", per_token_ref("saelens_transcoder_layer_norm"), " --data ", per_token_ref("x.npy"),
                        " --target-data ", per_token_ref("x.npy"), " --normalize dataset --batch 8 --steps 1 --out ",
                        dir.str("run4")),
       "is a transcoder that normalises each token of its input (normalize_activations \"layer_norm\"): training one so "
       "is not supported", 2},
      {"sae_train", cat("--data ", per_token_ref("x.npy"), " --target-data ", std::string(SAE_SOURCE_DIR), "/tests/ref/dictionary_learning/x.npy",
                        " --normalize layer_norm --batch 8 --steps 1 --out ", dir.str("run3")),
       "normalises each token of an SAE's input; a transcoder takes", 2},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.args);
    const CommandResult r = run_binary(c.program, c.args, dir);
    EXPECT_EQ(r.exit_code, c.code) << r.err;
    EXPECT_EQ(count_lines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << r.err;
  }
}

TEST(PerToken, SaeEvalSplicesALayerNormSae) {
  // End to end on the tiny GPT-Neo: the program runs the splice (reconstruct(), checked above
  // against SAELens) and its report names the normalisation.
  TempDir dir("per_token_eval");
  const CommandResult r = run_binary(
      "sae_eval", cat("--model ", eval_ref("model"), " --sae ", per_token_ref("saelens_layer_norm"), " --text ",
                      eval_ref("stories.txt"), " --out ", dir.str("out"), " --progress none --device cpu"),
      dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("inputs normalised: layer_norm"), std::string::npos) << r.out;
  // A SAELens SkipTranscoder normalised per token, spliced at blocks.1.hook_mlp_out.
  const CommandResult tc = run_binary(
      "sae_eval", cat("--model ", eval_ref("model"), " --sae ", per_token_ref("saelens_skip_transcoder_norm_rescale"),
                      " --text ", eval_ref("stories.txt"), " --out ", dir.str("tc"), " --progress none --device cpu"),
      dir);
  ASSERT_EQ(tc.exit_code, 0) << tc.err;
  EXPECT_NE(tc.out.find("constant_norm_rescale"), std::string::npos) << tc.out;
}

TEST(PerToken, TrainingNormalisesEachTokenAsSaelensDoes) {
  // A run from the SAELens layer_norm SAE (--init, --normalize layer_norm) on the fixture's 40 tokens
  // in one batch: its first step's FVU, in the normalised space, is that of SAELens's own
  // reconstruction brought into it, x_n = (x - mu) / (sigma + 1e-5), x_hat_n = (x_hat - mu) / sigma.
  TempDir dir("per_token_train");
  const std::string run = dir.str("run");
  const CommandResult r = run_binary(
      "sae_train", cat("--init ", per_token_ref("saelens_layer_norm"), " --normalize layer_norm --data ",
                       per_token_ref("x.npy"), " --batch 40 --steps 2 --log-every 1 --progress none --device cpu --out ", run),
      dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const test::Fixture expected(per_token_ref("expected.safetensors"));
  const Tensor x = NpyFile::open(per_token_ref("x.npy")).read_f32();
  const Tensor x_hat = expected.tensor("saelens_layer_norm_x_hat", DType::F32);
  const int64_t n = x.size(0), d = x.size(1);
  std::vector<double> xn(n * d), rn(n * d), column_mean(d, 0.0);
  for (int64_t t = 0; t < n; ++t) {
    double mu = 0, sq = 0;
    for (int64_t c = 0; c < d; ++c) mu += x.data<float>()[t * d + c];
    mu /= double(d);
    for (int64_t c = 0; c < d; ++c) sq += std::pow(x.data<float>()[t * d + c] - mu, 2);
    const double sigma = std::sqrt(sq / double(d - 1));
    for (int64_t c = 0; c < d; ++c) {
      xn[t * d + c] = (x.data<float>()[t * d + c] - mu) / (sigma + 1e-5);
      rn[t * d + c] = (x_hat.data<float>()[t * d + c] - mu) / sigma;
      column_mean[c] += xn[t * d + c] / double(n);
    }
  }
  double err = 0, var = 0;
  for (int64_t i = 0; i < n * d; ++i) {
    err += std::pow(xn[i] - rn[i], 2);
    var += std::pow(xn[i] - column_mean[i % d], 2);
  }
  const CsvNumbers metrics = read_csv_numbers(run + "/metrics.csv");
  ASSERT_EQ(metrics.rows.size(), 2u);
  EXPECT_NEAR(metrics.column("fvu")[0], err / var, 1e-5 * err / var);
  EXPECT_NEAR(metrics.column("normalized_mean")[0], 0.0, 1e-6);  // every token centred
  // The folder says so, for SAELens and for our programs.
  const Json cfg = read_json_file(run + "/sae/cfg.json");
  EXPECT_EQ(cfg.at("normalize_activations"), Json("layer_norm"));
  EXPECT_EQ(cfg.at("sae_cpp").at("normalization"), Json("layer_norm"));
  const CommandResult apply = run_binary(
      "sae_apply", cat("--sae ", run, "/sae --input ", per_token_ref("x.npy"), " --features-out ", dir.str("f.npy")), dir);
  ASSERT_EQ(apply.exit_code, 0) << apply.err;
  EXPECT_NE(apply.out.find("inputs normalised: layer_norm"), std::string::npos) << apply.out;
}

TEST(PerToken, SaesTrainedSideBySideEachNormaliseTheirOwnHook) {
  // --hook-list from one pass of the model: each SAE what --hook alone writes, byte for byte.
  TempDir dir("per_token_hook_list");
  const std::string text = cat(" --model ", eval_ref("model"), " --text ", eval_ref("stories.txt"),
                               " --features 16 --steps 3 --batch 40 --normalize layer_norm --l1 0.5 --progress none --long-stories split",
                               " --device cpu");
  CommandResult r = run_binary(
      "sae_train", text + " --hook-list blocks.0.hook_resid_post,blocks.1.hook_mlp_out --out " + dir.str("list"), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_binary("sae_train", text + " --hook blocks.1.hook_mlp_out --out " + dir.str("alone"), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_file(dir.str("alone/sae/sae_weights.safetensors")),
            read_file(dir.str("list/hook_blocks.1.hook_mlp_out/sae/sae_weights.safetensors")));
  EXPECT_EQ(read_json_file(dir.str("list/hook_blocks.0.hook_resid_post/sae/cfg.json")).at("normalize_activations"),
            Json("layer_norm"));
}
