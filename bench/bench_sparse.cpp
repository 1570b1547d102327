// The sparse SAE step (sae/arch/sae_step.h, --sparse) against the dense step, in one run, at the
// study's shapes (D = 768, F = 10000, lambda = 50): one 218-token story and a 4096-token batch, at
// feature densities 0.5%, 2%, 10% and 100%. Each timed iteration is a whole training step
// (SaeStep::train_step: forward, backward, Adam). The density is set through b_enc: minus the
// (1 - density) quantile of all pre-activations x W_enc of the batch, so that the chosen fraction of
// f fires. Adam runs with lr 0: every step does all of Adam's arithmetic and memory traffic, but the
// weights, and so the density, stay where they were set (with the same batch every iteration, any
// lr > 0 drifts the density within a few dozen steps). The measured density is reported.
// Arguments: tokens, density in units of 0.1%, mode (0 dense, 1 sparse, 2 auto).
// BM_SparseCrossover runs dense and sparse at densities between 5% and 50%: where the two cross is
// auto mode's threshold on the CPU (sae/arch/standard/standard.cpp); BM_Cuda_SparseCrossover measures
// and reports the crossover on the GPU.
// The floor of the sparse step: the dense encoder GEMM plus one streaming pass over Adam's bytes
// for W_enc and W_dec (read and write of parameter, m and v).
// The CUDA versions need a GPU and report "no GPU" otherwise.
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

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
#include "tests/util/random_inputs.h"

using namespace sae;
using sae::testing::bias_for_density;

