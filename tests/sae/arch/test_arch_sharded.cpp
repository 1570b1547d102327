// Every architecture unit's step on several ranks (sae/arch/collectives.h), as an SAE and as a transcoder
// (with and without W_skip) or crosscoder where the unit trains one, is the one-process step of
// the whole SAE on the whole batch: S latent shards x R replicas, run on threads of this process
// (tests/util/thread_collectives.h), train 6 steps of float64 Adam from the same start on the same
// batches; the shards' slices put back together must equal the one-process parameters, and every
// rank's sums the one-process sums, to 1e-9 relative (summation order only). Also: the exact global
// selections against brute force, with ties.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "sae/arch/collectives.h"
#include "sae/arch/registry.h"
#include "sae/arch/sae_step.h"
#include "sae/arch/topk_family.h"
#include "sae/step/sae_ops.h"
#include "tensor/ops.h"
#include "tests/util/compare.h"
#include "tests/util/standard_sae.h"
#include "tests/util/thread_collectives.h"

using namespace sae;
using sae::testing::run_ranks;
using sae::testing::unit_settings;

namespace {

constexpr int64_t kD = 12, kF = 24, kN = 16, kSteps = 6;

// kOut: a transcoder's target width; a crosscoder reads kSources activations of kD / kSources.
constexpr int64_t kOut = 8, kSources = 3;

enum class Dictionary { Sae, Transcoder, SkipTranscoder, Crosscoder };

struct Case {
  const char* name;
  const char* unit;
  std::vector<std::pair<std::string, Json>> options;
  int64_t dead_window = 1000000;
  Dictionary dictionary = Dictionary::Sae;
  bool centred = false;  // --apply-b-dec-to-input: b_dec's encoder-side gradient summed over the shards
};

std::vector<Case> cases() {
  return {
      {"standard_dense", "standard", {{"sparse", Json("off")}}},
      {"standard_sparse", "standard", {{"sparse", Json("on")}}},
      {"topk_auxk", "topk", {{"k", Json(2)}, {"auxk-k", Json(3)}}, 1},
      {"topk_wide_k", "topk", {{"k", Json(15)}}},  // k above a shard's F/S = 12 or 6
      {"topk_auxk_chunked", "topk", {{"k", Json(2)}, {"auxk-k", Json(3)}, {"encoder-chunk", Json(5)}}, 1},
      {"batchtopk_auxk", "batchtopk", {{"k", Json(2)}, {"auxk-k", Json(3)}}, 1},
      {"matryoshka", "matryoshka_batchtopk", {{"k", Json(2)}, {"matryoshka-widths", Json::parse("[3, 10, 24]")}}, 1},
      {"jumprelu_step", "jumprelu", {{"jumprelu-init-threshold", Json(0.05)}, {"jumprelu-bandwidth", Json(0.5)}}},
      {"jumprelu_tanh",
       "jumprelu",
       {{"jumprelu-penalty", Json("tanh")}, {"jumprelu-pre-act", Json(0.1)}, {"jumprelu-bandwidth", Json(0.5)}}},
      {"gated", "gated", {}},
      // Dictionaries beyond the SAE: W_skip is replicated on every rank, its gradient summed over the
      // replicas; a crosscoder's L1 weighs each latent by its per-source decoder norms (local to a shard).
      {"standard_transcoder", "standard", {{"sparse", Json("off")}}, 1000000, Dictionary::Transcoder},
      {"standard_skip_transcoder", "standard", {{"sparse", Json("off")}}, 1000000, Dictionary::SkipTranscoder},
      {"topk_skip_transcoder", "topk", {{"k", Json(2)}, {"auxk-k", Json(3)}}, 1, Dictionary::SkipTranscoder},
      {"jumprelu_transcoder",
       "jumprelu",
       {{"jumprelu-init-threshold", Json(0.05)}, {"jumprelu-bandwidth", Json(0.5)}},
       1000000,
       Dictionary::Transcoder},
      {"standard_crosscoder", "standard", {{"sparse", Json("off")}}, 1000000, Dictionary::Crosscoder},
      {"topk_crosscoder", "topk", {{"k", Json(2)}}, 1000000, Dictionary::Crosscoder},
      // The encoder sees x - b_dec.
      {"standard_sparse_centred", "standard", {{"sparse", Json("on")}}, 1000000, Dictionary::Sae, true},
      {"topk_auxk_chunked_centred", "topk", {{"k", Json(2)}, {"auxk-k", Json(3)}, {"encoder-chunk", Json(5)}}, 1,
       Dictionary::Sae, true},
      {"matryoshka_centred", "matryoshka_batchtopk", {{"k", Json(2)}, {"matryoshka-widths", Json::parse("[3, 10, 24]")}},
       1, Dictionary::Sae, true},
      {"gated_centred", "gated", {}, 1000000, Dictionary::Sae, true},
  };
}

bool transcoder(const Case& c) { return c.dictionary == Dictionary::Transcoder || c.dictionary == Dictionary::SkipTranscoder; }
int64_t d_out(const Case& c) { return transcoder(c) ? kOut : kD; }

struct Run {
  SaeParams params;
  std::vector<StepSums> sums;
};

// The batches: kSteps of [kN, kD], float64.
std::vector<Tensor> batches() {
  Rng rng(11);
  std::vector<Tensor> out;
  for (int64_t s = 0; s < kSteps; ++s)
    out.push_back(add(normal_tensor(Shape{kN, kD}, 0.0, 1.0, rng, DType::F64),
                      uniform_tensor(Shape{kD}, -0.5, 0.5, rng, DType::F64)));
  return out;
}

// The targets: the batches themselves, or (a transcoder) kSteps of [kN, kOut] that depend on them.
std::vector<Tensor> targets(const Case& c) {
  const std::vector<Tensor> xs = batches();
  if (!transcoder(c)) return xs;
  Rng rng(13);
  const Tensor map = normal_tensor(Shape{kD, kOut}, 0.0, 0.4, rng, DType::F64);
  std::vector<Tensor> out;
  for (const Tensor& x : xs) out.push_back(add(matmul(x, map), normal_tensor(Shape{kN, kOut}, 0.0, 0.3, rng, DType::F64)));
  return out;
}

SaeParams start(const Case& c, const ArchUnit& unit, const ArchSettings& s) {
  Rng rng(5);
  std::vector<double> sample;
  const Tensor first = batches()[0];
  sample = first.to_vector();
  SaeParams p = unit.initial_params(s, kD, kF, rng, sample);
  if (transcoder(c)) {  // a decoder to the target's width, and the skip path
    p.transcoder = true;
    p.W_dec = normal_tensor(Shape{kF, kOut}, 0.0, 0.3, rng, DType::F32);
    p.b_dec = uniform_tensor(Shape{kOut}, -0.2, 0.2, rng, DType::F32);
    if (c.dictionary == Dictionary::SkipTranscoder) p.W_skip = normal_tensor(Shape{kD, kOut}, 0.0, 0.2, rng, DType::F32);
  }
  if (c.dictionary == Dictionary::Crosscoder) p.sources = kSources;
  for (auto& [name, t] : p.present()) *t = t->to(DType::F64);
  return p;
}

double lambda_of(const ArchUnit& unit) { return unit.has_lambda() ? 0.3 : 0.0; }

Run one_process(const Case& c) {
  const ArchUnit& unit = arch_unit(c.unit);
  const ArchSettings s = unit_settings(c.unit, c.options, c.dead_window);
  Run run{start(c, unit, s), {}};
  SaeAdamState adam = SaeAdamState::zeros_like(run.params);
  SaeStep step(unit, s, StepShape{kN, kD, d_out(c), kF}, DType::F64, Device::CPU);
  step.set_input_centring(c.centred);
  const std::vector<Tensor> xs = batches(), ys = targets(c);
  for (int64_t i = 0; i < kSteps; ++i)
    run.sums.push_back(step.train_step(run.params, adam, xs[i], ys[i], lambda_of(unit), 1e-2));
  return run;
}

// Each rank's slice of the parameters after the steps, and its sums.
std::vector<Run> ranks(const Case& c, int shards, int replicas) {
  const ArchUnit& unit = arch_unit(c.unit);
  const ArchSettings s = unit_settings(c.unit, c.options, c.dead_window);
  std::vector<Run> out(shards * replicas);
  const SaeParams whole = start(c, unit, s);
  const std::vector<Tensor> xs = batches(), ys = targets(c);
  run_ranks(shards, replicas, [&](Collectives& col) {
    const int64_t per = kF / shards, first = col.shard() * per;
    const int64_t t0 = part_begin(kN, replicas, col.replica()), t1 = part_begin(kN, replicas, col.replica() + 1);
    Run& run = out[col.rank()];
    run.params = whole.latent_slice(first, first + per);
    SaeAdamState adam = SaeAdamState::zeros_like(run.params);
    StepShape shape{t1 - t0, kD, d_out(c), per, first, kF, kN};
    SaeStep step(unit, s, shape, DType::F64, Device::CPU);
    step.set_collectives(&col);
    step.set_input_centring(c.centred);
    for (int64_t i = 0; i < kSteps; ++i)
      run.sums.push_back(step.train_step(run.params, adam, xs[i].slice_rows(t0, t1).clone(),
                                         ys[i].slice_rows(t0, t1).clone(), lambda_of(unit), 1e-2));
  });
  return out;
}

void expect_close(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  const std::vector<double> a = got.to_vector(), b = want.to_vector();
  double scale = 1e-12;
  for (double v : b) scale = std::max(scale, std::abs(v));
  for (size_t i = 0; i < a.size(); ++i)
    ASSERT_NEAR(a[i], b[i], 1e-9 * scale) << what << " element " << i;
}

void compare(const Case& c, int shards, int replicas) {
  SCOPED_TRACE(::testing::Message() << c.name << " S=" << shards << " R=" << replicas);
  const Run want = one_process(c);
  const std::vector<Run> got = ranks(c, shards, replicas);
  const int64_t per = kF / shards;
  for (int rank = 0; rank < shards * replicas; ++rank) {
    const Run& r = got[rank];
    const int shard = rank % shards;
    const SaeParams slice = want.params.latent_slice(shard * per, (shard + 1) * per);
    auto mine = r.params.present();
    auto theirs = slice.present();
    ASSERT_EQ(mine.size(), theirs.size());
    for (size_t i = 0; i < mine.size(); ++i)
      expect_close(*mine[i].second, *theirs[i].second, cat("rank ", rank, " ", mine[i].first));
    EXPECT_EQ(r.params.settings, want.params.settings) << "rank " << rank;
    for (int64_t step = 0; step < kSteps; ++step) {
      const StepSums &a = r.sums[step], &b = want.sums[step];
      EXPECT_NEAR(a.loss, b.loss, 1e-9 * std::abs(b.loss)) << "rank " << rank << " step " << step;
      EXPECT_NEAR(a.rec, b.rec, 1e-9 * std::abs(b.rec)) << "rank " << rank << " step " << step;
      EXPECT_NEAR(a.l1, b.l1, 1e-9 * std::abs(b.l1) + 1e-12) << "rank " << rank << " step " << step;
      EXPECT_NEAR(a.aux, b.aux, 1e-9 * std::abs(b.aux) + 1e-12) << "rank " << rank << " step " << step;
      EXPECT_EQ(a.active, b.active) << "rank " << rank << " step " << step;
      EXPECT_EQ(a.tokens, b.tokens) << "rank " << rank << " step " << step;
    }
  }
  // The runs did something: AuxK found dead latents where it is on, and the parameters moved.
  if (c.dead_window < 1000000) {
    bool aux = false;
    for (const StepSums& s : want.sums) aux = aux || s.aux > 0;
    EXPECT_TRUE(aux) << "no AuxK term in " << c.name;
  }
}

}  // namespace

