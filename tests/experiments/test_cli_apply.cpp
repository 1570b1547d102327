// build/bin/sae_apply end to end: a tiny checkpoint written here (save_checkpoint), inputs as .npy,
// the binary run as a child process, and its .npy outputs compared with StandardSae::encode
// and decode run in-process. Then the usage (exit 2) and data (exit 1) error cases, each with a
// one-line message. No Python needed.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "autograd/variable.h"
#include "sae/train/checkpoint.h"
#include "tests/util/standard_sae.h"
#include "io/json.h"
#include "io/npy.h"
#include "tensor/ops.h"
#include "tensor/rng.h"
#include "tests/util/test_util.h"
#include "tests/util/compare.h"

using namespace sae;
using sae::testing::StandardSae;
using sae::testing::max_abs_diff;
using sae::testing::max_abs;
namespace fs = std::filesystem;

namespace {

using sae::testing::count_lines;
using sae::testing::run_binary;
using sae::testing::TempDir;

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

sae::testing::CommandResult run_apply(const TempDir& dir, const std::string& args) {
  const std::string binary = std::string(SAE_BIN_DIR) + "/sae_apply";
  if (!fs::exists(binary)) throw std::runtime_error(binary + " not found: build the sae_apply target");
  return run_binary("sae_apply", args, dir);
}


// A tiny SAE with d_in 5 and d_sae 7, saved to DIR/sae, and an input of n rows.
struct TinySae {
  TempDir dir{"apply"};
  std::string sae_dir, input;
  std::unique_ptr<StandardSae> model;
  Tensor x;
  explicit TinySae(int64_t n) {
    Rng rng(1234);
    model = std::make_unique<StandardSae>(5, 7, rng);
    sae_dir = dir.str("sae");
    Json extra = Json::object();
    extra["note"] = "test_cli_apply";
    save_checkpoint(sae_dir, model->params(), extra, nullptr);
    x = normal_tensor(Shape{n, 5}, 0.0, 1.0, rng, DType::F32);
    input = dir.str("x.npy");
    write_npy(input, x);
  }
};

}  // namespace

TEST(CliApply, OutputsMatchInProcessEncodeDecode) {
  // More rows than the binary's 4096-row block, so the block loop's seams are covered.
  TinySae s(4096 + 37);
  const std::string f_path = s.dir.str("f.npy"), xhat_path = s.dir.str("xhat.npy");
  auto r = run_apply(s.dir, "--sae " + quote(s.sae_dir) + " --input " + quote(s.input) + " --features-out " +
                                quote(f_path) + " --reconstruction-out " + quote(xhat_path));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");

  NoGradGuard no_grad;
  Variable f = s.model->encode(Variable(s.x));
  Variable xhat = s.model->decode(f);
  NpyFile f_file = NpyFile::open(f_path), xhat_file = NpyFile::open(xhat_path);
  EXPECT_EQ(f_file.descr(), "<f4");
  EXPECT_EQ(f_file.shape(), (std::vector<int64_t>{4096 + 37, 7}));
  EXPECT_EQ(xhat_file.shape(), (std::vector<int64_t>{4096 + 37, 5}));
  const Tensor f_bin = f_file.read_f32(), xhat_bin = xhat_file.read_f32();
  // Same float32 kernels on the same weights (reloaded bit-exactly from safetensors).
  EXPECT_LE(max_abs_diff(f_bin, f.data()), 1e-6 * (1.0 + max_abs(f.data())));
  EXPECT_LE(max_abs_diff(xhat_bin, xhat.data()), 1e-6 * (1.0 + max_abs(xhat.data())));
  // The features are sparse-ish but not trivially zero: ReLU cut some and let some through.
  const std::vector<double> fv = f_bin.to_vector();
  int64_t zeros = 0;
  for (double v : fv) zeros += v == 0.0;
  EXPECT_GT(zeros, 0);
  EXPECT_LT(zeros, static_cast<int64_t>(fv.size()));
}

