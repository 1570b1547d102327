// What the two study drivers (experiments/recon_vs_f, l1_sweep) share when they summarise their
// runs: the lines describing the data and training, the zoomed figure of the last half of training,
// and writing summary.csv + summary.md and printing them.
#pragma once
#include <chrono>
#include <string>
#include <vector>

#include "sae/report/plot.h"
#include "sae/report/table.h"
#include "sae/train/train_config.h"

namespace sae {

// "synthetic, d = 64" or the data file's path.
std::string data_description(const TrainConfig& config, int64_t d);
// "lr = 0.0003, batch = story, normalisation = story, 12000 steps"
std::string training_description(const TrainConfig& config);

// The last half of training on a linear axis, from 0 up to twice the second-highest plateau, so
// that curves close together near 0 are told apart; a curve whose plateau is off the top says so
// in its title.
Figure zoom_figure(const std::string& title, const std::string& ylabel, const std::vector<Series>& curves,
                   const std::vector<double>& plateaus, double last_step);

// A study's figures, drawn as sae_train draws a run's: without gnuplot on PATH only their .gp and
// .dat files (the script draws the PNG later), and a gnuplot that fails costs the figure, not the
// study, whose summary is written either way (it had ended with exit 1 after hours of training).
// A figure not drawn leaves no earlier PNG beside its new data (plot removes it).
class StudyFigures {
 public:
  StudyFigures() : draw_(gnuplot_found()) {}
  void plot(const Figure& figure, const std::string& png_path);
  // For the summary's figures line: `drawn` (the PNGs) when every figure was drawn, else why not.
  std::string describe(const std::string& drawn) const;

 private:
  bool draw_;
  int figures_ = 0, failed_ = 0;
  std::string failure_;  // the first gnuplot failure's message
};

// Writes OUT/summary.csv and OUT/summary.md ("# heading", the notes as paragraphs, the table, the
// figures line) and prints the notes, the table and the files written.
void write_summary(const std::string& out, const std::string& heading, const std::string& notes, const Table& table,
                   const std::string& figures);

// "study wall time: 3m05s" since `begin`.
void print_study_time(std::chrono::steady_clock::time_point begin);

}  // namespace sae
