// A dataset-normalised dictionary's folder holds the SAE of raw activations, as SAELens's folders do
// (its fold_activation_norm_scaling_factor; sae/train/checkpoint.h folder_weights):
//   - SAELens's forward, written here in double from the file's own tensors and run on raw inputs,
//     equals our trained parameters run on scaled inputs, for an SAE, a skip transcoder (input and
//     target scales) and a crosscoder (a scale per source);
//   - with its training state the trained parameters come back bit for bit; without, to a rounding;
//   - W_enc and W_dec folded block by block while written give the whole fold's file byte for byte;
//   - a per-story folder says "per_story", which SAELens refuses, and our readers take it; SAELens's
//     input normalisations that we do not run (layer_norm, constant_norm_rescale) are refused in one
//     line;
//   - fold_decoder_norms, which --init uses before a run that keeps decoder rows at norm 1: the
//     latents scale, the reconstruction stays (standard, jumprelu, gated); TopK cannot.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "sae/data/batches.h"
#include "sae/arch/registry.h"
#include "sae/train/checkpoint.h"
#include "tensor/ops.h"
#include "tensor/rng.h"
#include "tests/util/errors.h"
#include "tests/util/random_inputs.h"
#include "tests/util/standard_sae.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::TempDir;
using sae::testing::error_of;
using sae::testing::random_cpu;

namespace {

struct Case {
  const char* name;
  int64_t d_in, d_out, sources;
  bool transcoder;
  std::vector<double> scales;  // sae_cpp.dataset_scale: one, input and target, or one per source
};

SaeParams make_params(const Case& c, Rng& rng) {
  const int64_t f = 24;
  SaeParams p = SaeParams::from_tensors(random_cpu(Shape{c.d_in, f}, DType::F32, rng, -1, 1),
                                        random_cpu(Shape{f}, DType::F32, rng, -0.3, 0.3),
                                        random_cpu(Shape{f, c.d_in}, DType::F32, rng, -1, 1),
                                        random_cpu(Shape{c.d_in}, DType::F32, rng, -1, 1));
  p.sources = c.sources;
  p.transcoder = c.transcoder;
  if (c.transcoder) {  // its own output width
    p.W_dec = random_cpu(Shape{f, c.d_out}, DType::F32, rng, -1, 1);
    p.b_dec = random_cpu(Shape{c.d_out}, DType::F32, rng, -1, 1);
    p.W_skip = random_cpu(Shape{c.d_in, c.d_out}, DType::F32, rng, -0.5, 0.5);
  }
  return p;
}

Json dataset_extra(const std::vector<double>& scales) {
  Json extra = Json::object();
  extra["normalization"] = "dataset";
  extra["dataset_scale"] = DatasetScales(scales).to_json();
  return extra;
}

TrainingState some_state(const SaeParams& p, const std::vector<double>& scales) {
  TrainingState st;
  st.step = 3;
  st.tokens = 30;
  st.dataset_scale = DatasetScales(scales);
  st.batcher = Json::object();
  st.last_fired.assign(static_cast<size_t>(p.d_sae()), 0);
  st.adam = SaeAdamState::zeros_like(p);
  st.adam.steps = 3;
  return st;
}

std::vector<double> values(const Tensor& t) { return t.to_vector(); }

}  // namespace

