// Training runs end to end: planted-dictionary recovery, bit-exact resume (from the final model and
// from a mid-run checkpoint), a NaN/Inf loss stopping the run with the last checkpoint intact, and
// the files a run writes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "sae/train/options.h"
#include "sae/train/checkpoint.h"
#include "sae/train/trainer.h"
#include "tensor/ops.h"
#include "io/csv.h"
#include "io/safetensors.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::read_file;
using sae::testing::planted_dictionary_config;
using sae::testing::tiny_story_run_config;
using sae::testing::small_synthetic_config;
using sae::testing::TempDir;
namespace fs = std::filesystem;

namespace {

std::string weights_bytes(const std::string& dir) { return read_file(dir + "/sae_weights.safetensors"); }
}  // namespace

TEST(Trainer, RecoversAPlantedDictionary) {
  // Known unit directions, a few active per token, token batches: the SAE should find >= 90% of
  // them at cosine >= 0.9.
  TempDir dir("planted");
  TrainConfig c = planted_dictionary_config(dir.str("run"));
  c.l1 = 1.0;
  c.steps = 600;
  TrainResult r = train(c);
  ASSERT_TRUE(r.concepts.has_value());
  std::printf("planted dictionary: MMCS %.3f recovered %.3f purity %.3f L0 %.2f FVU %.3f\n", r.concepts->mmcs,
              r.concepts->recovered, r.concepts->purity, r.l0, r.fvu);
  EXPECT_GE(r.concepts->recovered, 0.9);
  EXPECT_GT(r.concepts->mmcs, 0.9);
  EXPECT_LT(r.l0, 10.0);  // sparse: a few features per token, not dozens
}

TEST(Trainer, TopKInEncoderChunksTrainsAsOnTheWholeBatch) {
  // --encoder-chunk 37 over 256-token batches: the encoder GEMM and the selection in 7 chunks (the
  // last of 34), and AuxK (dead after 2048 tokens) computing each chunk's P again. Only the GEMMs'
  // rounding may differ from the whole batch's run: its metrics agree to 1e-5 and its dictionary to
  // 1e-4; AuxK did run (aux_loss > 0 on some logged step).
  TempDir dir("encoder_chunk");
  TrainConfig c = planted_dictionary_config(dir.str("whole"));
  c.architecture = "topk";
  c.arch.set("k", Json(3));
  c.dead_window = 2048;
  c.steps = 150;
  c.log_every = 10;
  const TrainResult whole = train(c);
  c.out = dir.str("chunked");
  c.encoder_chunk = 37;
  const TrainResult chunked = train(c);
  const CsvNumbers a = read_csv_numbers(whole.metrics_csv), b = read_csv_numbers(chunked.metrics_csv);
  ASSERT_EQ(a.rows.size(), b.rows.size());
  for (const char* column : {"loss", "rec_loss", "l0", "dead_features", "aux_loss"}) {
    const std::vector<double> x = a.column(column), y = b.column(column);
    for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(y[i], x[i], 1e-5 * std::max(1.0, std::abs(x[i]))) << column << " row " << i;
  }
  const std::vector<double> aux = a.column("aux_loss");
  EXPECT_GT(*std::max_element(aux.begin(), aux.end()), 0.0) << "AuxK never ran";
  const Tensor wa = SafetensorsFile::open(dir.str("whole/sae/sae_weights.safetensors")).read_f32("W_dec");
  const Tensor wb = SafetensorsFile::open(dir.str("chunked/sae/sae_weights.safetensors")).read_f32("W_dec");
  EXPECT_LT(reduce(ReduceOp::max, abs(sub(wa, wb))).item(), 1e-4);
  EXPECT_EQ(Json::parse(read_file(dir.str("chunked/config.json"))).at("encoder_chunk").as_int(), 37);
}

TEST(Trainer, ResumeFromTheFinalModelIsBitExact) {
  TempDir dir("resume_final");
  TrainConfig full = tiny_story_run_config(dir.str("full"));
  train(full);
  TrainConfig first = tiny_story_run_config(dir.str("split"));
  first.steps = 17;
  train(first);
  TrainConfig rest = tiny_story_run_config("");
  rest.resume = dir.str("split");
  give_every_control(rest);
  rest.steps = 40;
  TrainResult r = train(rest);
  EXPECT_EQ(r.steps, 40);
  EXPECT_EQ(weights_bytes(dir.str("full/sae")), weights_bytes(dir.str("split/sae")));
  EXPECT_EQ(read_file(dir.str("full/metrics.csv")), read_file(dir.str("split/metrics.csv")));
}

