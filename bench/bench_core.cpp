// Core engine benchmarks: our matmul against calling cblas_sgemm directly at the SAE's shapes
// (original step: one 218-token story, D = 768, F = 10000), the fused Adam pass against a plain
// streaming loop over the same bytes, and element-wise ops in GB/s. Compare ratios within one run.
#include <benchmark/benchmark.h>
#include <cblas.h>

#include "tensor/ops.h"
#include "tensor/rng.h"

using namespace sae;

namespace {
constexpr int64_t kTokens = 218, kD = 768, kF = 10000;

// The five GEMMs of one SAE step, as (M, N, K, trans_a, trans_b) with operands sized to match.
struct GemmCase {
  const char* name;
  int64_t a_rows, a_cols, b_rows, b_cols;
  bool trans_a, trans_b;
};
const GemmCase kGemms[] = {
    {"encoder_fwd x@W_enc", kTokens, kD, kD, kF, false, false},
    {"decoder_fwd f@W_dec", kTokens, kF, kF, kD, false, false},
    {"grad_f dx@W_dec^T", kTokens, kD, kF, kD, false, true},
    {"grad_W_dec f^T@dx", kTokens, kF, kTokens, kD, true, false},
    {"grad_W_enc x^T@dpre", kTokens, kD, kTokens, kF, true, false},
};

void set_gemm_counters(benchmark::State& state, const GemmCase& g) {
  const int64_t m = g.trans_a ? g.a_cols : g.a_rows, k = g.trans_a ? g.a_rows : g.a_cols;
  const int64_t n = g.trans_b ? g.b_rows : g.b_cols;
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * m * n * k, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  state.SetLabel(g.name);
}

void BM_Matmul_Ours(benchmark::State& state) {
  const GemmCase& g = kGemms[state.range(0)];
  Rng rng(1);
  Tensor a = uniform_tensor(Shape{g.a_rows, g.a_cols}, -1, 1, rng), b = uniform_tensor(Shape{g.b_rows, g.b_cols}, -1, 1, rng);
  Tensor out = matmul(a, b, g.trans_a, g.trans_b);
  for (auto _ : state) {
    matmul_(out, a, g.trans_a, b, g.trans_b);
    benchmark::DoNotOptimize(out.raw());
  }
  set_gemm_counters(state, g);
}

void BM_Matmul_Cblas(benchmark::State& state) {
  const GemmCase& g = kGemms[state.range(0)];
  Rng rng(1);
  Tensor a = uniform_tensor(Shape{g.a_rows, g.a_cols}, -1, 1, rng), b = uniform_tensor(Shape{g.b_rows, g.b_cols}, -1, 1, rng);
  Tensor out = matmul(a, b, g.trans_a, g.trans_b);
  const int m = out.size(0), n = out.size(1), k = g.trans_a ? g.a_rows : g.a_cols;
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, g.trans_a ? CblasTrans : CblasNoTrans, g.trans_b ? CblasTrans : CblasNoTrans, m, n, k,
                1.0f, a.data<float>(), g.a_cols, b.data<float>(), g.b_cols, 0.0f, out.data<float>(), n);
    benchmark::DoNotOptimize(out.raw());
  }
  set_gemm_counters(state, g);
}

// Adam over the SAE's 15.4M parameters (W_enc, W_dec, b_enc, b_dec) as one flat tensor.
constexpr int64_t kAdamParams = 2 * kD * kF + kF + kD;
constexpr double kAdamBytes = 7.0 * 4 * kAdamParams;  // read p, g, m, v; write p, m, v

void BM_Adam_Ours(benchmark::State& state) {
  Rng rng(2);
  Tensor p = uniform_tensor(Shape{kAdamParams}, -1, 1, rng), g = uniform_tensor(Shape{kAdamParams}, -1, 1, rng);
  Tensor m = Tensor::zeros(p.shape()), v = Tensor::zeros(p.shape());
  AdamScalars s;
  s.lr = 1e-5;
  for (auto _ : state) {
    adam_step_(p, m, v, g, s);
    ++s.step;
    benchmark::DoNotOptimize(p.raw());
  }
  state.counters["GB/s"] = benchmark::Counter(kAdamBytes, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

// The floor: the same reads and writes with the least arithmetic, same threading.
void BM_Adam_StreamingFloor(benchmark::State& state) {
  Rng rng(2);
  Tensor pt = uniform_tensor(Shape{kAdamParams}, -1, 1, rng), gt_ = uniform_tensor(Shape{kAdamParams}, -1, 1, rng);
  Tensor mt = Tensor::zeros(pt.shape()), vt = Tensor::zeros(pt.shape());
  float *p = pt.data<float>(), *m = mt.data<float>(), *v = vt.data<float>();
  const float* g = gt_.data<float>();
  for (auto _ : state) {
#pragma omp parallel for simd
    for (int64_t i = 0; i < kAdamParams; ++i) {
      const float gi = g[i];
      m[i] += gi;
      v[i] += gi;
      p[i] -= gi;
    }
    benchmark::DoNotOptimize(p);
  }
  state.counters["GB/s"] = benchmark::Counter(kAdamBytes, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

// Element-wise ops on one [218, 10000] activation matrix; bytes = reads + writes.
void BM_Elementwise(benchmark::State& state) {
  Rng rng(3);
  Tensor a = uniform_tensor(Shape{kTokens, kF}, -1, 1, rng), b = uniform_tensor(Shape{kTokens, kF}, -1, 1, rng);
  Tensor row = uniform_tensor(Shape{kF}, -1, 1, rng);
  Tensor out = Tensor::empty(a.shape());
  double bytes = 0;
  const int which = state.range(0);
  for (auto _ : state) {
    switch (which) {
      case 0: binary_(BinaryOp::add, out, a, b); bytes = 3.0 * a.nbytes(); break;
      case 1: binary_(BinaryOp::add, out, a, row); bytes = 2.0 * a.nbytes(); break;
      case 2: unary_(UnaryOp::relu, out, a); bytes = 2.0 * a.nbytes(); break;
      case 3: affine_(out, a, 2.0, 1.0); bytes = 2.0 * a.nbytes(); break;
      case 4: benchmark::DoNotOptimize(reduce(ReduceOp::sum, a)); bytes = 1.0 * a.nbytes(); break;
      case 5: benchmark::DoNotOptimize(reduce(ReduceOp::sum, a, 0)); bytes = 1.0 * a.nbytes(); break;
    }
    benchmark::DoNotOptimize(out.raw());
  }
  const char* names[] = {"add [N,F]+[N,F]", "add [N,F]+[F] (broadcast)", "relu", "affine", "sum all", "sum axis 0"};
  state.SetLabel(names[which]);
  state.counters["GB/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
}  // namespace

BENCHMARK(BM_Matmul_Ours)->DenseRange(0, 4)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Matmul_Cblas)->DenseRange(0, 4)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Adam_Ours)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Adam_StreamingFloor)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Elementwise)->DenseRange(0, 5)->Unit(benchmark::kMicrosecond)->UseRealTime();
