// Checkpoint files from hostile or damaged sources: every field of the training state is range
// checked (a NaN or 1e300 clock never reaches an int64 conversion; negative counts, a negative
// dataset scale are refused), weights are checked element by element (large finite values are
// fine, a NaN is named), errors name the file, and a program that needs only the weights does not
// fail on a damaged training state.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "sae/arch/registry.h"
#include "sae/arch/sae_step.h"
#include "sae/train/arch_config.h"
#include "sae/train/checkpoint.h"
#include "tensor/ops.h"
#include "tests/util/errors.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::TempDir;
namespace fs = std::filesystem;

namespace {

TrainingState valid_state(const SaeParams& p) {
  TrainingState st;
  st.step = 7;
  st.tokens = 700;
  st.dataset_scale = 1.5;
  st.batcher = Json::object();
  st.batcher["mode"] = "story";
  st.last_fired.assign(static_cast<size_t>(p.d_sae()), 650);
  st.adam = SaeAdamState::zeros_like(p);
  st.adam.steps = 7;
  return st;
}

// Saves a checkpoint whose training state is `st`, then expects load_checkpoint to refuse it with
// a message naming the state file and containing `mention`.
void expect_state_refused(const SaeParams& p, const TrainingState& st, const std::string& mention, const TempDir& dir,
                          const std::string& name) {
  const std::string ckpt = dir.str(name);
  save_checkpoint(ckpt, p, Json::object(), &st);
  try {
    load_checkpoint(ckpt, Device::CPU);
    ADD_FAILURE() << name << ": accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(ckpt + "/training_state.safetensors"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(mention), std::string::npos) << e.what();
  }
  // Without the state (what sae_apply and --init read) the same folder loads.
  EXPECT_EQ(load_checkpoint(ckpt, Device::CPU, /*with_state=*/false).params.d_sae(), p.d_sae());
}

}  // namespace

TEST(CheckpointFiles, TrainingStateFieldsAreRangeChecked) {
  TempDir dir("ckpt_state");
  Rng rng(3);
  const SaeParams p = SaeParams::standard_init(4, 6, rng);
  // The valid state round-trips.
  save_checkpoint(dir.str("good"), p, Json::object(), [&] {
    static TrainingState st = valid_state(p);
    return &st;
  }());
  Checkpoint good = load_checkpoint(dir.str("good"), Device::CPU);
  ASSERT_TRUE(good.state.has_value());
  EXPECT_EQ(good.state->last_fired, std::vector<int64_t>(6, 650));
  EXPECT_EQ(good.state->adam.steps, 7);

  // Clocks: the state file stores them as F64; write hostile values through the same writer.
  for (double clock : {std::nan(""), 1e300, -1.0, 2.5, 701.0}) {
    TrainingState st = valid_state(p);
    const std::string ckpt = dir.str("clock");
    save_checkpoint(ckpt, p, Json::object(), &st);
    // Rewrite last_fired with the hostile value (the writer itself only takes int64 clocks).
    SafetensorsFile file = SafetensorsFile::open(ckpt + "/training_state.safetensors");
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const std::string& name : file.names())
      if (name != "last_fired") tensors.push_back({name, file.read_f32(name)});
    tensors.push_back({"last_fired", Tensor::full(Shape{6}, clock, DType::F64)});
    const auto metadata = file.metadata();
    write_safetensors(ckpt + "/training_state.safetensors", tensors, metadata);
    try {
      load_checkpoint(ckpt, Device::CPU);
      ADD_FAILURE() << "clock " << clock << " accepted";
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find("last_fired[0]"), std::string::npos) << e.what();
    }
  }
  // Adam's moments: finite, and v >= 0 (a corrupt state would diverge at once, blamed on --lr).
  for (const auto& [moment, value] : {std::pair<const char*, double>{"m", NAN}, {"v", -1.0}, {"v", INFINITY}}) {
    TrainingState st = valid_state(p);
    SaeParams& target = moment[0] == 'm' ? st.adam.m : st.adam.v;
    target.W_dec = Tensor::full(target.W_dec.shape(), value);
    expect_state_refused(p, st, cat("adam_", moment, ".W_dec holds ", value, " at element 0"), dir,
                         cat("moment_", moment, value));
  }
  TrainingState negative = valid_state(p);
  negative.tokens = -5;
  negative.last_fired.assign(6, 0);
  expect_state_refused(p, negative, "must be >= 0", dir, "negative_tokens");
  TrainingState scale = valid_state(p);
  scale.dataset_scale = -1;
  expect_state_refused(p, scale, "dataset_scale must be a positive number", dir, "negative_scale");
}

