// Training runs of every architecture end to end: planted-dictionary recovery (TopK and BatchTopK
// at least as good as the standard SAE at the same L0), bit-exact resume, the SAELens export per
// architecture (names, cfg keys, values) and what loads it back (--init, load_checkpoint,
// sae_apply), and the options that do not apply or are out of range.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "io/npy.h"
#include "io/safetensors.h"
#include "sae/arch/registry.h"
#include "sae/arch/sae_step.h"
#include "sae/train/arch_config.h"
#include "sae/train/checkpoint.h"
#include "sae/train/options.h"
#include "sae/train/trainer.h"
#include "tensor/ops.h"
#include "tests/util/compare.h"
#include "tests/util/resume_check.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::expect_resume_is_bit_exact;
using sae::testing::max_abs;
using sae::testing::read_file;
using sae::testing::planted_dictionary_config;
using sae::testing::tiny_story_run_config;
using sae::testing::TempDir;
namespace fs = std::filesystem;

namespace {

// A few seconds of training for each architecture (resume, export): small, and AuxK with a dead
// window short enough that latents die within the run.
bool topk_family(const std::string& a) { return a == "topk" || a == "batchtopk"; }

TrainConfig tiny_config(const std::string& a, const std::string& out) {
  TrainConfig c = tiny_story_run_config(out);
  c.lr = 3e-3;
  c.l1 = 0.0;  // set below for the penalised architectures
  c.batch_tokens = 20;
  c.normalize = Normalization::Dataset;
  c.architecture = a;
  if (topk_family(a)) {
    c.arch.set("k", Json(3));
    c.dead_window = 100;  // AuxK at work within 40 steps of 20 tokens
    c.arch.set("auxk-k", Json(4));
  } else {
    c.l1 = 0.2;
  }
  if (a == "jumprelu") {
    c.arch.set("jumprelu-init-threshold", Json(0.05));
    c.arch.set("jumprelu-bandwidth", Json(0.1));
  }
  return c;
}

struct Variant {
  const char* architecture;
  const char* penalty;
  const char* name;
};
const Variant kVariants[] = {
    {"topk", "step", "topk"},
    {"batchtopk", "step", "batchtopk"},
    {"jumprelu", "step", "jumprelu_step"},
    {"jumprelu", "tanh", "jumprelu_tanh"},
    {"gated", "step", "gated"},
};

TrainConfig tiny_config(const Variant& v, const std::string& out) {
  TrainConfig c = tiny_config(v.architecture, out);
  if (std::string(v.penalty) == "tanh") {
    c.arch.set("jumprelu-penalty", Json("tanh"));
    c.arch.set("jumprelu-pre-act", Json(0.01));
    c.arch.set("jumprelu-bandwidth", Json(0.5));
  }
  return c;
}

std::string quote(const std::string& s) { return "'" + s + "'"; }

}  // namespace

TEST(ArchTrain, EveryArchitectureRecoversAPlantedDictionary) {
  // The standard SAE at lambda 3 settles near L0 5; TopK and BatchTopK get k = that L0. At the same
  // L0 they must reconstruct at least as well (FVU) and recover the dictionary too. JumpReLU and
  // Gated with settings found to work on this data (docs/architectures.md, "Our implementation").
  TempDir dir("arch_planted");
  TrainConfig standard = planted_dictionary_config(dir.str("standard"));
  standard.l1 = 3.0;
  const TrainResult base = train(standard);
  ASSERT_TRUE(base.concepts.has_value());
  std::printf("standard       MMCS %.3f recovered %.3f L0 %.2f FVU %.3f\n", base.concepts->mmcs,
              base.concepts->recovered, base.l0, base.fvu);
  EXPECT_GE(base.concepts->recovered, 0.9);
  const int64_t k = std::max<int64_t>(1, std::llround(base.l0));
  for (const Variant& v : kVariants) {
    SCOPED_TRACE(v.name);
    TrainConfig c = planted_dictionary_config(dir.str(v.name));
    const std::string a = v.architecture;
    c.architecture = a;
    if (topk_family(a)) c.arch.set("k", Json(k));
    if (a == "gated") c.l1 = 10.0;
    if (a == "jumprelu") {
      c.arch.set("jumprelu-penalty", Json(v.penalty));
      c.arch.set("jumprelu-init-threshold", Json(1.0));
      c.arch.set("jumprelu-bandwidth", Json(0.5));
      c.l1 = std::string(v.penalty) == "step" ? 1.0 : 0.5;
    }
    const TrainResult r = train(c);
    ASSERT_TRUE(r.concepts.has_value());
    std::printf("%-14s MMCS %.3f recovered %.3f L0 %.2f FVU %.3f\n", v.name, r.concepts->mmcs, r.concepts->recovered,
                r.l0, r.fvu);
    EXPECT_GE(r.concepts->recovered, 0.9);
    EXPECT_GT(r.concepts->mmcs, 0.95);
    EXPECT_LT(r.l0, 6.0);
    if (topk_family(a)) {
      EXPECT_LE(r.l0, double(k) + 1e-9);  // at most k per token (batchtopk: on average)
      EXPECT_LE(r.fvu, base.fvu);
    }
  }
}

