// Studies: a list of named training runs under one output folder, their metrics read back, and
// the tables and figures that summarise them (used by experiments/recon_vs_f and l1_sweep).
//   OUT/<name>/        one run, as train() writes it, plus summary.json (steps, tokens, seconds,
//                      concept recovery on synthetic data) so a later invocation can report it
//   OUT/summary.csv, OUT/summary.md, OUT/<figure>.png with <figure>.gp and <figure>.dat beside it
// A study can be interrupted and started again: finished runs (sae/ holds training state at step
// >= steps) are skipped, runs with a checkpoint are resumed, the rest are trained from scratch. A
// run folder that holds a different configuration is an error, never silently reused.
#pragma once
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sae/train/metrics.h"
#include "sae/train/train_config.h"

namespace sae {

// ---- running ----

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

// Runs each entry into out_root/<name> in order, printing one line per run.
std::vector<RunOutcome> run_study(const std::vector<StudyRun>& runs, const std::string& out_root);

// ---- metrics.csv ----

struct Metrics {
  std::string path;
  std::vector<std::string> columns;
  std::vector<std::vector<double>> rows;
  std::vector<double> column(const std::string& name) const;  // DataError naming the file when absent
  // Index of the last row whose step is <= step. DataError when there is none.
  size_t row_at_or_below(int64_t step) const;
  // Mean of a column over the last `fraction` of the rows up to and including row `last`
  // (at least one row): the "plateau" of a noisy per-step curve.
  double tail_mean(const std::string& name, size_t last, double fraction = 0.1) const;
};
Metrics read_metrics(const std::string& csv_path);  // DataError for a missing or malformed file

// ---- tables ----

struct Table {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
};
std::string format_number(double value, int significant = 4);  // "%.4g"; "" for NaN
std::string markdown(const Table& table);
std::string markdown_paragraphs(const std::string& lines);  // each line of text its own paragraph
void write_csv(const Table& table, const std::string& path);

// ---- figures (gnuplot) ----

struct Series {
  std::string title;
  std::vector<double> x, y;
};
struct Figure {
  std::string title, xlabel, ylabel;
  bool logx = false, logy = false;
  double xmin = NAN, xmax = NAN;  // NaN: the data's range
  double ymin = NAN, ymax = NAN;  // NaN: gnuplot's autoscale
  std::vector<double> xmarks;     // dashed vertical lines at these x
  std::vector<Series> series;
};
// Writes PATH.png plus PATH.dat (the data, one gnuplot index block per series) and PATH.gp (the
// script: `cd DIR && gnuplot NAME.gp` redraws it), then runs gnuplot. `png_path` must end in
// .png. DataError when gnuplot is missing or fails.
void plot(const Figure& figure, const std::string& png_path);

// The figures of one training run, from RUN/metrics.csv: RUN/figures/loss.png (rec and l1 per
// element, log y) and RUN/figures/sparsity.png (L0 and dead features). Returns the PNG paths.
std::vector<std::string> plot_training_run(const std::string& run_dir);

}  // namespace sae
