// CUDA benchmarks of a TopK SAE's training step (skipped without a GPU), each against its floor in
// the same run:
//   BM_Cuda_TopKStep        SaeStep::train_step of --architecture topk (k 32, AuxK on at D/2 with no
//                           latent dead, unit-norm decoder): the encoder GEMM, the selection, the
//                           by-feature lists, the sparse decoder and both backward kernels with
//                           Adam fused in
//   BM_Cuda_TopKStep_Floor  what the step cannot avoid: the one dense encoder GEMM (at the same
//                           precision; at bf16 into bf16 pre-activations, as the step keeps them),
//                           our top-k selection kernel on its output, and one Adam step
//                           over as many parameters as the SAE has (our Adam kernel: a streaming
//                           pass over parameter and both moments; the step keeps no gradient
//                           buffer, so the floor's Adam reads its gradient from m, the same bytes,
//                           and holds none: at 2^20 latents and d 2304 a gradient would be 19 GB)
//   BM_Cuda_TopKStep_Chunked the step with --encoder-chunk (its P 1024 tokens at a time)
//   BM_Cuda_TopKStep_Parts  the step's kernels one by one (ms per step as counters), each followed
//                           by a synchronisation
// Arguments: F, D, precision (0 fp32, 1 tf32, 2 bf16); N = 4096 tokens. The 2^20-latent rows are
// the GPU goal "a TopK SAE with 2^20 latents at d 768 and d 2304 trains on one H200": they also
// report the device memory the step holds (cuda_bytes_reserved after the first step, in GB).
// The dictionary is drawn on the GPU side cheaply: W_dec = A B with A [F, 64], B [64, D] uniform
// (host-drawn, 64 F values rather than F D), rows normalised, W_enc = W_dec^T, biases 0, x normal:
// the shapes and the work are a real step's; only the latents' geometry is low-rank.
// Letters: N tokens, D input width, F latents, k kept per token.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>

#include "sae/arch/registry.h"
#include "sae/arch/sae_step.h"
#include "sae/arch/topk_family.h"
#include "sae/step/sae_ops.h"
#include "sae/train/arch_config.h"
#include "tensor/cuda/backend.h"
#include "tensor/ops.h"
#include "tensor/precision.h"
#include "tensor/rng.h"

using namespace sae;

