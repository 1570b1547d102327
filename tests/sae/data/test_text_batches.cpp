// Training from text (sae/data/text_batches.h, sae_train --model --text, sae_cache): against the
// fixture of scripts/gen_text_train_fixture.py (a tiny GPT-Neo with hashed weights, a 4097-id BPE,
// 16 stories, and Hugging Face's hidden_states[2] of each story): our tokenizer's ids and our model's
// activations equal HF's, training from the text follows training on HF's dumped activations, runs
// over text resume bit-exactly in story and token mode, an activation cache written by sae_cache
// trains to the same bits as the text, and bad inputs get one line.
#include <gtest/gtest.h>

#include <barrier>
#include <cmath>
#include <thread>
#include <filesystem>
#include <fstream>

#include "io/csv.h"
#include "io/safetensors.h"
#include "lm/gpt_neo.h"
#include "lm/hook_points.h"
#include "lm/model_loader.h"
#include "lm/text_data.h"
#include "lm/text_windows.h"
#include "lm/tokenizer.h"
#include "sae/train/options.h"
#include "sae/data/text_batches.h"
#include "sae/eval/evaluate.h"
#include "sae/eval/sae_at_layer.h"
#include "sae/train/checkpoint.h"
#include "sae/train/trainer.h"
#include "tensor/threads.h"
#include "tests/util/test_util.h"
#include "tests/util/compare.h"

using namespace sae;
using sae::testing::worst_error;
using sae::testing::read_file;
using sae::testing::run_binary;
using sae::testing::TempDir;
namespace fs = std::filesystem;

namespace {

std::string ref(const std::string& name) { return sae::testing::ref_path("text_train/" + name); }

TrainConfig text_config(const std::string& out) {
  TrainConfig c;
  c.data = "text";
  c.model = ref("model");
  c.text = ref("stories.txt");
  c.layer = 2;
  c.features = 48;
  c.lr = 3e-3;
  c.l1 = 0.5;
  c.steps = 24;  // one and a half passes over the 16 stories
  c.log_every = 1;
  c.checkpoint_every = 1000;
  c.progress = ProgressMode::None;
  c.device = DeviceChoice::Cpu;
  c.out = out;
  return c;
}

}  // namespace

TEST(TextData, OurTokensAndActivationsAreHuggingFaces) {
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(ref("model"));
  GptNeo model = GptNeo::load(ref("model"));
  SafetensorsFile expected = SafetensorsFile::open(ref("acts.safetensors"));
  const std::vector<int64_t> lengths = expected.read_i64("story_lengths"), ids = expected.read_i64("token_ids");
  const Tensor acts = expected.read_f32("activations");
  StoryReader reader(ref("stories.txt"));
  TextStory story;
  int64_t token = 0;
  double worst = 0;
  for (int64_t length : lengths) {
    ASSERT_TRUE(reader.next(story));
    const std::vector<int32_t> ours = tokenizer.encode(story.text, story.where);
    ASSERT_EQ(static_cast<int64_t>(ours.size()), length) << story.where;
    for (int64_t i = 0; i < length; ++i) ASSERT_EQ(ours[i], ids[token + i]) << story.where << " token " << i;
    const Tensor hidden = model.hidden_states(ours, 2);
    const float* got = hidden.data<float>();
    const float* want = acts.data<float>() + token * 32;
    for (int64_t i = 0; i < length * 32; ++i) worst = worst_error(worst, double(std::abs(got[i] - want[i])));
    token += length;
  }
  EXPECT_FALSE(reader.next(story));
  EXPECT_LT(worst, 2e-5) << "max |ours - HF| over hidden_states[2]";
  std::printf("hidden_states[2] of 16 stories: max |ours - HF| = %.2e\n", worst);
}

