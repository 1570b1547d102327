// Transcoders and crosscoders trained end to end from activation files: planted ground
// truth (shared sparse codes through known input and output directions) recovered by the decoder,
// the target's FVU, W_skip learning a planted linear part, bit-exact resume, sae_apply's outputs
// against the checkpoint applied in-process, and the option rules' one-line refusals.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <filesystem>
#include <string>
#include <vector>

#include "io/npy.h"
#include "sae/train/options.h"
#include "sae/arch/registry.h"
#include "sae/features/browser.h"
#include "sae/train/checkpoint.h"
#include "sae/train/metrics.h"
#include "sae/train/trainer.h"
#include "tensor/ops.h"
#include "tensor/rng.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::read_file;
using sae::testing::TempDir;
namespace fs = std::filesystem;

namespace {

// Unit rows [rows, d] from a seeded normal draw.
Tensor unit_rows(int64_t rows, int64_t d, Rng& rng) {
  Tensor m = normal_tensor(Shape{rows, d}, 0.0, 1.0, rng, DType::F32);
  float* p = m.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    double n2 = 0;
    for (int64_t j = 0; j < d; ++j) n2 += double(p[r * d + j]) * p[r * d + j];
    for (int64_t j = 0; j < d; ++j) p[r * d + j] = static_cast<float>(p[r * d + j] / std::sqrt(n2));
  }
  return m;
}

// Sparse codes [n, concepts]: `active` distinct concepts per token, magnitudes in [0.5, 1.5].
Tensor sparse_codes(int64_t n, int64_t concepts, int64_t active, Rng& rng) {
  Tensor c = Tensor::zeros(Shape{n, concepts});
  float* p = c.data<float>();
  for (int64_t t = 0; t < n; ++t)
    for (int64_t a = 0; a < active; ++a) {
      int64_t k = static_cast<int64_t>(rng.uniform() * concepts) % concepts;
      while (p[t * concepts + k] != 0) k = (k + 1) % concepts;
      p[t * concepts + k] = static_cast<float>(0.5 + rng.uniform());
    }
  return c;
}

// Planted data: x = codes A + noise, y = codes B. With `linear`, x's last `dense` columns hold instead
// a dense Gaussian part g (A's rows then live in the other columns) and y = codes B + g M: sparse
// codes cannot explain g M, only a skip path whose last rows are M.
struct Planted {
  int64_t n = 8192, concepts = 24, d_in = 16, d_out = 12, dense = 0;
  Tensor codes, A, B, M, x, y;
  Planted(uint64_t seed, bool linear) {
    Rng rng(seed);
    dense = linear ? 6 : 0;
    const Tensor A_part = unit_rows(concepts, d_in - dense, rng);
    A = Tensor::zeros(Shape{concepts, d_in});
    for (int64_t k = 0; k < concepts; ++k)
      for (int64_t j = 0; j < d_in - dense; ++j) A.data<float>()[k * d_in + j] = A_part.data<float>()[k * (d_in - dense) + j];
    B = unit_rows(concepts, d_out, rng);
    codes = sparse_codes(n, concepts, 3, rng);
    x = matmul(codes, A) + normal_tensor(Shape{n, d_in}, 0.0, 0.01, rng, DType::F32);
    y = matmul(codes, B);
    if (linear) {
      M = mul_scalar(normal_tensor(Shape{dense, d_out}, 0.0, 1.0, rng, DType::F32), 0.3);
      Tensor g = normal_tensor(Shape{n, dense}, 0.0, 0.5, rng, DType::F32);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t j = 0; j < dense; ++j) x.data<float>()[t * d_in + d_in - dense + j] = g.data<float>()[t * dense + j];
      y = y + matmul(g, M);
    }
  }
};

TrainConfig file_run(const std::string& data, const std::string& out) {
  TrainConfig c;
  c.data = data;
  c.features = 48;
  c.l1 = 0.5;
  c.lr = 3e-3;
  c.steps = 1500;
  c.batch_tokens = 256;
  c.normalize = Normalization::Dataset;
  c.log_every = 100;
  c.checkpoint_every = 100000;
  c.progress = ProgressMode::None;
  c.device = DeviceChoice::Cpu;
  c.out = out;
  return c;
}

// Planted x and y written to DIR/x.npy and DIR/y.npy; a transcoder run x -> y into DIR/<out>.
TrainConfig transcoder_run(const TempDir& dir, const Planted& p, const std::string& out) {
  write_npy(dir.str("x.npy"), p.x);
  write_npy(dir.str("y.npy"), p.y);
  TrainConfig c = file_run(dir.str("x.npy"), dir.str(out));
  c.target_data = dir.str("y.npy");
  return c;
}

