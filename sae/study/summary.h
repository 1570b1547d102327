// What the two study drivers (experiments/recon_vs_f, l1_sweep) share when they summarise their
// runs: the lines describing the data and training, the zoomed figure of the last half of training,
// and writing summary.csv + summary.md and printing them (their figures: sae/report FigureDrawer).
#pragma once
#include <chrono>
#include <string>
#include <vector>

#include "sae/report/plot.h"
#include "sae/report/table.h"
#include "sae/train/train_config.h"

namespace sae {

// "synthetic, d = 64", the data files' paths (a transcoder's "X -> Y"), or the text, model and hooks.
std::string data_description(const TrainConfig& config, int64_t d);
// "sae of architecture topk (k = 4), lr = 0.0003 (cosine), batch = story, normalisation = story, 12000 steps"
std::string training_description(const TrainConfig& config);

// The last half of training on a linear axis, from 0 up to twice the second-highest plateau, so
// that curves close together near 0 are told apart; a curve whose plateau is off the top says so
// in its title.
Figure zoom_figure(const std::string& title, const std::string& ylabel, const std::vector<Series>& curves,
                   const std::vector<double>& plateaus, double last_step);

// Writes OUT/summary.csv and OUT/summary.md ("# heading", the notes as paragraphs, the table, the
// figures line) and returns what the driver prints: the notes, the table and the files written.
std::string write_summary(const std::string& out, const std::string& heading, const std::string& notes,
                          const Table& table, const std::string& figures);

// "study wall time: 3m05s" since `begin`.
std::string study_time(std::chrono::steady_clock::time_point begin);

}  // namespace sae