TEST(Trainer, ResumeFromAMidRunCheckpointIsBitExactInTokenMode) {
  TempDir dir("resume_mid");
  TrainConfig full = tiny_story_run_config(dir.str("full"));
  full.batch_tokens = 20;
  full.normalize = Normalization::Dataset;
  train(full);
  // An "interrupted" run: checkpoints every 10 steps, its final model removed as if it had died
  // at step 25, after writing metrics rows past its last checkpoint.
  TrainConfig cut = full;
  cut.out = dir.str("cut");
  cut.steps = 25;
  cut.checkpoint_every = 10;
  train(cut);
  fs::remove_all(dir.str("cut/sae"));
  TrainConfig rest = tiny_story_run_config("");
  rest.resume = dir.str("cut");
  give_every_control(rest);
  rest.steps = 40;
  rest.checkpoint_every = 10;
  TrainResult r = train(rest);
  EXPECT_EQ(r.steps, 40);
  EXPECT_EQ(weights_bytes(dir.str("full/sae")), weights_bytes(dir.str("cut/sae")));
  EXPECT_EQ(read_file(dir.str("full/metrics.csv")), read_file(dir.str("cut/metrics.csv")));
}

TEST(Trainer, NonFiniteLossStopsAndKeepsTheLastCheckpoint) {
  TempDir dir("diverge");
  // Story 3 holds values whose squares overflow float32, with no normalisation.
  sae::testing::write_activation_file(dir.str("acts.safetensors"), 4, {5, 5, 5, 5, 5}, [](int64_t t, int64_t j) {
    return t >= 15 && t < 20 ? 3e19 : 0.1 * ((t * 7 + j * 3) % 11) - 0.5;
  });
  TrainConfig c = tiny_story_run_config(dir.str("run"));
  c.data = dir.str("acts.safetensors");
  c.normalize = Normalization::None;
  c.features = 8;
  c.steps = 10;
  c.checkpoint_every = 1;
  // The message says which checkpoint is the newest and how to go on from it at a lower lr (--resume
  // keeps the run's), with no "-nan".
  std::string advice;
  try {
    train(c);
  } catch (const TrainingDiverged& e) {
    advice = e.what();
  }
  EXPECT_NE(advice.find("nothing was saved after " + dir.str("run/checkpoints/step_3") + ": start a run from it"),
            std::string::npos) << advice;
  EXPECT_NE(advice.find("--init " + dir.str("run/checkpoints/step_3") + " --lr"), std::string::npos) << advice;
  EXPECT_EQ(advice.find("-nan"), std::string::npos) << advice;
  EXPECT_TRUE(fs::exists(dir.str("run/checkpoints/step_3")));
  EXPECT_FALSE(fs::exists(dir.str("run/checkpoints/step_4")));
  EXPECT_FALSE(fs::exists(dir.str("run/sae")));
  Checkpoint last = load_checkpoint(dir.str("run/checkpoints/step_3"), Device::CPU);
  ASSERT_TRUE(last.state.has_value());
  EXPECT_EQ(last.state->step, 3);
  EXPECT_TRUE(std::isfinite(sum(abs(last.params.W_dec)).item()));

  // --device-data: the loss sums stay on the device and are read back where needed (before every
  // save among them). Checkpoints every step: the same checkpoints as above. Every 100 steps (none
  // in the 10): the run stops by its last step without writing anything, and says so.
  TrainConfig kept = c;
  kept.out = dir.str("kept");
  kept.device_data = DeviceDataMode::On;
  EXPECT_THROW(train(kept), TrainingDiverged);
  EXPECT_TRUE(fs::exists(dir.str("kept/checkpoints/step_3")));
  EXPECT_FALSE(fs::exists(dir.str("kept/checkpoints/step_4")));
  EXPECT_FALSE(fs::exists(dir.str("kept/sae")));
  kept.out = dir.str("kept_rarely");
  kept.checkpoint_every = 100;
  kept.log_every = 100;
  std::string message;
  try {
    train(kept);
  } catch (const TrainingDiverged& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("training diverged by step 10"), std::string::npos) << message;
  EXPECT_NE(message.find("no checkpoint was saved"), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(dir.str("kept_rarely/checkpoints")));
  EXPECT_FALSE(fs::exists(dir.str("kept_rarely/sae")));
}

