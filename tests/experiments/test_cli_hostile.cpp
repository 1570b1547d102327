// The same hostile input given to every program that takes it: each must refuse it at
// once with one line naming the file or option at fault, the same line and exit code in every
// program for the same cause, or (non-finite weights) do the arithmetic in double instead of
// printing a silent "n/a". Programs: sae_train (from text), sae_cache, sae_eval, sae_steer,
// sae_features, on the fixtures of tests/ref/eval (a 4-layer GPT-Neo of width 32, its tokenizer,
// six stories, an SAE at hidden_states[2]).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "io/json.h"
#include "sae/train/checkpoint.h"
#include "tests/util/program_run.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::CommandResult;
using sae::testing::read_file;
using sae::testing::run_program;
using sae::testing::shell_quote;
using sae::testing::TempDir;
namespace fs = std::filesystem;

namespace {

std::string eval_ref(const std::string& name) { return std::string(SAE_SOURCE_DIR) + "/tests/ref/eval/" + name; }

// Each program's command line with the model, a text and an SAE (where it takes one).
struct Program {
  std::string name;
  bool takes_sae = true;
  std::string args(const std::string& model, const std::string& text, const std::string& sae,
                   const std::string& out) const {
    const std::string common = cat(" --model ", shell_quote(model), " --device cpu");
    if (name == "sae_train")
      return cat(common, " --text ", shell_quote(text), " --features 16 --steps 2 --l1 0.1 --progress none --out ",
                 shell_quote(out));
    if (name == "sae_cache") return cat(common, " --text ", shell_quote(text), " --progress none --out ", shell_quote(out));
    if (name == "sae_eval")
      return cat(common, " --sae ", shell_quote(sae), " --text ", shell_quote(text), " --progress none --out ",
                 shell_quote(out));
    if (name == "sae_features")
      return cat(common, " --sae ", shell_quote(sae), " --text ", shell_quote(text), " --out ",
                 shell_quote(out + ".json"));
    return cat(common, " --sae ", shell_quote(sae), " --feature 1 --strength 1 --prompt 'Once upon' --greedy "
                                                     "--max-new-tokens 4");
  }
};
const std::vector<Program> kTextPrograms = {{"sae_train", false}, {"sae_cache", false}, {"sae_eval"}, {"sae_features"}};
const std::vector<Program> kModelPrograms = {
    {"sae_train", false}, {"sae_cache", false}, {"sae_eval"}, {"sae_features"}, {"sae_steer"}};

// The one line a program printed, without its "PROGRAM: error: " prefix and " (see --help)".
std::string message_of(const CommandResult& r, const std::string& program) {
  std::string line = r.err;
  if (!line.empty() && line.back() == '\n') line.pop_back();
  const std::string prefix = program + ": error: ";
  if (line.rfind(prefix, 0) == 0) line = line.substr(prefix.size());
  const std::string help = " (see --help)";
  if (line.size() > help.size() && line.compare(line.size() - help.size(), help.size(), help) == 0)
    line.resize(line.size() - help.size());
  return line;
}

// Runs every program on the same input; each must exit `code` with one line containing `needle`,
// and all the lines must be the same.
void expect_same_refusal(const std::vector<Program>& programs, const std::string& model, const std::string& text,
                         const std::string& sae, int code, const std::string& needle, const std::string& extra = "") {
  std::string first;
  for (const Program& p : programs) {
    SCOPED_TRACE(p.name);
    TempDir scratch("hostile_" + p.name);
    const CommandResult r = run_program(p.name, p.args(model, text, sae, scratch.str("out")) + extra, scratch, "", 60);
    EXPECT_EQ(r.exit_code, code) << r.err << r.out;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    const std::string message = message_of(r, p.name);
    EXPECT_NE(message.find(needle), std::string::npos) << "wanted '" << needle << "' in: " << r.err;
    EXPECT_EQ(message.find("filesystem error"), std::string::npos) << r.err;
    if (first.empty()) first = message;
    EXPECT_EQ(message, first) << "the same cause should read the same in every program";
  }
}

// A copy of the fixture model (config.json edited by `edit`, the other files linked).
std::string model_copy(const TempDir& dir, const std::string& name, const std::function<void(Json&)>& edit) {
  const fs::path folder = dir.str(name);
  fs::create_directories(folder);
  for (const char* file : {"model.safetensors", "tokenizer.json", "generation_config.json"})
    fs::create_symlink(eval_ref("model/") + file, folder / file);
  Json config = read_json_file(eval_ref("model/config.json"));
  edit(config);
  std::ofstream(folder / "config.json") << config.dump(2);
  return folder.string();
}

// A copy of the story SAE with cfg.json edited by `edit`.
std::string sae_copy(const TempDir& dir, const std::string& name, const std::function<void(Json&)>& edit) {
  const fs::path folder = dir.str(name);
  fs::create_directories(folder);
  fs::copy_file(eval_ref("sae_story/sae_weights.safetensors"), folder / "sae_weights.safetensors");
  Json cfg = read_json_file(eval_ref("sae_story/cfg.json"));
  edit(cfg);
  std::ofstream(folder / "cfg.json") << cfg.dump(2);
  return folder.string();
}

}  // namespace

