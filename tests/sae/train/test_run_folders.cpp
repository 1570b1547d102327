// What the trainer promises about run folders (docs/contract.md §5, docs/robustness.md): every run
// kind resumes bit-exactly (--init, story and token batches, dataset normalisation, sparse on and
// off, prefetch); a fresh run does not mix with a run already in its folder (refused, or replaced
// with --overwrite); two runs cannot share a folder (lock); a crash inside a checkpoint save loses
// nothing (killed after the exchange, and between the two renames of the fallback path); stale
// temporary folders are swept; --resume refuses options that contradict the run and keeps its
// Controls options (--steps, --log-every, ...) unless they are given again; --init refuses a
// contradicting --features; config files that are FIFOs or devices are refused, not waited on.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/file_lock.h"
#include "io/json.h"
#include "io/npy.h"
#include "tensor/rng.h"
#include "sae/train/options.h"
#include "sae/train/checkpoint.h"
#include "sae/train/trainer.h"
#include "tests/util/program_run.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::read_file;
using sae::testing::run_binary;
using sae::testing::small_synthetic_config;
using sae::testing::TempDir;
namespace fs = std::filesystem;

namespace {

TrainConfig tiny(const std::string& out) { return sae::testing::tiny_training_config(out); }

// Runs `config` straight to its steps in DIR/full, and in DIR/cut to `cut_at` steps and then on
// with --resume; the two final models and metrics.csv must be byte-identical.
void expect_bit_exact_resume(TrainConfig config, int64_t cut_at, const TempDir& dir, const std::string& what) {
  const int64_t steps = config.steps;
  config.out = dir.str(what + "_full");
  train(config);
  TrainConfig first = config;
  first.out = dir.str(what + "_cut");
  first.steps = cut_at;
  train(first);
  TrainConfig rest;
  rest.resume = first.out;
  give_every_control(rest);
  rest.steps = steps;
  rest.checkpoint_every = config.checkpoint_every;
  rest.log_every = config.log_every;
  rest.progress = ProgressMode::None;
  rest.device = DeviceChoice::Cpu;
  rest.prefetch = config.prefetch;
  const TrainResult r = train(rest);
  EXPECT_EQ(r.steps, steps) << what;
  EXPECT_EQ(read_file(config.out + "/sae/sae_weights.safetensors"), read_file(first.out + "/sae/sae_weights.safetensors"))
      << what;
  EXPECT_EQ(read_file(config.out + "/metrics.csv"), read_file(first.out + "/metrics.csv")) << what;
}

// The sorted names in a folder.
std::vector<std::string> names_in(const std::string& folder) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(folder)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::string command_line_tiny() {
  return " --synthetic-d 8 --synthetic-concepts 12 --synthetic-story-concepts 2 --synthetic-story-active 1"
         " --synthetic-stories 50 --synthetic-mean-length 8 --synthetic-active 2 --features 16 --lr 1e-3"
         " --progress none --device cpu";
}

}  // namespace

TEST(RunFolders, EveryRunKindResumesBitExactly) {
  TempDir dir("resume_kinds");
  TrainConfig tokens = tiny("");  // token batches, dataset normalisation (small_synthetic_config)
  expect_bit_exact_resume(tokens, 17, dir, "tokens_dataset");
  TrainConfig stories = tiny("");
  stories.batch_tokens = 0;
  stories.normalize = Normalization::Story;
  expect_bit_exact_resume(stories, 13, dir, "stories");
  TrainConfig dense = tiny("");
  dense.arch.set("sparse", Json("off"));
  expect_bit_exact_resume(dense, 20, dir, "sparse_off");
  TrainConfig sparse = tiny("");
  sparse.arch.set("sparse", Json("on"));
  expect_bit_exact_resume(sparse, 11, dir, "sparse_on");
  TrainConfig prefetch = tiny("");
  prefetch.prefetch = PrefetchMode::On;
  expect_bit_exact_resume(prefetch, 15, dir, "prefetch");
  // --init: start from another run's SAE, interrupt, resume (its config.json keeps the init path).
  TrainConfig source = tiny(dir.str("init_source"));
  train(source);
  TrainConfig from_init = tiny("");
  from_init.init = dir.str("init_source/sae");
  expect_bit_exact_resume(from_init, 12, dir, "init");
  EXPECT_EQ(read_json_file(dir.str("init_cut/config.json")).at("init").as_string(), from_init.init);
}

