// sae_train --eval-text (sae/eval/checkpoint_eval.h): every checkpoint and the final model of a run
// from text is evaluated while it is saved. Its eval.json must be what sae_eval writes for the same
// folder (the same numbers, key for key, but the time taken), also for a run trained at --precision
// bf16 (evaluated at float32, as sae_eval evaluates); evals.csv holds one row per checkpoint with
// eval.json's numbers; a run stopped and resumed ends with the same eval files as one never stopped;
// options that cannot be honoured are refused in one line.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/json.h"
#include "tests/util/program_run.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::read_file;
using sae::testing::run_program;
using sae::testing::shell_quote;
using sae::testing::TempDir;
namespace fs = std::filesystem;

namespace {

std::string eval_ref(const std::string& name) { return std::string(SAE_SOURCE_DIR) + "/tests/ref/eval/" + name; }

std::string text_run(const std::string& out, const std::string& extra, const std::string& progress = "none") {
  return cat("--model ", shell_quote(eval_ref("model")), " --text ", shell_quote(eval_ref("stories.txt")),
             " --layer 1 --context-size 32 --features 24 --l1 0.3 --lr 3e-3 --checkpoint-every 4 --log-every 2 --feature-stats-steps 0",
             " --progress ", progress, " --device cpu --out ", shell_quote(out), " ", extra);
}

// eval.json without what differs between two evaluations of the same folder (the time, the training
// step a checkpoint's records, the figure sae_eval draws).
Json comparable(Json j) {
  Json out = Json::object();
  for (const auto& [key, value] : j.items())
    if (key != "seconds" && key != "training" && key != "figures") out[key] = value;
  return out;
}

std::vector<std::vector<std::string>> csv_rows(const std::string& path) {
  std::vector<std::vector<std::string>> rows;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    std::vector<std::string> cells;
    std::stringstream s(line);
    for (std::string cell; std::getline(s, cell, ',');) cells.push_back(cell);
    rows.push_back(cells);
  }
  return rows;
}

}  // namespace

TEST(TrainEval, EveryCheckpointIsScoredAsSaeEvalScoresIt) {
  for (const std::string precision : {"fp32", "bf16"}) {
    TempDir dir("train_eval_" + precision);
    const std::string run = dir.str("run");
    const auto trained = run_program(
        "sae_train", text_run(run, cat("--steps 8 --precision ", precision, " --eval-text ",
                                       shell_quote(eval_ref("stories.txt")), " --eval-stories 4"), "lines"),
        dir);
    ASSERT_EQ(trained.exit_code, 0) << trained.err;
    EXPECT_NE(trained.err.find("evaluated step 4 on 4 stories: CE score "), std::string::npos) << trained.err;
    EXPECT_NE(trained.err.find("evaluated step 8 on 4 stories: CE score "), std::string::npos) << trained.err;
    EXPECT_NE(trained.out.find("evaluations of its checkpoints: " + run + "/evals.csv"), std::string::npos) << trained.out;
    EXPECT_GT(fs::file_size(run + "/figures/evals.png"), 1000u);  // CE and KL scores by step

    const std::vector<std::pair<int64_t, std::string>> folders = {{4, run + "/checkpoints/step_4"}, {8, run + "/sae"}};
    const auto rows = csv_rows(run + "/evals.csv");
    ASSERT_EQ(rows.size(), 3u);
    const std::vector<std::string>& header = rows[0];
    for (size_t i = 0; i < folders.size(); ++i) {
      const auto& [step, folder] = folders[i];
      const Json ours = read_json_file(folder + "/eval.json");
      EXPECT_EQ(ours.at("training").at("step").as_int(), step);
      EXPECT_EQ(ours.at("stories").as_int(), 4);
      const auto scored = run_program(
          "sae_eval", cat("--model ", shell_quote(eval_ref("model")), " --sae ", shell_quote(folder), " --text ",
                          shell_quote(eval_ref("stories.txt")), " --max-stories 4 --progress none --device cpu --out ",
                          shell_quote(dir.str(cat("eval_", step)))),
          dir);
      ASSERT_EQ(scored.exit_code, 0) << scored.err;
      const Json theirs = read_json_file(dir.str(cat("eval_", step, "/eval.json")));
      EXPECT_EQ(comparable(ours).dump(), comparable(theirs).dump()) << precision << " step " << step;
      // Its row of evals.csv.
      const std::vector<std::string>& row = rows[i + 1];
      ASSERT_EQ(row.size(), header.size());
      EXPECT_EQ(row[0], std::to_string(step));
      auto cell = [&](const std::string& name) {
        for (size_t c = 0; c < header.size(); ++c)
          if (header[c] == name) return std::stod(row[c]);
        ADD_FAILURE() << "no column " << name;
        return std::nan("");
      };
      EXPECT_EQ(cell("tokens"), double(ours.at("training").at("tokens").as_int()));
      auto near = [](double a, double b) { return std::fabs(a - b) <= 1e-8 * std::fabs(b) + 1e-12; };  // %.9g
      EXPECT_PRED2(near, cell("ce_loss_score"), ours.at("ce_loss_score").as_number());
      EXPECT_PRED2(near, cell("ce_sae"), ours.at("ce_loss").at("sae").as_number());
      EXPECT_PRED2(near, cell("kl_sae"), ours.at("kl_div").at("sae").as_number());
      EXPECT_PRED2(near, cell("fvu"), ours.at("fvu").as_number());
      EXPECT_PRED2(near, cell("l0"), ours.at("l0").as_number());
      EXPECT_EQ(cell("dead_features"), double(ours.at("dead_features").as_int()));
    }
  }
}