TEST(TextData, TrainingFromTextFollowsTrainingOnHuggingFacesActivations) {
  TempDir dir("text_vs_acts");
  const TrainResult from_text = train(text_config(dir.str("text")));
  TrainConfig on_acts = text_config(dir.str("acts"));
  on_acts.data = ref("acts.safetensors");
  on_acts.model = on_acts.text = "";
  train(on_acts);
  const CsvNumbers a = read_csv_numbers(dir.str("text/metrics.csv")), b = read_csv_numbers(dir.str("acts/metrics.csv"));
  ASSERT_EQ(a.rows.size(), 24u);
  ASSERT_EQ(b.rows.size(), 24u);
  const std::vector<double> la = a.column("loss"), lb = b.column("loss"), ta = a.column("tokens"), tb = b.column("tokens");
  for (size_t i = 0; i < la.size(); ++i) {
    EXPECT_EQ(ta[i], tb[i]) << "step " << i + 1;  // the same stories, in the same order
    EXPECT_NEAR(la[i], lb[i], 1e-4 * std::abs(lb[i])) << "step " << i + 1;
  }
  EXPECT_LT(la.back(), la.front());  // it learned something
  EXPECT_EQ(read_json_file(dir.str("text/config.json")).at("resolved").at("data").at("kind").as_string(), "text");
  EXPECT_EQ(from_text.steps, 24);
}

TEST(TextData, RunsOverTextResumeBitExactly) {
  TempDir dir("text_resume");
  for (int64_t batch : {int64_t(0), int64_t(40)}) {
    TrainConfig full = text_config(dir.str(cat("full_", batch)));
    full.batch_tokens = batch;
    if (batch > 0) {
      full.text_chunk_tokens = 100;  // several chunks, and batches that cross them (story batches have none)
      full.normalize = Normalization::Dataset;
    }
    train(full);
    TrainConfig cut = full;
    cut.out = dir.str(cat("cut_", batch));
    cut.steps = 13;
    train(cut);
    TrainConfig rest;
    rest.resume = cut.out;
    give_every_control(rest);
    rest.steps = full.steps;
    rest.log_every = 1;
    rest.progress = ProgressMode::None;
    rest.device = DeviceChoice::Cpu;
    train(rest);
    EXPECT_EQ(read_file(full.out + "/sae/sae_weights.safetensors"), read_file(cut.out + "/sae/sae_weights.safetensors"))
        << "batch " << batch;
    EXPECT_EQ(read_file(full.out + "/metrics.csv"), read_file(cut.out + "/metrics.csv")) << "batch " << batch;
  }
}

TEST(TextData, LongStoriesAreAnErrorOrCutIntoPieces) {
  TempDir dir("text_long");
  // One story of 320 tokens for a model of 128 positions.
  std::string long_story;
  for (int i = 0; i < 40; ++i) long_story += "The cat sat on the mat. ";
  std::ofstream(dir.str("long.txt")) << "A short one.\n<|endoftext|>\n" << long_story << "\n<|endoftext|>\n";
  TrainConfig c = text_config(dir.str("error"));
  c.text = dir.str("long.txt");
  c.steps = 3;
  try {
    train(c);
    FAIL() << "an over-long story was accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(dir.str("long.txt") + " story 1"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("128 positions"), std::string::npos) << e.what();
  }
  const int64_t long_tokens =
      static_cast<int64_t>(BpeTokenizer::from_model_dir(ref("model")).encode(long_story.substr(0, long_story.size() - 1)).size());
  ASSERT_EQ(long_tokens, 320);
  c.out = dir.str("split");
  c.split_long_stories = true;
  c.steps = 5;  // the short story, the long one's pieces of 128, 128 and 64 tokens, the short one again
  train(c);
  const std::vector<double> tokens = read_csv_numbers(dir.str("split/metrics.csv")).column("tokens");
  ASSERT_EQ(tokens.size(), 5u);
  EXPECT_EQ(tokens[1] - tokens[0], 128);
  EXPECT_EQ(tokens[2] - tokens[1], 128);
  EXPECT_EQ(tokens[3] - tokens[2], 64);
  EXPECT_EQ(tokens[4] - tokens[3], tokens[0]);
}

