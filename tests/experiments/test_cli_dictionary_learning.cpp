// dictionary_learning's ae.pt (torch.save of a state dict, with the trainer's config.json; written by
// its own classes: scripts/gen_dictionary_learning_fixture.py) read by the programs as the unit that
// computes the same thing (sae/train/dictionary_learning_file.h): sae_apply gives each class's encode
// and forward; the hook point comes from config.json's submodule_name; what is not read (a class
// unknown, a pickle calling anything but a tensor's rebuild, a tensor past its storage, a backup of
// a normalised run, a state dict two classes share without config.json) is a one-line error.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>

#include "io/npy.h"
#include "io/torch_pickle.h"
#include "sae/train/checkpoint.h"
#include "tests/util/compare.h"
#include "tests/util/foreign_sae.h"
#include "tests/util/fixture.h"
#include "tests/util/npz_writer.h"
#include "tests/util/test_util.h"

using namespace sae;
using namespace sae::testing;
namespace fs = std::filesystem;
using namespace std::string_literals;

namespace {

std::string dl_ref(const std::string& name) {
  return std::string(SAE_SOURCE_DIR) + "/tests/ref/dictionary_learning/" + name;
}

std::pair<Tensor, Tensor> apply_sae(const std::string& sae, const TempDir& dir) {
  return sae_apply_outputs(sae, dl_ref("x.npy"), dir);
}

// A torch.save archive of `pickle` (data.pkl) and storages data/0.. as given.
void write_pt(const std::string& path, const std::string& pickle, const std::vector<std::string>& storages = {}) {
  std::vector<ZipMember> entries = {{"archive/data.pkl", pickle}, {"archive/byteorder", "little"}};
  for (size_t i = 0; i < storages.size(); ++i) entries.push_back({"archive/data/" + std::to_string(i), storages[i]});
  std::ofstream(path, std::ios::binary) << make_zip(entries);
}

// A pickle of {name: tensor of `sizes`/`strides` at `offset` over a float storage "0" of `numel`}.
std::string one_tensor_pickle(const std::string& name, int numel, int offset, std::vector<int> sizes,
                              std::vector<int> strides) {
  auto tuple = [](const std::vector<int>& v) {
    std::string t = "(";
    for (int x : v) t += std::string("K") + char(x);
    return t + "t";
  };
  std::string p = "\x80\x02}(X"s + le32(uint32_t(name.size())) + name;
  p += "ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00"
       "0X\x03\x00\x00\x00" "cpuK"s;
  p += char(numel);
  p += "tQK";
  p += char(offset);
  p += tuple(sizes) + tuple(strides) + "\x89}tRu.";
  return p;
}

}  // namespace

TEST(DictionaryLearning, SaeApplyGivesEachClasssEncodeAndForward) {
  const test::Fixture expected(dl_ref("expected.safetensors"));
  const std::pair<const char*, const char*> cases[] = {
      {"standard", "standard"},      {"new", "standard"},
      {"topk", "topk"},              {"batchtopk", "batchtopk"},
      {"batchtopk_untrained", "batchtopk"}, {"matryoshka", "matryoshka_batchtopk"},
      {"jumprelu", "jumprelu"},      {"gated", "gated"}};
  for (const auto& [name, unit] : cases) {
    SCOPED_TRACE(name);
    TempDir dir("dl_apply");
    for (const std::string& given : {dl_ref(name), dl_ref(std::string(name) + "/ae.pt")}) {
      const auto [f, out] = apply_sae(given, dir);
      const Tensor want_f = expected.tensor(std::string(name) + "_f", DType::F32);
      expect_same_outputs(f, want_f, "features");
      expect_same_outputs(out, expected.tensor(std::string(name) + "_x_hat", DType::F32), "reconstruction");
      for (int64_t i = 0; i < f.numel(); ++i)
        ASSERT_EQ(f.data<float>()[i] > 0, want_f.data<float>()[i] > 0) << "element " << i;
    }
    const Checkpoint c = load_checkpoint(dl_ref(name), Device::CPU);
    EXPECT_EQ(c.params.kind, unit);
    EXPECT_EQ(c.cfg.at("dictionary_learning").at("trainer").at("lm_name").as_string(), "tiny-gpt-neo");
  }
  // A save dir's checkpoints/ae_STEP.pt, with config.json above it.
  TempDir dir("dl_checkpoint");
  const auto [f, out] = apply_sae(dl_ref("checkpoints/checkpoints/ae_10.pt"), dir);
  expect_same_outputs(out, expected.tensor("standard_x_hat", DType::F32), "checkpoint's reconstruction");
  EXPECT_EQ(load_checkpoint(dl_ref("checkpoints/checkpoints/ae_10.pt"), Device::CPU).cfg.at("dictionary_learning")
                .at("trainer").at("dict_class").as_string(),
            "AutoEncoder");
  // A training backup: its "ae" (the optimizer's state, lists and floats read past).
  const auto [bf, bout] = apply_sae(dl_ref("backup.pt"), dir);
  expect_same_outputs(bout, expected.tensor("backup_x_hat", DType::F32), "backup's reconstruction");
}