TEST(RunFolders, FreshRunIntoARunFolderIsRefusedUnlessOverwrite) {
  TempDir dir("refuse_fresh");
  TrainConfig c = tiny(dir.str("run"));
  c.steps = 12;
  train(c);
  const std::string before = read_file(dir.str("run/sae/sae_weights.safetensors"));
  TrainConfig again = c;
  again.lr = 1e-2;  // another run into the same folder
  try {
    train(again);
    FAIL() << "a second fresh run into a run folder was accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--overwrite"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--resume"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_file(dir.str("run/sae/sae_weights.safetensors")), before);  // untouched
  // --overwrite with data that cannot be read (a mistyped path, data with a NaN) fails before the
  // old run is deleted: it stays whole.
  const std::string csv_before = read_file(dir.str("run/metrics.csv"));
  const std::vector<std::string> checkpoints_before = names_in(dir.str("run/checkpoints"));
  TrainConfig unreadable = again;
  unreadable.overwrite = true;
  unreadable.data = dir.str("missing.npy");
  EXPECT_THROW(train(unreadable), DataError);
  write_npy(dir.str("nan.npy"), Tensor::from_vector({1, 2, std::nan(""), 4}, Shape{2, 2}));
  unreadable.data = dir.str("nan.npy");
  EXPECT_THROW(train(unreadable), DataError);
  EXPECT_EQ(read_file(dir.str("run/sae/sae_weights.safetensors")), before);
  EXPECT_EQ(read_file(dir.str("run/metrics.csv")), csv_before);
  EXPECT_EQ(names_in(dir.str("run/checkpoints")), checkpoints_before);
  EXPECT_FALSE(checkpoints_before.empty());
  EXPECT_EQ(read_json_file(dir.str("run/config.json")).at("lr").as_number(), c.lr);
  // Killed while --overwrite deleted the old run's files: its config.json goes last, so the folder
  // never holds the new run's pending options beside the old checkpoints (a --resume continued those
  // under the new options); the --overwrite command again replaces what is left.
  {
    const auto killed = sae::testing::run_program("sae_train", command_line_tiny() + " --lr 0.02 --steps 5 --overwrite --out " +
                                                                   dir.str("run"), dir, "SAE_TEST_KILL_AT=overwrite-before-config");
    EXPECT_NE(killed.exit_code, 0);
    EXPECT_FALSE(fs::exists(dir.str("run/checkpoints")));
    EXPECT_FALSE(fs::exists(dir.str("run/sae")));
    EXPECT_EQ(read_json_file(dir.str("run/config.json")).at("lr").as_number(), c.lr);
  }
  // --overwrite replaces it: the folder then holds exactly the new run (its rows only).
  std::ofstream(dir.str("run/notes.txt")) << "mine";  // not a run file: kept
  again.overwrite = true;
  again.steps = 5;
  again.checkpoint_every = 100;
  train(again);
  EXPECT_NE(read_file(dir.str("run/sae/sae_weights.safetensors")), before);
  EXPECT_FALSE(fs::exists(dir.str("run/checkpoints")));  // the old run's checkpoints are gone
  EXPECT_EQ(read_json_file(dir.str("run/config.json")).at("lr").as_number(), 1e-2);
  const std::string csv = read_file(dir.str("run/metrics.csv"));
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 1 + 5);  // header + the new run's 5 rows
  EXPECT_EQ(read_file(dir.str("run/notes.txt")), "mine");
  // An empty folder, or one with other files only, is fine without --overwrite.
  fs::create_directories(dir.str("empty"));
  std::ofstream(dir.str("empty/readme")) << "x";
  train(tiny(dir.str("empty")));
}

TEST(RunFolders, TwoRunsCannotShareAFolder) {
  TempDir dir("lock");
  fs::create_directories(dir.str("run"));
  FileLock held(dir.str("run/.lock"));  // as if another process were training there
  try {
    train(tiny(dir.str("run")));
    FAIL() << "a run started in a locked folder";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("another process"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir.str("run/config.json")));
}

TEST(RunFolders, ACrashInsideACheckpointSaveLosesNothing) {
  // The final save of a resumed run replaces sae/. Kill the process there, in each of the two ways
  // a save swaps directories, then resume: the result must equal an uninterrupted run.
  TempDir dir("crash_swap");
  const std::string base = command_line_tiny() + " --checkpoint-every 1000";
  auto straight = run_binary("sae_train", base + " --steps 30 --out " + dir.str("straight"), dir);
  ASSERT_EQ(straight.exit_code, 0) << straight.err;
  for (const std::string hook : {"SAE_TEST_KILL_AT=after-exchange",
                                 "SAE_TEST_NO_RENAME_EXCHANGE=1 SAE_TEST_KILL_AT=between-renames"}) {
    const std::string run = dir.str(hook.find("between") != std::string::npos ? "two_renames" : "exchange");
    auto first = run_binary("sae_train", base + " --steps 10 --out " + run, dir);
    ASSERT_EQ(first.exit_code, 0) << first.err;
    // An extended run keeps its final model as checkpoints/step_10 unless one is there: one is, so
    // the new final save replaces sae/ in place.
    fs::create_directories(run + "/checkpoints");
    fs::copy(run + "/sae", run + "/checkpoints/step_10");
    // Steps 10 -> 20, killed while the final sae/ is swapped in.
    const std::string killed = std::string("env ") + hook + " " + SAE_BIN_DIR + "/sae_train --resume " + run +
                               " --steps 20 --progress none --device cpu > /dev/null 2>&1";
    const int status = std::system(killed.c_str());
    ASSERT_TRUE(WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == 128 + 9)) << hook;
    bool leftovers = false;
    for (const auto& entry : fs::directory_iterator(run)) leftovers |= entry.path().filename().string().rfind("sae.", 0) == 0;
    EXPECT_TRUE(leftovers) << hook << ": the crash should have left a temporary copy";
    // Resume to 30: recovers the step-20 model (from a temporary name if need be) and goes on.
    auto resumed = run_binary("sae_train", "--resume " + run + " --steps 30 --progress none --device cpu", dir);
    ASSERT_EQ(resumed.exit_code, 0) << hook << ": " << resumed.err;
    EXPECT_NE(resumed.out.find("trained 30 steps"), std::string::npos) << resumed.out;
    EXPECT_EQ(read_file(run + "/sae/sae_weights.safetensors"), read_file(dir.str("straight/sae/sae_weights.safetensors")))
        << hook;
    for (const auto& entry : fs::directory_iterator(run))
      EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << "not swept: " << entry.path();
  }
}

