// Killed at every rename: each program that writes a run, a study or a
// cache is killed with SIGKILL right after its N-th rename(2) (every file and folder is put in place
// by one; tests/shim/kill_after_rename.cpp, loaded with LD_PRELOAD), for every N of an
// uninterrupted run, and then the retry a job scheduler would make is run:
//   sae_train (one SAE, and --l1-list: several SAEs trained together) then `sae_train --resume RUN
//   --steps N` with the same N; recon_vs_f (a study) then the same command; sae_cache then the same
//   command, after deleting and truncating shards it had written.
// The retry must exit 0, and leave every output an uninterrupted run leaves, byte for byte (files
// whose contents hold times are only required to exist), and nothing else; a second retry must
// find nothing to do.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <thread>
#include <atomic>

#include "io/json.h"
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

std::string shim_env(const std::string& program, const std::string& log, int64_t kill_after) {
  std::string env = cat("LD_PRELOAD=", shell_quote(SAE_KILL_SHIM), " SAE_RENAME_SHIM_PROGRAM=", program,
                        " ASAN_OPTIONS=verify_asan_link_order=0");
  if (!log.empty()) env += " SAE_RENAME_LOG=" + shell_quote(log);
  if (kill_after > 0) env += cat(" SAE_KILL_AFTER_RENAME=", kill_after);
  return env;
}

// Every file under `dir` (path relative to it -> bytes), but the run lock and the TensorBoard event
// files (a resumed run adds one beside the old); `event_files` counts those.
std::map<std::string, std::string> files_under(const fs::path& dir, int* event_files = nullptr) {
  std::map<std::string, std::string> files;
  if (event_files) *event_files = 0;
  if (!fs::exists(dir)) return files;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    const std::string name = fs::relative(entry.path(), dir).string();
    if (entry.path().filename() == ".lock" || entry.path().filename() == ".study.lock") continue;  // pids
    if (name.find("tensorboard/") != std::string::npos) {
      if (event_files) ++*event_files;
      continue;
    }
    files[name] = read_file(entry.path().string());
  }
  return files;
}