TEST(CheckpointFolding, TheFolderIsTheSaeOfRawActivationsAsSaeLensReadsIt) {
  const Case cases[] = {{"sae", 6, 6, 1, false, {2.5}},
                        {"skip_transcoder", 6, 4, 1, true, {0.3, 7.0}},
                        {"crosscoder", 8, 8, 2, false, {1.7, 0.45}}};
  TempDir dir("checkpoint_folding");
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    Rng rng(41);
    const SaeParams p = make_params(c, rng);
    const std::string folder = dir.str(c.name);
    const TrainingState st = some_state(p, c.scales);
    save_checkpoint(folder, p, dataset_extra(c.scales), &st);
    const Json cfg = read_json_file(folder + "/cfg.json");
    EXPECT_EQ(cfg.at("normalize_activations").as_string(), "none");
    EXPECT_TRUE(cfg.at("sae_cpp").at("dataset_scale_folded").as_bool());

    // SAELens on raw x, from the file: f = relu(x W_enc + b_enc), y = f W_dec + b_dec (+ x W_skip^T).
    const SafetensorsFile file = SafetensorsFile::open(folder + "/sae_weights.safetensors");
    const std::vector<double> We = values(file.read_f32("W_enc")), be = values(file.read_f32("b_enc")),
                              Wd = values(file.read_f32("W_dec")), bd = values(file.read_f32("b_dec"));
    const std::vector<double> Ws = c.transcoder ? values(file.read_f32("W_skip")) : std::vector<double>{};
    // Ours: the trained tensors on x scaled per input block, the output divided per output block.
    const std::vector<double> pe = values(p.W_enc), pbe = values(p.b_enc), pd = values(p.W_dec), pbd = values(p.b_dec);
    const std::vector<double> ps = c.transcoder ? values(p.W_skip) : std::vector<double>{};
    const int64_t D = c.d_in, O = c.d_out, F = p.d_sae();
    auto in_scale = [&](int64_t j) { return c.transcoder ? c.scales[0] : c.scales[j / (D / c.sources)]; };
    auto out_scale = [&](int64_t j) { return c.transcoder ? c.scales[1] : c.scales[j / (O / c.sources)]; };
    for (int token = 0; token < 5; ++token) {
      std::vector<double> x(D);
      for (double& v : x) v = 3 * rng.normal();
      std::vector<double> f_raw(F), f_ours(F);
      for (int64_t i = 0; i < F; ++i) {
        double a = be[i], b = pbe[i];
        for (int64_t j = 0; j < D; ++j) a += x[j] * We[j * F + i], b += x[j] * in_scale(j) * pe[j * F + i];
        f_raw[i] = std::max(a, 0.0), f_ours[i] = std::max(b, 0.0);
        EXPECT_NEAR(f_raw[i], f_ours[i], 1e-5 * (1 + std::abs(f_ours[i]))) << "feature " << i;
      }
      for (int64_t o = 0; o < O; ++o) {
        double a = bd[o], b = pbd[o];
        for (int64_t i = 0; i < F; ++i) a += f_raw[i] * Wd[i * O + o], b += f_ours[i] * pd[i * O + o];
        if (c.transcoder)
          for (int64_t j = 0; j < D; ++j) a += x[j] * Ws[o * D + j], b += x[j] * in_scale(j) * ps[j * O + o];
        b /= out_scale(o);
        EXPECT_NEAR(a, b, 1e-5 * (1 + std::abs(b))) << "output " << o;
      }
    }

    // The trained tensors: exactly with the state, to a rounding without it.
    const Checkpoint resumed = load_checkpoint(folder, Device::CPU, true);
    for (const auto& [name, t] : p.present()) {
      const Tensor* back = nullptr;
      for (const auto& [other, u] : resumed.params.present())
        if (other == name) back = u;
      ASSERT_NE(back, nullptr) << name;
      EXPECT_EQ(values(*back), values(*t)) << name;
    }
    const Checkpoint applied = load_checkpoint(folder, Device::CPU, false);
    const std::vector<double> want = values(p.W_dec), got = values(applied.params.W_dec);
    for (size_t k = 0; k < want.size(); ++k) EXPECT_NEAR(got[k], want[k], 2e-7 * std::abs(want[k])) << k;
  }
}

