// Ctrl-C and a job scheduler's SIGTERM (sae/train/interrupt.h): sae_train, stopped by the signal in
// the middle of its loop, saves the step it reached as checkpoints/step_S of every SAE, says so in one
// line and exits with 128 + the signal; `--resume` then goes on from step S, and the run ends with the
// weights and metrics.csv of a run never stopped. The signal comes from outside, at whatever step the
// run has reached (after it logged two rows), as a user's or a scheduler's would.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>
#include <vector>

#include "tests/util/program_run.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::read_file;
using sae::testing::run_program;
using sae::testing::TempDir;
namespace fs = std::filesystem;

namespace {

const char* const kTiny =
    " --synthetic-d 8 --synthetic-concepts 12 --synthetic-story-concepts 2 --synthetic-story-active 1"
    " --synthetic-stories 50 --synthetic-mean-length 8 --synthetic-active 2 --features 16 --lr 1e-3"
    " --progress none --device cpu --threads 1 --log-every 7 --checkpoint-every 1000000";

int lines_in(const std::string& path) {
  std::ifstream in(path);
  int lines = 0;
  for (std::string line; std::getline(in, line);) ++lines;
  return lines;
}

struct Stopped {
  int status = -1;   // the exit status (128 + signal when a signal ended it)
  std::string err;
};

// Starts sae_train `args` (signals at their defaults, as a terminal's foreground job has them; `env`
// before it), waits until `csv` has two logged rows, sends `signal` and waits for the process (at most
// 60 s).
Stopped run_and_signal(const std::string& args, const std::string& csv, int signal, const TempDir& dir,
                       const std::string& env = "") {
  const std::string err_file = dir.str("stopped.err");
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::signal(SIGINT, SIG_DFL);
    ::signal(SIGTERM, SIG_DFL);
    const std::string command = env + " " + SAE_BIN_DIR + "/sae_train " + args + " > /dev/null 2> " + err_file;
    ::execl("/bin/sh", "sh", "-c", ("exec env " + command).c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  Stopped r;
  const auto begin = std::chrono::steady_clock::now();
  while (lines_in(csv) < 3 && std::chrono::steady_clock::now() - begin < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ::kill(pid, signal);
  int status = 0;
  for (int i = 0; i < 3000 && ::waitpid(pid, &status, WNOHANG) == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (::waitpid(pid, &status, WNOHANG) == 0 && !WIFEXITED(status) && !WIFSIGNALED(status)) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
  }
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.err = read_file(err_file);
  return r;
}

}  // namespace

TEST(Interrupt, ASignalSavesTheStepReachedAndResumeEndsAsAnUnstoppedRun) {
  for (const int signal : {SIGTERM, SIGINT}) {
    const std::string name = signal == SIGTERM ? "SIGTERM" : "SIGINT";
    TempDir dir("interrupt_" + name);
    const std::string run = dir.str("run");
    const Stopped stopped =
        run_and_signal(std::string(kTiny) + " --steps 100000000 --out " + run, run + "/metrics.csv", signal, dir);
    ASSERT_EQ(stopped.status, 128 + signal) << stopped.err;
    std::smatch m;
    const std::regex line("^sae_train: stopped by " + name + " after step ([0-9]+) of 100000000: saved " + run +
                          "/checkpoints/step_([0-9]+) \\(--resume " + run + " goes on from there\\)\n$");
    ASSERT_TRUE(std::regex_match(stopped.err, m, line)) << stopped.err;
    ASSERT_EQ(m[1].str(), m[2].str());
    const int64_t step = std::stoll(m[1].str());
    EXPECT_GE(step, 14);  // two rows were logged before the signal
    EXPECT_TRUE(fs::exists(run + "/checkpoints/step_" + m[1].str() + "/training_state.safetensors"));
    EXPECT_FALSE(fs::exists(run + "/sae"));

    const int64_t end = step + 23;
    const auto resumed = run_program("sae_train", cat("--resume ", run, " --steps ", end), dir);
    ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
    const auto straight = run_program("sae_train", cat(kTiny, " --steps ", end, " --out ", dir.str("straight")), dir);
    ASSERT_EQ(straight.exit_code, 0) << straight.err;
    EXPECT_EQ(read_file(run + "/sae/sae_weights.safetensors"), read_file(dir.str("straight/sae/sae_weights.safetensors")))
        << name;
    EXPECT_EQ(read_file(run + "/metrics.csv"), read_file(dir.str("straight/metrics.csv"))) << name;
  }
}

TEST(Interrupt, EverySaeOfAListIsSaved) {
  TempDir dir("interrupt_list");
  const std::string out = dir.str("sweep");
  const Stopped stopped = run_and_signal(std::string(kTiny) + " --steps 100000000 --l1-list 0.1,0.2 --out " + out,
                                         out + "/l1_0.1/metrics.csv", SIGTERM, dir);
  ASSERT_EQ(stopped.status, 128 + SIGTERM) << stopped.err;
  std::smatch m;
  const std::regex line("^sae_train: stopped by SIGTERM after step ([0-9]+) of 100000000: saved checkpoints/step_\\1 "
                        "in each of the 2 run folders under " + out + " \\(--resume " + out +
                        " goes on from there\\)\n$");
  ASSERT_TRUE(std::regex_match(stopped.err, m, line)) << stopped.err;
  for (const char* member : {"l1_0.1", "l1_0.2"})
    EXPECT_TRUE(fs::exists(out + "/" + member + "/checkpoints/step_" + m[1].str() + "/training_state.safetensors"))
        << member;
  const auto resumed = run_program("sae_train", cat("--resume ", out, " --steps ", std::stoll(m[1].str()) + 5), dir);
  EXPECT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_TRUE(fs::exists(out + "/l1_0.2/sae/sae_weights.safetensors"));
}

TEST(Interrupt, ASignalIgnoredAtTheStartStaysIgnored) {
  // A background job of a script starts with SIGINT ignored: the run must not take it as a stop.
  TempDir dir("interrupt_ignored");
  const std::string run = dir.str("run");
  const std::string command = std::string("trap '' INT; ") + SAE_BIN_DIR + "/sae_train" + kTiny +
                              " --steps 100000 --out " + run + " > /dev/null 2>&1 & pid=$!; "
                              "while [ ! -s " + run + "/metrics.csv ]; do sleep 0.02; done; "
                              "kill -INT $pid || exit 99; wait $pid";  // 99: it had ended before the signal
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(lines_in(run + "/metrics.csv"), 1 + 100000 / 7 + 1);  // every row: it ran to its end
  EXPECT_TRUE(fs::exists(run + "/sae/sae_weights.safetensors"));
}

TEST(Interrupt, ASecondSignalOfEitherKindEndsTheProcessAtOnce) {
  // SIGTERM, then SIGINT while the checkpoint it asked for is being saved (a scheduler's signal, then
  // a user's Ctrl-C): the process ends by the SIGINT, without its line; the checkpoints already
  // complete are kept (here: none), nothing half-written is left in place.
  TempDir dir("interrupt_twice");
  const std::string run = dir.str("run");
  // (mid-save: raised once the checkpoint's weights are written in its temporary folder)
  const Stopped stopped = run_and_signal(std::string(kTiny) + " --steps 100000000 --out " + run, run + "/metrics.csv",
                                         SIGTERM, dir, "SAE_TEST_SIGNAL_AT=mid-save:INT");
  EXPECT_EQ(stopped.status, 128 + SIGINT) << stopped.err;
  EXPECT_EQ(stopped.err.find("stopped by"), std::string::npos) << stopped.err;
  std::vector<std::string> left;
  for (const auto& entry : fs::directory_iterator(run + "/checkpoints")) left.push_back(entry.path().filename().string());
  ASSERT_EQ(left.size(), 1u);  // the save under way, under its temporary name only
  EXPECT_EQ(left[0].rfind("step_", 0), 0u) << left[0];
  EXPECT_NE(left[0].find(".tmp"), std::string::npos) << left[0];
  EXPECT_TRUE(fs::exists(run + "/checkpoints/" + left[0] + "/sae_weights.safetensors"));
  EXPECT_FALSE(fs::exists(run + "/checkpoints/" + left[0] + "/training_state.safetensors"));
}

TEST(Interrupt, ASignalAtTheEndOfARunKeepsItsFinalModelAndStopsWhatWouldFollow) {
  // At the final save: the run's final model is saved (not evaluated, not drawn), the line says so,
  // and the exit status is the signal's; --resume then trains nothing, draws the figures, exits 0.
  TempDir dir("interrupt_end");
  const std::string run = dir.str("run");
  auto stopped = run_program("sae_train", std::string(kTiny) + " --steps 40 --out " + run, dir,
                             "SAE_TEST_SIGNAL_AT=final-save:TERM");
  EXPECT_EQ(stopped.exit_code, 128 + SIGTERM) << stopped.err;
  EXPECT_EQ(stopped.err, "sae_train: stopped by SIGTERM at the end of step 40 of 40: saved " + run +
                             "/sae (--resume " + run + " goes on from there, and draws the figures)\n");
  EXPECT_TRUE(fs::exists(run + "/sae/training_state.safetensors"));
  EXPECT_FALSE(fs::exists(run + "/figures/loss.png"));
  auto again = run_program("sae_train", "--resume " + run, dir);
  EXPECT_EQ(again.exit_code, 0) << again.err;
  EXPECT_TRUE(fs::exists(run + "/figures/loss.png"));
  // A list trained in one pass: the second SAE's final save is not skipped, and nothing follows.
  const std::string out = dir.str("sweep");
  auto list = run_program("sae_train", std::string(kTiny) + " --steps 40 --l1-list 0.1,0.2 --out " + out, dir,
                          "SAE_TEST_SIGNAL_AT=final-save:INT");
  EXPECT_EQ(list.exit_code, 128 + SIGINT) << list.err;
  EXPECT_TRUE(fs::exists(out + "/l1_0.1/sae/training_state.safetensors"));
  EXPECT_TRUE(fs::exists(out + "/l1_0.2/sae/training_state.safetensors"));
  EXPECT_NE(list.err.find("(--resume " + out + " goes on from there, and draws the figures)"), std::string::npos)
      << list.err;
}
