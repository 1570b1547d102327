// The decoder model's other families (lm/decoder_model.h, lm/model_family.h) against Hugging Face
// transformers (fixtures in tests/ref/models, made by scripts/gen_model_fixtures.py: tiny random-init
// GPT-2 (plain; scaled by the inverse layer index, erf GELU, untied), Pythia-like GPT-NeoX (parallel
// residual, rotary on 25% of each head), a sequential GPT-NeoX (rotary on every dim, base 500, no
// attention biases), Llama (grouped-query, llama3 RoPE scaling; and one with every bias, head_dim 16,
// linear scaling, untied), Qwen 2 (q/k/v biases, sliding-window blocks), Mistral (one key/value head,
// sliding window), Gemma 2 (in float32 and stored as bfloat16)):
//   - every hook point of every block, read by stopping there and all at once in one pass, the
//     hidden states and the logits (two sequences, up to every position), <= 1e-5 of max |HF|;
//   - greedy generation with the KV cache equal to HF's generate;
//   - changing a hook point's state changes the rest of the run as the model's equations say;
//   - loading stops at the hook: later blocks are neither read (NaN there goes unnoticed) nor held;
//   - the files as the Hub has them: GPT-2 without the "transformer." prefix and with its mask
//     buffers, Pythia's embed_out or lm_head, the older rotary_pct / rotary_emb_base keys, shards;
//   - refusals, one line each, naming the file and the key.
// docs/models.md describes the families and hook points.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "io/safetensors.h"
#include "lm/decoder_model.h"
#include "lm/generate.h"
#include "lm/model_loader.h"
#include "tensor/ops.h"
#include "tests/util/compare.h"
#include "tests/util/errors.h"
#include "tests/util/fixture.h"
#include "tests/util/gpu.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::worst_error;
using sae::testing::RawArray;
using sae::testing::TempDir;
using sae::testing::error_of;
namespace fs = std::filesystem;

