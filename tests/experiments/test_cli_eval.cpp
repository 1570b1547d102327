// build/bin/sae_eval and build/bin/sae_steer end to end, run as child processes on the fixtures of
// scripts/gen_eval_fixture.py (tests/ref/eval): eval.json holds the PyTorch reference's numbers and
// the figure is drawn; sae_steer --json gives HF generate's greedy ids, steered and not, and its text
// output shows both; then the usage (exit 2) and data (exit 1) errors, each one line on stderr.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "io/json.h"
#include "io/safetensors.h"
#include "sae/train/checkpoint.h"
#include "tensor/ops.h"
#include "tensor/rng.h"
#include "tests/util/fixture.h"
#include "io/utf8.h"
#include "lm/model_loader.h"
#include "lm/tokenizer.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::count_lines;
using sae::testing::run_binary;
using sae::testing::TempDir;
namespace fs = std::filesystem;

namespace {

std::string eval_ref(const std::string& name) { return std::string(SAE_SOURCE_DIR) + "/tests/ref/eval/" + name; }

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string eval_args(const std::string& sae_folder, const std::string& out) {
  return cat("--model ", quote(eval_ref("model")), " --sae ", quote(sae_folder), " --text ",
             quote(eval_ref("stories.txt")), " --out ", quote(out), " --progress none --device cpu");
}

std::string steer_args(const std::string& extra) {
  return cat("--model ", quote(eval_ref("model")), " --sae ", quote(eval_ref("sae_story")), " --device cpu ", extra);
}

// Runs and expects exit `code` with one line on stderr containing `needle`.
void expect_failure(const std::string& program, const std::string& args, int code, const std::string& needle) {
  TempDir scratch("cli_eval_err");
  const sae::testing::CommandResult r = run_binary(program, args, scratch);
  EXPECT_EQ(r.exit_code, code) << program << " " << args << "\n" << r.err;
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "wanted '" << needle << "' in: " << r.err;
}

}  // namespace