double cosine_rows_recovered(const Tensor& concepts, const Tensor& decoder) {
  return concept_recovery(concepts, decoder, {}).recovered;
}

std::string one_line_error(const TrainConfig& c) {
  try {
    c.validate();
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(DictionaryTraining, TranscoderRecoversThePlantedOutputDirections) {
  TempDir dir("transcoder_planted");
  Planted p(11, /*linear=*/false);
  TrainConfig c = transcoder_run(dir, p, "run");
  const TrainResult r = train(c);
  Checkpoint ck = load_checkpoint(dir.str("run/sae"), Device::CPU, /*with_state=*/false);
  ASSERT_TRUE(ck.params.transcoder);
  EXPECT_EQ(ck.params.d_in(), p.d_in);
  EXPECT_EQ(ck.params.d_out(), p.d_out);
  // The decoder holds B's rows, the encoder reads A's: the features are the planted concepts.
  const double decoder_recovered = cosine_rows_recovered(p.B, ck.params.W_dec);
  // The feature whose decoder row is concept k's fires with concept k: correlation of activations and codes.
  const DatasetScales scales = DatasetScales::from_json(ck.cfg.at("sae_cpp").at("dataset_scale"));
  const Tensor f = sae_encode(ck.params, mul_scalar(p.x, scales.first()));
  const std::vector<ConceptMatch> match = best_concept_per_feature(p.B, ck.params.W_dec);
  std::vector<double> best(p.concepts, 0.0);
  for (int64_t j = 0; j < ck.params.d_sae(); ++j) {
    if (match[j].cosine < 0.9) continue;
    const int64_t k = match[j].index, F = ck.params.d_sae();
    double sf = 0, sc = 0, sff = 0, scc = 0, sfc = 0;
    for (int64_t t = 0; t < p.n; ++t) {
      const double a = f.data<float>()[t * F + j], b = p.codes.data<float>()[t * p.concepts + k];
      sf += a, sc += b, sff += a * a, scc += b * b, sfc += a * b;
    }
    const double cov = sfc - sf * sc / p.n, corr = cov / std::sqrt((sff - sf * sf / p.n) * (scc - sc * sc / p.n));
    best[k] = std::max(best[k], corr);
  }
  int64_t detected = 0;
  for (double c : best) detected += c > 0.8;
  std::printf("planted transcoder: decoder recovered %.3f, concepts detected (corr > 0.8) %lld/%lld, FVU %.4f, L0 %.2f\n",
              decoder_recovered, static_cast<long long>(detected), static_cast<long long>(p.concepts), r.fvu, r.l0);
  EXPECT_GE(decoder_recovered, 0.9);
  EXPECT_GE(detected, p.concepts * 9 / 10);
  EXPECT_LT(r.fvu, 0.1);  // of the target y, not of x
  EXPECT_LT(r.l0, 8.0);
  // cfg.json: SAELens' transcoder architecture with d_out; dataset scales for input and target.
  const Json cfg = ck.cfg;
  EXPECT_EQ(cfg.at("architecture").as_string(), "transcoder");
  EXPECT_EQ(cfg.at("d_out").as_int(), p.d_out);
  EXPECT_TRUE(cfg.at("sae_cpp").at("dataset_scale").is_array());
}

TEST(DictionaryTraining, SkipTranscoderLearnsThePlantedLinearPart) {
  TempDir dir("skip_planted");
  Planted p(12, /*linear=*/true);
  TrainConfig plain = transcoder_run(dir, p, "plain");
  TrainConfig skip = plain;
  skip.out = dir.str("skip");
  skip.skip = true;
  const TrainResult without = train(plain);
  const TrainResult with = train(skip);
  Checkpoint ck = load_checkpoint(dir.str("skip/sae"), Device::CPU, /*with_state=*/false);
  ASSERT_TRUE(ck.params.W_skip.defined());
  // W_skip works in normalised units (x s_x -> y s_y): compare its rows for g with the planted M.
  const Tensor w = ck.params.W_skip;
  double dot = 0, nw = 0, nm = 0;
  for (int64_t i = 0; i < p.M.numel(); ++i) {
    const double a = w.data<float>()[(p.d_in - p.dense) * p.d_out + i], b = p.M.data<float>()[i];
    dot += a * b, nw += a * a, nm += b * b;
  }
  const double cos = dot / std::sqrt(nw * nm);
  std::printf("skip transcoder: FVU %.4f (without skip %.4f), cos(W_skip, M) %.3f\n", with.fvu, without.fvu, cos);
  EXPECT_GT(cos, 0.9);
  EXPECT_LT(with.fvu, without.fvu - 0.04);
  EXPECT_EQ(ck.cfg.at("architecture").as_string(), "skip_transcoder");
}

TEST(DictionaryTraining, CrosscoderRecoversTheSharedConceptsOverBothSources) {
  TempDir dir("crosscoder_planted");
  Planted p(13, /*linear=*/false);
  Rng rng(99);
  const Tensor B16 = unit_rows(p.concepts, p.d_in, rng);  // a second source of the same width
  const Tensor xb = matmul(p.codes, B16);
  write_npy(dir.str("a.npy"), p.x);
  write_npy(dir.str("b.npy"), xb);
  TrainConfig c = file_run(dir.str("a.npy") + "," + dir.str("b.npy"), dir.str("run"));
  const TrainResult r = train(c);
  Checkpoint ck = load_checkpoint(dir.str("run/sae"), Device::CPU, /*with_state=*/false);
  EXPECT_EQ(ck.params.sources, 2);
  EXPECT_EQ(ck.params.d_in(), 2 * p.d_in);
  // Each concept is a pair of directions (A's row, B16's row), one per source.
  Tensor pairs = Tensor::zeros(Shape{p.concepts, 2 * p.d_in});
  for (int64_t k = 0; k < p.concepts; ++k)
    for (int64_t j = 0; j < p.d_in; ++j) {
      pairs.data<float>()[k * 2 * p.d_in + j] = p.A.data<float>()[k * p.d_in + j];
      pairs.data<float>()[k * 2 * p.d_in + p.d_in + j] = B16.data<float>()[k * p.d_in + j];
    }
  const double recovered = cosine_rows_recovered(pairs, ck.params.W_dec);
  std::printf("planted crosscoder: recovered %.3f, FVU %.4f, L0 %.2f\n", recovered, r.fvu, r.l0);
  EXPECT_GE(recovered, 0.9);
  EXPECT_LT(r.fvu, 0.1);
  // The browser shows each feature's decoder norm per source (for model diffing).
  BrowserOptions options;
  options.run = dir.str("run");
  const BrowserData data = browser_data(options);
  ASSERT_EQ(data.head.at("about").at("sources").elements().size(), 2u);
  const Json f3 = data.feature(3);
  ASSERT_EQ(f3.at("sn").elements().size(), 2u);
  for (int64_t s = 0; s < 2; ++s) {
    double sq = 0;
    for (int64_t j = 0; j < p.d_in; ++j) {
      const double v = ck.params.W_dec.data<float>()[3 * 2 * p.d_in + s * p.d_in + j];
      sq += v * v;
    }
    EXPECT_NEAR(f3.at("sn").elements()[s].as_number(), std::sqrt(sq), 1e-3 * std::sqrt(sq));  // 4 digits on the page
  }
  // sae_apply takes one file per source; an empty item is named as the option (it said "----input").
  const auto apply = run_binary("sae_apply", "--sae " + dir.str("run/sae") + " --input " + dir.str("a.npy") + ",," +
                                                 dir.str("b.npy") + " --features-out " + dir.str("f.npy"), dir);
  EXPECT_EQ(apply.exit_code, 2) << apply.err;
  EXPECT_NE(apply.err.find("sae_apply: error: --input: an empty item in the comma-separated list"), std::string::npos)
      << apply.err;
}

TEST(DictionaryTraining, TranscoderResumeIsBitExact) {
  TempDir dir("transcoder_resume");
  Planted p(14, /*linear=*/true);
  TrainConfig full = transcoder_run(dir, p, "full");
  full.skip = true;
  full.steps = 40;
  full.log_every = 5;
  train(full);
  TrainConfig cut = full;
  cut.out = dir.str("cut");
  cut.steps = 25;
  cut.checkpoint_every = 10;
  train(cut);
  fs::remove_all(dir.str("cut/sae"));  // died after its step-20 checkpoint
  TrainConfig rest;
  rest.resume = dir.str("cut");
  give_every_control(rest);
  rest.steps = 40;
  rest.log_every = 5;
  rest.progress = ProgressMode::None;
  train(rest);
  EXPECT_EQ(read_file(dir.str("full/sae/sae_weights.safetensors")), read_file(dir.str("cut/sae/sae_weights.safetensors")));
  EXPECT_EQ(read_file(dir.str("full/metrics.csv")), read_file(dir.str("cut/metrics.csv")));
}

TEST(DictionaryTraining, ApplyPredictsTheTargetAsTheCheckpointDoesInProcess) {
  TempDir dir("transcoder_apply");
  Planted p(15, /*linear=*/true);
  TrainConfig c = transcoder_run(dir, p, "run");
  c.skip = true;
  c.steps = 300;
  train(c);
  const auto r = sae::testing::run_binary(
      "sae_apply", "--sae " + dir.str("run/sae") + " --input " + dir.str("x.npy") + " --reconstruction-out " +
                       dir.str("yhat.npy"), dir);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const Tensor y_hat = NpyFile::open(dir.str("yhat.npy")).read_f32();
  ASSERT_EQ(y_hat.size(1), p.d_out);
  // In-process: normalise x with its scale, encode, decode with the skip path, divide by y's scale.
  Checkpoint ck = load_checkpoint(dir.str("run/sae"), Device::CPU, /*with_state=*/false);
  const DatasetScales scales = DatasetScales::from_json(ck.cfg.at("sae_cpp").at("dataset_scale"));
  ASSERT_EQ(scales.per_block.size(), 2u);
  const Tensor xn = mul_scalar(p.x, scales.per_block[0]);
  const Tensor expected = mul_scalar(sae_decode(ck.params, sae_encode(ck.params, xn), &xn), 1.0 / scales.per_block[1]);
  double worst = 0, fvu_num = 0, fvu_den = 0, mean = 0;
  const int64_t n = p.n * p.d_out;
  for (int64_t i = 0; i < n; ++i) mean += p.y.data<float>()[i] / n;
  for (int64_t i = 0; i < n; ++i) {
    const double a = y_hat.data<float>()[i], e = expected.data<float>()[i], t = p.y.data<float>()[i];
    worst = std::max(worst, std::fabs(a - e) / (1 + std::fabs(e)));
    fvu_num += (a - t) * (a - t);
    fvu_den += (t - mean) * (t - mean);
  }
  std::printf("sae_apply transcoder: max rel diff vs in-process %.2e, FVU of y %.4f\n", worst, fvu_num / fvu_den);
  EXPECT_LT(worst, 1e-5);
  EXPECT_LT(fvu_num / fvu_den, 0.35);
}

TEST(DictionaryTraining, OptionRulesAreOneLineUsageErrors) {
  TrainConfig base = file_run("x.npy", "out");
  struct Case {
    const char* what;
    std::function<void(TrainConfig&)> set;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"both kinds", [](TrainConfig& c) { c.target_data = "y.npy"; c.data = "a.npy,b.npy"; }, "not both"},
      {"target is data", [](TrainConfig& c) { c.target_data = "x.npy"; }, "that is an SAE"},
      {"synthetic transcoder", [](TrainConfig& c) { c.data = "synthetic"; c.target_data = "y.npy"; }, "not synthetic"},
      {"hooks from files", [](TrainConfig& c) { c.data = "a.npy,b.npy"; c.hooks = "blocks.0.hook_resid_post,blocks.1.hook_resid_post"; },
       "--data A,B"},
      {"repeated source", [](TrainConfig& c) { c.data = "a.npy,a.npy"; }, "read twice"},
      {"skip without transcoder", [](TrainConfig& c) { c.skip = true; }, "--skip"},
      {"story normalisation", [](TrainConfig& c) { c.target_data = "y.npy"; c.normalize = Normalization::Story; },
       "--normalize story"},
      {"gated transcoder", [](TrainConfig& c) { c.target_data = "y.npy"; c.architecture = "gated"; },
       "--architecture gated does not train transcoders (standard, topk, batchtopk, jumprelu do)"},
      {"text transcoder with --target-data",
       [](TrainConfig& c) { c.data = "text"; c.model = "m"; c.text = "t.txt"; c.target_data = "y.npy"; },
       "--target-data is for activation files"},
      {"text transcoder without hooks",
       [](TrainConfig& c) { c.data = "text"; c.model = "m"; c.text = "t.txt"; c.hook_in = "blocks.0.hook_resid_pre"; },
       "--hook-in and --hook-out"},
      {"--transcoder beside both hooks (it would name neither)",
       [](TrainConfig& c) {
         c.data = "text"; c.model = "m"; c.text = "t.txt"; c.transcoder_block = 1;
         c.hook_in = "blocks.0.hook_resid_pre";
         c.hook_out = "blocks.0.hook_mlp_out";
       },
       "--transcoder 1 names both hooks, which --hook-in and --hook-out replace"},
      {"same hook in and out",
       [](TrainConfig& c) {
         c.data = "text"; c.model = "m"; c.text = "t.txt";
         c.hook_in = c.hook_out = "blocks.0.hook_resid_pre";
       },
       "that is an SAE"},
  };
  for (const Case& k : cases) {
    TrainConfig c = base;
    k.set(c);
    const std::string message = one_line_error(c);
    EXPECT_NE(message.find(k.expect), std::string::npos) << k.what << ": " << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << k.what;
  }
}
