// GPT-Neo (lm/gpt_neo.h) against Hugging Face transformers 5.24.0 (fixtures in tests/ref/gpt_neo,
// made by scripts/gen_gpt_neo_fixtures.py; docs/gpt_neo.md sections 6-8):
//   - every hidden state and the logits of the tiny model saved in F32, F16 and BF16 (4 sequences,
//     up to the 64 positions it has), and the F16 model shown to miss the F32 expectations;
//   - the TinyStories-33M architecture with hashed weights built in memory, 300 tokens (rows past
//     the 256-token window), and a window one wider or narrower shown to miss;
//   - hidden_states[2] of the tiny_acts stories; the residual hook (order, patching a whole state);
//   - every config_cases.json variant accepted or refused, and more refusals;
//   - bad model folders (missing / misshapen / unexpected / non-finite / integer tensors, corrupt
//     or absent safetensors, lm_head rules, legacy buffers) and bad sequences;
//   - the forward on CUDA against the CPU (skips without a GPU).
// Errors are measured against each tensor's largest |value| (docs/gpt_neo.md section 6) and
// printed; the bound is 1e-5 of it.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "io/json.h"
#include "io/safetensors.h"
#include "lm/gpt_neo.h"
#include "lm/hashed_weights.h"
#include "tensor/cuda/backend.h"
#include "tensor/ops.h"
#include "tests/util/compare.h"
#include "tests/util/fixture.h"
#include "tests/util/test_util.h"
#include "tests/util/gpu.h"

using namespace sae;
using sae::testing::RawArray;
using sae::testing::TempDir;

namespace {

constexpr double kRel = 1e-5;  // of each tensor's max |value|

std::string neo_ref(const std::string& name) { return sae::testing::ref_path("gpt_neo/" + name); }

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

Tensor rows_of(const Tensor& t, const std::vector<int64_t>& rows) {
  const Tensor host = t.to(Device::CPU);
  const int64_t width = host.size(1);
  Tensor out = Tensor::empty(Shape{static_cast<int64_t>(rows.size()), width}, host.dtype());
  for (size_t i = 0; i < rows.size(); ++i) {
    Tensor dst = out.slice_rows(i, i + 1);
    copy_(dst, host.slice_rows(rows[i], rows[i] + 1));
  }
  return out;
}

// The tensors of the tiny F32 model file, as raw arrays to write modified copies.
std::vector<RawArray> tiny_arrays() {
  const SafetensorsFile file = SafetensorsFile::open(neo_ref("tiny/model.safetensors"));
  std::vector<RawArray> arrays;
  for (const std::string& name : file.names()) {
    const SafetensorsEntry& e = file.entry(name);
    arrays.push_back({name, e.dtype, e.shape, std::string(static_cast<const char*>(e.data), e.bytes)});
  }
  return arrays;
}

std::string tiny_config_text() { return sae::testing::read_file(neo_ref("tiny/config.json")); }

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// dir/config.json and dir/model.safetensors from the given pieces.
void write_model(const TempDir& dir, const std::string& config, const std::vector<RawArray>& arrays) {
  write_text(dir.str("config.json"), config);
  sae::testing::write_raw_safetensors(dir.str("model.safetensors"), arrays);
}

// The DataError of loading dir, which must name `needle` (a file, a tensor, a key).
void expect_load_error(const TempDir& dir, const std::string& needle, const std::string& needle2 = "") {
  try {
    GptNeo::load(dir.str());
    ADD_FAILURE() << "loaded without error; expected one naming " << needle;
  } catch (const DataError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(needle), std::string::npos) << message;
    if (!needle2.empty()) {
      EXPECT_NE(message.find(needle2), std::string::npos) << message;
    }
    EXPECT_EQ(message.find('\n'), std::string::npos) << "one line: " << message;
  }
}

const char* kTinyFolders[] = {"tiny", "tiny_f16", "tiny_bf16"};

}  // namespace

// ---------------------------------------------------------------- config.json