TEST(ArchTrain, ResumeIsBitExactForEveryArchitecture) {
  for (const Variant& v : kVariants) {
    SCOPED_TRACE(v.name);
    TempDir dir(std::string("arch_resume_") + v.name);
    const TrainResult r =
        expect_resume_is_bit_exact([&](const std::string& out) { return tiny_config(v, out); }, dir);
    EXPECT_EQ(r.steps, 40);
    // The run actually used its architecture's machinery.
    const std::string csv = read_file(dir.str("full/metrics.csv"));
    EXPECT_NE(csv.find("aux_loss"), std::string::npos);
    if (std::string(v.architecture) == "topk") {
      Checkpoint done = load_checkpoint(dir.str("full/sae"), Device::CPU);
      int64_t dead = 0;
      for (int64_t last : done.state->last_fired) dead += done.state->tokens - last >= 100;
      EXPECT_GT(dead, 0) << "AuxK never had a dead latent to work on";
    }
  }
}

TEST(ArchTrain, ExportsInSaelensLayoutAndLoadsBack) {
  for (const Variant& v : kVariants) {
    SCOPED_TRACE(v.name);
    TempDir dir(std::string("arch_export_") + v.name);
    TrainConfig c = tiny_config(v, dir.str("run"));
    c.steps = 12;
    train(c);
    const std::string model = dir.str("run/sae");
    const Json cfg = Json::parse(read_file(model + "/cfg.json"));
    SafetensorsFile weights = SafetensorsFile::open(model + "/sae_weights.safetensors");
    std::vector<std::string> want = {"W_dec", "W_enc", "b_dec", "b_enc"};
    const std::string a = v.architecture;
    std::string arch = a;
    if (a == "gated") want = {"W_dec", "W_enc", "b_dec", "b_gate", "b_mag", "r_mag"};
    if (a == "batchtopk" || a == "jumprelu") {
      want.push_back("threshold");
      arch = "jumprelu";
    }
    EXPECT_EQ(weights.names(), want);
    EXPECT_EQ(cfg.at("architecture").as_string(), arch);
    EXPECT_EQ(cfg.at("apply_b_dec_to_input").as_bool(), false);
    EXPECT_EQ(cfg.at("sae_cpp").at("training_architecture").as_string(), a);
    if (a == "topk") {
      EXPECT_EQ(cfg.at("k").as_int(), 3);
      EXPECT_EQ(cfg.at("rescale_acts_by_decoder_norm").as_bool(), false);
    } else {
      EXPECT_FALSE(cfg.has("k"));
    }
    // Loaded back (with the training state: exact), and the folder alone as sae_apply reads it.
    const Checkpoint loaded = load_checkpoint(model, Device::CPU);
    EXPECT_EQ(loaded.params.kind, a);
    const std::vector<double> threshold = weights.has("threshold") ? weights.read_f32("threshold").to_vector()
                                                                   : std::vector<double>{};
    if (a == "batchtopk") {
      const double theta = loaded.params.settings.at("threshold").as_number();
      EXPECT_GT(theta, 0.0);
      for (double t : threshold) EXPECT_EQ(t, static_cast<float>(theta));
      EXPECT_EQ(loaded.params.settings.at("k").as_int(), 3);
    }
    if (a == "jumprelu") {
      const std::vector<double> exact = exp(loaded.params.own_tensor("log_threshold")).to_vector();
      for (size_t i = 0; i < threshold.size(); ++i) EXPECT_EQ(threshold[i], exact[i]);
    }
    Rng rng(3);
    const Tensor x = normal_tensor(Shape{50, 16}, 0.0, 1.0, rng);
    write_npy(dir.str("x.npy"), x);
    auto r = sae::testing::run_binary("sae_apply", "--sae " + quote(model) + " --input " + quote(dir.str("x.npy")) +
                                                       " --raw --features-out " + quote(dir.str("f.npy")) +
                                                       " --reconstruction-out " + quote(dir.str("xhat.npy")),
                                      dir);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const Tensor f = sae_encode(loaded.params, x);
    sae::testing::expect_close_to_scale(NpyFile::open(dir.str("f.npy")).read_rows_f32(0, 50), f, 1e-6, "features");
    sae::testing::expect_close_to_scale(NpyFile::open(dir.str("xhat.npy")).read_rows_f32(0, 50),
                                        sae_decode(loaded.params, f), 1e-6, "reconstruction");
    double active = 0;
    for (double value : f.to_vector()) active += value > 0;
    EXPECT_GT(active, 0.0);
    // --init from the folder continues from its weights; another architecture is refused.
    TrainConfig again = tiny_config(v, dir.str("init"));
    again.init = model;
    again.steps = 1;
    again.lr = 1e-12;
    if (topk_family(a)) again.arch.set("k", Json(0));  // taken from the folder
    train(again);
    const Checkpoint continued = load_checkpoint(dir.str("init/sae"), Device::CPU);
    EXPECT_LT(sae::testing::max_abs_diff(continued.params.W_enc, loaded.params.W_enc), 1e-6);
    TrainConfig other = tiny_config(a == "gated" ? "standard" : "gated", dir.str("other"));
    other.init = model;
    EXPECT_THROW(train(other), UsageError);
  }
}

