// sae_train's bad-input contract (docs/contract.md §5): one clear line on stderr naming the option or
// file, exit 2 for usage errors and 1 for data errors, never a crash. Also kill -9 mid-run leaves
// only loadable checkpoints; --help works, a good run writes what an in-process run of its config.json
// writes, and a run on a PATH without gnuplot succeeds with one note.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "io/npy.h"
#include "sae/cli/cli.h"
#include "sae/report/plot.h"
#include "sae/train/checkpoint.h"
#include "sae/train/trainer.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::raw_bytes;
using sae::testing::read_file;
using sae::testing::run_binary;
using sae::testing::TempDir;
using sae::testing::write_raw_safetensors;
namespace fs = std::filesystem;

namespace {
// Quick settings so that a run that should work finishes in well under a second.
// kTrain for a --data file (the generator's options are refused beside one), kTiny for the generator.
const std::string kTrain = " --features 16 --lr 1e-3 --steps 3 --progress none --device cpu";
const std::string kTiny =
    " --synthetic-d 8 --synthetic-concepts 12 --synthetic-story-concepts 2 --synthetic-story-active 1"
    " --synthetic-stories 50 --synthetic-mean-length 8 --synthetic-active 2" + kTrain;

// A version 1.0 .npy of shape (4, 2), written by hand as numpy lays it out.
void write_npy_4x2(const std::string& path, const std::string& descr, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (4, 2), }";
  while ((10 + header.size() + 1) % 64) header += ' ';
  header += '\n';
  f << "\x93NUMPY" << char(1) << char(0);
  const uint16_t length = static_cast<uint16_t>(header.size());
  f.write(reinterpret_cast<const char*>(&length), 2);
  f << header << data;
}

void expect_error(const std::string& args, int code, const std::string& must_mention) {
  TempDir dir("cli");
  auto r = run_binary("sae_train", args + " --out " + dir.str("run"), dir);
  EXPECT_EQ(r.exit_code, code) << args << "\nstderr: " << r.err;
  EXPECT_NE(r.err.find(must_mention), std::string::npos) << args << "\nstderr: " << r.err;
  EXPECT_NE(r.err.find("error"), std::string::npos) << r.err;
  // exactly one line
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  // and no trace: a refusal found once the folder was made (a missing --data file) left it holding
  // .lock and config.pending.json
  EXPECT_FALSE(fs::exists(dir.str("run"))) << args;
}

void write_floats(const std::string& path, int64_t tokens, int64_t d, float value_at_5 = 0.5f) {
  std::vector<float> x(tokens * d);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.1f * float(i % 13) - 0.3f;
  x[5] = value_at_5;
  write_raw_safetensors(path, {{"activations", "F32", {tokens, d}, raw_bytes(x)},
                               {"story_lengths", "I64", {2}, raw_bytes(std::vector<int64_t>{tokens / 2, tokens - tokens / 2})}});
}
}  // namespace

namespace {
// The line of `text` that starts with `prefix` ("" when none does).
std::string line_starting(const std::string& text, const std::string& prefix) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line))
    if (line.rfind(prefix, 0) == 0) return line;
  return "";
}
}  // namespace

TEST(Cli, HelpAndAGoodRun) {
  TempDir dir("cli_ok");
  auto help = run_binary("sae_train", "--help", dir);
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("--features"), std::string::npos);
  EXPECT_NE(help.out.find("--resume"), std::string::npos);
  auto ok = run_binary("sae_train", kTiny + " --out " + dir.str("run"), dir);
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  // config.json holds the options given.
  const Json cfg = Json::parse(sae::testing::read_file(dir.str("run/config.json")));
  EXPECT_EQ(cfg.at("features").as_int(), 16);
  EXPECT_EQ(cfg.at("steps").as_int(), 3);
  EXPECT_EQ(cfg.at("lr").as_number(), 1e-3);
  EXPECT_EQ(cfg.at("synthetic").at("d").as_int(), 8);
  EXPECT_EQ(cfg.at("synthetic").at("concepts").as_int(), 12);
  EXPECT_EQ(cfg.at("resolved").at("d_in").as_int(), 8);
  // The run the program wrote is the run its config.json describes: the same run in this process
  // writes the same weights and metrics, byte for byte, and the program's report has its numbers.
  TrainConfig again = TrainConfig::from_json(cfg);
  again.out = dir.str("again");
  const TrainResult r = train(again);
  EXPECT_EQ(sae::testing::read_file(dir.str("run/sae/sae_weights.safetensors")),
            sae::testing::read_file(dir.str("again/sae/sae_weights.safetensors")));
  EXPECT_EQ(sae::testing::read_file(dir.str("run/metrics.csv")), sae::testing::read_file(dir.str("again/metrics.csv")));
  const std::string report = format_report(r);
  for (const char* prefix : {"  final step: FVU", "  concept recovery: MMCS"}) {
    EXPECT_NE(line_starting(report, prefix), "") << prefix;
    EXPECT_EQ(line_starting(ok.out, prefix), line_starting(report, prefix)) << ok.out;
  }
  if (gnuplot_found()) {  // gnuplot drew the run's curves
    EXPECT_GT(fs::file_size(dir.str("run/figures/loss.png")), 1000u);
    EXPECT_GT(fs::file_size(dir.str("run/figures/sparsity.png")), 1000u);
  }
}

