// Where a training run starts: a fresh initialisation, a SAELens checkpoint (--init) or the newest
// checkpoint of an interrupted run (--resume). start_run takes the run folder's lock (RUN/.lock: a
// second process on the same folder is refused), resolves the configuration (on --resume, the run's
// own config.json with the command line's Controls options, sae/train/options.h; a Defines option
// given on the command line that contradicts it is refused), recovers what a crash inside a
// checkpoint save left and sweeps stale temporary folders, and loads what the run continues from.
// A fresh run into a folder that already holds a run is refused unless --overwrite, which deletes
// that run's files only once the new run's data is open and its first parameters made
// (remove_replaced_run, called by the trainer): a mistyped --data leaves the old run. --resume with
// --steps below the run's step is refused; at the run's step it is `finished` (see RunStart). A run
// killed before its first checkpoint is resumed from its start (its config.json, no checkpoint). A
// fresh run writes its options to RUN/config.pending.json as soon as it holds the lock, so that one
// killed even before the trainer wrote config.json (while its data opened) is resumed from its
// start by `--resume RUN` too; a fresh command into such a folder starts again (it holds no run).
// A fresh run that stops by an error or refusal before the trainer writes config.json (a missing
// --data file, a bad --init) leaves no trace: its config.pending.json is removed and so are the
// folders start_run made for it, now empty (FreshRunCleanup); only a kill leaves the pending file.
// Library code: throws, never exits.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/file_lock.h"
#include "sae/params.h"
#include "sae/train/checkpoint.h"
#include "sae/train/train_config.h"

namespace sae {
inline constexpr const char* kPendingConfigFile = "config.pending.json";
inline constexpr const char* kStudyRecordFile = "study.json";  // a study's folder (sae/study/study.h)

// UsageError when OUT is a study's folder (its runs are the study's to start; a run beside them
// would be summarised as none of them, or replace one).
void refuse_study_folder(const std::string& out);

// --resume keeps what the run computes from its config.json (`run`, read from config_path): an
// option that defines the run, given on the command line (`cli`) with another value, is refused
// (UsageError) rather than silently dropped.
void refuse_conflicts(const TrainConfig& cli, const TrainConfig& run, const std::string& config_path);
}  // namespace sae

namespace sae {

// What a fresh run added to its folder, undone when the run ends before config.json is written
// (see the header); declared in RunStart after its lock, so it runs while the lock is still held.
class FreshRunCleanup {
 public:
  // Before the run's folder is made: the folders it lacks (io/file_lock.h MadeFolders).
  explicit FreshRunCleanup(std::string out) : made_(out), out_(std::move(out)) {}
  ~FreshRunCleanup();
  FreshRunCleanup(const FreshRunCleanup&) = delete;
  FreshRunCleanup& operator=(const FreshRunCleanup&) = delete;
  // Writes the run's config.pending.json, keeping the one it replaces (a run killed before it
  // began, which --resume would have continued) to put back if this run never begins.
  void write_pending(const std::string& options);
  // Another process holds the folder's lock: its folders are not this run's to remove.
  void keep_folders() { made_.keep(); }

 private:
  MadeFolders made_;  // removed after the destructor's body, once empty
  std::string out_;
  bool wrote_pending_ = false;
  std::optional<std::string> replaced_pending_;
};

struct RunStart {
  TrainConfig config;                  // validated; on --resume out is the run's folder
  std::optional<SaeParams> params;     // from --init or --resume (on the CPU); none for a fresh run
  std::optional<TrainingState> state;  // --resume only
  std::string resumed_from;            // the checkpoint folder, on --resume ("" from the run's start)
  std::string superseded;              // a rewinding --resume: where the later checkpoints went (else "")
  std::string kept_final;              // extending a finished run: where its final model went (else "")
  bool keep_final = false;             // extending a finished run: its sae/ still to keep (keep_final_model)
  Json resolved_data;                  // --resume: config.json's resolved.data, what the run read (or null)
  std::vector<std::string> warnings;   // for the run's progress output (the trainer prints them)
  // --resume of a run whose final model (RUN/sae) is at config.steps already: nothing to train (a
  // retry after a crash while the final outputs were written; the caller finishes what is missing).
  bool finished = false;
  // --overwrite of a folder that holds a run: its files are still there (see remove_replaced_run).
  bool replaces_run = false;
  std::unique_ptr<FileLock> lock;      // held for the whole run
  std::unique_ptr<FreshRunCleanup> cleanup;  // a fresh run's (owner); after `lock`: destroyed first
};

// owner = false: a distributed run's other ranks (docs/distributed.md), after rank 0 started the run
// as owner: they read the same folder and checkpoint without locking, recovering, creating or
// clearing anything.
RunStart start_run(TrainConfig config, bool owner = true);

// Extending a finished run (start.keep_final): moves its final model RUN/sae to
// RUN/checkpoints/step_S, S its step, so the old end stays beside the new one; the caller does it
// once the run's data is open (a refused or failed extension leaves the run as it was). A kill right
// after it is a finished run from step_S, whose sae/ the next --resume makes again.
void keep_final_model(RunStart& start);

// Deletes the run files of the run a fresh --overwrite run replaces in `out` (docs/contract.md §4:
// not other files), keeping the new run's config.pending.json; the caller holds the folder's lock.
void remove_replaced_run(const std::string& out);

// The run folders directly under `dir` (each holds a config.json), sorted by name: the SAEs that
// sae_train --l1-list / --k-list trained together there. Empty when `dir` is itself a run.
std::vector<std::string> run_folders_under(const std::string& dir);

// The parameters a run starts with: the loaded ones, or the standard init for data of width d
// (drawn from config.seed). DataError when loaded parameters do not fit d or config.features.
SaeParams initial_params(const RunStart& start, int64_t d);

}  // namespace sae
