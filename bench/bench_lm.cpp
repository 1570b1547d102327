// GPT-Neo benchmarks (lm/gpt_neo.h on lm/decoder_model.h) on the TinyStories-33M architecture with
// hashed weights (the speed does not depend on the values), on the CPU, one 218-token story per pass
// (the other families: bench_models.cpp):
//   BM_LmExtract_Ours       hidden_states[2], the tutorial's SAE layer: embeddings + blocks 0 and 1
//                           (forward_to: no copy of the result, no lm_head)
//   BM_LmExtract_GemmFloor  the bare cblas_sgemm calls of those two blocks at the same shapes (the
//                           stacked q/k/v, out_proj, c_fc, c_proj GEMMs and the 16 heads' score and
//                           value GEMMs, spread over the threads as ours are) + the embedding gather
//                           and add
//   BM_LmLogits_Ours        the full model: 4 blocks, ln_f and the [218, 50257] logits
//   BM_LmBlockStage/<i>     each op of one block alone, at the block's shapes (where the time goes)
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

// The floor makes the GEMM calls our forward makes (q, k and v as one [T, 3d] product, the heads
// read in place from it with a row stride of 3d), without anything between them.
void BM_LmExtract_GemmFloor(benchmark::State& state) {
  const int t = kTokens, d = 768, h = 16, hd = 48, f = 3072, vocab = 50257;
  Rng rng(1);
  auto random = [&](int64_t n) { return uniform_tensor(Shape{n}, -0.1, 0.1, rng); };
  Tensor wte = random(int64_t(vocab) * d), wpe = random(int64_t(2048) * d);
  Tensor x = random(t * d), a = random(t * d), qkv = random(t * 3 * d);
  Tensor scores = random(int64_t(h) * t * t), context = random(t * d), mlp = random(int64_t(t) * f);
  Tensor w_qkv = random(3 * d * d), wo = random(d * d), w_fc = random(int64_t(f) * d), w_proj = random(int64_t(d) * f);
  const std::vector<int32_t> ids = story();
  float *px = x.data<float>(), *pa = a.data<float>(), *pqkv = qkv.data<float>(), *ps = scores.data<float>();
  float *pc = context.data<float>(), *pm = mlp.data<float>();
  const float *pwte = wte.data<float>(), *pwpe = wpe.data<float>();
  for (auto _ : state) {
    for (int i = 0; i < t; ++i) {
      std::memcpy(px + i * d, pwte + int64_t(ids[i]) * d, d * sizeof(float));
      for (int j = 0; j < d; ++j) px[i * d + j] += pwpe[i * d + j];
    }
    for (int block = 0; block < kLayer; ++block) {
      gemm_nt(pqkv, pa, w_qkv.data<float>(), t, 3 * d, d);
#pragma omp parallel for schedule(static)
      for (int head = 0; head < h; ++head) {  // q, k, v of head h: columns h*hd.. of each third
        float* s = ps + int64_t(head) * t * t;
        const float *q = pqkv + head * hd, *k = pqkv + d + head * hd, *v = pqkv + 2 * d + head * hd;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t, t, hd, 1.0f, q, 3 * d, k, 3 * d, 0.0f, s, t);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t, hd, t, 1.0f, s, t, v, 3 * d, 0.0f, pc + head * hd,
                    d);
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

// The ops of one block (lm/decoder_model.cpp, run_block) one at a time, through the same tensor ops at
// the same shapes: T 218, d 768, H 16, hd 48, f 3072.
void BM_LmBlockStage(benchmark::State& state) {
  const int64_t t = kTokens, d = 768, h = 16, hd = 48, f = 3072;
  Rng rng(2);
  auto random = [&](const Shape& s) { return uniform_tensor(s, -1.0, 1.0, rng); };
  Tensor x = random(Shape{t, d}), a = random(Shape{t, d}), w = random(Shape{d}), b = random(Shape{d});
  Tensor mean = random(Shape{t}), rstd = random(Shape{t});
  Tensor w_qkv = random(Shape{3 * d, d}), qkv = random(Shape{t, 3 * d}), heads = random(Shape{3 * h, t, hd});
  Tensor scores = random(Shape{h, t, t}), context = random(Shape{h, t, hd}), merged = random(Shape{t, h, hd});
  Tensor w_out = random(Shape{d, d}), w_fc = random(Shape{f, d}), b_fc = random(Shape{f}), w_proj = random(Shape{d, f});
  Tensor hidden = random(Shape{t, f}), pre_activation = random(Shape{t, f});
  const Tensor q = heads.slice_rows(0, h), k = heads.slice_rows(h, 2 * h), v = heads.slice_rows(2 * h, 3 * h);
  const Tensor masked = attention_mask(scores, 0);
  const int stage = static_cast<int>(state.range(0));
  const char* names[] = {"layer_norm",        "qkv GEMM [218,768]x[2304,768]^T", "split heads (swap_axes01)",
                         "scores q k^T (16 heads)", "attention_mask", "softmax",
                         "context p v (16 heads)", "merge heads (swap_axes01)", "out_proj GEMM + residual + bias",
                         "c_fc GEMM",         "c_fc bias",         "gelu_new",
                         "c_proj GEMM + residual + bias"};
  for (auto _ : state) {
    switch (stage) {
      case 0: layer_norm_(a, mean, rstd, x, w, b, 1e-5); break;
      case 1: matmul_(qkv, a, false, w_qkv, true); break;
      case 2: swap_axes01_(heads, qkv.reshape(Shape{t, 3 * h, hd})); break;
      case 3: batched_matmul_(scores, q, false, k, true); break;
      case 4: attention_mask_(scores, scores, 0); break;
      case 5: softmax_(scores, masked); break;  // half the keys masked, as in the model
      case 6: batched_matmul_(context, scores, false, v, false); break;
      case 7: swap_axes01_(merged, context); break;
      case 8: matmul_(x, merged.reshape(Shape{t, d}), false, w_out, true, 1.0, 1.0); add_(x, b); break;
      case 9: matmul_(hidden, a, false, w_fc, true); break;
      case 10: add_(hidden, b_fc); break;
      case 11: unary_(UnaryOp::gelu_new, hidden, pre_activation); break;  // in place would reach denormals
      case 12: matmul_(x, hidden, false, w_proj, true, 1.0, 1.0); add_(x, b); break;
    }
    benchmark::DoNotOptimize(x.raw());
  }
  state.SetLabel(names[stage]);
}

}  // namespace

BENCHMARK(BM_LmExtract_Ours)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
BENCHMARK(BM_LmExtract_GemmFloor)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
BENCHMARK(BM_LmLogits_Ours)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
BENCHMARK(BM_LmBlockStage)->DenseRange(0, 12)->Unit(benchmark::kMicrosecond)->UseRealTime();