TEST(TextData, ACacheTrainsToTheSameBitsAsTheText) {
  TempDir dir("text_cache");
  auto cached = run_binary("sae_cache", "--model " + ref("model") + " --text " + ref("stories.txt") +
                                            " --layer 2 --shard-tokens 150 --device cpu --progress none --out " +
                                            dir.str("cache"), dir);
  ASSERT_EQ(cached.exit_code, 0) << cached.err;
  EXPECT_NE(cached.out.find("578 tokens of 16 stories"), std::string::npos) << cached.out;
  train(text_config(dir.str("from_text")));
  TrainConfig from_cache = text_config(dir.str("from_cache"));
  from_cache.data = dir.str("cache");
  from_cache.model = from_cache.text = "";
  train(from_cache);
  EXPECT_EQ(read_file(dir.str("from_text/sae/sae_weights.safetensors")),
            read_file(dir.str("from_cache/sae/sae_weights.safetensors")));
  // Running sae_cache again on a complete cache changes nothing; a killed one continues (the
  // writer's own resume is tested in test_activation_cache.cpp).
  auto again = run_binary("sae_cache", "--model " + ref("model") + " --text " + ref("stories.txt") +
                                           " --layer 2 --shard-tokens 150 --device cpu --progress none --out " +
                                           dir.str("cache"), dir);
  EXPECT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(again.out.find("complete already"), std::string::npos) << again.out;
  // --max-stories is part of what a cache is: the same --out with another limit is refused, not
  // reported complete with the other's stories.
  auto limited = run_binary("sae_cache", "--model " + ref("model") + " --text " + ref("stories.txt") +
                                             " --layer 2 --max-stories 3 --device cpu --progress none --out " +
                                             dir.str("cache"), dir);
  EXPECT_EQ(limited.exit_code, 2) << limited.out;
  EXPECT_NE(limited.err.find("use another --out"), std::string::npos) << limited.err;
  // A corpus rewritten in place is another source too (a retry would seek into the new text).
  fs::copy_file(ref("stories.txt"), dir.str("copy.txt"));
  const std::string copied = "--model " + ref("model") + " --text " + dir.str("copy.txt") +
                             " --layer 2 --device cpu --progress none --out " + dir.str("copy_cache");
  ASSERT_EQ(run_binary("sae_cache", copied, dir).exit_code, 0);
  {  // the same size, one letter changed (only text_bytes was compared: the retry went on, mixed)
    std::fstream text(dir.str("copy.txt"), std::ios::in | std::ios::out | std::ios::binary);
    const char first = static_cast<char>(text.get());
    text.seekp(0);
    text.put(first == 'A' ? 'B' : 'A');
  }
  auto rewritten = run_binary("sae_cache", copied, dir);
  EXPECT_EQ(rewritten.exit_code, 2) << rewritten.out;
  EXPECT_NE(rewritten.err.find("text_fingerprint"), std::string::npos) << rewritten.err;
  std::ofstream(dir.str("copy.txt"), std::ios::app) << "One more story.\n<|endoftext|>\n";
  rewritten = run_binary("sae_cache", copied, dir);
  EXPECT_EQ(rewritten.exit_code, 2) << rewritten.out;
  EXPECT_NE(rewritten.err.find("use another --out"), std::string::npos) << rewritten.err;
  // A cache made again under the same name from a model with other weights: a run from it is
  // refused on --resume (the manifest, whose fingerprint the run recorded, names the model's
  // weights; it had named only their folder, and the run went on with the new activations).
  fs::copy(ref("model"), dir.str("model"), fs::copy_options::recursive);
  const std::string from_copy = "--model " + dir.str("model") + " --text " + ref("stories.txt") +
                                " --layer 2 --device cpu --progress none --out " + dir.str("cache2");
  ASSERT_EQ(run_binary("sae_cache", from_copy, dir).exit_code, 0);
  {  // a cache recorded before the model's tensors hash: its retry is accepted on the same model
    Json manifest = read_json_file(dir.str("cache2/manifest.json"));
    std::string recorded = manifest.at("source").at("model_fingerprint").as_string();
    ASSERT_NE(recorded.find(":tensors="), std::string::npos) << recorded;
    recorded.erase(recorded.find(":tensors="));
    manifest["source"]["model_fingerprint"] = recorded;
    std::ofstream(dir.str("cache2/manifest.json"), std::ios::trunc) << manifest.dump(2);
    const auto again = run_binary("sae_cache", from_copy, dir);
    EXPECT_EQ(again.exit_code, 0) << again.err;
  }
  const std::string run = " --data " + dir.str("cache2") + " --features 16 --lr 1e-3 --checkpoint-every 2 "
                          "--progress none --device cpu --out " + dir.str("run2");
  ASSERT_EQ(run_binary("sae_train", run + " --steps 2", dir).exit_code, 0);
  {
    std::fstream weights(dir.str("model/model.safetensors"), std::ios::in | std::ios::out | std::ios::binary);
    weights.seekg(-1, std::ios::end);
    const char last = static_cast<char>(weights.get());
    weights.seekp(-1, std::ios::end);
    weights.put(static_cast<char>(last ^ 1));
  }
  const auto refused = run_binary("sae_cache", from_copy, dir);  // the old cache: another model now
  EXPECT_EQ(refused.exit_code, 2) << refused.out;
  EXPECT_NE(refused.err.find("model_fingerprint"), std::string::npos) << refused.err;
  fs::remove_all(dir.str("cache2"));
  ASSERT_EQ(run_binary("sae_cache", from_copy, dir).exit_code, 0);
  const auto resumed = run_binary("sae_train", " --resume " + dir.str("run2") + " --steps 4 --progress none", dir);
  EXPECT_EQ(resumed.exit_code, 1) << resumed.err;
  EXPECT_NE(resumed.err.find("the data is not what the run started on"), std::string::npos) << resumed.err;
}