// What a program prints must reach its file: stdout on a full disk (/dev/full) is exit 1 with one
// line, for every program (run_main checks the flush), not an empty file and exit 0.
TEST(Cli, AStandardOutputThatCannotBeWrittenIsAnError) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  TempDir dir("cli_stdout_full");
  for (const char* program : {"sae_train", "sae_steer", "sae_eval", "sae_features", "sae_apply", "l1_sweep"}) {
    const std::string err = dir.str("err.txt");
    const int status = std::system((std::string(SAE_BIN_DIR) + "/" + program + " --help > /dev/full 2> " + err).c_str());
    ASSERT_TRUE(WIFEXITED(status)) << program;
    EXPECT_EQ(WEXITSTATUS(status), 1) << program;
    const std::string text = sae::testing::read_file(err);
    // (The reason is known only when the last flush failed: an earlier write's errno is gone.)
    EXPECT_EQ(text.rfind(std::string(program) + ": error: cannot write the standard output", 0), 0u) << text;
    EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1) << text;
  }
}

TEST(Cli, RunsWithoutGnuplotAndSaysSoOnce) {
  // A PATH without gnuplot: the runs succeed, the figures' data and scripts are written, and one
  // line of stdout (not a warning on stderr) says the PNGs were not drawn, however many SAEs.
  TempDir dir("cli_no_gnuplot");
  fs::create_directories(dir.str("empty_path"));
  const std::string path = std::getenv("PATH") ? std::getenv("PATH") : "";
  ::setenv("PATH", dir.str("empty_path").c_str(), 1);
  const bool found = gnuplot_found();
  auto r = run_binary("sae_train", kTiny + " --l1-list 0.5,1 --out " + dir.str("run"), dir);
  ::setenv("PATH", path.c_str(), 1);
  EXPECT_FALSE(found);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  const std::string note = "figures: not drawn (no gnuplot on PATH)";
  EXPECT_NE(r.out.find(note), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find(note), r.out.rfind(note)) << "the note more than once:\n" << r.out;
  for (const char* run : {"l1_0.5", "l1_1"}) {
    const std::string figures = dir.str(cat("run/", run, "/figures/"));
    EXPECT_TRUE(fs::exists(dir.str(cat("run/", run, "/sae/sae_weights.safetensors")))) << run;
    for (const char* file : {"loss.gp", "loss.dat", "sparsity.gp", "sparsity.dat"})
      EXPECT_TRUE(fs::exists(figures + file) && fs::file_size(figures + file) > 0) << run << " " << file;
    EXPECT_FALSE(fs::exists(figures + "loss.png")) << run;
  }
}