TEST(GptNeoConfig, AcceptsAndRefusesExactlyTheConfigCases) {
  const Json cases = read_json_file(neo_ref("config_cases.json"));
  ASSERT_EQ(cases.at("accept").size(), 6u);
  ASSERT_EQ(cases.at("reject").size(), 13u);
  for (const auto& [label, config] : cases.at("accept").items()) {
    GptNeoConfig c;
    ASSERT_NO_THROW(c = GptNeoConfig::from_json(config, label)) << label;
    EXPECT_EQ(c.vocab_size, 300) << label;
    EXPECT_EQ(c.hidden_size, 32) << label;
    EXPECT_EQ(c.num_layers, 4) << label;
    EXPECT_EQ(c.num_heads, 4) << label;
    EXPECT_EQ(c.head_dim(), 8) << label;
    EXPECT_EQ(c.max_positions, 64) << label;
    EXPECT_EQ(c.layer_norm_epsilon, 1e-5) << label;
    const std::vector<AttentionKind> layers = {AttentionKind::Global, AttentionKind::Local, AttentionKind::Global,
                                               AttentionKind::Local};
    EXPECT_EQ(c.attention_layers, layers) << label;
    EXPECT_EQ(c.intermediate_size, label.rfind("intermediate_size_null", 0) == 0 ? 128 : 96) << label;
    EXPECT_EQ(c.window_size, label.rfind("window_size_missing", 0) == 0 ? 256 : 8) << label;
    EXPECT_EQ(c.tie_word_embeddings, label.rfind("untied", 0) != 0) << label;
  }
  for (const auto& [label, config] : cases.at("reject").items()) {
    try {
      GptNeoConfig::from_json(config, "cases/" + label);
      ADD_FAILURE() << "accepted: " << label;
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find("cases/" + label), std::string::npos) << e.what();  // names the source
    }
  }
}

TEST(GptNeoConfig, RefusesWhatTheModelCannotDoWithTheKeyNamed) {
  const Json base = Json::parse(tiny_config_text());
  struct Case {
    const char* key;
    Json value;
  };
  const std::vector<Case> cases = {
      {"rope_scaling", Json::object()},
      {"rotary_dim", Json(int64_t(8))},
      {"window_size", Json(int64_t(0))},
      {"window_size", Json()},
      {"num_heads", Json(2.5)},
      {"num_heads", Json(true)},
      {"vocab_size", Json(int64_t(1) << 40)},
      {"tie_word_embeddings", Json("yes")},
      {"layer_norm_epsilon", Json("1e-5")},
      {"activation_function", Json()},
      {"attention_types", Json::parse("[[\"global\", 4]]")},
      {"attention_types", Json::parse("[[[\"global\"], -1]]")},
      {"attention_types", Json::parse("[[[\"global\"], 2, 2]]")},
      {"attention_layers", Json::parse("[\"global\", \"local\", \"global\", 7]")},
      {"model_type", Json()},
  };
  for (const Case& c : cases) {
    Json config = base;
    config[c.key] = c.value;
    try {
      GptNeoConfig::from_json(config, "my/config.json");
      ADD_FAILURE() << "accepted " << c.key << " = " << c.value.dump();
    } catch (const DataError& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find("my/config.json"), std::string::npos) << message;
      EXPECT_NE(message.find(c.key), std::string::npos) << message;
    }
  }
  EXPECT_THROW(GptNeoConfig::from_json(Json::parse("[1, 2]"), "x"), DataError);
  EXPECT_THROW(GptNeoConfig::load(neo_ref("no_such_config.json")), DataError);
  // attention_types entries repeat in order: [[["local"], 1], [["global", "local"], 1], [["global"], 1]]
  Json config = base;
  config["attention_types"] = Json::parse("[[[\"local\"], 1], [[\"global\", \"local\"], 1], [[\"global\"], 1]]");
  config["attention_layers"] = Json();
  const GptNeoConfig c = GptNeoConfig::from_json(config, "x");
  EXPECT_EQ(c.attention_layers, (std::vector<AttentionKind>{AttentionKind::Local, AttentionKind::Global,
                                                            AttentionKind::Local, AttentionKind::Global}));
}

// ---------------------------------------------------------------- the tiny fixtures

