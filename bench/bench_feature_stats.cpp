// What gathering feature statistics during training costs (sae/train/feature_stats.h): one training
// step (SaeStep::train_step) with and without FeatureStats::add of its features, at the study's
// shapes (D = 768, F = 10000, lambda = 50, K = 10 top activations per feature, 8 context tokens on
// either side), in the dense regime (--sparse off: the kernel scans f [N, F]) and the sparse one
// (--sparse on: it scans the step's entry lists). The ratio of the two rows is the cost (goal: under
// 5% of the step).
// Each iteration draws a fresh batch (outside the timing) as a new story, so the top lists keep
// taking new entries at the rate of the first few dozen steps of a window (each feature's K largest
// of n values change about K / n of the time), more than in the rest of a long window. As in
// bench_sparse.cpp the density is set through b_enc and Adam runs with lr 0, so it stays put.
// BM_Cuda_StepWithFeatureStats: the same on the GPU (skipped without one; each iteration ends with a
// synchronisation, so times include the kernels).
// Arguments: tokens, density in units of 0.1%, sparse path (0/1), statistics (0/1).
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>

#include "sae/arch/registry.h"
#include "sae/arch/sae_step.h"
#include "sae/arch/standard/standard.h"
#include "sae/arch/standard/standard_kernels.h"
#include "sae/train/arch_config.h"
#include "sae/train/feature_stats.h"
#include "tensor/cuda/backend.h"
#include "tensor/ops.h"
#include "tensor/rng.h"
#include "tests/util/random_inputs.h"

using namespace sae;
using sae::testing::bias_for_density;

namespace {
constexpr int64_t kD = 768, kF = 10000;
constexpr double kLambda = 50.0, kLr = 0.0;

void step_with_feature_stats(benchmark::State& state, Device device) {
  const int64_t n = state.range(0);
  const double density = state.range(1) / 1000.0;
  const bool sparse = state.range(2) != 0, gather = state.range(3) != 0;
  Rng rng(1);
  SaeParams params = SaeParams::standard_init(kD, kF, rng, DType::F32, device);
  Tensor x = normal_tensor(Shape{n, kD}, 0.0, std::sqrt(double(kD)), rng, DType::F32, device);
  copy_(params.b_enc, bias_for_density(x, params.W_enc, density));
  SaeAdamState adam = SaeAdamState::zeros_like(params);
  SaeStep step(arch_unit("standard"), arch_settings("standard", {{"sparse", Json(sparse ? "on" : "off")}}), n, kD, kF, DType::F32, device);
  FeatureStats stats(kF, FeatureStatsOptions{10, 8}, device);
  BatchOrigins origins;
  origins.resize(n, 8);
  origins.has_token_ids = true;
  for (int64_t r = 0; r < n; ++r) {
    origins.position[r] = r;
    for (int64_t k = 0; k < origins.width(); ++k) origins.context[r * origins.width() + k] = static_cast<int32_t>(r + k);
  }
  step.train_step(params, adam, x, kLambda, kLr);  // first-use allocations
  int64_t iteration = 0;
  double active = 0, step_seconds = 0, stats_seconds = 0;
  for (auto _ : state) {
    state.PauseTiming();
    x = normal_tensor(Shape{n, kD}, 0.0, std::sqrt(double(kD)), rng, DType::F32, device);
    for (int64_t r = 0; r < n; ++r) origins.story[r] = iteration;  // a new story each step
    state.ResumeTiming();
    const auto begin = std::chrono::steady_clock::now();
    const StepSums sums = step.train_step(params, adam, x, kLambda, kLr);
    if (device == Device::CUDA) cuda_synchronize();
    const auto stepped = std::chrono::steady_clock::now();
    if (gather) stats.add(step.step_features(), origins, ++iteration);
    if (device == Device::CUDA) cuda_synchronize();
    step_seconds += std::chrono::duration<double>(stepped - begin).count();
    stats_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - stepped).count();
    active = sums.active;
  }
  // The statistics' share of the same iterations' step (add() after the step, timed apart), beside
  // the ratio of the two rows (which also holds what the statistics do to the caches).
  if (gather) state.counters["stats/step"] = stats_seconds / step_seconds;
  state.counters["density"] = active / double(n * kF);
  state.counters["tokens/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_StepWithFeatureStats(benchmark::State& state) { step_with_feature_stats(state, Device::CPU); }

void BM_Cuda_StepWithFeatureStats(benchmark::State& state) {
  if (!cuda_available()) {
    state.SkipWithError("no GPU");
    return;
  }
  step_with_feature_stats(state, Device::CUDA);
}
}  // namespace

// Dense regime: f scanned whole (at 10% and at 100% of features firing); sparse regime: the entry
// lists at 2%. Each pair (without, with) runs back to back.
BENCHMARK(BM_StepWithFeatureStats)
    ->Args({218, 100, 0, 0})
    ->Args({218, 100, 0, 1})
    ->Args({218, 1000, 0, 0})
    ->Args({218, 1000, 0, 1})
    ->Args({218, 20, 1, 0})
    ->Args({218, 20, 1, 1})
    ->Args({4096, 20, 1, 0})
    ->Args({4096, 20, 1, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(2.0);

// On the GPU: the original's story (dense 10%, sparse 2%) and a 4096-token batch, each pair back to back.
BENCHMARK(BM_Cuda_StepWithFeatureStats)
    ->Args({218, 100, 0, 0})
    ->Args({218, 100, 0, 1})
    ->Args({218, 20, 1, 0})
    ->Args({218, 20, 1, 1})
    ->Args({4096, 100, 0, 0})
    ->Args({4096, 100, 0, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
