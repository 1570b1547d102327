// A TopK SAE's training step on CPU (d 768, F 16384 and 65536, k 32, 4096-token batches; unit-norm
// decoder, AuxK on but no latent dead): forward + backward + Adam through the fused step (the
// sparse path from the first step), against the floor = the dense encoder GEMM (the one product the
// step cannot make sparse) plus one streaming pass over Adam's bytes (every parameter, its
// gradient and both moments read, three of them written). BM_TopKStep_Parts times the pieces.
// Peer: bench/peer_torch_topk.py, the same step in PyTorch eager (run with --threads matching
// OMP_NUM_THREADS). BM_TopKStep_Chunked: the same step with --encoder-chunk (and with AuxK's dead
// latents, whose chunks are encoded twice). Results: bench/RESULTS.md.
// Letters: N tokens, D input width, F features, k latents per token.
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <omp.h>

#include <chrono>
#include <cmath>

#include "bench/adam_floor.h"
#include "sae/arch/registry.h"
#include "sae/arch/sae_step.h"
#include "sae/step/sae_ops.h"
#include "sae/train/arch_config.h"
#include "tensor/ops.h"

using namespace sae;

namespace {
constexpr int64_t kD = 768, kN = 4096, kK = 32;

// AuxK at 1/32 with k_aux = D / 2, unit-norm rows, tied init; nothing dies within the benchmark.
ArchSettings topk_settings() {
  return arch_settings("topk", {{"k", Json(kK)}, {"auxk-k", Json(kD / 2)}, {"init-b-dec", Json("zero")}},
                       int64_t(1) << 40);
}

SaeParams topk_params(int64_t features, Rng& rng) {
  return arch_unit("topk").initial_params(topk_settings(), kD, features, rng, {});
}

void BM_TopKStep_Ours(benchmark::State& state) {
  const int64_t features = state.range(0);
  Rng rng(1);
  SaeParams params = topk_params(features, rng);
  SaeAdamState adam = SaeAdamState::zeros_like(params);
  SaeStep step(arch_unit("topk"), topk_settings(), kN, kD, features, DType::F32, Device::CPU);
  const Tensor x = normal_tensor(Shape{kN, kD}, 0.0, 1.0, rng);  // E||x||^2 = D: mean ||x|| about sqrt(D), as --normalize dataset
  step.train_step(params, adam, x, 0.0, 1e-4);  // first touch of every buffer
  for (auto _ : state) benchmark::DoNotOptimize(step.train_step(params, adam, x, 0.0, 1e-4).loss);
  state.counters["tokens/s"] = benchmark::Counter(double(kN), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = omp_get_max_threads();
}

void BM_TopKStep_Floor(benchmark::State& state) {
  const int64_t features = state.range(0);
  Rng rng(1);
  const Tensor x = uniform_tensor(Shape{kN, kD}, -1, 1, rng), w_enc = uniform_tensor(Shape{kD, features}, -1, 1, rng);
  Tensor pre = Tensor::empty(Shape{kN, features});
  const int64_t params = 2 * kD * features + features + kD;
  Tensor p = uniform_tensor(Shape{params}, -1, 1, rng), g = uniform_tensor(Shape{params}, -1, 1, rng);
  Tensor m = Tensor::zeros(Shape{params}), v = Tensor::zeros(Shape{params});
  const int N = kN, D = kD, F = static_cast<int>(features);
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, F, D, 1, x.data<float>(), D, w_enc.data<float>(), F, 0,
                pre.data<float>(), F);
    adam_memory_floor(p, m, v, g);
    benchmark::DoNotOptimize(p.data<float>());
  }
  state.counters["tokens/s"] = benchmark::Counter(double(kN), benchmark::Counter::kIsIterationInvariantRate);
}

// The step with --encoder-chunk C (range(1); 0: the whole batch) at F range(0): the encoder GEMM and
// the selection over C tokens at a time ([C, F] held instead of [N, F]). range(2) = 1: every latent
// that does not fire is dead (dead window 1 token), so AuxK runs and computes each chunk's P again.
void BM_TopKStep_Chunked(benchmark::State& state) {
  const int64_t features = state.range(0), chunk = state.range(1);
  const bool dead = state.range(2) != 0;
  Rng rng(1);
  SaeParams params = topk_params(features, rng);
  SaeAdamState adam = SaeAdamState::zeros_like(params);
  const ArchSettings settings =
      arch_settings("topk", {{"k", Json(kK)}, {"auxk-k", Json(kD / 2)}, {"init-b-dec", Json("zero")},
                             {"encoder-chunk", Json(chunk)}}, dead ? 1 : int64_t(1) << 40);
  SaeStep step(arch_unit("topk"), settings, kN, kD, features, DType::F32, Device::CPU);
  const Tensor x = normal_tensor(Shape{kN, kD}, 0.0, 1.0, rng);
  step.train_step(params, adam, x, 0.0, 1e-4);  // first touch of every buffer (and the clocks pass 1 token)
  for (auto _ : state) benchmark::DoNotOptimize(step.train_step(params, adam, x, 0.0, 1e-4).loss);
  state.counters["tokens/s"] = benchmark::Counter(double(kN), benchmark::Counter::kIsIterationInvariantRate);
}

