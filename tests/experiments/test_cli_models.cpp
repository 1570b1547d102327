// The programs end to end on the GPT-2 and Pythia fixture models (tests/ref/models, with their
// tokenizers) at hook points other than hidden_states, from compressed JSON lines with another text
// field, with a BOS before every 16-position window: sae_train writes SAELens's metadata (hook_name,
// model_name, context_size, prepend_bos; reshape_activations hook_z); sae_eval splices the SAE at its
// hook point; sae_steer puts the BOS before the prompt; sae_features and sae_cache read there too,
// the cache holding the windows' rows without the BOS rows, equal to the model's; refusals are one
// line (resid_mid in a parallel block, a hook point of no block, --hook with --layer).
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>

#include "io/json.h"
#include "lm/model_loader.h"
#include "lm/text_data.h"
#include "lm/text_windows.h"
#include "sae/data/activations.h"
#include "tests/util/compare.h"
#include "tests/util/program_run.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::count_lines;
using sae::testing::run_binary;
using sae::testing::TempDir;
namespace fs = std::filesystem;

namespace {

std::string model_dir(const std::string& name) { return sae::testing::ref_path("models/" + name); }

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// The text_train stories as gzip-compressed JSON lines with the text under "content".
std::string write_corpus(const TempDir& dir) {
  StoryReader reader(sae::testing::ref_path("text_train/stories.txt"));
  TextStory story;
  std::string lines;
  while (reader.next(story)) {
    Json j = Json::object();
    j["id"] = story.index;
    j["content"] = story.text;
    lines += j.dump() + "\n";
  }
  const std::string path = dir.str("stories.jsonl.gz");
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, lines.data(), static_cast<unsigned>(lines.size()));
  gzclose(f);
  return path;
}

}  // namespace

