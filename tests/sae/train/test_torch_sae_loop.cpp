// PyTorch reference test of a whole training run in the original study's setting (docs/contract.md §1):
// sae::train() with one story per step in file order, per-story normalisation (unbiased std),
// loss = sum of squared error + lambda * decoder-norm-weighted L1, Adam, starting from a SAELens
// checkpoint made with torch.nn.Linear's default init. Every logged step (tokens, loss, rec_loss,
// l1, nonzero_proportion, raw_mean, raw_std in OUT/metrics.csv) and the final weights
// (OUT/sae/sae_weights.safetensors) must match PyTorch's float32 run of the tutorial's loop.
// The data, the initial checkpoint and the reference come from scripts/gen_torch_sae_loop_fixture.py
// (committed under tests/ref/, so this test needs no Python):
//   tests/ref/sae_loop_data.safetensors, tests/ref/sae_loop_init/, tests/ref/sae_loop.safetensors
// Letters: D input width, F features.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "sae/train/trainer.h"
#include "tensor/cuda/backend.h"
#include "io/safetensors.h"
#include "tests/util/fixture.h"
#include "tests/util/test_util.h"
#include "tests/util/gpu.h"

using namespace sae;
using sae::test::Closeness;
using sae::test::Fixture;
using sae::testing::TempDir;

namespace {

const std::string kRefDir = SAE_SOURCE_DIR "/tests/ref";
const std::string kDataPath = kRefDir + "/sae_loop_data.safetensors";
const std::string kInitDir = kRefDir + "/sae_loop_init";
const std::string kFixturePath = kRefDir + "/sae_loop.safetensors";

// Tolerances, |ours - torch| <= atol + rtol |torch|. Both sides are float32; the references are
// well conditioned (no pre-activation within 1e-3 of 0, float32 vs float64 PyTorch agree to ~1e-7),
// so what is left is rounding order. Observed max errors are printed by the tests.
constexpr double kLossRtol = 1e-5;                       // loss, rec_loss, l1 (sums over a story)
constexpr double kStatRtol = 1e-5;                       // raw_mean, raw_std
constexpr double kWeightAtol = 1e-6, kWeightRtol = 1e-5;  // final weights (they move by ~2e-2)

const Fixture& fixture() {
  static const Fixture f = test::load_fixture(kFixturePath);
  return f;
}

// metrics.csv as columns: name -> values, one per row.
std::map<std::string, std::vector<double>> read_metrics_csv(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open");
  auto split = [](const std::string& line) {
    std::vector<std::string> cells;
    std::stringstream s(line);
    std::string cell;
    while (std::getline(s, cell, ',')) cells.push_back(cell);
    return cells;
  };
  std::string line;
  if (!std::getline(in, line)) throw std::runtime_error(path + ": empty");
  const std::vector<std::string> header = split(line);
  std::map<std::string, std::vector<double>> columns;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const std::vector<std::string> cells = split(line);
    if (cells.size() != header.size()) throw std::runtime_error(path + ": ragged row: " + line);
    for (size_t i = 0; i < cells.size(); ++i) columns[header[i]].push_back(std::stod(cells[i]));
  }
  return columns;
}

// The fixture's run, through the public entry point, on `device`.
TrainConfig reference_config(const std::string& out, const std::string& device) {
  const Fixture& f = fixture();
  TrainConfig c;
  c.data = kDataPath;
  c.init = kInitDir;
  c.features = f.integer("cfg.features");
  c.l1 = f.scalar("cfg.l1");
  c.lr = f.scalar("cfg.lr");
  c.beta1 = f.scalar("cfg.beta1");
  c.beta2 = f.scalar("cfg.beta2");
  c.eps = f.scalar("cfg.eps");
  c.steps = f.integer("cfg.steps");
  c.batch_tokens = 0;  // story
  c.normalize = Normalization::Story;
  c.log_every = 1;
  c.checkpoint_every = 1000000;
  c.progress = ProgressMode::None;
  c.device = parse_device_choice(device);
  c.out = out;
  return c;
}

struct Errors {
  double max_abs = 0, max_rel = 0;
};

// Compares a logged column with the reference, step by step, and returns the largest errors.
Errors expect_column_close(const std::map<std::string, std::vector<double>>& csv, const std::string& column,
                           const std::vector<double>& want, double atol, double rtol) {
  Errors e;
  auto it = csv.find(column);
  EXPECT_NE(it, csv.end()) << "metrics.csv has no column " << column;
  if (it == csv.end()) return e;
  const std::vector<double>& got = it->second;
  EXPECT_EQ(got.size(), want.size()) << column << ": rows";
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const double err = std::fabs(got[i] - want[i]);
    e.max_abs = std::max(e.max_abs, err);
    if (std::fabs(want[i]) > atol) e.max_rel = std::max(e.max_rel, err / std::fabs(want[i]));
    EXPECT_LE(err, atol + rtol * std::fabs(want[i]))
        << column << " at step " << i + 1 << ": ours " << got[i] << ", torch " << want[i];
  }
  std::printf("  %-20s max abs err %-10.3g max rel err %.3g\n", column.c_str(), e.max_abs, e.max_rel);
  return e;
}