std::vector<std::string> lines_of(const std::string& path) {
  std::vector<std::string> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

struct CrashCase {
  std::string program;
  std::string first;            // the command line of the run (its output folder: "out", relative)
  std::string retry;            // the retry a job scheduler would make
  std::set<std::string> timed;  // files whose contents hold times: they must exist, any contents
  int runs = 1;                 // run folders with a tensorboard/ (each needs an event file)
  // After the kill, before the retry (sae_cache: damage shards already written).
  std::function<void(const fs::path& out)> damage;
};

// The files of `got` against those of an uninterrupted run.
void expect_same_outputs(const std::map<std::string, std::string>& want, const std::map<std::string, std::string>& got,
                         const std::set<std::string>& timed) {
  for (const auto& [name, bytes] : want) {
    auto it = got.find(name);
    if (it == got.end()) {
      ADD_FAILURE() << "missing " << name;
      continue;
    }
    const std::string& file = name;  // clang 14 cannot capture a structured binding in a lambda
    const bool time_dependent = std::any_of(timed.begin(), timed.end(), [&file](const std::string& t) {
      const std::string& name = file;
      return name == t || (name.size() > t.size() && name.compare(name.size() - t.size(), t.size(), t) == 0 &&
                           name[name.size() - t.size() - 1] == '/');
    });
    if (!time_dependent) {
      EXPECT_TRUE(it->second == bytes) << name << " differs from the uninterrupted run's";
    }
  }
  for (const auto& [name, bytes] : got)
    if (!want.count(name)) ADD_FAILURE() << "left behind: " << name;
}

// What happened at one kill point.
struct Outcome {
  CommandResult killed, retry;
  std::map<std::string, std::string> files;
  int event_files = 0;
};

void expect_every_kill_recovers(const CrashCase& c) {
  TempDir reference("kill_reference");
  const std::string log = reference.str("renames.log");
  const CommandResult clean = run_program(c.program, c.first, reference, shim_env(c.program, log, 0), 300, reference.str());
  ASSERT_EQ(clean.exit_code, 0) << clean.err;
  const std::vector<std::string> renames = lines_of(log);
  ASSERT_GE(renames.size(), 5u) << "the shim saw no renames: was it loaded?";
  int event_files = 0;
  const std::map<std::string, std::string> want = files_under(reference.str("out"), &event_files);
  EXPECT_EQ(event_files, c.runs);
  // Each kill point in a folder of its own, four at a time (the programs mostly wait for fsync).
  std::vector<Outcome> outcomes(renames.size());
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next++; i < renames.size(); i = next++) {
      TempDir dir("kill_at_rename");
      Outcome& o = outcomes[i];
      o.killed = run_program(c.program, c.first, dir, shim_env(c.program, "", int64_t(i + 1)), 300, dir.str());
      if (o.killed.exit_code != 137) continue;
      if (c.damage) c.damage(dir.str("out"));
      o.retry = run_program(c.program, c.retry, dir, "", 300, dir.str());
      o.files = files_under(dir.str("out"), &o.event_files);
      if (i + 1 == renames.size()) {  // and once more: nothing is missing, nothing is done, still exit 0
        const CommandResult again = run_program(c.program, c.retry, dir, "", 300, dir.str());
        if (again.exit_code != 0 || files_under(dir.str("out")) != o.files) o.retry.exit_code = 1000 + again.exit_code;
      }
    }
  };
  std::vector<std::thread> workers;
  for (int t = 0; t < 4; ++t) workers.emplace_back(work);
  for (std::thread& t : workers) t.join();
  for (size_t i = 0; i < renames.size(); ++i) {
    SCOPED_TRACE(cat(c.program, " killed right after rename ", renames[i]));
    const Outcome& o = outcomes[i];
    ASSERT_EQ(o.killed.exit_code, 137) << "the run should have died at that rename\n" << o.killed.err;
    ASSERT_EQ(o.retry.exit_code, 0) << "(1000 + code: a second retry failed or changed files)\n" << o.retry.err;
    expect_same_outputs(want, o.files, c.timed);
    EXPECT_GE(o.event_files, c.runs);
    if (::testing::Test::HasFailure()) return;  // one failing kill point tells the story
  }
}

// Tiny synthetic runs: 8 steps, a checkpoint at step 4, every step logged, feature statistics over
// every step (the window, 1000 steps, covers the whole run).
const std::string kTinyData =
    " --synthetic-d 8 --synthetic-concepts 12 --synthetic-story-concepts 2 --synthetic-story-active 1"
    " --synthetic-stories 50 --synthetic-mean-length 8 --synthetic-active 2 --lr 1e-3";
const std::string kTinyRun = kTinyData + " --features 16";
const std::string kControls = " --steps 8 --checkpoint-every 4 --log-every 1 --progress none --device cpu";

}  // namespace

// One SAE: the final model's feature statistics and the figures were lost by a kill after the
// last checkpoint, and the retry exited 2 ("the run is already at step 8").
TEST(KillAtRename, ARunResumedAfterAKillAtAnyRenameEndsAsAnUninterruptedOne) {
  expect_every_kill_recovers({"sae_train", kTinyRun + kControls + " --l1 0.3 --out out",
                              "--resume out" + kControls, {}, 1, {}});
}

// Several SAEs on one stream (--l1-list): a kill between their final saves left one finished and
// one at its checkpoint, which the retry refused to train together.
TEST(KillAtRename, SaesTrainedTogetherResumeAfterAKillAtAnyRename) {
  expect_every_kill_recovers({"sae_train", kTinyRun + kControls + " --l1-list 0.1,0.3 --out out",
                              "--resume out" + kControls, {}, 2, {}});
}