// The step's pieces one by one (ms), for the discussion in bench/RESULTS.md.
void BM_TopKStep_Parts(benchmark::State& state) {
  const int64_t features = state.range(0);
  Rng rng(1);
  SaeParams params = topk_params(features, rng);
  const Tensor x = normal_tensor(Shape{kN, kD}, 0.0, 1.0, rng);
  Tensor pre = Tensor::empty(Shape{kN, features}), x_hat = Tensor::empty(Shape{kN, kD});
  const int64_t capacity = kN * kK;
  SparseFeatures s;
  auto ints = [](int64_t n) { return Tensor::from_vector(std::vector<double>(n, 0.0), Shape{n}, DType::I32); };
  s.col_ptr = ints(features + 1);
  s.row_ptr = ints(kN + 1);
  s.rows = ints(capacity);
  s.cols = ints(capacity);
  s.vals = Tensor::zeros(Shape{capacity});
  s.row_vals = Tensor::zeros(Shape{capacity});
  Tensor col_sum = Tensor::zeros(Shape{features}), col_count = Tensor::zeros(Shape{features});
  Tensor norms = norm2(params.W_dec, 1), dpre = Tensor::zeros(Shape{capacity});
  Tensor dx = normal_tensor(Shape{kN, kD}, 0.0, 1.0, rng);
  SaeAdamState adam = SaeAdamState::zeros_like(params);
  const AdamScalars scalars = adam.next_step(1e-4);
  double gemm = 0, select = 0, by_feature = 0, decode = 0, decoder_backward = 0, encoder_backward = 0;
  auto seconds = [](auto body) {
    const auto t0 = std::chrono::steady_clock::now();
    body();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  for (auto _ : state) {
    gemm += seconds([&] { matmul_(pre, x, false, params.W_enc, false); });
    select += seconds([&] { topk_select_(s, pre, params.b_enc, Tensor(), kK, 0); });
    by_feature += seconds([&] { sparse_by_feature_(s, col_sum, col_count); });
    decode += seconds([&] { sparse_decode_(x_hat, s, params.W_dec, params.b_dec); });
    ParamUpdate W_dec, W_enc, b_enc;
    W_dec.param = params.W_dec, W_dec.m = adam.m.W_dec, W_dec.v = adam.v.W_dec, W_dec.adam = true;
    W_enc.param = params.W_enc, W_enc.m = adam.m.W_enc, W_enc.v = adam.v.W_enc, W_enc.adam = true;
    b_enc.param = params.b_enc, b_enc.m = adam.m.b_enc, b_enc.v = adam.v.b_enc, b_enc.adam = true;
    W_dec.scalars = W_enc.scalars = b_enc.scalars = scalars;
    decoder_backward += seconds([&] { sparse_decoder_backward_(dpre, W_dec, dx, s, norms, col_sum, 0.0, true); });
    encoder_backward += seconds([&] { sparse_encoder_backward_(W_enc, b_enc, x, s, dpre); });
  }
  const double n = double(state.iterations()) / 1e3;
  state.counters["gemm_ms"] = gemm / n;
  state.counters["select_ms"] = select / n;
  state.counters["by_feature_ms"] = by_feature / n;
  state.counters["decode_ms"] = decode / n;
  state.counters["dec_bwd_adam_ms"] = decoder_backward / n;
  state.counters["enc_bwd_adam_ms"] = encoder_backward / n;
}
}  // namespace

BENCHMARK(BM_TopKStep_Ours)->Arg(16384)->Arg(65536)->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK(BM_TopKStep_Floor)->Arg(16384)->Arg(65536)->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK(BM_TopKStep_Chunked)
    ->Args({65536, 0, 0})->Args({65536, 1024, 0})->Args({65536, 256, 0})
    ->Args({65536, 0, 1})->Args({65536, 1024, 1})
    ->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK(BM_TopKStep_Parts)->Arg(16384)->Arg(65536)->Unit(benchmark::kMillisecond)->Iterations(2);