TEST(RunFolders, StaleTemporaryFoldersAreSweptAndRecovered) {
  TempDir dir("sweep");
  TrainConfig c = tiny(dir.str("run"));
  c.steps = 20;
  train(c);
  // What killed saves leave: an incomplete temp folder, and a complete copy of step_10 whose real
  // folder is gone (a crash between the renames of the fallback path).
  fs::create_directories(dir.str("run/checkpoints/step_20.tmp-99999"));
  std::ofstream(dir.str("run/checkpoints/step_20.tmp-99999/cfg.json")) << "{";
  fs::rename(dir.str("run/checkpoints/step_10"), dir.str("run/checkpoints/step_10.old-12345"));
  fs::create_directories(dir.str("run/sae.tmp-4242"));
  TrainConfig more;
  more.resume = dir.str("run");
  give_every_control(more);
  more.steps = 25;
  more.progress = ProgressMode::None;
  more.device = DeviceChoice::Cpu;
  train(more);
  EXPECT_TRUE(fs::exists(dir.str("run/checkpoints/step_10/sae_weights.safetensors")));  // recovered
  EXPECT_FALSE(fs::exists(dir.str("run/checkpoints/step_20.tmp-99999")));
  EXPECT_FALSE(fs::exists(dir.str("run/checkpoints/step_10.old-12345")));
  EXPECT_FALSE(fs::exists(dir.str("run/sae.tmp-4242")));
  EXPECT_EQ(load_checkpoint(dir.str("run/checkpoints/step_10"), Device::CPU).state->step, 10);
}

TEST(RunFolders, ResumeRefusesOptionsThatContradictTheRun) {
  TempDir dir("resume_conflict");
  auto made = run_binary("sae_train", command_line_tiny() + " --steps 5 --out " + dir.str("run"), dir);
  ASSERT_EQ(made.exit_code, 0) << made.err;
  auto conflict = run_binary("sae_train", command_line_tiny() + " --lr 0.01 --steps 8 --resume " + dir.str("run"), dir);
  EXPECT_EQ(conflict.exit_code, 2) << conflict.err;
  EXPECT_NE(conflict.err.find("--lr 0.01 contradicts"), std::string::npos) << conflict.err;
  EXPECT_EQ(std::count(conflict.err.begin(), conflict.err.end(), '\n'), 1) << conflict.err;
  // A value the run never set reads "none" (it read "config.json has )").
  auto unset = run_binary("sae_train", "--hook blocks.1.hook_resid_pre --steps 8 --resume " + dir.str("run"), dir);
  EXPECT_EQ(unset.exit_code, 2) << unset.err;
  EXPECT_NE(unset.err.find("config.json has none)"), std::string::npos) << unset.err;
  // The same values as the run (here all of command_line_tiny) and Controls options are fine.
  auto same = run_binary("sae_train", command_line_tiny() + " --steps 8 --log-every 2 --resume " + dir.str("run"), dir);
  EXPECT_EQ(same.exit_code, 0) << same.err;
  // A config.json edited to another normalisation than its checkpoints were trained with: refused
  // (the run went on with a dataset scale of 1, never estimated).
  const std::string config_path = dir.str("run/config.json"), original = read_file(config_path);
  Json edited = Json::parse(original);
  edited["normalize"] = edited.at("normalize").as_string() == "dataset" ? "none" : "dataset";
  std::ofstream(config_path) << edited.dump(2);
  auto disagree = run_binary("sae_train", " --resume " + dir.str("run") + " --steps 12", dir);
  EXPECT_EQ(disagree.exit_code, 1) << disagree.err;
  EXPECT_NE(disagree.err.find("the run's files disagree"), std::string::npos) << disagree.err;
  // A value out of range in config.json is the file's error (exit 1, naming it), not the command
  // line's (it read as "--features must be ...", exit 2).
  edited = Json::parse(original);
  edited["features"] = -5;
  std::ofstream(config_path) << edited.dump(2);
  auto bad_value = run_binary("sae_train", " --resume " + dir.str("run") + " --steps 12", dir);
  EXPECT_EQ(bad_value.exit_code, 1) << bad_value.err;
  EXPECT_NE(bad_value.err.find(config_path + ": a value the file holds: --features must be"), std::string::npos)
      << bad_value.err;
  std::ofstream(config_path) << original;
  // --init refuses an explicit --features that contradicts the checkpoint's d_sae (16).
  auto init = run_binary("sae_train", command_line_tiny() + " --features 20 --steps 3 --init " + dir.str("run/sae") +
                                          " --out " + dir.str("init_run"), dir);
  EXPECT_EQ(init.exit_code, 2) << init.err;
  EXPECT_NE(init.err.find("--features 20 contradicts --init"), std::string::npos) << init.err;
  // ... and another normalisation than its folder was trained with (our folder says which): its
  // weights read those inputs (another one started from another function).
  const std::string trained_with = Json::parse(original).at("normalize").as_string();
  const std::string other = trained_with == "dataset" ? "none" : "dataset";
  auto normalised = run_binary("sae_train", command_line_tiny() + " --batch 16 --normalize " + other + " --steps 3 --init " +
                                                dir.str("run/sae") + " --out " + dir.str("init_other"), dir);
  EXPECT_EQ(normalised.exit_code, 2) << normalised.err;
  EXPECT_NE(normalised.err.find("was trained with --normalize " + trained_with), std::string::npos) << normalised.err;
}