TEST(CheckpointFiles, WeightsAreCheckedElementByElement) {
  TempDir dir("ckpt_weights");
  Rng rng(4);
  SaeParams p = SaeParams::standard_init(4, 6, rng);
  // Large but finite weights: their sum overflows float32, yet nothing is wrong with them.
  fill_(p.W_dec, 3e38);
  save_checkpoint(dir.str("large"), p, Json::object(), nullptr);
  EXPECT_NO_THROW(load_checkpoint(dir.str("large"), Device::CPU));
  // A NaN is not saved (the folder there before stays as it was) ...
  save_checkpoint(dir.str("nan"), p, Json::object(), nullptr);
  const std::string good = sae::testing::read_file(dir.str("nan/sae_weights.safetensors"));
  p.W_enc.data<float>()[5] = std::nanf("");
  try {
    save_checkpoint(dir.str("nan"), p, Json::object(), nullptr);
    FAIL() << "NaN weights saved";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(dir.str("nan") + ": not saved: the SAE's W_enc holds nan at element 5"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(sae::testing::read_file(dir.str("nan/sae_weights.safetensors")), good);
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path), std::filesystem::directory_iterator()),
            2);  // large/ and nan/: no temporary folder left
  // ... and one written by something else is refused, naming the file, the tensor and the element.
  write_safetensors(dir.str("nan/sae_weights.safetensors"), folder_weights(p, Json::object()));
  try {
    load_checkpoint(dir.str("nan"), Device::CPU);
    FAIL() << "NaN weights accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(dir.str("nan") + "/sae_weights.safetensors: W_enc holds nan at element 5"),
              std::string::npos)
        << e.what();
  }
}

TEST(CheckpointFiles, ConfigErrorsNameTheFile) {
  TempDir dir("ckpt_cfg");
  Rng rng(5);
  const SaeParams p = SaeParams::standard_init(4, 6, rng);
  save_checkpoint(dir.str("c"), p, Json::object(), nullptr);
  std::ofstream(dir.str("c/cfg.json"), std::ios::trunc) << R"({"architecture": 3, "d_in": 4})";
  try {
    load_checkpoint(dir.str("c"), Device::CPU);
    FAIL() << "accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(dir.str("c/cfg.json")), std::string::npos) << e.what();
  }
  std::ofstream(dir.str("c/cfg.json"), std::ios::trunc) << R"({"d_in": "four"})";
  EXPECT_THROW(load_checkpoint(dir.str("c"), Device::CPU), DataError);
  // Our per_story beside another normalisation of ours: says what it goes with (it said per_story
  // is not supported while listing it as supported).
  Json extra = Json::object();
  extra["normalization"] = "none";
  save_checkpoint(dir.str("s"), p, extra, nullptr);
  Json cfg = read_json_file(dir.str("s/cfg.json"));
  cfg["normalize_activations"] = "per_story";
  std::ofstream(dir.str("s/cfg.json"), std::ios::trunc) << cfg.dump(2);
  try {
    load_checkpoint(dir.str("s"), Device::CPU);
    FAIL() << "accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("\"per_story\" goes with sae_cpp.normalization \"story\""),
              std::string::npos) << e.what();
  }
}

TEST(CheckpointFiles, AnEmptySaeIsRefused) {
  // Found by make fuzz (fuzz/regressions/checkpoint/empty_sae_*): W_enc [0, 6] or [4, 0] loaded.
  TempDir dir("ckpt_empty");
  Rng rng(6);
  for (const auto& [d, f] : {std::pair<int64_t, int64_t>{0, 6}, {4, 0}}) {
    const std::string ckpt = dir.str(cat("sae_", d, "_", f));
    save_checkpoint(ckpt, SaeParams::standard_init(4, 6, rng), Json::object(), nullptr);
    std::ofstream(ckpt + "/cfg.json", std::ios::trunc) << "{}";
    write_safetensors(ckpt + "/sae_weights.safetensors",
                      {{"W_enc", Tensor::zeros(Shape{d, f})}, {"W_dec", Tensor::zeros(Shape{f, d})},
                       {"b_enc", Tensor::zeros(Shape{f})}, {"b_dec", Tensor::zeros(Shape{d})}});
    try {
      load_checkpoint(ckpt, Device::CPU);
      ADD_FAILURE() << d << " x " << f << " accepted";
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find(ckpt + "/sae_weights.safetensors: an SAE needs d_in >= 1 and d_sae >= 1"),
                std::string::npos)
          << e.what();
    }
  }
}

