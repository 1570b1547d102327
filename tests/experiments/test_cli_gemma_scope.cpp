// A Gemma Scope SAE (params.npz, numpy-written: scripts/gen_gemma_scope_fixture.py) read by the
// programs as our JumpReLU SAE: sae_apply gives numpy's JumpReLU features and reconstructions for
// the archive stored, deflated, as float64, as the file or as its folder; load_checkpoint makes it
// our jumprelu SAE, and sae_eval evaluates it exactly as the same SAE saved as our folder;
// sae_eval / sae_features ask for --hook with Gemma Scope's naming; sae_features and sae_browser
// read it; --resume refuses it; and hostile params.npz files are one-line errors with exit 1.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "io/json.h"
#include "io/npy.h"
#include "io/npz.h"
#include "sae/arch/registry.h"
#include "sae/train/checkpoint.h"
#include "tensor/ops.h"
#include "tests/util/compare.h"
#include "tests/util/fixture.h"
#include "tests/util/npz_writer.h"
#include "tests/util/test_util.h"

using namespace sae;
using namespace sae::testing;
namespace fs = std::filesystem;

namespace {

std::string gs_ref(const std::string& name) { return std::string(SAE_SOURCE_DIR) + "/tests/ref/gemma_scope/" + name; }
std::string eval_ref(const std::string& name) { return std::string(SAE_SOURCE_DIR) + "/tests/ref/eval/" + name; }

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs and expects exit `code` with one line on stderr containing `needle`.
void expect_failure(const std::string& program, const std::string& args, int code, const std::string& needle) {
  TempDir scratch("cli_gs_err");
  const CommandResult r = run_binary(program, args, scratch);
  EXPECT_EQ(r.exit_code, code) << program << " " << args << "\n" << r.err;
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "wanted '" << needle << "' in: " << r.err;
}

// A small Gemma Scope archive's entries (d 4, F 6, every threshold `threshold` but `zero_at` 0 when
// given) and an input of 3 rows of 0.5 written to DIR/x.npy: every feature's pre-activation is 0.2.
constexpr int64_t kSmallD = 4, kSmallF = 6;
std::vector<float> filled(int64_t n, float v) { return std::vector<float>(static_cast<size_t>(n), v); }
std::vector<ZipMember> small_params(int64_t zero_at = -1) {
  std::vector<float> threshold = filled(kSmallF, 0.1f);
  if (zero_at >= 0) threshold[static_cast<size_t>(zero_at)] = 0.0f;
  return {{"W_enc.npy", npy_f32("(4, 6)", filled(kSmallD * kSmallF, 0.1f)), 0},
          {"W_dec.npy", npy_f32("(6, 4)", filled(kSmallF * kSmallD, 0.2f)), 0},
          {"b_enc.npy", npy_f32("(6,)", filled(kSmallF, 0.0f)), 8},
          {"b_dec.npy", npy_f32("(4,)", filled(kSmallD, 0.0f)), 8},
          {"threshold.npy", npy_f32("(6,)", threshold), 0}};
}
// A stored params.npz of d x f constant arrays (W_enc 0.1, W_dec 0.2, biases 0, thresholds 0.1).
std::string constant_params(int64_t d, int64_t f) {
  return make_zip({{"W_enc.npy", npy_f32(cat("(", d, ", ", f, ")"), filled(d * f, 0.1f)), 0},
                   {"W_dec.npy", npy_f32(cat("(", f, ", ", d, ")"), filled(f * d, 0.2f)), 0},
                   {"b_enc.npy", npy_f32(cat("(", f, ",)"), filled(f, 0.0f)), 0},
                   {"b_dec.npy", npy_f32(cat("(", d, ",)"), filled(d, 0.0f)), 0},
                   {"threshold.npy", npy_f32(cat("(", f, ",)"), filled(f, 0.1f)), 0}});
}
std::string small_input(const TempDir& dir) {
  const std::string x = dir.str("x.npy");
  write_npy(x, Tensor::from_vector(std::vector<double>(3 * kSmallD, 0.5), Shape{3, kSmallD}, DType::F32));
  return x;
}

std::string eval_args(const std::string& sae, const std::string& out) {
  return cat("--model ", quote(eval_ref("model")), " --sae ", quote(sae), " --text ", quote(eval_ref("stories.txt")),
             " --out ", quote(out), " --progress none --device cpu");
}

}  // namespace