TEST(Cli, UsageErrorsExitTwo) {
  expect_error(kTiny + " --bogus 3", 2, "bogus");
  expect_error(kTiny + " --tf32", 2, "--tf32 was replaced by --precision tf32");
  expect_error(kTiny + " --precision fp16", 2, "--precision: expected fp32, tf32 or bf16, got 'fp16'");
  expect_error(kTiny + " --features 0", 2, "--features");
  expect_error(kTiny + " --features abc", 2, "features");
  expect_error(kTiny + " --l1 -1", 2, "--l1");
  expect_error(kTiny + " --lr 0", 2, "--lr");
  expect_error(kTiny + " --max-grad-norm -1", 2, "--max-grad-norm must be a finite number >= 0");
  expect_error(kTiny + " --steps 0", 2, "--steps");
  expect_error(kTiny + " --batch many", 2, "--batch");
  expect_error(kTiny + " --batch 0", 2, "--batch");
  expect_error(kTiny + " --normalize zscore", 2, "--normalize");
  expect_error(kTiny + " --device tpu", 2, "--device");
  expect_error(kTiny + " --batch 16 --normalize story", 2, "--normalize story");
  {  // a file whose name has a comma: read as two crosscoder sources (a misleading line about
     // normalisation, then "cannot open"); now said for what it is
    TempDir dir("cli_comma_path");
    fs::create_directories(dir.str("a,b"));
    write_npy(dir.str("a,b/x.npy"), Tensor::zeros(Shape{8, 4}));
    const auto r = run_binary("sae_train", "--data " + dir.str("a,b/x.npy") + " --steps 2 --out " + dir.str("run"), dir);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("a comma separates a crosscoder's sources, and this is one path"), std::string::npos) << r.err;
  }
  {  // said before the run's folder is made (it left a folder holding .lock and config.pending.json)
    TempDir dir("cli_story_batches");
    const auto r = run_binary("sae_train", kTiny + " --batch 16 --normalize story --out " + dir.str("run"), dir);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_FALSE(fs::exists(dir.str("run")));
  }
  expect_error(kTiny + " --synthetic-concepts 0", 2, "--synthetic-concepts");
  // Options of a model's text with --data: they were recorded and ignored (and --layer-list trained one
  // SAE per layer, each the same).
  expect_error(kTiny + " --hook blocks.1.attn.hook_z", 2, "--hook applies only to training from text");
  expect_error(kTiny + " --context-size 16", 2, "--context-size applies only to training from text");
  expect_error(kTiny + " --layer-list 1,2", 2, "--layer-list reads the model's blocks");
  // A Latin-1 file name: its bytes went raw into config.json and cfg.json, which no JSON reader read back.
  expect_error(kTrain + " --data caf\xe9.npy", 2, "'caf\\xe9.npy' is not UTF-8 text");
  expect_error(kTiny + " --data x.npy", 2, "--synthetic-d sets the synthetic generator: it applies only with --data "
                                           "synthetic, not x.npy");
  // Options that did nothing and were recorded as if they had.
  expect_error(kTiny + " --architecture topk --k 2 --auxk-coefficient 0 --auxk-k 3", 2,
               "--auxk-k sets AuxK's k_aux: AuxK is off (--auxk-coefficient 0)");
  expect_error(kTiny + " --lr-decay-steps 4", 2, "--lr-decay-steps 4 is more than --steps 3: the lr would start below --lr");
  expect_error(kTiny + " --lr-warmup-steps 5", 2, "--lr-warmup-steps 5 is more than --steps 3: the lr would never reach");
  expect_error(kTiny + " --l1-warmup-steps 3", 2, "--l1-warmup-steps 3 is not less than --steps 3: lambda would never reach");
  expect_error(" --profile demo --steps 50", 2, "--l1-warmup-steps 100 (set by the profile) is not less than --steps 50");
  {  // a list's SAEs share OUT: said before OUT and its sweep.json are made (a --resume then trained them)
    TempDir dir("cli_list_schedule");
    const auto r = run_binary("sae_train", kTiny + " --l1-list 1,2 --lr-warmup-steps 10 --out " + dir.str("run"), dir);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_FALSE(fs::exists(dir.str("run")));
  }
  // Out of range with statistics off: it was accepted and recorded.
  expect_error(kTiny + " --feature-stats-steps 0 --feature-stats-k -5", 2, "--feature-stats-k must be in [1, 1000]");
  // In range, with statistics off: recorded as if it shaped them (a resume giving another was refused).
  expect_error(kTiny + " --feature-stats-steps 0 --feature-stats-context 4", 2,
               "--feature-stats-context shapes the feature statistics, which --feature-stats-steps 0 does not gather");
  // --distribute launched alone trained the whole list in one process, without a word.
  expect_error(kTiny + " --l1-list 1,2 --distribute", 2, "--distribute spreads a list's SAEs over the ranks of mpirun");
  // It said "--k applies only to ...", naming an option the command line did not give.
  expect_error(kTiny + " --k-list 2,3", 2, "--k-list trains one SAE per k: --architecture standard has no k");
  // List items are read whole, as --l1 is: strtod had trained l1_16 and l1_32 for "0x10,0x20", and
  // l1_0 for 1e-400.
  expect_error(kTiny + " --l1-list 0x10,0x20", 2, "--l1-list: expected non-negative numbers separated by commas");
  expect_error(kTiny + " --l1-list 1e-400,1", 2, "--l1-list: '1e-400' is out of range");
  expect_error(kTiny + " --l1-list ' 1,2'", 2, "--l1-list: expected non-negative numbers");
  // config.json holds numbers as doubles: a seed past 2^53 was recorded rounded (the run not repeatable)
  expect_error(kTiny + " --seed 9007199254740993", 2, "--seed: expected an integer in [0, 2^53]");
  // Every integer option: config.json holds doubles, so a larger one was recorded rounded (a run of
  // --steps 2^63-1 could never be resumed: "the run is already at step ..." against a rounded end).
  expect_error(kTiny + " --steps 9223372036854775807", 2, "--steps: expected an integer of at most 2^53 in size");
  expect_error(kTiny + " --dead-window 9007199254740993", 2, "--dead-window: expected an integer of at most 2^53");
  expect_error(kTiny + " --architecture topk --k 9223372036854775807", 2, "--k: expected an integer");
  expect_error(kTiny + " --batch 9223372036854775807", 2, "--batch 9223372036854775807: token batches of at most 65536");
  expect_error(kTiny + " --batch 99999999999999999999", 2, "--batch: expected 'story' or a token count in [1, 65536]");
  // Above 65536 a token batch was refused as "story batches above 65536 ... use --batch N" (after
  // its buffers were allocated: std::bad_alloc at 2^31).
  expect_error(kTiny + " --batch 100000 --normalize dataset", 2, "--batch 100000: token batches of at most 65536 tokens");
  expect_error(kTiny + " --batch 2147483648 --normalize dataset", 2, "--batch 2147483648: token batches of at most 65536");
  expect_error(kTiny + " --synthetic-seed 18446744073709551615", 2, "--synthetic-seed: expected an integer in [0, 2^53]");
  expect_error(kTiny + " --init a --resume b", 2, "--init");
  expect_error(kTiny + " --profile nope", 2, "--profile");
  expect_error(kTiny + " stray", 2, "stray");
  expect_error(kTiny + " --unit-norm-decoder off", 2, "after --unit-norm-decoder: a flag or an option whose value "
                                                     "is optional takes its value with '=' (--unit-norm-decoder=off)");
  // A stray repeating a value option's value is only a stray (no "=" hint naming --out).
  TempDir dir("cli_stray");
  const auto repeated = run_binary("sae_train", kTiny + " --out " + dir.str("run") + " " + dir.str("run"), dir);
  EXPECT_EQ(repeated.exit_code, 2);
  EXPECT_NE(repeated.err.find("unexpected argument '" + dir.str("run") + "'"), std::string::npos) << repeated.err;
  EXPECT_EQ(repeated.err.find("after --out"), std::string::npos) << repeated.err;
