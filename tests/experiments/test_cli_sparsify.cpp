// EleutherAI sparsify's SAE folders (cfg.json + sae.safetensors, written by sparsify's own
// save_to_disk: scripts/gen_sparsify_fixture.py) read by the programs as our TopK SAE or transcoder:
// sae_apply gives sparsify's features and outputs, the folder's name (h.1, a block's output) is
// its hook point, and what we do not read (groupmax, a skip connection on an autoencoder) is a
// one-line error.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>

#include "io/json.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "sae/train/checkpoint.h"
#include "tests/util/compare.h"
#include "tests/util/foreign_sae.h"
#include "tests/util/fixture.h"
#include "tests/util/test_util.h"

using namespace sae;
using namespace sae::testing;
namespace fs = std::filesystem;

namespace {

std::string sp_ref(const std::string& name) { return std::string(SAE_SOURCE_DIR) + "/tests/ref/sparsify/" + name; }
std::string eval_ref(const std::string& name) { return std::string(SAE_SOURCE_DIR) + "/tests/ref/eval/" + name; }

std::pair<Tensor, Tensor> apply_sae(const std::string& sae, const TempDir& dir) {
  return sae_apply_outputs(sae, sp_ref("x.npy"), dir);
}

}  // namespace

TEST(SparsifyFolders, SaeApplyGivesSparsifysFeaturesAndOutputs) {
  const test::Fixture expected(sp_ref("expected.safetensors"));
  for (const char* kind : {"sae", "transcoder"}) {
    SCOPED_TRACE(kind);
    TempDir dir("sparsify_apply");
    const bool sae = std::string(kind) == "sae";
    const auto [f, out] = apply_sae(sp_ref(sae ? "h.1" : "transcoder"), dir);
    const Tensor want_f = expected.tensor(sae ? "sae_features" : "transcoder_features", DType::F32);
    expect_same_outputs(f, want_f, "features");
    expect_same_outputs(out, expected.tensor(sae ? "sae_reconstruction" : "transcoder_prediction", DType::F32), "output");
    // The same k latents of every row (sparsify's top-k of relu((x - b_dec) W^T + b)).
    int64_t kept = 0;
    for (int64_t i = 0; i < f.numel(); ++i) {
      EXPECT_EQ(f.data<float>()[i] > 0, want_f.data<float>()[i] > 0) << "element " << i;
      kept += f.data<float>()[i] > 0;
    }
    EXPECT_EQ(kept, 40 * 6);
  }
}

TEST(SparsifyFolders, LoadAsTopKAtTheHookTheFolderNames) {
  const Checkpoint sae = load_checkpoint(sp_ref("h.1"), Device::CPU);
  EXPECT_EQ(sae.params.kind, "topk");
  EXPECT_EQ(sae.params.settings.at("k").as_int(), 6);
  EXPECT_FALSE(sae.params.transcoder);
  EXPECT_FALSE(sae.state.has_value());
  EXPECT_EQ(sae.cfg.at("metadata").at("hook_name").as_string(), "blocks.1.hook_resid_post");
  EXPECT_EQ(sae.cfg.at("sparsify").at("num_latents").as_int(), 64);
  // The folder's name however the path is written (a trailing separator, "." parts).
  for (const std::string& spelled : {sp_ref("h.1/"), sp_ref("h.1/."), sp_ref("../sparsify/h.1//")})
    EXPECT_EQ(load_checkpoint(spelled, Device::CPU).cfg.at("metadata").at("hook_name").as_string(),
              "blocks.1.hook_resid_post") << spelled;
  {  // a link keeps its own name (as sparsify would name the folder it points to by the link's)
    TempDir links("sparsify_link");
    fs::create_directory_symlink(sp_ref("h.1"), links.str("layers.3"));
    EXPECT_EQ(load_checkpoint(links.str("layers.3"), Device::CPU).cfg.at("metadata").at("hook_name").as_string(),
              "blocks.3.hook_resid_post");
  }
  const Checkpoint transcoder = load_checkpoint(sp_ref("transcoder"), Device::CPU);
  EXPECT_TRUE(transcoder.params.transcoder);
  EXPECT_TRUE(transcoder.params.W_skip.defined());
  EXPECT_FALSE(transcoder.cfg.at("metadata").has("hook_name"));
  // sae_eval reads h.1 at block 1's output, as it reads the same folder under another name given
  // --hook blocks.1.hook_resid_post: the same numbers.
  TempDir dir("sparsify_eval");
  fs::copy(sp_ref("h.1"), dir.str("renamed"));
  auto eval = [&](const std::string& sae_dir, const std::string& out, const std::string& extra) {
    const CommandResult r = run_binary("sae_eval", cat("--model ", eval_ref("model"), " --sae ", sae_dir, " --text ",
                                                       eval_ref("stories.txt"), " --out ", dir.str(out),
                                                       " --progress none --device cpu", extra),
                                       dir);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return read_json_file(dir.str(out + "/eval.json"));
  };
  const Json named = eval(sp_ref("h.1"), "named", ""), given = eval(dir.str("renamed"), "given",
                                                                       " --hook blocks.1.hook_resid_post");
  EXPECT_EQ(named.at("hook_name").as_string(), "blocks.1.hook_resid_post");
  for (const char* key : {"ce_loss_score", "kl_div_score", "fvu", "l0"})
    EXPECT_EQ(named.at(key).as_number(), given.at(key).as_number()) << key;
}

