// Line figures drawn by gnuplot: each PNG comes with the data (.dat) and the script (.gp) that redraw
// it, so a figure can be restyled without rerunning anything. Also the two figures of a training run.
#pragma once
#include <cmath>
#include <string>
#include <vector>

namespace sae {

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
// .png. Each file is put in place by a rename (the PNG is drawn under a temporary name of io/atomic_file.h's form), so a crash never
// leaves a half-written one. DataError when gnuplot is missing or fails. With `draw` false only the
// .dat and .gp files are written (for machines without gnuplot: the script draws the PNG later).
void plot(const Figure& figure, const std::string& png_path, bool draw = true);

// Whether gnuplot is on PATH (looked up on every call: PATH may change).
bool gnuplot_found();

// A program's figures drawn as sae_train draws a run's: without gnuplot on PATH only their .gp and
// .dat files (the script draws the PNG later), and a gnuplot that fails costs the figure, not the
// results, which are written either way (a study had ended with exit 1 after hours of training). A
// figure not drawn leaves no earlier PNG beside its new data (plot removes it). Nothing is printed:
// the program prints failures() as warnings and describe() in its report.
class FigureDrawer {
 public:
  FigureDrawer() : draw_(gnuplot_found()) {}
  void plot(const Figure& figure, const std::string& png_path);
  // `drawn` (the PNGs) when every figure was drawn, else why not ("not drawn (...)").
  std::string describe(const std::string& drawn) const;
  bool all_drawn() const { return draw_ && failures_.empty(); }
  const std::vector<std::string>& failures() const { return failures_; }  // each failed figure's message

 private:
  bool draw_;
  int figures_ = 0;
  std::vector<std::string> failures_;
};

// The figures of one training run, from RUN/metrics.csv: RUN/figures/loss.png (rec and l1 per
// element, log y) and RUN/figures/sparsity.png (L0 and dead features); with RUN/evals.csv (--eval-text)
// also RUN/figures/evals.png (CE loss and KL div scores at each checkpoint). Returns the PNG paths
// (none when `draw` is false: then only their data and scripts are written).
std::vector<std::string> plot_training_run(const std::string& run_dir, bool draw = true);
// Whether every file plot_training_run writes is there and was written after RUN/metrics.csv (and
// RUN/evals.csv) last was (a run extended or rewound, then stopped while its figures were redrawn, keeps older ones).
bool training_run_figures_current(const std::string& run_dir);

}  // namespace sae