TEST(Trainer, WritesEveryOutputInTheSpec) {
  TempDir dir("outputs");
  TrainConfig c = tiny_story_run_config(dir.str("run"));
  c.steps = 12;
  c.checkpoint_every = 5;
  c.log_every = 4;
  TrainResult r = train(c);
  for (const char* f : {"config.json", "metrics.csv", "sae/sae_weights.safetensors", "sae/cfg.json",
                        "sae/training_state.safetensors", "checkpoints/step_5/sae_weights.safetensors",
                        "checkpoints/step_10/cfg.json"})
    EXPECT_TRUE(fs::exists(dir.str("run/") + f)) << f;
  EXPECT_TRUE(fs::exists(r.tensorboard_file));
  // metrics.csv: header with the contract's columns (docs/contract.md §4), rows at steps 4, 8 and 12
  std::ifstream csv(dir.str("run/metrics.csv"));
  std::string header, line;
  std::getline(csv, header);
  for (const char* col : {"step", "tokens", "loss", "rec_loss", "l1", "rec_loss_per_element", "l1_per_element",
                          "nonzero_proportion", "l0", "dead_features", "fvu"})
    EXPECT_NE(header.find(col), std::string::npos) << col;
  std::vector<std::string> steps;
  while (std::getline(csv, line)) steps.push_back(line.substr(0, line.find(',')));
  EXPECT_EQ(steps, (std::vector<std::string>{"4", "8", "12"}));
  // cfg.json carries SAELens's keys and ours; config.json has every option.
  Json cfg = Json::parse(read_file(dir.str("run/sae/cfg.json")));
  EXPECT_EQ(cfg.at("architecture").as_string(), "standard");
  EXPECT_EQ(cfg.at("d_in").as_int(), 16);
  EXPECT_EQ(cfg.at("d_sae").as_int(), 32);
  EXPECT_EQ(cfg.at("metadata").at("sae_lens_version").as_string(), "6.0.0");
  EXPECT_EQ(cfg.at("sae_cpp").at("steps").as_int(), 12);
  Json config = Json::parse(read_file(dir.str("run/config.json")));
  TrainConfig back = TrainConfig::from_json(config);
  EXPECT_EQ(back.features, 32);
  EXPECT_EQ(back.checkpoint_every, 5);
  // --init from the final model continues from its weights.
  TrainConfig again = tiny_story_run_config(dir.str("init"));
  again.init = dir.str("run/sae");
  again.steps = 1;
  again.lr = 1e-12;
  train(again);
  SafetensorsFile a = SafetensorsFile::open(dir.str("run/sae/sae_weights.safetensors"));
  SafetensorsFile b = SafetensorsFile::open(dir.str("init/sae/sae_weights.safetensors"));
  EXPECT_LT(reduce(ReduceOp::max, abs(sub(a.read_f32("W_enc"), b.read_f32("W_enc")))).item(), 1e-9);
}

TEST(Trainer, PrefetchThreadGivesTheSameRunAndResumes) {
  // The worker-thread pipeline (on by default for CUDA) must not change a single bit, including
  // the data position saved in checkpoints.
  TempDir dir("prefetch");
  TrainConfig plain = tiny_story_run_config(dir.str("plain"));
  plain.batch_tokens = 20;
  plain.normalize = Normalization::Dataset;
  plain.prefetch = PrefetchMode::Off;
  train(plain);
  TrainConfig threaded = plain;
  threaded.out = dir.str("threaded");
  threaded.prefetch = PrefetchMode::On;
  threaded.steps = 23;
  threaded.checkpoint_every = 10;
  train(threaded);
  TrainConfig rest = tiny_story_run_config("");
  rest.resume = dir.str("threaded");
  give_every_control(rest);
  rest.steps = 40;
  rest.prefetch = PrefetchMode::On;
  train(rest);
  EXPECT_EQ(weights_bytes(dir.str("plain/sae")), weights_bytes(dir.str("threaded/sae")));
  EXPECT_EQ(read_file(dir.str("plain/metrics.csv")), read_file(dir.str("threaded/metrics.csv")));
}

TEST(Trainer, PrefetchThreadReportsBadDataAtTheRightStep) {
  TempDir dir("prefetch_nan");
  // 20 stories of 500 tokens; a NaN in story 10, beyond the first and last 4096 tokens that are
  // checked when the file is opened, so only the batch check can find it.
  sae::testing::write_activation_file(dir.str("acts.safetensors"), 4, std::vector<int64_t>(20, 500),
                                      [](int64_t t, int64_t j) {
                                        return t == 5123 && j == 2 ? NAN : 0.1 * ((t * 7 + j * 3) % 11) - 0.5;
                                      });
  TrainConfig c = tiny_story_run_config(dir.str("run"));
  c.data = dir.str("acts.safetensors");
  c.features = 8;
  c.steps = 10;  // story 10 (with the NaN) is never trained on, though the worker reads it ahead
  c.prefetch = PrefetchMode::On;
  EXPECT_NO_THROW(train(c));
  TrainConfig longer = c;
  longer.out = dir.str("run11");
  longer.steps = 11;
  longer.checkpoint_every = 5;
  EXPECT_THROW(train(longer), DataError);
  EXPECT_TRUE(fs::exists(dir.str("run11/checkpoints/step_10")));
  EXPECT_FALSE(fs::exists(dir.str("run11/sae")));
}
