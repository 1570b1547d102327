// build/bin/recon_vs_f and build/bin/l1_sweep end to end on tiny configurations (synthetic d = 16,
// a few seconds each), asserting the study's shapes from their summary.csv: F below d ends far
// above F >= d, F = d - 1 ends above F = d; the nonzero proportion falls and the reconstruction
// loss rises with lambda. Also: the figures and summaries are written, a second invocation skips
// finished runs, an interrupted run resumes to the same metrics, a changed option on the same --out
// is refused (as is a run folder name taken by something else), and the library's gnuplot/metrics
// errors. The configurations (lr 1e-2 with a linear decay over the last half, so each run reaches
// its floor) were checked over five seeds: the smallest margins seen were 9x (F = d-1 over F = d),
// 170x (F = 4 over F >= d), 1.2x (proportion between neighbouring lambdas) and 2x (rec loss between
// neighbouring lambdas).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "io/file_lock.h"
#include "io/npy.h"
#include "sae/report/plot.h"
#include "sae/report/table.h"
#include "sae/study/study.h"
#include "tests/util/program_run.h"
#include "tests/util/test_util.h"

using namespace sae;
namespace fs = std::filesystem;
using sae::testing::CommandResult;
using sae::testing::run_binary;
using sae::testing::TempDir;