// A study (recon_vs_f, two widths trained together): the retry is the same command.
TEST(KillAtRename, AStudyRunAgainAfterAKillAtAnyRenameEndsAsAnUninterruptedOne) {
  const std::string command = kTinyData + kControls + " --l1 0.3 --features-list 8,16 --out out";
  expect_every_kill_recovers({"recon_vs_f", command, command,
                              {"summary.json", "summary.csv", "summary.md"}, 2, {}});
}

namespace {
const std::string kCache = cat("--model ", shell_quote(eval_ref("model")), " --text ", shell_quote(eval_ref("stories.txt")),
                               " --shard-tokens 48 --long-stories split --progress none --device cpu --out out");
// Shards a killed sae_cache had written: the first deleted, the second cut short.
void damage_shards(const fs::path& out) {
  std::vector<fs::path> shards;
  if (fs::exists(out))
    for (const auto& entry : fs::directory_iterator(out))
      if (entry.path().filename().string().rfind("shard_", 0) == 0) shards.push_back(entry.path());
  std::sort(shards.begin(), shards.end());
  if (shards.size() > 0) fs::remove(shards[0]);
  if (shards.size() > 1) fs::resize_file(shards[1], fs::file_size(shards[1]) / 2);
}
}  // namespace

// sae_cache killed at any rename, then shards it had written deleted and truncated: run again, it
// reported a broken cache complete; now it checks them and rewrites the bad ones.
TEST(KillAtRename, ACacheKilledAtAnyRenameAndDamagedIsRewrittenWhole) {
  expect_every_kill_recovers({"sae_cache", kCache, kCache, {}, 0, damage_shards});
}

// A complete cache with a shard deleted or truncated was reported complete; now those shards are
// written again (the same bytes), and a cache that cannot say where a shard's text begins (written
// before that was recorded) is refused with one line saying what to do.
TEST(KillAtRename, ACompleteCacheWithADamagedShardIsRepaired) {
  TempDir dir("cache_repair");
  ASSERT_EQ(run_program("sae_cache", kCache, dir, "", 300, dir.str()).exit_code, 0);
  const std::map<std::string, std::string> want = files_under(dir.str("out"));
  ASSERT_GE(want.size(), 4u);
  fs::resize_file(dir.str("out/shard_00001.safetensors"), 100);
  fs::remove(dir.str("out/shard_00002.safetensors"));
  const CommandResult repaired = run_program("sae_cache", kCache, dir, "", 300, dir.str());
  ASSERT_EQ(repaired.exit_code, 0) << repaired.err;
  EXPECT_NE(repaired.out.find("rewrote out/shard_00001.safetensors"), std::string::npos) << repaired.out;
  EXPECT_NE(repaired.out.find("rewrote out/shard_00002.safetensors"), std::string::npos) << repaired.out;
  expect_same_outputs(want, files_under(dir.str("out")), {});
  // A manifest without the shards' text positions, and a damaged shard: refused, nothing claimed.
  Json manifest = read_json_file(dir.str("out/manifest.json"));
  Json shards = Json::array();
  for (const Json& shard : manifest.at("shards").elements()) {
    Json kept = Json::object();
    for (const auto& [key, value] : shard.items())
      if (key != "text_after") kept[key] = value;
    shards.push_back(kept);
  }
  manifest["shards"] = shards;
  std::ofstream(dir.str("out/manifest.json")) << manifest.dump(2);
  fs::resize_file(dir.str("out/shard_00001.safetensors"), 100);
  const CommandResult old = run_program("sae_cache", kCache, dir, "", 300, dir.str());
  EXPECT_EQ(old.exit_code, 1) << old.out;
  EXPECT_NE(old.err.find("does not record where its text begins"), std::string::npos) << old.err;
  EXPECT_EQ(std::count(old.err.begin(), old.err.end(), '\n'), 1) << old.err;
}