TEST(ArchTrain, OldConfigFilesMeanTheStandardSae) {
  // A config.json from before the architectures: every new key absent.
  TrainConfig c;
  Json j = c.to_json();
  Json old = Json::object();
  for (const auto& [key, value] : j.items()) {
    bool is_new = false;
    for (const char* name : {"architecture", "k", "auxk_coefficient", "auxk_k", "unit_norm_decoder", "init_tied",
                             "init_b_dec", "jumprelu_penalty", "jumprelu_bandwidth", "jumprelu_tanh_c",
                             "jumprelu_pre_act", "jumprelu_init_threshold", "batchtopk_threshold_lr"})
      is_new = is_new || key == name;
    if (!is_new) old[key] = value;
  }
  ASSERT_LT(old.size(), j.size());
  const TrainConfig back = TrainConfig::from_json(old);
  EXPECT_EQ(back.architecture, "standard");
  EXPECT_EQ(run_identity(back), run_identity(c));
  EXPECT_EQ(TrainConfig::from_json(j).architecture, "standard");
  c.architecture = "topk";
  c.arch.set("k", Json(7));
  EXPECT_EQ(TrainConfig::from_json(c.to_json()).arch.at("k").as_int(), 7);
  EXPECT_EQ(TrainConfig::from_json(c.to_json()).architecture, "topk");
}

