// sae_eval and sae_steer benchmarks on the TinyStories-33M architecture with hashed weights (the
// speed does not depend on the values), on the CPU:
//   BM_EvalSplicedCe_Ours   one 218-token story with an SAE (d 768, F 10000, PyTorch's nn.Linear
//                           init: about half the features active) spliced at hidden_states[2]:
//                           blocks 0-1, per-story normalisation, encode, decode, back to raw scale,
//                           blocks 2-3, ln_f, the [218, 50257] logits (one GEMM into a reused buffer)
//                           and the 217 next-token losses, fused (next_token_ce: one pass per row;
//                           sae_eval's spliced run)
//   BM_EvalCleanCe_Ours     the same without the SAE (what the splice adds)
//   BM_Generate_Ours        64 new tokens after a 16-token prompt, greedy, with the KV cache and a
//                           steering vector added at hidden_states[2] (sae_steer's loop)
// tokens/s = items/s. The Hugging Face peer is bench/peer_hf_eval.py (same work, same threads); run
// it right after in the same sitting. Numbers: bench/RESULTS.md.
#include <benchmark/benchmark.h>

#include "lm/generate.h"
#include "lm/gpt_neo.h"
#include "lm/hashed_weights.h"
#include "sae/eval/next_token.h"
#include "sae/eval/sae_at_layer.h"
#include "sae/eval/steer.h"
#include "tensor/ops.h"
#include "tensor/rng.h"

using namespace sae;

namespace {

constexpr int64_t kTokens = 218, kLayer = 2, kFeatures = 10000, kPrompt = 16, kNewTokens = 64;

GptNeo& model() {
  static GptNeo m = [] {
    const GptNeoConfig c = GptNeoConfig::from_json(
        Json::parse(R"({"model_type": "gpt_neo", "vocab_size": 50257, "hidden_size": 768, "num_layers": 4,
                        "num_heads": 16, "max_position_embeddings": 2048, "window_size": 256,
                        "attention_types": [[["global", "local"], 2]], "intermediate_size": null,
                        "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"})"),
        "TinyStories-33M (bench)");
    return GptNeo::from_tensors(c, hashed_gpt_neo_weights(c), Device::CPU, "hashed TinyStories-33M");
  }();
  return m;
}

SaeAtLayer& sae() {
  static SaeAtLayer s = [] {
    Rng rng(3);
    SaeAtLayer out;
    out.dir = "bench";
    out.params = SaeParams::standard_init(768, kFeatures, rng);
    out.layer = kLayer;
    out.site = HookSite{kLayer, HookPoint::ResidPre};
    out.normalization = Normalization::Story;
    return out;
  }();
  return s;
}

void BM_EvalSplicedCe_Ours(benchmark::State& state) {
  GptNeo& m = model();
  const SaeAtLayer& s = sae();
  const std::vector<int32_t> ids = hashed_token_ids("bench.story", kTokens, 50257);
  const SiteHooks hooks({kLayer, HookPoint::ResidPre}, [&](Tensor& x) { copy_(x, reconstruct(s, x)); });
  double ce = 0;
  Tensor logits;
  for (auto _ : state) {
    m.logits_into(logits, ids, hooks);
    ce = next_token_ce(logits, ids);
  }
  benchmark::DoNotOptimize(ce);
  state.SetItemsProcessed(state.iterations() * kTokens);
  state.SetLabel(cat("CE ", ce / (kTokens - 1)));  // a sanity check: random weights give about ln(50257) or more
}

void BM_EvalCleanCe_Ours(benchmark::State& state) {
  GptNeo& m = model();
  const std::vector<int32_t> ids = hashed_token_ids("bench.story", kTokens, 50257);
  double ce = 0;
  Tensor logits;
  for (auto _ : state) {
    m.logits_into(logits, ids, {});
    ce = next_token_ce(logits, ids);
  }
  benchmark::DoNotOptimize(ce);
  state.SetItemsProcessed(state.iterations() * kTokens);
}

void BM_Generate_Ours(benchmark::State& state) {
  GptNeo& m = model();
  const std::vector<int32_t> prompt = hashed_token_ids("bench.prompt", kPrompt, 50257);
  const Tensor vector = mul_scalar(decoder_direction(sae(), 0), 8.0);
  GenerateOptions options;
  options.greedy = true;
  options.max_new_tokens = kNewTokens;
  for (auto _ : state) {
    const std::vector<int32_t> out = generate(m, prompt, options, steering_hook(HookSite{kLayer, HookPoint::ResidPre}, vector));
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * kNewTokens);
}

}  // namespace

BENCHMARK(BM_EvalSplicedCe_Ours)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
BENCHMARK(BM_EvalCleanCe_Ours)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
BENCHMARK(BM_Generate_Ours)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
