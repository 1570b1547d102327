// Studies: a list of named training runs under one output folder and their metrics read back (used
// by experiments/recon_vs_f and l1_sweep; tables and figures are in sae/report, the summaries the
// two drivers share in summary.h).
//   OUT/<name>/        one run, as train() writes it, plus summary.json (steps, tokens, seconds,
//                      concept recovery on synthetic data) so a later invocation can report it
//   OUT/summary.csv, OUT/summary.md, OUT/<figure>.png with <figure>.gp and <figure>.dat beside it
//   OUT/.study.lock    held while a study runs there (a second one is refused)
//   OUT/study.json     {"study": NAME}: the folder is that study's (sae_train refuses it as --out)
//   OUT/<name>/continued_from.json   a continuation's {"run": SOURCE, "step": S}: a later study whose
//                      SOURCE ends at another step refuses it
// A study can be interrupted and started again: finished runs (sae/ holds training state at step
// >= steps) are skipped, runs with a checkpoint are resumed, the rest are trained from scratch. A
// run folder that holds a different configuration is an error, never silently reused. Runs that start
// from the same step on the same data stream train together (sae/train/trainer.h, train_together:
// one pass over the data, the same results as one by one); a continuation runs after its source.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "io/csv.h"
#include "sae/train/metrics.h"
#include "sae/train/train_config.h"

namespace sae {

// ---- running ----

// The training options a study program does not take (an unknown option, exit 2): it starts,
// resumes and refuses its runs' folders itself (--init, --resume, --overwrite), trains in one
// process (--shards), sets lambda per run, which an L0 set point would override (--target-l0
// and its gains), and evaluates no checkpoint (--eval-text and its options: refused late before).
// Each program also leaves out what it sweeps (--l1 or --features).
inline const std::vector<std::string> kStudyLeavesOut = {
    "init", "resume", "overwrite", "shards", "target-l0", "target-l0-ki", "target-l0-kp", "target-l0-ema",
    "target-l0-max-change", "eval-text", "eval-stories", "eval-text-field"};

struct StudyRun {
  std::string name;           // folder under the study's output folder
  TrainConfig config;         // config.out and config.resume are set by run_study
  std::string continue_from;  // optional: a finished run's folder; this run starts as a copy of
                              // its final state (model, Adam moments, data position, metrics.csv)
                              // and continues it to config.steps
};

struct RunOutcome {
  std::string name, dir;
  std::string action;  // "trained", "resumed from step N", "continued <run> from step N" or "skipped"
  int64_t steps = 0, tokens = 0;
  int64_t d = 0;       // the data's width (config.json resolved.d_in)
  double seconds = 0;  // training time of this invocation (0 when skipped)
  std::optional<ConceptRecovery> concepts;  // synthetic data only, of the final model
};

// The step of DIR/sae's training state, or -1 when there is none (or it cannot be read).
int64_t finished_step(const std::string& run_dir);

// Runs each entry into out_root/<name>, saying its plan and one line per run through `say` (each a
// line without its newline; the drivers print them); outcomes in the order of `runs`. `study` (the
// program's name) claims the folder (OUT/study.json): a folder of another study, or of sae_train, is
// refused (UsageError), as are runs trained beyond their steps here. `summarise` (when given) is
// called with the outcomes while the study's lock is still held: a summary reads the runs' files,
// which a second study on the folder could otherwise be extending meanwhile.
std::vector<RunOutcome> run_study(const std::string& study, const std::vector<StudyRun>& runs,
                                  const std::string& out_root, const std::function<void(const std::string&)>& say,
                                  const std::function<void(const std::vector<RunOutcome>&)>& summarise = {});

// ---- metrics.csv ----

// A run's metrics.csv (io/csv.h) with the read-outs the summaries use.
struct Metrics : CsvNumbers {
  // Index of the last row whose step is <= step. DataError when there is none.
  size_t row_at_or_below(int64_t step) const;
  // Mean of a column over the last `fraction` of the rows up to and including row `last`
  // (at least one row): the "plateau" of a noisy per-step curve.
  double tail_mean(const std::string& name, size_t last, double fraction = 0.1) const;
};
Metrics read_metrics(const std::string& csv_path);  // DataError: missing, malformed, no step column, no rows

}  // namespace sae