TEST(GptNeo, TinyModelEveryHiddenStateAndLogitsInF32F16Bf16) {
  for (const char* folder : kTinyFolders) {
    GptNeo model = GptNeo::load(neo_ref(folder));
    const test::Fixture expected(neo_ref(std::string(folder) + "_expected.safetensors"));
    double worst_hidden = 0, worst_logits = 0;
    for (int s = 0; s < 4; ++s) {  // lengths 40, 17, 1, 64: the workspace is reused and grows once
      const std::vector<int32_t> ids = to_ids(expected.ints(cat("seq", s, ".input_ids")));
      for (int k = 0; k <= 4; ++k) {
        const std::string name = cat("seq", s, ".hidden.", k);
        worst_hidden = std::max(worst_hidden,
                                expect_near_scale(model.hidden_states(ids, k), expected.tensor(name), cat(folder, " ", name)));
      }
      const std::string name = cat("seq", s, ".logits");
      worst_logits = std::max(worst_logits, expect_near_scale(model.logits(ids), expected.tensor(name), cat(folder, " ", name)));
    }
    EXPECT_EQ(model.workspace_tokens(), 64);
    std::printf("%-9s max error / max|HF|: hidden states %.2e, logits %.2e\n", folder, worst_hidden, worst_logits);
  }
}

// The tolerance can tell the weights' rounding apart: the F16 model misses the F32 expectations.
TEST(GptNeo, TinyToleranceIsDiscriminating) {
  GptNeo f16 = GptNeo::load(neo_ref("tiny_f16"));
  const test::Fixture f32_expected(neo_ref("tiny_expected.safetensors"));
  const std::vector<int32_t> ids = to_ids(f32_expected.ints("seq3.input_ids"));
  const Tensor want = f32_expected.tensor("seq3.logits");
  const double rel = sae::testing::max_abs_diff(f16.logits(ids), want) / sae::testing::max_abs(want);
  std::printf("F16 weights vs the F32 model's logits: %.2e of max|logit|\n", rel);
  EXPECT_GT(rel, 10 * kRel);
}

TEST(GptNeo, TinyFixtureIdsAreTheHashedSequences) {
  const test::Fixture expected(neo_ref("tiny_expected.safetensors"));
  const int64_t lengths[] = {40, 17, 1, 64};
  for (int s = 0; s < 4; ++s) {
    std::vector<int32_t> ids = hashed_token_ids(cat("tiny.seq", s), lengths[s], 300);
    if (s == 0) ids[3] = 0, ids[5] = 299;  // docs/gpt_neo.md section 7: the first and last rows
    EXPECT_EQ(to_ids(expected.ints(cat("seq", s, ".input_ids"))), ids) << s;
  }
}

TEST(GptNeo, TinyActsAreHiddenStates2OfEachStory) {
  GptNeo model = GptNeo::load(neo_ref("tiny"));
  const test::Fixture acts(neo_ref("tiny_acts.safetensors"));
  const std::vector<int64_t> lengths = acts.ints("story_lengths"), tokens = acts.ints("token_ids");
  const Tensor activations = acts.tensor("activations");
  int64_t begin = 0;
  for (size_t story = 0; story < lengths.size(); ++story) {
    const std::vector<int32_t> ids(tokens.begin() + begin, tokens.begin() + begin + lengths[story]);
    EXPECT_EQ(ids, hashed_token_ids(cat("tiny_acts.story", story), lengths[story], 300));
    expect_near_scale(model.hidden_states(ids, 2), activations.slice_rows(begin, begin + lengths[story]),
                      cat("tiny_acts story ", story));
    begin += lengths[story];
  }
  EXPECT_EQ(begin, activations.size(0));
}

TEST(GptNeo, BuiltFromHashedWeightsInMemoryEqualsTheLoadedFile) {
  const GptNeoConfig config = GptNeoConfig::load(neo_ref("tiny/config.json"));
  GptNeo from_hash = GptNeo::from_tensors(config, hashed_gpt_neo_weights(config), Device::CPU, "hashed tiny");
  GptNeo from_file = GptNeo::load(neo_ref("tiny"));
  const std::vector<int32_t> ids = hashed_token_ids("tiny.seq3", 64, 300);
  sae::testing::expect_bitwise_equal(from_hash.logits(ids), from_file.logits(ids), "hashed vs file");
}

// ---------------------------------------------------------------- hooks and the workspace

TEST(GptNeo, HookSeesEachHiddenStateInOrderAndOnlyThoseNeeded) {
  GptNeo model = GptNeo::load(neo_ref("tiny"));
  const test::Fixture expected(neo_ref("tiny_expected.safetensors"));
  const std::vector<int32_t> ids = to_ids(expected.ints("seq0.input_ids"));
  for (int layer = 0; layer <= 4; ++layer) {
    std::vector<int> seen;
    const Tensor last = model.forward_to(ids, layer, [&](int k, Tensor& state) {
      seen.push_back(k);
      expect_near_scale(state, expected.tensor(cat("seq0.hidden.", k)), cat("hook state ", k));
    });
    std::vector<int> want;
    for (int k = 0; k <= layer; ++k) want.push_back(k);
    EXPECT_EQ(seen, want) << "forward_to layer " << layer;
    expect_near_scale(last, expected.tensor(cat("seq0.hidden.", layer)), cat("forward_to ", layer));
  }
  EXPECT_THROW(model.forward_to(ids, 5), UsageError);
  EXPECT_THROW(model.forward_to(ids, -1), UsageError);
  EXPECT_THROW(model.forward_to(ids, 2, [](int, Tensor& state) { state = state.clone(); }), UsageError);
}