void check_run_against_torch(const std::string& device) {
  const Fixture& f = fixture();
  TempDir dir("torch_loop");
  const std::string out = dir.str("run");
  TrainResult result = train(reference_config(out, device));
  ASSERT_EQ(result.steps, f.integer("cfg.steps"));

  const auto csv = read_metrics_csv(out + "/metrics.csv");
  const std::vector<int64_t> tokens = f.ints("step.tokens");
  ASSERT_EQ(csv.at("step").size(), tokens.size()) << "one metrics row per step (log_every 1)";
  for (size_t i = 0; i < tokens.size(); ++i) {
    EXPECT_EQ(csv.at("step")[i], double(i + 1));
    // Story order: step k trains on story (k - 1) mod stories, so the running token count must match.
    EXPECT_EQ(csv.at("tokens")[i], double(tokens[i])) << "tokens after step " << i + 1;
  }
  EXPECT_EQ(result.tokens, tokens.back());
  expect_column_close(csv, "raw_mean", f.values("step.raw_mean"), 1e-6, kStatRtol);
  expect_column_close(csv, "raw_std", f.values("step.raw_std"), 1e-6, kStatRtol);
  expect_column_close(csv, "loss", f.values("step.loss"), 1e-6, kLossRtol);
  expect_column_close(csv, "rec_loss", f.values("step.rec_loss"), 1e-6, kLossRtol);
  expect_column_close(csv, "l1", f.values("step.l1"), 1e-6, kLossRtol);
  // A count over (token, feature) pairs divided by tokens * F: exact up to the CSV's 9 digits.
  expect_column_close(csv, "nonzero_proportion", f.values("step.nonzero_proportion"), 1e-8, 0.0);

  SafetensorsFile weights = SafetensorsFile::open(out + "/sae/sae_weights.safetensors");
  for (const char* name : {"W_enc", "b_enc", "W_dec", "b_dec"}) {
    Tensor got = weights.read_f32(name);
    Tensor want = f.tensor(std::string("final.") + name);
    ASSERT_EQ(got.shape(), want.shape()) << name << ": " << got.describe() << " vs " << want.describe();
    Closeness c = test::closeness(got, want, kWeightAtol, kWeightRtol);
    EXPECT_EQ(c.violations, 0) << "final " << name << ": " << c.str();
    std::printf("  final %-14s max abs err %-10.3g max rel err %.3g\n", name, c.max_abs, c.max_rel);
  }
}

}  // namespace

// The fixture is what its generator promises: a reference that is worth comparing against.
TEST(TorchSaeLoop, FixtureHeader) {
  const Fixture& f = fixture();
  std::printf("  fixture %s: torch %s, seed %lld, draw %lld, min |pre| %.3g, f32-f64 drift %.3g, "
              "nonzero proportion %.3f..%.3f\n",
              kFixturePath.c_str(), f.text("meta.torch_version").c_str(), (long long)f.integer("meta.seed"),
              (long long)f.integer("meta.attempts"), f.scalar("meta.min_abs_pre"), f.scalar("meta.f64_drift"),
              f.scalar("meta.min_nonzero_proportion"), f.scalar("meta.max_nonzero_proportion"));
  EXPECT_GE(f.scalar("meta.min_abs_pre"), 1e-3);
  EXPECT_LE(f.scalar("meta.f64_drift"), 1e-4);
  // Some features are off and some on at every step, so the ReLU mask and the L1 term both matter.
  EXPECT_GT(f.scalar("meta.min_nonzero_proportion"), 0.0);
  EXPECT_LT(f.scalar("meta.max_nonzero_proportion"), 1.0);
  EXPECT_GT(f.scalar("cfg.l1"), 0.0);
  // More steps than stories, so the run wraps around to the first story.
  EXPECT_GT(f.integer("cfg.steps"), f.integer("cfg.stories"));

  // The data file and the initial checkpoint agree with the fixture.
  SafetensorsFile data = SafetensorsFile::open(kDataPath);
  EXPECT_EQ(data.read_i64("story_lengths"), f.ints("story_lengths"));
  EXPECT_EQ(data.entry("activations").dtype, "F32");
  EXPECT_EQ(data.entry("activations").shape.at(1), f.integer("cfg.d"));
  SafetensorsFile init = SafetensorsFile::open(kInitDir + "/sae_weights.safetensors");
  EXPECT_EQ(init.entry("W_enc").shape, (std::vector<int64_t>{f.integer("cfg.d"), f.integer("cfg.features")}));
  EXPECT_EQ(init.entry("W_dec").shape, (std::vector<int64_t>{f.integer("cfg.features"), f.integer("cfg.d")}));
  // The run must move the weights well beyond the tolerance, or the final comparison proves little.
  double moved = 0;
  for (const char* name : {"W_enc", "b_enc", "W_dec", "b_dec"}) {
    Closeness c = test::closeness(f.tensor(std::string("final.") + name), init.read_f32(name), 0, 0);
    moved = std::max(moved, c.max_abs);
  }
  std::printf("  weights move by up to %.3g over the run\n", moved);
  EXPECT_GT(moved, 1000 * kWeightAtol);
}

TEST(TorchSaeLoop, CpuTrainerMatchesTorch) { check_run_against_torch("cpu"); }

TEST(TorchSaeLoop, CudaTrainerMatchesTorch) {
  SKIP_WITHOUT_GPU();
  check_run_against_torch("cuda");
}