TEST(GemmaScopeCli, SaeApplyGivesNumpysJumpReluFeaturesAndReconstruction) {
  TempDir dir("cli_gs_apply");
  const test::Fixture expected(gs_ref("expected.safetensors"));
  const Tensor want_f = expected.tensor("features", DType::F32), want_xhat = expected.tensor("reconstruction", DType::F32);
  const Tensor pre = expected.tensor("pre", DType::F32);
  Tensor first_f, first_xhat;
  int form = 0;
  for (const std::string& sae : {gs_ref("stored"), gs_ref("stored/params.npz"), gs_ref("deflated.npz"), gs_ref("f64.npz")}) {
    const std::string f_path = dir.str(cat("f", form, ".npy")), xhat_path = dir.str(cat("xhat", form, ".npy"));
    ++form;
    const CommandResult r = run_binary("sae_apply", cat("--sae ", quote(sae), " --input ", quote(gs_ref("x.npy")),
                                                        " --features-out ", quote(f_path), " --reconstruction-out ",
                                                        quote(xhat_path)),
                                       dir);
    ASSERT_EQ(r.exit_code, 0) << sae << ": " << r.err;
    EXPECT_EQ(r.err, "");
    const Tensor f = NpyFile::open(f_path).read_f32(), xhat = NpyFile::open(xhat_path).read_f32();
    ASSERT_EQ(f.shape(), (Shape{50, 64}));
    ASSERT_EQ(xhat.shape(), (Shape{50, 32}));
    EXPECT_LE(max_abs_diff(f, want_f), 1e-5 * (1.0 + max_abs(want_f))) << sae;
    EXPECT_LE(max_abs_diff(xhat, want_xhat), 1e-5 * (1.0 + max_abs(want_xhat))) << sae;
    // Exactly numpy's zeros: the threshold cut positive pre-activations (not a ReLU), and every
    // feature numpy keeps is kept.
    int64_t cut = 0, kept = 0;
    for (int64_t k = 0; k < f.numel(); ++k) {
      const float p = pre.data<float>()[k], got = f.data<float>()[k], w = want_f.data<float>()[k];
      EXPECT_EQ(got == 0.0f, w == 0.0f) << sae << " element " << k;
      cut += p > 0 && w == 0;
      kept += w != 0;
    }
    EXPECT_GT(cut, 100);
    EXPECT_GT(kept, 100);
    // Every form of the archive gives the same bits.
    if (!first_f.defined()) {
      first_f = f;
      first_xhat = xhat;
    } else {
      EXPECT_EQ(max_abs_diff(f, first_f), 0.0) << sae;
      EXPECT_EQ(max_abs_diff(xhat, first_xhat), 0.0) << sae;
    }
  }
}