// Everything after a state depends only on that state (and the fixed positions), so writing
// sequence B's hidden_states[1] into a run of sequence A (same length) must give B's logits.
TEST(GptNeo, HookThatOverwritesTheResidualStreamPatchesTheRest) {
  GptNeo model = GptNeo::load(neo_ref("tiny"));
  const test::Fixture expected(neo_ref("tiny_expected.safetensors"));
  const std::vector<int64_t> seq0 = expected.ints("seq0.input_ids");
  const std::vector<int32_t> a(seq0.begin(), seq0.begin() + 17);  // 17 tokens, like seq1
  const Tensor b_hidden_1 = expected.tensor("seq1.hidden.1"), b_logits = expected.tensor("seq1.logits");
  const Tensor patched = model.logits(a, [&](int k, Tensor& state) {
    if (k == 1) copy_(state, b_hidden_1);
  });
  expect_near_scale(patched, b_logits, "A patched with B's hidden_states[1]");
  EXPECT_GT(sae::testing::max_abs_diff(model.logits(a), b_logits), 0.1);  // unpatched, A is not B
  // Adding zero at every layer changes nothing, bit for bit.
  const Tensor plain = model.logits(a);
  const Tensor with_zero = model.logits(a, [](int, Tensor& state) { add_(state, Tensor::zeros(state.shape())); });
  sae::testing::expect_bitwise_equal(with_zero, plain, "adding zero");
}

TEST(GptNeo, WorkspaceIsReusedAndShorterSequencesAfterLongerOnesAreExact) {
  GptNeo model = GptNeo::load(neo_ref("tiny"));
  GptNeo fresh = GptNeo::load(neo_ref("tiny"));
  const std::vector<int32_t> long_ids = hashed_token_ids("long", 64, 300), short_ids = hashed_token_ids("short", 9, 300);
  model.logits(long_ids);
  EXPECT_EQ(model.workspace_tokens(), 64);
  const Tensor reused = model.hidden_states(short_ids, 4);
  EXPECT_EQ(model.workspace_tokens(), 64);
  sae::testing::expect_bitwise_equal(reused, fresh.hidden_states(short_ids, 4), "short after long");
  EXPECT_EQ(fresh.workspace_tokens(), 9);
  fresh.reserve(30);
  EXPECT_EQ(fresh.workspace_tokens(), 30);
  EXPECT_THROW(fresh.reserve(65), DataError);
  // hidden_states returns a copy: the next call does not change it.
  const Tensor kept = model.hidden_states(short_ids, 2), copy = kept.clone();
  model.hidden_states(long_ids, 2);
  sae::testing::expect_bitwise_equal(kept, copy, "hidden_states is not a view");
}

// ---------------------------------------------------------------- TinyStories-33M shape

namespace {
// The TinyStories-33M config and its 274 MB of hashed weights, made once for the tests below
// (models built from them share the tensors).
const GptNeoConfig& tinystories_config() {
  static const GptNeoConfig config = GptNeoConfig::load(neo_ref("tinystories33m_hashed/config.json"));
  return config;
}
const NamedTensors& tinystories_weights() {
  static const NamedTensors weights = hashed_gpt_neo_weights(tinystories_config());
  return weights;
}
std::vector<int32_t> tinystories_ids(const test::Fixture& expected) {
  std::vector<int32_t> ids = hashed_token_ids("tinystories.seq0", 300, 50257);
  ids[1] = 50256, ids[2] = 0;  // docs/gpt_neo.md section 7
  EXPECT_EQ(to_ids(expected.ints("seq0.input_ids")), ids);
  return ids;
}
}  // namespace

