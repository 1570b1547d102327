// Decoder-model benchmarks per family (lm/decoder_model.h) at the shapes researchers use, random
// weights (the speed does not depend on the values), on the CPU, one 128-token window per pass
// (SAELens's context for gpt2-small-res-jb); the family is the benchmark's argument:
//   0 GPT-2 small       d 768, 12 blocks of 12 heads, f 3072, V 50257, learned positions, gelu_new
//   1 Pythia-70m        d 512, 6 blocks of 8 heads, f 2048, V 50304, rotary on 16 of 64 dims,
//                       parallel attention and MLP, erf GELU, untied unembedding
//   2 Qwen2.5-0.5B      d 896, 24 blocks of 14 heads over 2 key/value heads, SwiGLU f 4864, V 151936
//   3 Llama-3.2-1B      d 2048, 16 blocks of 32 heads over 8, SwiGLU f 8192, V 128256, llama3 RoPE
//   4 Gemma-2-2B        d 2304, 26 blocks of 8 heads of 256 over 4, GeGLU f 9216, V 256000, soft-capping
// Families 2-4 are loaded only up to their middle block (float32: about 0.8, 2.9 and 6 GB) and run
// the extraction benchmarks only (their whole models in float32 would take 2, 5 and 10 GB).
//   BM_ModelExtract/<f>       the middle block's hook_resid_pre (blocks.6 / blocks.3): embeddings and
//                             the blocks before it, nothing else (forward_to_site)
//   BM_ModelExtractFloor/<f>  the bare cblas_sgemm calls of those blocks at the same shapes (q/k/v as
//                             one [T, (H + 2 KV) hd] product, the heads' score and value GEMMs spread
//                             over the threads as ours are, out, MLP in ([T, 2f] when gated) and out)
//                             + the embedding gather
//   BM_ModelLogits/<f>        the full model and the [128, V] logits (what Hugging Face's forward does)
//   BM_ModelGenerate/<f>      64 new tokens after a 16-token prompt, greedy, with the KV cache
// Compare within one run: extract / floor. The Hugging Face peer is bench/peer_hf_models.py (same
// shapes, same threads: its forward with output_hidden_states=True as a user calls it, and its
// generate); run it right after. Numbers: bench/RESULTS.md.
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <omp.h>

#include <cstring>

#include "lm/generate.h"
#include "lm/hashed_weights.h"
#include "lm/model_family.h"
#include "tensor/rng.h"

using namespace sae;

namespace {

constexpr int64_t kTokens = 128, kPrompt = 16, kNewTokens = 64;

struct Family {
  const char* name;
  const ModelFamily& (*family)();
  const char* config;
  int64_t middle;  // the block whose resid_pre is extracted
};

const Family kFamilies[] = {
    {"GPT-2 small", gpt2_family,
     R"({"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
         "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5})",
     6},
    {"Pythia-70m", gpt_neox_family,
     R"({"model_type": "gpt_neox", "vocab_size": 50304, "hidden_size": 512, "num_hidden_layers": 6,
         "num_attention_heads": 8, "intermediate_size": 2048, "max_position_embeddings": 2048, "rotary_pct": 0.25,
         "rotary_emb_base": 10000, "use_parallel_residual": true, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
         "tie_word_embeddings": false})",
     3},
    {"Qwen2.5-0.5B", qwen2_family,
     R"({"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "num_hidden_layers": 24,
         "num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864,
         "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": true,
         "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}})",
     12},
    {"Llama-3.2-1B", llama_family,
     R"({"model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "num_hidden_layers": 16,
         "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 8192, "head_dim": 64,
         "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "tie_word_embeddings": true,
         "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})",
     8},
    {"Gemma-2-2B", gemma2_family,
     R"({"model_type": "gemma2", "vocab_size": 256000, "hidden_size": 2304, "num_hidden_layers": 26,
         "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "intermediate_size": 9216,
         "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 256,
         "sliding_window": 4096, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
         "hidden_activation": "gelu_pytorch_tanh", "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}})",
     12},
};
constexpr int64_t kFamilyCount = sizeof(kFamilies) / sizeof(kFamilies[0]);
constexpr int64_t kWholeModels = 2;  // families 0..1 are built whole; the others up to their middle block

// The model of family f, built once (uniform weights of Linear-like scale; norms near 1).
DecoderModel& model(int64_t f) {
  static std::unique_ptr<DecoderModel> models[kFamilyCount];
  if (!models[f]) {
    const Family& fam = kFamilies[f];
    const DecoderConfig c = fam.family().parse_config(Json::parse(fam.config), fam.name);
    const ModelPart part = f < kWholeModels ? ModelPart::whole() : ModelPart{fam.middle, false};
    Rng rng(7 + static_cast<uint64_t>(f));
    NamedTensors parameters;
    for (const auto& [name, shape] : c.parameter_shapes(part.blocks, part.head)) {
      const Shape s = Shape::from_vector(shape);
      const bool norm_weight = name.find("ln") != std::string::npos || name.rfind("final_norm", 0) == 0;
      parameters[name] = norm_weight && name.find("weight") != std::string::npos
                             ? uniform_tensor(s, 0.9, 1.1, rng)
                             : uniform_tensor(s, -0.05, 0.05, rng);
    }
    models[f] = std::make_unique<DecoderModel>(DecoderModel::from_parameters(c, parameters, Device::CPU, fam.name, part));
  }
  return *models[f];
}