TEST(ArchTrain, OptionsThatDoNotApplyOrAreOutOfRangeGetOneLine) {
  const std::string tiny =
      " --synthetic-d 8 --synthetic-concepts 12 --synthetic-story-concepts 2 --synthetic-story-active 1"
      " --synthetic-stories 50 --synthetic-mean-length 8 --synthetic-active 2 --features 16 --lr 1e-3"
      " --steps 3 --progress none --device cpu";
  struct Case {
    std::string args, mention;
  };
  const std::vector<Case> cases = {
      {"--architecture topk --k 17", "--k must be in [1, 16]"},
      {"--architecture topk --k=-1", "--k must be in [1, 16]"},
      {"--architecture batchtopk", "--k is required"},
      {"--k 4", "--k applies only to"},
      {"--architecture gated --k 4", "--k applies only to"},
      {"--architecture topk --k 2 --l1 3", "--l1 does not apply to --architecture topk"},
      {"--architecture topk --k 2 --l1-warmup-steps 10", "--l1-warmup-steps does not apply"},
      {"--architecture jumprelu --auxk-k 3", "--auxk-k applies only to"},
      {"--auxk-coefficient 0.5", "--auxk-coefficient applies only to"},
      {"--architecture topk --k 2 --auxk-coefficient=-1", "--auxk-coefficient must be"},
      {"--architecture topk --k 2 --auxk-k 99", "--auxk-k must be in"},
      {"--architecture topk --k 2 --batchtopk-threshold-lr 0.1", "--batchtopk-threshold-lr applies only to"},
      {"--architecture batchtopk --k 2 --batchtopk-threshold-lr 2", "--batchtopk-threshold-lr must be in"},
      {"--architecture jumprelu --jumprelu-tanh-c 2", "--jumprelu-tanh-c applies only to"},
      {"--architecture jumprelu --jumprelu-pre-act 0.1", "--jumprelu-pre-act applies only to"},
      {"--architecture gated --jumprelu-bandwidth 0.1", "--jumprelu-bandwidth applies only to"},
      {"--architecture jumprelu --jumprelu-bandwidth 0", "--jumprelu-bandwidth must be"},
      {"--architecture jumprelu --jumprelu-init-threshold=-1", "--jumprelu-init-threshold must be"},
      // float32 values in training: 1e39 made every threshold inf, an --eps of 1e-50 made Adam's 0/0
      // NaN thresholds, saved with exit 0
      {"--architecture jumprelu --jumprelu-init-threshold 1e39", "--jumprelu-init-threshold must be"},
      {"--architecture jumprelu --jumprelu-bandwidth 1e-40", "--jumprelu-bandwidth must be"},
      {"--architecture jumprelu --eps 1e-50", "--eps must be in"},
      {"--unit-norm-decoder", "--unit-norm-decoder applies only to"},
      {"--architecture topk --k 2 --sparse off", "--sparse applies only to --architecture standard"},
      {"--architecture lasso", "--architecture: expected"},
      {"--architecture jumprelu --jumprelu-penalty l2", "--jumprelu-penalty: expected"},
      {"--unit-norm-decoder=maybe", "--unit-norm-decoder: expected"},
      {"--init-b-dec mean", "--init-b-dec: expected"},
  };
  for (const Case& c : cases) {
    TempDir dir("arch_cli");
    auto r = sae::testing::run_binary("sae_train", tiny + " " + c.args + " --out " + dir.str("run"), dir);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\nstderr: " << r.err;
    EXPECT_NE(r.err.find(c.mention), std::string::npos) << c.args << "\nstderr: " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_FALSE(fs::exists(dir.str("run/config.json"))) << c.args;
  }
  // And the same options where they apply run.
  TempDir dir("arch_cli_ok");
  for (const std::string args :
       {"--architecture topk --k 2 --auxk-k 3 --unit-norm-decoder=off --init-b-dec zero",
        "--architecture batchtopk --k 2 --batchtopk-threshold-lr 0.1", "--architecture gated --l1 0.5 --init-tied=off",
        "--architecture jumprelu --l1 0.1 --jumprelu-penalty tanh --jumprelu-tanh-c 2 --jumprelu-pre-act 0.1",
        "--init-tied --init-b-dec geometric_median"}) {
    auto r = sae::testing::run_binary("sae_train", tiny + " " + args + " --out " + dir.str("ok"), dir);
    EXPECT_EQ(r.exit_code, 0) << args << "\nstderr: " << r.err;
    fs::remove_all(dir.str("ok"));
  }
}