TEST(ArchSharded, TwoShardsEqualOneProcess) {
  for (const Case& c : cases()) compare(c, 2, 1);
}

TEST(ArchSharded, TwoReplicasEqualOneProcess) {
  for (const Case& c : cases()) compare(c, 1, 2);
}

TEST(ArchSharded, FourShardsTimesTwoReplicasEqualOneProcess) {
  for (const Case& c : cases()) compare(c, 4, 2);
}

// shard_topk_cut against brute force, with many ties across shards: the kept set is exactly the k
// largest of each row (ties to the lower global index), > 0.
TEST(ArchSharded, TopKCutIsExactWithTies) {
  constexpr int64_t n = 7, f = 12, k = 4, shards = 3, per = f / shards;
  Rng rng(3);
  std::vector<double> values(n * f);
  for (double& v : values) v = double(int64_t(rng.below(5))) - 1.0;  // -1 .. 3: many ties, some <= 0
  const std::vector<uint8_t> want = top_k_per_row(values, n, f, k);
  std::vector<std::vector<uint8_t>> kept(shards);
  run_ranks(shards, 1, [&](Collectives& col) {
    const int64_t first = col.shard() * per;
    std::vector<double> local(n * per);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < per; ++j) local[t * per + j] = values[t * f + first + j];
    const Tensor pre = Tensor::from_vector(local, Shape{n, per}, DType::F32);
    const Tensor bias = Tensor::zeros(Shape{per});
    SparseFeatures s;
    s.row_ptr = Tensor::empty(Shape{n + 1}, DType::I32);
    s.cols = Tensor::empty(Shape{n * k}, DType::I32);
    s.row_vals = Tensor::zeros(Shape{n * k});
    topk_select_(s, pre, bias, Tensor(), k, 0);
    shard_topk_cut(col, s, 0, n, k, first);
    const Tensor dense = dense_from_lists(s, 0, n, per, pre);
    std::vector<uint8_t>& mine = kept[col.shard()];
    for (double v : dense.to_vector()) mine.push_back(v > 0);
  });
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < f; ++i) {
      const int64_t shard = i / per, j = i % per;
      EXPECT_EQ(kept[shard][t * per + j], want[t * f + i] && values[t * f + i] > 0) << "token " << t << " latent " << i;
    }
}