TEST(CliApply, OnlyFeaturesRequested) {
  TinySae s(3);
  const std::string f_path = s.dir.str("f.npy");
  auto r =
      run_apply(s.dir, "--sae " + quote(s.sae_dir) + " --input " + quote(s.input) + " --features-out " + quote(f_path));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(fs::exists(s.dir.str("xhat.npy")));
  // The features written are the model's encoding of the input.
  NoGradGuard no_grad;
  const Tensor want = s.model->encode(Variable(s.x)).data();
  NpyFile file = NpyFile::open(f_path);
  EXPECT_EQ(file.descr(), "<f4");
  ASSERT_EQ(file.shape(), (std::vector<int64_t>{3, 7}));
  const Tensor got = file.read_f32();
  EXPECT_LE(max_abs_diff(got, want), 1e-6 * (1.0 + max_abs(want)));
  EXPECT_GT(max_abs(want), 0.0);  // some feature fires: the comparison sees values, not only zeros
}

TEST(CliApply, HelpExitsZero) {
  TempDir dir("apply");
  auto r = run_apply(dir, "--help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("--reconstruction-out"), std::string::npos);
}

TEST(CliApply, UsageErrorsExitTwo) {
  TinySae s(3);
  const std::string outputs = " --features-out " + quote(s.dir.str("f.npy"));
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--input " + quote(s.input) + outputs, "--sae"},                               // no --sae
      {"--sae " + quote(s.sae_dir) + outputs, "--input"},                             // no --input
      {"--sae " + quote(s.sae_dir) + " --input " + quote(s.input), "nothing to do"},  // no output
      {"--sae " + quote(s.sae_dir) + " --input " + quote(s.input) + outputs + " --bogus 1", "bogus"},
      {"--sae " + quote(s.sae_dir) + " --input " + quote(s.input) + outputs + " --device tpu", "tpu"},
      {"--sae " + quote(s.sae_dir) + " --input " + quote(s.input) + outputs + " stray", "stray"},
  };
  for (const auto& [args, mention] : cases) {
    auto r = run_apply(s.dir, args);
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.err;
    EXPECT_EQ(count_lines(r.err), 1) << args << "\n" << r.err;
    EXPECT_NE(r.err.find(mention), std::string::npos) << args << "\n" << r.err;
    EXPECT_FALSE(fs::exists(s.dir.str("f.npy"))) << args;
  }
}

TEST(CliApply, DataErrorsExitOne) {
  TinySae s(3);
  // Inputs with the wrong width, the wrong rank, and a NaN.
  Rng rng(9);
  const std::string wide = s.dir.str("wide.npy"), flat = s.dir.str("flat.npy"), nan_input = s.dir.str("nan.npy");
  write_npy(wide, normal_tensor(Shape{3, 6}, 0.0, 1.0, rng, DType::F32));
  write_npy(flat, normal_tensor(Shape{15}, 0.0, 1.0, rng, DType::F32));
  std::vector<double> values(15, 0.5);
  values[7] = std::numeric_limits<double>::quiet_NaN();
  write_npy(nan_input, Tensor::from_vector(values, Shape{3, 5}));
  // A checkpoint without weights, and a corrupt input file.
  const std::string broken_sae = s.dir.str("broken_sae");
  fs::create_directories(broken_sae);
  fs::copy_file(s.sae_dir + "/cfg.json", broken_sae + "/cfg.json");
  const std::string corrupt = s.dir.str("corrupt.npy");
  std::ofstream(corrupt) << "not a numpy file";

  // Finite weights that overflow float32 on a finite input: outputs not finite (they were written).
  const std::string huge = s.dir.str("huge_sae");
  SaeParams big = s.model->params();
  big.W_enc = Tensor::from_vector(std::vector<double>(5 * 7, 3e38), Shape{5, 7});
  save_checkpoint(huge, big, Json::object(), nullptr);
  const std::string ones = s.dir.str("ones.npy");
  write_npy(ones, Tensor::from_vector(std::vector<double>(15, 1.0), Shape{3, 5}));

  const std::string outputs = " --features-out " + quote(s.dir.str("f.npy"));
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--sae " + quote(huge) + " --input " + quote(ones) + outputs, "huge_sae: the SAE's features at row 0"},
      {"--sae " + quote(s.dir.str("no_such_dir")) + " --input " + quote(s.input) + outputs, "no_such_dir"},
      {"--sae " + quote(broken_sae) + " --input " + quote(s.input) + outputs, "sae_weights.safetensors"},
      {"--sae " + quote(s.sae_dir) + " --input " + quote(s.dir.str("missing.npy")) + outputs, "missing.npy"},
      {"--sae " + quote(s.sae_dir) + " --input " + quote(corrupt) + outputs, "corrupt.npy"},
      {"--sae " + quote(s.sae_dir) + " --input " + quote(wide) + outputs, "d_in is 5"},
      {"--sae " + quote(s.sae_dir) + " --input " + quote(flat) + outputs, "2-D"},
      {"--sae " + quote(s.sae_dir) + " --input " + quote(nan_input) + outputs, "non-finite activation (nan) at token 1, column 2"},
  };
  for (const auto& [args, mention] : cases) {
    auto r = run_apply(s.dir, args);
    EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.err;
    EXPECT_EQ(count_lines(r.err), 1) << args << "\n" << r.err;
    EXPECT_NE(r.err.find(mention), std::string::npos) << args << "\n" << r.err;
    EXPECT_FALSE(fs::exists(s.dir.str("f.npy"))) << args;
  }
}