#ifndef SAE_WITH_CUDA
  expect_error(kTiny + " --device cuda", 2, "--device cuda");
#endif
}

// The refusals of options without effect hold before a run trains: a run recorded before they
// existed (here: config.json edited to an --auxk-k beside --auxk-coefficient 0) still resumes, and a
// profile's generator options are left aside beside a file (--profile demo --data FILE trained before).
TEST(Cli, RefusalsOfOptionsWithoutEffectLeaveRecordedRunsAndProfilesAlone) {
  TempDir dir("cli_no_effect");
  auto made = run_binary("sae_train", kTiny + " --architecture topk --k 2 --auxk-coefficient 0 --checkpoint-every 2 --out " +
                                          dir.str("old"), dir);
  ASSERT_EQ(made.exit_code, 0) << made.err;
  const std::string config = dir.str("old/config.json");
  Json j = read_json_file(config);
  j["auxk_k"] = 3;
  std::ofstream(config) << j.dump(2);
  auto resumed = run_binary("sae_train", "--resume " + dir.str("old") + " --steps 5 --progress none", dir);
  EXPECT_EQ(resumed.exit_code, 0) << resumed.err;
  write_floats(dir.str("acts.safetensors"), 600, 8);
  auto demo = run_binary("sae_train", " --profile demo --data " + dir.str("acts.safetensors") +
                                          " --steps 2 --l1-warmup-steps 0 --features 16 --progress none --out " +
                                          dir.str("demo"), dir);
  EXPECT_EQ(demo.exit_code, 0) << demo.err;
}

// An allocation no size check caught (std::vector in an analysis program at a size beyond the
// machine) ends in one line saying what it is; it was a bare "std::bad_alloc".
TEST(CliDeathTest, OutOfMemoryIsOneLineExitOne) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(std::exit(sae::run_main("prog", 0, nullptr, []() -> int { throw std::bad_alloc(); })),
              ::testing::ExitedWithCode(1),
              "^prog: error: out of host memory \\(std::bad_alloc\\): the sizes this run asks for \\(features, batch, "
              "stories, statistics\\) need more memory than this machine gives it\n$");
}