TEST(SaeEvalCli, WritesTheReferenceNumbersAndTheFigure) {
  TempDir dir("cli_eval");
  const sae::testing::CommandResult r = run_binary("sae_eval", eval_args(eval_ref("sae_topk"), dir.str("out")), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json j = read_json_file(dir.str("out/eval.json"));
  const test::Fixture e(eval_ref("expected.safetensors"));
  EXPECT_EQ(j.at("layer").as_int(), 1);
  EXPECT_EQ(j.at("architecture").as_string(), "topk");
  EXPECT_EQ(j.at("tokens").as_int(), e.integer("topk.tokens"));
  EXPECT_NEAR(j.at("ce_loss").at("sae").as_number(), e.scalar("topk.ce_sae"), 2e-5 * e.scalar("topk.ce_sae"));
  EXPECT_NEAR(j.at("ce_loss_score").as_number(), e.scalar("topk.ce_score"), 1e-4 * e.scalar("topk.ce_score"));
  EXPECT_NEAR(j.at("kl_div_score").as_number(), e.scalar("topk.kl_score"), 1e-4 * e.scalar("topk.kl_score"));
  EXPECT_NEAR(j.at("fvu").as_number(), e.scalar("topk.fvu"), 1e-5);
  EXPECT_DOUBLE_EQ(j.at("l0").as_number(), 12.0);  // k
  const std::vector<double> density = e.values("topk.density");
  EXPECT_EQ(j.at("dead_features").as_int(), std::count(density.begin(), density.end(), 0.0));  // PyTorch's count
  EXPECT_TRUE(fs::file_size(dir.str("out/feature_density.png")) > 1000);
  EXPECT_TRUE(fs::exists(dir.str("out/feature_density.gp")));
  EXPECT_NE(r.out.find("| mean ablation |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("CE loss score"), std::string::npos) << r.out;
  // A SAELens folder needs --layer, and works with it.
  expect_failure("sae_eval", eval_args(eval_ref("sae_saelens"), dir.str("out2")), 2, "--layer");
  const sae::testing::CommandResult plain =
      run_binary("sae_eval", eval_args(eval_ref("sae_saelens"), dir.str("out3")) + " --layer 3", dir);
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_NEAR(read_json_file(dir.str("out3/eval.json")).at("ce_loss").at("sae").as_number(), e.scalar("saelens.ce_sae"),
              2e-5 * e.scalar("saelens.ce_sae"));
}

// Logits that agree in every run (every token embedding the same, no positions, the unembedding tied:
// the next-token distribution is uniform whatever the SAE does): every KL is 0 but for float32
// rounding, which had given a kl_div_score of 1.39 from KL means of 1.9e-9 and -4.9e-9. Now every
// score is null and no KL is below 0. Also: context_size is the windows' length (it said 0).
TEST(SaeEvalCli, ScoresOfRoundingNoiseAreNull) {
  TempDir dir("cli_eval_noise");
  fs::copy(eval_ref("model"), dir.str("model"), fs::copy_options::recursive);
  const SafetensorsFile weights = SafetensorsFile::open(eval_ref("model/model.safetensors"));
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& name : weights.names()) {
    Tensor t = weights.read_f32(name);
    if (name == "transformer.wpe.weight") t = Tensor::zeros(t.shape());
    if (name == "transformer.wte.weight")
      for (int64_t row = 0; row < t.size(0); ++row)
        std::copy_n(t.data<float>() + 5 * t.size(1), t.size(1), t.data<float>() + row * t.size(1));
    tensors.push_back({name, t});
  }
  fs::remove(dir.str("model/model.safetensors"));
  write_safetensors(dir.str("model/model.safetensors"), tensors);
  const auto r = run_binary("sae_eval", cat("--model ", quote(dir.str("model")), " --sae ", quote(eval_ref("sae_story")),
                                            " --text ", quote(eval_ref("stories.txt")), " --layer 0 --out ",
                                            quote(dir.str("out")), " --progress none --device cpu"),
                            dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json j = read_json_file(dir.str("out/eval.json"));
  for (const char* score : {"ce_loss_score", "kl_div_score", "ce_loss_score_mean_ablation", "kl_div_score_mean_ablation"})
    EXPECT_TRUE(j.at(score).is_null()) << score << " " << j.at(score).dump();
  for (const char* run : {"sae", "zero_ablation", "mean_ablation"}) {
    EXPECT_GE(j.at("kl_div").at(run).as_number(), 0.0) << run;
    EXPECT_LT(j.at("kl_div").at(run).as_number(), 1e-6) << run;
  }
  EXPECT_EQ(j.at("context_size").as_int(), read_json_file(eval_ref("model/config.json")).at("max_position_embeddings").as_int());
  // The floor is for CE and KL scores only: FVU and the reconstruction bias are ratios of squared
  // activations, whatever their scale. Embeddings 1e-5 times the fixture's, and a per-story SAE,
  // give the fixture's FVU (a first version of the floor made it null).
  std::vector<std::pair<std::string, Tensor>> small;
  for (const std::string& name : weights.names()) {
    Tensor t = weights.read_f32(name);
    if (name == "transformer.wpe.weight" || name == "transformer.wte.weight") t = mul_scalar(t, 1e-5);
    small.push_back({name, t});
  }
  fs::copy(eval_ref("model"), dir.str("small"), fs::copy_options::recursive);
  fs::remove(dir.str("small/model.safetensors"));
  write_safetensors(dir.str("small/model.safetensors"), small);
  Json fvu[2];
  for (int k = 0; k < 2; ++k) {
    const std::string model = k == 0 ? eval_ref("model") : dir.str("small");
    const auto run = run_binary("sae_eval", cat("--model ", quote(model), " --sae ", quote(eval_ref("sae_story")), " --text ",
                                                quote(eval_ref("stories.txt")), " --layer 0 --out ", quote(dir.str(cat("o", k))),
                                                " --progress none --device cpu"),
                                dir);
    ASSERT_EQ(run.exit_code, 0) << run.err;
    fvu[k] = read_json_file(dir.str(cat("o", k, "/eval.json")));
  }
  ASSERT_TRUE(fvu[1].at("fvu").is_number()) << fvu[1].at("fvu").dump();
  EXPECT_NEAR(fvu[1].at("fvu").as_number(), fvu[0].at("fvu").as_number(), 1e-3 * fvu[0].at("fvu").as_number());
  EXPECT_TRUE(fvu[1].at("relative_reconstruction_bias").is_number());
}

// No feature fires (b_enc far below 0): the numbers are written, no histogram is drawn (gnuplot had
// failed on an empty plot), and the figure of an earlier evaluation into the same folder, which had
// stayed beside the new eval.json as if it were its, is removed.
TEST(SaeEvalCli, AnSaeOfDeadFeaturesHasNoFigure) {
  TempDir dir("cli_eval_dead");
  ASSERT_EQ(run_binary("sae_eval", eval_args(eval_ref("sae_story"), dir.str("out")), dir).exit_code, 0);
  fs::copy(eval_ref("sae_story"), dir.str("dead"), fs::copy_options::recursive);
  const SafetensorsFile weights = SafetensorsFile::open(eval_ref("sae_story/sae_weights.safetensors"));
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& name : weights.names())
    tensors.push_back({name, name == "b_enc" ? Tensor::full(weights.read_f32(name).shape(), -1e4) : weights.read_f32(name)});
  fs::remove(dir.str("dead/sae_weights.safetensors"));
  write_safetensors(dir.str("dead/sae_weights.safetensors"), tensors);
  const auto r = run_binary("sae_eval", eval_args(dir.str("dead"), dir.str("out")), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json j = read_json_file(dir.str("out/eval.json"));
  EXPECT_EQ(j.at("dead_features").as_int(), j.at("d_sae").as_int());
  EXPECT_TRUE(j.at("figures").at("feature_density").is_null());
  EXPECT_FALSE(fs::exists(dir.str("out/feature_density.png")));
  EXPECT_NE(r.out.find("not drawn (no feature fired"), std::string::npos) << r.out;
}

TEST(SaeEvalCli, RefusesBadInputWithOneLine) {
  TempDir dir("cli_eval_bad");
  const std::string good_sae = eval_ref("sae_story");
  expect_failure("sae_eval", "--model " + quote(eval_ref("model")) + " --text x", 2, "--sae");
  expect_failure("sae_eval", eval_args(good_sae, dir.str("o")) + " --layer 7", 2, "outside 0..4");
  expect_failure("sae_eval", eval_args(good_sae, dir.str("o")) + " --max-stories -1", 2, "--max-stories");
  expect_failure("sae_eval", eval_args(good_sae, dir.str("o")) + " --dense-threshold 2", 2, "--dense-threshold");
  expect_failure("sae_eval", eval_args(dir.str("no_such_sae"), dir.str("o")), 1, "no_such_sae");
  std::ofstream(dir.str("a_file")) << "x";  // --out under a file: said before the evaluation runs
  expect_failure("sae_eval", eval_args(good_sae, dir.str("a_file/o")), 1, "cannot create the output directory");
  // An SAE of another width.
  Rng rng(1);
  const SaeParams narrow = SaeParams::standard_init(16, 24, rng);
  save_checkpoint(dir.str("narrow"), narrow, Json::object(), nullptr);
  expect_failure("sae_eval", eval_args(dir.str("narrow"), dir.str("o")) + " --layer 2", 1, "hidden size is 32");
  // Empty and missing text, missing model.
  std::ofstream(dir.str("empty.txt")) << "<|endoftext|>\n";
  std::string args = cat("--model ", quote(eval_ref("model")), " --sae ", quote(good_sae), " --out ", quote(dir.str("o")),
                         " --progress none --device cpu --text ");
  expect_failure("sae_eval", args + quote(dir.str("empty.txt")), 1, "no story");
  expect_failure("sae_eval", args + quote(dir.str("missing.txt")), 1, "missing.txt");
  expect_failure("sae_eval", cat("--model ", quote(dir.str("nomodel")), " --sae ", quote(good_sae), " --text ",
                                 quote(eval_ref("stories.txt")), " --device cpu"),
                 1, "nomodel");
  // The --out made before the work is gone again when the work fails (an empty o/ was left).
  EXPECT_FALSE(fs::exists(dir.str("o")));
  // A transcoder's encoder reads its input hook: sae_features encoded another hook's activations
  // (the same width) with exit 0, where sae_eval and sae_steer refuse.
  const std::string transcoder = std::string(SAE_SOURCE_DIR) + "/tests/ref/eval_transcoder/tc";
  for (const char* where : {" --hook blocks.1.hook_mlp_out", " --layer 1"})
    expect_failure("sae_features", cat("--model ", quote(eval_ref("model")), " --sae ", quote(transcoder), " --text ",
                                       quote(eval_ref("stories.txt")), " --device cpu --out ", quote(dir.str("f.json")),
                                       where),
                   2, "a transcoder's hooks are those its cfg.json names");
}

TEST(SaeEvalCli, SplicesACrosscoderOverTwoModelsWithModelB) {
  // scripts/gen_crosscoder_eval_fixture.py's diff/: the same hook of the model and of model_b/.
  TempDir dir("cli_eval_crosscoder");
  const std::string ref = std::string(SAE_SOURCE_DIR) + "/tests/ref/eval_crosscoder/";
  const std::string model_b = " --model-b " + quote(ref + "model_b");
  const sae::testing::CommandResult r = run_binary("sae_eval", eval_args(ref + "diff", dir.str("out")) + model_b, dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json j = read_json_file(dir.str("out/eval.json"));
  const test::Fixture e(ref + "expected.safetensors");
  EXPECT_TRUE(j.at("crosscoder").as_bool());
  EXPECT_NEAR(j.at("ce_loss").at("sae").as_number(), e.scalar("diff.a.ce_sae"), 2e-5 * e.scalar("diff.a.ce_sae"));
  EXPECT_NEAR(j.at("model_b_scores").at("ce_loss").at("sae").as_number(), e.scalar("diff.b.ce_sae"),
              2e-5 * e.scalar("diff.b.ce_sae"));
  EXPECT_NEAR(j.at("fvu").as_number(), e.scalar("diff.fvu_all"), 1e-5 * e.scalar("diff.fvu_all"));
  EXPECT_NE(r.out.find("--model-b, with its sources spliced:"), std::string::npos) << r.out;
  // Without --model-b; --model-b with a crosscoder of one model, with an SAE; --hook.
  expect_failure("sae_eval", eval_args(ref + "diff", dir.str("o")), 2, "give --model-b");
  expect_failure("sae_eval", eval_args(ref + "xc", dir.str("o")) + model_b, 2, "reads hooks of one model only");
  expect_failure("sae_eval", eval_args(eval_ref("sae_story"), dir.str("o")) + model_b, 2, "is not a crosscoder");
  expect_failure("sae_eval", eval_args(ref + "xc", dir.str("o")) + " --hook blocks.1.hook_resid_post", 2,
                 "a crosscoder's hooks are those its cfg.json names");
  // A second model whose tokenizer is not the model's.
  fs::create_directories(dir.str("other_b"));
  for (const char* file : {"config.json", "model.safetensors"}) fs::copy_file(ref + "model_b/" + file, dir.str("other_b/") + file);
  std::ofstream(dir.str("other_b/tokenizer.json"))
      << R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}, "added_tokens": []})";
  expect_failure("sae_eval", eval_args(ref + "diff", dir.str("o")) + " --model-b " + quote(dir.str("other_b")), 1,
                 "other_b");
  EXPECT_FALSE(fs::exists(dir.str("o/eval.json")));
}

// An instruct model's end of turn is in its generation_config.json (eos_token_id, one id or a list),
// where Hugging Face's generate stops too; a value that is not an id is one line naming the file.
TEST(SaeSteerCli, StopsAtTheModelFoldersEndOfTextIds) {
  const test::Fixture e(eval_ref("expected.safetensors"));
  TempDir dir("cli_steer_eos");
  fs::copy(eval_ref("model"), dir.str("model"), fs::copy_options::recursive);
  const std::vector<int64_t> steered = e.ints("gen1.steered");
  const int64_t stop = steered[5];
  std::ofstream(dir.str("model/generation_config.json")) << "{\"eos_token_id\": [4096, " << stop << "]}";
  const std::string args = cat("--model ", quote(dir.str("model")), " --sae ", quote(eval_ref("sae_story")),
                               " --device cpu --feature ", e.integer("steer.feature"), " --strength ",
                               e.scalar("steer.strength"), " --prompt 'The dog ran to the park and' --greedy"
                               " --max-new-tokens 40 --json");
  const sae::testing::CommandResult r = run_binary("sae_steer", args, dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json j = Json::parse(r.out);
  std::vector<int64_t> got;
  for (const Json& v : j.at("steered").at("ids").elements()) got.push_back(v.as_int());
  const size_t first = static_cast<size_t>(std::find(steered.begin(), steered.end(), stop) - steered.begin());
  EXPECT_EQ(got, std::vector<int64_t>(steered.begin(), steered.begin() + first + 1));
  std::ofstream(dir.str("model/generation_config.json"), std::ios::trunc) << R"({"eos_token_id": "</s>"})";
  expect_failure("sae_steer", args, 1, "generation_config.json: 'eos_token_id' must be a token id");
}

TEST(SaeSteerCli, JsonGivesHuggingFaceGreedyIdsAndTextShowsBoth) {
  const test::Fixture e(eval_ref("expected.safetensors"));
  TempDir dir("cli_steer");
  const std::string options = cat("--feature ", e.integer("steer.feature"), " --strength ", e.scalar("steer.strength"),
                                  " --prompt 'The dog ran to the park and' --greedy --max-new-tokens 40");
  const sae::testing::CommandResult r = run_binary("sae_steer", steer_args(options + " --json"), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json j = Json::parse(r.out);
  auto ids = [](const Json& list) {
    std::vector<int64_t> out;
    for (const Json& v : list.elements()) out.push_back(v.as_int());
    return out;
  };
  EXPECT_EQ(ids(j.at("prompt_ids")), e.ints("gen1.prompt"));
  EXPECT_EQ(ids(j.at("unsteered").at("ids")), e.ints("gen1.greedy"));
  EXPECT_EQ(ids(j.at("steered").at("ids")), e.ints("gen1.steered"));
  EXPECT_EQ(j.at("layer").as_int(), 2);
  EXPECT_EQ(j.at("hook_name").as_string(), "blocks.2.hook_resid_pre");  // hidden_states[2]
  EXPECT_EQ(j.at("prompt").as_string(), "The dog ran to the park and");
  {  // the JSON texts are the decoded texts (the display escapes are for the terminal only)
    const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(eval_ref("model"));
    std::vector<int32_t> steered;
    for (int64_t id : e.ints("gen1.steered")) steered.push_back(static_cast<int32_t>(id));
    EXPECT_EQ(j.at("steered").at("text").as_string(), utf8::replace_invalid(tokenizer.decode(steered)));
  }
  {  // The tutorial's read-back: the steered text through the model without steering, the feature's
     // strength f ||W_dec[i]|| at every token; by hand: hidden_states[2], per-story normalisation
     // (unbiased std, times sqrt(d)), relu(x W_enc + b_enc), in double.
    DecoderModel model = load_decoder_model(eval_ref("model"), Device::CPU);
    const Checkpoint sae = load_checkpoint(eval_ref("sae_story"), Device::CPU);
    const int64_t i = e.integer("steer.feature"), d = sae.params.d_in(), features = sae.params.d_sae();
    std::vector<int32_t> ids;
    for (int64_t id : e.ints("gen1.prompt")) ids.push_back(static_cast<int32_t>(id));
    for (int64_t id : e.ints("gen1.steered")) ids.push_back(static_cast<int32_t>(id));
    const std::vector<double> x = model.hidden_states(ids, 2).to_vector();
    const int64_t t = static_cast<int64_t>(ids.size());
    double mean = 0, sq = 0;
    for (double v : x) mean += v;
    mean /= static_cast<double>(x.size());
    for (double v : x) sq += (v - mean) * (v - mean);
    const double scale = std::sqrt(static_cast<double>(d)) / std::sqrt(sq / static_cast<double>(x.size() - 1));
    const std::vector<double> W = sae.params.W_enc.to_vector(), b = sae.params.b_enc.to_vector(),
                              D = sae.params.W_dec.to_vector();
    double norm = 0;
    for (int64_t j = 0; j < d; ++j) norm += D[i * d + j] * D[i * d + j];
    norm = std::sqrt(norm);
    const Json& got = j.at("steered").at("strengths");
    ASSERT_EQ(static_cast<int64_t>(got.size()), t);
    double max = 0, largest = 0;
    for (int64_t p = 0; p < t; ++p) {
      double pre = b[i];
      for (int64_t k = 0; k < d; ++k) pre += (x[p * d + k] - mean) * scale * W[k * features + i];
      const double want = std::max(pre, 0.0) * norm;
      EXPECT_NEAR(got.at(p).as_number(), want, 1e-4 * (1 + want)) << "token " << p;
      max = std::max(max, want);
      largest = std::max(largest, got.at(p).as_number());
    }
    EXPECT_GT(max, 0) << "the steered feature never fires: the comparison says little";
    EXPECT_EQ(j.at("steered").at("max_strength").as_number(), largest);
    EXPECT_EQ(j.at("unsteered").at("strengths").size(), e.ints("gen1.prompt").size() + e.ints("gen1.greedy").size());
    const std::string annotated = j.at("steered").at("annotated_text").as_string();
    EXPECT_NE(annotated.find("\u2588"), std::string::npos) << annotated;  // the maximum's block
  }
  const sae::testing::CommandResult text = run_binary("sae_steer", steer_args(options + " --width 30"), dir);
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("unsteered (40 tokens)"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("| steered (40 tokens)"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("hidden_states[2]"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("read back by the model without steering"), std::string::npos) << text.out;
  // Sampling: the same seed gives the same text.
  const std::string sampled = "--feature 3 --strength 4 --prompt 'Once upon' --max-new-tokens 12 --seed 9 --json";
  const sae::testing::CommandResult a = run_binary("sae_steer", steer_args(sampled), dir);
  const sae::testing::CommandResult b = run_binary("sae_steer", steer_args(sampled), dir);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  // The tutorial's steer.py samples as Hugging Face generate does by default: among the 50 most likely.
  EXPECT_EQ(Json::parse(a.out).at("top_k").as_int(), 50);
  EXPECT_EQ(j.at("top_k").as_int(), 0);  // greedy: nothing sampled
  // A transcoder is steered at the hook it replaces, which is no hidden_states index: the JSON said
  // "layer": -1 and named no hook.
  const sae::testing::CommandResult tc = run_binary(
      "sae_steer", cat("--model ", quote(eval_ref("model")), " --sae ",
                       quote(std::string(SAE_SOURCE_DIR) + "/tests/ref/eval_transcoder/tc"),
                       " --device cpu --feature 3 --strength 4 --prompt 'Once upon' --max-new-tokens 4 --json"),
      dir);
  ASSERT_EQ(tc.exit_code, 0) << tc.err;
  const Json tc_json = Json::parse(tc.out);
  EXPECT_EQ(tc_json.at("hook_name").as_string(), "blocks.1.hook_mlp_out");
  EXPECT_TRUE(tc_json.at("layer").is_null());
  // And the steering acts there: greedy, the continuations part (they would be equal if nothing were added).
  const sae::testing::CommandResult tc_greedy = run_binary(
      "sae_steer", cat("--model ", quote(eval_ref("model")), " --sae ",
                       quote(std::string(SAE_SOURCE_DIR) + "/tests/ref/eval_transcoder/tc"),
                       " --device cpu --feature 3 --strength 4 --prompt 'Once upon' --max-new-tokens 8 --greedy --json"),
      dir);
  ASSERT_EQ(tc_greedy.exit_code, 0) << tc_greedy.err;
  const Json greedy_json = Json::parse(tc_greedy.out);
  EXPECT_EQ(greedy_json.at("unsteered").at("ids").size(), 8u);
  EXPECT_NE(greedy_json.at("steered").at("ids"), greedy_json.at("unsteered").at("ids"));
}

TEST(SaeSteerCli, RefusesBadInputWithOneLine) {
  expect_failure("sae_steer", steer_args("--feature 80 --strength 1 --prompt Hi"), 2, "--feature 80");
  // Sampling options beside --greedy were recorded in the JSON as if used.
  expect_failure("sae_steer", steer_args("--feature 1 --strength 1 --prompt Hi --greedy --seed 3"), 2,
                 "--seed sets how tokens are sampled, and --greedy does not sample");
  expect_failure("sae_steer", steer_args("--feature 79 --strength 1 --prompt Hi"), 1, "zero decoder row");
  expect_failure("sae_steer", steer_args("--feature 1 --strength 1 --prompt Hi --temperature 0"), 2, "--temperature");
  expect_failure("sae_steer", steer_args("--feature 1 --strength nan --prompt Hi"), 2, "--strength");
  // --width with --json would do nothing.
  expect_failure("sae_steer", steer_args("--feature 1 --strength 1 --prompt Hi --json --width 30"), 2,
                 "--width sets the side-by-side text's columns, which --json does not print");
  // --json records the seed exactly (as sae_train's): above 2^53 it was written rounded, above 2^63 negative.
  expect_failure("sae_steer", steer_args("--feature 1 --strength 1 --prompt Hi --seed 9007199254740993"), 2,
                 "--seed must be in [0, 2^53]");
  // Numbers are read whole: cxxopts had kept "0x10" as 0 (no steering), "4,5" as 4, "1,5" as 1.
  expect_failure("sae_steer", steer_args("--feature 1 --strength 0x10 --prompt Hi"), 2,
                 "--strength: expected a number, got '0x10'");
  expect_failure("sae_steer", steer_args("--feature 1 --strength 4,5 --prompt Hi"), 2, "got '4,5'");
  expect_failure("sae_steer", steer_args("--feature 1 --strength 1 --prompt Hi --temperature 1,5"), 2,
                 "--temperature: expected a number, got '1,5'");
  expect_failure("sae_steer", steer_args("--feature 1 --strength 1e39 --prompt Hi"), 2, "float32's range");
  expect_failure("sae_eval", eval_args(eval_ref("sae_topk"), "unused_out") + " --dense-threshold 0,5", 2,
                 "--dense-threshold: expected a number, got '0,5'");
  expect_failure("sae_steer", steer_args("--feature 1 --strength 1 --prompt ''"), 1, "--prompt");
  expect_failure("sae_steer", steer_args("--feature 1 --strength 1 --prompt Hi --max-new-tokens 100"), 1,
                 "max_position_embeddings");
  expect_failure("sae_steer", steer_args("--strength 1 --prompt Hi"), 2, "--feature");
  expect_failure("sae_steer", steer_args("--feature 1 --strength 1 --prompt Hi --layer 9"), 2, "--layer");
  // A crosscoder (of one model or of two) is not steered.
  for (const char* folder : {"xc", "diff"})
    expect_failure("sae_steer",
                   cat("--model ", quote(eval_ref("model")), " --sae ",
                       quote(std::string(SAE_SOURCE_DIR) + "/tests/ref/eval_crosscoder/" + folder),
                       " --device cpu --feature 1 --strength 1 --prompt Hi"),
                   2, "is a crosscoder");
}