TEST(RunFolders, AnInitRunTakesTheFoldersKWhenNotGiven) {
  // docs/architectures.md: --init takes the folder's k when --k is not given (it was refused as
  // "--k is required": the command line was checked before the folder was read).
  TempDir dir("init_k");
  auto topk = run_binary("sae_train", command_line_tiny() + " --architecture topk --k 3 --steps 4 --out " + dir.str("a"), dir);
  ASSERT_EQ(topk.exit_code, 0) << topk.err;
  auto from = run_binary("sae_train", command_line_tiny() + " --architecture topk --steps 4 --init " + dir.str("a/sae") +
                                          " --out " + dir.str("b"), dir);
  ASSERT_EQ(from.exit_code, 0) << from.err;
  EXPECT_EQ(read_json_file(dir.str("b/config.json")).at("k").as_int(), 3);
  auto bad = run_binary("sae_train", command_line_tiny() + " --architecture topk --steps 4 --lr 0 --init " +
                                         dir.str("a/sae") + " --out " + dir.str("c"), dir);
  EXPECT_EQ(bad.exit_code, 2) << bad.err;  // still checked, once the folder is read
}

TEST(RunFolders, ResumeKeepsTheRunsControlsUnlessGivenAgain) {
  // --resume with fewer options: --log-every and --checkpoint-every stay the run's (5 and 10, not the
  // defaults); --steps left out means the run's own, so a finished run trains nothing; a Controls
  // option given again wins, and is what the run keeps from then on.
  TempDir dir("resume_controls");
  const std::string run = dir.str("run");
  auto first = run_binary("sae_train", command_line_tiny() + " --steps 20 --log-every 5 --checkpoint-every 10 --out " + run, dir);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  auto steps_of_rows = [&] {
    std::vector<std::string> steps;
    std::istringstream lines(read_file(run + "/metrics.csv"));
    std::string line;
    std::getline(lines, line);  // the header
    while (std::getline(lines, line)) steps.push_back(line.substr(0, line.find(',')));
    return steps;
  };
  const std::string final_20 = read_file(run + "/sae/sae_weights.safetensors");
  EXPECT_FALSE(fs::exists(run + "/checkpoints/step_20"));  // the last step is saved as sae/ only
  // An extension refused, or killed right after it kept the final model aside: the run stays whole
  // (its sae/ had been moved before the options were checked); the retry finds it finished at step
  // 20 from checkpoints/step_20, makes sae/ again, and reports its real numbers (it reported zeros).
  auto refused = run_binary("sae_train", " --resume " + run + " --steps 40 --log-every 0", dir);
  EXPECT_EQ(refused.exit_code, 2) << refused.err;
  EXPECT_EQ(read_file(run + "/sae/sae_weights.safetensors"), final_20);
  const auto killed = sae::testing::run_program("sae_train", " --resume " + run + " --steps 40", dir,
                                                "SAE_TEST_KILL_AT=after-keep-final");
  EXPECT_NE(killed.exit_code, 0);
  EXPECT_FALSE(fs::exists(run + "/sae"));
  auto retried = run_binary("sae_train", " --resume " + run, dir);
  ASSERT_EQ(retried.exit_code, 0) << retried.err;
  EXPECT_NE(retried.out.find("nothing to train"), std::string::npos) << retried.out;
  EXPECT_EQ(retried.out.find("FVU 0.0000"), std::string::npos) << retried.out;
  EXPECT_EQ(read_file(run + "/sae/sae_weights.safetensors"), final_20);
  fs::remove_all(run + "/checkpoints/step_20");  // as it was: the extension below keeps it again
  auto more = run_binary("sae_train", " --resume " + run + " --steps 40", dir);
  ASSERT_EQ(more.exit_code, 0) << more.err;
  EXPECT_EQ(steps_of_rows(), (std::vector<std::string>{"5", "10", "15", "20", "25", "30", "35", "40"}));
  EXPECT_TRUE(fs::exists(run + "/checkpoints/step_30"));
  // Extended, the run keeps its step-20 final model as that step's checkpoint (it was overwritten).
  EXPECT_EQ(read_file(run + "/checkpoints/step_20/sae_weights.safetensors"), final_20);
  EXPECT_NE(more.out.find("kept as " + run + "/checkpoints/step_20"), std::string::npos) << more.out;
  // Its figures, current, are left as they are by a retry; figures older than metrics.csv (a kill
  // while an extended run redrew them) are drawn again (they had been kept, ending at the old step).
  const std::string loss_dat = run + "/figures/loss.dat", drawn = read_file(loss_dat);
  const auto drawn_at = fs::last_write_time(loss_dat);
  auto again = run_binary("sae_train", " --resume " + run, dir);
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(again.out.find("already: nothing to train"), std::string::npos) << again.out;
  EXPECT_EQ(fs::last_write_time(loss_dat), drawn_at);
  std::ofstream(loss_dat) << "# stale\n";
  fs::last_write_time(loss_dat, fs::last_write_time(run + "/metrics.csv") - std::chrono::seconds(5));
  auto redrawn = run_binary("sae_train", " --resume " + run, dir);
  ASSERT_EQ(redrawn.exit_code, 0) << redrawn.err;
  EXPECT_EQ(read_file(loss_dat), drawn);
  auto given = run_binary("sae_train", " --resume " + run + " --steps 44 --log-every 2", dir);
  ASSERT_EQ(given.exit_code, 0) << given.err;
  const std::vector<std::string> rows = steps_of_rows();
  EXPECT_EQ(std::vector<std::string>(rows.end() - 3, rows.end()), (std::vector<std::string>{"40", "42", "44"}));
  EXPECT_EQ(Json::parse(read_file(run + "/config.json")).at("log_every").as_int(), 2);
}