TEST(CliApply, AppliesWhatSaeTrainWrites) {
  // The trainer's final sae/ also holds training_state.safetensors: sae_apply must read it as a
  // plain SAE, and agree with the model loaded in-process. The inputs are given as the SAE sees
  // them (--raw): the normalisation is tested below.
  TempDir dir("apply_train");
  const std::string run = dir.str("run");
  const std::string tiny =
      "--synthetic-d 8 --synthetic-concepts 12 --synthetic-story-concepts 2 --synthetic-story-active 1"
      " --synthetic-stories 50 --synthetic-mean-length 8 --synthetic-active 2 --features 16 --lr 1e-3 --steps 3"
      " --progress none --device cpu --out ";
  auto trained = run_binary("sae_train", tiny + quote(run), dir);
  ASSERT_EQ(trained.exit_code, 0) << trained.err;
  ASSERT_TRUE(fs::exists(run + "/sae/training_state.safetensors"));
  Rng rng(5);
  const Tensor x = normal_tensor(Shape{40, 8}, 0.0, 1.0, rng, DType::F32);
  const std::string input = dir.str("x.npy"), f_path = dir.str("f.npy"), xhat_path = dir.str("xhat.npy");
  write_npy(input, x);
  auto r = run_apply(dir, "--sae " + quote(run + "/sae") + " --input " + quote(input) + " --features-out " +
                              quote(f_path) + " --reconstruction-out " + quote(xhat_path) + " --raw");
  ASSERT_EQ(r.exit_code, 0) << r.err;

  Checkpoint ck = load_checkpoint(run + "/sae", Device::CPU);
  ASSERT_TRUE(ck.state.has_value());
  NoGradGuard no_grad;
  const StandardSae model(ck.params);
  Variable f = model.encode(Variable(x));
  Variable xhat = model.decode(f);
  EXPECT_LE(max_abs_diff(NpyFile::open(f_path).read_f32(), f.data()), 1e-6 * (1.0 + max_abs(f.data())));
  EXPECT_LE(max_abs_diff(NpyFile::open(xhat_path).read_f32(), xhat.data()), 1e-6 * (1.0 + max_abs(xhat.data())));
}