TEST(Cli, DataErrorsExitOne) {
  TempDir dir("cli_data");
  expect_error(kTrain + " --data " + dir.str("missing.safetensors"), 1, "missing.safetensors");
  // truncated file: a valid header length pointing past the end
  {
    std::ofstream f(dir.str("trunc.safetensors"), std::ios::binary);
    uint64_t n = 1000;
    f.write(reinterpret_cast<const char*>(&n), 8);
    f << "{\"activations\":";
  }
  expect_error(kTrain + " --data " + dir.str("trunc.safetensors"), 1, "trunc.safetensors");
  // corrupt JSON header
  {
    std::ofstream f(dir.str("corrupt.safetensors"), std::ios::binary);
    const std::string h = "{not json}      ";
    uint64_t n = h.size();
    f.write(reinterpret_cast<const char*>(&n), 8);
    f << h;
  }
  expect_error(kTrain + " --data " + dir.str("corrupt.safetensors"), 1, "corrupt.safetensors");
  // wrong dtype and wrong shape
  write_raw_safetensors(dir.str("ints.safetensors"), {{"activations", "I32", {4, 2}, raw_bytes(std::vector<int32_t>(8, 1))}});
  expect_error(kTrain + " --data " + dir.str("ints.safetensors"), 1, "I32");
  write_raw_safetensors(dir.str("flat.safetensors"), {{"activations", "F32", {8}, raw_bytes(std::vector<float>(8, 1))}});
  expect_error(kTrain + " --data " + dir.str("flat.safetensors"), 1, "2-D");
  write_raw_safetensors(dir.str("noacts.safetensors"), {{"x", "F32", {4, 2}, raw_bytes(std::vector<float>(8, 1))}});
  expect_error(kTrain + " --data " + dir.str("noacts.safetensors"), 1, "activations");
  // story_lengths that do not sum to n_tokens
  write_raw_safetensors(dir.str("badlen.safetensors"),
                        {{"activations", "F32", {6, 2}, raw_bytes(std::vector<float>(12, 1))},
                         {"story_lengths", "I64", {2}, raw_bytes(std::vector<int64_t>{2, 3})}});
  expect_error(kTrain + " --data " + dir.str("badlen.safetensors"), 1, "story_lengths");
  // NaN and Inf in the data
  write_floats(dir.str("nan.safetensors"), 20, 8, NAN);
  expect_error(kTrain + " --data " + dir.str("nan.safetensors"), 1, "non-finite");
  write_floats(dir.str("inf.safetensors"), 20, 8, INFINITY);
  expect_error(kTrain + " --data " + dir.str("inf.safetensors"), 1, "non-finite");
  // .npy has no story boundaries: story batches are a usage error
  write_npy_4x2(dir.str("x.npy"), "<f4", raw_bytes(std::vector<float>(8, 0.5f)));
  expect_error(kTrain + " --data " + dir.str("x.npy"), 2, "--batch");
  // The first bytes say what a file is, not its name: X.NPY is read as .npy, an .npz archive is named
  // as one (both read as safetensors: "header length 193340853072 is above the 100 MB limit").
  fs::copy_file(dir.str("x.npy"), dir.str("X.NPY"));
  const auto upper = run_binary("sae_train", kTrain + " --batch 2 --normalize dataset --data " + dir.str("X.NPY") +
                                                 " --out " + dir.str("upper"), dir);
  EXPECT_EQ(upper.exit_code, 0) << upper.err;
  std::ofstream(dir.str("acts.npz"), std::ios::binary) << std::string("PK\x03\x04\x14\0\0\0\0\0", 10);
  expect_error(kTrain + " --batch 2 --normalize dataset --data " + dir.str("acts.npz"), 1,
               "acts.npz: a zip archive (.npz?): activations are one array");
  // float64 beyond float32's range: it read as "non-finite activation (inf) at token 2, column 1".
  std::vector<double> big(8, 0.5);
  big[5] = 1e39;
  write_npy_4x2(dir.str("big.npy"), "<f8", raw_bytes(big));
  expect_error(kTrain + " --batch 2 --normalize dataset --data " + dir.str("big.npy"), 1,
               "big.npy: row 2, column 1: float64 value 1e+39 is outside float32's range");
  // d mismatch with --init: an SAE for d=8 on data with d=6
  auto made = run_binary("sae_train", kTiny + " --out " + dir.str("init"), dir);
  ASSERT_EQ(made.exit_code, 0) << made.err;
  write_floats(dir.str("d6.safetensors"), 20, 6);
  expect_error(kTrain + " --data " + dir.str("d6.safetensors") + " --init " + dir.str("init/sae"), 1, "d_in");
  expect_error(kTiny + " --init " + dir.str("nowhere"), 1, "nowhere");
  expect_error(kTiny + " --resume " + dir.str("nowhere"), 1, "nowhere");
}

