// The hashed GPT-Neo test weights (lm/hashed_weights.h) against the test vectors and whole-tensor
// checksums of docs/gpt_neo.md section 7 (printed by scripts/hashed_weights.py), the fixtures'
// token ids, and bit-for-bit equality with the tiny model that Hugging Face saved
// (tests/ref/gpt_neo/tiny/model.safetensors).
#include <gtest/gtest.h>

#include <cstring>

#include "io/safetensors.h"
#include "lm/hashed_weights.h"
#include "tests/util/test_util.h"

using namespace sae;

namespace {

std::string gpt_neo_ref(const std::string& name) { return sae::testing::ref_path("gpt_neo/" + name); }

uint32_t float_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
}

struct Vector {
  const char* name;
  std::vector<int64_t> shape;
  int64_t index;
  uint64_t h;
  int64_t m;
  const char* kind;
  int exponent;
  uint32_t bits;
};

// docs/gpt_neo.md section 7, "Test vectors".
const Vector kVectors[] = {
    {"transformer.wte.weight", {50257, 768}, 0, 0x3d8d70d21ee339aeull, -4354704, "token_embedding", 1, 0xbe84e520},
    {"transformer.wte.weight", {50257, 768}, 1, 0xd4fa8cd736bb7f0aull, 5569164, "token_embedding", 1, 0x3ea9f518},
    {"transformer.wte.weight", {50257, 768}, 38597375, 0x260018a820300d2aull, -5898216, "token_embedding", 1, 0xbeb3ffd0},
    {"transformer.wpe.weight", {2048, 768}, 12345, 0x6087e759993999dbull, -2062361, "position_embedding", 2, 0xbd7bc0c8},
    {"transformer.h.0.ln_1.weight", {768}, 0, 0x682bac0f352870c4ull, -1561684, "layernorm_weight", 3, 0x3f7a0aeb},
    {"transformer.h.0.ln_1.weight", {768}, 767, 0xed8627cc834f2511ull, 7177767, "layernorm_weight", 3, 0x3f8db0c5},
    {"transformer.h.3.ln_2.bias", {768}, 5, 0x2d17708aa14cc997ull, -5433488, "layernorm_bias", 4, 0xbd25d120},
    {"transformer.h.0.attn.attention.q_proj.weight", {768, 768}, 0, 0x9d5b1cc4ccdc7f77ull, 1923868, "linear_weight", 5,
     0x3bead8e0},
    {"transformer.h.1.attn.attention.k_proj.weight", {768, 768}, 589823, 0xe6a5bc39a7bde034ull, 6727100,
     "linear_weight", 5, 0x3ccd4b78},
    {"transformer.h.2.attn.attention.out_proj.bias", {768}, 100, 0xb854a5e5fa98f2c8ull, 3691685, "linear_bias", 4,
     0x3ce15294},
    {"transformer.h.2.mlp.c_fc.weight", {3072, 768}, 2000000, 0xfb2e9c54363e9f94ull, 8072860, "linear_weight", 5,
     0x3cf65d38},
    {"transformer.h.3.mlp.c_proj.weight", {768, 3072}, 7, 0xa3c3bb3edb7b094cull, 2343867, "linear_weight", 6,
     0x3b8f0eec},
    {"transformer.ln_f.weight", {768}, 42, 0x1130a41148adf9c6ull, -7262044, "layernorm_weight", 3, 0x3f644c29},
    {"transformer.h.0.attn.attention.v_proj.weight", {32, 32}, 1000, 0x36a0c55e3af14c2eull, -4808507, "linear_weight",
     3, 0xbd92be76},
    {"transformer.h.1.mlp.c_proj.weight", {32, 96}, 3071, 0x5b8fb18988d21ac8ull, -2388047, "linear_weight", 4,
     0xbc91c13c},
};

}  // namespace