namespace {

constexpr double kRel = 1e-5;  // of each tensor's max |value|
const char* kModels[] = {"gpt2",       "gpt2_scaled", "pythia", "neox_seq", "llama",
                         "llama_bias", "qwen2",       "mistral", "gemma2",  "gemma2_bf16"};

std::string models_ref(const std::string& name) { return sae::testing::ref_path("models/" + name); }

std::vector<int32_t> to_ids(const std::vector<int64_t>& values) { return std::vector<int32_t>(values.begin(), values.end()); }

// max |got - want| / max |want|, with a failure above `rel`.
double expect_near_scale(const Tensor& got, const Tensor& want, const std::string& what, double rel = kRel) {
  EXPECT_EQ(got.shape(), want.shape()) << what;
  if (got.shape() != want.shape()) return INFINITY;
  const double scale = sae::testing::max_abs(want), err = sae::testing::max_abs_diff(got.to(Device::CPU), want);
  EXPECT_GT(scale, 0.0) << what;
  EXPECT_LE(err, rel * scale) << what << ": max error " << err << ", max |want| " << scale;
  return err / scale;
}

// Every hook point the model has, block by block, in the order a block computes them.
std::vector<HookSite> all_sites(const DecoderConfig& c) {
  std::vector<HookSite> sites;
  for (int64_t l = 0; l < c.num_layers; ++l)
    for (HookPoint p : {HookPoint::ResidPre, HookPoint::AttnZ, HookPoint::AttnOut, HookPoint::ResidMid,
                        HookPoint::Ln2Normalized, HookPoint::MlpOut, HookPoint::ResidPost})
      if (p != HookPoint::ResidMid || c.residual == ResidualWiring::Sequential) sites.push_back({l, p});
  return sites;
}

std::vector<RawArray> arrays_of(const std::string& path) {
  const SafetensorsFile file = SafetensorsFile::open(path);
  std::vector<RawArray> arrays;
  for (const std::string& name : file.names()) {
    const SafetensorsEntry& e = file.entry(name);
    arrays.push_back({name, e.dtype, e.shape, std::string(static_cast<const char*>(e.data), e.bytes)});
  }
  return arrays;
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

// dir/config.json (the fixture's, edited) and dir/model.safetensors from arrays.
void write_folder(const std::string& dir, const Json& config, const std::vector<RawArray>& arrays) {
  fs::create_directories(dir);
  write_text(dir + "/config.json", config.dump(2));
  sae::testing::write_raw_safetensors(dir + "/model.safetensors", arrays);
}

Json fixture_config(const std::string& model) { return read_json_file(models_ref(model + "/config.json")); }

}  // namespace

// ---------------------------------------------------------------- parity with Hugging Face

TEST(Models, EveryHookPointHiddenStateAndLogitsMatchHuggingFace) {
  for (const char* name : kModels) {
    SCOPED_TRACE(name);
    DecoderModel model = load_decoder_model(models_ref(name));
    const DecoderConfig& c = model.config();
    const test::Fixture e(models_ref(std::string(name) + "_expected.safetensors"));
    const std::vector<int32_t> ids = to_ids(e.ints("seq0.input_ids"));
    // Each hook point alone: the run stops there.
    double worst_hook = 0;
    std::string worst_name;
    std::map<std::string, double> worst_by_point;  // over the blocks
    for (const HookSite& site : all_sites(c)) {
      const std::string hook = hook_name(site);
      const double err = expect_near_scale(model.forward_to_site(ids, site), e.tensor("seq0.hook." + hook), hook);
      if (err > worst_hook) worst_hook = err, worst_name = hook;
      const std::string point = hook.substr(hook.find('.', 7) + 1);
      worst_by_point[point] = std::max(worst_by_point[point], err);
    }
    std::string by_point;
    for (const auto& [point, err] : worst_by_point) by_point += cat(" ", point, " ", err);
    std::printf("%-12s per hook point (worst block):%s\n", name, by_point.c_str());
    // All of them in one full pass (each one's buffer path at once), then the logits.
    std::map<std::string, Tensor> seen;
    SiteHooks hooks;
    for (const HookSite& site : all_sites(c))
      hooks.at.emplace_back(site, [&seen, site](Tensor& state) { seen[hook_name(site)] = state.clone(); });
    const Tensor logits = model.logits_with(ids, hooks);
    ASSERT_EQ(seen.size(), all_sites(c).size());
    for (const auto& [hook, value] : seen) expect_near_scale(value, e.tensor("seq0.hook." + hook), "one pass " + hook);
    double worst_logits = 0, worst_hidden = 0;
    for (int s = 0; s < 2; ++s) {
      const std::vector<int32_t> seq = to_ids(e.ints(cat("seq", s, ".input_ids")));
      for (int k = 0; k <= c.num_layers; ++k)
        worst_hidden = std::max(worst_hidden, expect_near_scale(model.hidden_states(seq, k),
                                                                e.tensor(cat("seq", s, ".hidden.", k)), cat("hidden ", k)));
      worst_logits = std::max(worst_logits, expect_near_scale(s == 0 ? logits : model.logits(seq),
                                                              e.tensor(cat("seq", s, ".logits")), "logits"));
    }
    std::printf("%-12s max error / max|HF|: hook points %.2e (worst %s), hidden states %.2e, logits %.2e\n", name,
                worst_hook, worst_name.c_str(), worst_hidden, worst_logits);
  }
}

TEST(Models, GreedyGenerationEqualsHuggingFaceGenerate) {
  for (const char* name : kModels) {
    SCOPED_TRACE(name);
    DecoderModel model = load_decoder_model(models_ref(name));
    const test::Fixture e(models_ref(std::string(name) + "_expected.safetensors"));
    GenerateOptions options;
    options.greedy = true;
    options.max_new_tokens = static_cast<int64_t>(e.ints("gen.greedy").size());
    EXPECT_EQ(generate(model, to_ids(e.ints("gen.prompt")), options), to_ids(e.ints("gen.greedy")))
        << "HF's smallest top-2 margin: " << e.scalar("gen.min_margin");
  }
}

// load_unembedding folds the final norm's weight into W_U (as TransformerLens's fold_ln): the last
// block's output, normalised without the norm's affine part, times it gives HF's logits (through the
// soft-cap where the model has one); a LayerNorm's bias adds one row b U^T at every position, and
// its rows are centred over d (the centred input cannot tell), which the rows' means show.
TEST(Models, UnembeddingHoldsTheFinalNormWeightAsHuggingFaceLogitsSay) {
  for (const char* name : kModels) {
    SCOPED_TRACE(name);
    const DecoderConfig c = read_model_config(models_ref(name)).config;
    const test::Fixture e(models_ref(std::string(name) + "_expected.safetensors"));
    const std::vector<double> h = e.tensor(cat("seq0.hook.blocks.", c.num_layers - 1, ".hook_resid_post")).to_vector();
    const std::vector<double> logits = e.tensor("seq0.logits").to_vector();
    const Tensor U = load_unembedding(models_ref(name));
    ASSERT_EQ(U.shape(), (Shape{c.vocab_size, c.hidden_size}));
    const std::vector<double> u = U.to_vector();
    const int64_t d = c.hidden_size, V = c.vocab_size, T = static_cast<int64_t>(h.size()) / d;
    double scale = 0, worst = 0;
    std::vector<double> first_offset(static_cast<size_t>(V));
    for (int64_t t = 0; t < T; ++t) {
      const double* x = h.data() + t * d;
      double mean = 0, square = 0;
      for (int64_t j = 0; j < d; ++j) mean += x[j] / d;
      const double center = c.norm == NormKind::LayerNorm ? mean : 0.0;
      for (int64_t j = 0; j < d; ++j) square += (x[j] - center) * (x[j] - center) / d;
      const double inv = 1.0 / std::sqrt(square + c.norm_eps);
      for (int64_t v = 0; v < V; ++v) {
        double z = 0;
        for (int64_t j = 0; j < d; ++j) z += (x[j] - center) * inv * u[v * d + j];
        if (c.final_softcap > 0) z = c.final_softcap * std::tanh(z / c.final_softcap);
        const double want = logits[t * V + v];
        scale = std::max(scale, std::fabs(want));
        if (c.norm == NormKind::RMSNorm) {
          worst = worst_error(worst, std::fabs(z - want));
        } else {  // the bias's row, the same at every position
          if (t == 0) first_offset[v] = want - z;
          worst = worst_error(worst, std::fabs(want - z - first_offset[v]));
        }
      }
    }
    EXPECT_LE(worst, 2e-5 * scale) << "max |logits| " << scale;
    double largest = 0, worst_mean = 0;
    for (int64_t v = 0; v < V; ++v) {
      double mean = 0;
      for (int64_t j = 0; j < d; ++j) mean += u[v * d + j] / d, largest = std::max(largest, std::fabs(u[v * d + j]));
      worst_mean = std::max(worst_mean, std::fabs(mean));
    }
    if (c.norm == NormKind::LayerNorm)
      EXPECT_LE(worst_mean, 1e-6 * largest) << "a row not centred";
    else
      EXPECT_GT(worst_mean, 1e-3 * largest) << "an RMSNorm's rows are not centred";
  }
}

// ---------------------------------------------------------------- writing at hook points

// Zeroing the MLP's output leaves resid_post = resid_mid (sequential) or resid_pre + attn_out
// (parallel), HF's values; zeroing ln2.hook_normalized leaves the MLP only its norm's bias as input,
// so every row of mlp_out is the same (to the GEMM's rounding).
TEST(Models, ChangingAHookPointChangesTheRestOfTheRun) {
  for (const char* name : {"gpt2", "pythia", "neox_seq", "llama", "qwen2", "gemma2"}) {
    SCOPED_TRACE(name);
    DecoderModel model = load_decoder_model(models_ref(name));
    const bool parallel = model.config().residual == ResidualWiring::Parallel;
    const test::Fixture e(models_ref(std::string(name) + "_expected.safetensors"));
    const std::vector<int32_t> ids = to_ids(e.ints("seq0.input_ids"));
    const Tensor post = model.forward_to_site(ids, {1, HookPoint::ResidPost},
                                              SiteHooks({1, HookPoint::MlpOut}, [](Tensor& x) { fill_(x, 0.0); }))
                            .clone();
    const Tensor want = parallel ? add(e.tensor("seq0.hook.blocks.1.hook_resid_pre"), e.tensor("seq0.hook.blocks.1.hook_attn_out"))
                                 : e.tensor("seq0.hook.blocks.1.hook_resid_mid");
    expect_near_scale(post, want, "resid_post with mlp_out zeroed");
    const Tensor mlp_out = model.forward_to_site(ids, {1, HookPoint::MlpOut},
                                                 SiteHooks({1, HookPoint::Ln2Normalized}, [](Tensor& x) { fill_(x, 0.0); }))
                               .clone();
    // The same row up to the GEMM's rounding (OpenBLAS may sum the last rows of a product in another
    // order than the first: its Haswell kernels do).
    // (A model whose norm has no bias gets rows of zeros: exactly equal.)
    double largest = 0;
    for (double v : mlp_out.to_vector()) largest = std::max(largest, std::fabs(v));
    for (int64_t r = 1; r < mlp_out.size(0); ++r)
      EXPECT_LE(sae::testing::max_abs_diff(mlp_out.slice_rows(r, r + 1), mlp_out.slice_rows(0, 1)), 1e-6 * largest)
          << "row " << r;
    EXPECT_GT(sae::testing::max_abs_diff(mlp_out, e.tensor("seq0.hook.blocks.1.hook_mlp_out")), 0.01);
    // Writing back what was there changes nothing, bit for bit (every hook point's buffer path).
    const Tensor plain = model.logits(ids);
    SiteHooks identity;
    for (const HookSite& site : all_sites(model.config()))
      identity.at.emplace_back(site, [](Tensor& x) { copy_(x, x.clone()); });
    const Tensor rewritten = model.logits_with(ids, identity);
    expect_near_scale(rewritten, plain, "hooks that rewrite the same values", 1e-6);
    // A hook may not replace the tensor.
    EXPECT_THROW(model.logits_with(ids, SiteHooks({0, HookPoint::AttnZ}, [](Tensor& x) { x = x.clone(); })), UsageError);
  }
}

// ---------------------------------------------------------------- loading only what the hook needs

TEST(Models, LoadingStopsAtTheHookAndLaterBlocksAreNeverRead) {
  TempDir dir("models_stop");
  for (const char* name : {"gpt2", "pythia"}) {
    SCOPED_TRACE(name);
    // Block 3's MLP weight made NaN: loading the whole model refuses it; loading up to block 1 never reads it.
    std::vector<RawArray> arrays = arrays_of(models_ref(std::string(name) + "/model.safetensors"));
    const std::string poisoned_tensor = std::string(name) == "gpt2" ? "transformer.h.3.mlp.c_fc.weight"
                                                                    : "gpt_neox.layers.3.mlp.dense_h_to_4h.weight";
    for (RawArray& a : arrays)
      if (a.name == poisoned_tensor) {
        const float nan = NAN;
        std::memcpy(a.bytes.data() + 4 * 7, &nan, 4);
      }
    const std::string folder = dir.str(name);
    write_folder(folder, fixture_config(name), arrays);
    const std::string message = error_of([&] { load_decoder_model(folder); });
    EXPECT_NE(message.find(poisoned_tensor), std::string::npos) << message;
    EXPECT_NE(message.find("non-finite"), std::string::npos) << message;

    const HookSite site{1, HookPoint::ResidPost};
    DecoderModel part = load_decoder_model(folder, Device::CPU, ModelPart::up_to(site, 4));
    EXPECT_EQ(part.loaded_blocks(), 2);
    EXPECT_FALSE(part.has_head());
    EXPECT_THROW(part.parameter("blocks.2.ln1.weight"), Error);
    EXPECT_THROW(part.parameter("final_norm.weight"), Error);
    const test::Fixture e(models_ref(std::string(name) + "_expected.safetensors"));
    const std::vector<int32_t> ids = to_ids(e.ints("seq0.input_ids"));
    expect_near_scale(part.forward_to_site(ids, site), e.tensor("seq0.hook.blocks.1.hook_resid_post"), "part");
    expect_near_scale(part.hidden_states(ids, 2), e.tensor("seq0.hidden.2"), "part hidden_states[2]");
    const std::string beyond = error_of([&] { part.forward_to_site(ids, {2, HookPoint::AttnOut}); });
    EXPECT_NE(beyond.find("only 2 were loaded"), std::string::npos) << beyond;
    EXPECT_THROW(part.logits(ids), UsageError);
    EXPECT_THROW(part.unembedding(), UsageError);
  }
}

// ---------------------------------------------------------------- 16-bit weights stay as stored

// gemma2_bf16 holds gemma2's weights rounded to bfloat16: the weight matrices stay bf16 in memory
// (the parity test above reads every hook point of it against transformers in float32), the norms
// are float32, so the parameters take about the file's bytes; a NaN in a bf16 matrix is refused.
TEST(Models, SixteenBitWeightMatricesStayAsStored) {
  DecoderModel model = load_decoder_model(models_ref("gemma2_bf16"));
  for (const char* name : {"embed.tokens", "blocks.0.attn.qkv.weight", "blocks.0.attn.out.weight",
                           "blocks.3.mlp.in.weight", "blocks.3.mlp.out.weight", "unembed"})
    EXPECT_EQ(model.parameter(name).dtype(), DType::BF16) << name;
  for (const char* name : {"blocks.0.ln1.weight", "blocks.0.ln1_post.weight", "final_norm.weight"})
    EXPECT_EQ(model.parameter(name).dtype(), DType::F32) << name;
  size_t bytes = 0;
  for (const std::string& name : model.parameter_names())
    if (name != "unembed") bytes += model.parameter(name).nbytes();  // tied: the embedding itself
  const size_t file = fs::file_size(models_ref("gemma2_bf16/model.safetensors"));
  EXPECT_LE(bytes, file) << "parameters " << bytes << " bytes, file " << file;
  EXPECT_GE(bytes, file * 9 / 10);
  EXPECT_EQ(load_decoder_model(models_ref("gemma2")).parameter("embed.tokens").dtype(), DType::F32);

  // A NaN in a stacked bf16 matrix (copied) and in the embedding (gathered from the file's mapping).
  TempDir dir("models_bf16");
  for (const char* poisoned : {"model.layers.1.mlp.up_proj.weight", "model.embed_tokens.weight"}) {
    std::vector<RawArray> arrays = arrays_of(models_ref("gemma2_bf16/model.safetensors"));
    for (RawArray& a : arrays)
      if (a.name == poisoned) {
        ASSERT_EQ(a.dtype, "BF16");
        const uint16_t nan = 0x7fc0;
        std::memcpy(a.bytes.data() + a.bytes.size() - 2 * 5, &nan, 2);
      }
    const std::string folder = dir.str(cat("poisoned_", poisoned));
    write_folder(folder, fixture_config("gemma2_bf16"), arrays);
    const std::string message = error_of([&] { load_decoder_model(folder); });
    EXPECT_NE(message.find(poisoned), std::string::npos) << message;
    EXPECT_NE(message.find("non-finite"), std::string::npos) << message;
  }
  // The embedding read from the mapping gives the same rows as a copy widened to float32.
  const Tensor table = model.parameter("embed.tokens");
  const std::vector<int32_t> ids = {0, 1, 511, 7, 300};
  const Tensor rows = embedding(table, Tensor::from_vector(std::vector<double>(ids.begin(), ids.end()), Shape{5},
                                                           DType::I32));
  const Tensor wide = table.to(DType::F32);
  for (size_t i = 0; i < ids.size(); ++i)
    sae::testing::expect_bitwise_equal(rows.slice_rows(i, i + 1), wide.slice_rows(ids[i], ids[i] + 1), cat("row ", ids[i]));
}

// GPT-2's Conv1D weights are transposed at load and GPT-NeoX's query_key_value reordered by head: from
// a 16-bit file they stay 16-bit too (the stored values moved, never widened). Each fixture's float32
// file is written here once with every float tensor rounded to the 16-bit dtype (the expectation:
// loaded as float32 values) and once stored in that dtype: the two models give the same hidden states
// and logits up to the order of float32 sums (16-bit weights are multiplied a tile at a time), and
// the 16-bit one holds about the file's bytes.
TEST(Models, TransposedAndReorderedSixteenBitMatricesStayAsStored) {
  TempDir dir("models_16bit");
  for (const auto& [name, half] : {std::pair<std::string, DType>{"gpt2", DType::F16}, {"pythia", DType::BF16}}) {
    SCOPED_TRACE(name);
    std::vector<RawArray> stored, rounded;
    for (const RawArray& a : arrays_of(models_ref(name + "/model.safetensors"))) {
      if (a.dtype != "F32") {
        stored.push_back(a);
        rounded.push_back(a);
        continue;
      }
      std::vector<float> values(a.bytes.size() / 4);
      std::memcpy(values.data(), a.bytes.data(), a.bytes.size());
      const Tensor t = Tensor::from_vector(std::vector<double>(values.begin(), values.end()),
                                           Shape{int64_t(values.size())}, DType::F32);
      const Tensor h = t.to(half);
      const std::vector<double> back = h.to(DType::F32).to_vector();
      std::vector<float> rounded_values(back.begin(), back.end());
      rounded.push_back({a.name, "F32", a.shape, sae::testing::raw_bytes(rounded_values)});
      stored.push_back({a.name, half == DType::BF16 ? "BF16" : "F16", a.shape,
                        std::string(static_cast<const char*>(h.raw()), h.nbytes())});
    }
    write_folder(dir.str(name + "_rounded"), fixture_config(name), rounded);
    write_folder(dir.str(name + "_16"), fixture_config(name), stored);
    DecoderModel want = load_decoder_model(dir.str(name + "_rounded"));
    DecoderModel got = load_decoder_model(dir.str(name + "_16"));
    for (const char* p : {"blocks.0.attn.qkv.weight", "blocks.0.attn.out.weight", "blocks.1.mlp.in.weight",
                          "blocks.1.mlp.out.weight", "embed.tokens"}) {
      EXPECT_EQ(got.parameter(p).dtype(), half) << p;
      sae::testing::expect_bitwise_equal(got.parameter(p).to(DType::F32), want.parameter(p), p);
    }
    const test::Fixture e(models_ref(name + "_expected.safetensors"));
    const std::vector<int32_t> ids = to_ids(e.ints("seq0.input_ids"));
    for (int64_t k = 0; k <= got.config().num_layers; ++k)
      expect_near_scale(got.hidden_states(ids, k), want.hidden_states(ids, k), cat("hidden_states[", k, "]"), 1e-6);
    expect_near_scale(got.logits(ids), want.logits(ids), "logits", 1e-6);
    // Bytes: the file's, plus 2 a value for what is widened (biases, norms, learned positions); a tied
    // unembedding is the embedding itself.
    size_t bytes = 0, widened = 0;
    for (const std::string& p : got.parameter_names()) {
      const Tensor& t = got.parameter(p);
      if (p == "unembed" && t.raw() == got.parameter("embed.tokens").raw()) continue;
      bytes += t.nbytes();
      if (t.dtype() == DType::F32) widened += t.nbytes() / 2;
    }
    const size_t file = fs::file_size(dir.str(name + "_16/model.safetensors"));
    EXPECT_LE(bytes, file + widened) << "parameters " << bytes << " bytes, file " << file << ", widened " << widened;
    EXPECT_LT(widened, file / 4) << "the matrices, most of the file, stay 16-bit";
  }
}

// ---------------------------------------------------------------- the files as the Hub has them

// openai-community/gpt2's model.safetensors was saved from GPT2Model: no "transformer." prefix, and
// the mask buffers h.{i}.attn.bias and h.{i}.attn.masked_bias.
TEST(Models, Gpt2FileWithoutPrefixAndWithMaskBuffers) {
  TempDir dir("models_gpt2_hub");
  std::vector<RawArray> arrays;
  for (RawArray a : arrays_of(models_ref("gpt2/model.safetensors"))) {
    const std::string prefix = "transformer.";
    if (a.name.rfind(prefix, 0) == 0) a.name = a.name.substr(prefix.size());
    arrays.push_back(a);
  }
  for (int i = 0; i < 4; ++i) {
    arrays.push_back({cat("h.", i, ".attn.bias"), "F32", {1, 1, 64, 64}, std::string(64 * 64 * 4, '\0')});
    arrays.push_back({cat("h.", i, ".attn.masked_bias"), "F32", {}, std::string(4, '\0')});
  }
  write_folder(dir.str("hub"), fixture_config("gpt2"), arrays);
  DecoderModel model = load_decoder_model(dir.str("hub"));
  const test::Fixture e(models_ref("gpt2_expected.safetensors"));
  expect_near_scale(model.logits(to_ids(e.ints("seq1.input_ids"))), e.tensor("seq1.logits"), "hub-style GPT-2");
  // A buffer of a block the config does not have is not a buffer.
  arrays.push_back({"h.7.attn.bias", "F32", {1}, std::string(4, '\0')});
  write_folder(dir.str("hub7"), fixture_config("gpt2"), arrays);
  const std::string message = error_of([&] { load_decoder_model(dir.str("hub7")); });
  EXPECT_NE(message.find("unexpected tensor 'h.7.attn.bias'"), std::string::npos) << message;
}

// Pythia's files on the Hub: config.json with rotary_pct / rotary_emb_base (no rope_parameters),
// embed_out.weight (transformers 5 also writes lm_head.weight), and older buffers.
TEST(Models, PythiaHubSpellingsAndBuffers) {
  TempDir dir("models_pythia_hub");
  const test::Fixture e(models_ref("pythia_expected.safetensors"));
  const std::vector<int32_t> ids = to_ids(e.ints("seq1.input_ids"));
  Json legacy = fixture_config("pythia");
  legacy["rope_parameters"] = Json();  // as the Hub's files: no rope_parameters
  legacy["rotary_pct"] = 0.25;
  legacy["rotary_emb_base"] = 10000;
  legacy["rope_scaling"] = Json();
  std::vector<RawArray> arrays = arrays_of(models_ref("pythia/model.safetensors"));
  for (int i = 0; i < 4; ++i) {
    arrays.push_back({cat("gpt_neox.layers.", i, ".attention.bias"), "BOOL", {1, 1, 64, 64}, std::string(64 * 64, '\1')});
    arrays.push_back({cat("gpt_neox.layers.", i, ".attention.masked_bias"), "F32", {}, std::string(4, '\0')});
    arrays.push_back({cat("gpt_neox.layers.", i, ".attention.rotary_emb.inv_freq"), "F32", {2}, std::string(8, '\0')});
  }
  write_folder(dir.str("legacy"), legacy, arrays);
  DecoderModel model = load_decoder_model(dir.str("legacy"));
  EXPECT_EQ(model.config().rotary_dims, 4);
  EXPECT_EQ(model.config().rotary_base, 10000);
  expect_near_scale(model.logits(ids), e.tensor("seq1.logits"), "legacy keys and buffers");
  // lm_head.weight in place of embed_out.weight; both at once is ambiguous.
  std::vector<RawArray> renamed = arrays_of(models_ref("pythia/model.safetensors"));
  for (RawArray& a : renamed)
    if (a.name == "embed_out.weight") a.name = "lm_head.weight";
  write_folder(dir.str("lm_head"), fixture_config("pythia"), renamed);
  expect_near_scale(load_decoder_model(dir.str("lm_head")).logits(ids), e.tensor("seq1.logits"), "lm_head.weight");
  std::vector<RawArray> both = arrays_of(models_ref("pythia/model.safetensors"));
  for (const RawArray& a : both)
    if (a.name == "embed_out.weight") {
      RawArray copy = a;
      copy.name = "lm_head.weight";
      both.push_back(copy);
      break;
    }
  write_folder(dir.str("both"), fixture_config("pythia"), both);
  const std::string message = error_of([&] { load_decoder_model(dir.str("both")); });
  EXPECT_NE(message.find("both"), std::string::npos) << message;
  // Untied without any unembedding.
  std::vector<RawArray> headless = arrays_of(models_ref("pythia/model.safetensors"));
  std::erase_if(headless, [](const RawArray& a) { return a.name == "embed_out.weight"; });
  write_folder(dir.str("headless"), fixture_config("pythia"), headless);
  const std::string missing = error_of([&] { load_decoder_model(dir.str("headless")); });
  EXPECT_NE(missing.find("missing tensor 'embed_out.weight'"), std::string::npos) << missing;
  // The file is checked whole even when a run stops early (a file without its head is broken).
  EXPECT_THROW(load_decoder_model(dir.str("headless"), Device::CPU, ModelPart{2, false}), DataError);
}

// A model split into shards with model.safetensors.index.json, as save_pretrained writes large ones.
TEST(Models, ShardedFilesWithTheirIndex) {
  TempDir dir("models_shards");
  const std::vector<RawArray> arrays = arrays_of(models_ref("neox_seq/model.safetensors"));
  std::vector<RawArray> first, second;
  Json map = Json::object();
  for (size_t i = 0; i < arrays.size(); ++i) {
    const std::string shard = i % 2 ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
    (i % 2 ? second : first).push_back(arrays[i]);
    map[arrays[i].name] = shard;
  }
  const std::string folder = dir.str("sharded");
  fs::create_directories(folder);
  write_text(folder + "/config.json", fixture_config("neox_seq").dump());
  sae::testing::write_raw_safetensors(folder + "/model-00001-of-00002.safetensors", first);
  sae::testing::write_raw_safetensors(folder + "/model-00002-of-00002.safetensors", second);
  Json index = Json::object();
  index["metadata"] = Json::object();
  index["weight_map"] = map;
  write_text(folder + "/model.safetensors.index.json", index.dump());
  const test::Fixture e(models_ref("neox_seq_expected.safetensors"));
  const std::vector<int32_t> ids = to_ids(e.ints("seq1.input_ids"));
  expect_near_scale(load_decoder_model(folder).logits(ids), e.tensor("seq1.logits"), "sharded");
  // A tensor the index sends to the wrong shard.
  map[arrays[0].name] = "model-00002-of-00002.safetensors";
  index["weight_map"] = map;
  write_text(folder + "/model.safetensors.index.json", index.dump());
  const std::string message = error_of([&] { load_decoder_model(folder); });
  EXPECT_NE(message.find(arrays[0].name), std::string::npos) << message;
}

// ---------------------------------------------------------------- config spellings

TEST(Models, ConfigSpellingsAreReadAsTransformersReadsThem) {
  // tests/ref/models/config_cases.json (scripts/gen_config_cases.py): fixture configs edited as the
  // Hub's files differ from what save_pretrained writes, with the windows, RoPE and biases of the
  // model transformers builds from them.
  const Json cases = read_json_file(models_ref("config_cases.json"));
  TempDir dir("models_config_cases");
  for (size_t n = 0; n < cases.at("cases").size(); ++n) {
    const Json& c = cases.at("cases").at(n);
    const std::string name = c.at("name").as_string();
    SCOPED_TRACE(name);
    const Json& erase = c.at("erase");
    const Json original = fixture_config(c.at("model").as_string());
    Json config = Json::object();
    for (const auto& [key, value] : original.items()) {
      bool erased = false;
      for (size_t k = 0; k < erase.size(); ++k) erased = erased || erase.at(k).as_string() == key;
      if (!erased) config[key] = value;
    }
    for (const auto& [key, value] : c.at("set").items()) config[key] = value;
    const std::string folder = dir.str(name);
    fs::create_directories(folder);
    write_text(folder + "/config.json", config.dump());
    const DecoderConfig got = read_model_config(folder).config;
    const Json& windows = c.at("windows");
    ASSERT_EQ(got.layers.size(), windows.size());
    for (size_t i = 0; i < windows.size(); ++i) EXPECT_EQ(got.layers[i].window, windows.at(i).as_int()) << "block " << i;
    const Json& rope = c.at("rope");
    EXPECT_EQ(got.rotary_base, rope.at("theta").as_number());
    const std::string type = rope.at("type").as_string();
    const RopeScaling::Kind kind = type == "linear"   ? RopeScaling::Kind::Linear
                                   : type == "llama3" ? RopeScaling::Kind::Llama3
                                                      : RopeScaling::Kind::None;
    EXPECT_EQ(got.rope_scaling.kind, kind) << type;
    if (kind != RopeScaling::Kind::None) {
      EXPECT_EQ(got.rope_scaling.factor, rope.at("factor").as_number());
    }
    if (kind == RopeScaling::Kind::Llama3) {
      EXPECT_EQ(got.rope_scaling.original_positions, rope.at("original_positions").as_number());
    }
    const Json& biases = c.at("biases");
    EXPECT_EQ(got.qkv_bias, biases.at("qkv").as_bool());
    EXPECT_EQ(got.out_bias, biases.at("out").as_bool());
    EXPECT_EQ(got.mlp_bias, biases.at("mlp").as_bool());
  }
}

// ---------------------------------------------------------------- refusals

TEST(Models, ConfigRefusalsNameTheKeyInOneLine) {
  struct Case {
    const char* model;
    const char* key;
    Json value;
    const char* mention;
  };
  const std::vector<Case> cases = {
      {"gpt2", "add_cross_attention", Json(true), "add_cross_attention"},
      {"gpt2", "activation_function", Json("relu"), "activation_function"},
      {"gpt2", "n_head", Json(int64_t(5)), "not divisible"},
      {"gpt2", "scale_attn_weights", Json("yes"), "scale_attn_weights"},
      {"gpt2", "n_embd", Json(-3), "n_embd"},
      {"pythia", "hidden_act", Json("relu"), "hidden_act"},
      {"pythia", "rope_parameters", Json::parse(R"({"rope_type": "linear", "factor": 2.0, "rope_theta": 10000})"),
       "linear"},
      {"pythia", "rope_scaling", Json::parse(R"({"type": "dynamic", "factor": 2.0})"), "dynamic"},
      {"pythia", "rope_parameters", Json::parse(R"({"rope_type": "default", "partial_rotary_factor": 0.1})"),
       "even number"},
      {"pythia", "rotary_emb_base", Json(int64_t(500)), "disagree"},
      {"pythia", "use_parallel_residual", Json(int64_t(1)), "use_parallel_residual"},
      {"pythia", "model_type", Json("falcon"), "not a model family we read"},
      {"llama", "rope_parameters", Json::parse(R"({"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000})"), "yarn"},
      {"llama", "rope_parameters", Json::parse(R"({"rope_type": "llama3", "factor": 8.0, "rope_theta": 10000})"),
       "low_freq_factor"},
      {"llama", "rope_parameters", Json::parse(R"({"rope_type": "linear", "rope_theta": 10000})"), "factor"},
      // transformers builds half-width frequencies for these and fails in the attention
      {"llama", "rope_parameters",
       Json::parse(R"({"rope_type": "linear", "factor": 2.0, "rope_theta": 10000, "partial_rotary_factor": 0.5})"),
       "partial_rotary_factor"},
      {"llama", "partial_rotary_factor", Json(0.5), "partial_rotary_factor"},  // top-level, beside llama3
      {"gemma2", "rope_parameters",
       Json::parse(R"({"full_attention": {"rope_type": "default", "rope_theta": 10000}, "sliding_attention": {"rope_type": "default", "rope_theta": 10000}})"),
       "per layer type"},
      {"llama", "num_key_value_heads", Json(int64_t(3)), "num_key_value_heads"},
      {"llama", "hidden_act", Json("relu"), "hidden_act"},
      {"llama", "head_dim", Json(int64_t(7)), "head_dim"},
      {"qwen2", "layer_types", Json::parse(R"(["full_attention", "chunked_attention", "full_attention"])"),
       "chunked_attention"},
      {"qwen2", "layer_types", Json::parse(R"(["full_attention"])"), "layer_types"},
      {"mistral", "sliding_window", Json(int64_t(0)), "sliding_window"},
      // transformers fails on these (Qwen2Config drops sliding_window without use_sliding_window)
      {"qwen2", "use_sliding_window", Json(false), "'use_sliding_window' is false"},
      {"gemma2", "hidden_activation", Json("silu_x"), "hidden_activation"},
      {"gemma2", "attn_logit_softcapping", Json(-1.0), "attn_logit_softcapping"},
      {"gemma2", "query_pre_attn_scalar", Json("big"), "query_pre_attn_scalar"},
      // transformers' switches to bidirectional attention (under eager attention, or flash attention)
      {"gpt2", "is_causal", Json(false), "is_causal"},
      {"pythia", "is_causal", Json(false), "is_causal"},
      {"llama", "is_causal", Json(false), "is_causal"},
      {"gemma2", "use_bidirectional_attention", Json(true), "use_bidirectional_attention"},
  };
  TempDir dir("models_config");
  for (const Case& c : cases) {
    Json config = fixture_config(c.model);
    config[c.key] = c.value;
    const std::string folder = dir.str(cat(c.model, "_", c.key));
    fs::create_directories(folder);
    write_text(folder + "/config.json", config.dump());
    fs::copy_file(models_ref(std::string(c.model) + "/model.safetensors"), folder + "/model.safetensors",
                  fs::copy_options::overwrite_existing);
    const std::string message = error_of([&] { load_decoder_model(folder); });
    EXPECT_NE(message.find(c.mention), std::string::npos) << c.key << ": " << message;
    EXPECT_NE(message.find("config.json"), std::string::npos) << message;
    EXPECT_THROW(load_decoder_model(folder), DataError) << c.key;
  }
}

// num_key_value_heads left out is the config class's default, as transformers reads it (Mistral 8,
// Qwen 2 32; Llama, or null: one per query head): the fixtures' 4 query heads are then no multiple.
TEST(Models, LeftOutKeyValueHeadsAreTheConfigClassDefault) {
  TempDir dir("models_kv_default");
  for (const auto& [model, heads] : {std::pair<std::string, int>{"mistral", 8}, {"qwen2", 32}}) {
    Json config = fixture_config(model), kept = Json::object();
    for (const auto& [key, value] : config.items())
      if (key != "num_key_value_heads") kept[key] = value;
    const std::string folder = dir.str(model);
    fs::create_directories(folder);
    write_text(folder + "/config.json", kept.dump());
    const std::string message = error_of([&] { read_model_config(folder); });
    EXPECT_NE(message.find(cat("'num_key_value_heads' ", heads, " (left out: the config class's default)")),
              std::string::npos)
        << model << ": " << message;
    kept["num_key_value_heads"] = Json();  // null: one per query head
    write_text(folder + "/config.json", kept.dump());
    EXPECT_EQ(read_model_config(folder).config.num_kv_heads, 4) << model;
  }
}

// The order hooks fire in: sequential blocks as the names go; in a parallel block (GPT-NeoX) the
// MLP's input, ln2.hook_normalized, is computed from the block's input before the attention runs.
TEST(Models, HooksAreReachedInTheOrderTheBlockComputesThem) {
  const HookSite pre{1, HookPoint::ResidPre}, z{1, HookPoint::AttnZ}, attn{1, HookPoint::AttnOut},
      ln2{1, HookPoint::Ln2Normalized}, mlp{1, HookPoint::MlpOut}, post{1, HookPoint::ResidPost}, next{2, HookPoint::ResidPre};
  for (bool parallel : {false, true}) {
    SCOPED_TRACE(parallel ? "parallel" : "sequential");
    EXPECT_TRUE(reached_before(pre, ln2, parallel));
    EXPECT_EQ(reached_before(ln2, attn, parallel), parallel);
    EXPECT_EQ(reached_before(ln2, z, parallel), parallel);
    EXPECT_EQ(reached_before(attn, ln2, parallel), !parallel);
    EXPECT_TRUE(reached_before(ln2, mlp, parallel));
    EXPECT_TRUE(reached_before(mlp, post, parallel));
    EXPECT_TRUE(reached_before(post, next, parallel));
    EXPECT_FALSE(reached_before(next, pre, parallel));
    EXPECT_FALSE(reached_before(ln2, ln2, parallel));
  }
  // And the model computes them so: the hooks of a parallel block (Pythia) fire in that order.
  DecoderModel pythia = load_decoder_model(models_ref("pythia"));
  ASSERT_EQ(pythia.config().residual, ResidualWiring::Parallel);
  std::vector<HookPoint> fired;
  SiteHooks hooks;
  for (HookPoint p : {HookPoint::ResidPre, HookPoint::AttnZ, HookPoint::AttnOut, HookPoint::Ln2Normalized,
                      HookPoint::MlpOut, HookPoint::ResidPost})
    hooks.at.emplace_back(HookSite{1, p}, [&fired, p](Tensor&) { fired.push_back(p); });
  pythia.forward_to_site({1, 2, 3}, HookSite{1, HookPoint::ResidPost}, hooks);
  ASSERT_EQ(fired.size(), 6u);
  for (size_t i = 1; i < fired.size(); ++i)
    EXPECT_TRUE(reached_before(HookSite{1, fired[i - 1]}, HookSite{1, fired[i]}, true)) << i;
}

TEST(Models, HookRefusalsInOneLine) {
  DecoderModel pythia = load_decoder_model(models_ref("pythia"));
  const std::vector<int32_t> ids = {1, 2, 3};
  std::string message = error_of([&] { pythia.forward_to_site(ids, {1, HookPoint::ResidMid}); });
  EXPECT_NE(message.find("parallel"), std::string::npos) << message;
  EXPECT_THROW(pythia.forward_to_site(ids, {1, HookPoint::ResidMid}), UsageError);
  message = error_of([&] { pythia.forward_to_site(ids, {4, HookPoint::ResidPre}); });
  EXPECT_NE(message.find("blocks 0 to 3"), std::string::npos) << message;
  message = error_of([&] { pythia.forward_to_site(ids, parse_hook_name("hidden_states[5]")); });
  EXPECT_NE(message.find("outside 0..4"), std::string::npos) << message;
  for (const char* bad : {"blocks.1.attn.hook_q", "blocks.x.hook_resid_pre", "hook_embed", "blocks.1.hook_resid_pre.x",
                          "hidden_states[]", "blocks..hook_mlp_out"})
    EXPECT_THROW(parse_hook_name(bad), UsageError) << bad;
  // Hugging Face / sparsify module paths are said in SAELens's terms (a block's output is its
  // hook_resid_post).
  message = error_of([&] { parse_hook_name("layers.6"); });
  EXPECT_NE(message.find("its output is blocks.6.hook_resid_post (= hidden_states[7], --layer 7"), std::string::npos)
      << message;
  message = error_of([&] { parse_hook_name("transformer.h.2"); });
  EXPECT_NE(message.find("blocks.2.hook_resid_post"), std::string::npos) << message;
  message = error_of([&] { parse_hook_name("model.layers.3.mlp"); });
  EXPECT_NE(message.find("blocks.3.hook_mlp_out"), std::string::npos) << message;
  message = error_of([&] { parse_hook_name("layers.2."); });
  EXPECT_NE(message.find("is not a hook point we read"), std::string::npos) << message;
  message = error_of([&] { parse_hook_name("layers.x"); });
  EXPECT_NE(message.find("is not a hook point we read"), std::string::npos) << message;
  // Names round-trip, and hidden_states[K] is blocks.K.hook_resid_pre below the last block.
  for (const HookSite& site : all_sites(pythia.config())) EXPECT_EQ(parse_hook_name(hook_name(site)), site);
  EXPECT_EQ(pythia.resolve(parse_hook_name("hidden_states[2]")), (HookSite{2, HookPoint::ResidPre}));
  EXPECT_EQ(pythia.resolve(parse_hook_name("hidden_states[4]")), (HookSite{4, HookPoint::FinalOutput}));
  EXPECT_EQ(hook_choice("", 3, true).site, (HookSite{3, HookPoint::FinalOutput}));
  EXPECT_THROW(hook_choice("blocks.1.hook_resid_pre", 3, true), UsageError);
  EXPECT_EQ(pythia.config().hook_width({0, HookPoint::AttnZ}), 32);
}

// ---------------------------------------------------------------- CUDA

TEST(ModelsCuda, EveryHookPointAndLogitsMatchTheCpu) {
  SKIP_WITHOUT_GPU();
  for (const char* name : kModels) {
    SCOPED_TRACE(name);
    DecoderModel cpu = load_decoder_model(models_ref(name)), gpu = load_decoder_model(models_ref(name), Device::CUDA);
    const test::Fixture e(models_ref(std::string(name) + "_expected.safetensors"));
    const std::vector<int32_t> ids = to_ids(e.ints("seq0.input_ids"));
    for (const HookSite& site : all_sites(cpu.config())) {
      const Tensor got = gpu.forward_to_site(ids, site).clone();
      ASSERT_EQ(got.device(), Device::CUDA);
      expect_near_scale(got, e.tensor("seq0.hook." + hook_name(site)), "cuda " + hook_name(site));
    }
    expect_near_scale(gpu.logits(to_ids(e.ints("seq1.input_ids"))), e.tensor("seq1.logits"), "cuda logits");
    GenerateOptions options;
    options.greedy = true;
    options.max_new_tokens = static_cast<int64_t>(e.ints("gen.greedy").size());
    EXPECT_EQ(generate(gpu, to_ids(e.ints("gen.prompt")), options), to_ids(e.ints("gen.greedy")));
  }
}