// A fresh run that fails before it begins takes back what it added: into a folder the user made, its
// config.pending.json (the folder and its .lock stay); over a run with --overwrite, nothing of the old
// run is touched. Folders it made itself go, parents included, once empty.
TEST(Cli, AFreshRunThatFailsLeavesTheFolderAsItWas) {
  TempDir dir("cli_no_trace");
  fs::create_directories(dir.str("mine"));
  std::ofstream(dir.str("mine/notes.txt")) << "kept";
  const std::string missing = " --data " + dir.str("missing.npy");
  auto r = run_binary("sae_train", kTrain + missing + " --out " + dir.str("mine"), dir);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(fs::exists(dir.str("mine/notes.txt")));
  EXPECT_FALSE(fs::exists(dir.str("mine/config.pending.json")));
  for (const char* out : {"a/b/c", "a/b/c/", "a/./b//c", "p/../a/b"}) {  // "a/b/c/" had left a/ and a/b/
    r = run_binary("sae_train", kTrain + missing + " --out " + dir.str(out), dir);
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_FALSE(fs::exists(dir.str("a"))) << out;
    EXPECT_FALSE(fs::exists(dir.str("p"))) << out;
  }
  // A failed --overwrite leaves what it would replace: a run's files; a list's SAEs and its sweep.json
  // (which it had rewritten, so `--resume OUT` no longer continued the SAEs still there).
  auto failed_overwrite_keeps = [&](const std::string& folder, const std::string& made_by, const std::string& failing,
                                    const std::string& record) {
    ASSERT_EQ(run_binary("sae_train", kTiny + made_by + " --out " + dir.str(folder), dir).exit_code, 0);
    const std::string before = read_file(dir.str(folder + "/" + record));
    const auto failed = run_binary("sae_train", kTrain + missing + failing + " --overwrite --out " + dir.str(folder), dir);
    EXPECT_EQ(failed.exit_code, 1) << failed.err;
    EXPECT_EQ(read_file(dir.str(folder + "/" + record)), before);
    EXPECT_FALSE(fs::exists(dir.str(folder + "/config.pending.json")));
  };
  failed_overwrite_keeps("old", "", "", "config.json");
  EXPECT_TRUE(fs::exists(dir.str("old/sae/sae_weights.safetensors")));
  failed_overwrite_keeps("list", " --l1-list 1,2", " --l1-list 3,4", "sweep.json");
  EXPECT_FALSE(fs::exists(dir.str("list/l1_3")));
  r = run_binary("sae_train", " --resume " + dir.str("list") + " --steps 4 --progress none", dir);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // --resume of the failed run's folder: nothing there to continue.
  r = run_binary("sae_train", " --resume " + dir.str("mine") + " --progress none", dir);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  // A failed fresh list into a folder it made: gone again.
  r = run_binary("sae_train", kTrain + missing + " --l1-list 3,4 --out " + dir.str("new/list/"), dir);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_FALSE(fs::exists(dir.str("new")));
}

TEST(Cli, KillNineLeavesOnlyLoadableCheckpoints) {
  TempDir dir("kill9");
  const std::string out = dir.str("run");
  const std::string cmd = std::string(SAE_BIN_DIR) + "/sae_train" + kTiny +
                          " --steps 100000000 --checkpoint-every 3 --out " + out + " > /dev/null 2>&1 & echo $!";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  int pid = 0;
  ASSERT_EQ(fscanf(p, "%d", &pid), 1);
  pclose(p);
  // Let it write a few checkpoints, then kill it without warning at an arbitrary moment.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!fs::exists(out + "/checkpoints/step_30") && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  std::this_thread::sleep_for(std::chrono::milliseconds(37));
  ::kill(pid, SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ASSERT_TRUE(fs::exists(out + "/checkpoints/step_30"));
  int loaded = 0;
  int64_t newest = 0;
  for (const auto& entry : fs::directory_iterator(out + "/checkpoints")) {
    const std::string name = entry.path().filename().string();
    if (name.find(".tmp") != std::string::npos || name.find(".old") != std::string::npos) continue;
    Checkpoint c = load_checkpoint(entry.path().string(), Device::CPU);  // throws if torn
    ASSERT_TRUE(c.state.has_value()) << name;
    EXPECT_EQ("step_" + std::to_string(c.state->step), name);
    newest = std::max(newest, c.state->step);
    ++loaded;
  }
  EXPECT_GE(loaded, 10);
  // --out elsewhere or --overwrite beside --resume would be ignored: refused, the run untouched
  const std::string steps = std::to_string(newest + 5);
  for (const auto& [extra, mention] :
       {std::pair<std::string, std::string>{" --out " + dir.str("fork"), "continues " + out + " in place"},
        {" --overwrite", "--overwrite and --resume"}}) {
    const auto refused = run_binary("sae_train", "--resume " + out + " --steps " + steps + extra, dir);
    EXPECT_EQ(refused.exit_code, 2) << refused.err;
    EXPECT_NE(refused.err.find(mention), std::string::npos) << refused.err;
  }
  EXPECT_FALSE(fs::exists(dir.str("fork")));
  // and the run resumes from the newest one
  auto resumed = run_binary("sae_train", "--resume " + out + " --steps " + steps + " --progress none --device cpu", dir);
  EXPECT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("trained " + steps + " steps"), std::string::npos) << resumed.out;
}

