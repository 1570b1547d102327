// CUDA benchmarks of the SAE step (skipped without a GPU), each against a floor in the same run:
//   encoder_activate / encoder_backward   vs  a device-to-device copy of f (the bytes one pass
//                                             must read and write at least), reported in GB/s
//   the fused SaeStep forward_backward    vs  its five cuBLAS GEMMs alone, at each --precision
//   (second argument: 0 fp32, 1 tf32, 2 bf16; the floor's GEMMs at the same precision)
//   a whole training step (BM_Cuda_SaeTrainStep: forward, backward, Adam), the unit a run pays
// Shapes of the study: one story (N = 218) or a token batch (N = 4096), D = 768, F = 10000.
// Every timed iteration ends with cuda_synchronize(), so times include the kernels, not just
// their launches.
#include <benchmark/benchmark.h>

#include "sae/params.h"
#include "sae/arch/registry.h"
#include "sae/arch/sae_step.h"
#include "sae/arch/standard/standard.h"
#include "sae/arch/standard/standard_kernels.h"
#include "sae/train/arch_config.h"
#include "tensor/cuda/backend.h"
#include "sae/step/sae_ops.h"
#include "tensor/ops.h"
#include "tensor/precision.h"
#include "tensor/rng.h"

using namespace sae;

namespace {
constexpr int64_t kD = 768, kF = 10000;

bool skip_without_gpu(benchmark::State& state) {
  if (cuda_available()) return false;
  state.SkipWithError("no GPU");
  return true;
}

void set_bytes(benchmark::State& state, double bytes_per_iteration) {
  state.counters["GB/s"] = benchmark::Counter(bytes_per_iteration, benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}

Tensor random_gpu(const Shape& s, double lo, double hi, Rng& rng) { return uniform_tensor(s, lo, hi, rng, DType::F32, Device::CUDA); }

// range(0): N
void BM_Cuda_EncoderActivate(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  const int64_t n = state.range(0);
  Rng rng(1);
  Tensor pre = random_gpu(Shape{n, kF}, -1, 1, rng), bias = random_gpu(Shape{kF}, -0.5, 0.1, rng);
  Tensor f = pre.clone(), col_sum = Tensor::empty(Shape{kF}, DType::F32, Device::CUDA), col_count = col_sum.clone();
  for (auto _ : state) {
    encoder_activate_(f, bias, col_sum, col_count);  // reruns on its own output: same traffic
    cuda_synchronize();
  }
  set_bytes(state, 2.0 * f.nbytes());
}

// range(0): N, range(1): percent of f that is positive
void BM_Cuda_EncoderBackward(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  const int64_t n = state.range(0);
  const double active = state.range(1) / 100.0;
  Rng rng(2);
  Tensor f = relu(add_scalar(random_gpu(Shape{n, kF}, 0, 1, rng), active - 1.0));
  Tensor grad = random_gpu(Shape{n, kF}, -1, 1, rng), norms = random_gpu(Shape{kF}, 0, 1, rng);
  Tensor col_sum = Tensor::empty(Shape{kF}, DType::F32, Device::CUDA);
  for (auto _ : state) {
    encoder_backward_(grad, f, norms, 0.5, col_sum);
    cuda_synchronize();
  }
  set_bytes(state, (2.0 + active) * grad.nbytes());  // read f, write grad, read grad where f > 0
}

// The floor: read and write f's bytes once.
void BM_Cuda_CopyFloor(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  const int64_t n = state.range(0);
  Rng rng(3);
  Tensor src = random_gpu(Shape{n, kF}, -1, 1, rng), dst = src.clone();
  for (auto _ : state) {
    copy_(dst, src);
    cuda_synchronize();
  }
  set_bytes(state, 2.0 * src.nbytes());
}

Precision precision_of(int64_t arg) { return arg == 1 ? Precision::TF32 : (arg == 2 ? Precision::BF16 : Precision::FP32); }

// range(0): N, range(1): precision
void BM_Cuda_SaeStep(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  const int64_t n = state.range(0);
  const ScopedMatmulPrecision precision(precision_of(state.range(1)));
  Rng rng(4);
  SaeParams params = SaeParams::standard_init(kD, kF, rng, DType::F32, Device::CUDA);
  SaeParams grads = SaeParams::zeros_like(params);
  Tensor x = normal_tensor(Shape{n, kD}, 0.0, 1.0, rng, DType::F32, Device::CUDA);
  SaeStep step(arch_unit("standard"), arch_settings("standard", {{"sparse", Json("off")}}), n, kD, kF, DType::F32, Device::CUDA);
  for (auto _ : state) {
    benchmark::DoNotOptimize(step.forward_backward(params, x, 5.0, grads));  // ends with a device-to-host read
  }
  state.counters["tokens/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
}

// range(0): N, range(1): precision. train_step: forward, backward and Adam, dense (--sparse off),
// one synchronisation per step after Adam. sums_on_device: the loss sums left on the device (the
// trainer's --device-data), so nothing inside the step waits for the GPU.
void train_step_bench(benchmark::State& state, bool sums_on_device) {
  if (skip_without_gpu(state)) return;
  const int64_t n = state.range(0);
  const ScopedMatmulPrecision precision(precision_of(state.range(1)));
  Rng rng(6);
  SaeParams params = SaeParams::standard_init(kD, kF, rng, DType::F32, Device::CUDA);
  SaeAdamState adam = SaeAdamState::zeros_like(params);
  Tensor x = normal_tensor(Shape{n, kD}, 0.0, 1.0, rng, DType::F32, Device::CUDA);
  SaeStep step(arch_unit("standard"), arch_settings("standard", {{"sparse", Json("off")}}), n, kD, kF, DType::F32, Device::CUDA);
  step.set_sums_on_device(sums_on_device);
  step.train_step(params, adam, x, 5.0, 1e-5);
  for (auto _ : state) {
    benchmark::DoNotOptimize(step.train_step(params, adam, x, 5.0, 1e-5));
    cuda_synchronize();
  }
  state.counters["tokens/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
}
void BM_Cuda_SaeTrainStep(benchmark::State& state) { train_step_bench(state, false); }
void BM_Cuda_SaeTrainStepSumsOnDevice(benchmark::State& state) { train_step_bench(state, true); }

// The floor of the step: its five GEMMs (2 * N * D * F flops each) with nothing around them, on
// operands as the step keeps them (its [N, F] activations in bf16 at bf16: sae/arch/unit.h).
void BM_Cuda_SaeStepGemmFloor(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  const int64_t n = state.range(0);
  const ScopedMatmulPrecision precision(precision_of(state.range(1)));
  Rng rng(5);
  Tensor x = random_gpu(Shape{n, kD}, -1, 1, rng), W_enc = random_gpu(Shape{kD, kF}, -1, 1, rng);
  Tensor W_dec = random_gpu(Shape{kF, kD}, -1, 1, rng), f = random_gpu(Shape{n, kF}, 0, 1, rng).to(activation_dtype(DType::F32));
  Tensor dx = random_gpu(Shape{n, kD}, -1, 1, rng);
  Tensor pre = f.clone(), x_hat = dx.clone(), grad_f = f.clone(), grad_W_dec = W_dec.clone(), grad_W_enc = W_enc.clone();
  for (auto _ : state) {
    matmul_(pre, x, false, W_enc, false);
    matmul_(x_hat, f, false, W_dec, false);
    matmul_(grad_W_dec, f, true, dx, false);
    matmul_(grad_f, dx, false, W_dec, true);
    matmul_(grad_W_enc, x, true, grad_f, false);
    cuda_synchronize();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(5 * 2.0 * n * kD * kF, benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}
}  // namespace

BENCHMARK(BM_Cuda_EncoderActivate)->Arg(218)->Arg(4096)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_Cuda_EncoderBackward)->Args({218, 50})->Args({4096, 50})->Args({4096, 2})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_Cuda_CopyFloor)->Arg(218)->Arg(4096)->Unit(benchmark::kMicrosecond)->UseRealTime();
namespace {
void tokens_and_precisions(benchmark::internal::Benchmark* b) {
  for (int64_t n : {218, 4096})
    for (int64_t p : {0, 1, 2}) b->Args({n, p});
}
}  // namespace
BENCHMARK(BM_Cuda_SaeStep)->Apply(tokens_and_precisions)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Cuda_SaeStepGemmFloor)->Apply(tokens_and_precisions)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Cuda_SaeTrainStep)->Apply(tokens_and_precisions)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Cuda_SaeTrainStepSumsOnDevice)->Apply(tokens_and_precisions)->Unit(benchmark::kMillisecond)->UseRealTime();
