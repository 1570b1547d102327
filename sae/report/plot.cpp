// gnuplot figures (see plot.h).
#include "sae/report/plot.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "io/atomic_file.h"
#include "io/csv.h"
#include "io/mapped_file.h"
#include "sae/report/table.h"
#include "tensor/error.h"

namespace fs = std::filesystem;

namespace sae {

namespace {

// Why the drawn file is not a whole PNG ("" when it is): gnuplot exits 0 when the disk fills while
// it draws, leaving an empty or cut-off file. A whole PNG starts with the signature and ends with
// the IEND chunk.
std::string incomplete_png(const fs::path& path) {
  std::string bytes;
  try {
    bytes = read_small_file(path.string(), size_t(1) << 30);
  } catch (const Error& e) {
    return cat("it cannot be read back: ", e.what());
  }
  static const std::string signature("\x89PNG\r\n\x1a\n", 8), end("\0\0\0\0IEND\xae\x42\x60\x82", 12);
  if (bytes.size() < signature.size() + end.size() || bytes.compare(0, signature.size(), signature) != 0 ||
      bytes.compare(bytes.size() - end.size(), end.size(), end) != 0)
    return cat("gnuplot left an incomplete PNG (", bytes.size(), " bytes; a full disk?)");
  return "";
}

// A single-quoted gnuplot string: gnuplot expands nothing inside one (a double-quoted string runs
// `backquoted` text as a shell command: a run folder named so would have run it); ' is doubled, and a
// control character (a newline would end the command) is written as a visible \xNN.
std::string gnuplot_string(const std::string& text) {
  std::string out = "'";
  for (char c : text) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (c == '\'') out += "''";
    else if (u < 0x20 || u == 0x7f) out += cat("\\x", "0123456789abcdef"[u >> 4], "0123456789abcdef"[u & 15]);
    else out += c;
  }
  return out + "'";
}

// A path on the script's comment line: its control characters as '?' (a newline would end the
// comment and make the rest of the path a command).
std::string comment_text(const std::string& text) {
  std::string out = text;
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return out;
}

std::string shell_quote(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// pngcairo (antialiased) when this gnuplot has it, else the libgd png terminal.
const std::string& png_terminal() {
  static const std::string terminal =
      std::system("gnuplot -e 'set terminal pngcairo' > /dev/null 2>&1") == 0
          ? std::string("pngcairo size 1200,800 font \",16\" noenhanced linewidth 1.5")
          : std::string("png size 1200,800 font \"DejaVuSans,14\" noenhanced linewidth 2");
  return terminal;
}

std::string range(double lo, double hi) {
  return cat("[", std::isnan(lo) ? std::string("*") : format_number(lo, 10), ":",
             std::isnan(hi) ? std::string("*") : format_number(hi, 10), "]");
}

}  // namespace

void plot(const Figure& figure, const std::string& png_path, bool draw) {
  const fs::path png(png_path);
  if (png.extension() != ".png") throw UsageError(cat("plot: ", png_path, " should end in .png"));
  const fs::path dir = png.has_parent_path() ? png.parent_path() : fs::path(".");
  const std::string stem = png.stem().string();

  std::string data;
  for (const Series& s : figure.series) {
    data += "# " + s.title + "\n";
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      if ((figure.logy && s.y[i] <= 0) || (figure.logx && s.x[i] <= 0)) continue;  // not drawable on a log axis
      char row[96];
      std::snprintf(row, sizeof row, "%.10g %.10g\n", s.x[i], s.y[i]);
      data += row;
    }
    data += "\n\n";  // gnuplot: two blank lines end an index block
  }
  write_file_atomic((dir / (stem + ".dat")).string(), data);