TEST(Cli, RunsThatTrainOtherwiseThanAPeerUserMeantAreWarned) {
  // A penalised unit without its penalty (SAELens's coefficients default to 1), a dead window
  // shorter than a batch (SAELens's window counts steps), and a story-normalised SAE, which SAELens
  // does not load, are said; with --l1, a window of a batch or more and dataset scale nothing is.
  TempDir dir("cli_peer_warnings");
  const std::string tiny = kTiny + " --progress none";
  auto jump = run_binary("sae_train", tiny + " --architecture jumprelu --out " + dir.str("jump"), dir);
  ASSERT_EQ(jump.exit_code, 0) << jump.err;
  EXPECT_NE(jump.err.find("sae_train: warning: --architecture jumprelu with --l1 0 (the default) and no --target-l0 "
                          "trains without its sparsity penalty"),
            std::string::npos)
      << jump.err;
  EXPECT_NE(jump.out.find("sae/ (SAELens's layout; SAELens does not load per-story normalisation"), std::string::npos)
      << jump.out;
  auto window = run_binary("sae_train", tiny + " --normalize dataset --batch 16 --dead-window 10 --out " +
                                            dir.str("window"), dir);
  ASSERT_EQ(window.exit_code, 0) << window.err;
  EXPECT_NE(window.err.find("sae_train: warning: --dead-window 10 is less than one batch (16 tokens)"),
            std::string::npos)
      << window.err;
  EXPECT_NE(window.out.find("sae/ (SAELens format)"), std::string::npos) << window.out;
  // --l1 0 given says the user means it.
  auto meant = run_binary("sae_train", tiny + " --architecture jumprelu --l1 0 --out " + dir.str("meant"), dir);
  ASSERT_EQ(meant.exit_code, 0) << meant.err;
  EXPECT_EQ(meant.err.find("sparsity penalty"), std::string::npos) << meant.err;
  // A transcoder of a unit SAELens has no transcoder class for is not called SAELens format.
  TrainConfig transcoder;
  transcoder.data = "x.npy";
  transcoder.target_data = "y.npy";
  transcoder.architecture = "topk";
  transcoder.normalize = Normalization::None;
  EXPECT_EQ(saelens_note(transcoder), "SAELens's layout; SAELens has no topk transcoder class: docs/architectures.md");
  transcoder.architecture = "jumprelu";
  EXPECT_EQ(saelens_note(transcoder), "SAELens format");
  auto quiet = run_binary("sae_train", tiny + " --architecture gated --l1 0.5 --normalize dataset --batch 16 "
                                           "--dead-window 16 --out " + dir.str("quiet"), dir);
  ASSERT_EQ(quiet.exit_code, 0) << quiet.err;
  EXPECT_EQ(quiet.err.find("warning"), std::string::npos) << quiet.err;
}

