// The original study's training step on CPU (F = 10000, D = 768, one 218-token story,
// lambda = 50): forward + backward + Adam through the fused SaeStep, against the floor = the five
// bare cblas_sgemm calls the step needs plus one streaming pass over Adam's bytes, in one run.
// Peer: bench/peer_torch_step.py times the same step in PyTorch (run by scripts/bench_step.sh).
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <sys/resource.h>

#include <cmath>

#include "bench/adam_floor.h"
#include "sae/arch/registry.h"
#include "sae/arch/sae_step.h"
#include "sae/arch/standard/standard.h"
#include "sae/arch/standard/standard_kernels.h"
#include "sae/train/arch_config.h"
#include "tensor/ops.h"

using namespace sae;

namespace {
constexpr int64_t kD = 768, kF = 10000;

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;
}

void BM_SaeStep_Ours(benchmark::State& state) {
  const int64_t n = state.range(0);
  Rng rng(1);
  SaeParams params = SaeParams::standard_init(kD, kF, rng);
  SaeAdamState adam = SaeAdamState::zeros_like(params);
  SaeStep step(arch_unit("standard"), arch_settings("standard", {{"sparse", Json("off")}}), n, kD, kF, DType::F32, Device::CPU);
  Tensor x = normal_tensor(Shape{n, kD}, 0.0, std::sqrt(double(kD)), rng);  // per-story normalised scale
  // Warm the parameters a little so that a realistic fraction of features fire.
  for (int i = 0; i < 3; ++i) step.train_step(params, adam, x, 50.0, 1e-5);
  double active = 0;
  for (auto _ : state) {
    StepSums s = step.train_step(params, adam, x, 50.0, 1e-5);
    active = s.active / double(n * kF);
  }
  state.counters["density"] = active;
  state.counters["peak_RSS_MiB"] = peak_rss_mib();
  state.counters["tokens/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_SaeStep_Floor(benchmark::State& state) {
  const int64_t n = state.range(0);
  Rng rng(1);
  Tensor x = uniform_tensor(Shape{n, kD}, -1, 1, rng), w_enc = uniform_tensor(Shape{kD, kF}, -1, 1, rng);
  Tensor w_dec = uniform_tensor(Shape{kF, kD}, -1, 1, rng), f = uniform_tensor(Shape{n, kF}, -1, 1, rng);
  Tensor x_hat = Tensor::empty(Shape{n, kD}), grad_f = Tensor::empty(Shape{n, kF});
  Tensor grad_w_enc = Tensor::empty(Shape{kD, kF}), grad_w_dec = Tensor::empty(Shape{kF, kD});
  const int64_t params = 2 * kD * kF + kF + kD;
  Tensor p = uniform_tensor(Shape{params}, -1, 1, rng), g = uniform_tensor(Shape{params}, -1, 1, rng);
  Tensor m = Tensor::zeros(Shape{params}), v = Tensor::zeros(Shape{params});
  const int N = n, D = kD, F = kF;
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, F, D, 1, x.data<float>(), D, w_enc.data<float>(), F, 0,
                f.data<float>(), F);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, D, F, 1, f.data<float>(), F, w_dec.data<float>(), D, 0,
                x_hat.data<float>(), D);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, F, D, N, 1, f.data<float>(), F, x_hat.data<float>(), D, 0,
                grad_w_dec.data<float>(), D);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, F, D, 1, x_hat.data<float>(), D, w_dec.data<float>(), D, 0,
                grad_f.data<float>(), F);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, D, F, N, 1, x.data<float>(), D, grad_f.data<float>(), F, 0,
                grad_w_enc.data<float>(), F);
    adam_memory_floor(p, m, v, g);
    benchmark::DoNotOptimize(p.data<float>());
  }
  state.counters["tokens/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
}
}  // namespace

BENCHMARK(BM_SaeStep_Ours)->Arg(218)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_SaeStep_Floor)->Arg(218)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