namespace {
constexpr int64_t kD = 768, kF = 10000;
constexpr double kLambda = 50.0, kLr = 0.0;


SparseMode mode_of(int64_t arg) { return arg == 0 ? SparseMode::Off : (arg == 1 ? SparseMode::On : SparseMode::Auto); }

void run_step(benchmark::State& state, Device device) {
  if (device == Device::CUDA && !cuda_available()) {
    state.SkipWithError("no GPU");
    return;
  }
  const int64_t n = state.range(0);
  const double density = state.range(1) / 1000.0;
  Rng rng(1);
  SaeParams params = SaeParams::standard_init(kD, kF, rng, DType::F32, device);
  Tensor x = normal_tensor(Shape{n, kD}, 0.0, std::sqrt(double(kD)), rng, DType::F32, device);  // per-story scale
  copy_(params.b_enc, bias_for_density(x, params.W_enc, density));
  SaeAdamState adam = SaeAdamState::zeros_like(params);
  SaeStep step(arch_unit("standard"), arch_settings("standard", {{"sparse", Json(sparse_mode_name(mode_of(state.range(2))))}}), n, kD, kF, DType::F32, device);
  step.train_step(params, adam, x, kLambda, kLr);  // first-use allocations
  StepSums last;
  int64_t sparse_steps = 0, steps = 0;
  for (auto _ : state) {
    last = step.train_step(params, adam, x, kLambda, kLr);  // ends with a read of the sums: synchronous
    sparse_steps += last.sparse;
    ++steps;
  }
  state.counters["density"] = last.active / double(n * kF);
  state.counters["sparse_steps"] = double(sparse_steps) / double(std::max<int64_t>(steps, 1));
  state.counters["tokens/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_SparseStep(benchmark::State& state) { run_step(state, Device::CPU); }
void BM_Cuda_SparseStep(benchmark::State& state) { run_step(state, Device::CUDA); }

// The encoder GEMM and the memory pass of Adam over W_enc and W_dec (24 bytes per parameter).
void BM_SparseStep_Floor(benchmark::State& state) {
  const int64_t n = state.range(0);
  Rng rng(2);
  Tensor x = uniform_tensor(Shape{n, kD}, -1, 1, rng), w_enc = uniform_tensor(Shape{kD, kF}, -1, 1, rng);
  Tensor f = Tensor::empty(Shape{n, kF});
  const int64_t params = 2 * kD * kF;
  Tensor p = uniform_tensor(Shape{params}, -1, 1, rng), m = Tensor::zeros(Shape{params}), v = Tensor::zeros(Shape{params});
  const int N = n, D = kD, F = kF;
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, F, D, 1, x.data<float>(), D, w_enc.data<float>(), F, 0,
                f.data<float>(), F);
    float *pp = p.data<float>(), *mp = m.data<float>(), *vp = v.data<float>();
#pragma omp parallel for simd
    for (int64_t i = 0; i < params; ++i) {
      mp[i] = 0.9f * mp[i] + 1e-3f;
      vp[i] = 0.999f * vp[i] + 1e-6f;
      pp[i] -= 1e-5f * mp[i];
    }
    benchmark::DoNotOptimize(pp);
  }
  state.counters["tokens/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
}

// One batch of the study's shapes at a set density, activated and listed as the sparse step lists
// it: the shared set-up of the kernel-by-kernel benchmarks below.
struct ListedBatch {
  SaeParams model;
  Tensor x, b_enc, f, col_sum, col_count;
  SparseFeatures lists;
  int64_t entries = 0;
  ListedBatch(int64_t n, double density, Rng& rng)
      : model(SaeParams::standard_init(kD, kF, rng)),
        x(normal_tensor(Shape{n, kD}, 0.0, std::sqrt(double(kD)), rng)),
        b_enc(bias_for_density(x, model.W_enc, density)),
        f(Tensor::empty(Shape{n, kF})),
        col_sum(Tensor::empty(Shape{kF})),
        col_count(Tensor::empty(Shape{kF})) {
    matmul_(f, x, false, model.W_enc, false);
    encoder_activate_(f, b_enc, col_sum, col_count);
    entries = static_cast<int64_t>(sum(col_count).item());
    lists.col_ptr = Tensor::empty(Shape{kF + 1}, DType::I32);
    lists.row_ptr = Tensor::empty(Shape{n + 1}, DType::I32);
    for (Tensor* t : {&lists.rows, &lists.cols}) *t = Tensor::empty(Shape{entries + 1}, DType::I32);
    for (Tensor* t : {&lists.vals, &lists.row_vals}) *t = Tensor::empty(Shape{entries + 1});
    sparse_index_(lists, f, col_count);
  }
};

// The sparse step kernel by kernel (ms per step as counters), at the shapes and densities of
// BM_SparseStep: where the time goes between the encoder GEMM (the floor) and the whole step.
// Adam runs fused in the two backward kernels, as in SaeStep::train_step.
void BM_SparseStep_Parts(benchmark::State& state) {
  const int64_t n = state.range(0);
  Rng rng(1);
  ListedBatch batch(n, state.range(1) / 1000.0, rng);
  SaeParams& model = batch.model;
  const Tensor &x = batch.x, &b_enc = batch.b_enc;
  Tensor &f = batch.f, &col_sum = batch.col_sum, &col_count = batch.col_count;
  SparseFeatures& s = batch.lists;
  const int64_t entries = batch.entries;
  Tensor x_hat = Tensor::empty(Shape{n, kD}), dx = Tensor::empty(Shape{n, kD}), norms = Tensor::empty(Shape{kF});
  Tensor dpre = Tensor::empty(Shape{entries + 1});
  AdamScalars scalars;
  scalars.lr = kLr;
  auto adam_update = [&](Tensor& p) {
    ParamUpdate u;
    u.param = p;
    u.m = Tensor::zeros(p.shape());
    u.v = Tensor::zeros(p.shape());
    u.adam = true;
    u.scalars = scalars;
    return u;
  };
  ParamUpdate W_enc = adam_update(model.W_enc), b_enc_update = adam_update(model.b_enc);
  ParamUpdate W_dec = adam_update(model.W_dec);
  std::vector<double> ms(7, 0.0);
  auto timed = [&](int part, auto&& body) {
    const auto start = std::chrono::steady_clock::now();
    body();
    ms[part] += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  };
  int64_t steps = 0;
  for (auto _ : state) {
    timed(0, [&] { matmul_(f, x, false, model.W_enc, false); });
    timed(1, [&] { encoder_activate_(f, b_enc, col_sum, col_count); });
    timed(2, [&] { sparse_index_(s, f, col_count); });
    timed(3, [&] { sparse_decode_(x_hat, s, model.W_dec, model.b_dec); });
    timed(4, [&] {
      binary_(BinaryOp::sub, dx, x_hat, x);
      affine_(dx, dx, 2.0, 0.0);
      reduce_axis_(ReduceOp::norm2, norms, model.W_dec, 1);
    });
    timed(5, [&] { sparse_decoder_backward_(dpre, W_dec, dx, s, norms, col_sum, kLambda); });
    timed(6, [&] { sparse_encoder_backward_(W_enc, b_enc_update, x, s, dpre); });
    ++steps;
  }
  const char* names[] = {"encoder_gemm", "activate", "index", "decode", "elementwise", "decoder_bwd", "encoder_bwd"};
  for (int part = 0; part < 7; ++part) state.counters[names[part]] = ms[part] / double(std::max<int64_t>(steps, 1));
  state.counters["density"] = double(entries) / double(n * kF);
}

// What the entry-by-entry memory reads alone cost, on the same entry lists as BM_SparseStep_Parts:
// "dx_rows" reads, for every entry in by-feature order, its token's whole D-float row (what the
// decoder backward must gather: one dx row per entry); "x_slices" reads, for each 16-column slice
// of x kept in one [N, 16] buffer, one 64-byte line per entry (the encoder backward's gather);
// "w_dec_rows" reads, for every entry in by-token order, its feature's row of W_dec (what a
// row-by-row decoder product gathers). Each read is only summed: no gradient, no dot product, no
// Adam. A kernel that needs the gather cannot beat it.
void BM_SparseStep_GatherFloor(benchmark::State& state) {
  const int64_t n = state.range(0);
  Rng rng(1);
  const ListedBatch batch(n, state.range(1) / 1000.0, rng);
  const SparseFeatures& s = batch.lists;
  const int64_t entries = batch.entries;
  const int32_t *rows = s.rows.data<int32_t>(), *cols = s.cols.data<int32_t>();
  const float *dx = batch.x.data<float>(), *W_dec = batch.model.W_dec.data<float>();
  constexpr int64_t W = 16;
  const int64_t slices = kD / W;
  std::vector<float> sliced(static_cast<size_t>(n * kD));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t b = 0; b < slices; ++b)
      for (int64_t k = 0; k < W; ++k) sliced[(b * n + t) * W + k] = dx[t * kD + b * W + k];
  double rows_ms = 0, slices_ms = 0, w_rows_ms = 0;
  int64_t steps = 0;
  // Sums in 8-float vectors (GCC vector extensions): several independent accumulators, so that
  // the loops wait on memory and not on the adder.
  typedef float v8 __attribute__((vector_size(32)));
  auto load = [](const float* p) {
    v8 v;
    std::memcpy(&v, p, sizeof v);
    return v;
  };
  // Reads row index[k] of matrix [*, kD] for every k, in order; returns the sum.
  auto gather_rows = [&](const float* matrix, const int32_t* index) {
    v8 total = {};
#pragma omp parallel
    {
      v8 acc[8] = {};
#pragma omp for schedule(static)
      for (int64_t k = 0; k < entries; ++k) {
        const float* row = matrix + int64_t(index[k]) * kD;
        if (k + 2 < entries)
          for (int line = 0; line < kD / 16; ++line) __builtin_prefetch(matrix + int64_t(index[k + 2]) * kD + 16 * line);
        for (int64_t c = 0; c < kD; c += 64)
          for (int j = 0; j < 8; ++j) acc[j] += load(row + c + 8 * j);
      }
#pragma omp critical
      for (int j = 0; j < 8; ++j) total += acc[j];
    }
    return total;
  };
  for (auto _ : state) {
    v8 total = {};
    auto start = std::chrono::steady_clock::now();
    total += gather_rows(dx, rows);
    auto middle = std::chrono::steady_clock::now();
#pragma omp parallel
    {
      v8 acc[4] = {};
#pragma omp for schedule(static)
      for (int64_t b = 0; b < slices; ++b) {
        const float* slice = sliced.data() + b * n * W;
        int64_t e = 0;
        for (; e + 1 < entries; e += 2) {
          const float* a = slice + int64_t(rows[e]) * W;
          const float* c = slice + int64_t(rows[e + 1]) * W;
          acc[0] += load(a);
          acc[1] += load(a + 8);
          acc[2] += load(c);
          acc[3] += load(c + 8);
        }
        if (e < entries) acc[0] += load(slice + int64_t(rows[e]) * W);
      }
#pragma omp critical
      for (int k = 0; k < 4; ++k) total += acc[k];
    }
    auto end = std::chrono::steady_clock::now();
    total += gather_rows(W_dec, cols);
    auto last = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(total);
    rows_ms += std::chrono::duration<double, std::milli>(middle - start).count();
    slices_ms += std::chrono::duration<double, std::milli>(end - middle).count();
    w_rows_ms += std::chrono::duration<double, std::milli>(last - end).count();
    ++steps;
  }
  state.counters["dx_rows"] = rows_ms / double(std::max<int64_t>(steps, 1));
  state.counters["x_slices"] = slices_ms / double(std::max<int64_t>(steps, 1));
  state.counters["w_dec_rows"] = w_rows_ms / double(std::max<int64_t>(steps, 1));
  state.counters["density"] = double(entries) / double(n * kF);
}

// Densities 0.5%, 2%, 10%, 100%; dense and sparse next to each other, auto at 2% and 100%.
void step_args(benchmark::internal::Benchmark* b) {
  for (int64_t n : {218, 4096})
    for (int64_t permille : {5, 20, 100, 1000}) {
      b->Args({n, permille, 0});
      b->Args({n, permille, 1});
      if (permille == 20 || permille == 1000) b->Args({n, permille, 2});
    }
}

void crossover_args(benchmark::internal::Benchmark* b) {
  for (int64_t n : {218, 4096})
    for (int64_t permille : {50, 100, 200, 300, 500}) {
      b->Args({n, permille, 0});
      b->Args({n, permille, 1});
    }
}

void BM_SparseCrossover(benchmark::State& state) { run_step(state, Device::CPU); }

// On the GPU: the crossover itself, measured and reported (CUDA's --sparse auto threshold,
// kAutoMaxDensityCuda in sae/arch/standard/standard.cpp, is set from it). For one batch
// size and precision, dense (--sparse off) and sparse (--sparse on) training steps at densities
// 0.5% to 30%; the counters are each density's sparse / dense time and `crossover_pct`, the density
// where the two cross (linear between the measured points; 0 when sparse never wins, the largest
// density measured when it always does). One line on stdout says the same.
// range(0): N, range(1): precision (0 fp32, 1 tf32, 2 bf16).
void BM_Cuda_SparseCrossover(benchmark::State& state) {
  if (!cuda_available()) {
    state.SkipWithError("no GPU");
    return;
  }
  const int64_t n = state.range(0);
  const Precision precision = state.range(1) == 1 ? Precision::TF32 : (state.range(1) == 2 ? Precision::BF16 : Precision::FP32);
  const ScopedMatmulPrecision scope(precision);
  const std::vector<double> densities = {0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3};
  const int repeats = n >= 1024 ? 10 : 30;
  Rng rng(7);
  const SaeParams start = SaeParams::standard_init(kD, kF, rng, DType::F32, Device::CUDA);
  const Tensor x = normal_tensor(Shape{n, kD}, 0.0, std::sqrt(double(kD)), rng, DType::F32, Device::CUDA);
  // Pre-activation quantiles from a sample of x W_enc (every 7th value), sorted once on the host.
  std::vector<double> pre = matmul(x, start.W_enc).to_vector(), sample;
  for (size_t i = 0; i < pre.size(); i += 7) sample.push_back(pre[i]);
  std::sort(sample.begin(), sample.end());
  std::vector<double> ratio(densities.size());
  for (auto _ : state) {
    for (size_t i = 0; i < densities.size(); ++i) {
      const double threshold = sample[static_cast<size_t>((1.0 - densities[i]) * double(sample.size() - 1))];
      double ms[2] = {0, 0};
      for (int sparse = 0; sparse < 2; ++sparse) {
        SaeParams params = start.clone();
        fill_(params.b_enc, -threshold);
        SaeAdamState adam = SaeAdamState::zeros_like(params);
        SaeStep step(arch_unit("standard"), arch_settings("standard", {{"sparse", Json(sparse ? "on" : "off")}}), n, kD,
                     kF, DType::F32, Device::CUDA);
        for (int w = 0; w < 3; ++w) step.train_step(params, adam, x, kLambda, kLr);
        cuda_synchronize();
        const auto t0 = std::chrono::steady_clock::now();
        for (int r = 0; r < repeats; ++r) step.train_step(params, adam, x, kLambda, kLr);
        cuda_synchronize();
        ms[sparse] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / repeats;
      }
      ratio[i] = ms[1] / ms[0];
      state.counters[cat("sparse/dense@", densities[i] * 100, "%")] = ratio[i];
      if (densities[i] == 0.02) state.counters["dense_ms@2%"] = ms[0], state.counters["sparse_ms@2%"] = ms[1];
    }
  }
  double crossover = ratio[0] > 1.0 ? 0.0 : densities.back();
  for (size_t i = 0; i + 1 < densities.size(); ++i)
    if (ratio[i] <= 1.0 && ratio[i + 1] > 1.0) {
      crossover = densities[i] + (1.0 - ratio[i]) / (ratio[i + 1] - ratio[i]) * (densities[i + 1] - densities[i]);
      break;
    }
  state.counters["crossover_pct"] = 100.0 * crossover;
  std::string line = cat("BM_Cuda_SparseCrossover N ", n, " ", precision_name(precision), ": sparse pays below ",
                         100.0 * crossover, "% (sparse / dense:");
  for (size_t i = 0; i < densities.size(); ++i) line += cat(" ", densities[i] * 100, "% ", ratio[i]);
  std::printf("%s)\n", line.c_str());
}

void cuda_crossover_args(benchmark::internal::Benchmark* b) {
  for (int64_t n : {218, 4096})
    for (int64_t p : {0, 2}) b->Args({n, p});
}
}  // namespace

BENCHMARK(BM_SparseStep)->Apply(step_args)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_SparseCrossover)->Apply(crossover_args)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_SparseStep_Parts)->Args({218, 20})->Args({4096, 20})->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_SparseStep_GatherFloor)->Args({218, 20})->Args({4096, 20})->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_SparseStep_Floor)->Arg(218)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_Cuda_SparseStep)->Apply(step_args)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Cuda_SparseCrossover)->Apply(cuda_crossover_args)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