// distributed_batchtopk_select against brute force over S x R ranks, with ties at the threshold that
// are taken only in part (the global row-major order decides); pre-activations in float32 and in
// bf16 (--precision bf16: read widened).
TEST(ArchSharded, BatchTopKIsExactWithTies) {
  constexpr int64_t n = 9, f = 8, shards = 2, replicas = 3, per = f / shards;
  Rng rng(8);
  std::vector<double> values(n * f);
  for (double& v : values) v = double(int64_t(rng.below(4)));  // 0 .. 3: ties everywhere
  for (DType pre_dtype : {DType::F32, DType::BF16})
    for (int64_t total : {int64_t(5), int64_t(13), int64_t(30), int64_t(100)}) {
      SCOPED_TRACE(cat(dtype_name(pre_dtype), " total ", total));
      const std::vector<uint8_t> want = top_k_flat(values, total);
      std::vector<double> kept(n * f, -1);
      run_ranks(shards, replicas, [&](Collectives& col) {
        const int64_t first = col.shard() * per;
        const int64_t t0 = part_begin(n, replicas, col.replica()), t1 = part_begin(n, replicas, col.replica() + 1);
        std::vector<double> local((t1 - t0) * per);
        for (int64_t t = t0; t < t1; ++t)
          for (int64_t j = 0; j < per; ++j) local[(t - t0) * per + j] = values[t * f + first + j];
        const Tensor pre = Tensor::from_vector(local, Shape{t1 - t0, per}, DType::F32).to(pre_dtype);
        SparseFeatures s;
        s.row_ptr = Tensor::empty(Shape{t1 - t0 + 1}, DType::I32);
        s.cols = Tensor::empty(Shape{(t1 - t0) * per}, DType::I32);
        s.row_vals = Tensor::zeros(Shape{(t1 - t0) * per});
        distributed_batchtopk_select(col, s, pre, Tensor::zeros(Shape{per}), total, n);
        const std::vector<double> dense = dense_from_lists(s, 0, t1 - t0, per, s.row_vals).to_vector();
        for (int64_t t = t0; t < t1; ++t)
          for (int64_t j = 0; j < per; ++j) kept[t * f + first + j] = dense[(t - t0) * per + j] > 0;
      });
      for (int64_t e = 0; e < n * f; ++e)
        EXPECT_EQ(kept[e], double(want[e] && values[e] > 0)) << "element " << e;
    }
}