TEST(RunFolders, ConfigFilesThatAreNotRegularFilesAreRefused) {
  TempDir dir("fifo");
  auto made = run_binary("sae_train", command_line_tiny() + " --steps 3 --out " + dir.str("run"), dir);
  ASSERT_EQ(made.exit_code, 0) << made.err;
  // A FIFO in place of config.json: --resume must not block on it.
  fs::remove(dir.str("run/config.json"));
  ASSERT_EQ(::mkfifo(dir.str("run/config.json").c_str(), 0644), 0);
  auto fifo = run_binary("sae_train", "--resume " + dir.str("run") + " --steps 5 --progress none --device cpu", dir);
  EXPECT_EQ(fifo.exit_code, 1) << fifo.err;
  EXPECT_NE(fifo.err.find("not a regular file"), std::string::npos) << fifo.err;
  // cfg.json as a link to /dev/zero: sae_apply refuses it at once instead of reading forever.
  fs::remove(dir.str("run/sae/cfg.json"));
  fs::create_symlink("/dev/zero", dir.str("run/sae/cfg.json"));
  auto zero = run_binary("sae_apply", "--sae " + dir.str("run/sae") + " --input x.npy --features-out f.npy", dir);
  EXPECT_EQ(zero.exit_code, 1) << zero.err;
  EXPECT_NE(zero.err.find("not a regular file"), std::string::npos) << zero.err;
}

TEST(RunFolders, ReportAndConfigSayOnlyWhatIsThere) {
  TempDir dir("report");
  TrainConfig c = tiny(dir.str("run"));
  c.steps = 5;
  c.checkpoint_every = 100;  // no checkpoint before the end
  const TrainResult r = train(c);
  EXPECT_FALSE(r.wrote_checkpoints);
  EXPECT_EQ(format_report(r).find("checkpoints/"), std::string::npos) << format_report(r);
  // A run on a file records no synthetic generator in config.json, and reads back.
  sae::testing::write_activation_file(dir.str("acts.safetensors"), 8, {6, 9, 5}, [](int64_t t, int64_t j) {
    return 0.1 * double((t * 5 + j * 3) % 7) - 0.2;
  });
  TrainConfig on_file = tiny(dir.str("file_run"));
  on_file.data = dir.str("acts.safetensors");
  on_file.batch_tokens = 0;
  on_file.normalize = Normalization::Story;
  on_file.features = 8;
  on_file.steps = 4;
  train(on_file);
  const Json saved = read_json_file(dir.str("file_run/config.json"));
  EXPECT_FALSE(saved.has("synthetic"));
  EXPECT_EQ(TrainConfig::from_json(saved).data, on_file.data);
  // The resolved threads and OpenMP wait policy are recorded.
  EXPECT_TRUE(saved.at("resolved").has("threads"));
}

TEST(RunFolders, ARewindingResumeSetsTheLaterCheckpointsAside) {
  // A finished 40-step run (checkpoints 10..30, sae/ at 40) resumed from step_20 to 30: what it had
  // saved after step 20 moves to superseded/from_step_20/ (metrics.csv as it stood with it); the run
  // is then a consistent 30-step run, so a plain --resume finds it finished instead of step 40's
  // abandoned final model (which it refused: "already at step 40").
  TempDir dir("resume_rewind");
  const std::string run = dir.str("run");
  auto first = run_binary("sae_train", command_line_tiny() + " --steps 40 --log-every 5 --checkpoint-every 10 --out " + run, dir);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  const std::string old_weights = read_file(run + "/sae/sae_weights.safetensors"),
                    old_step_30 = read_file(run + "/checkpoints/step_30/sae_weights.safetensors"),
                    old_metrics = read_file(run + "/metrics.csv");
  auto rewind = run_binary("sae_train", " --resume " + run + "/checkpoints/step_20 --steps 30", dir);
  ASSERT_EQ(rewind.exit_code, 0) << rewind.err;
  const std::string aside = run + "/superseded/from_step_20";
  EXPECT_NE(rewind.out.find(aside), std::string::npos) << rewind.out;
  EXPECT_EQ(read_file(aside + "/sae/sae_weights.safetensors"), old_weights);
  EXPECT_EQ(read_file(aside + "/checkpoints/step_30/sae_weights.safetensors"), old_step_30);
  EXPECT_EQ(read_file(aside + "/metrics.csv"), old_metrics);
  EXPECT_FALSE(fs::exists(aside + "/checkpoints/step_20"));
  EXPECT_TRUE(fs::exists(run + "/checkpoints/step_20"));
  EXPECT_FALSE(fs::exists(run + "/checkpoints/step_30"));  // the run's final step is in sae/
  EXPECT_EQ(latest_checkpoint_in_run(run).value_or(""), run + "/sae");
  auto again = run_binary("sae_train", " --resume " + run, dir);
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(again.out.find("was trained to step 30"), std::string::npos) << again.out;
  // Rewinding to step 20 again keeps the first set aside: the second goes to from_step_20-2.
  const std::string step_30_weights = read_file(run + "/sae/sae_weights.safetensors");
  auto twice = run_binary("sae_train", " --resume " + run + "/checkpoints/step_20 --steps 25", dir);
  ASSERT_EQ(twice.exit_code, 0) << twice.err;
  EXPECT_EQ(read_file(aside + "-2/sae/sae_weights.safetensors"), step_30_weights);
  EXPECT_EQ(read_file(aside + "/sae/sae_weights.safetensors"), old_weights);
  // A checkpoint set aside is not resumed in place (it had continued the run's own, overwriting it).
  auto set_aside = run_binary("sae_train", " --resume " + aside + "/sae --steps 50", dir);
  EXPECT_EQ(set_aside.exit_code, 2) << set_aside.err;
  EXPECT_NE(set_aside.err.find("set aside"), std::string::npos) << set_aside.err;
  // --overwrite replaces the run, what it had set aside included.
  auto replaced = run_binary("sae_train", command_line_tiny() + " --steps 5 --overwrite --out " + run, dir);
  ASSERT_EQ(replaced.exit_code, 0) << replaced.err;
  EXPECT_FALSE(fs::exists(run + "/superseded"));
}