TEST(DictionaryLearning, HookPointsFromSubmoduleNames) {
  const std::pair<const char*, const char*> cases[] = {{"standard", "blocks.1.hook_resid_post"},
                                                       {"new", "blocks.0.hook_mlp_out"},
                                                       {"jumprelu", "blocks.1.hook_attn_out"}};
  for (const auto& [name, hook] : cases)
    EXPECT_EQ(load_checkpoint(dl_ref(name), Device::CPU).cfg.at("metadata").at("hook_name").as_string(), hook) << name;
  TempDir dir("dl_hook");
  fs::create_directories(dir.str("other"));
  fs::copy_file(dl_ref("gated/ae.pt"), dir.str("other/ae.pt"));
  std::ofstream(dir.str("other/config.json"))
      << R"({"trainer": {"dict_class": "GatedAutoEncoder", "submodule_name": "my_probe"}})";
  EXPECT_FALSE(load_checkpoint(dir.str("other"), Device::CPU).cfg.at("metadata").has("hook_name"));
  // Read inside a model: at that hook, said so; a block the model lacks is the SAE's fault (exit 1).
  const std::string text = " --model " + std::string(SAE_SOURCE_DIR) + "/tests/ref/eval/model --text " +
                           std::string(SAE_SOURCE_DIR) + "/tests/ref/eval/stories.txt";
  const std::string eval_args = text + " --max-stories 2 --out " + dir.str("eval");
  const CommandResult eval = run_binary("sae_eval", "--sae " + dl_ref("new") + eval_args, dir);
  EXPECT_EQ(eval.exit_code, 0) << eval.err;
  EXPECT_NE((eval.out + eval.err).find("spliced at blocks.0.hook_mlp_out (config.json trainer.submodule_name)"),
            std::string::npos)
      << eval.out << eval.err;
  fs::create_directories(dir.str("deep"));
  fs::copy_file(dl_ref("gated/ae.pt"), dir.str("deep/ae.pt"));
  std::ofstream(dir.str("deep/config.json"))
      << R"({"trainer": {"dict_class": "GatedAutoEncoder", "submodule_name": "resid_post_layer_40"}})";
  for (const char* program : {"sae_eval", "sae_features"}) {
    const std::string args = std::string(program) == "sae_eval" ? eval_args : text + " --stories 2 --out " + dir.str("f.json");
    const CommandResult r = run_binary(program, "--sae " + dir.str("deep") + args, dir);
    EXPECT_EQ(r.exit_code, 1) << program << ": " << r.err;
    EXPECT_NE(r.err.find(dir.str("deep")), std::string::npos) << program << ": " << r.err;
  }
}

TEST(DictionaryLearning, TheTorchReaderReadsStridedTensorsAndRefusesWhatIsNotAStateDict) {
  TempDir dir("dl_pickle");
  // A [2, 3] tensor viewing a storage of 6 transposed (strides 1, 2): element (i, j) is storage[i + 2 j].
  std::string storage;
  for (float v : {0.f, 1.f, 2.f, 3.f, 4.f, 5.f}) storage += std::string(reinterpret_cast<const char*>(&v), 4);
  write_pt(dir.str("t.pt"), one_tensor_pickle("w", 6, 0, {2, 3}, {1, 2}), {storage});
  const TorchFile file = TorchFile::open(dir.str("t.pt"));
  EXPECT_EQ(file.read_f32("w").to_vector(), (std::vector<double>{0, 2, 4, 1, 3, 5}));
  // 300 keys naming one dict of 300 entries: 90000 names from a 3 KB pickle.
  std::string many_names = "\x80\x02}(K\x00}q\x01("s;
  for (int j = 0; j < 300; ++j) many_names += "M"s + char(j & 255) + char(j >> 8) + "N";
  many_names += "u";
  for (int i = 1; i < 300; ++i) many_names += "M"s + char(i & 255) + char(i >> 8) + "h\x01";
  many_names += "u.";
  // Refusals, one line each, naming the file.
  const std::pair<std::string, std::string> bad[] = {
      {"\x80\x02" "cos\nsystem\nX\x02\x00\x00\x00ls\x85R."s, "the pickle calls os.system"},
      {"\x80\x02" "cbuiltins\neval\n."s, "the pickle calls builtins.eval"},
      {one_tensor_pickle("w", 6, 1, {2, 3}, {1, 2}), "views elements past its storage's 6"},
      {one_tensor_pickle("w", 6, 0, {8, 3}, {0, 1}), "more than once"},
      {one_tensor_pickle("w", 5, 0, {5}, {1}), "holds 24 bytes, not 5 elements of F32"},
      {one_tensor_pickle("w", 6, 0, {2, 3}, {1, 2}).substr(0, 40), "truncated"},
      {"\x80\x02]q\x00."s, "the saved object is not a dict"},
      {"\x80\x02\xff.", "pickle opcode 0xff"},
      {"\x80\x02}h\x07.", "memo entry 7"},
      {"\x80\x02}0.", "ends with other than one object"},
      {"\x80\x02(" + std::string((1 << 20) + 1, 'N'), "more than 1048576 objects"},
      {many_names, "more than 65536 dict entries to name"},
  };
  for (const auto& [pickle, words] : bad) {
    SCOPED_TRACE(words);
    write_pt(dir.str("bad.pt"), pickle, {storage});
    try {
      const TorchFile f = TorchFile::open(dir.str("bad.pt"));
      ADD_FAILURE() << "accepted";
    } catch (const DataError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(words), std::string::npos) << what;
      EXPECT_NE(what.find(dir.str("bad.pt")), std::string::npos) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    }
  }
}