TEST(GemmaScopeCli, LoadsAsOurJumpReluSaeAndEvaluatesAsOurFolder) {
  TempDir dir("cli_gs_eval");
  const Checkpoint c = load_checkpoint(gs_ref("stored/params.npz"), Device::CPU, /*with_state=*/true);
  EXPECT_EQ(c.params.kind, "jumprelu");
  EXPECT_EQ(c.params.d_in(), 32);
  EXPECT_EQ(c.params.d_sae(), 64);
  EXPECT_EQ(c.npz, gs_ref("stored/params.npz"));
  EXPECT_FALSE(c.state.has_value());
  EXPECT_EQ(c.cfg.at("architecture").as_string(), "jumprelu");
  // No hook point; the windows Gemma Scope trained on (SAELens's Gemma Scope loader: 1024 tokens after
  // a BOS), which the programs take as their defaults (the model's 8192 positions had been).
  EXPECT_FALSE(c.cfg.at("metadata").has("hook_name"));
  EXPECT_EQ(c.cfg.at("metadata").at("context_size").as_int(), 1024);
  EXPECT_TRUE(c.cfg.at("metadata").at("prepend_bos").as_bool());
  // The folder form finds the same file; log_threshold is log(threshold).
  EXPECT_EQ(load_checkpoint(gs_ref("stored"), Device::CPU, false).npz, (fs::path(gs_ref("stored")) / "params.npz").string());
  const Tensor threshold = NpzFile::open(gs_ref("stored/params.npz")).read_f32("threshold");
  const Tensor back = exp(c.params.own_tensor("log_threshold"));
  EXPECT_LE(max_abs_diff(back, threshold), 1e-6 * max_abs(threshold));
  EXPECT_EQ(gemma_scope_npz(eval_ref("sae_story")), "");
  EXPECT_EQ(gemma_scope_npz(dir.str("missing.npz")), "");
  // Another name is recognised by the archive's first bytes (it was by the ".npz" ending only).
  for (const char* name : {"params.NPZ", "downloaded"}) {
    fs::copy_file(gs_ref("stored/params.npz"), dir.str(name));
    EXPECT_EQ(gemma_scope_npz(dir.str(name)), dir.str(name));
    EXPECT_EQ(load_checkpoint(dir.str(name), Device::CPU, false).params.d_sae(), 64);
  }
  sae::testing::write_file(dir.str("notes.txt"), "not an archive");
  EXPECT_EQ(gemma_scope_npz(dir.str("notes.txt")), "");

  // sae_train starts a run from it with --init (a jumprelu run of its width); --resume refuses it.
  const CommandResult t = run_binary(
      "sae_train", cat("--data ", quote(gs_ref("x.npy")), " --init ", quote(gs_ref("deflated.npz")),
                       " --architecture jumprelu --normalize none --steps 3 --batch 10 --device cpu --progress none --out ",
                       quote(dir.str("run"))),
      dir);
  ASSERT_EQ(t.exit_code, 0) << t.err;
  const Json run_cfg = read_json_file(dir.str("run/sae/cfg.json"));
  EXPECT_EQ(run_cfg.at("architecture").as_string(), "jumprelu");
  EXPECT_EQ(run_cfg.at("d_sae").as_int(), 64);
  // Its weights read raw activations: a run that normalises them (here dataset; story alike)
  // starts from them on inputs scaled otherwise (L0 0 at step 1 with dataset's scale on real
  // activations), which is said in one warning line; --normalize none says nothing.
  int n = 0;
  for (const std::string normalize : {" --normalize none", " --normalize dataset"}) {
    const CommandResult w = run_binary(
        "sae_train", cat("--data ", quote(gs_ref("x.npy")), " --init ", quote(gs_ref("deflated.npz")),
                         " --architecture jumprelu --l1 0.1 --steps 3 --batch 10 --device cpu --progress none", normalize,
                         " --out ", quote(dir.str(cat("run_normalised", n++)))),
        dir);
    EXPECT_EQ(w.exit_code, 0) << w.err;
    const bool warned = w.err.find("has no sae_cpp.normalization, so its weights read raw activations") != std::string::npos;
    EXPECT_EQ(warned, normalize != " --normalize none") << normalize << ": " << w.err;
    EXPECT_EQ(count_lines(w.err), warned ? 1 : 0) << w.err;
  }
  expect_failure("sae_train", cat("--resume ", quote(gs_ref("stored/params.npz"))), 1, "holds weights only");
  expect_failure("sae_train", cat("--resume ", quote(gs_ref("stored"))), 1, "holds weights only");
  try {
    find_latest_checkpoint(gs_ref("stored/params.npz"));
    ADD_FAILURE() << "--resume of a params.npz was accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("holds weights only"), std::string::npos) << e.what();
  }

  // sae_eval without a hook point: exit 2 naming Gemma Scope's hooks; with --layer 3 it runs, and gives
  // the numbers of the same SAE saved as our own jumprelu folder.
  expect_failure("sae_eval", eval_args(gs_ref("stored/params.npz"), dir.str("o0")), 2, "blocks.L.hook_resid_post");
  save_checkpoint(dir.str("ours"), c.params, Json::object(), nullptr);
  {  // our folder with the windows the archive states
    Json cfg = read_json_file(dir.str("ours/cfg.json"));
    cfg["metadata"] = c.cfg.at("metadata");
    std::ofstream(dir.str("ours/cfg.json")) << cfg.dump(2);
  }
  const CommandResult a = run_binary("sae_eval", eval_args(gs_ref("stored/params.npz"), dir.str("o1")) + " --layer 3", dir);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  const CommandResult b = run_binary("sae_eval", eval_args(dir.str("ours"), dir.str("o2")) + " --layer 3", dir);
  ASSERT_EQ(b.exit_code, 0) << b.err;
  const Json ja = read_json_file(dir.str("o1/eval.json")), jb = read_json_file(dir.str("o2/eval.json"));
  EXPECT_EQ(ja.at("architecture").as_string(), "jumprelu");
  EXPECT_EQ(ja.at("tokens").as_int(), jb.at("tokens").as_int());
  for (const char* key : {"ce_loss_score", "kl_div_score", "fvu", "l0"})
    EXPECT_NEAR(ja.at(key).as_number(), jb.at(key).as_number(), 1e-6 * (1 + std::abs(jb.at(key).as_number()))) << key;
  EXPECT_NEAR(ja.at("ce_loss").at("sae").as_number(), jb.at("ce_loss").at("sae").as_number(), 1e-6);
  EXPECT_GT(ja.at("l0").as_number(), 0.5);  // features fire on the model's activations
  // --hook with Gemma Scope's naming.
  const CommandResult h =
      run_binary("sae_eval", eval_args(gs_ref("deflated.npz"), dir.str("o3")) + " --hook blocks.2.hook_resid_post", dir);
  ASSERT_EQ(h.exit_code, 0) << h.err;
  EXPECT_NEAR(read_json_file(dir.str("o3/eval.json")).at("fvu").as_number(), ja.at("fvu").as_number(), 1e-6);
}