TEST(TrainEval, AResumedRunEndsWithTheEvaluationsOfOneNeverStopped) {
  TempDir dir("train_eval_resume");
  const std::string eval = cat(" --eval-text ", shell_quote(eval_ref("stories.txt")), " --eval-stories 3");
  const auto straight = run_program("sae_train", text_run(dir.str("straight"), "--steps 12" + eval), dir);
  ASSERT_EQ(straight.exit_code, 0) << straight.err;
  const auto first = run_program("sae_train", text_run(dir.str("cut"), "--steps 6" + eval), dir);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  const auto rest = run_program("sae_train", "--resume " + shell_quote(dir.str("cut")) + " --steps 12", dir);
  ASSERT_EQ(rest.exit_code, 0) << rest.err;
  // The cut run's final model at step 6 was kept as checkpoints/step_6 (with its eval.json): its row
  // is the one extra; every other row is the straight run's.
  auto rows_of = [](const std::string& path) {
    std::vector<std::string> lines;
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  };
  const auto a = rows_of(dir.str("straight/evals.csv")), b = rows_of(dir.str("cut/evals.csv"));
  ASSERT_EQ(a.size(), 4u);  // header, steps 4, 8, 12
  ASSERT_EQ(b.size(), 5u);  // and step 6
  EXPECT_EQ(a[0], b[0]);
  EXPECT_EQ(a[1], b[1]);
  EXPECT_EQ(b[2].rfind("6,", 0), 0u) << b[2];
  EXPECT_EQ(a[2], b[3]);
  EXPECT_EQ(a[3], b[4]);
  Json a_final = comparable(read_json_file(dir.str("straight/sae/eval.json")));
  Json b_final = comparable(read_json_file(dir.str("cut/sae/eval.json")));
  a_final["sae"] = b_final["sae"] = "";  // their folders' names
  EXPECT_EQ(a_final.dump(), b_final.dump());
}

TEST(TrainEval, OptionsItCannotHonourAreRefused) {
  TempDir dir("train_eval_refused");
  const std::string stories = shell_quote(eval_ref("stories.txt"));
  struct Case {
    std::string program, args;
    int code;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {"sae_train", "--steps 3 --features 8 --synthetic-d 8 --progress none --device cpu --out " +
                        shell_quote(dir.str("a")) + " --eval-text " + stories,
       2, "--eval-text splices the SAE into the language model it trains on: it needs --model and --text"},
      {"sae_train", text_run(dir.str("b"), "--steps 3 --eval-stories 5"), 2, "--eval-stories applies only with --eval-text"},
      {"sae_train", text_run(dir.str("c"), "--steps 3 --eval-text " + shell_quote(dir.str())), 1, "is a directory"},
      {"sae_train", text_run(dir.str("d"), "--steps 3 --eval-text " + stories + " --eval-stories -1"), 2,
       "--eval-stories must be >= 0"},
      {"sae_train", cat("--model ", shell_quote(eval_ref("model")), " --text ", stories, " --hooks ",
                        "blocks.0.hook_resid_post,blocks.1.hook_resid_post --normalize dataset --features 16 --steps 3 ",
                        "--context-size 32 --progress none ",
                        "--device cpu --out ", shell_quote(dir.str("e")), " --eval-text ", stories),
       2, "a crosscoder's checkpoints are evaluated with sae_eval"},
      {"sae_train", text_run(dir.str("g"), "--steps 3 --eval-text " + stories + " --eval-text-field body"), 2,
       "--eval-text-field body names a field of JSON lines (.jsonl) given as --eval-text"},
      {"recon_vs_f", cat("--model ", shell_quote(eval_ref("model")), " --text ", stories, " --layer 1 --context-size 32 --features-list 8 ",
                         "--steps 3 --progress none --device cpu --out ", shell_quote(dir.str("f")), " --eval-text ",
                         stories),
       2, "eval-text’ does not exist"},  // a study evaluates no checkpoint: not among its options
  };
  for (const Case& c : cases) {
    const auto r = run_program(c.program, c.args, dir);
    EXPECT_EQ(r.exit_code, c.code) << c.args << "\n" << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << "wanted '" << c.needle << "' in: " << r.err;
  }
  EXPECT_FALSE(fs::exists(dir.str("c/config.json")));  // refused before the run began
}