TEST(Cli, CosineSchedulesFollowSaeLensAndRefuseWhatTheyCannotDo) {
  // The lr logged each step is lr_at's (which tests/sae/train/test_train_config.cpp holds to SAELens's
  // own schedulers): a cosine from --lr 1e-3 to the default lr / 10 over the steps after a warm-up of 2.
  TempDir dir("cli_cosine");
  const auto r = run_binary("sae_train", kTiny + " --steps 10 --log-every 1 --lr-warmup-steps 2 --lr-schedule cosine "
                                                "--progress none --out " + dir.str("run"), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::istringstream csv(sae::testing::read_file(dir.str("run/metrics.csv")));
  std::string line;
  std::getline(csv, line);
  std::vector<std::string> header;
  for (std::istringstream cells(line); std::getline(cells, line, ',');) header.push_back(line);
  const size_t lr_column = std::find(header.begin(), header.end(), "lr") - header.begin();
  ASSERT_LT(lr_column, header.size());
  int64_t step = 0;
  while (std::getline(csv, line)) {
    ++step;
    std::vector<std::string> cells;
    for (std::istringstream row(line); std::getline(row, line, ',');) cells.push_back(line);
    const double want = step <= 2 ? 1e-3 * step / 2.0
                                  : 1e-4 + (1e-3 - 1e-4) * (1 + std::cos(M_PI * double(step - 3) / 8.0)) / 2;
    EXPECT_NEAR(std::stod(cells.at(lr_column)), want, 1e-9) << "step " << step;
  }
  EXPECT_EQ(step, 10);
  expect_error(kTiny + " --lr-end 1e-5", 2, "--lr-end applies to --lr-schedule cosine or cosine-restarts");
  expect_error(kTiny + " --lr-schedule cosine --lr-cycles 2", 2, "--lr-cycles applies to --lr-schedule cosine-restarts");
  expect_error(kTiny + " --lr-schedule linear", 2, "--lr-schedule: expected constant, cosine or cosine-restarts");
  expect_error(kTiny + " --lr-schedule cosine-restarts --lr-cycles 4 --lr-warmup-steps 1", 2,
               "needs at least 4 step(s) between the warm-up and the decay");
  expect_error(kTiny + " --lr-schedule cosine --lr-end 0 --lr-decay-steps 1", 2, "would decay from 0 to 0");
  expect_error(kTiny + " --lr-schedule cosine --lr-end -2", 2, "--lr-end must be a finite number >= 0");
  expect_error(kTiny + " --lr-schedule cosine --lr-end 0.01 --lr-decay-steps 1", 2,
               "--lr-end 0.01 is above --lr 0.001: the cosine would rise to it before the decay");
  expect_error(kTiny + " --lr-schedule COSINE --lr-end -2", 2, "--lr-end must be");  // SAELens's names in any case
  // A resume that shortens the run is held to the same rules (a cosine-restarts period of 0 steps was
  // a division by zero, SIGFPE), before any of the run's later checkpoints is set aside.
  const auto restarts = run_binary("sae_train", kTiny + " --steps 12 --checkpoint-every 2 --lr-warmup-steps 2 "
                                                        "--lr-schedule cosine-restarts --lr-cycles 4 --progress none "
                                                        "--out " + dir.str("restarts"), dir);
  ASSERT_EQ(restarts.exit_code, 0) << restarts.err;
  const auto shorter = run_binary("sae_train", "--resume " + dir.str("restarts/checkpoints/step_2") +
                                                   " --steps 4 --progress none", dir);
  EXPECT_EQ(shorter.exit_code, 2) << shorter.err;
  EXPECT_NE(shorter.err.find("needs at least 4 step(s) between the warm-up and the decay: --steps 4"),
            std::string::npos)
      << shorter.err;
  EXPECT_EQ(std::count(shorter.err.begin(), shorter.err.end(), '\n'), 1) << shorter.err;
  EXPECT_TRUE(fs::exists(dir.path / "restarts" / "checkpoints" / "step_10"));
  EXPECT_FALSE(fs::exists(dir.path / "restarts" / "superseded"));
  // Ending a run at its newest checkpoint trains nothing: its schedules are not held to that length
  // (a decay of 6 steps is longer than 4, and this was refused with the rules above).
  const auto decayed = run_binary("sae_train", kTiny + " --steps 12 --checkpoint-every 4 --lr-decay-steps 6 "
                                                       "--progress none --out " + dir.str("decayed"), dir);
  ASSERT_EQ(decayed.exit_code, 0) << decayed.err;
  fs::remove_all(dir.path / "decayed" / "sae");
  fs::remove_all(dir.path / "decayed" / "checkpoints" / "step_8");
  const auto ended = run_binary("sae_train", "--resume " + dir.str("decayed") + " --steps 4 --progress none", dir);
  EXPECT_EQ(ended.exit_code, 0) << ended.err;
  EXPECT_NE(ended.out.find("was trained to step 4"), std::string::npos) << ended.out;
}

TEST(Cli, ExpansionFactorSetsTheFeaturesFromTheWidthRead) {
  // --expansion-factor E: F = E d, d the generator's (8) or a file's width (3), recorded as features.
  TempDir dir("cli_expansion");
  const std::string synthetic = kTiny.substr(0, kTiny.find(" --features")) + " --lr 1e-3 --steps 2 --progress none";
  auto r = run_binary("sae_train", synthetic + " --expansion-factor 4 --out " + dir.str("run"), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json cfg = Json::parse(sae::testing::read_file(dir.str("run/config.json")));
  EXPECT_EQ(cfg.at("features").as_int(), 32);
  EXPECT_EQ(cfg.at("expansion_factor").as_int(), 4);
  r = run_binary("sae_train", "--resume " + dir.str("run") + " --steps 3", dir);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  write_floats(dir.str("x.safetensors"), 40, 3);
  r = run_binary("sae_train", "--data " + dir.str("x.safetensors") + " --expansion-factor 5 --steps 2 --progress none "
                              "--normalize dataset --batch 8 --out " + dir.str("file"), dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Json::parse(sae::testing::read_file(dir.str("file/config.json"))).at("features").as_int(), 15);
  expect_error(kTiny + " --expansion-factor 4", 2, "give --features or --expansion-factor, not both");
  expect_error(synthetic + " --expansion-factor -1", 2, "--expansion-factor must be >= 1");
  expect_error(synthetic + " --expansion-factor 2000000", 2, "is more than 1e7 features");
  expect_error(synthetic + " --expansion-factor 2 --init " + dir.str("run/sae"), 2,
               "--expansion-factor with --init: the SAE it starts from sets the width");
  // The unit's checks name --features: said to be the expansion's here.
  expect_error(synthetic + " --expansion-factor 2 --architecture topk --k 20", 2,
               "at most --features), got 20 (--features here is --expansion-factor 2 x d = 16)");
}