namespace {
constexpr int64_t kN = 4096, kK = 32;

bool skip_without_gpu(benchmark::State& state) {
  if (cuda_available()) return false;
  state.SkipWithError("no GPU");
  return true;
}

Precision precision_of(int64_t arg) { return arg == 1 ? Precision::TF32 : (arg == 2 ? Precision::BF16 : Precision::FP32); }

ArchSettings topk_settings(int64_t d, int64_t encoder_chunk = 0) {
  return arch_settings("topk", {{"k", Json(kK)}, {"auxk-k", Json(d / 2)}, {"init-b-dec", Json("zero")},
                                {"encoder-chunk", Json(encoder_chunk)}},
                       int64_t(1) << 40);
}

// A unit-norm dictionary [F, D] of rank 64 made on the GPU (see the file comment), as a topk SAE.
SaeParams gpu_topk_params(int64_t features, int64_t d, Rng& rng) {
  const Tensor a = uniform_tensor(Shape{features, 64}, -1, 1, rng, DType::F32, Device::CUDA);
  const Tensor b = uniform_tensor(Shape{64, d}, -1, 1, rng, DType::F32, Device::CUDA);
  Tensor W_dec = matmul(a, b);
  W_dec = div(W_dec, norm2(W_dec, 1, true));
  SaeParams p = SaeParams::from_tensors(transpose(W_dec), Tensor::zeros(Shape{features}, DType::F32, Device::CUDA),
                                        W_dec, Tensor::zeros(Shape{d}, DType::F32, Device::CUDA));
  p.kind = "topk";
  p.settings["k"] = kK;
  return p;
}

void set_memory(benchmark::State& state) {
  state.counters["reserved_GB"] = double(cuda_bytes_reserved()) / 1e9;
  state.counters["in_use_GB"] = double(cuda_bytes_in_use()) / 1e9;
}

// A row whose set-up or step throws (out of device memory: the 2^20-latent rows at d 2304 need more
// than an H100's 80 GB) reports the error as its result, and the rows after it still run.
void guarded(benchmark::State& state, void (*body)(benchmark::State&)) {
  if (skip_without_gpu(state)) return;
  try {
    body(state);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

// range: F, D, precision; encoder_chunk: --encoder-chunk (0: the whole batch)
void topk_step_in_chunks(benchmark::State& state, int64_t encoder_chunk) {
  const int64_t features = state.range(0), d = state.range(1);
  const ScopedMatmulPrecision precision(precision_of(state.range(2)));
  Rng rng(1);
  SaeParams params = gpu_topk_params(features, d, rng);
  SaeAdamState adam = SaeAdamState::zeros_like(params);
  SaeStep step(arch_unit("topk"), topk_settings(d, encoder_chunk), kN, d, features, DType::F32, Device::CUDA);
  const Tensor x = normal_tensor(Shape{kN, d}, 0.0, 1.0, rng, DType::F32, Device::CUDA);  // E||x||^2 = D
  step.train_step(params, adam, x, 0.0, 1e-4);  // first use of every buffer
  cuda_synchronize();
  set_memory(state);
  for (auto _ : state) {
    benchmark::DoNotOptimize(step.train_step(params, adam, x, 0.0, 1e-4).loss);
    cuda_synchronize();  // Adam's kernels are queued after the step's last read-back
  }
  state.counters["tokens/s"] = benchmark::Counter(double(kN), benchmark::Counter::kIsIterationInvariantRate);
}

void topk_step(benchmark::State& state) { topk_step_in_chunks(state, 0); }
// range(3): --encoder-chunk
void topk_step_chunked(benchmark::State& state) { topk_step_in_chunks(state, state.range(3)); }

void topk_step_floor(benchmark::State& state) {
  const int64_t features = state.range(0), d = state.range(1);
  const ScopedMatmulPrecision precision(precision_of(state.range(2)));
  Rng rng(2);
  const Tensor x = normal_tensor(Shape{kN, d}, 0.0, 1.0, rng, DType::F32, Device::CUDA);
  const Tensor W_enc = uniform_tensor(Shape{d, 64}, -1, 1, rng, DType::F32, Device::CUDA);
  const Tensor W = matmul(W_enc, uniform_tensor(Shape{64, features}, -1, 1, rng, DType::F32, Device::CUDA));
  const Tensor b_enc = Tensor::zeros(Shape{features}, DType::F32, Device::CUDA);
  Tensor pre = Tensor::empty(Shape{kN, features}, activation_dtype(DType::F32), Device::CUDA);  // as the step keeps it
  SparseFeatures lists;
  auto ints = [](int64_t n) { return Tensor::zeros(Shape{n}, DType::I32, Device::CUDA); };
  lists.col_ptr = ints(features + 1);
  lists.row_ptr = ints(kN + 1);
  lists.rows = ints(kN * kK);
  lists.cols = ints(kN * kK);
  lists.vals = Tensor::zeros(Shape{kN * kK}, DType::F32, Device::CUDA);
  lists.row_vals = Tensor::zeros(Shape{kN * kK}, DType::F32, Device::CUDA);
  const int64_t count = 2 * d * features + features + d;
  Tensor p = Tensor::zeros(Shape{count}, DType::F32, Device::CUDA);
  Tensor m = Tensor::full(Shape{count}, 1e-3, DType::F32, Device::CUDA);
  Tensor v = Tensor::zeros(Shape{count}, DType::F32, Device::CUDA);
  const Tensor& g = m;  // read before m is written, element by element (see the file comment)
  AdamScalars scalars;
  scalars.lr = 1e-4;
  cuda_synchronize();
  set_memory(state);
  for (auto _ : state) {
    matmul_(pre, x, false, W, false);
    topk_select_(lists, pre, b_enc, Tensor(), kK, 0);
    adam_step_(p, m, v, g, scalars);
    cuda_synchronize();
  }
  state.counters["tokens/s"] = benchmark::Counter(double(kN), benchmark::Counter::kIsIterationInvariantRate);
}

// The step's kernels one at a time, synchronised after each (ms per step).
void topk_step_parts(benchmark::State& state) {
  const int64_t features = state.range(0), d = state.range(1);
  const ScopedMatmulPrecision precision(precision_of(state.range(2)));
  Rng rng(3);
  SaeParams params = gpu_topk_params(features, d, rng);
  const Tensor x = normal_tensor(Shape{kN, d}, 0.0, 1.0, rng, DType::F32, Device::CUDA);
  Tensor pre = Tensor::empty(Shape{kN, features}, activation_dtype(DType::F32), Device::CUDA);
  Tensor x_hat = Tensor::empty(Shape{kN, d}, DType::F32, Device::CUDA);
  SparseFeatures s;
  auto ints = [](int64_t n) { return Tensor::zeros(Shape{n}, DType::I32, Device::CUDA); };
  s.col_ptr = ints(features + 1);
  s.row_ptr = ints(kN + 1);
  s.rows = ints(kN * kK);
  s.cols = ints(kN * kK);
  s.vals = Tensor::zeros(Shape{kN * kK}, DType::F32, Device::CUDA);
  s.row_vals = Tensor::zeros(Shape{kN * kK}, DType::F32, Device::CUDA);
  Tensor col_sum = Tensor::zeros(Shape{features}, DType::F32, Device::CUDA), col_count = col_sum.clone();
  Tensor norms = norm2(params.W_dec, 1), dpre = Tensor::zeros(Shape{kN * kK}, DType::F32, Device::CUDA);
  Tensor dx = normal_tensor(Shape{kN, d}, 0.0, 1.0, rng, DType::F32, Device::CUDA);
  SaeAdamState adam = SaeAdamState::zeros_like(params);
  const AdamScalars scalars = adam.next_step(1e-4);
  const char* names[] = {"gemm_ms", "select_ms", "by_feature_ms", "decode_ms", "dec_bwd_adam_ms", "enc_bwd_adam_ms"};
  double ms[6] = {};
  auto timed = [&](int part, auto&& body) {
    cuda_synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    body();
    cuda_synchronize();
    ms[part] += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  int64_t steps = 0;
  for (auto _ : state) {
    timed(0, [&] { matmul_(pre, x, false, params.W_enc, false); });
    timed(1, [&] { topk_select_(s, pre, params.b_enc, Tensor(), kK, 0); });
    timed(2, [&] { sparse_by_feature_(s, col_sum, col_count); });
    timed(3, [&] { sparse_decode_(x_hat, s, params.W_dec, params.b_dec); });
    ParamUpdate W_dec, W_enc, b_enc;
    W_dec.param = params.W_dec, W_dec.m = adam.m.W_dec, W_dec.v = adam.v.W_dec, W_dec.adam = true;
    W_enc.param = params.W_enc, W_enc.m = adam.m.W_enc, W_enc.v = adam.v.W_enc, W_enc.adam = true;
    b_enc.param = params.b_enc, b_enc.m = adam.m.b_enc, b_enc.v = adam.v.b_enc, b_enc.adam = true;
    W_dec.scalars = W_enc.scalars = b_enc.scalars = scalars;
    timed(4, [&] { sparse_decoder_backward_(dpre, W_dec, dx, s, norms, col_sum, 0.0, true); });
    timed(5, [&] { sparse_encoder_backward_(W_enc, b_enc, x, s, dpre); });
    ++steps;
  }
  for (int i = 0; i < 6; ++i) state.counters[names[i]] = ms[i] / double(std::max<int64_t>(steps, 1));
}

void BM_Cuda_TopKStep(benchmark::State& state) { guarded(state, topk_step); }
void BM_Cuda_TopKStep_Floor(benchmark::State& state) { guarded(state, topk_step_floor); }
void BM_Cuda_TopKStep_Parts(benchmark::State& state) { guarded(state, topk_step_parts); }
void BM_Cuda_TopKStep_Chunked(benchmark::State& state) { guarded(state, topk_step_chunked); }

// F 16384 and 65536 at D 768 at each precision; 2^20 latents at D 768 and 2304 at bf16 and tf32.
void step_args(benchmark::internal::Benchmark* b) {
  for (int64_t f : {16384, 65536})
    for (int64_t p : {0, 1, 2}) b->Args({f, 768, p});
  for (int64_t d : {768, 2304})
    for (int64_t p : {1, 2}) b->Args({int64_t(1) << 20, d, p});
}
}  // namespace

BENCHMARK(BM_Cuda_TopKStep)->Apply(step_args)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.3);
BENCHMARK(BM_Cuda_TopKStep_Floor)->Apply(step_args)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.3);
// 2^20 latents with --encoder-chunk 1024 (the pre-activations of 1024 tokens at once: at d 2304 the
// whole batch's would take the step past an H100's memory); F 65536 in chunks against its row above.
BENCHMARK(BM_Cuda_TopKStep_Chunked)
    ->Args({65536, 768, 2, 1024})->Args({int64_t(1) << 20, 768, 2, 1024})->Args({int64_t(1) << 20, 2304, 2, 1024})
    ->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.3);
BENCHMARK(BM_Cuda_TopKStep_Parts)->Args({65536, 768, 0})->Args({65536, 768, 2})->Args({int64_t(1) << 20, 768, 2})
    ->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