TEST(TextData, BadInputsGetOneLine) {
  TempDir dir("text_bad");
  std::ofstream(dir.str("latin1.txt")) << "Fine story.\n<|endoftext|>\nCaf\xe9 au lait.\n<|endoftext|>\n";
  std::ofstream(dir.str("empty.txt")) << "\n<|endoftext|>\n  \n";
  const std::string base = " --features 16 --steps 3 --progress none --device cpu --model " + ref("model");
  struct Case {
    std::string args, mention;
    int code;
  };
  const std::vector<Case> cases = {
      {base + " --text " + dir.str("latin1.txt") + " --out " + dir.str("r1"), "latin1.txt story 1", 1},
      {base + " --text " + dir.str("empty.txt") + " --out " + dir.str("r2"), "holds no stories", 1},
      {base + " --out " + dir.str("r3"), "--text", 2},
      {base + " --text " + ref("stories.txt") + " --data synthetic --out " + dir.str("r4"), "--data", 2},
      {base + " --text " + ref("stories.txt") + " --layer 9 --out " + dir.str("r5"), "--layer 9", 2},
      {" --features 16 --steps 3 --model " + dir.str("nowhere") + " --text " + ref("stories.txt") + " --out " +
           dir.str("r6"), "nowhere", 1},
  };
  for (const Case& c : cases) {
    auto r = run_binary("sae_train", c.args, dir);
    EXPECT_EQ(r.exit_code, c.code) << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find(c.mention), std::string::npos) << c.args << "\n" << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  // A run that failed on its corpus before its first step leaves no run behind: the corrected
  // command into the same --out runs (it had been refused as "already holds a run").
  const std::string corrected = base + " --text " + ref("stories.txt") + " --out " + dir.str("r2");
  EXPECT_FALSE(fs::exists(dir.str("r2/config.json")));
  EXPECT_FALSE(fs::exists(dir.str("r2/metrics.csv")));
  const auto retried = run_binary("sae_train", corrected, dir);
  EXPECT_EQ(retried.exit_code, 0) << retried.err;
  // Only its own files go: another run's event files in the same tensorboard/ stay.
  fs::create_directories(dir.str("r7/tensorboard/other_run"));
  std::ofstream(dir.str("r7/tensorboard/other_run/events.out.tfevents.1")) << "theirs";
  const auto failed = run_binary("sae_train", base + " --text " + dir.str("empty.txt") + " --out " + dir.str("r7"), dir);
  EXPECT_EQ(failed.exit_code, 1) << failed.err;
  EXPECT_TRUE(fs::exists(dir.str("r7/tensorboard/other_run/events.out.tfevents.1")));
  EXPECT_FALSE(fs::exists(dir.str("r7/config.json")));
  // sae_cache into a name with a comma: refused before any work (every reader would take the name
  // for two crosscoder sources).
  const auto comma = run_binary("sae_cache", "--model " + ref("model") + " --text " + ref("stories.txt") +
                                                 " --progress none --out " + dir.str("c,1"), dir);
  EXPECT_EQ(comma.exit_code, 2) << comma.err;
  EXPECT_NE(comma.err.find("a cache whose name has a comma cannot be read back"), std::string::npos) << comma.err;
  EXPECT_FALSE(fs::exists(dir.str("c,1")));
}