namespace {

const std::string kTinyData =
    "--synthetic-d 16 --synthetic-concepts 96 --synthetic-story-concepts 8 --synthetic-active 1 "
    "--synthetic-story-active 1 --lr 1e-2 --steps 2000 --lr-decay-steps 1000 --progress none";

std::string slurp(const fs::path& p) { return sae::testing::read_file(p.string()); }

int count(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

// summary.csv as one map per row (our cells hold no commas or quotes).
std::vector<std::map<std::string, std::string>> read_summary(const fs::path& path) {
  std::ifstream in(path);
  std::string line, cell;
  std::vector<std::string> header;
  std::vector<std::map<std::string, std::string>> rows;
  if (!std::getline(in, line)) return rows;
  std::stringstream h(line);
  while (std::getline(h, cell, ',')) header.push_back(cell);
  while (std::getline(in, line)) {
    std::map<std::string, std::string> row;
    std::stringstream cells(line);
    for (size_t i = 0; i < header.size(); ++i) {
      if (!std::getline(cells, cell, ',')) cell.clear();
      row[header[i]] = cell;
    }
    rows.push_back(row);
  }
  return rows;
}

void expect_png(const fs::path& png) {
  ASSERT_TRUE(fs::exists(png)) << png;
  const std::string bytes = slurp(png);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << png;
  EXPECT_GT(bytes.size(), 10000u) << png << " looks empty";
  fs::path stem = png;
  EXPECT_TRUE(fs::exists(stem.replace_extension(".gp"))) << stem;
  EXPECT_TRUE(fs::exists(stem.replace_extension(".dat"))) << stem;
}

struct Timed {
  CommandResult result;
  double seconds = 0;
};
Timed run_timed(const std::string& program, const std::string& args, const TempDir& scratch) {
  const auto begin = std::chrono::steady_clock::now();
  Timed t;
  t.result = run_binary(program, args, scratch);
  t.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  return t;
}

}  // namespace

TEST(Study, ReconVsFShapesSkipResumeAndMismatch) {
  TempDir dir("recon_vs_f");
  const fs::path out = dir.path / "study";
  const std::string args =
      kTinyData + " --features-list 4,15,16,24 --checkpoint-every 1000 --out " + out.string();
  const Timed first = run_timed("recon_vs_f", args, dir);
  ASSERT_EQ(first.result.exit_code, 0) << first.result.err;
  EXPECT_EQ(count(first.result.out, ": trained"), 4) << first.result.out;

  std::map<int, double> plateau;
  for (const auto& row : read_summary(out / "summary.csv"))
    plateau[std::stoi(row.at("F"))] = std::stod(row.at("plateau rec loss / element"));
  ASSERT_EQ(plateau.size(), 4u);
  // F = 4 < d cannot carry a 16-dimensional signal: far above every F >= d.
  EXPECT_GT(plateau[4], 10 * std::max(plateau[16], plateau[24]));
  // F = d - 1 loses one direction; F = d does not.
  EXPECT_GT(plateau[15], 3 * plateau[16]);
  EXPECT_GT(plateau[15], 3 * plateau[24]);

  expect_png(out / "recon_vs_f.png");
  expect_png(out / "recon_vs_f_zoom.png");
  const std::string md = slurp(out / "summary.md");
  EXPECT_NE(md.find("| 15 |"), std::string::npos) << md;
  EXPECT_NE(md.find("F = 768: goes towards 0"), std::string::npos) << md;  // a standard SAE at lambda = 0, as theirs
  {  // with a penalty (or TopK, a transcoder) the original's column says nothing: left out
    const fs::path penalised = dir.path / "penalised";
    const CommandResult r = run_binary(
        "recon_vs_f", kTinyData.substr(0, kTinyData.find(" --steps")) + " --steps 50 --progress none --l1 5 --features-list 16 --out " +
                          penalised.string(), dir);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const std::string penalised_md = slurp(penalised / "summary.md");
    EXPECT_EQ(penalised_md.find("goes towards 0"), std::string::npos) << penalised_md;
    EXPECT_NE(penalised_md.find("The original's column is left out"), std::string::npos) << penalised_md;
  }
  for (int f : {4, 15, 16, 24}) EXPECT_TRUE(fs::exists(out / ("F_" + std::to_string(f)) / "summary.json"));

  // A second invocation skips every finished run and rewrites the same summary.
  const std::string summary = slurp(out / "summary.csv"), metrics16 = slurp(out / "F_16" / "metrics.csv");
  const Timed again = run_timed("recon_vs_f", args, dir);
  ASSERT_EQ(again.result.exit_code, 0) << again.result.err;
  EXPECT_EQ(count(again.result.out, "skipped (already finished at step 2000)"), 4) << again.result.out;
  EXPECT_EQ(count(again.result.out, ": trained"), 0);
  EXPECT_LT(again.seconds, first.seconds);
  EXPECT_EQ(slurp(out / "summary.csv"), summary);

  // A run killed after its step-1000 checkpoint: resumed, and (bit-exact resume on CPU) it ends
  // with the same metrics as the uninterrupted run.
  fs::remove_all(out / "F_16" / "sae");
  fs::remove(out / "F_16" / "summary.json");
  const Timed resumed = run_timed("recon_vs_f", args, dir);
  ASSERT_EQ(resumed.result.exit_code, 0) << resumed.result.err;
  EXPECT_EQ(count(resumed.result.out, "F_16: resumed from step 1000"), 1) << resumed.result.out;
  EXPECT_EQ(count(resumed.result.out, "skipped"), 3);
  EXPECT_EQ(slurp(out / "F_16" / "metrics.csv"), metrics16);
  EXPECT_EQ(slurp(out / "summary.csv"), summary);

  // A run whose final model was damaged after it was saved: named (exit 1), its checkpoints left
  // as they are (the study had resumed from an older one over it, or, with all of them damaged,
  // taken the run for one killed before its first checkpoint and deleted the folder).
  const fs::path state = out / "F_16" / "sae" / "training_state.safetensors";
  fs::resize_file(state, fs::file_size(state) / 2);
  const CommandResult damaged = run_binary("recon_vs_f", args, dir);
  EXPECT_EQ(damaged.exit_code, 1) << damaged.err;
  EXPECT_NE(damaged.err.find("not a complete checkpoint"), std::string::npos) << damaged.err;
  EXPECT_TRUE(fs::exists(out / "F_16" / "checkpoints" / "step_1000" / "sae_weights.safetensors"));
  EXPECT_EQ(slurp(out / "F_16" / "metrics.csv"), metrics16);

  // A run another process trains in (its lock held), not yet at its first checkpoint: the study
  // stops with one line and leaves the folder alone (a second study once deleted it).
  fs::remove_all(out / "F_16" / "sae");
  fs::remove_all(out / "F_16" / "checkpoints");
  {
    FileLock held((out / "F_16" / ".lock").string());
    const CommandResult busy = run_binary("recon_vs_f", args, dir);
    EXPECT_EQ(busy.exit_code, 1) << busy.err;
    EXPECT_NE(busy.err.find("another process"), std::string::npos) << busy.err;
    EXPECT_EQ(slurp(out / "F_16" / "metrics.csv"), metrics16);
  }
  ASSERT_EQ(run_binary("recon_vs_f", args, dir).exit_code, 0);
  // Another study in the same folder (a job started twice): refused before any run is touched (two
  // had copied a continuation's source over each other and left a folder no retry could use).
  {
    FileLock held((out / ".study.lock").string());
    const CommandResult twice = run_binary("recon_vs_f", args, dir);
    EXPECT_EQ(twice.exit_code, 1) << twice.err;
    EXPECT_NE(twice.err.find((out / ".study.lock").string() + ": another process (pid " + std::to_string(::getpid()) + ")"),
              std::string::npos) << twice.err;
    EXPECT_EQ(twice.out.find("plan:"), std::string::npos) << twice.out;
  }

  // A run killed while its config.json was first written (its options pending, config.json's
  // temporary file left): started again (the folder was refused as holding no run, for good).
  const std::string pending = slurp(out / "F_16" / "config.json");
  fs::remove_all(out / "F_16");
  fs::create_directories(out / "F_16");
  std::ofstream(out / "F_16" / "config.pending.json") << pending;
  std::ofstream(out / "F_16" / "config.json.tmp-999999-0") << pending.substr(0, 40);
  const CommandResult restarted = run_binary("recon_vs_f", args, dir);
  ASSERT_EQ(restarted.exit_code, 0) << restarted.err;
  EXPECT_EQ(count(restarted.out, "F_16: trained"), 1) << restarted.out;
  EXPECT_EQ(slurp(out / "F_16" / "metrics.csv"), metrics16);

  // The same --out with another learning rate: refused, nothing overwritten.
  const CommandResult changed = run_binary("recon_vs_f", kTinyData + " --lr 5e-3 --features-list 4,15,16,24 --out " + out.string(), dir);
  EXPECT_EQ(changed.exit_code, 2);  // as sae_train's refusal of a folder holding another run
  EXPECT_NE(changed.err.find("lr"), std::string::npos) << changed.err;
  EXPECT_NE(changed.err.find("another --out"), std::string::npos) << changed.err;
  EXPECT_EQ(slurp(out / "F_16" / "metrics.csv"), metrics16);

  // A run folder name that is taken by something else: refused, left alone.
  const fs::path other = dir.path / "other";
  fs::create_directories(other / "F_4");
  std::ofstream(other / "F_4" / "notes.txt") << "mine";
  const CommandResult taken = run_binary("recon_vs_f", args.substr(0, args.find(" --out ")) + " --out " + other.string(), dir);
  EXPECT_EQ(taken.exit_code, 1);
  EXPECT_NE(taken.err.find("holds no run"), std::string::npos) << taken.err;
  EXPECT_EQ(slurp(other / "F_4" / "notes.txt"), "mine");
}

TEST(Study, WithoutGnuplotTheSummaryIsStillWritten) {
  // A study on a machine without gnuplot trained every run and then ended with exit 1 at its first
  // figure, writing no summary; now it writes the figures' scripts and data, and the summary says so.
  TempDir dir("study_no_gnuplot");
  fs::create_directories(dir.path / "bin");
  fs::create_symlink("/usr/bin/timeout", dir.path / "bin" / "timeout");
  const fs::path out = dir.path / "study";
  // First with gnuplot: its PNG, of one run. Then, without, the study of two runs: that PNG is not
  // left beside the new data.
  const CommandResult drawn =
      run_binary("recon_vs_f", kTinyData + " --features-list 16 --steps 1000 --out " + out.string(), dir);
  ASSERT_EQ(drawn.exit_code, 0) << drawn.err;
  ASSERT_TRUE(fs::exists(out / "recon_vs_f.png"));
  const CommandResult r = sae::testing::run_program(
      "recon_vs_f", kTinyData + " --features-list 16,24 --steps 1000 --out " + out.string(), dir,
      "PATH=" + sae::testing::shell_quote(dir.str("bin")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(out / "summary.csv"));
  EXPECT_TRUE(fs::exists(out / "recon_vs_f.gp"));
  EXPECT_FALSE(fs::exists(out / "recon_vs_f.png"));
  EXPECT_NE(slurp(out / "summary.md").find("not drawn (no gnuplot on PATH"), std::string::npos) << slurp(out / "summary.md");
}

TEST(Study, L1SweepShapesContinuationAndSkip) {
  TempDir dir("l1_sweep");
  const fs::path out = dir.path / "study";
  const std::string args = kTinyData +
                           " --features 64 --l1-list 0,0.1,1,10 --summary-step 2000 --continue-lambda 1 "
                           "--continue-steps 2500 --checkpoint-every 100000 --out " + out.string();
  const Timed first = run_timed("l1_sweep", args, dir);
  ASSERT_EQ(first.result.exit_code, 0) << first.result.err;
  EXPECT_EQ(count(first.result.out, ": trained"), 4) << first.result.out;
  EXPECT_EQ(count(first.result.out, "l1_1_to_2500: continued l1_1 from step 2000"), 1) << first.result.out;

  const auto rows = read_summary(out / "summary.csv");
  ASSERT_EQ(rows.size(), 5u);
  std::vector<double> proportion, rec;
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(rows[i].at("step"), "2000");
    proportion.push_back(std::stod(rows[i].at("nonzero proportion (mean)")));
    rec.push_back(std::stod(rows[i].at("rec loss / element (mean)")));
    const double mmcs = std::stod(rows[i].at("MMCS"));  // synthetic data: concept recovery reported
    EXPECT_GT(mmcs, 0);
    EXPECT_LE(mmcs, 1);
  }
  for (size_t i = 1; i < 4; ++i) {
    EXPECT_LT(proportion[i] * 1.1, proportion[i - 1]) << "lambda index " << i;
    EXPECT_GT(rec[i], 1.5 * rec[i - 1]) << "lambda index " << i;
  }
  // The original's numbers sit beside the lambda that stands for theirs (lambda * 768 / d).
  EXPECT_EQ(rows[0].at("original proportion"), "0.9959");
  EXPECT_EQ(rows[1].at("original proportion"), "");
  // lambda * 768 / d at d = 16 (the inverse mapping, 768 / 16 = 48, or d / 768 would give other cells)
  EXPECT_EQ(rows[1].at("as lambda at d = 768"), "4.8");
  EXPECT_EQ(rows[2].at("as lambda at d = 768"), "48");
  EXPECT_EQ(rows[3].at("as lambda at d = 768"), "480");
  EXPECT_EQ(rows[4].at("lambda"), "1 (continued)");
  EXPECT_EQ(rows[4].at("step"), "2500");

  for (const char* name : {"l1_sweep_l1", "l1_sweep_rec_loss", "l1_sweep_nonzero", "l1_sweep_zoom", "l1_sweep_continued"})
    expect_png(out / (std::string(name) + ".png"));
  EXPECT_NE(slurp(out / "summary.md").find("| 10 |"), std::string::npos);

  const std::string summary = slurp(out / "summary.csv");
  const Timed again = run_timed("l1_sweep", args, dir);
  ASSERT_EQ(again.result.exit_code, 0) << again.result.err;
  EXPECT_EQ(count(again.result.out, "skipped (already finished"), 5) << again.result.out;
  EXPECT_EQ(count(again.result.out, ": trained"), 0);
  EXPECT_LT(again.seconds, first.seconds);
  EXPECT_EQ(slurp(out / "summary.csv"), summary);  // concept recovery read back from summary.json
}

TEST(Study, L1SweepContinuesToThreeTimesItsStepsAndPrintsItsPlan) {
  // --continue-steps defaults to 3 x --steps (the original's ratio), whatever --steps is, and the
  // study says what it will run (the continuation from the step its run ends at) and about how long
  // that takes before it starts.
  TempDir dir("l1_sweep_plan");
  const fs::path out = dir.path / "study";
  std::string data = kTinyData;  // (a decay longer than the run is refused)
  data.replace(data.find("--lr-decay-steps 1000"), std::string("--lr-decay-steps 1000").size(), "--lr-decay-steps 10");
  const CommandResult r = run_binary("l1_sweep", data + " --features 32 --l1-list 0,1 --continue-lambda 1 "
                                                        "--steps 30 --summary-step 30 --out " + out.string(), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(out / "l1_1_to_90" / "sae")) << r.out;
  EXPECT_NE(r.out.find("plan: 3 runs"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("l1_1_to_90: F = 32, lambda = 1, steps 30 to 90"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("estimated: at most"), std::string::npos) << r.out;
  EXPECT_LT(r.out.find("estimated: at most"), r.out.find("[1/3]")) << "the plan comes first";
  EXPECT_NE(slurp(out / "l1_1_to_90" / "continued_from.json").find("\"step\":30"), std::string::npos);

  // Run again with more steps: the continuation made at step 30 is not the one this study would make
  // (at 40), refused before anything is trained.
  const std::string args = data + " --features 32 --l1-list 0,1 --summary-step 30 --steps 40 --out " + out.string();
  CommandResult again = run_binary("l1_sweep", args + " --continue-lambda 1 --continue-steps 90", dir);
  EXPECT_EQ(again.exit_code, 2) << again.err;
  EXPECT_NE(again.err.find("l1_1_to_90 continued l1_1 from step 30, but this study's run ends at step 40"),
            std::string::npos)
      << again.err;
  EXPECT_EQ(count(again.err, "\n"), 1) << again.err;
  EXPECT_EQ(sae::finished_step((out / "l1_0").string()), 30);
  // Without the continuation the runs are extended, and the plan says that their decay is recomputed.
  again = run_binary("l1_sweep", args + " --continue-lambda none", dir);
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(again.out.find("l1_0: F = 32, lambda = 0, steps 30 to 40 (a new length: its lr schedule is recomputed "
                           "over it from here on)"),
            std::string::npos)
      << again.out;
  EXPECT_EQ(sae::finished_step((out / "l1_0").string()), 40);
}

TEST(Study, UsageErrors) {
  TempDir dir("study_usage");
  struct Case {
    const char* program;
    std::string args, expect;
  };
  const std::vector<Case> cases = {
      {"recon_vs_f", "--profile fast", "--profile"},
      {"recon_vs_f", "--features 10", "features"},
      // a study evaluates no checkpoint: its --help listed --eval-text, refused after the plan
      {"l1_sweep", "--eval-text stories.txt", "eval-text’ does not exist"},
      {"recon_vs_f", "--features-list 4,x", "--features-list"},
      {"recon_vs_f", "--profile quick --data acts.safetensors", "--profile quick"},
      // sized for the synthetic data (it trained the d = 64 list on a model, and could never resume)
      {"l1_sweep", "--profile quick --model m --text t.txt", "--profile quick is sized for the synthetic data"},
      // named as the sweep's (they named --features, which recon_vs_f does not take, or a folder clash)
      {"recon_vs_f", "--architecture matryoshka_batchtopk --k 2 --matryoshka-widths 4,8 --features-list 8,16",
       "its --matryoshka-widths end at one F, and recon_vs_f trains one run per F of --features-list"},
      {"recon_vs_f", "--architecture topk --k 16 --features-list 8,32", "--k 16 is more than F = 8 of --features-list"},
      {"l1_sweep", "--l1-list 1.0000001,1.0000002", "would share the folder l1_1 (named by 6 significant digits)"},
      {"l1_sweep", "--l1-list 0,1 --continue-lambda 7", "--continue-lambda"},
      {"l1_sweep", "--l1-list 1,0", "--l1-list"},
      {"l1_sweep", "--continue-steps 100 --steps 200", "--continue-steps"},
      // above 2^53 it was recorded rounded (its folder named 9007199254740993, its config 9007199254740992)
      {"l1_sweep", "--continue-steps 9007199254740993", "--continue-steps: 9007199254740993 is more than 2^53"},
      {"l1_sweep", "--steps 3002399751580331", "--continue-steps: 9007199254740993 is more than 2^53"},
      // accepted and ignored or overridden before: every run labelled by a lambda it did not train
      // at, one SAE trained in one process, a restart refused as "--overwrite and --resume"
      {"l1_sweep", "--target-l0 4", "target-l0"},
      {"recon_vs_f", "--target-l0 4", "target-l0"},
      {"recon_vs_f", "--shards 2", "shards"},
      {"l1_sweep", "--overwrite", "overwrite"},
  };
  for (const Case& c : cases) {
    const CommandResult r = run_binary(c.program, c.args + " --out " + dir.str("never"), dir);
    EXPECT_EQ(r.exit_code, 2) << c.program << " " << c.args << ": " << r.err;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << r.err;
    EXPECT_EQ(count(r.err, "\n"), 1) << r.err;
  }
  EXPECT_FALSE(fs::exists(dir.path / "never"));
}

TEST(Study, FoldersThatHoldOtherWorkAreRefusedAndTranscodersTrain) {
  TempDir dir("study_folders");
  const std::string tiny = "--synthetic-d 8 --synthetic-concepts 12 --synthetic-story-concepts 2 --synthetic-active 1 "
                           "--synthetic-story-active 1 --lr 1e-2 --progress none --features-list 4,8";
  auto study = [&](const std::string& program, const std::string& args, const fs::path& out) {
    return run_binary(program, args + " --out " + out.string(), dir);
  };
  CommandResult r = study("recon_vs_f", tiny + " --steps 30", dir.path / "a");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(slurp(dir.path / "a" / "study.json").find("\"recon_vs_f\""), std::string::npos);
  // Fewer steps than its runs were trained to: summarised from the longer runs before (their model
  // and schedule at a step they passed), now refused.
  const std::string summary = slurp(dir.path / "a" / "summary.csv");
  r = study("recon_vs_f", tiny + " --steps 20", dir.path / "a");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("was trained to step 30, beyond this study's 20 steps"), std::string::npos) << r.err;
  EXPECT_EQ(slurp(dir.path / "a" / "summary.csv"), summary);
  // Another study's folder (its summary was replaced), one from before study.json (known by its
  // summary's heading), sae_train's run (the study's runs nested in it), a file.
  r = study("l1_sweep", "--synthetic-d 8 --synthetic-concepts 12 --synthetic-story-concepts 2 --synthetic-story-active 1 --features 8 --steps 20 "
                        "--l1-list 0,1 --continue-lambda none --progress none", dir.path / "a");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("holds a recon_vs_f study: give this l1_sweep study its own folder"), std::string::npos) << r.err;
  // sae_train into a study's folder, one SAE or a list of them (the study's runs would sit beside it).
  for (const std::string list : {"", " --l1-list 0,1"}) {
    r = run_binary("sae_train", "--synthetic-d 8 --features 8 --steps 2 --progress none" + list + " --out " +
                                    dir.str("a"), dir);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("is a study's folder (study.json)"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(dir.path / "a" / "config.json"));
    EXPECT_FALSE(fs::exists(dir.path / "a" / "sweep.json"));
  }
  fs::remove(dir.path / "a" / "study.json");
  r = study("l1_sweep", "--synthetic-d 8 --synthetic-concepts 12 --synthetic-story-concepts 2 --synthetic-story-active 1 --features 8 --steps 20 "
                        "--l1-list 0,1 --continue-lambda none --progress none", dir.path / "a");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("holds a recon_vs_f study"), std::string::npos) << r.err;
  r = run_binary("sae_train", "--synthetic-d 8 --synthetic-concepts 12 --synthetic-story-concepts 2 "
                              "--synthetic-story-active 1 --features 8 --steps 2 --progress none --out " +
                                  dir.str("run"), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = study("recon_vs_f", tiny + " --steps 20", dir.path / "run");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("holds sae_train's output (config.json)"), std::string::npos) << r.err;
  // A summary.md of one's own whose heading names no study is not a study's.
  fs::create_directories(dir.path / "notes");
  sae::testing::write_file(dir.str("notes/summary.md"), "# Notes\n\nData: x\n");
  r = study("recon_vs_f", tiny + " --steps 20", dir.path / "notes");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  sae::testing::write_file(dir.str("file"), "x");
  r = study("recon_vs_f", tiny + " --steps 20", dir.path / "file");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("is a file, not a folder"), std::string::npos) << r.err;
  // A transcoder study (its time estimate opened one data block for two reads and refused them).
  std::vector<double> x(400 * 6), y(400 * 5);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37 * double(i));
  for (size_t i = 0; i < y.size(); ++i) y[i] = std::cos(0.23 * double(i));
  write_npy(dir.str("x.npy"), Tensor::from_vector(x, Shape{400, 6}));
  write_npy(dir.str("y.npy"), Tensor::from_vector(y, Shape{400, 5}));
  r = study("recon_vs_f", "--data " + dir.str("x.npy") + " --target-data " + dir.str("y.npy") +
                              " --normalize none --batch 40 --steps 20 --features-list 4,8 --progress none",
            dir.path / "transcoder");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_summary(dir.path / "transcoder" / "summary.csv").size(), 2u);
  for (const auto& row : read_summary(dir.path / "transcoder" / "summary.csv"))
    EXPECT_EQ(row.at("original study (d = 768)"), "");  // an SAE's result, not a transcoder's
  // What was trained is said (it read "lambda = 0" alone).
  EXPECT_NE(slurp(dir.path / "transcoder" / "summary.md").find(dir.str("x.npy") + " -> " + dir.str("y.npy") +
                                                                ", d = 6; lambda = 0, transcoder of architecture standard"),
            std::string::npos)
      << slurp(dir.path / "transcoder" / "summary.md");
  // The original's lambdas mean the same only under per-story normalisation: under dataset scale they
  // are not set beside ours.
  r = study("l1_sweep", "--synthetic-d 8 --synthetic-concepts 12 --synthetic-story-concepts 2 --synthetic-story-active 1 "
                        "--features 8 --steps 20 --l1-list 0,96 --continue-lambda none --normalize dataset --batch 16 "
                        "--progress none", dir.path / "dataset");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const auto& row : read_summary(dir.path / "dataset" / "summary.csv")) {
    EXPECT_EQ(row.at("as lambda at d = 768"), "");
    EXPECT_EQ(row.at("original proportion"), "");
  }
  EXPECT_NE(slurp(dir.path / "dataset" / "summary.md").find("The original's numbers are left out"), std::string::npos);
}