TEST(CheckpointFolding, FoldedWeightsWrittenBlockByBlockAreTheWholeFoldByteForByte) {
  // save_checkpoint scales W_enc and W_dec while it writes them (the plan says so: no folded copy of
  // them is made); the file must be the one written from folder_weights (the whole SAE folded first),
  // for every unit's export (JumpReLU's threshold, BatchTopK's, a crosscoder's blocks), with rows past
  // one 16 MiB block (F 8200 x d 520), and for a skip transcoder (W_skip folded whole).
  TempDir dir("checkpoint_folding_blocks");
  struct Unit {
    const char* name;
    std::vector<std::pair<std::string, Json>> given;
    int64_t d, f;
    std::vector<double> scales;
  };
  const Unit units[] = {{"standard", {}, 6, 24, {2.5}},
                        {"jumprelu", {{"jumprelu-init-threshold", Json(0.3)}}, 6, 24, {0.7}},
                        {"batchtopk", {{"k", Json(3)}}, 8, 24, {1.7, 0.45}},
                        {"topk", {{"k", Json(3)}}, 520, 8200, {3.0}}};
  for (const Unit& u : units) {
    SCOPED_TRACE(u.name);
    Rng rng(43);
    std::vector<std::pair<std::string, Json>> given = u.given;
    given.push_back({"init-b-dec", Json("zero")});
    SaeParams p = arch_unit(u.name).initial_params(sae::testing::unit_settings(u.name, given), u.d, u.f, rng, {});
    p.sources = static_cast<int64_t>(u.scales.size());
    p.b_dec = random_cpu(Shape{u.d}, DType::F32, rng, -1, 1);
    const Json extra = dataset_extra(u.scales);
    EXPECT_EQ(plan_folder_weights(p, extra).scaled_while_written.size(), 2u);
    save_checkpoint(dir.str(u.name), p, extra, nullptr);
    write_safetensors(dir.str(cat(u.name, ".safetensors")), folder_weights(p, extra));
    EXPECT_EQ(sae::testing::read_file(dir.str(cat(u.name, "/sae_weights.safetensors"))),
              sae::testing::read_file(dir.str(cat(u.name, ".safetensors"))));
  }
  {
    Rng rng(45);
    const SaeParams p = make_params({"skip_transcoder", 6, 4, 1, true, {0.3, 7.0}}, rng);
    const Json extra = dataset_extra({0.3, 7.0});
    EXPECT_EQ(plan_folder_weights(p, extra).scaled_while_written.size(), 2u);
    save_checkpoint(dir.str("skip"), p, extra, nullptr);
    write_safetensors(dir.str("skip.safetensors"), folder_weights(p, extra));
    EXPECT_EQ(sae::testing::read_file(dir.str("skip/sae_weights.safetensors")),
              sae::testing::read_file(dir.str("skip.safetensors")));
  }
  // A value the fold makes infinite (W_enc's rows times the scale: 3e38 x 2.5): not saved, the
  // element named, no folder left.
  Rng rng(44);
  SaeParams p = make_params({"sae", 6, 6, 1, false, {2.5}}, rng);
  p.W_enc.data<float>()[7] = 3e38f;
  const std::string message = error_of([&] { save_checkpoint(dir.str("inf"), p, dataset_extra({2.5}), nullptr); });
  EXPECT_NE(message.find(dir.str("inf") + ": not saved: the SAE's W_enc holds inf at element 7"), std::string::npos)
      << message;
  EXPECT_FALSE(std::filesystem::exists(dir.str("inf")));
}