TEST(CliModels, Gpt2AttentionSaeFromCompressedJsonLinesWithBos) {
  TempDir dir("cli_models");
  const std::string corpus = write_corpus(dir);
  const std::string text = cat(" --text ", quote(corpus), " --text-field content");
  const std::string model = cat(" --model ", quote(model_dir("gpt2")));
  const std::string run = dir.str("run");
  sae::testing::CommandResult r = run_binary(
      "sae_train",
      cat(model, text, " --hook blocks.1.attn.hook_z --prepend-bos on --context-size 16 --features 24 --steps 12 ",
          "--batch 32 --l1 0.1 --lr 1e-3 --normalize dataset --log-every 4 --checkpoint-every 100 --device cpu ",
          "--progress none --feature-stats-steps 4 --out ", quote(run)),
      dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json cfg = read_json_file(run + "/sae/cfg.json");
  EXPECT_EQ(cfg.at("d_in").as_int(), 32);
  EXPECT_EQ(cfg.at("reshape_activations").as_string(), "hook_z");
  const Json& meta = cfg.at("metadata");
  EXPECT_EQ(meta.at("hook_name").as_string(), "blocks.1.attn.hook_z");
  EXPECT_EQ(meta.at("model_name").as_string(), "gpt2");
  EXPECT_EQ(meta.at("context_size").as_int(), 16);
  EXPECT_TRUE(meta.at("prepend_bos").as_bool());
  EXPECT_TRUE(meta.at("hook_head_index").is_null());

  // sae_eval splices it at its hook point, with its BOS and context (from cfg.json).
  r = run_binary("sae_eval", cat(model, text, " --sae ", quote(run + "/sae"), " --out ", quote(dir.str("eval")),
                                 " --device cpu --progress none"),
                 dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json eval = read_json_file(dir.str("eval/eval.json"));
  EXPECT_EQ(eval.at("hook_name").as_string(), "blocks.1.attn.hook_z");
  EXPECT_TRUE(eval.at("prepend_bos").as_bool());
  EXPECT_EQ(eval.at("context_size").as_int(), 16);
  EXPECT_FALSE(eval.has("layer"));  // hook_z is no hidden_states index
  EXPECT_GT(eval.at("ce_loss").at("clean").as_number(), 0.0);

  // sae_steer: the BOS before the prompt.
  r = run_binary("sae_steer", cat(model, " --sae ", quote(run + "/sae"), " --feature 1 --strength 3 --prompt 'Once upon' ",
                                  "--greedy --max-new-tokens 4 --json --device cpu"),
                 dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json steer = Json::parse(r.out);
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(model_dir("gpt2"));
  EXPECT_EQ(steer.at("prompt_ids").at(size_t(0)).as_int(), tokenizer.bos_id());

  // sae_features reads there too.
  r = run_binary("sae_features", cat(model, text, " --sae ", quote(run + "/sae"), " --stories 6 --out ",
                                     quote(dir.str("features.json")), " --device cpu"),
                 dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("6 stories"), std::string::npos) << r.out;

  // sae_cache: the rows after each window's BOS, as the model computes them.
  r = run_binary("sae_cache", cat(model, text, " --hook blocks.1.attn.hook_z --prepend-bos on --context-size 16 --out ",
                                  quote(dir.str("cache")), " --device cpu --progress none"),
                 dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::unique_ptr<ActivationSource> cache = open_activations(dir.str("cache"), SyntheticOptions{});
  DecoderModel gpt2 = load_decoder_model(model_dir("gpt2"));
  StoryReader reader(corpus, "content");
  TextStory story;
  int64_t tokens = 0, windows = 0;
  std::vector<int32_t> first_doc;
  while (reader.next(story)) {
    const std::vector<int32_t> ids = tokenizer.encode(story.text);
    if (first_doc.empty()) first_doc = ids;
    tokens += static_cast<int64_t>(ids.size());
    windows += window_count(static_cast<int64_t>(ids.size()), WindowOptions{tokenizer.bos_id(), 16});
  }
  EXPECT_EQ(cache->num_tokens(), tokens);
  EXPECT_EQ(cache->num_stories(), windows);
  const TokenWindow w = document_window(first_doc, 0, WindowOptions{tokenizer.bos_id(), 16});
  const Tensor want = gpt2.forward_to_site(w.input, {1, HookPoint::AttnZ}).clone();
  std::vector<float> got(static_cast<size_t>(15 * 32));
  cache->read_tokens(0, 15, got.data());
  sae::testing::expect_bitwise_equal(Tensor::from_data(got.data(), Shape{15, 32}), want.slice_rows(1, 16),
                                     "the cache's first window");

  // An SAE trained from the cache records where its activations came from as one trained from text
  // does, so sae_eval and sae_features read its hook, context and BOS (sae_features had read
  // hidden_states[2] with the model's context and no BOS, silently; sae_eval had refused it).
  const std::string cached_run = dir.str("cached_run");
  r = run_binary("sae_train", cat(" --data ", quote(dir.str("cache")), " --features 24 --steps 6 --batch 32 --l1 0.1 ",
                                  "--normalize dataset --device cpu --progress none --out ", quote(cached_run)),
                 dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json cached_meta = read_json_file(cached_run + "/sae/cfg.json").at("metadata");
  EXPECT_EQ(cached_meta.at("hook_name").as_string(), "blocks.1.attn.hook_z");
  EXPECT_EQ(cached_meta.at("model_name").as_string(), "gpt2");
  EXPECT_EQ(cached_meta.at("context_size").as_int(), 16);
  EXPECT_TRUE(cached_meta.at("prepend_bos").as_bool());
  r = run_binary("sae_eval", cat(model, text, " --sae ", quote(cached_run + "/sae"), " --out ",
                                 quote(dir.str("cached_eval")), " --device cpu --progress none"),
                 dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json cached_eval = read_json_file(dir.str("cached_eval/eval.json"));
  EXPECT_EQ(cached_eval.at("hook_name").as_string(), "blocks.1.attn.hook_z");
  EXPECT_TRUE(cached_eval.at("prepend_bos").as_bool());
  EXPECT_EQ(cached_eval.at("context_size").as_int(), 16);
  auto features = [&](const std::string& options, const std::string& out) {
    const sae::testing::CommandResult f =
        run_binary("sae_features", cat(model, text, " --sae ", quote(cached_run + "/sae"), options, " --stories 6 --out ",
                                       quote(dir.str(out)), " --device cpu"),
                   dir);
    EXPECT_EQ(f.exit_code, 0) << f.err;
    return sae::testing::read_file(dir.str(out));
  };
  EXPECT_EQ(features("", "cached_default.json"),
            features(" --hook blocks.1.attn.hook_z --context-size 16 --prepend-bos on", "cached_explicit.json"));
}

// A transcoder trained from two caches of one model (its MLP's input and output) says which hooks
// it reads and replaces, and an SAE from a cache that kept its BOS rows says so, as runs from text do.
TEST(CliModels, TrainingFromCachesRecordsWhereTheyCameFrom) {
  TempDir dir("cli_models_caches");
  const std::string corpus = write_corpus(dir);
  const std::string text = cat(" --text ", quote(corpus), " --text-field content");
  const std::string model = cat(" --model ", quote(model_dir("gpt2")));
  for (const char* hook : {"blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"}) {
    const sae::testing::CommandResult r =
        run_binary("sae_cache", cat(model, text, " --hook ", hook, " --prepend-bos on --bos-activations keep ",
                                    "--context-size 16 --device cpu --progress none --out ", quote(dir.str(hook))),
                   dir);
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  // Kept BOS rows need a BOS: without one the option did nothing and the cache said nothing of it.
  sae::testing::CommandResult refused =
      run_binary("sae_cache", cat(model, text, " --layer 1 --prepend-bos off --bos-activations keep --device cpu",
                                  " --progress none --out ", quote(dir.str("no_bos"))),
                 dir);
  EXPECT_EQ(refused.exit_code, 2) << refused.err;
  EXPECT_NE(refused.err.find("this run puts no BOS before its windows (--prepend-bos off)"), std::string::npos)
      << refused.err;
  EXPECT_FALSE(fs::exists(dir.str("no_bos")));
  const std::string common = " --features 24 --steps 4 --batch 32 --l1 0.1 --device cpu --progress none";
  sae::testing::CommandResult r =
      run_binary("sae_train", cat(" --data ", quote(dir.str("blocks.1.ln2.hook_normalized")), " --target-data ",
                                  quote(dir.str("blocks.1.hook_mlp_out")), common, " --normalize dataset --out ",
                                  quote(dir.str("tc"))),
                 dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json tc = read_json_file(dir.str("tc/sae/cfg.json"));
  EXPECT_EQ(tc.at("metadata").at("hook_name").as_string(), "blocks.1.ln2.hook_normalized");
  EXPECT_EQ(tc.at("metadata").at("hook_name_out").as_string(), "blocks.1.hook_mlp_out");
  EXPECT_EQ(tc.at("metadata").at("context_size").as_int(), 16);
  r = run_binary("sae_eval", cat(model, text, " --sae ", quote(dir.str("tc/sae")), " --out ", quote(dir.str("tc_eval")),
                                 " --device cpu --progress none"),
                 dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json tc_eval = read_json_file(dir.str("tc_eval/eval.json"));
  EXPECT_EQ(tc_eval.at("hook_name").as_string(), "blocks.1.hook_mlp_out");
  // Both scales, input and target, as cfg.json lists them (only the input's was reported).
  EXPECT_EQ(tc_eval.at("dataset_scale").dump(), tc.at("sae_cpp").at("dataset_scale").dump());
  EXPECT_EQ(tc_eval.at("dataset_scale").size(), 2u);
  r = run_binary("sae_train", cat(" --data ", quote(dir.str("blocks.1.hook_mlp_out")),
                                  " --features 24 --steps 4 --batch story --l1 0.1 --device cpu --progress none",
                                  " --normalize story --out ", quote(dir.str("kept"))),
                 dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json kept = read_json_file(dir.str("kept/sae/cfg.json"));
  EXPECT_EQ(kept.at("sae_cpp").at("data").at("bos_activations").as_string(), "keep");
  EXPECT_EQ(kept.at("metadata").at("hook_name").as_string(), "blocks.1.hook_mlp_out");
}

TEST(CliModels, PythiaTranscoderInputAndRefusals) {
  TempDir dir("cli_models_pythia");
  const std::string corpus = write_corpus(dir);
  const std::string base = cat(" --model ", quote(model_dir("pythia")), " --text ", quote(corpus), " --text-field content",
                               " --features 16 --steps 6 --batch 24 --normalize dataset --l1 0.1 --lr 1e-3 --device cpu",
                               " --progress none --long-stories split",
                               " --checkpoint-every 100 --feature-stats-steps 0");
  sae::testing::CommandResult r =
      run_binary("sae_train", base + " --hook blocks.2.ln2.hook_normalized --out " + quote(dir.str("run")), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json cfg = read_json_file(dir.str("run/sae/cfg.json"));
  EXPECT_EQ(cfg.at("metadata").at("hook_name").as_string(), "blocks.2.ln2.hook_normalized");
  EXPECT_FALSE(cfg.at("metadata").at("prepend_bos").as_bool());  // auto: Pythia's tokenizer adds none
  EXPECT_EQ(cfg.at("reshape_activations").as_string(), "none");
  r = run_binary("sae_eval", cat(" --model ", quote(model_dir("pythia")), " --text ", quote(corpus),
                                 " --text-field content --sae ", quote(dir.str("run/sae")), " --out ",
                                 quote(dir.str("eval")), " --device cpu --progress none"),
                 dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_json_file(dir.str("eval/eval.json")).at("hook_name").as_string(), "blocks.2.ln2.hook_normalized");
  EXPECT_EQ(r.err.find("warning"), std::string::npos) << r.err;  // the model it was trained on
  // Another model of the same shapes (one weight byte changed): widths cannot tell, the recorded
  // fingerprint can. The numbers are still given, with one warning line.
  fs::copy(model_dir("pythia"), dir.str("other_pythia"), fs::copy_options::recursive);
  {
    std::fstream weights(dir.str("other_pythia/model.safetensors"), std::ios::in | std::ios::out | std::ios::binary);
    weights.seekg(-1, std::ios::end);
    const char last = static_cast<char>(weights.get());
    weights.seekp(-1, std::ios::end);
    weights.put(static_cast<char>(last ^ 1));
  }
  r = run_binary("sae_eval", cat(" --model ", quote(dir.str("other_pythia")), " --text ", quote(corpus),
                                 " --text-field content --sae ", quote(dir.str("run/sae")), " --out ",
                                 quote(dir.str("eval_other")), " --device cpu --progress none"),
                 dir);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("sae_eval: warning: " + dir.str("other_pythia") + ": its weights are not those the SAE was "
                       "trained on"),
            std::string::npos)
      << r.err;

  const struct {
    std::string args;
    int code;
    const char* mention;
  } bad[] = {
      {base + " --hook blocks.1.hook_resid_mid --out " + quote(dir.str("x1")), 2, "parallel"},
      {base + " --hook blocks.9.hook_resid_pre --out " + quote(dir.str("x2")), 2, "blocks 0 to 3"},
      {base + " --hook blocks.1.hook_resid_pre --layer 2 --out " + quote(dir.str("x3")), 2, "give one"},
      {base + " --hook blocks.1.attn.hook_pattern --out " + quote(dir.str("x4")), 2, "hook_pattern"},
      {base + " --prepend-bos sometimes --out " + quote(dir.str("x5")), 2, "--prepend-bos"},
      {base + " --context-size 65 --out " + quote(dir.str("x6")), 2, "context-size"},
      // Options that had no effect, recorded as if they had: BOS rows kept where no BOS is put, chunks
      // of story batches, a JSON field of plain text.
      {base + " --bos-activations keep --out " + quote(dir.str("x7")), 2,
       "--bos-activations keep keeps the BOS rows, and this run puts no BOS before its windows (--prepend-bos auto: "
       "the tokenizer adds none)"},
      {base + " --batch story --normalize story --text-chunk-tokens 64 --out " + quote(dir.str("x8")), 2,
       "--text-chunk-tokens gathers token batches"},
      // A chunk of 2^40 tokens: chunk * d had overflowed (at 2^63 / d) and the run spun forever; the
      // chunk is now at most 2^30 tokens.
      {base + " --batch 64 --normalize dataset --text-chunk-tokens 1099511627776 --out " + quote(dir.str("x10")), 2,
       "--text-chunk-tokens must be in [1, 2^30]"},
      {cat(" --model ", quote(model_dir("pythia")), " --text ", quote(sae::testing::ref_path("text_train/stories.txt")),
           " --text-field content --features 16 --steps 2 --device cpu --progress none --out ", quote(dir.str("x9"))),
       2, "--text-field content names a field of JSON lines (.jsonl): "},
  };
  for (const auto& b : bad) {
    r = run_binary("sae_train", b.args, dir);
    EXPECT_EQ(r.exit_code, b.code) << b.args << "\n" << r.err;
    EXPECT_EQ(count_lines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find(b.mention), std::string::npos) << r.err;
  }
  // The BOS refusal is found once the tokenizer is read, after the folder is made: the folder is
  // gone again. The folder of the same run killed before it began is refused on --resume too:
  // nothing has trained, so its options are checked as a new run's (it trained what was refused).
  EXPECT_FALSE(std::filesystem::exists(dir.str("x7")));
  r = sae::testing::run_program("sae_train", bad[6].args, dir, "SAE_TEST_KILL_AT=after-pending-config");
  EXPECT_NE(r.exit_code, 0);
  ASSERT_TRUE(std::filesystem::exists(dir.str("x7/config.pending.json")));
  r = run_binary("sae_train", "--resume " + quote(dir.str("x7")) + " --progress none", dir);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("this run puts no BOS before its windows"), std::string::npos) << r.err;
  // --long-stories split beside --context-size: no story is longer than a window, so it would be
  // recorded as if it had acted (sae_train and sae_cache).
  for (const char* program : {"sae_train", "sae_cache"}) {
    const std::string args = std::string(program) == "sae_train" ? base + " --layer 1 --context-size 16"
                                                                 : cat(" --model ", quote(model_dir("pythia")), " --text ",
                                                                       quote(corpus), " --text-field content --layer 1",
                                                                       " --long-stories split --context-size 16");
    r = run_binary(program, args + " --out " + quote(dir.str("windows")), dir);
    EXPECT_EQ(r.exit_code, 2) << program << ": " << r.err;
    EXPECT_NE(r.err.find("--long-stories split cuts stories longer than the model's positions; with --context-size"),
              std::string::npos)
        << program << ": " << r.err;
    EXPECT_FALSE(std::filesystem::exists(dir.str("windows"))) << program;
  }
}

TEST(CliModels, AnInitSaeIsTrainedAtItsOwnHookPointOrSaysSo) {
  // An SAE trained at hidden_states[1] (blocks.1.hook_resid_pre, which is blocks.0.hook_resid_post)
  // as the start of a run from text: the default --layer 2 would read other activations (it trained
  // there silently); refused, naming the hook to give. The same activation by either name trains
  // quietly; another hook given on purpose is said.
  TempDir dir("cli_models_init_hook");
  const std::string corpus = write_corpus(dir);
  const std::string base = cat(" --model ", quote(model_dir("pythia")), " --text ", quote(corpus), " --text-field content",
                               " --features 16 --steps 2 --batch 24 --normalize dataset --l1 0.1 --lr 1e-3 --device cpu",
                               " --progress none --long-stories split --feature-stats-steps 0");
  sae::testing::CommandResult r = run_binary("sae_train", base + " --layer 1 --out " + quote(dir.str("first")), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string init = " --init " + quote(dir.str("first/sae"));
  r = run_binary("sae_train", base + init + " --out " + quote(dir.str("default")), dir);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("was trained at blocks.1.hook_resid_pre (its cfg.json's hook_name) and this run would read "
                       "hidden_states[2] (the default --layer 2): give --hook blocks.1.hook_resid_pre"),
            std::string::npos)
      << r.err;
  for (const char* same : {" --layer 1", " --hook blocks.0.hook_resid_post"}) {
    r = run_binary("sae_train", base + init + same + " --overwrite --out " + quote(dir.str("same")), dir);
    EXPECT_EQ(r.exit_code, 0) << same << ": " << r.err;
    EXPECT_EQ(r.err.find("warning"), std::string::npos) << same << ": " << r.err;
  }
  r = run_binary("sae_train", base + init + " --layer 2 --out " + quote(dir.str("elsewhere")), dir);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("sae_train: warning: --init " + dir.str("first/sae") +
                       " was trained at blocks.1.hook_resid_pre: this run trains it at hidden_states[2]"),
            std::string::npos)
      << r.err;
  // A hook this model does not have is not the run's either (it trained at the default silently).
  fs::copy(dir.str("first/sae"), dir.str("deep"), fs::copy_options::recursive);
  Json cfg = read_json_file(dir.str("deep/cfg.json"));
  cfg["metadata"]["hook_name"] = "blocks.20.hook_resid_post";
  sae::testing::write_file(dir.str("deep/cfg.json"), cfg.dump());
  r = run_binary("sae_train", base + " --init " + quote(dir.str("deep")) + " --out " + quote(dir.str("deep_run")), dir);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("was trained at blocks.20.hook_resid_post"), std::string::npos) << r.err;
  // A transcoder started from a transcoder of its block reads the same hooks (it was refused as
  // reading hidden_states[2]).
  r = run_binary("sae_train", base + " --transcoder 1 --out " + quote(dir.str("tc")), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_binary("sae_train", base + " --transcoder 1 --init " + quote(dir.str("tc/sae")) + " --out " +
                                  quote(dir.str("tc_again")), dir);
  EXPECT_EQ(r.exit_code, 0) << r.err;
}