// A FIFO as --text used to block every program forever. Refused at once, one message for all.
TEST(HostileInput, AFifoAsTextIsRefusedAtOnceByEveryProgram) {
  TempDir dir("hostile_fifo");
  ASSERT_EQ(::mkfifo(dir.str("stories.fifo").c_str(), 0600), 0);
  expect_same_refusal(kTextPrograms, eval_ref("model"), dir.str("stories.fifo"), eval_ref("sae_story"), 1,
                      "stories.fifo: it is a FIFO (named pipe), not a regular file");
}

// A FIFO as an activation file: reading its first bytes (which say .npy or .npz) blocked until
// something wrote to it; refused at once, as a FIFO as --text is.
TEST(HostileInput, AFifoAsActivationsIsRefusedAtOnce) {
  TempDir dir("hostile_fifo_data");
  ASSERT_EQ(::mkfifo(dir.str("acts.fifo").c_str(), 0600), 0);
  const sae::testing::CommandResult train = sae::testing::run_binary(
      "sae_train", cat("--data ", dir.str("acts.fifo"), " --features 8 --steps 1 --progress none --out ", dir.str("run")),
      dir);
  EXPECT_EQ(train.exit_code, 1) << train.err;
  EXPECT_NE(train.err.find("acts.fifo: it is a FIFO (named pipe), not a regular file"), std::string::npos) << train.err;
}