TEST(CheckpointFiles, JumpReluThresholdsAreReadAsTheFolderStatesThem) {
  // A JumpReLU folder (SAELens's format, Gemma Scope's too) states each threshold theta; we train
  // log theta, and exp(log theta) gives back only about half of the float32 thetas exactly. Inference
  // (encode) and a re-export must use theta as stated: a pre-activation equal to theta is cut, the
  // next float above it kept. Latents are picked where exp(log theta) falls below theta (then P =
  // theta would wrongly pass) and above it (then P = next(theta) would wrongly be cut).
  std::vector<double> theta, pre;
  int below = 0, above = 0;
  for (int i = 0; below + above < 64 && i < 100000; ++i) {
    const float t = 0.01f + 0.0007f * float(i);
    const float back = std::exp(std::log(t));  // what exp(log_threshold) gives (float32)
    if (back < t && below < 32) {
      ++below;
      theta.push_back(t);
      pre.push_back(t);  // must be cut: P > theta is false
    } else if (back > t && above < 32) {
      ++above;
      theta.push_back(t);
      pre.push_back(std::nextafter(t, 1.0f));  // must be kept
    }
  }
  ASSERT_EQ(below + above, 64);
  const int64_t f = 64;
  SaeParams p = SaeParams::from_tensors(Tensor::zeros(Shape{1, f}), Tensor::from_vector(pre, Shape{f}),
                                        Tensor::full(Shape{f, 1}, 1.0), Tensor::zeros(Shape{1}));
  p.kind = "jumprelu";
  const Tensor stated = Tensor::from_vector(theta, Shape{f});
  p.own.push_back({"log_threshold", log(stated)});
  p.stated.push_back({"threshold", stated});
  TempDir dir("ckpt_jumprelu_theta");
  save_checkpoint(dir.str("sae"), p, Json::object(), nullptr);
  EXPECT_EQ(SafetensorsFile::open(dir.str("sae/sae_weights.safetensors")).read_f32("threshold").to_vector(), theta);

  Checkpoint loaded = load_checkpoint(dir.str("sae"), Device::CPU, false);
  const std::vector<double> features = sae_encode(loaded.params, Tensor::full(Shape{1, 1}, 1.0)).to_vector();
  for (int64_t i = 0; i < f; ++i) {
    const bool cut = pre[i] == theta[i];
    EXPECT_EQ(features[i], cut ? 0.0 : pre[i]) << "latent " << i << " theta " << theta[i];
  }
  // The bits survive a move and a latent slice; a training step drops them (log_threshold rules).
  EXPECT_EQ(loaded.params.to(Device::CPU).latent_slice(32, 64).stated.at(0).tensor.to_vector(),
            std::vector<double>(theta.begin() + 32, theta.end()));
  SaeStep step(arch_unit("jumprelu"), arch_settings("jumprelu", {}, 1000000), 1, 1, f, DType::F32, Device::CPU);
  SaeAdamState adam = SaeAdamState::zeros_like(loaded.params);
  EXPECT_TRUE(adam.m.stated.empty());
  step.train_step(loaded.params, adam, Tensor::full(Shape{1, 1}, 1.0), 1e-3, 1e-3);
  EXPECT_TRUE(loaded.params.stated.empty());
  // A folder holding log_threshold beside threshold: refused (it had been read twice, one copy
  // ruling training and the other inference), as SAELens's strict load refuses it.
  {
    const SafetensorsFile file = SafetensorsFile::open(dir.str("sae/sae_weights.safetensors"));
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const std::string& name : file.names()) tensors.push_back({name, file.read_f32(name)});
    tensors.push_back({"log_threshold", log(stated)});
    write_safetensors(dir.str("sae/sae_weights.safetensors"), tensors);
  }
  EXPECT_NE(sae::testing::error_of([&] { load_checkpoint(dir.str("sae"), Device::CPU, false); })
                .find("both threshold and log_threshold"),
            std::string::npos);
}