TEST(RunFolders, EndingARunAtItsNewestCheckpointDropsWhatItLoggedPastIt) {
  // A run killed at step 40 after its checkpoint at 20 (its later saves gone here by hand), ended
  // there with --steps 20: its metrics.csv kept the rows to 40 (and the summary read step 40's row as
  // the final model's), TensorBoard its points.
  TempDir dir("resume_end_at_checkpoint");
  const std::string run = dir.str("run");
  auto first = run_binary("sae_train", command_line_tiny() + " --steps 40 --log-every 5 --checkpoint-every 10 --out " + run, dir);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  fs::remove_all(run + "/sae");
  fs::remove_all(run + "/checkpoints/step_30");
  const size_t event_files = std::distance(fs::directory_iterator(run + "/tensorboard"), fs::directory_iterator());
  auto ended = run_binary("sae_train", " --resume " + run + " --steps 20", dir);
  ASSERT_EQ(ended.exit_code, 0) << ended.err;
  EXPECT_NE(ended.out.find("was trained to step 20"), std::string::npos) << ended.out;
  const std::string metrics = read_file(run + "/metrics.csv");
  EXPECT_EQ(metrics.substr(metrics.rfind('\n', metrics.size() - 2) + 1, 3), "20,") << metrics;
  EXPECT_EQ(std::count(metrics.begin(), metrics.end(), '\n'), 5) << metrics;  // header and steps 5..20
  // (the purge's event file: tests/io/test_tensorboard.cpp reads what it holds)
  EXPECT_EQ(size_t(std::distance(fs::directory_iterator(run + "/tensorboard"), fs::directory_iterator())),
            event_files + 1);
  EXPECT_EQ(read_file(run + "/sae/sae_weights.safetensors"),
            read_file(run + "/checkpoints/step_20/sae_weights.safetensors"));
}

TEST(RunFolders, ADamagedCheckpointIsNamedNotPassedOver) {
  // Saves put only complete folders under their names, so one that is not complete was damaged
  // later: a plain --resume names it instead of going on from an older checkpoint (or, with every
  // one damaged, from step 0 over them).
  TempDir dir("resume_damaged");
  const std::string run = dir.str("run");
  auto first = run_binary("sae_train", command_line_tiny() + " --steps 30 --checkpoint-every 10 --out " + run, dir);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  const std::string weights = run + "/sae/sae_weights.safetensors";
  fs::resize_file(weights, fs::file_size(weights) - 10);
  const std::string step_20 = read_file(run + "/checkpoints/step_20/sae_weights.safetensors");
  auto damaged = run_binary("sae_train", " --resume " + run + " --steps 40", dir);
  EXPECT_EQ(damaged.exit_code, 1) << damaged.err;
  EXPECT_NE(damaged.err.find(run + "/sae: not a complete checkpoint"), std::string::npos) << damaged.err;
  EXPECT_NE(damaged.err.find("--resume " + run + "/checkpoints/step_20"), std::string::npos) << damaged.err;
  EXPECT_EQ(std::count(damaged.err.begin(), damaged.err.end(), '\n'), 1) << damaged.err;
  EXPECT_EQ(read_file(run + "/checkpoints/step_20/sae_weights.safetensors"), step_20);
  // A damaged step_N past the newest complete one too; with none complete left, no new start.
  const std::string state_20 = run + "/checkpoints/step_20/training_state.safetensors";
  fs::resize_file(state_20, fs::file_size(state_20) / 2);
  auto older = run_binary("sae_train", " --resume " + run + " --steps 40", dir);
  EXPECT_EQ(older.exit_code, 1) << older.err;
  EXPECT_NE(older.err.find("--resume " + run + "/checkpoints/step_10"), std::string::npos) << older.err;
  const std::string state_10 = run + "/checkpoints/step_10/training_state.safetensors";
  fs::remove(state_10);
  const std::string metrics = read_file(run + "/metrics.csv");
  auto none = run_binary("sae_train", " --resume " + run + " --steps 40", dir);
  EXPECT_EQ(none.exit_code, 1) << none.err;
  EXPECT_NE(none.err.find("no complete checkpoint remains"), std::string::npos) << none.err;
  EXPECT_EQ(read_file(run + "/metrics.csv"), metrics);
  EXPECT_EQ(read_file(run + "/checkpoints/step_20/sae_weights.safetensors"), step_20);
}