std::vector<int32_t> window(int64_t f, int64_t tokens) {
  return hashed_token_ids(cat("bench.models.", f), tokens, model(f).config().vocab_size);
}

void BM_ModelExtract(benchmark::State& state) {
  const int64_t f = state.range(0);
  DecoderModel& m = model(f);
  const std::vector<int32_t> ids = window(f, kTokens);
  const HookSite site{kFamilies[f].middle, HookPoint::ResidPre};
  m.forward_to_site(ids, site);  // sizes the workspace
  for (auto _ : state) {
    Tensor x = m.forward_to_site(ids, site);
    benchmark::DoNotOptimize(x.raw());
  }
  state.SetItemsProcessed(state.iterations() * kTokens);
  state.SetLabel(cat(kFamilies[f].name, " to ", hook_name(site)));
}

// One GEMM y[m, n] = a[m, k] @ b[n, k]^T (row-major, as x @ W^T with W [out, in]).
void gemm_nt(float* y, const float* a, const float* b, int m, int n, int k, float beta = 0.0f) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, k, b, k, beta, y, n);
}

void BM_ModelExtractFloor(benchmark::State& state) {
  const int64_t f = state.range(0);
  const DecoderConfig& c = model(f).config();
  const int t = static_cast<int>(kTokens), d = static_cast<int>(c.hidden_size), h = static_cast<int>(c.num_heads);
  const int hd = static_cast<int>(c.head_dim), ff = static_cast<int>(c.intermediate_size);
  const int kv = static_cast<int>(c.kv_heads()), group = h / kv, aw = h * hd, qkv_width = static_cast<int>(c.qkv_width());
  const int f_in = c.gated_mlp() ? 2 * ff : ff;
  Rng rng(1);
  auto random = [&](int64_t n) { return uniform_tensor(Shape{n}, -0.1, 0.1, rng); };
  Tensor wte = random(c.vocab_size * d), x = random(int64_t(t) * d), a = random(int64_t(t) * d);
  Tensor qkv = random(int64_t(t) * qkv_width), scores = random(int64_t(h) * t * t), context = random(int64_t(t) * aw);
  Tensor mlp = random(int64_t(t) * f_in), w_qkv = random(int64_t(qkv_width) * d), wo = random(int64_t(d) * aw);
  Tensor w_in = random(int64_t(f_in) * d), w_out = random(int64_t(d) * ff);
  const std::vector<int32_t> ids = window(f, kTokens);
  float *px = x.data<float>(), *pa = a.data<float>(), *pqkv = qkv.data<float>(), *ps = scores.data<float>();
  float *pc = context.data<float>(), *pm = mlp.data<float>();
  const float* pwte = wte.data<float>();
  for (auto _ : state) {
    for (int i = 0; i < t; ++i) std::memcpy(px + i * d, pwte + int64_t(ids[i]) * d, d * sizeof(float));
    for (int64_t block = 0; block < kFamilies[f].middle; ++block) {
      gemm_nt(pqkv, pa, w_qkv.data<float>(), t, qkv_width, d);
#pragma omp parallel for schedule(static)
      for (int head = 0; head < h; ++head) {  // query head j reads key/value head j / group
        float* s = ps + int64_t(head) * t * t;
        const float *q = pqkv + head * hd, *k = pqkv + (h + head / group) * hd, *v = pqkv + (h + kv + head / group) * hd;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t, t, hd, 1.0f, q, qkv_width, k, qkv_width, 0.0f, s, t);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t, hd, t, 1.0f, s, t, v, qkv_width, 0.0f, pc + head * hd,
                    aw);
      }
      gemm_nt(px, pc, wo.data<float>(), t, d, aw, 1.0f);
      gemm_nt(pm, pa, w_in.data<float>(), t, f_in, d);
      gemm_nt(px, pm, w_out.data<float>(), t, d, ff, 1.0f);
    }
    benchmark::DoNotOptimize(px);
  }
  state.SetItemsProcessed(state.iterations() * kTokens);
  state.SetLabel(cat(kFamilies[f].name, " GEMM floor"));
}

void BM_ModelLogits(benchmark::State& state) {
  const int64_t f = state.range(0);
  DecoderModel& m = model(f);
  const std::vector<int32_t> ids = window(f, kTokens);
  Tensor logits;
  m.logits_into(logits, ids, {});
  for (auto _ : state) {
    m.logits_into(logits, ids, {});
    benchmark::DoNotOptimize(logits.raw());
  }
  state.SetItemsProcessed(state.iterations() * kTokens);
  state.SetLabel(cat(kFamilies[f].name, " logits"));
}

void BM_ModelGenerate(benchmark::State& state) {
  const int64_t f = state.range(0);
  DecoderModel& m = model(f);
  const std::vector<int32_t> prompt = window(f, kPrompt);
  GenerateOptions options;
  options.greedy = true;
  options.max_new_tokens = kNewTokens;
  for (auto _ : state) {
    const std::vector<int32_t> out = generate(m, prompt, options);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * kNewTokens);
  state.SetLabel(cat(kFamilies[f].name, " greedy generation"));
}

}  // namespace

BENCHMARK(BM_ModelExtract)->DenseRange(0, kFamilyCount - 1)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
BENCHMARK(BM_ModelExtractFloor)->DenseRange(0, kFamilyCount - 1)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
BENCHMARK(BM_ModelLogits)->DenseRange(0, 1)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
BENCHMARK(BM_ModelGenerate)->DenseRange(0, 1)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
