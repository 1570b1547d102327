// Several SAEs on one data stream (train_together, sae_train --l1-list / --k-list): each writes the
// same bytes as its separate run (synthetic data, and text through the fixture GPT-Neo), resumes
// together bit-exactly, and SAEs that do not share the data are refused with one line.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "io/json.h"
#include "sae/train/options.h"
#include "sae/train/trainer.h"
#include "tests/util/program_run.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::read_file;
using sae::testing::run_binary;
using sae::testing::small_synthetic_config;
using sae::testing::TempDir;
namespace fs = std::filesystem;

namespace {

TrainConfig tiny(const std::string& out) { return sae::testing::tiny_training_config(out); }

void expect_same_run(const std::string& a, const std::string& b) {
  for (const char* file : {"sae/sae_weights.safetensors", "sae/training_state.safetensors", "metrics.csv"})
    EXPECT_EQ(read_file(a + "/" + file), read_file(b + "/" + file)) << file << ": " << a << " vs " << b;
}

std::string text_ref(const std::string& name) {
  return std::string(SAE_SOURCE_DIR) + "/tests/ref/text_train/" + name;
}

// A short run from the fixture model's text (the caller says where it reads).
TrainConfig text_run(const std::string& out) {
  TrainConfig c;
  c.data = "text";
  c.model = text_ref("model");
  c.text = text_ref("stories.txt");
  c.features = 32;
  c.lr = 1e-3;
  c.log_every = 1;
  c.checkpoint_every = 5;
  c.progress = ProgressMode::None;
  c.device = DeviceChoice::Cpu;
  c.out = out;
  return c;
}

// Trains `configs` together, then each alone in DIR/alone_<i>: the same files.
void expect_together_equals_alone(const TempDir& dir, const std::vector<TrainConfig>& configs) {
  train_together(configs);
  for (size_t i = 0; i < configs.size(); ++i) {
    TrainConfig alone = configs[i];
    alone.out = dir.str("alone_" + std::to_string(i));
    train(alone);
    expect_same_run(configs[i].out, alone.out);
  }
}

}  // namespace

TEST(TrainTogether, EachSaeEqualsItsSeparateRun) {
  TempDir dir("together_same");
  std::vector<TrainConfig> configs;
  for (double l1 : {0.0, 0.5, 3.0}) {
    TrainConfig c = tiny(dir.str("together_" + std::to_string(configs.size())));
    c.l1 = l1;
    configs.push_back(c);
  }
  configs[2].features = 24;               // another width
  configs[1].arch.set("sparse", Json("auto"));   // another step path
  TrainConfig topk = tiny(dir.str("together_topk"));
  topk.architecture = "topk";
  topk.arch.set("k", Json(3));
  topk.l1 = TrainConfig().l1;
  configs.push_back(topk);
  const std::vector<TrainResult> together = train_together(configs);
  ASSERT_EQ(together.size(), configs.size());
  for (size_t i = 0; i < configs.size(); ++i) {
    TrainConfig alone = configs[i];
    alone.out = dir.str("alone_" + std::to_string(i));
    const TrainResult r = train(alone);
    EXPECT_EQ(r.steps, together[i].steps);
    EXPECT_EQ(r.fvu, together[i].fvu);
    expect_same_run(configs[i].out, alone.out);
  }
}

TEST(TrainTogether, FromTextEachSaeEqualsItsSeparateRun) {
  TempDir dir("together_text");
  std::vector<TrainConfig> configs;
  for (double l1 : {0.1, 1.0}) {
    TrainConfig c = text_run(dir.str("together_" + std::to_string(configs.size())));
    c.layer = 2;
    c.l1 = l1;
    c.steps = 12;
    configs.push_back(c);
  }
  expect_together_equals_alone(dir, configs);
}

TEST(TrainTogether, DictionariesAtSeveralHooksFromOnePassEqualTheirSeparateRuns) {
  // An SAE at one hook, a transcoder of block 1 and a crosscoder over two hooks, read from one
  // forward pass of the model: each writes what its separate run writes.
  TempDir dir("together_hooks");
  std::vector<TrainConfig> configs;
  for (int kind = 0; kind < 3; ++kind) {
    TrainConfig c = text_run(dir.str("together_" + std::to_string(configs.size())));
    if (kind == 0) c.hook = "blocks.2.hook_resid_pre";
    if (kind == 1) c.transcoder_block = 1;
    if (kind == 2) c.hooks = "blocks.0.hook_resid_post,blocks.1.ln2.hook_normalized";
    c.l1 = 0.5;
    c.steps = 10;
    c.batch_tokens = 40;
    c.normalize = Normalization::Dataset;
    configs.push_back(c);
  }
  expect_together_equals_alone(dir, configs);
}