TEST(GptNeo, TinyStories33mHashedPast256TokensAndItsLogits) {
  GptNeo model = GptNeo::from_tensors(tinystories_config(), tinystories_weights(), Device::CPU, "hashed TinyStories");
  EXPECT_EQ(model.config().intermediate_size, 3072);
  EXPECT_EQ(model.config().window_size, 256);
  const test::Fixture expected(neo_ref("tinystories33m_hashed_expected.safetensors"));
  const std::vector<int32_t> ids = tinystories_ids(expected);
  const std::vector<int64_t> positions = expected.ints("seq0.positions");
  EXPECT_EQ(positions, (std::vector<int64_t>{0, 1, 2, 100, 254, 255, 256, 257, 299}));
  // The SAE layer through hidden_states (blocks 0 and 1 only), every row.
  double worst = expect_near_scale(model.hidden_states(ids, 2), expected.tensor("seq0.hidden.2.full"), "hidden.2.full");
  // Every state and the logits from one full pass, the states copied out by the hook.
  std::vector<Tensor> states;
  const Tensor logits = model.logits(ids, [&](int, Tensor& state) { states.push_back(state.clone()); });
  ASSERT_EQ(states.size(), 5u);
  for (int k = 0; k <= 4; ++k)
    worst = std::max(worst, expect_near_scale(rows_of(states[k], positions), expected.tensor(cat("seq0.hidden.", k)),
                                              cat("TinyStories hidden.", k)));
  const double logits_err = expect_near_scale(rows_of(logits, expected.ints("seq0.logit_positions")),
                                              expected.tensor("seq0.logits"), "TinyStories logits");
  std::printf("TinyStories-33M hashed, 300 tokens: max error / max|HF|: hidden states %.2e, logits %.2e\n", worst,
              logits_err);
}

// A window one wider or one narrower changes the rows from 256 on by far more than the tolerance.
TEST(GptNeo, TinyStoriesWindowOffByOneIsCaught) {
  const test::Fixture expected(neo_ref("tinystories33m_hashed_expected.safetensors"));
  const std::vector<int32_t> ids = tinystories_ids(expected);
  const Tensor want = expected.tensor("seq0.hidden.2.full");
  const double scale = sae::testing::max_abs(want);
  for (int64_t delta : {-1, 1}) {
    GptNeoConfig config = tinystories_config();
    config.window_size += delta;
    GptNeo model = GptNeo::from_tensors(config, tinystories_weights(), Device::CPU, "off-by-one window");
    const Tensor got = model.hidden_states(ids, 2);
    const double early = sae::testing::max_abs_diff(got.slice_rows(0, 255), want.slice_rows(0, 255));
    const double late = sae::testing::max_abs_diff(got.slice_rows(256, 300), want.slice_rows(256, 300));
    std::printf("window %+lld: rows 0-254 error %.2e, rows 256-299 error %.2e of max|x|\n",
                static_cast<long long>(delta), early / scale, late / scale);
    EXPECT_LE(early, kRel * scale);  // the window does not matter before it fills
    EXPECT_GT(late, 100 * kRel * scale);
  }
}

// ---------------------------------------------------------------- bad inputs