TEST(CheckpointFiles, SaeLensDefaultsOlderSpellingsAndStrayTensorsAreReadAsSaeLensReadsThem) {
  // SAELens (6.x and its pre-6 conversion) defaults apply_b_dec_to_input to true, turns a pre-6
  // activation_fn "topk" into a TopK SAE, and loads strictly (an unknown tensor is an error).
  TempDir dir("checkpoint_saelens_spellings");
  Rng rng(9);
  const int64_t d = 5, f = 12;
  const SaeParams p = SaeParams::standard_init(d, f, rng);
  save_checkpoint(dir.str("sae"), p, Json::object(), nullptr);
  const std::string cfg_path = dir.str("sae/cfg.json");
  const Json saved = read_json_file(cfg_path);
  auto with_cfg = [&](const std::function<void(Json&)>& edit) {
    Json cfg = Json::object();
    for (const auto& [key, value] : saved.items())
      if (key != "apply_b_dec_to_input" && key != "sae_cpp") cfg[key] = value;  // a folder SAELens wrote
    edit(cfg);
    write_file_atomic(cfg_path, cfg.dump());
  };
  // apply_b_dec_to_input left out: the input is centred, b_enc' = b_enc - b_dec W_enc.
  with_cfg([](Json&) {});
  const SaeParams centred = load_checkpoint(dir.str("sae"), Device::CPU).params;
  const std::vector<double> We = p.W_enc.to_vector(), be = p.b_enc.to_vector(), bd = p.b_dec.to_vector();
  const std::vector<double> got = centred.b_enc.to_vector();
  for (int64_t i = 0; i < f; ++i) {
    double want = be[i];
    for (int64_t j = 0; j < d; ++j) want -= bd[j] * We[j * f + i];
    EXPECT_NEAR(got[i], want, 1e-6) << i;
  }
  // A pre-6 TopK folder: architecture standard, activation_fn topk, k in activation_fn_kwargs.
  with_cfg([](Json& cfg) {
    cfg["apply_b_dec_to_input"] = false;
    cfg["metadata"] = Json::object();
    cfg["activation_fn_str"] = "topk";
    cfg["activation_fn_kwargs"] = Json::parse(R"({"k": 3})");
  });
  const SaeParams topk = load_checkpoint(dir.str("sae"), Device::CPU).params;
  EXPECT_EQ(topk.kind, "topk");
  // SAELens 5.x's runner wrote architecture topk beside activation_fn topk: the same SAE.
  with_cfg([](Json& cfg) {
    cfg["apply_b_dec_to_input"] = false;
    cfg["metadata"] = Json::object();
    cfg["architecture"] = "topk";
    cfg["activation_fn_str"] = "topk";
    cfg["activation_fn_kwargs"] = Json::parse(R"({"k": 3})");
  });
  EXPECT_EQ(load_checkpoint(dir.str("sae"), Device::CPU).params.W_enc.to_vector(), topk.W_enc.to_vector());
  const Tensor features = arch_unit("topk").encode(topk, Tensor::full(Shape{4, d}, 2.0));
  for (int64_t r = 0; r < 4; ++r) EXPECT_LE(reduce(ReduceOp::count_nonzero, features.slice_rows(r, r + 1)).item(), 3.0);
  with_cfg([](Json& cfg) { cfg["activation_fn"] = "tanh-relu"; });
  std::string message = sae::testing::error_of([&] { load_checkpoint(dir.str("sae"), Device::CPU); });
  EXPECT_NE(message.find("activation_fn \"tanh-relu\""), std::string::npos) << message;
  // Pre-6 spellings SAELens's handle_pre_6_0_config converts: hook_point, normalize_activations as a
  // bool or null (false and null: none; true: expected_average_only_in, left alone at inference).
  for (const Json& normalize : {Json(false), Json(), Json(true)}) {
    with_cfg([&](Json& cfg) {
      cfg["apply_b_dec_to_input"] = false;
      cfg.erase("metadata");
      cfg["hook_point"] = "blocks.1.hook_resid_pre";
      cfg["normalize_activations"] = normalize;
    });
    const Checkpoint old = load_checkpoint(dir.str("sae"), Device::CPU);
    EXPECT_EQ(old.cfg.at("hook_name").as_string(), "blocks.1.hook_resid_pre");
    // A flat cfg.json (no sae_lens_version): its model keys are read from metadata, where 6 reads
    // them, and prepend_bos defaults to true, as SAELens's conversion does.
    EXPECT_EQ(old.cfg.at("metadata").at("hook_name").as_string(), "blocks.1.hook_resid_pre");
    EXPECT_TRUE(old.cfg.at("metadata").at("prepend_bos").as_bool());
    EXPECT_EQ(old.cfg.at("normalize_activations").as_string(), normalize == Json(true) ? "expected_average_only_in" : "none");
    EXPECT_EQ(old.params.W_enc.to_vector(), We);
  }
  // Its top-level prepend_bos and context_size (SAELens 3-5) are metadata's, as SAELens reads them;
  // metadata's own win, and a 6.x folder's top level is not read so.
  with_cfg([](Json& cfg) {
    cfg["apply_b_dec_to_input"] = false;
    cfg.erase("metadata");
    cfg["sae_lens_version"] = "5.10.3";
    cfg["prepend_bos"] = false;
    cfg["context_size"] = 16;
  });
  Checkpoint old5 = load_checkpoint(dir.str("sae"), Device::CPU);
  EXPECT_FALSE(old5.cfg.at("metadata").at("prepend_bos").as_bool());
  EXPECT_EQ(old5.cfg.at("metadata").at("context_size").as_int(), 16);
  with_cfg([](Json& cfg) {
    cfg["apply_b_dec_to_input"] = false;
    cfg["context_size"] = 16;  // metadata says sae_lens_version 6.0.0
  });
  EXPECT_FALSE(load_checkpoint(dir.str("sae"), Device::CPU).cfg.at("metadata").has("context_size"));
  // A scaling_factor of ones, which pre-6 SAELens saved, is dropped as SAELens drops it; another is refused.
  with_cfg([](Json& cfg) { cfg["apply_b_dec_to_input"] = false; });
  for (const double factor : {1.0, 2.0}) {
    write_safetensors(dir.str("sae/sae_weights.safetensors"), {{"W_enc", p.W_enc}, {"b_enc", p.b_enc}, {"W_dec", p.W_dec},
                                                               {"b_dec", p.b_dec}, {"scaling_factor", Tensor::full(Shape{f}, factor)}});
    if (factor == 1.0) {
      EXPECT_EQ(load_checkpoint(dir.str("sae"), Device::CPU).params.b_enc.to_vector(), be);
    } else {
      message = sae::testing::error_of([&] { load_checkpoint(dir.str("sae"), Device::CPU); });
      EXPECT_NE(message.find("a scaling_factor other than ones (2)"), std::string::npos) << message;
    }
  }
  // A tensor the SAE does not have.
  std::vector<std::pair<std::string, Tensor>> tensors = {{"W_enc", p.W_enc}, {"b_enc", p.b_enc}, {"W_dec", p.W_dec},
                                                         {"b_dec", p.b_dec}, {"finetuning_scaling_factor", Tensor::full(Shape{1}, 1.0)}};
  write_safetensors(dir.str("sae/sae_weights.safetensors"), tensors);
  message = sae::testing::error_of([&] { load_checkpoint(dir.str("sae"), Device::CPU); });
  EXPECT_NE(message.find("unexpected tensor finetuning_scaling_factor"), std::string::npos) << message;
  // W_skip beside a transcoder without a skip path ("transcoder", not "skip_transcoder").
  tensors.back() = {"W_skip", Tensor::zeros(Shape{d, d})};
  write_safetensors(dir.str("sae/sae_weights.safetensors"), tensors);
  with_cfg([&](Json& cfg) {
    cfg["apply_b_dec_to_input"] = false;
    cfg["architecture"] = "transcoder";
    cfg["d_out"] = d;
  });
  message = sae::testing::error_of([&] { load_checkpoint(dir.str("sae"), Device::CPU); });
  EXPECT_NE(message.find("unexpected tensor W_skip"), std::string::npos) << message;
  // SAELens's training-class BatchTopK folder, which SAELens does not load either: the message says
  // what SAELens saves for inference.
  with_cfg([&](Json& cfg) { cfg["architecture"] = "batchtopk"; });
  message = sae::testing::error_of([&] { load_checkpoint(dir.str("sae"), Device::CPU); });
  EXPECT_NE(message.find("architecture 'batchtopk' is not supported"), std::string::npos) << message;
  EXPECT_NE(message.find("save_inference_model"), std::string::npos) << message;
}