TEST(CheckpointFolding, FoldersSayTheirNormalisationAndOnesWeDoNotRunAreRefused) {
  TempDir dir("checkpoint_story");
  Rng rng(5);
  const SaeParams p = make_params({"sae", 6, 6, 1, false, {1.0}}, rng);
  Json story = Json::object();
  story["normalization"] = "story";
  save_checkpoint(dir.str("story"), p, story, nullptr);
  Json cfg = read_json_file(dir.str("story/cfg.json"));
  EXPECT_EQ(cfg.at("normalize_activations").as_string(), "per_story");
  EXPECT_FALSE(cfg.at("sae_cpp").has("dataset_scale_folded"));
  EXPECT_EQ(values(load_checkpoint(dir.str("story"), Device::CPU).params.W_enc), values(p.W_enc));  // not folded
  // A per-token run says SAELens's name, which SAELens applies at inference as we do.
  for (const char* kind : {"layer_norm", "constant_norm_rescale"}) {
    Json per_token = Json::object();
    per_token["normalization"] = kind;
    save_checkpoint(dir.str(kind), p, per_token, nullptr);
    const Checkpoint back = load_checkpoint(dir.str(kind), Device::CPU);
    EXPECT_EQ(back.cfg.at("normalize_activations").as_string(), kind);
    EXPECT_EQ(normalization_name(trained_normalization(back.cfg, "cfg.json").kind), std::string(kind));
    EXPECT_EQ(values(back.params.W_enc), values(p.W_enc));
  }

  save_checkpoint(dir.str("plain"), p, Json::object(), nullptr);
  const std::string cfg_path = dir.str("plain/cfg.json");
  cfg = read_json_file(cfg_path);
  for (const char* kind : {"unit_norm", "per_story"}) {
    cfg["normalize_activations"] = kind;  // per_story without sae_cpp's story normalisation, too
    write_file_atomic(cfg_path, cfg.dump());
    const std::string message = error_of([&] { load_checkpoint(dir.str("plain"), Device::CPU); });
    const std::string expected = std::string(kind) == "per_story" ? "normalize_activations \"per_story\" goes with"
                                                                  : cat("normalize_activations \"", kind, "\" is not supported");
    EXPECT_NE(message.find(expected), std::string::npos) << message;
    EXPECT_NE(message.find(cfg_path), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
  // SAELens's per-token normalisations are read (applied by trained_normalization's readers); one
  // that disagrees with sae_cpp.normalization is refused.
  for (const char* kind : {"none", "layer_norm", "constant_norm_rescale"}) {
    cfg["normalize_activations"] = kind;
    write_file_atomic(cfg_path, cfg.dump());
    EXPECT_EQ(values(load_checkpoint(dir.str("plain"), Device::CPU).params.W_enc), values(p.W_enc)) << kind;
  }
  // A SAELens 6 training checkpoint keeps its inputs' scale apart (activation_scaler.json beside
  // cfg.json; the final save folds it in and says none): folded as SAELens folds it, W_enc times s,
  // W_dec and b_dec over s. Without the file the scale is unknown, and whitening is not run: refused.
  cfg["normalize_activations"] = "expected_average_only_in";
  write_file_atomic(cfg_path, cfg.dump());
  EXPECT_NE(error_of([&] { load_checkpoint(dir.str("plain"), Device::CPU); })
                .find("without the activation_scaler.json of a SAELens training checkpoint"),
            std::string::npos);
  write_file_atomic(dir.str("plain/activation_scaler.json"), R"({"scaling_factor": 2.5})");
  const Checkpoint scaled = load_checkpoint(dir.str("plain"), Device::CPU);
  EXPECT_EQ(scaled.cfg.at("normalize_activations").as_string(), "none");
  const std::vector<double> we = values(p.W_enc), wd = values(p.W_dec), bd = values(p.b_dec);
  const std::vector<double> got_we = values(scaled.params.W_enc), got_wd = values(scaled.params.W_dec),
                            got_bd = values(scaled.params.b_dec);
  for (size_t i = 0; i < we.size(); ++i) EXPECT_EQ(got_we[i], float(we[i] * 2.5)) << i;
  for (size_t i = 0; i < wd.size(); ++i) EXPECT_EQ(got_wd[i], float(wd[i] / 2.5)) << i;
  for (size_t i = 0; i < bd.size(); ++i) EXPECT_EQ(got_bd[i], float(bd[i] / 2.5)) << i;
  write_file_atomic(dir.str("plain/activation_scaler.json"), R"({"scaling_factor": null})");  // never estimated
  EXPECT_EQ(values(load_checkpoint(dir.str("plain"), Device::CPU).params.W_enc), values(p.W_enc));
  write_file_atomic(dir.str("plain/activation_scaler.json"), R"({"scaling_factor": -1})");
  EXPECT_NE(error_of([&] { load_checkpoint(dir.str("plain"), Device::CPU); }).find("activation_scaler.json: expected"),
            std::string::npos);
  std::filesystem::remove(dir.str("plain/activation_scaler.json"));
  cfg["normalize_activations"] = "covariance_whitening";
  write_file_atomic(cfg_path, cfg.dump());
  EXPECT_NE(error_of([&] { load_checkpoint(dir.str("plain"), Device::CPU); })
                .find("\"covariance_whitening\" is a SAELens training checkpoint's"),
            std::string::npos);
  cfg["normalize_activations"] = "layer_norm";
  cfg["sae_cpp"]["normalization"] = "dataset";
  write_file_atomic(cfg_path, cfg.dump());
  EXPECT_NE(error_of([&] { load_checkpoint(dir.str("plain"), Device::CPU); })
                .find("normalize_activations \"layer_norm\" and sae_cpp.normalization \"dataset\" disagree"),
            std::string::npos);
}

TEST(DecoderNormFolding, LatentsScaleAndTheReconstructionStays) {
  // fold_decoder_norms (for --init into a run that keeps decoder rows at norm 1): rows at norm 1,
  // each latent n_i times as large, x_hat the same; a TopK SAE says it cannot.
  Rng rng(8);
  const int64_t d = 6, f = 10, n = 7;
  const Tensor x = random_cpu(Shape{n, d}, DType::F32, rng, -2, 2);
  for (const char* kind : {"standard", "jumprelu", "gated", "topk"}) {
    SCOPED_TRACE(kind);
    SaeParams p = SaeParams::from_tensors(random_cpu(Shape{d, f}, DType::F32, rng, -1, 1),
                                          random_cpu(Shape{f}, DType::F32, rng, -0.2, 0.2),
                                          random_cpu(Shape{f, d}, DType::F32, rng, -1, 1),
                                          random_cpu(Shape{d}, DType::F32, rng, -1, 1));
    p.kind = kind;
    if (p.kind == "jumprelu") p.own = {{"log_threshold", Tensor::full(Shape{f}, std::log(0.3))}};
    if (p.kind == "gated") {
      p.b_enc = Tensor();
      p.own = {{"b_gate", random_cpu(Shape{f}, DType::F32, rng, -0.3, 0.3)},
               {"b_mag", random_cpu(Shape{f}, DType::F32, rng, -0.3, 0.3)},
               {"r_mag", random_cpu(Shape{f}, DType::F32, rng, -0.5, 0.5)}};
    }
    if (p.kind == "topk") p.settings["k"] = 3;
    const ArchUnit& unit = arch_unit(kind);
    std::vector<double> norms(f);
    const std::vector<double> w = values(p.W_dec);
    for (int64_t i = 0; i < f; ++i) {
      double s = 0;
      for (int64_t k = 0; k < d; ++k) s += w[i * d + k] * w[i * d + k];
      norms[i] = std::sqrt(s);
    }
    const Tensor f_before = unit.encode(p, x);
    const Tensor x_before = add(matmul(f_before, p.W_dec), p.b_dec);
    SaeParams folded = p.clone();
    if (p.kind == "topk") {
      EXPECT_FALSE(unit.fold_decoder_norms(folded, norms));
      continue;
    }
    ASSERT_TRUE(unit.fold_decoder_norms(folded, norms));
    const std::vector<double> rows = values(folded.W_dec);
    for (int64_t i = 0; i < f; ++i) {
      double s = 0;
      for (int64_t k = 0; k < d; ++k) s += rows[i * d + k] * rows[i * d + k];
      EXPECT_NEAR(std::sqrt(s), 1.0, 1e-6) << "row " << i;
    }
    const Tensor f_after = unit.encode(folded, x);
    const std::vector<double> fb = values(f_before), fa = values(f_after);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t i = 0; i < f; ++i)
        EXPECT_NEAR(fa[t * f + i], fb[t * f + i] * norms[i], 1e-5 * (1 + std::abs(fa[t * f + i]))) << t << " " << i;
    const std::vector<double> xb = values(x_before), xa = values(add(matmul(f_after, folded.W_dec), folded.b_dec));
    for (size_t k = 0; k < xb.size(); ++k) EXPECT_NEAR(xa[k], xb[k], 1e-5 * (1 + std::abs(xb[k]))) << k;
  }
}
