// metrics.csv, TensorBoard scalars and the progress display (see run_log.h).
#include "sae/report/run_log.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/atomic_file.h"
#include "tensor/error.h"

namespace fs = std::filesystem;

namespace sae {

std::string csv_number(double v) {
  char buffer[32];
  // Counts (step, tokens) in full: %.9g wrote 1.23456793e+09 tokens from 10^9 on.
  if (v == std::floor(v) && std::fabs(v) < 9007199254740992.0)
    std::snprintf(buffer, sizeof buffer, "%.0f", v);
  else
    std::snprintf(buffer, sizeof buffer, "%.9g", v);
  return buffer;
}

RunLog::RunLog(const std::string& out_dir, int64_t keep_through_step) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) throw DataError(cat(out_dir, ": cannot create the output directory: ", ec.message()));
  csv_path_ = (fs::path(out_dir) / "metrics.csv").string();
  const std::string tensorboard_dir = (fs::path(out_dir) / "tensorboard").string();
  const bool logged_before = fs::exists(csv_path_) || fs::exists(tensorboard_dir);
  if (fs::exists(csv_path_)) {
    // Keep the header and the whole rows up to the resumed step (not a last row cut short by a
    // crash or a full disk: one without its newline, or of another field count); rewrite
    // atomically, then append.
    std::ifstream in(csv_path_, std::ios::binary);
    std::stringstream whole;
    whole << in.rdbuf();
    std::string text = whole.str();
    const size_t whole_lines = text.rfind('\n');  // up to and with the last newline
    text.erase(whole_lines == std::string::npos ? 0 : whole_lines + 1);
    std::stringstream lines(text);
    std::string line, kept;
    if (std::getline(lines, line)) {
      kept = line + "\n";
      std::stringstream header(line);
      std::string name;
      while (std::getline(header, name, ',')) columns_.push_back(name);
      header_written_ = true;
    }
    while (std::getline(lines, line)) {
      if (line.empty() || static_cast<size_t>(std::count(line.begin(), line.end(), ',')) + 1 != columns_.size()) continue;
      const double step = std::atof(line.substr(0, line.find(',')).c_str());
      if (step <= double(keep_through_step)) kept += line + "\n";
    }
    write_file_atomic(csv_path_, kept);
  }
  csv_ = std::fopen(csv_path_.c_str(), "ab");
  if (!csv_) throw DataError(cat(csv_path_, ": cannot open for writing: ", std::strerror(errno)));
  tensorboard_ = std::make_unique<TensorBoardWriter>(tensorboard_dir);
  // A resumed run: TensorBoard drops what earlier event files hold after the resumed step (what the
  // interrupted run logged past its checkpoint, or the continuation a rewind replaced), as metrics.csv;
  // all of it for a run resumed from its start (killed before its first checkpoint).
  if (logged_before) tensorboard_->purge_from(keep_through_step + 1);
}

RunLog::~RunLog() {
  if (csv_) std::fclose(csv_);
}

void RunLog::write(const MetricRow& row) {
  if (!header_written_) {
    std::string header;
    for (const auto& [name, value] : row) {
      header += (header.empty() ? "" : ",") + name;
      columns_.push_back(name);
    }
    if (std::fprintf(csv_, "%s\n", header.c_str()) < 0)
      throw DataError(cat(csv_path_, ": write failed: ", std::strerror(errno)));
    header_written_ = true;
  } else if (row.size() != columns_.size()) {
    throw DataError(cat(csv_path_, ": has ", columns_.size(), " columns, this run logs ", row.size()));
  }
  std::string line;
  for (size_t i = 0; i < row.size(); ++i) {
    if (row[i].first != columns_[i])
      throw DataError(cat(csv_path_, ": column ", i, " is '", columns_[i], "', this run logs '", row[i].first, "'"));
    if (i) line += ',';
    line += csv_number(row[i].second);
  }
  if (std::fprintf(csv_, "%s\n", line.c_str()) < 0) throw DataError(cat(csv_path_, ": write failed: ", std::strerror(errno)));
  const int64_t step = static_cast<int64_t>(row[0].second);
  for (size_t i = 1; i < row.size(); ++i) tensorboard_->add_scalar(row[i].first, step, row[i].second);
}

// On disk, not only out of our buffers: a checkpoint saved (and fsynced) after this must not survive
// a power cut that loses the rows before it, which --resume would then leave missing.
void RunLog::flush() {
  if (std::fflush(csv_) != 0) throw DataError(cat(csv_path_, ": write failed: ", std::strerror(errno)));
  sync_fd(::fileno(csv_), csv_path_);
  tensorboard_->sync();
}

