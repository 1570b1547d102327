// What a training run writes while it goes: metrics.csv and a TensorBoard event file with the same
// scalars (one row per logged step), and the progress display (a bar on a terminal, plain lines
// otherwise).
#pragma once
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "io/tensorboard.h"

namespace sae {

// A number as metrics.csv writes it: whole numbers in full (counts), others with 9 significant digits;
// NaN as printf writes it ("nan").
std::string csv_number(double v);

// One logged step: ordered (name, value) pairs. The first must be "step".
using MetricRow = std::vector<std::pair<std::string, double>>;

class RunLog {
 public:
  // Opens OUT/metrics.csv and a new event file in OUT/tensorboard. When resuming, rows after
  // `keep_through_step` (written by the interrupted run after its last checkpoint) are dropped, and
  // the event file starts with a purge of the steps after it (TensorBoardWriter::purge_from).
  RunLog(const std::string& out_dir, int64_t keep_through_step);
  ~RunLog();
  void write(const MetricRow& row);
  void flush();  // metrics.csv and the TensorBoard file to disk (fsync), before each checkpoint
  std::string csv_path() const { return csv_path_; }
  std::string tensorboard_path() const { return tensorboard_->path(); }

 private:
  std::string csv_path_;
  FILE* csv_ = nullptr;
  bool header_written_ = false;
  std::vector<std::string> columns_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
};

// --progress: a bar, plain lines, nothing, or auto (a bar when stderr is a terminal, else lines).
enum class ProgressMode { Auto, Bar, Lines, None };
ProgressMode parse_progress_mode(const std::string& text);  // UsageError naming --progress
const char* progress_mode_name(ProgressMode mode);

class Progress {
 public:
  Progress(ProgressMode mode, int64_t total_steps, int64_t start_step, const std::string& label = "");
  void update(int64_t step, int64_t tokens, double loss, double l0);
  // Whether update(step, ...) would draw now (callers whose loss must first be read back ask), and
  // the tokens of a step that was not drawn (the rate counts from the first step seen).
  bool due(int64_t step) const;
  void seen(int64_t tokens) {
    if (start_tokens_ < 0) start_tokens_ = tokens;
  }
  // For work measured in another unit than steps (e.g. bytes of a corpus): `done` of the total,
  // with `what` in place of the step count and the loss.
  void update_position(int64_t done, int64_t tokens, const std::string& what);
  void message(const std::string& line);  // prints a line without breaking the bar
  // "PROGRAM: warning: line", also with --progress none (it says an option did nothing, or what a run
  // starts from)
  void warning(const std::string& line);
  void finish();

 private:
  void print_line(const std::string& line);
  bool bar_ = false, lines_ = false;
  int64_t total_, start_;
  std::string label_;
  void draw(int64_t done, int64_t tokens, const std::string& position, const std::string& extra);
  std::chrono::steady_clock::time_point begin_, last_draw_;
  int64_t start_tokens_ = -1;
  bool drawn_ = false;
};

std::string format_duration(double seconds);  // "1h02m", "3m05s", "12.3s", "0.042s"

}  // namespace sae