TEST(GemmaScopeCli, FeaturesAndBrowserReadTheArchive) {
  TempDir dir("cli_gs_browse");
  fs::create_directories(dir.str("gs"));
  fs::copy_file(gs_ref("stored/params.npz"), dir.str("gs/params.npz"));
  const std::string common =
      cat("--model ", quote(eval_ref("model")), " --text ", quote(eval_ref("stories.txt")), " --device cpu");
  expect_failure("sae_features", cat("--sae ", quote(dir.str("gs")), " ", common, " --out ", quote(dir.str("f.json"))), 2,
                 "Gemma Scope");
  const CommandResult r = run_binary(
      "sae_features", cat("--sae ", quote(dir.str("gs")), " ", common, " --hook blocks.2.hook_resid_post --out ",
                          quote(dir.str("f.json")), " --stats-out ", quote(dir.str("gs/feature_stats.safetensors"))),
      dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_TRUE(fs::exists(dir.str("gs/feature_stats.safetensors")));
  // The folder, and the file itself (the page then goes beside it).
  const CommandResult b1 = run_binary("sae_browser", cat("--run ", quote(dir.str("gs")), " --model ", quote(eval_ref("model"))), dir);
  ASSERT_EQ(b1.exit_code, 0) << b1.err;
  EXPECT_GT(fs::file_size(dir.str("gs/features.html")), 1000u);
  fs::remove(dir.str("gs/features.html"));
  const CommandResult b2 =
      run_binary("sae_browser", cat("--run ", quote(dir.str("gs/params.npz")), " --model ", quote(eval_ref("model"))), dir);
  ASSERT_EQ(b2.exit_code, 0) << b2.err;
  EXPECT_GT(fs::file_size(dir.str("gs/features.html")), 1000u);
  // An archive of another width (an -att- SAE at attn.hook_z, 8 wide here): the width it writes is
  // not the model's, and the line says to give --hook.
  fs::create_directories(dir.str("att"));
  fs::copy_file(dir.str("gs/feature_stats.safetensors"), dir.str("att/feature_stats.safetensors"));
  sae::testing::write_file(dir.str("att/params.npz"), constant_params(8, 64));
  // Statistics lists too large for 8 GiB are named by sae_features' own options (they had been
  // named --feature-stats-k and --feature-stats-context, sae_train's).
  sae::testing::write_file(dir.str("wide.npz"), constant_params(4, 4096));
  expect_failure("sae_features", cat("--sae ", quote(dir.str("wide.npz")), " --data ", quote(gs_ref("x.npy")),
                                     " --top 1000 --context 256 --out ", quote(dir.str("wide.json")), " --stats-out ",
                                     quote(dir.str("wide.safetensors"))),
                 2, "--top 1000 and --context 256 for 4096 features need");
  expect_failure("sae_browser", cat("--run ", quote(dir.str("att")), " --model ", quote(eval_ref("model"))), 1,
                 "is not the width the SAE's decoder writes (8) (an SAE that names no hook is taken to write the "
                 "residual stream; one at attn.hook_z, as Gemma Scope's -att- SAEs: give --hook)");
}

TEST(GemmaScopeCli, HostileParamsAreOneLineErrors) {
  TempDir dir("cli_gs_hostile");
  const int64_t d = kSmallD, f = kSmallF;
  const std::string x = small_input(dir);
  const auto values = filled;
  // A good SAE's entries, then each broken one way.
  auto entries = [] { return small_params(); };
  int n = 0;
  auto expect_refused = [&](const std::string& bytes, const std::string& needle) {
    const std::string path = dir.str(cat("h", n++, ".npz"));
    sae::testing::write_file(path, bytes);
    expect_failure("sae_apply", cat("--sae ", quote(path), " --input ", quote(x), " --features-out ",
                                    quote(dir.str("out.npy"))),
                   1, needle);
  };
  // The good one runs.
  sae::testing::write_file(dir.str("good.npz"), make_zip(entries()));
  const CommandResult ok = run_binary(
      "sae_apply", cat("--sae ", quote(dir.str("good.npz")), " --input ", quote(x), " --features-out ", quote(dir.str("g.npy"))),
      dir);
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  // pre = 4 * 0.5 * 0.1 = 0.2 > 0.1: every feature is 0.2.
  for (double v : NpyFile::open(dir.str("g.npy")).read_f32().to_vector()) EXPECT_NEAR(v, 0.2, 1e-6);

  auto without = [&](const std::string& name) {
    std::vector<ZipMember> e = entries();
    std::erase_if(e, [&](const ZipMember& z) { return z.name == name; });
    return e;
  };
  auto replaced = [&](const std::string& name, const std::string& npy) {
    std::vector<ZipMember> e = entries();
    for (ZipMember& z : e)
      if (z.name == name) z.data = npy;
    return e;
  };
  expect_refused(make_zip(without("W_dec.npy")), "missing tensor W_dec");
  // An archive with none of the arrays (a torch.save file is a ZIP too) is named as not an npz.
  expect_refused(make_zip({{"archive/data.pkl", "not numpy", 0}}),
                 "a ZIP archive without W_enc, W_dec, b_enc, b_dec or threshold arrays: not a Gemma Scope params.npz");
  expect_refused(make_zip(without("threshold.npy")), "missing tensor threshold");
  // Arrays stored transposed are named as such (a transposed W_enc was blamed on the threshold).
  expect_refused(make_zip(replaced("W_dec.npy", npy_f32("(4, 6)", values(d * f, 0.2f)))),
                 "W_dec f32[4, 6] cpu disagree: W_enc is [d_in, d_sae] and W_dec [d_sae, d_out] (is one of them "
                 "transposed?)");
  expect_refused(make_zip(replaced("W_enc.npy", npy_f32("(6, 4)", values(d * f, 0.1f)))), "(is one of them transposed?)");
  std::vector<ZipMember> both = replaced("W_enc.npy", npy_f32("(6, 4)", values(d * f, 0.1f)));
  for (ZipMember& z : both)
    if (z.name == "W_dec.npy") z.data = npy_f32("(4, 6)", values(d * f, 0.2f));
  expect_refused(make_zip(both), "does not match W_enc f32[6, 4] cpu: W_enc is [d_in, d_sae] and W_dec "
                                 "[d_sae, d_out] (are both transposed?)");
  expect_refused(make_zip(replaced("threshold.npy", npy_f32("(5,)", values(5, 0.1f)))), "threshold should be [6]");
  std::vector<float> with_nan = values(d * f, 0.1f);
  with_nan[7] = std::numeric_limits<float>::quiet_NaN();
  expect_refused(make_zip(replaced("W_enc.npy", npy_f32("(4, 6)", with_nan))), "W_enc holds nan");
  std::vector<float> negative = values(f, 0.1f);
  negative[2] = -1.0f;
  expect_refused(make_zip(replaced("threshold.npy", npy_f32("(6,)", negative))), "thresholds must be >= 0");
  expect_refused(make_zip(replaced("W_enc.npy", npy_bytes("<i4", "(4, 6)", bytes_of(std::vector<int32_t>(24, 1))))),
                 "'<i4'");
  const std::string good = make_zip(entries());
  expect_refused(good.substr(0, good.size() - 30), "no end-of-central-directory");
  std::string method99 = good;
  put_le16(method99, find_signature(good, 0x02014b50) + 10, 99);
  expect_refused(method99, "compression method 99");
  std::string flipped = good;
  flipped[100] = char(flipped[100] ^ 0x10);  // inside W_enc's data
  expect_refused(flipped, "CRC-32 mismatch");
}

TEST(GemmaScopeCli, AZeroThresholdIsAppliedButNotTrainedFromAndExtraArraysAreRefused) {
  TempDir dir("cli_gs_zero");
  const std::string x = small_input(dir);
  std::vector<ZipMember> entries = small_params(/*zero_at=*/2);  // SAELens applies it (pre > 0); log 0 cannot train
  const std::string zero = dir.str("zero.npz");
  sae::testing::write_file(zero, make_zip(entries));
  const CommandResult applied = run_binary(
      "sae_apply", cat("--sae ", quote(zero), " --input ", quote(x), " --features-out ", quote(dir.str("f.npy"))), dir);
  ASSERT_EQ(applied.exit_code, 0) << applied.err;
  for (double v : NpyFile::open(dir.str("f.npy")).read_f32().to_vector()) EXPECT_NEAR(v, 0.2, 1e-6);
  expect_failure("sae_train",
                 cat("--data ", quote(x), " --init ", quote(zero), " --architecture jumprelu --normalize none --steps 2 "
                     "--batch 3 --device cpu --progress none --out ", quote(dir.str("run"))),
                 1, "log_threshold would start at -inf (element 2, a threshold of 0)");
  // An array the SAE does not have: SAELens's strict loading refuses it, and so do we.
  entries.push_back({"finetuning_scaling_factor.npy", npy_f32("(1,)", filled(1, 1.0f)), 0});
  sae::testing::write_file(dir.str("extra.npz"), make_zip(entries));
  expect_failure("sae_apply",
                 cat("--sae ", quote(dir.str("extra.npz")), " --input ", quote(x), " --features-out ",
                     quote(dir.str("g.npy"))),
                 1, "unexpected tensor finetuning_scaling_factor");
}

TEST(GemmaScopeCli, InitIntoAUnitNormRunKeepsWhatTheSaeComputes) {
  // Gemma Scope's decoder rows are not at norm 1; a jumprelu run keeps them there from its first
  // update. The rows are folded first (latents scaled, thresholds too), so one update at lr 1e-30
  // gives the same reconstruction; a TopK SAE cannot be folded (its selection would change): refused.
  TempDir dir("cli_gs_unit_norm");
  const std::string x = dir.str("x.npy");
  Rng rng(12);
  std::vector<double> values(20 * 4);
  for (double& v : values) v = rng.normal();
  write_npy(x, Tensor::from_vector(values, Shape{20, 4}, DType::F32));
  const CommandResult trained = run_binary(
      "sae_train", cat("--data ", quote(gs_ref("x.npy")), " --init ", quote(gs_ref("deflated.npz")), " --architecture jumprelu "
                       "--normalize none --steps 1 --batch 20 --lr 1e-30 --device cpu --progress none --out ",
                       quote(dir.str("run"))),
      dir);
  ASSERT_EQ(trained.exit_code, 0) << trained.err;
  const std::string input = gs_ref("x.npy");
  for (const auto& [sae, out] : {std::pair<std::string, std::string>{gs_ref("deflated.npz"), "before.npy"},
                                 {dir.str("run/sae"), "after.npy"}}) {
    const CommandResult r = run_binary(
        "sae_apply", cat("--sae ", quote(sae), " --input ", quote(input), " --reconstruction-out ", quote(dir.str(out))), dir);
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  const Tensor before = NpyFile::open(dir.str("before.npy")).read_f32(), after = NpyFile::open(dir.str("after.npy")).read_f32();
  EXPECT_LE(max_abs_diff(after, before), 1e-4 * (1.0 + max_abs(before)));
  // A TopK SAE with rows at norm 0.5.
  SaeParams p = SaeParams::standard_init(4, 8, rng);
  p.kind = "topk";
  p.settings["k"] = 2;
  Tensor rows = Tensor::full(Shape{8, 4}, 0.25);  // norm 0.5
  p.W_dec = rows;
  save_checkpoint(dir.str("topk"), p, Json::object(), nullptr);
  const std::string base = cat("--data ", quote(x), " --init ", quote(dir.str("topk")), " --architecture topk --k 2 "
                               "--normalize none --steps 1 --batch 20 --device cpu --progress none --out ");
  expect_failure("sae_train", base + quote(dir.str("t1")), 2, "give --unit-norm-decoder=off");
  const CommandResult off = run_binary("sae_train", base + quote(dir.str("t2")) + " --unit-norm-decoder=off", dir);
  EXPECT_EQ(off.exit_code, 0) << off.err;
}
