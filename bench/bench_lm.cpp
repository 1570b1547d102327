// GPT-Neo benchmarks (lm/gpt_neo.h) on the TinyStories-33M architecture with hashed weights (the
// speed does not depend on the values), on the CPU, one 218-token story per forward pass:
//   BM_LmExtract_Ours       hidden_states[2], the tutorial's SAE layer: embeddings + blocks 0 and 1
//                           (forward_to: no copy of the result, no lm_head)
//   BM_LmExtract_GemmFloor  the bare cblas_sgemm calls of those two blocks at the same shapes (the
//                           q/k/v, out_proj, c_fc, c_proj GEMMs and the 16 heads' score and value
//                           GEMMs, spread over the threads as ours are) + the embedding gather and add
//   BM_LmLogits_Ours        the full model: 4 blocks, ln_f and the [218, 50257] logits
// Compare within one run: ours / floor. The Hugging Face peer is bench/peer_hf_extract.py (run it
// right after, with the same thread count). Numbers: bench/RESULTS.md.
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <omp.h>

#include <cstring>

#include "lm/gpt_neo.h"
#include "lm/hashed_weights.h"
#include "tensor/ops.h"
#include "tensor/rng.h"

using namespace sae;

namespace {

constexpr int64_t kTokens = 218, kLayer = 2;

GptNeoConfig tinystories_config() {
  return GptNeoConfig::from_json(
      Json::parse(R"({"model_type": "gpt_neo", "vocab_size": 50257, "hidden_size": 768, "num_layers": 4,
                      "num_heads": 16, "max_position_embeddings": 2048, "window_size": 256,
                      "attention_types": [[["global", "local"], 2]], "intermediate_size": null,
                      "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"})"),
      "TinyStories-33M (bench)");
}

GptNeo& model() {
  static GptNeo m = [] {
    const GptNeoConfig c = tinystories_config();
    return GptNeo::from_tensors(c, hashed_gpt_neo_weights(c), Device::CPU, "hashed TinyStories-33M");
  }();
  return m;
}

std::vector<int32_t> story() { return hashed_token_ids("bench.story", kTokens, 50257); }

void set_counters(benchmark::State& state) {
  state.SetItemsProcessed(state.iterations() * kTokens);  // items/s = tokens/s
  state.counters["ms/story"] = benchmark::Counter(static_cast<double>(state.iterations()) * 1e3,
                                                  benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void BM_LmExtract_Ours(benchmark::State& state) {
  GptNeo& m = model();
  const std::vector<int32_t> ids = story();
  m.forward_to(ids, kLayer);  // sizes the workspace
  for (auto _ : state) {
    Tensor x = m.forward_to(ids, kLayer);
    benchmark::DoNotOptimize(x.raw());
  }
  set_counters(state);
}

// One GEMM y[m, n] = a[m, k] @ b[n, k]^T (row-major, as x @ W^T with W [out, in]).
void gemm_nt(float* y, const float* a, const float* b, int m, int n, int k, float beta = 0.0f) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, k, b, k, beta, y, n);
}

void BM_LmExtract_GemmFloor(benchmark::State& state) {
  const int t = kTokens, d = 768, h = 16, hd = 48, f = 3072, vocab = 50257;
  Rng rng(1);
  auto random = [&](int64_t n) { return uniform_tensor(Shape{n}, -0.1, 0.1, rng); };
  Tensor wte = random(int64_t(vocab) * d), wpe = random(int64_t(2048) * d);
  Tensor x = random(t * d), a = random(t * d), q = random(t * d), k = random(t * d), v = random(t * d);
  Tensor scores = random(int64_t(h) * t * t), context = random(t * d), mlp = random(int64_t(t) * f);
  Tensor wq = random(d * d), wk = random(d * d), wv = random(d * d), wo = random(d * d);
  Tensor w_fc = random(int64_t(f) * d), w_proj = random(int64_t(d) * f);
  const std::vector<int32_t> ids = story();
  float *px = x.data<float>(), *pa = a.data<float>(), *pq = q.data<float>(), *pk = k.data<float>();
  float *pv = v.data<float>(), *ps = scores.data<float>(), *pc = context.data<float>(), *pm = mlp.data<float>();
  const float *pwte = wte.data<float>(), *pwpe = wpe.data<float>();
  for (auto _ : state) {
    for (int i = 0; i < t; ++i) {
      std::memcpy(px + i * d, pwte + int64_t(ids[i]) * d, d * sizeof(float));
      for (int j = 0; j < d; ++j) px[i * d + j] += pwpe[i * d + j];
    }
    for (int block = 0; block < kLayer; ++block) {
      gemm_nt(pq, pa, wq.data<float>(), t, d, d);
      gemm_nt(pk, pa, wk.data<float>(), t, d, d);
      gemm_nt(pv, pa, wv.data<float>(), t, d, d);
#pragma omp parallel for schedule(static)
      for (int head = 0; head < h; ++head) {  // [T, hd] slices of q, k, v as the heads
        float* s = ps + int64_t(head) * t * t;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t, t, hd, 1.0f, pq + head * hd, d, pk + head * hd, d,
                    0.0f, s, t);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t, hd, t, 1.0f, s, t, pv + head * hd, d, 0.0f,
                    pc + head * hd, d);
      }
      gemm_nt(px, pc, wo.data<float>(), t, d, d, 1.0f);
      gemm_nt(pm, pa, w_fc.data<float>(), t, f, d);
      gemm_nt(px, pm, w_proj.data<float>(), t, d, f, 1.0f);
    }
    benchmark::DoNotOptimize(px);
  }
  set_counters(state);
}

void BM_LmLogits_Ours(benchmark::State& state) {
  GptNeo& m = model();
  const std::vector<int32_t> ids = story();
  m.logits(ids);
  for (auto _ : state) {
    Tensor logits = m.logits(ids);
    benchmark::DoNotOptimize(logits.raw());
  }
  set_counters(state);
}

}  // namespace

BENCHMARK(BM_LmExtract_Ours)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
BENCHMARK(BM_LmExtract_GemmFloor)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
BENCHMARK(BM_LmLogits_Ours)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