  std::string gp = cat("# Redraw with: cd ", comment_text(shell_quote(dir.string())), " && gnuplot ",
                       comment_text(shell_quote(stem + ".gp")), "\n");
  gp += "set terminal " + png_terminal() + "\n";
  // `output` can be set from outside (gnuplot -e): the program draws to a temporary name, then renames.
  gp += "if (!exists(\"output\")) output = " + gnuplot_string(stem + ".png") + "\n";
  gp += "set output output\n";
  gp += "set title " + gnuplot_string(figure.title) + "\n";
  gp += "set xlabel " + gnuplot_string(figure.xlabel) + "\n";
  gp += "set ylabel " + gnuplot_string(figure.ylabel) + "\n";
  gp += "set grid\nset key at screen 0.5, screen 0.015 center bottom horizontal box\nset bmargin 7\nset format x '%g'\n";
  if (figure.logx) gp += "set logscale x\n";
  if (figure.logy) gp += "set logscale y\nset format y '%g'\n";
  double xmin = figure.xmin, xmax = figure.xmax;  // the data's x range (from 0) unless given
  for (const Series& s : figure.series)
    for (double x : s.x) {
      if (std::isnan(figure.xmin) && std::isfinite(x) && !(x >= xmin)) xmin = x;
      if (std::isnan(figure.xmax) && std::isfinite(x) && !(x <= xmax)) xmax = x;
    }
  if (std::isnan(figure.xmin) && !figure.logx && xmin > 0) xmin = 0;  // steps: start the axis at 0
  gp += "set xrange " + range(xmin, xmax) + "\n";
  for (double x : figure.xmarks)
    gp += "set arrow from " + format_number(x, 10) + ", graph 0 to " + format_number(x, 10) +
          ", graph 1 nohead dashtype 2 linewidth 2 linecolor rgb 'gray40'\n";
  gp += "set yrange " + range(figure.ymin, figure.ymax) + "\n";
  gp += "plot";
  for (size_t i = 0; i < figure.series.size(); ++i)
    gp += cat(i ? ", \\\n    " : " ", gnuplot_string(stem + ".dat"), " index ", i, " using 1:2 with lines lw 2 title ",
              gnuplot_string(figure.series[i].title));
  gp += "\n";
  write_file_atomic((dir / (stem + ".gp")).string(), gp);
  std::error_code ec;
  if (!draw) {
    fs::remove(png, ec);  // an earlier drawing is of other data now
    return;
  }

  if (!gnuplot_found()) {
    fs::remove(png, ec);
    throw DataError(cat(png_path, ": gnuplot was not found on PATH (install gnuplot-nox, e.g. scripts/install-deps.sh); "
                        "the data and script are in ", (dir / (stem + ".gp")).string()));
  }
  // Names of this process alone: a concurrent drawing of the same figure keeps its own.
  const fs::path drawing = unique_temp_path(png.string());
  const std::string log = drawing.string() + ".gnuplot.log";
  const std::string command = "cd " + shell_quote(dir.string()) + " && gnuplot -e " +
                              shell_quote("output=" + gnuplot_string(drawing.filename().string())) + " " +
                              shell_quote(stem + ".gp") + " > " + shell_quote(fs::path(log).filename().string()) + " 2>&1";
  const int status = std::system(command.c_str());
  if (status != 0 || !fs::exists(drawing)) {
    fs::remove(drawing, ec);
    fs::remove(png, ec);  // an earlier drawing is of other data now
    std::string first_line;
    {
      std::ifstream in(log);
      while (first_line.find_first_not_of(" \t") == std::string::npos && std::getline(in, first_line)) {
      }
    }
    const fs::path kept = dir / (stem + ".gnuplot.log");  // gnuplot's output, under the figure's name
    fs::rename(log, kept, ec);
    throw DataError(cat(png_path, ": gnuplot failed (", (dir / (stem + ".gp")).string(), "; its output in ",
                        kept.string(), "): ", first_line));
  }
  std::string incomplete = incomplete_png(drawing);
  if (incomplete.empty()) {
    try {
      sync_file(drawing.string());  // on disk before it takes the figure's name, as every output
    } catch (const Error& e) {
      incomplete = e.what();
    }
  }
  if (!incomplete.empty()) {
    fs::remove(drawing, ec);
    fs::remove(log, ec);
    fs::remove(png, ec);  // an earlier drawing is of other data now
    throw DataError(cat(png_path, ": ", incomplete));
  }
  fs::remove(dir / (stem + ".gnuplot.log"), ec);  // an earlier failure's
  fs::remove(log, ec);
  fs::rename(drawing, png, ec);
  if (ec) throw DataError(cat(png_path, ": cannot rename ", drawing.string(), " to it: ", ec.message()));
}