// Several hooks from one forward pass (a transcoder's input and target, a crosscoder's hooks, a
// second model): each column block equals that hook read alone.
TEST(TextData, SeveralReadsInOnePassEqualEachReadAlone) {
  DecoderModel model = load_decoder_model(ref("model"));
  DecoderModel model_b = load_decoder_model(ref("model"));
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(ref("model"));
  StoryReader reader(ref("stories.txt"));
  TextStory story;
  ASSERT_TRUE(reader.next(story));
  const std::vector<int32_t> ids = tokenizer.encode(story.text, story.where);
  const std::vector<TextRead> reads = {{0, parse_hook_name("blocks.1.hook_mlp_out")},
                                       {0, parse_hook_name("blocks.1.ln2.hook_normalized")},
                                       {1, parse_hook_name("blocks.0.hook_resid_post")},
                                       {0, parse_hook_name("blocks.0.attn.hook_z")},
                                       {0, parse_hook_name("blocks.2.hook_resid_pre")}};
  for (const bool skip_first : {false, true}) {
    std::vector<float> together;
    window_activations(model, &model_b, reads, ids, skip_first, together);
    const int64_t t = static_cast<int64_t>(ids.size()) - (skip_first ? 1 : 0);
    int64_t width = 0;
    for (const TextRead& r : reads) width += model.config().hook_width(r.site);
    ASSERT_EQ(static_cast<int64_t>(together.size()), t * width);
    int64_t column = 0;
    for (const TextRead& r : reads) {
      const Tensor alone = (r.model == 0 ? model : model_b).forward_to_site(ids, r.site).to(Device::CPU).clone();
      const int64_t w = model.config().hook_width(r.site);
      for (int64_t row = 0; row < t; ++row)
        for (int64_t j = 0; j < w; ++j)
          ASSERT_EQ(together[row * width + column + j], alone.data<float>()[(row + (skip_first ? 1 : 0)) * w + j])
              << hook_name(r.site) << " row " << row << " column " << j;
      column += w;
    }
  }
}

namespace {

// Token batches of the fixture's text at hidden_states[2] (raw), small chunks so that a few batches
// cross several.
struct ShareFixture {
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(ref("model"));
  TextDataOptions options;
  ShareFixture() {
    options.text = ref("stories.txt");
    options.chunk_tokens = 100;
  }
  std::unique_ptr<TextBatcher> batcher(DecoderModel& model) const {
    return std::make_unique<TextBatcher>(model, tokenizer, options, 16, Normalization::None, DatasetScales(1.0), 7);
  }
};

std::vector<float> draw(BatchSource& b, int batches) {
  const int64_t d = b.d();
  std::vector<float> raw(static_cast<size_t>(b.max_batch_tokens() * d)), normalized(raw.size()), out;
  BatchStats stats;
  for (int i = 0; i < batches; ++i) {
    const int64_t n = b.next(raw.data(), normalized.data(), stats);
    out.insert(out.end(), raw.begin(), raw.begin() + n * d);
  }
  return out;
}

}  // namespace

// A state saved before the first batch, restored after batches were drawn (the geometric median's
// sample, sae/train/arch_config.h first_training_tokens), puts the batcher back at its start: the
// same first batches again.
TEST(TextData, RestoringTheStartStateServesTheFirstBatchesAgain) {
  DecoderModel model = load_decoder_model(ref("model"));
  const ShareFixture f;
  std::unique_ptr<TextBatcher> b = f.batcher(model);
  const Json start = b->state();
  const std::vector<float> first = draw(*b, 12);
  b->restore(start);
  EXPECT_EQ(draw(*b, 12), first);
}