TEST(CliApply, GivesTheSaeItsInputsNormalisedAsInTraining) {
  // An SAE trained with per-story normalisation, applied to a safetensors file with story_lengths:
  // each story is normalised as in training, the features are the SAE's, and the reconstruction
  // comes back in the input's scale. Without story boundaries the same SAE needs --raw.
  TempDir dir("apply_norm");
  const std::string run = dir.str("run");
  const std::string tiny =
      "--synthetic-d 8 --synthetic-concepts 12 --synthetic-story-concepts 2 --synthetic-story-active 1"
      " --synthetic-stories 50 --synthetic-mean-length 8 --synthetic-active 2 --features 16 --lr 1e-3 --steps 3"
      " --progress none --device cpu --out ";
  ASSERT_EQ(run_binary("sae_train", tiny + quote(run), dir).exit_code, 0);
  const std::vector<int64_t> lengths = {5, 9, 4};
  auto value = [](int64_t t, int64_t j) { return 3.0 + 0.7 * double((t * 7 + j * 3) % 11) - 0.2 * double(t % 3); };
  sae::testing::write_activation_file(dir.str("acts.safetensors"), 8, lengths, value);
  const std::string f_path = dir.str("f.npy"), xhat_path = dir.str("xhat.npy");
  auto r = run_apply(dir, "--sae " + quote(run + "/sae") + " --input " + quote(dir.str("acts.safetensors")) +
                              " --features-out " + quote(f_path) + " --reconstruction-out " + quote(xhat_path));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("inputs normalised: story"), std::string::npos) << r.out;

  const StandardSae model(load_checkpoint(run + "/sae", Device::CPU).params);
  const Tensor f_bin = NpyFile::open(f_path).read_f32(), xhat_bin = NpyFile::open(xhat_path).read_f32();
  NoGradGuard no_grad;
  int64_t first = 0;
  for (int64_t length : lengths) {
    // The story normalised by hand: (x - mean) / std * sqrt(8), std unbiased over all its values.
    std::vector<double> raw;
    for (int64_t t = first; t < first + length; ++t)
      for (int64_t j = 0; j < 8; ++j) raw.push_back(value(t, j));
    double mean = 0, sq = 0;
    for (double v : raw) mean += v / double(raw.size());
    for (double v : raw) sq += (v - mean) * (v - mean);
    const double scale = std::sqrt(8.0) / std::sqrt(sq / double(raw.size() - 1));
    std::vector<double> normalised;
    for (double v : raw) normalised.push_back((v - mean) * scale);
    Variable f = model.encode(Variable(Tensor::from_vector(normalised, Shape{length, 8})));
    Tensor x_hat = model.decode(f).data();
    std::vector<double> back = x_hat.to_vector();
    for (double& v : back) v = v / scale + mean;
    EXPECT_LE(max_abs_diff(f_bin.slice_rows(first, first + length), f.data()), 1e-5 * (1.0 + max_abs(f.data())));
    EXPECT_LE(max_abs_diff(xhat_bin.slice_rows(first, first + length), Tensor::from_vector(back, Shape{length, 8})),
              1e-5 * (1.0 + max_abs(Tensor::from_vector(back, Shape{length, 8}))));
    first += length;
  }
  EXPECT_GT(max_abs(f_bin), 0.0);

  // A .npy has no story boundaries: refused (exit 2) unless --raw.
  write_npy(dir.str("x.npy"), Tensor::full(Shape{4, 8}, 0.5));
  auto no_stories = run_apply(dir, "--sae " + quote(run + "/sae") + " --input " + quote(dir.str("x.npy")) +
                                       " --features-out " + quote(f_path));
  EXPECT_EQ(no_stories.exit_code, 2) << no_stories.err;
  EXPECT_NE(no_stories.err.find("story_lengths"), std::string::npos) << no_stories.err;

  // sae_apply does not need the training state: a corrupt one does not stop it.
  std::ofstream(run + "/sae/training_state.safetensors", std::ios::trunc) << "garbage";
  auto corrupt_state = run_apply(dir, "--sae " + quote(run + "/sae") + " --input " + quote(dir.str("acts.safetensors")) +
                                          " --features-out " + quote(f_path));
  EXPECT_EQ(corrupt_state.exit_code, 0) << corrupt_state.err;
}

TEST(CliApply, InputListsAreReadAsSaeFeaturesAndSaeTrainReadThem) {
  // One rule for every program that reads a dictionary's activation files (open_dictionary_inputs):
  // a path with a comma in its name is refused (sae_apply had read it for a one-source SAE while
  // sae_features and sae_train refused it), and two files for a one-source SAE are named as such
  // (sae_apply had tried to open "A,B" as one file).
  TinySae s(4);
  fs::create_directories(s.dir.str("a,b"));
  write_npy(s.dir.str("a,b/x.npy"), s.x);
  const std::string f_path = s.dir.str("f.npy");
  auto r = run_apply(s.dir, "--sae " + quote(s.sae_dir) + " --input " + quote(s.dir.str("a,b/x.npy")) +
                                " --features-out " + quote(f_path));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--input '"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("a comma separates a crosscoder's sources, and this is one path"), std::string::npos) << r.err;
  r = run_apply(s.dir, "--sae " + quote(s.sae_dir) + " --input " + quote(s.input + "," + s.input) +
                           " --features-out " + quote(f_path));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--input: several files are a crosscoder's sources; " + s.sae_dir + " reads one"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(count_lines(r.err), 1);
  EXPECT_FALSE(fs::exists(f_path));
}