// Output files are checked before the work: a missing folder was found only at the final write (with
// sae_features' JSON already written when its --stats-out failed); two outputs of one path kept only
// the second, and an output named as the input replaced it.
TEST(HostileInput, OutputPathsAreCheckedBeforeTheWork) {
  TempDir dir("hostile_outputs");
  ASSERT_EQ(::mkfifo(dir.str("fifo").c_str(), 0600), 0);  // as a device would be, it was replaced by the file
  std::vector<float> x(10 * 32, 0.25f);
  for (size_t i = 0; i < x.size(); ++i) x[i] += 0.01f * static_cast<float>(i % 7);
  sae::testing::write_raw_safetensors(dir.str("x.safetensors"), {{"activations", "F32", {10, 32}, sae::testing::raw_bytes(x)}});
  const std::string apply = cat("--sae ", shell_quote(eval_ref("sae_topk")), " --input ", dir.str("x.safetensors"), " --raw");
  struct Case {
    std::string program, args, mention;
    int code;
  };
  const std::string features = cat(" --model ", shell_quote(eval_ref("model")), " --sae ", shell_quote(eval_ref("sae_story")),
                                   " --text ", shell_quote(eval_ref("stories.txt")), " --device cpu");
  const std::vector<Case> cases = {
      {"sae_apply", apply + " --features-out " + dir.str("nodir/f.npy"), "nodir does not exist", 1},
      {"sae_apply", apply + " --features-out " + dir.str("same.npy") + " --reconstruction-out " + dir.str("same.npy"),
       "--features-out and --reconstruction-out name one file", 2},
      {"sae_apply", apply + " --features-out " + dir.str("x.safetensors"), "is an input (of --input)", 2},
      {"sae_apply", apply + " --features-out " + dir.str("fifo"), "is not a regular file", 1},
      {"sae_features", features + " --out " + dir.str("nodir/f.json"), "nodir does not exist", 1},
      {"sae_features", features + " --out " + dir.str("f.json") + " --stats-out " + dir.str("nodir/s.safetensors"),
       "nodir does not exist", 1},
      {"sae_features", features + " --out " + dir.str("f.json") + " --stats-out " + dir.str("f.json"),
       "--out and --stats-out name one file", 2},
  };
  for (const Case& c : cases) {
    const CommandResult r = sae::testing::run_binary(c.program, c.args, dir);
    EXPECT_EQ(r.exit_code, c.code) << c.program << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find(c.mention), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  EXPECT_FALSE(fs::exists(dir.str("f.json")));  // refused before it wrote anything
  EXPECT_FALSE(fs::exists(dir.str("same.npy")));
  EXPECT_FALSE(fs::is_regular_file(dir.str("fifo")));
  // sae_browser's page over a file of the run it shows (the run's statistics had been overwritten).
  fs::copy(eval_ref("sae_story"), dir.str("sae"), fs::copy_options::recursive);
  const CommandResult page = sae::testing::run_binary(
      "sae_browser", cat("--run ", dir.str("sae"), " --out ", dir.str("sae/sae_weights.safetensors")), dir);
  EXPECT_EQ(page.exit_code, 2) << page.err;
  EXPECT_NE(page.err.find("is an input (of --run)"), std::string::npos) << page.err;
}

// A directory as --text: our line, not the library's "filesystem error: ..." text.
TEST(HostileInput, ADirectoryAsTextIsOneLineNamingIt) {
  TempDir dir("hostile_dir");
  fs::create_directories(dir.str("stories"));
  expect_same_refusal(kTextPrograms, eval_ref("model"), dir.str("stories"), eval_ref("sae_story"), 1,
                      "stories: it is a directory, expected a file");
}

// --layer=-1 used to run layer 2 in sae_features; every program refuses it alike (exit 2).
TEST(HostileInput, ANegativeLayerIsAUsageErrorEverywhere) {
  expect_same_refusal({{"sae_cache", false}, {"sae_eval"}, {"sae_features"}, {"sae_steer"}}, eval_ref("model"),
                      eval_ref("stories.txt"), eval_ref("sae_story"), 2,
                      "--layer must be a hidden_states index >= 0, got -1", " --layer=-1");
  TempDir dir("hostile_layer");
  const CommandResult train =
      run_program("sae_train", Program{"sae_train"}.args(eval_ref("model"), eval_ref("stories.txt"), "", dir.str("run")) +
                                   " --layer=-1", dir);
  EXPECT_EQ(train.exit_code, 2) << train.err;
  EXPECT_NE(train.err.find("--layer must be a hidden_states index >= 0, got -1"), std::string::npos) << train.err;
}

// A layer out of range given by the SAE's cfg.json is a data error naming that file (it
// was "--layer 99" with exit 2 in sae_features), the same in the three programs that read an SAE.
TEST(HostileInput, ALayerOutOfRangeInCfgJsonNamesTheFile) {
  TempDir dir("hostile_cfg_layer");
  const std::string sae = sae_copy(dir, "sae99", [](Json& cfg) { cfg["sae_cpp"]["data"]["layer"] = 99; });
  expect_same_refusal({{"sae_eval"}, {"sae_features"}, {"sae_steer"}}, eval_ref("model"), eval_ref("stories.txt"), sae, 1,
                      "sae99: cfg.json sae_cpp.data.layer hidden_states[99]: hidden_states index 99 is outside 0..4");
}

// An SAE of one head (SAELens's hook_head_index): sae_features read the whole hook for it, exit 0,
// where sae_eval refused it.
TEST(HostileInput, AnSaeOfOneHeadIsRefusedByEveryProgramThatReadsItsHook) {
  TempDir dir("hostile_head");
  const std::string sae = sae_copy(dir, "head", [](Json& cfg) { cfg["metadata"]["hook_head_index"] = 3; });
  expect_same_refusal({{"sae_eval"}, {"sae_features"}, {"sae_steer"}}, eval_ref("model"), eval_ref("stories.txt"), sae, 1,
                      "head/cfg.json: hook_head_index 3 is not supported");
}

// Window metadata of the wrong type or range was passed over as unsaid (context_size -5 read as 0);
// sae_features, with a reader of its own, still did (exit 0), and 2.5 gave a line naming no file.
TEST(HostileInput, WindowMetadataOfTheWrongKindNamesTheKey) {
  TempDir dir("hostile_window");
  const std::string size = sae_copy(dir, "size", [](Json& cfg) { cfg["metadata"]["context_size"] = -5; });
  expect_same_refusal({{"sae_eval"}, {"sae_features"}, {"sae_steer"}}, eval_ref("model"), eval_ref("stories.txt"), size, 1,
                      "size/cfg.json: metadata.context_size must be a whole number of positions >= 1, got -5");
  const std::string half = sae_copy(dir, "half", [](Json& cfg) { cfg["metadata"]["context_size"] = 2.5; });
  expect_same_refusal({{"sae_eval"}, {"sae_features"}, {"sae_steer"}}, eval_ref("model"), eval_ref("stories.txt"), half, 1,
                      "half/cfg.json: metadata.context_size must be a whole number of positions >= 1, got 2.5");
  const std::string bos = sae_copy(dir, "bos", [](Json& cfg) { cfg["metadata"]["prepend_bos"] = "yes"; });
  expect_same_refusal({{"sae_eval"}, {"sae_features"}, {"sae_steer"}}, eval_ref("model"), eval_ref("stories.txt"), bos, 1,
                      "bos/cfg.json: metadata.prepend_bos must be true or false, got \"yes\"");
  const std::string name = sae_copy(dir, "name", [](Json& cfg) { cfg["metadata"]["hook_name"] = 5; });
  expect_same_refusal({{"sae_eval"}, {"sae_features"}, {"sae_steer"}}, eval_ref("model"), eval_ref("stories.txt"), name, 1,
                      "name/cfg.json: hook_name: expected a hook point's name, got 5");
}

// config.json without hidden_size or vocab_size used to say "JSON: missing key" without the file.
TEST(HostileInput, AConfigWithoutItsSizesNamesTheFileAndTheKey) {
  TempDir dir("hostile_config");
  for (const char* key : {"hidden_size", "vocab_size"}) {
    SCOPED_TRACE(key);
    const std::string model = model_copy(dir, cat("no_", key), [&](Json& c) {
      Json kept = Json::object();
      for (const auto& [k, v] : c.items())
        if (k != key) kept[k] = v;
      c = kept;
    });
    expect_same_refusal(kModelPrograms, model, eval_ref("stories.txt"), eval_ref("sae_story"), 1,
                        cat("config.json: missing '", key, "'"));
  }
}

// A tokenizer with more ids than the model's vocabulary: sae_cache used to start anyway (and
// wrote a cache whenever the text did not use the extra ids); every program refuses it up front.
TEST(HostileInput, ATokenizerLargerThanTheVocabularyIsRefusedUpFront) {
  TempDir dir("hostile_vocab");
  const fs::path model = dir.str("model");
  fs::create_directories(model);
  for (const char* file : {"model.safetensors", "config.json", "generation_config.json"})
    fs::create_symlink(eval_ref("model/") + file, model / file);
  Json tokenizer = read_json_file(eval_ref("model/tokenizer.json"));
  Json extra = tokenizer.at("added_tokens").at(0);
  extra["id"] = int64_t(5000);
  extra["content"] = "<|unused|>";
  tokenizer["added_tokens"].push_back(extra);
  std::ofstream(model / "tokenizer.json") << tokenizer.dump();
  expect_same_refusal(kModelPrograms, model.string(), eval_ref("stories.txt"), eval_ref("sae_story"), 1,
                      "config.json: vocab_size 4097 is smaller than the tokenizer's 5001 ids");
}

// A FIFO tokenizer.json used to be reported as "no tokenizer.json".
TEST(HostileInput, AFifoTokenizerIsNamedAsAFifo) {
  TempDir dir("hostile_tokenizer");
  const fs::path model = dir.str("model");
  fs::create_directories(model);
  for (const char* file : {"model.safetensors", "config.json", "generation_config.json"})
    fs::create_symlink(eval_ref("model/") + file, model / file);
  ASSERT_EQ(::mkfifo((model / "tokenizer.json").c_str(), 0600), 0);
  expect_same_refusal(kModelPrograms, model.string(), eval_ref("stories.txt"), eval_ref("sae_story"), 1,
                      "tokenizer.json: it is a FIFO (named pipe), not a regular file");
}

// sae_cache used to write an empty "complete" cache for a corpus without a story (exit 0) where
// sae_train refuses it; now both refuse it alike and no cache claims to be complete.
TEST(HostileInput, AnEmptyCorpusIsRefusedBySaeCacheAsBySaeTrain) {
  TempDir dir("hostile_empty");
  std::ofstream(dir.str("empty.txt")) << "<|endoftext|>\n\n<|endoftext|>\n";
  expect_same_refusal({{"sae_train", false}, {"sae_cache", false}}, eval_ref("model"), dir.str("empty.txt"), "", 1,
                      "empty.txt: the text holds no stories");
  TempDir cache_dir("hostile_empty_cache");
  const CommandResult r = run_program(
      "sae_cache", Program{"sae_cache"}.args(eval_ref("model"), dir.str("empty.txt"), "", cache_dir.str("cache")),
      cache_dir);
  EXPECT_EQ(r.exit_code, 1);
  // A fresh cache refused before it writes anything leaves no folder (it had left one holding .lock).
  EXPECT_FALSE(fs::exists(cache_dir.str("cache"))) << r.err;
}

namespace {
// The story SAE with decoder row `feature` replaced by `row_value` in its first two entries (0
// elsewhere), everything else as in the fixture.
std::string sae_with_row(const TempDir& dir, const std::string& name, int64_t feature, float row_value) {
  Checkpoint c = load_checkpoint(eval_ref("sae_story"), Device::CPU, /*with_state=*/false);
  float* w = c.params.W_dec.data<float>();
  const int64_t d = c.params.d_in();
  for (int64_t j = 0; j < d; ++j) w[feature * d + j] = j < 2 ? row_value : 0.0f;
  save_checkpoint(dir.str(name), c.params, c.cfg.at("sae_cpp"), nullptr);
  return dir.str(name);
}

std::vector<int64_t> ids_of(const Json& list) {
  std::vector<int64_t> out;
  for (const Json& v : list.elements()) out.push_back(v.as_int());
  return out;
}
}  // namespace

// A decoder row whose float32 norm overflows (3e38 entries): sae_steer's direction used to come
// out 0 and the "steered" ids were the unsteered ones (exit 0). The norm is now taken in double:
// the direction is the row's, (1, 1, 0, ...) / sqrt 2, exactly as for the same row at scale 1.
TEST(HostileInput, SteeringAlongAHugeDecoderRowUsesItsDirection) {
  TempDir dir("hostile_steer");
  const std::string huge = sae_with_row(dir, "huge", 5, 3e38f), unit = sae_with_row(dir, "unit", 5, 1.0f);
  auto steer = [&](const std::string& sae) {
    const CommandResult r = run_program(
        "sae_steer",
        cat("--model ", shell_quote(eval_ref("model")), " --sae ", shell_quote(sae),
            " --device cpu --feature 5 --strength 40 --prompt 'The dog ran to the park and' --greedy "
            "--max-new-tokens 12 --json"),
        dir);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return Json::parse(r.out);
  };
  const Json a = steer(huge), b = steer(unit);
  EXPECT_NE(ids_of(b.at("steered").at("ids")), ids_of(b.at("unsteered").at("ids")))
      << "strength 40 along (1, 1, 0, ...) should change the greedy text of this model";
  EXPECT_EQ(ids_of(a.at("steered").at("ids")), ids_of(b.at("steered").at("ids")));
}

// sae_eval on that SAE used to print every score as "n/a" and exit 0. Its reconstruction
// overflows float32: an error, exit 1, one line naming the SAE.
TEST(HostileInput, EvaluatingAnSaeWhoseReconstructionOverflowsIsAnError) {
  TempDir dir("hostile_eval");
  // Feature 5 must fire for its row to reach the reconstruction: every feature's row is made huge.
  Checkpoint c = load_checkpoint(eval_ref("sae_story"), Device::CPU, /*with_state=*/false);
  float* w = c.params.W_dec.data<float>();
  for (int64_t i = 0; i < c.params.W_dec.numel(); ++i) w[i] = w[i] >= 0 ? 3e38f : -3e38f;
  save_checkpoint(dir.str("huge"), c.params, c.cfg.at("sae_cpp"), nullptr);
  const CommandResult r =
      run_program("sae_eval",
                  cat("--model ", shell_quote(eval_ref("model")), " --sae ", shell_quote(dir.str("huge")), " --text ",
                      shell_quote(eval_ref("stories.txt")), " --out ", shell_quote(dir.str("out")),
                      " --progress none --device cpu"),
                  dir);
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find("is not finite"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("huge"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir.str("out/eval.json")));
}