// sae_train --distribute from text: two parts (two ranks, here two threads, each with its model) each
// run the model on every other window of a chunk; the sum over the parts completes the chunk, and
// both serve exactly the whole batches of one batcher running every window. The counts say so.
TEST(TextData, SharedComputationServesWholeBatchesFromAShareOfTheWindows) {
  const ShareFixture f;
  DecoderModel alone_model = load_decoder_model(ref("model"));
  std::unique_ptr<TextBatcher> alone = f.batcher(alone_model);
  const std::vector<float> want = draw(*alone, 20);
  const BatchSource::ComputeCounts all = alone->compute_counts();
  EXPECT_EQ(all.windows_run, all.windows);
  EXPECT_EQ(all.floats_summed, 0);

  DecoderModel models[2] = {load_decoder_model(ref("model")), load_decoder_model(ref("model"))};
  std::unique_ptr<TextBatcher> parts[2] = {f.batcher(models[0]), f.batcher(models[1])};
  std::barrier meet(2);
  std::vector<float> slots[2];
  for (int p = 0; p < 2; ++p)
    ASSERT_TRUE(parts[p]->share_computation(p, 2, [&, p](float* values, int64_t count) {
      slots[p].assign(values, values + count);
      meet.arrive_and_wait();
      ASSERT_EQ(slots[0].size(), slots[1].size());
      for (int64_t i = 0; i < count; ++i) values[i] = slots[0][static_cast<size_t>(i)] + slots[1][static_cast<size_t>(i)];
      meet.arrive_and_wait();  // both have read the slots before either fills them again
    }));
  std::vector<float> got[2];
  const BlasSharedScope shared_blas;  // both models run GEMMs at once (tensor/threads.h)
  std::thread other([&] { got[1] = draw(*parts[1], 20); });
  got[0] = draw(*parts[0], 20);
  other.join();
  EXPECT_EQ(got[0], want);
  EXPECT_EQ(got[1], want);
  const BatchSource::ComputeCounts c0 = parts[0]->compute_counts(), c1 = parts[1]->compute_counts();
  EXPECT_EQ(c0.windows, all.windows);
  EXPECT_EQ(c1.windows, all.windows);
  EXPECT_EQ(c0.windows_run + c1.windows_run, all.windows);  // each window on one part
  EXPECT_LE(std::abs(c0.windows_run - c1.windows_run), 2);  // about half each
  EXPECT_GT(c0.windows_run, 0);
  // Every float of every chunk filled is summed: at least the rows drawn, whole rows of D.
  EXPECT_EQ(c0.floats_summed, c1.floats_summed);
  EXPECT_GE(c0.floats_summed, static_cast<int64_t>(want.size()));
  EXPECT_EQ(c0.floats_summed % alone->d(), 0);
  std::printf("windows run: part 0 %lld, part 1 %lld of %lld; floats summed per part %lld\n",
              (long long)c0.windows_run, (long long)c1.windows_run, (long long)all.windows, (long long)c0.floats_summed);
  // Story batches have nothing to share.
  DecoderModel story_model = load_decoder_model(ref("model"));
  TextBatcher stories(story_model, f.tokenizer, f.options, 0, Normalization::None, DatasetScales(1.0), 7);
  EXPECT_FALSE(stories.share_computation(0, 2, [](float*, int64_t) {}));
}

TEST(TextData, ATranscoderAndACrosscoderTrainFromText) {
  TempDir dir("text_dictionaries");
  TrainConfig tc = text_config(dir.str("transcoder"));
  tc.transcoder_block = 1;
  tc.normalize = Normalization::Dataset;
  tc.batch_tokens = 40;
  tc.given = {"transcoder"};
  const TrainResult t = train(tc);
  Checkpoint transcoder = load_checkpoint(dir.str("transcoder/sae"), Device::CPU, /*with_state=*/false);
  EXPECT_TRUE(transcoder.params.transcoder);
  EXPECT_EQ(transcoder.cfg.at("metadata").at("hook_name").as_string(), "blocks.1.ln2.hook_normalized");
  EXPECT_EQ(transcoder.cfg.at("metadata").at("hook_name_out").as_string(), "blocks.1.hook_mlp_out");
  EXPECT_EQ(transcoder.cfg.at("sae_cpp").at("dataset_scale").elements().size(), 2u);
  const CsvNumbers tm = read_csv_numbers(dir.str("transcoder/metrics.csv"));
  EXPECT_LT(tm.column("loss").back(), tm.column("loss").front());
  EXPECT_EQ(t.steps, 24);
  // sae_eval and sae_steer splice it where it was trained: it reads ln2.hook_normalized, replaces hook_mlp_out.
  const DecoderModel model = load_decoder_model(ref("model"));
  const SaeAtLayer spliced = load_sae_at_layer(dir.str("transcoder/sae"), model.config(), HookChoice{}, Device::CPU);
  EXPECT_EQ(hook_name(spliced.input_site), "blocks.1.ln2.hook_normalized");
  EXPECT_EQ(hook_name(spliced.site), "blocks.1.hook_mlp_out");

  TrainConfig cc = text_config(dir.str("crosscoder"));
  cc.hooks = "blocks.0.hook_resid_post,blocks.1.hook_resid_post";
  cc.model_b = ref("model");
  cc.normalize = Normalization::Dataset;
  cc.batch_tokens = 40;
  train(cc);
  Checkpoint crosscoder = load_checkpoint(dir.str("crosscoder/sae"), Device::CPU, /*with_state=*/false);
  EXPECT_EQ(crosscoder.params.sources, 4);  // two hooks of two models
  EXPECT_EQ(crosscoder.params.d_in(), 4 * 32);
  const CsvNumbers cm = read_csv_numbers(dir.str("crosscoder/metrics.csv"));
  EXPECT_LT(cm.column("loss").back(), cm.column("loss").front());
  // sae_eval splices it in at its four hooks (two of each model); the second model is required.
  try {
    load_sae_at_layer(dir.str("crosscoder/sae"), model.config(), HookChoice{}, Device::CPU);
    ADD_FAILURE() << "a crosscoder over two models was accepted without the second";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("give --model-b"), std::string::npos) << e.what();
  }
  const SaeAtLayer xc =
      load_sae_at_layer(dir.str("crosscoder/sae"), model.config(), HookChoice{}, Device::CPU, &model.config());
  ASSERT_EQ(xc.sources.size(), 4u);
  EXPECT_EQ(xc.sources[0].read, "blocks.0.hook_resid_post");
  EXPECT_EQ(xc.sources[3].read, "model_b:blocks.1.hook_resid_post");
  EXPECT_EQ(xc.sources[3].model, 1);
  DecoderModel model_a = load_decoder_model(ref("model")), model_b = load_decoder_model(ref("model"));
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(ref("model"));
  EvalOptions options;
  options.text = ref("stories.txt");
  options.max_stories = 4;
  const CrosscoderEvalResult r = evaluate_crosscoder(model_a, &model_b, tokenizer, xc, options);
  ASSERT_EQ(r.models.size(), 2u);
  EXPECT_EQ(r.models[0].clean.ce, r.models[1].clean.ce);  // the same model twice
  ASSERT_EQ(r.fvu.size(), 4u);
  for (double fvu : r.fvu) EXPECT_TRUE(std::isfinite(fvu) && fvu > 0) << fvu;
  EXPECT_TRUE(std::isfinite(r.models[1].kl_score)) << r.models[1].kl_score;
  EXPECT_LT(r.fvu_all, 0.9);  // trained: better than the mean (0.73 here)
}