TEST(RunFolders, ARewindACrashStoppedIsFinishedByTheNextResume) {
  // The state a kill leaves after the rewind recorded its moves and moved sae/ only: a plain
  // --resume first moves the rest (step_20, step_30) after it, then continues from step_10.
  TempDir dir("resume_rewind_crash");
  const std::string run = dir.str("run");
  auto first = run_binary("sae_train", command_line_tiny() + " --steps 40 --log-every 5 --checkpoint-every 10 --out " + run, dir);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  const std::string aside = run + "/superseded/from_step_10";
  fs::create_directories(aside + "/checkpoints");
  std::ofstream(run + "/superseded/rewinding.json") << "{\"step\": 10, \"to\": \"" << aside << "\"}\n";
  fs::rename(run + "/sae", aside + "/sae");
  std::ofstream(aside + "/metrics.csv.partial") << "step,lo";  // a copy the kill cut short
  const std::string old_metrics = read_file(run + "/metrics.csv");
  const std::string old_step_30 = read_file(run + "/checkpoints/step_30/sae_weights.safetensors");
  auto resumed = run_binary("sae_train", " --resume " + run, dir);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_EQ(read_file(aside + "/checkpoints/step_30/sae_weights.safetensors"), old_step_30);
  EXPECT_TRUE(fs::exists(aside + "/checkpoints/step_20/training_state.safetensors"));
  EXPECT_FALSE(fs::exists(run + "/superseded/rewinding.json"));
  EXPECT_EQ(read_file(aside + "/metrics.csv"), old_metrics);
  EXPECT_FALSE(fs::exists(aside + "/metrics.csv.partial"));
  EXPECT_NE(resumed.out.find("trained 40 steps"), std::string::npos) << resumed.out;  // on from step 10
}

TEST(RunFolders, ARunStoppedBeforeItsConfigIsResumedFromItsStart) {
  // A fresh run writes its options (config.pending.json) as soon as it holds the folder; one killed
  // before the trainer wrote config.json (while its data opened) is continued by --resume RUN, and a
  // fresh command into it may start again. One that fails there (its data is not there) leaves no
  // trace: its folder is gone, as it was before.
  TempDir dir("pending_config");
  const std::string data = dir.str("x.npy");
  const std::string args = " --data " + data + " --features 16 --steps 12 --batch 32 --normalize dataset --lr 1e-3 "
                           "--checkpoint-every 100 --progress none --device cpu";
  const auto failed = run_binary("sae_train", args + " --out " + dir.str("run"), dir);
  EXPECT_EQ(failed.exit_code, 1) << failed.err;
  EXPECT_FALSE(fs::exists(dir.str("run")));
  Rng rng(4);
  std::vector<double> values(400 * 8);
  for (double& v : values) v = rng.normal();
  write_npy(data, Tensor::from_vector(values, Shape{400, 8}));
  const auto killed = sae::testing::run_program("sae_train", args + " --out " + dir.str("run"), dir,
                                                "SAE_TEST_KILL_AT=after-pending-config");
  EXPECT_NE(killed.exit_code, 0);
  EXPECT_TRUE(fs::exists(dir.str("run/config.pending.json")));
  EXPECT_FALSE(fs::exists(dir.str("run/config.json")));
  const auto resumed = run_binary("sae_train", "--resume " + dir.str("run"), dir);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_FALSE(fs::exists(dir.str("run/config.pending.json")));
  const auto straight = run_binary("sae_train", args + " --out " + dir.str("straight"), dir);
  ASSERT_EQ(straight.exit_code, 0) << straight.err;
  EXPECT_EQ(read_file(dir.str("run/sae/sae_weights.safetensors")), read_file(dir.str("straight/sae/sae_weights.safetensors")));
  // The same kill, then a fresh command that fails there (a bad --init; other data that is not
  // there): the killed run's options are kept (they had been deleted), and --resume continues it.
  ASSERT_NE(sae::testing::run_program("sae_train", args + " --out " + dir.str("again"), dir,
                                      "SAE_TEST_KILL_AT=after-pending-config").exit_code, 0);
  const std::string pending = read_file(dir.str("again/config.pending.json"));
  EXPECT_EQ(run_binary("sae_train", args + " --init " + dir.str("nowhere") + " --out " + dir.str("again"), dir).exit_code, 1);
  EXPECT_EQ(run_binary("sae_train", " --data " + dir.str("absent.npy") + " --features 16 --steps 12 --batch 32 "
                       "--normalize dataset --lr 1e-3 --progress none --device cpu --out " + dir.str("again"), dir).exit_code, 1);
  EXPECT_EQ(read_file(dir.str("again/config.pending.json")), pending);
  EXPECT_EQ(run_binary("sae_train", "--resume " + dir.str("again"), dir).exit_code, 0);
  EXPECT_EQ(read_file(dir.str("again/sae/sae_weights.safetensors")), read_file(dir.str("straight/sae/sae_weights.safetensors")));
  // The fresh command into the killed run's folder: it holds no run, so it starts.
  ASSERT_NE(sae::testing::run_program("sae_train", args + " --out " + dir.str("fresh"), dir,
                                      "SAE_TEST_KILL_AT=after-pending-config").exit_code, 0);
  EXPECT_EQ(run_binary("sae_train", args + " --out " + dir.str("fresh"), dir).exit_code, 0);
}