TEST(ArchTrain, CentredRunsResumeExactlyAndTheirFoldersComputeWhatTheyTrained) {
  // --apply-b-dec-to-input: the folder says apply_b_dec_to_input (SAELens centres as it loads it),
  // its weights are as trained; load_checkpoint folds b_dec W_enc into the encoder's biases (the SAE
  // of x that sae_apply and the rest encode with) and keeps the trained vectors aside, with which a
  // resume goes on exactly and the centred step computes the folder's features.
  for (const std::string a : {"standard", "topk", "gated", "jumprelu"}) {
    SCOPED_TRACE(a);
    TempDir dir("arch_centred_" + a);
    auto centred = [&](const std::string& out) {
      TrainConfig c = tiny_config(a, out);
      c.apply_b_dec_to_input = true;
      return c;
    };
    expect_resume_is_bit_exact(centred, dir);

    const std::string model = dir.str("full/sae");
    const Json cfg = Json::parse(read_file(model + "/cfg.json"));
    EXPECT_EQ(cfg.at("apply_b_dec_to_input").as_bool(), true);
    const Checkpoint loaded = load_checkpoint(model, Device::CPU);
    ASSERT_TRUE(loaded.state.has_value());
    SaeParams trained = loaded.params.clone();
    for (const auto& [name, exact] : loaded.state->centred_params)
      for (auto& [have, param] : trained.present())
        if (have == name) *param = exact;
    EXPECT_GT(max_abs(trained.b_dec), 1e-3);  // b_dec moved: the centring is not a no-op
    // The centred step on the trained vectors computes the features of the folded SAE of x.
    Rng rng(4);
    const Tensor x = normal_tensor(Shape{50, 16}, 0.0, 1.0, rng);
    SaeStep step(arch_unit(a), arch_settings(tiny_config(a, "")), 50, 16, 32, DType::F32, Device::CPU);
    step.set_input_centring(true);
    step.forward(trained, x, 0.0);
    const Tensor f = sae_encode(loaded.params, x);
    sae::testing::expect_close_to_scale(step.features(), f, 1e-5, "features: the centred step vs the folded SAE");
    double active = 0;
    for (double value : f.to_vector()) active += value > 0;
    EXPECT_GT(active, 0.0);
    // Without the centring the trained vectors encode otherwise (the fold is not a no-op either).
    SaeStep plain(arch_unit(a), arch_settings(tiny_config(a, "")), 50, 16, 32, DType::F32, Device::CPU);
    plain.forward(trained, x, 0.0);
    EXPECT_GT(max_abs(sub(plain.features(), f)), 1e-3);
    // --init from the folder into a centred run starts from the same function (its shift taken back out).
    TrainConfig again = centred(dir.str("init"));
    again.init = model;
    again.steps = 1;
    again.lr = 1e-12;
    if (topk_family(a)) again.arch.set("k", Json(0));
    train(again);
    const Checkpoint continued = load_checkpoint(dir.str("init/sae"), Device::CPU);
    EXPECT_LT(max_abs(sub(sae_encode(continued.params, x), f)), 1e-4 * std::max(1.0, max_abs(f)));
    for (const auto& [name, exact] : continued.state->centred_params)
      if (name == "b_dec") {
        EXPECT_LT(max_abs(sub(exact, trained.b_dec)), 1e-6);
      }
  }
  // A checkpoint whose cfg.json no longer says it was centred (edited) is not resumed as if its folded
  // SAE were the trained one: the run's files disagree (exit 1); the other way round its state lacks
  // the trained vectors.
  for (const bool centred : {true, false}) {
    TempDir edited(centred ? "arch_centred_edited" : "arch_plain_edited");
    TrainConfig c = tiny_config("standard", edited.str("run"));
    c.apply_b_dec_to_input = centred;
    c.steps = 12;
    c.checkpoint_every = 5;
    train(c);
    const std::string cfg_path = edited.str("run/checkpoints/step_10/cfg.json");
    Json cfg = Json::parse(read_file(cfg_path));
    cfg["sae_cpp"]["apply_b_dec_to_input"] = !centred;
    if (centred) cfg["sae_cpp"].erase("apply_b_dec_to_input");
    std::ofstream(cfg_path) << cfg.dump(2) << "\n";
    fs::remove_all(edited.str("run/sae"));
    TrainConfig rest = tiny_config("standard", "");
    rest.resume = edited.str("run");
    rest.steps = 20;
    try {
      train(rest);
      ADD_FAILURE() << "resumed a checkpoint whose cfg.json was edited (centred " << centred << ")";
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find("apply_b_dec_to_input"), std::string::npos) << e.what();
    }
  }
  // An SAE's only: a transcoder's b_dec is not of its input; also when the transcoder comes from --init
  // (refused as a usage error, not the shift's product of mismatched widths).
  TempDir dir("arch_centred_transcoder");
  Rng rng(6);
  write_npy(dir.str("x.npy"), normal_tensor(Shape{200, 16}, 0.0, 1.0, rng));
  write_npy(dir.str("y.npy"), normal_tensor(Shape{200, 8}, 0.0, 1.0, rng));
  TrainConfig made = tiny_config("standard", dir.str("made"));
  made.data = dir.str("x.npy");
  made.target_data = dir.str("y.npy");
  made.normalize = Normalization::None;
  made.steps = 2;
  train(made);
  TrainConfig from = made;
  from.out = dir.str("from");
  from.init = dir.str("made/sae");
  from.apply_b_dec_to_input = true;
  try {
    train(from);
    ADD_FAILURE() << "a centred run from a transcoder was accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--apply-b-dec-to-input: an SAE's only"), std::string::npos) << e.what();
  }
  TrainConfig transcoder = tiny_config("standard", "unused");
  transcoder.data = "x.npy";
  transcoder.target_data = "y.npy";
  transcoder.apply_b_dec_to_input = true;
  try {
    transcoder.validate();
    ADD_FAILURE() << "a centred transcoder was accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--apply-b-dec-to-input: an SAE's only: a transcoder's b_dec"),
              std::string::npos)
        << e.what();
  }
}