TEST(HashedWeights, HashFunctionsMatchTheirKnownValues) {
  EXPECT_EQ(fnv1a64(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(fnv1a64("a"), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(fnv1a64("transformer.wte.weight"), 0x1784db15dc261b4eull);
  EXPECT_EQ(splitmix64(0), 0xe220a8397b1dcdafull);
}

TEST(HashedWeights, TestVectorsOfTheSpecification) {
  for (const Vector& v : kVectors) {
    const std::string what = cat(v.name, "[", v.index, "]");
    EXPECT_EQ(splitmix64(fnv1a64(v.name) + static_cast<uint64_t>(v.index) * 0x9E3779B97F4A7C15ull), v.h) << what;
    EXPECT_EQ(hashed_integer(v.name, v.index), v.m) << what;
    const HashedKind kind = hashed_kind(v.name, v.shape);
    EXPECT_STREQ(kind.kind, v.kind) << what;
    EXPECT_EQ(kind.exponent, v.exponent) << what;
    EXPECT_EQ(float_bits(hashed_value(v.name, v.shape, v.index)), v.bits) << what;
  }
  // The whole-tensor path gives the same values as the element path (the last element of wte too).
  const Tensor ln = hashed_tensor("transformer.h.0.ln_1.weight", {768});
  EXPECT_EQ(float_bits(ln.data<float>()[767]), 0x3f8db0c5u);
  for (int64_t i = 0; i < 768; ++i)
    ASSERT_EQ(float_bits(ln.data<float>()[i]), float_bits(hashed_value("transformer.h.0.ln_1.weight", {768}, i)));
  EXPECT_THROW(hashed_kind("transformer.h.0.attn.attention.bias", {1, 1, 4, 4}), Error);
}

// Sums in double are exact (docs/gpt_neo.md section 7), so they must equal the table to the last bit.
TEST(HashedWeights, WholeTensorChecksums) {
  struct Sum {
    const char* name;
    std::vector<int64_t> shape;
    double sum;
  };
  const Sum sums[] = {{"transformer.wte.weight", {50257, 768}, -0x1.cf51611a80000p+9},
                      {"transformer.wpe.weight", {2048, 768}, -0x1.4b4ac0fc00000p+7},
                      {"transformer.h.0.attn.attention.q_proj.weight", {768, 768}, 0x1.4ed9edfe00000p+3},
                      {"transformer.h.2.mlp.c_fc.bias", {3072}, 0x1.813e940000000p-5},
                      {"transformer.h.3.mlp.c_proj.weight", {768, 3072}, -0x1.5a60d24580000p+4},
                      {"transformer.ln_f.weight", {768}, 0x1.7e6ca3d300000p+9}};
  for (const Sum& s : sums) {
    const Tensor t = hashed_tensor(s.name, s.shape);
    double total = 0.0;
    const float* p = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) total += p[i];
    EXPECT_EQ(total, s.sum) << s.name;
  }
}

TEST(HashedWeights, TokenIdsOfTheFixtures) {
  // docs/gpt_neo.md section 7, "Hashed token ids" (before the fixtures' overrides).
  EXPECT_EQ(hashed_token_ids("tiny.seq0", 6, 300), (std::vector<int32_t>{42, 90, 11, 199, 287, 220}));
  EXPECT_EQ(hashed_token_ids("tiny.seq2", 1, 300), (std::vector<int32_t>{52}));
  EXPECT_EQ(hashed_token_ids("tiny_acts.story0", 5, 300), (std::vector<int32_t>{255, 195, 105, 4, 227}));
  const std::vector<int32_t> stories = hashed_token_ids("tinystories.seq0", 8, 50257);
  EXPECT_EQ(stories[0], 49764);
  EXPECT_EQ(std::vector<int32_t>(stories.begin() + 3, stories.end()),
            (std::vector<int32_t>{29268, 18350, 31085, 46724, 26735}));
}

TEST(HashedWeights, TinyModelEqualsTheFileHuggingFaceSaved) {
  const GptNeoConfig config = GptNeoConfig::load(gpt_neo_ref("tiny/config.json"));
  const SafetensorsFile file = SafetensorsFile::open(gpt_neo_ref("tiny/model.safetensors"));
  const NamedTensors hashed = hashed_gpt_neo_weights(config);
  EXPECT_EQ(hashed.size(), file.names().size());  // 56: tied, so no lm_head
  for (const auto& [name, tensor] : hashed) {
    ASSERT_TRUE(file.has(name)) << name;
    const SafetensorsEntry& e = file.entry(name);
    ASSERT_EQ(e.dtype, "F32") << name;
    ASSERT_EQ(e.bytes, tensor.nbytes()) << name;
    EXPECT_EQ(std::memcmp(e.data, tensor.raw(), e.bytes), 0) << name;
  }
}