TEST(TrainTogether, ACrosscoderRefusesOneActivationNamedTwoWays) {
  // blocks.0.hook_resid_post is hidden_states[1], i.e. blocks.1.hook_resid_pre: one source twice.
  TempDir dir("crosscoder_same_source");
  const std::string text = " --model " + text_ref("model") + " --text " + text_ref("stories.txt") +
                           " --features 16 --steps 2 --batch 40 --normalize none --l1 0.5 --progress none --device cpu";
  for (const char* hooks : {"blocks.0.hook_resid_post,blocks.1.hook_resid_pre",
                                   "hidden_states[1],blocks.0.hook_resid_post"}) {
    auto r = run_binary("sae_train", text + " --hooks " + std::string(hooks) + " --out " + dir.str("run"), dir);
    EXPECT_EQ(r.exit_code, 2) << hooks << ": " << r.err;
    EXPECT_NE(r.err.find("are the same activations (blocks.1.hook_resid_pre)"), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  // Different activations still train.
  auto ok = run_binary("sae_train", text + " --hooks blocks.0.hook_resid_post,blocks.1.hook_resid_post --out " +
                                        dir.str("fine"), dir);
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
}

TEST(TrainTogether, TranscoderAndLayerListsTrainEachBlockFromOnePass) {
  TempDir dir("together_layers");
  const std::string text = " --model " + text_ref("model") + " --text " + text_ref("stories.txt") +
                           " --features 16 --steps 6 --batch 40 --normalize dataset --l1 0.5 --progress none"
                           " --device cpu";
  auto r = run_binary("sae_train", text + " --transcoder-list 0,2 --out " + dir.str("tl"), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (int block : {0, 2}) {
    const Json meta = read_json_file(dir.str(cat("tl/layer_", block, "/sae/cfg.json"))).at("metadata");
    EXPECT_EQ(meta.at("hook_name").as_string(), cat("blocks.", block, ".ln2.hook_normalized"));
    EXPECT_EQ(meta.at("hook_name_out").as_string(), cat("blocks.", block, ".hook_mlp_out"));
  }
  // Each equals its own run (--transcoder 2 alone).
  r = run_binary("sae_train", text + " --transcoder 2 --out " + dir.str("alone"), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_file(dir.str("alone/sae/sae_weights.safetensors")), read_file(dir.str("tl/layer_2/sae/sae_weights.safetensors")));
  r = run_binary("sae_train", text + " --layer-list 1,3 --out " + dir.str("sl"), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_json_file(dir.str("sl/layer_3/sae/cfg.json")).at("metadata").at("hook_name").as_string(),
            "blocks.3.hook_resid_pre");
  // A member records the data as the same run alone does (they recorded the list's reads and its
  // first member's layer), and is resumed alone (that was refused as other data).
  r = run_binary("sae_train", text + " --layer 3 --out " + dir.str("alone3"), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const auto& [member, single] : {std::pair<std::string, std::string>{"sl/layer_3", "alone3"}, {"tl/layer_2", "alone"}}) {
    EXPECT_EQ(read_json_file(dir.str(member + "/config.json")).at("resolved").at("data"),
              read_json_file(dir.str(single + "/config.json")).at("resolved").at("data")) << member;
    EXPECT_EQ(read_json_file(dir.str(member + "/sae/cfg.json")).at("sae_cpp").at("data"),
              read_json_file(dir.str(single + "/sae/cfg.json")).at("sae_cpp").at("data")) << member;
  }
  r = run_binary("sae_train", "--resume " + dir.str("sl/layer_1") + " --steps 8", dir);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // What a member reads is still compared: its config.json edited to another layer is refused.
  const std::string config_path = dir.str("alone3/config.json");
  Json edited = read_json_file(config_path);
  edited["layer"] = 1;
  std::ofstream(config_path) << edited.dump(2);
  r = run_binary("sae_train", "--resume " + dir.str("alone3") + " --steps 8", dir);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("hook_name: \"blocks.3.hook_resid_pre\" (was) / \"blocks.1.hook_resid_pre\" (now)"),
            std::string::npos) << r.err;
  for (const std::string& bad : {std::string(" --layer-list 1,2 --layer 2"), std::string(" --layer-list 1 --l1-list 1,2"),
                                 std::string(" --transcoder-list 1 --transcoder 1"), std::string(" --layer-list 1.5")}) {
    r = run_binary("sae_train", text + bad + " --out " + dir.str("bad"), dir);
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.err;
  }
  // Both hooks given: each transcoder the same, labelled by a block it did not read (they trained).
  r = run_binary("sae_train", text + " --transcoder-list 1,2 --hook-in blocks.0.hook_resid_pre --hook-out "
                                     "blocks.0.hook_mlp_out --out " + dir.str("bad"), dir);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--hook-in and --hook-out together would replace both of its hooks"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir.path / "bad"));
}

TEST(TrainTogether, HookListTrainsAnSaeAtEachHookFromOnePass) {
  // --hook-list: one SAE per hook point (residual, MLP output, attention output), each what
  // --hook alone writes, byte for byte; the list resumes as one; refusals in one line.
  TempDir dir("together_hook_list");
  const std::string text = " --model " + text_ref("model") + " --text " + text_ref("stories.txt") +
                           " --features 16 --steps 4 --batch 40 --normalize dataset --l1 0.5 --progress none"
                           " --device cpu --checkpoint-every 2";
  const std::vector<std::string> hooks = {"blocks.1.hook_mlp_out", "blocks.2.hook_resid_pre", "blocks.0.hook_attn_out"};
  auto r = run_binary("sae_train", text + " --hook-list " + hooks[0] + "," + hooks[1] + "," + hooks[2] + " --out " +
                                       dir.str("hl"), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_json_file(dir.str("hl/sweep.json")).at("option").as_string(), "hook");
  for (const std::string& hook : hooks)
    EXPECT_EQ(read_json_file(dir.str("hl/hook_" + hook + "/sae/cfg.json")).at("metadata").at("hook_name").as_string(),
              hook);
  r = run_binary("sae_train", text + " --hook " + hooks[0] + " --out " + dir.str("alone"), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_file(dir.str("alone/sae/sae_weights.safetensors")),
            read_file(dir.str("hl/hook_" + hooks[0] + "/sae/sae_weights.safetensors")));
  r = run_binary("sae_train", "--resume " + dir.str("hl") + " --steps 6", dir);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_json_file(dir.str("hl/hook_" + hooks[2] + "/sae/cfg.json")).at("metadata").at("hook_name").as_string(),
            hooks[2]);
  for (const auto& [bad, said] : {std::pair<std::string, std::string>{" --hook-list blocks.1.hook_mlp_out --hook "
                                                                      "blocks.1.hook_mlp_out",
                                                                      "give it without --layer, --hook and --transcoder"},
                                  {" --hook-list blocks.1.hook_mlp_out,blocks.1.hook_mlp_out", "names blocks.1.hook_mlp_out twice"},
                                  {" --hook-list blocks.1.hook_q", "--hook-list 'blocks.1.hook_q'"},
                                  {" --hook-list layers.1", "its output is blocks.1.hook_resid_post"},
                                  {" --hook-list blocks.0.hook_resid_post,hidden_states[1]",
                                   "blocks.0.hook_resid_post and hidden_states[1] are the same activations "
                                   "(blocks.1.hook_resid_pre)"},
                                  {" --hook-list blocks.9.hook_mlp_out", "--hook-list blocks.9.hook_mlp_out"},
                                  {" --hook-list a, --layer-list 1", "give one of"}}) {
    r = run_binary("sae_train", text + bad + " --out " + dir.str("bad"), dir);
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.err;
    EXPECT_NE(r.err.find(said), std::string::npos) << bad << ": " << r.err;
  }
}

TEST(TrainTogether, AResumeRefusesAModelReplacedUnderItsPath) {
  // The model's weight files are fingerprinted as the text is: a run resumed on a model replaced under
  // the same folder went on with other activations, exit 0.
  TempDir dir("replaced_model");
  fs::copy(text_ref("model"), dir.str("model"), fs::copy_options::recursive);
  const std::string args = " --model " + dir.str("model") + " --text " + text_ref("stories.txt") +
                           " --features 16 --steps 4 --checkpoint-every 2 --batch 40 --normalize none --l1 0.5"
                           " --progress none --device cpu --out " + dir.str("run");
  auto r = run_binary("sae_train", args, dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(read_json_file(dir.str("run/config.json")).at("resolved").at("data").has("model_fingerprint"));
  // A run recorded before the tensors hash (first and last MiB only) resumes on the same model.
  {
    Json config = read_json_file(dir.str("run/config.json"));
    std::string recorded = config.at("resolved").at("data").at("model_fingerprint").as_string();
    ASSERT_NE(recorded.find(":tensors="), std::string::npos) << recorded;
    recorded.erase(recorded.find(":tensors="));
    config["resolved"]["data"]["model_fingerprint"] = recorded;
    std::ofstream(dir.str("run/config.json"), std::ios::trunc) << config.dump(2);
    r = run_binary("sae_train", "--resume " + dir.str("run") + " --steps 5", dir);
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }
  const std::string weights = dir.str("model/model.safetensors");
  std::string bytes = read_file(weights);
  bytes[bytes.size() - 3] ^= 0x40;  // one weight's bits
  std::ofstream(weights, std::ios::binary | std::ios::trunc) << bytes;
  r = run_binary("sae_train", "--resume " + dir.str("run") + " --steps 6", dir);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("model_fingerprint"), std::string::npos) << r.err;
  // A run from before the fingerprint was recorded resumes as it did (compared without it).
  Json config = read_json_file(dir.str("run/config.json"));
  config["resolved"]["data"].erase("model_fingerprint");
  std::ofstream(dir.str("run/config.json"), std::ios::trunc) << config.dump(2);
  r = run_binary("sae_train", "--resume " + dir.str("run") + " --steps 6", dir);
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST(TrainTogether, ResumesTogetherBitExactly) {
  TempDir dir("together_resume");
  std::vector<TrainConfig> full, cut;
  for (double l1 : {0.2, 2.0}) {
    TrainConfig c = tiny(dir.str("full_" + std::to_string(full.size())));
    c.l1 = l1;
    full.push_back(c);
    c.out = dir.str("cut_" + std::to_string(cut.size()));
    c.steps = 17;
    cut.push_back(c);
  }
  train_together(full);
  train_together(cut);
  std::vector<TrainConfig> rest;
  for (const TrainConfig& c : cut) {
    fs::remove_all(c.out + "/sae");  // as if killed at step 17: resume from checkpoints/step_10
    TrainConfig r;
    r.resume = c.out;
    give_every_control(r);
    r.steps = 30;
    r.log_every = 1;
    r.checkpoint_every = 10;
    r.progress = ProgressMode::None;
    r.device = DeviceChoice::Cpu;
    rest.push_back(r);
  }
  train_together(rest);
  for (size_t i = 0; i < full.size(); ++i) expect_same_run(full[i].out, cut[i].out);
}

TEST(TrainTogether, RefusesSaesThatDoNotShareTheData) {
  TempDir dir("together_refuse");
  auto pair_with = [&](const std::function<void(TrainConfig&)>& change, const std::string& tag) {
    TrainConfig a = tiny(dir.str(tag + "_a")), b = tiny(dir.str(tag + "_b"));
    change(b);
    return std::vector<TrainConfig>{a, b};
  };
  auto expect_refused = [&](const std::vector<TrainConfig>& configs, const std::string& words) {
    try {
      train_together(configs);
      ADD_FAILURE() << "expected a UsageError mentioning " << words;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
  };
  expect_refused(pair_with([](TrainConfig& c) { c.batch_tokens = 32; }, "batch"), "batch");
  expect_refused(pair_with([](TrainConfig& c) { c.steps = 31; }, "steps"), "steps");
  expect_refused(pair_with([](TrainConfig& c) { c.seed = 4; }, "seed"), "seed");
  expect_refused(pair_with([](TrainConfig& c) { c.synthetic.noise = 0.5; }, "synth"), "synthetic");
  expect_refused(pair_with([&](TrainConfig& c) { c.out = dir.str("same_a"); }, "same"), "share the folder");
  // Resumed runs standing at different steps.
  TrainConfig early = tiny(dir.str("early")), late = tiny(dir.str("late"));
  early.steps = 10;
  late.steps = 20;
  train(early);
  train(late);
  TrainConfig r1, r2;
  r1.resume = early.out;
  give_every_control(r1);
  r2.resume = late.out;
  give_every_control(r2);
  for (TrainConfig* r : {&r1, &r2}) {
    r->steps = 30;
    r->progress = ProgressMode::None;
    r->device = DeviceChoice::Cpu;
  }
  // They stand at different steps: they train in two groups, one pass over the data each, and end as
  // an uninterrupted run of 30 steps does.
  const std::vector<TrainResult> both = train_together({r1, r2});
  ASSERT_EQ(both.size(), 2u);
  EXPECT_EQ(both[0].steps, 30);
  EXPECT_EQ(both[1].steps, 30);
  TrainConfig whole = tiny(dir.str("whole"));
  whole.steps = 30;
  train(whole);
  EXPECT_EQ(read_file(whole.out + "/sae/sae_weights.safetensors"), read_file(early.out + "/sae/sae_weights.safetensors"));
  EXPECT_EQ(read_file(whole.out + "/sae/sae_weights.safetensors"), read_file(late.out + "/sae/sae_weights.safetensors"));
}

TEST(TrainTogether, SaeTrainListsWriteOneFolderPerValueAndResumeTogether) {
  TempDir dir("together_cli");
  const std::string data =
      " --synthetic-d 8 --synthetic-concepts 12 --synthetic-story-concepts 2 --synthetic-story-active 1"
      " --synthetic-stories 50 --synthetic-mean-length 8 --synthetic-active 2 --features 16 --lr 1e-3"
      " --batch 32 --normalize dataset --progress none --device cpu --checkpoint-every 5";
  auto r = run_binary("sae_train", data + " --steps 10 --l1-list 0.1,1 --out " + dir.str("l1s"), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir.str("l1s/l1_0.1/sae/sae_weights.safetensors")));
  EXPECT_TRUE(fs::exists(dir.str("l1s/l1_1/sae/sae_weights.safetensors")));
  // Each equals sae_train --l1 alone.
  r = run_binary("sae_train", data + " --steps 10 --l1 1 --out " + dir.str("alone"), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_file(dir.str("alone/sae/sae_weights.safetensors")),
            read_file(dir.str("l1s/l1_1/sae/sae_weights.safetensors")));
  // --resume OUT continues every SAE under it.
  r = run_binary("sae_train", " --resume " + dir.str("l1s") + " --steps 15 --progress none --device cpu", dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("trained 15 steps"), std::string::npos) << r.out;
  r = run_binary("sae_train", data + " --steps 15 --l1 1 --out " + dir.str("alone") + " --overwrite", dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_file(dir.str("alone/sae/sae_weights.safetensors")),
            read_file(dir.str("l1s/l1_1/sae/sae_weights.safetensors")));
  // --k-list for topk.
  r = run_binary("sae_train", data + " --steps 4 --architecture topk --k-list 2,4 --out " + dir.str("ks"), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir.str("ks/k_2/sae")));
  EXPECT_TRUE(fs::exists(dir.str("ks/k_4/sae")));
  // Bad combinations: one line, exit 2.
  for (const std::string& bad : {std::string(" --l1-list 1,2 --k-list 2"), std::string(" --l1 1 --l1-list 1,2"),
                                 std::string(" --l1-list 2,1")}) {
    r = run_binary("sae_train", data + " --steps 2" + bad + " --out " + dir.str("bad"), dir);
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.err;
  }
  // A list killed before its SAEs began (the first one's options pending): --resume OUT with an option
  // that contradicts the list's is refused as a begun SAE's resume refuses it (the not-begun ones
  // took the list's own value silently), and without it the list trains.
  r = sae::testing::run_program("sae_train", data + " --steps 4 --l1-list 0.1,1 --out " + dir.str("unbegun"), dir,
                                "SAE_TEST_KILL_AT=after-pending-config");
  EXPECT_NE(r.exit_code, 0);
  ASSERT_TRUE(fs::exists(dir.str("unbegun/sweep.json")));
  ASSERT_FALSE(fs::exists(dir.str("unbegun/l1_0.1/config.json")));
  r = run_binary("sae_train", " --resume " + dir.str("unbegun") + " --lr 0.5 --progress none", dir);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--lr 0.5 contradicts the run being resumed"), std::string::npos) << r.err;
  r = run_binary("sae_train", " --resume " + dir.str("unbegun") + " --progress none", dir);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir.str("unbegun/l1_1/sae/sae_weights.safetensors")));
}