TEST(Study, PlotNeedsGnuplotAndMetricsMustParse) {
  TempDir dir("study_lib");
  Figure figure;
  figure.title = "t";
  figure.series.push_back({"a", {1, 2, 3}, {3, 1, 2}});
  // Another process drawing the same figure (a live pid's temporary name, and the fixed name older
  // builds drew to): its file is not removed under it.
  std::ofstream(dir.path / "ok.png.tmp") << "other";
  std::ofstream(dir.path / "ok.png.tmp-1-0") << "other";
  plot(figure, dir.str("ok.png"));
  EXPECT_TRUE(fs::exists(dir.path / "ok.png"));
  EXPECT_EQ(sae::testing::read_file(dir.str("ok.png.tmp")), "other");
  EXPECT_EQ(sae::testing::read_file(dir.str("ok.png.tmp-1-0")), "other");
  EXPECT_NE(sae::testing::read_file(dir.str("ok.png")), "other");
  {  // Titles and folders are text to gnuplot, never commands: a double-quoted title ran `backquotes`
     // (a run folder named so ran them when its figures were drawn), a newline in the folder ended
     // the script's comment line and made the rest a command.
    const std::string hostile = dir.str("x`touch " + dir.str("pwned1") + "`'y\n!touch " + dir.str("pwned2") + "\n");
    fs::create_directories(hostile);
    Figure evil = figure;
    evil.title = "t `touch " + dir.str("pwned3") + "` 'q' \n!touch " + dir.str("pwned4");
    evil.series[0].title = "s `touch " + dir.str("pwned5") + "`";
    plot(evil, hostile + "/evil.png");
    EXPECT_TRUE(fs::exists(hostile + "/evil.png"));
    for (const char* name : {"pwned1", "pwned2", "pwned3", "pwned4", "pwned5"})
      EXPECT_FALSE(fs::exists(dir.path / name)) << name << " was made by a command in a title or path";
  }

  const std::string path = std::getenv("PATH") ? std::getenv("PATH") : "";
  ::setenv("PATH", dir.str().c_str(), 1);  // a PATH without gnuplot
  EXPECT_THROW(
      {
        try {
          plot(figure, dir.str("missing.png"));
        } catch (const DataError& e) {
          EXPECT_NE(std::string(e.what()).find("gnuplot was not found"), std::string::npos) << e.what();
          throw;
        }
      },
      DataError);
  ::setenv("PATH", path.c_str(), 1);
  EXPECT_TRUE(fs::exists(dir.path / "missing.gp"));  // the script is kept for a later redraw

  // A gnuplot that exits 0 with a cut-off PNG (a full disk): refused, never put in place; the
  // earlier drawing, of other data, is removed too.
  fs::create_directories(dir.path / "fakebin");
  std::ofstream(dir.path / "fakebin/gnuplot") << "#!/bin/sh\n"
                                                 "case \"$2\" in output=*) name=${2#output=\\'}; name=${name%\\'};\n"
                                                 "  printf '\\211PNG\\r\\n\\032\\n' > \"$name\";; esac\nexit 0\n";
  fs::permissions(dir.path / "fakebin/gnuplot", fs::perms::owner_all);
  std::ofstream(dir.path / "cut.png") << "an earlier drawing";
  ::setenv("PATH", dir.str("fakebin").c_str(), 1);
  std::string message;
  try {
    plot(figure, dir.str("cut.png"));
  } catch (const DataError& e) {
    message = e.what();
  }
  ::setenv("PATH", path.c_str(), 1);
  EXPECT_NE(message.find(dir.str("cut.png") + ": gnuplot left an incomplete PNG (8 bytes"), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(dir.path / "cut.png"));
  for (const auto& entry : fs::directory_iterator(dir.path))
    EXPECT_EQ(entry.path().filename().string().find("cut.png.tmp-"), std::string::npos) << entry.path();

  // FigureDrawer (what the studies and sae_eval draw with): a failing figure costs only itself,
  // nothing is printed, and describe() says which failed. This fake draws a whole PNG unless the
  // name holds "bad".
  std::ofstream(dir.path / "fakebin/gnuplot") << "#!/bin/sh\n"
                                                 "case \"$2\" in output=*) name=${2#output=\\'}; name=${name%\\'};\n"
                                                 "  printf '\\211PNG\\r\\n\\032\\n' > \"$name\";\n"
                                                 "  case \"$name\" in *bad*) ;; *) printf '\\0\\0\\0\\0IEND\\256B`\\202' >> \"$name\";; esac;;\n"
                                                 "esac\nexit 0\n";
  ::setenv("PATH", dir.str("fakebin").c_str(), 1);
  FigureDrawer some;
  some.plot(figure, dir.str("good.png"));
  some.plot(figure, dir.str("bad.png"));
  FigureDrawer none;
  none.plot(figure, dir.str("bad1.png"));
  none.plot(figure, dir.str("bad2.png"));
  ::setenv("PATH", dir.str().c_str(), 1);  // no gnuplot
  FigureDrawer missing;
  missing.plot(figure, dir.str("later.png"));
  ::setenv("PATH", path.c_str(), 1);
  EXPECT_TRUE(fs::exists(dir.path / "good.png"));
  EXPECT_FALSE(some.all_drawn());
  ASSERT_EQ(some.failures().size(), 1u);
  EXPECT_EQ(some.describe("good.png, bad.png"),
            "good.png, bad.png; but 1 of the 2 failed (the first: " + some.failures()[0] + ")");
  EXPECT_NE(some.failures()[0].find(dir.str("bad.png") + ": gnuplot left an incomplete PNG"), std::string::npos);
  EXPECT_EQ(none.failures().size(), 2u);
  EXPECT_EQ(none.describe("both"), "not drawn (" + none.failures()[0] + ")");
  EXPECT_TRUE(missing.failures().empty());
  EXPECT_FALSE(missing.all_drawn());
  EXPECT_EQ(missing.describe("later.png"), "not drawn (no gnuplot on PATH; each figure's .gp next to this file draws it)");
  EXPECT_TRUE(fs::exists(dir.path / "later.gp"));
  EXPECT_FALSE(fs::exists(dir.path / "later.png"));

  std::ofstream(dir.path / "bad.csv") << "step,loss\n1,0.5\n2,oops\n";
  EXPECT_THROW(read_metrics(dir.str("bad.csv")), DataError);
  std::ofstream(dir.path / "good.csv") << "step,loss\n10,4\n20,2\n30,1\n";
  const Metrics m = read_metrics(dir.str("good.csv"));
  EXPECT_EQ(m.row_at_or_below(25), 1u);
  EXPECT_THROW(m.row_at_or_below(5), DataError);
  EXPECT_DOUBLE_EQ(m.tail_mean("loss", 2, 0.5), 1.0);  // max(1, 3 * 0.5) = 1 row
  EXPECT_THROW(m.column("nope"), DataError);
}