// config.json keeps --data as given: a run started with a relative path and resumed from another
// folder said only "cannot open x.npy"; it now says the path is relative to where the run started.
TEST(RunFolders, AResumeFromAnotherFolderNamesTheRelativePath) {
  TempDir dir("relative_data");
  fs::create_directories(dir.str("a"));
  Rng rng(3);
  std::vector<double> values(200 * 8);
  for (double& v : values) v = rng.normal();
  write_npy(dir.str("a/x.npy"), Tensor::from_vector(values, Shape{200, 8}));
  const std::string base = " --data x.npy --features 16 --batch 32 --normalize dataset --lr 1e-3 --checkpoint-every 2 "
                           "--progress none --device cpu";
  const std::string args = base + " --out run";
  ASSERT_EQ(sae::testing::run_program("sae_train", args + " --steps 2", dir, "", 120, dir.str("a")).exit_code, 0);
  const auto elsewhere = sae::testing::run_program("sae_train", "--resume a/run --steps 4", dir, "", 120, dir.str(""));
  EXPECT_EQ(elsewhere.exit_code, 1) << elsewhere.err;
  EXPECT_NE(elsewhere.err.find("--data x.npy is a relative path, as given when the run started"), std::string::npos)
      << elsewhere.err;
  EXPECT_EQ(sae::testing::run_program("sae_train", "--resume run --steps 4", dir, "", 120, dir.str("a")).exit_code, 0);
  // A relative --init that is gone: a resume from a checkpoint does not read it (it was refused).
  ASSERT_EQ(sae::testing::run_program("sae_train", base + " --steps 2 --out init_run", dir, "", 120, dir.str("a")).exit_code,
            0);
  ASSERT_EQ(sae::testing::run_program("sae_train", base + " --steps 2 --init init_run/sae --out from_init", dir, "", 120,
                                      dir.str("a")).exit_code,
            0);
  fs::remove_all(dir.str("a/init_run"));
  const auto resumed = sae::testing::run_program("sae_train", "--resume from_init --steps 4", dir, "", 120, dir.str("a"));
  EXPECT_EQ(resumed.exit_code, 0) << resumed.err;
}

TEST(RunFolders, AListClaimsItsFolderOnlyOnceItBegins) {
  TempDir dir("list_folder");
  const std::string data = dir.str("x.npy");
  const std::string args = " --data " + data + " --features 16 --steps 6 --batch 32 --normalize dataset "
                           "--checkpoint-every 100 --progress none --device cpu --l1-list 0.1,0.3 --out " + dir.str("out");
  // Stopped before any SAE began (its data not there): the corrected command starts it, no --overwrite.
  EXPECT_EQ(run_binary("sae_train", args, dir).exit_code, 1);
  Rng rng(6);
  std::vector<double> values(300 * 8);
  for (double& v : values) v = rng.normal();
  write_npy(data, Tensor::from_vector(values, Shape{300, 8}));
  const auto started = run_binary("sae_train", args, dir);
  ASSERT_EQ(started.exit_code, 0) << started.err;
  // Begun, it is refused to a fresh command, and a list with --resume is refused before it writes.
  const std::string sweep = read_file(dir.str("out/sweep.json"));
  EXPECT_EQ(run_binary("sae_train", args, dir).exit_code, 2);
  const auto both = sae::testing::run_program("sae_train", "--resume " + dir.str("out") + " --l1-list 0.1,0.3", dir, "",
                                              120, dir.str(""));
  EXPECT_EQ(both.exit_code, 2) << both.err;
  EXPECT_NE(both.err.find("--l1-list and --resume"), std::string::npos) << both.err;
  EXPECT_FALSE(fs::exists(dir.str("runs")));
  // A second list while the first holds OUT: refused before it touches sweep.json.
  {
    FileLock held(dir.str("out/.lock"));
    const auto second = run_binary("sae_train", args + " --overwrite", dir);
    EXPECT_EQ(second.exit_code, 1) << second.err;
    EXPECT_NE(second.err.find("another process"), std::string::npos) << second.err;
  }
  EXPECT_EQ(read_file(dir.str("out/sweep.json")), sweep);
  // A value twice would train two SAEs in one folder.
  const auto twice = run_binary("sae_train", "--data " + data + " --k-list 4,4 --architecture topk --out " + dir.str("k"), dir);
  EXPECT_EQ(twice.exit_code, 2) << twice.err;
  EXPECT_NE(twice.err.find("increasing order"), std::string::npos) << twice.err;
}

TEST(RunFolders, AResumeRefusesDataThatIsNotWhatTheRunStartedOn) {
  // The same file name with other bytes (same shape): a resume would go on with other data and keep
  // the old dataset scale. config.json's resolved.data records each file's fingerprint.
  TempDir dir("changed_data");
  const std::string data = dir.str("x.npy");
  auto write = [&](uint64_t seed) {
    Rng rng(seed);
    std::vector<double> values(300 * 8);
    for (double& v : values) v = rng.normal() * static_cast<double>(seed);
    write_npy(data, Tensor::from_vector(values, Shape{300, 8}));
  };
  write(1);
  const std::string args = " --data " + data + " --features 16 --batch 32 --normalize dataset --lr 1e-3 "
                           "--checkpoint-every 5 --progress none --device cpu";
  ASSERT_EQ(run_binary("sae_train", args + " --steps 10 --out " + dir.str("run"), dir).exit_code, 0);
  write(5);  // replaced
  const auto refused = run_binary("sae_train", "--resume " + dir.str("run") + " --steps 20", dir);
  EXPECT_EQ(refused.exit_code, 1) << refused.err;
  EXPECT_NE(refused.err.find("the data is not what the run started on"), std::string::npos) << refused.err;
  // It names what differs (both descriptions cut at 160 characters had read the same).
  EXPECT_NE(refused.err.find("fingerprint"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("(was) / "), std::string::npos) << refused.err;
  EXPECT_EQ(std::count(refused.err.begin(), refused.err.end(), '\n'), 1) << refused.err;
  write(1);  // the data it started on
  EXPECT_EQ(run_binary("sae_train", "--resume " + dir.str("run") + " --steps 20", dir).exit_code, 0);
}