std::string format_duration(double seconds) {
  char buffer[32];
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  if (seconds < 1)  // short runs: two digits ("0.042s", "0.00031s"), not "0.0s"
    std::snprintf(buffer, sizeof buffer, "%.2gs", seconds);
  else if (seconds < 60)
    std::snprintf(buffer, sizeof buffer, "%.1fs", seconds);
  else if (seconds < 3600)
    std::snprintf(buffer, sizeof buffer, "%dm%02ds", int(seconds) / 60, int(seconds) % 60);
  else if (seconds < 1e15)  // (int64 hours: an int overflowed past 2^31 s and printed a negative time)
    std::snprintf(buffer, sizeof buffer, "%lldh%02dm", static_cast<long long>(seconds / 3600),
                  static_cast<int>(std::fmod(seconds, 3600.0) / 60));
  else
    std::snprintf(buffer, sizeof buffer, "%.3gh", seconds / 3600);
  return buffer;
}

ProgressMode parse_progress_mode(const std::string& text) {
  if (text == "auto") return ProgressMode::Auto;
  if (text == "bar") return ProgressMode::Bar;
  if (text == "lines") return ProgressMode::Lines;
  if (text == "none") return ProgressMode::None;
  throw UsageError(cat("--progress: expected auto, bar, lines or none, got '", text, "'"));
}

const char* progress_mode_name(ProgressMode mode) {
  switch (mode) {
    case ProgressMode::Auto: return "auto";
    case ProgressMode::Bar: return "bar";
    case ProgressMode::Lines: return "lines";
    default: return "none";
  }
}

Progress::Progress(ProgressMode mode, int64_t total_steps, int64_t start_step, const std::string& label)
    : total_(total_steps), start_(start_step), label_(label) {
  const bool tty = ::isatty(STDERR_FILENO);
  bar_ = mode == ProgressMode::Bar || (mode == ProgressMode::Auto && tty);
  lines_ = mode == ProgressMode::Lines || (mode == ProgressMode::Auto && !tty);
  begin_ = last_draw_ = std::chrono::steady_clock::now();
}

void Progress::update(int64_t step, int64_t tokens, double loss, double l0) {
  char extra[64];
  std::snprintf(extra, sizeof extra, "loss %.4g | L0 %.1f", loss, l0);
  draw(step, tokens, cat("step ", step, "/", total_), extra);
}

bool Progress::due(int64_t step) const {
  if (!bar_ && !lines_) return false;
  const double since_draw = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_draw_).count();
  return step >= total_ || since_draw >= (bar_ ? 0.2 : 10.0);
}

void Progress::update_position(int64_t done, int64_t tokens, const std::string& what) {
  const double percent = total_ > 0 ? 100.0 * double(done) / double(total_) : 100.0;
  char position[32];
  std::snprintf(position, sizeof position, "%.1f%%", percent);
  draw(done, tokens, position, what);
}

void Progress::draw(int64_t done, int64_t tokens, const std::string& position, const std::string& extra) {
  if (!bar_ && !lines_) return;
  if (start_tokens_ < 0) start_tokens_ = tokens;
  if (!due(done)) return;
  const auto now = std::chrono::steady_clock::now();
  last_draw_ = now;
  const double elapsed = std::chrono::duration<double>(now - begin_).count();
  const double rate = elapsed > 0 ? double(done - start_) / elapsed : 0;
  const double eta = rate > 0 ? double(total_ - done) / rate : NAN;
  const double tok_rate = elapsed > 0 ? double(tokens - start_tokens_) / elapsed : 0;
  const std::string stats = cat(position, " | ", static_cast<int64_t>(tok_rate), " tok/s | ETA ", format_duration(eta),
                                " | ", extra);
  if (bar_) {
    const int width = 24;
    const int filled = total_ > 0 ? int(width * double(done) / double(total_)) : width;
    std::string bar(std::max(0, std::min(width, filled)), '#');
    bar.resize(width, '.');
    std::fprintf(stderr, "\r\033[K%s[%s] %s", label_.c_str(), bar.c_str(), stats.c_str());
    drawn_ = true;
  } else {
    std::fprintf(stderr, "%s%s\n", label_.c_str(), stats.c_str());
  }
  std::fflush(stderr);
}

void Progress::message(const std::string& line) {
  if (!bar_ && !lines_) return;
  print_line(line);
}

void Progress::warning(const std::string& line) {
  // Named as the programs name their errors ("sae_train: warning: ..."; glibc's short name of argv[0]).
  print_line(cat(program_invocation_short_name, ": warning: ", line));
}

void Progress::print_line(const std::string& line) {
  if (bar_ && drawn_) std::fprintf(stderr, "\r\033[K");
  std::fprintf(stderr, "%s\n", line.c_str());
  drawn_ = false;
  std::fflush(stderr);
}

void Progress::finish() {
  if (bar_ && drawn_) std::fprintf(stderr, "\n");
  drawn_ = false;
}

}  // namespace sae