TEST(GptNeo, BadSequencesAreClearErrors) {
  GptNeo model = GptNeo::load(neo_ref("tiny"));
  EXPECT_THROW(model.hidden_states({}, 2), DataError);
  try {
    model.hidden_states(hashed_token_ids("too long", 65, 300), 2);
    ADD_FAILURE() << "65 tokens accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("max_position_embeddings 64"), std::string::npos) << e.what();
  }
  try {
    model.logits({1, 2, 300});
    ADD_FAILURE() << "id 300 accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("token id 300 at position 2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(model.logits({-1}), DataError);
  EXPECT_EQ(model.hidden_states(hashed_token_ids("max", 64, 300), 1).size(0), 64);  // exactly P is fine
}

TEST(GptNeo, MissingMisshapenUnexpectedAndNonFiniteTensorsAreRefused) {
  const std::string config = tiny_config_text();
  {
    TempDir dir("neo_missing");
    std::vector<RawArray> arrays = tiny_arrays();
    std::erase_if(arrays, [](const RawArray& a) { return a.name == "transformer.h.2.mlp.c_fc.bias"; });
    write_model(dir, config, arrays);
    expect_load_error(dir, "missing tensor 'transformer.h.2.mlp.c_fc.bias'", "model.safetensors");
  }
  {
    TempDir dir("neo_shape");
    std::vector<RawArray> arrays = tiny_arrays();
    for (RawArray& a : arrays)
      if (a.name == "transformer.h.1.mlp.c_fc.weight") a.shape = {32, 96};  // transposed: [in, out]
    write_model(dir, config, arrays);
    expect_load_error(dir, "'transformer.h.1.mlp.c_fc.weight' has shape [32, 96], expected [96, 32]");
  }
  {
    TempDir dir("neo_unexpected");
    std::vector<RawArray> arrays = tiny_arrays();
    arrays.push_back({"transformer.h.0.attn.attention.q_proj.bias", "F32", {32}, std::string(32 * 4, '\0')});
    write_model(dir, config, arrays);
    expect_load_error(dir, "unexpected tensor 'transformer.h.0.attn.attention.q_proj.bias'");
  }
  {
    TempDir dir("neo_nan");
    std::vector<RawArray> arrays = tiny_arrays();
    for (RawArray& a : arrays)
      if (a.name == "transformer.wpe.weight") {
        const float nan = NAN;
        std::memcpy(a.bytes.data() + 4 * 100, &nan, 4);
      }
    write_model(dir, config, arrays);
    expect_load_error(dir, "'transformer.wpe.weight' holds a non-finite value", "index 100");
  }
  {
    TempDir dir("neo_int");
    std::vector<RawArray> arrays = tiny_arrays();
    for (RawArray& a : arrays)
      if (a.name == "transformer.ln_f.bias") a.dtype = "I32";
    write_model(dir, config, arrays);
    expect_load_error(dir, "'transformer.ln_f.bias' is I32");
  }
  {
    TempDir dir("neo_layer9");  // a buffer of a layer the config does not have is not a legacy buffer
    std::vector<RawArray> arrays = tiny_arrays();
    arrays.push_back({"transformer.h.9.attn.attention.masked_bias", "F32", {}, std::string(4, '\0')});
    write_model(dir, config, arrays);
    expect_load_error(dir, "unexpected tensor 'transformer.h.9.attn.attention.masked_bias'");
  }
}

TEST(GptNeo, CorruptOrAbsentFilesAndBadConfigsAreClearErrors) {
  const std::string weights = sae::testing::read_file(neo_ref("tiny/model.safetensors"));
  {
    TempDir dir("neo_truncated");
    write_text(dir.str("config.json"), tiny_config_text());
    write_text(dir.str("model.safetensors"), weights.substr(0, weights.size() - 100));
    expect_load_error(dir, "model.safetensors");
  }
  {
    TempDir dir("neo_garbage");
    write_text(dir.str("config.json"), tiny_config_text());
    write_text(dir.str("model.safetensors"), std::string("\xff\xff\xff\xff\xff\xff\xff\x7f garbage", 16));
    expect_load_error(dir, "model.safetensors");
  }
  {
    TempDir dir("neo_none");
    write_text(dir.str("config.json"), tiny_config_text());
    write_text(dir.str("pytorch_model.bin"), "not read");
    expect_load_error(dir, "no model.safetensors", "pytorch_model.bin");
  }
  {
    TempDir dir("neo_relu");
    Json config = Json::parse(tiny_config_text());
    config["activation_function"] = "relu";
    write_text(dir.str("config.json"), config.dump());
    write_text(dir.str("model.safetensors"), weights);
    expect_load_error(dir, "config.json", "activation_function");
  }
  {
    TempDir dir("neo_bad_json");
    write_text(dir.str("config.json"), "{\"model_type\": \"gpt_neo\",");
    write_text(dir.str("model.safetensors"), weights);
    expect_load_error(dir, "config.json");
  }
  {
    TempDir dir("neo_no_config");
    write_text(dir.str("model.safetensors"), weights);
    expect_load_error(dir, "config.json");
  }
  {
    // A config that disagrees with the file: intermediate_size 128 -> every c_fc is misshapen.
    TempDir dir("neo_mismatch");
    Json config = Json::parse(tiny_config_text());
    config["intermediate_size"] = Json();
    write_text(dir.str("config.json"), config.dump());
    write_text(dir.str("model.safetensors"), weights);
    expect_load_error(dir, "'transformer.h.0.mlp.c_fc.bias' has shape [96], expected [128]");
  }
}

// docs/gpt_neo.md section 2: lm_head.weight from the file when present, else the tied wte when
// tie_word_embeddings, else refused; the legacy mask buffers are ignored, even all-true ones that
// would disable the window if they were used.
TEST(GptNeo, LmHeadRuleAndLegacyBuffers) {
  GptNeo plain = GptNeo::load(neo_ref("tiny"));
  const std::vector<int32_t> ids = hashed_token_ids("tiny.seq3", 64, 300);
  const Tensor plain_logits = plain.logits(ids);
  const Tensor final_state = plain.hidden_states(ids, 4);
  std::vector<float> head(300 * 32);
  for (size_t i = 0; i < head.size(); ++i) head[i] = static_cast<float>(std::sin(0.37 * double(i)));
  const Tensor head_tensor = Tensor::from_data(head.data(), Shape{300, 32});
  const RawArray lm_head{"lm_head.weight", "F32", {300, 32}, sae::testing::raw_bytes(head)};
  Json untied = Json::parse(tiny_config_text());
  untied["tie_word_embeddings"] = false;
  for (bool tied : {true, false}) {
    TempDir dir("neo_head");
    std::vector<RawArray> arrays = tiny_arrays();
    arrays.push_back(lm_head);
    write_model(dir, tied ? tiny_config_text() : untied.dump(), arrays);
    GptNeo model = GptNeo::load(dir.str());
    expect_near_scale(model.logits(ids), matmul(final_state, head_tensor, false, true),
                      cat("the file's lm_head, tied ", tied));
    sae::testing::expect_bitwise_equal(model.hidden_states(ids, 4), final_state, "lm_head changes no hidden state");
  }
  {
    TempDir dir("neo_untied_no_head");
    write_model(dir, untied.dump(), tiny_arrays());
    expect_load_error(dir, "missing tensor 'lm_head.weight'");
  }
  {
    TempDir dir("neo_legacy");
    std::vector<RawArray> arrays = tiny_arrays();
    for (int i = 0; i < 4; ++i) {
      arrays.push_back({cat("transformer.h.", i, ".attn.attention.bias"), "BOOL", {1, 1, 64, 64},
                        std::string(64 * 64, '\x01')});
      arrays.push_back({cat("transformer.h.", i, ".attn.attention.masked_bias"), "F32", {}, std::string(4, '\0')});
    }
    write_model(dir, tiny_config_text(), arrays);
    GptNeo model = GptNeo::load(dir.str());
    sae::testing::expect_bitwise_equal(model.logits(ids), plain_logits, "legacy buffers ignored");
  }
}

// ---------------------------------------------------------------- CUDA

TEST(GptNeoCuda, ForwardMatchesTheCpuAndTheFixtures) {
  SKIP_WITHOUT_GPU();
  for (const char* folder : kTinyFolders) {
    GptNeo cpu = GptNeo::load(neo_ref(folder)), gpu = GptNeo::load(neo_ref(folder), Device::CUDA);
    EXPECT_EQ(gpu.device(), Device::CUDA);
    const test::Fixture expected(neo_ref(std::string(folder) + "_expected.safetensors"));
    for (int s = 0; s < 4; ++s) {
      const std::vector<int32_t> ids = to_ids(expected.ints(cat("seq", s, ".input_ids")));
      for (int k = 0; k <= 4; ++k) {
        const Tensor got = gpu.hidden_states(ids, k);
        ASSERT_EQ(got.device(), Device::CUDA);
        expect_near_scale(got, expected.tensor(cat("seq", s, ".hidden.", k)), cat("cuda ", folder, " hidden ", k));
        expect_near_scale(got, cpu.hidden_states(ids, k), cat("cuda vs cpu ", folder, " hidden ", k));
      }
      expect_near_scale(gpu.logits(ids), expected.tensor(cat("seq", s, ".logits")), cat("cuda ", folder, " logits"));
    }
  }
  GptNeo gpu = GptNeo::from_tensors(tinystories_config(), tinystories_weights(), Device::CUDA, "hashed TinyStories");
  const test::Fixture expected(neo_ref("tinystories33m_hashed_expected.safetensors"));
  const std::vector<int32_t> ids = to_ids(expected.ints("seq0.input_ids"));
  expect_near_scale(gpu.hidden_states(ids, 2), expected.tensor("seq0.hidden.2.full"), "cuda TinyStories hidden.2");
  expect_near_scale(rows_of(gpu.logits(ids), expected.ints("seq0.logit_positions")), expected.tensor("seq0.logits"),
                    "cuda TinyStories logits");
  EXPECT_THROW(gpu.hidden_states(std::vector<int32_t>(2049, 1), 2), DataError);
}