TEST(SparsifyFolders, WhatWeDoNotReadIsOneLine) {
  TempDir dir("sparsify_refused");
  auto refused = [&](const std::string& sae, const std::string& needle) {
    const CommandResult r = run_binary("sae_apply", cat("--sae ", sae, " --input ", sp_ref("x.npy"), " --features-out ",
                                                        dir.str("f.npy")),
                                       dir);
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  };
  refused(sp_ref("groupmax"), "sparsify's activation \"groupmax\" is not supported");
  // A skip connection on an autoencoder, and a tensor sparsify does not write.
  fs::copy(sp_ref("transcoder"), dir.str("skip_sae"));
  Json cfg = read_json_file(dir.str("skip_sae/cfg.json"));
  cfg["transcode"] = false;
  write_file(dir.str("skip_sae/cfg.json"), cfg.dump());
  refused(dir.str("skip_sae"), "skip_connection on an autoencoder");
  // Keys of other versions that change the encoder: refused, not run as a plain top k.
  for (const auto& [key, value] : {std::pair<const char*, Json>{"signed", Json(true)}, {"gram_lookup", Json("table.pt")}}) {
    const std::string folder = dir.str(std::string("key_") + key);
    fs::copy(sp_ref("h.1"), folder);
    Json with = read_json_file(folder + "/cfg.json");
    with[key] = value;
    write_file(folder + "/cfg.json", with.dump());
    refused(folder, cat("'", key, "' ", value.dump(), " is not supported"));
    with[key] = Json(false);  // off: read as before
    write_file(folder + "/cfg.json", with.dump());
    const CommandResult ok = run_binary("sae_apply", cat("--sae ", folder, " --input ", sp_ref("x.npy"), " --features-out ",
                                                         dir.str("f.npy")),
                                        dir);
    EXPECT_EQ(ok.exit_code, 0) << ok.err;
  }
  // Named as sparsify names them: a missing encoder.bias, a tensor it does not write, k 0.
  fs::copy(sp_ref("h.1"), dir.str("no_bias"));
  {
    const SafetensorsFile file = SafetensorsFile::open(sp_ref("h.1/sae.safetensors"));
    write_safetensors(dir.str("no_bias/sae.safetensors"), {{"encoder.weight", file.read_f32("encoder.weight")},
                                                           {"W_dec", file.read_f32("W_dec")},
                                                           {"b_dec", file.read_f32("b_dec")}});
    fs::copy(sp_ref("h.1"), dir.str("extra"));
    write_safetensors(dir.str("extra/sae.safetensors"), {{"encoder.weight", file.read_f32("encoder.weight")},
                                                         {"encoder.bias", file.read_f32("encoder.bias")},
                                                         {"W_dec", file.read_f32("W_dec")},
                                                         {"b_dec", file.read_f32("b_dec")},
                                                         {"threshold", file.read_f32("encoder.bias")}});
  }
  refused(dir.str("no_bias"), "no_bias/sae.safetensors: missing tensor encoder.bias");
  refused(dir.str("extra"), "unexpected tensor threshold (sparsify writes encoder.weight");
  fs::copy(sp_ref("h.1"), dir.str("k0"));
  cfg = read_json_file(dir.str("k0/cfg.json"));
  cfg["k"] = 0;
  write_file(dir.str("k0/cfg.json"), cfg.dump());
  refused(dir.str("k0"), "k0/cfg.json: k must be >= 1, got 0");
}

TEST(SparsifyFolders, ProgramsThatRunAModelAskForWhatTheFolderDoesNotSay) {
  // A transcoder reads its module's input, not one of our hook points, and --hook cannot place a
  // transcoder: refused in one line (sae_features ran its encoder on hidden_states[2]). An
  // autoencoder in a folder that names no block asks for --hook (no default hidden_states[2]).
  TempDir dir("sparsify_no_hook");
  fs::copy(sp_ref("h.1"), dir.str("layers.1.mlp"));
  const std::string model = cat(" --model ", eval_ref("model"), " --text ", eval_ref("stories.txt"), " --device cpu");
  struct Case {
    std::string program, sae, needle;
  };
  const std::vector<Case> cases = {
      {"sae_eval", sp_ref("transcoder"), "a transcoder whose cfg.json names no hook points"},
      {"sae_features", sp_ref("transcoder"), "a transcoder whose cfg.json names no hook points"},
      {"sae_features", dir.str("layers.1.mlp"), "does not say where the SAE reads"},
      {"sae_eval", dir.str("layers.1.mlp"), "does not say where the SAE reads"},
  };
  for (const Case& c : cases) {
    const CommandResult r = run_binary(c.program, cat("--sae ", c.sae, model, " --out ", dir.str("out")), dir);
    EXPECT_EQ(r.exit_code, 2) << c.program << " " << c.sae << ": " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << r.err;
  }
  const CommandResult given = run_binary(
      "sae_features", cat("--sae ", dir.str("layers.1.mlp"), model, " --hook blocks.1.hook_mlp_out --out ",
                          dir.str("features.json")), dir);
  EXPECT_EQ(given.exit_code, 0) << given.err;
}