TEST(DictionaryLearning, WhatIsNotReadIsOneLine) {
  TempDir dir("dl_errors");
  auto folder = [&](const std::string& name, const std::string& from, const std::string& config) {
    fs::create_directories(dir.str(name));
    fs::copy_file(dl_ref(from + "/ae.pt"), dir.str(name + "/ae.pt"));
    if (!config.empty()) std::ofstream(dir.str(name + "/config.json")) << config;
    return dir.str(name);
  };
  const std::string x = " --input " + dl_ref("x.npy") + " --features-out " + dir.str("f.npy");
  const std::pair<std::string, std::string> cases[] = {
      {dl_ref("topk_bare"), "AutoEncoderTopK, BatchTopKSAE, which encode differently"},
      {folder("cross", "standard", R"({"trainer": {"dict_class": "CrossCoder"}})"), "CrossCoder is not read"},
      {folder("mismatch", "standard", R"({"trainer": {"dict_class": "GatedAutoEncoder"}})"),
       "GatedAutoEncoder holds decoder.weight, decoder_bias"},
      {folder("k", "topk", R"({"trainer": {"dict_class": "AutoEncoderTopK", "k": 7}})"), "config.json's trainer.k is 7"},
      {folder("width", "standard", R"({"trainer": {"dict_class": "AutoEncoder", "dict_size": 65}})"),
       "trainer.dict_size is 65"},
      {folder("noconfig", "standard", R"([1, 2])"), "expected dictionary_learning's config.json"},
      {folder("typed", "topk", R"({"trainer": {"dict_class": "AutoEncoderTopK", "k": "six"}})"), "typed/config.json: trainer:"},
  };
  for (const auto& [sae, words] : cases) {
    SCOPED_TRACE(words);
    const CommandResult r = run_binary("sae_apply", "--sae " + sae + x, dir);
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find(words), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  // torch.save's legacy format, said so (not "a truncated zip archive").
  std::ofstream(dir.str("legacy.pt"), std::ios::binary)
      << "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.\x80\x02}q\x00."s;
  const CommandResult legacy = run_binary("sae_apply", "--sae " + dir.str("legacy.pt") + x, dir);
  EXPECT_EQ(legacy.exit_code, 1);
  EXPECT_NE(legacy.err.find("torch.save's legacy format"), std::string::npos) << legacy.err;
  // A save folder before its ae.pt (a run still training, or killed): not one of our runs.
  fs::create_directories(dir.str("training"));
  fs::copy_file(dl_ref("standard/config.json"), dir.str("training/config.json"));
  const CommandResult apply = run_binary("sae_apply", "--sae " + dir.str("training") + x, dir);
  EXPECT_EQ(apply.exit_code, 1);
  EXPECT_NE(apply.err.find("a dictionary_learning save folder without ae.pt"), std::string::npos) << apply.err;
  const CommandResult browser = run_binary("sae_browser", "--run " + dir.str("training"), dir);
  EXPECT_EQ(browser.exit_code, 1);
  EXPECT_NE(browser.err.find("a dictionary_learning save folder without ae.pt"), std::string::npos) << browser.err;
  const CommandResult training = run_binary("sae_train", "--resume " + dir.str("training"), dir);
  EXPECT_EQ(training.exit_code, 1);
  EXPECT_NE(training.err.find("a dictionary_learning save folder holds weights only"), std::string::npos)
      << training.err;
  EXPECT_FALSE(fs::exists(dir.str("training/.lock")));
  // Weights only: --resume says so; --init starts from them.
  const CommandResult resume = run_binary("sae_train", "--resume " + dl_ref("standard"), dir);
  EXPECT_EQ(resume.exit_code, 1);
  EXPECT_NE(resume.err.find("dictionary_learning's ae.pt or OpenAI's) holds weights only"), std::string::npos) << resume.err;
}