void FigureDrawer::plot(const Figure& figure, const std::string& png_path) {
  ++figures_;
  try {
    sae::plot(figure, png_path, draw_);
  } catch (const DataError& e) {
    failures_.push_back(e.what());
  }
}

std::string FigureDrawer::describe(const std::string& drawn) const {
  const int failed = static_cast<int>(failures_.size());
  if (!draw_) return "not drawn (no gnuplot on PATH; each figure's .gp next to this file draws it)";
  if (failed == figures_ && failed > 0) return cat("not drawn (", failures_[0], ")");
  if (failed > 0) return cat(drawn, "; but ", failed, " of the ", figures_, " failed (the first: ", failures_[0], ")");
  return drawn;
}

bool training_run_figures_current(const std::string& run_dir) {
  std::error_code ec;
  const auto metrics = fs::last_write_time(fs::path(run_dir) / "metrics.csv", ec);
  if (ec) return false;
  for (const char* stem : {"loss", "sparsity"})
    for (const char* extension : {".png", ".dat", ".gp"}) {
      const auto figure = fs::last_write_time(fs::path(run_dir) / "figures" / (std::string(stem) + extension), ec);
      if (ec || figure < metrics) return false;
    }
  const auto evals = fs::last_write_time(fs::path(run_dir) / "evals.csv", ec);
  if (ec) return true;  // no evaluations, no figure of them
  for (const char* extension : {".png", ".dat", ".gp"}) {
    const auto figure = fs::last_write_time(fs::path(run_dir) / "figures" / (std::string("evals") + extension), ec);
    if (ec || figure < evals) return false;
  }
  return true;
}

bool gnuplot_found() { return std::system("command -v gnuplot > /dev/null 2>&1") == 0; }

std::vector<std::string> plot_training_run(const std::string& run_dir, bool draw) {
  const CsvNumbers m = read_csv_numbers(run_dir + "/metrics.csv");
  const std::vector<double> steps = m.column("step");
  std::filesystem::create_directories(run_dir + "/figures");
  Figure loss;
  loss.title = "Losses per element (" + run_dir + ")";
  loss.xlabel = "step";
  loss.ylabel = "per element (log scale)";
  loss.logy = true;
  loss.series = {{"reconstruction loss", steps, m.column("rec_loss_per_element")},
                 {"l1 (before lambda)", steps, m.column("l1_per_element")}};
  Figure sparsity;
  sparsity.title = "Active features per token and dead features (" + run_dir + ")";
  sparsity.xlabel = "step";
  sparsity.ylabel = "features";
  sparsity.series = {{"L0 (active features per token)", steps, m.column("l0")},
                     {"dead features", steps, m.column("dead_features")}};
  std::vector<std::string> paths = {run_dir + "/figures/loss.png", run_dir + "/figures/sparsity.png"};
  plot(loss, paths[0], draw);
  plot(sparsity, paths[1], draw);
  if (fs::exists(fs::path(run_dir) / "evals.csv")) {  // --eval-text: the checkpoints' scores
    const CsvNumbers e = read_csv_numbers(run_dir + "/evals.csv");
    const std::vector<double> at = e.column("step");
    Figure evals;
    evals.title = "The SAE spliced into the model, at each checkpoint (" + run_dir + ")";
    evals.xlabel = "step";
    evals.ylabel = "score (1: the model's own, 0: zero ablation)";
    evals.series = {{"CE loss score", at, e.column("ce_loss_score")}, {"KL div score", at, e.column("kl_div_score")}};
    paths.push_back(run_dir + "/figures/evals.png");
    plot(evals, paths.back(), draw);
  }
  if (!draw) paths.clear();
  return paths;
}

}  // namespace sae
