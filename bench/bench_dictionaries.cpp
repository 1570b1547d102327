// Transcoder and crosscoder steps against the SAE step of the same shape: one training
// step (forward, backward, Adam) of the standard unit through SaeStep, dense, lambda 1, on
// 1024 tokens with F = 4096: an SAE at d 768, a transcoder 768 -> 768 (its target another array), a
// skip transcoder, and a crosscoder over 4 sources of 768 (d_in = d_out = 3072) beside an SAE at
// d 3072 (the same GEMMs; the crosscoder adds its per-source decoder norms). The peer for the
// crosscoder: bench/peer_torch_crosscoder.py (the same step as a PyTorch loop).
#include <benchmark/benchmark.h>

#include <cmath>

#include "sae/arch/registry.h"
#include "sae/arch/sae_step.h"
#include "sae/train/arch_config.h"
#include "tensor/ops.h"
#include "tensor/rng.h"

using namespace sae;

namespace {
constexpr int64_t kTokens = 1024, kF = 4096, kD = 768;

// kind: 0 SAE d, 1 transcoder, 2 skip transcoder, 3 crosscoder of 4 sources, 4 SAE 4d.
void BM_DictionaryStep(benchmark::State& state) {
  const int kind = static_cast<int>(state.range(0));
  const int64_t d = kind >= 3 ? 4 * kD : kD;
  DictionaryShape shape = DictionaryShape::sae(d, kF);
  shape.transcoder = kind == 1 || kind == 2;
  shape.skip = kind == 2;
  shape.sources = kind == 3 ? 4 : 1;
  Rng rng(3);
  const ArchUnit& unit = arch_unit("standard");
  const ArchSettings settings = arch_settings("standard", {{"sparse", Json("off")}});
  SaeParams params = unit.initial_params(settings, shape, rng, {});
  SaeAdamState adam = SaeAdamState::zeros_like(params);
  SaeStep step(unit, settings, StepShape{kTokens, d, d, kF}, DType::F32, Device::CPU);
  const Tensor x = normal_tensor(Shape{kTokens, d}, 0.0, 1.0, rng);
  const Tensor y = shape.transcoder ? normal_tensor(Shape{kTokens, d}, 0.0, 1.0, rng) : x;
  for (int i = 0; i < 2; ++i) step.train_step(params, adam, x, y, 1.0, 1e-4);
  for (auto _ : state) benchmark::DoNotOptimize(step.train_step(params, adam, x, y, 1.0, 1e-4).loss);
  state.counters["tokens/s"] = benchmark::Counter(double(kTokens), benchmark::Counter::kIsIterationInvariantRate);
}
}  // namespace

BENCHMARK(BM_DictionaryStep)->ArgName("kind")->DenseRange(0, 4)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