TEST(TrainEval, TheEvaluationChangesNothingOfTheTraining) {
  // At bf16 with the batches made on a worker thread (the language model runs there beside the
  // evaluation, which runs at float32): the run's metrics and weights are those of a run without it.
  TempDir dir("train_eval_same");
  const std::string run = " --batch 64 --normalize dataset --text-chunk-tokens 512 --precision bf16 --prefetch on "
                          "--threads 1 --steps 48";
  const std::string eval = cat(" --eval-text ", shell_quote(eval_ref("stories.txt")), " --eval-stories 0");
  const auto plain = run_program("sae_train", text_run(dir.str("plain"), run), dir);
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  const auto evaluated = run_program("sae_train", text_run(dir.str("evaluated"), run + eval + " --checkpoint-every 2"), dir);
  ASSERT_EQ(evaluated.exit_code, 0) << evaluated.err;
  EXPECT_EQ(read_file(dir.str("plain/metrics.csv")), read_file(dir.str("evaluated/metrics.csv")));
  EXPECT_EQ(read_file(dir.str("plain/sae/sae_weights.safetensors")),
            read_file(dir.str("evaluated/sae/sae_weights.safetensors")));
}

TEST(TrainEval, AFailingEvaluationCostsItsEvalJsonOnly) {
  // JSON lines whose third line lacks the field: the start (which reads the first story) lets it
  // through, each evaluation then fails; the run trains to its end, every checkpoint saved, a warning
  // each time, no eval.json and no evals.csv.
  TempDir dir("train_eval_fails");
  const std::string corpus = dir.str("eval.jsonl");
  std::ofstream(corpus) << "{\"text\": \"Once upon a time there was a cat.\"}\n{\"text\": \"A dog ran.\"}\n"
                           "{\"body\": \"no text here\"}\n";
  const auto r = run_program("sae_train", text_run(dir.str("run"), "--steps 8 --eval-text " + shell_quote(corpus)), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("sae_train: warning: --eval-text: step 4 was not evaluated ("), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("); its checkpoint is saved without eval.json"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(dir.str("run/checkpoints/step_4/training_state.safetensors")));
  EXPECT_TRUE(fs::exists(dir.str("run/sae/training_state.safetensors")));
  EXPECT_FALSE(fs::exists(dir.str("run/sae/eval.json")));
  EXPECT_FALSE(fs::exists(dir.str("run/evals.csv")));
  // A corpus whose first line lacks the field is refused before the run starts.
  std::ofstream(corpus) << "{\"body\": \"no text here\"}\n";
  const auto refused = run_program("sae_train", text_run(dir.str("run2"), "--steps 8 --eval-text " + shell_quote(corpus)), dir);
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_EQ(refused.err.rfind("sae_train: error: --eval-text: ", 0), 0u) << refused.err;
  EXPECT_FALSE(fs::exists(dir.str("run2/config.json")));
}

TEST(TrainEval, AFinalModelSavedOnASignalIsEvaluatedWhenTheRunIsResumed) {
  // A signal at the final save: sae/ is saved without evaluation (a grace period is short); the
  // --resume the line names trains nothing, evaluates it and writes evals.csv with its row.
  TempDir dir("train_eval_signal");
  const std::string run = dir.str("run");
  const std::string eval = cat(" --eval-text ", shell_quote(eval_ref("stories.txt")), " --eval-stories 3");
  const auto stopped = run_program("sae_train", text_run(run, "--steps 8" + eval), dir, "SAE_TEST_SIGNAL_AT=final-save:TERM");
  EXPECT_EQ(stopped.exit_code, 143) << stopped.err;
  EXPECT_TRUE(fs::exists(run + "/sae/training_state.safetensors"));
  EXPECT_FALSE(fs::exists(run + "/sae/eval.json"));
  const auto resumed = run_program("sae_train", "--resume " + shell_quote(run), dir);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_EQ(read_json_file(run + "/sae/eval.json").at("training").at("step").as_int(), 8);
  const auto rows = csv_rows(run + "/evals.csv");
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[1][0], "4");
  EXPECT_EQ(rows[2][0], "8");
}