TEST(TextData, TheDatasetScaleFromTextIsSaeLenssOverTheFirstWindows) {
  // estimate_text_dataset_scale against its definition, recomputed from the story batches (one
  // window each, in the corpus's order, raw): s = sqrt(d) / mean ||x|| over the first whole windows
  // holding at least `sample` tokens, and the raw mean ||x||^2 of the same rows.
  ShareFixture f;
  DecoderModel model = load_decoder_model(ref("model"));
  TextBatcher stories(model, f.tokenizer, f.options, 0, Normalization::None, DatasetScales(1.0), 7);
  const int64_t d = stories.d();
  std::vector<float> raw(static_cast<size_t>(stories.max_batch_tokens() * d)), normalized(raw.size());
  BatchStats stats;
  int64_t windows = 0;  // in the corpus (the estimate reads it once at most)
  StoryReader reader(f.options.text);
  TextStory story;
  while (reader.next(story))
    windows += window_count(static_cast<int64_t>(f.tokenizer.encode(story.text).size()),
                            WindowOptions{-1, model.config().max_positions});
  ASSERT_GT(windows, 3);
  for (const int64_t sample : {int64_t(1), int64_t(150), int64_t(100000)}) {
    TextBatcher again(model, f.tokenizer, f.options, 0, Normalization::None, DatasetScales(1.0), 7);
    double norms = 0, squares = 0;
    int64_t tokens = 0;
    for (int64_t window = 0; tokens < sample && window < windows; ++window) {
      const int64_t n = again.next(raw.data(), normalized.data(), stats);
      for (int64_t r = 0; r < n; ++r) {
        double sq = 0;
        for (int64_t j = 0; j < d; ++j) sq += double(raw[r * d + j]) * raw[r * d + j];
        norms += std::sqrt(sq);
        squares += sq;
      }
      tokens += n;
    }
    std::vector<double> mean_squared_norms;
    const DatasetScales s = estimate_text_dataset_scale(model, f.tokenizer, f.options, sample, nullptr, &mean_squared_norms);
    const double want = std::sqrt(double(d)) / (norms / double(tokens));
    EXPECT_NEAR(s.first(), want, 1e-9 * want) << "sample " << sample;
    ASSERT_EQ(mean_squared_norms.size(), 1u);
    EXPECT_NEAR(mean_squared_norms[0], squares / double(tokens), 1e-9 * squares / double(tokens)) << "sample " << sample;
  }
}
