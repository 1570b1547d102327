// Studies: run lists, metrics read-back, tables, gnuplot figures (see study.h).
#include "sae/study/study.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "sae/train/checkpoint.h"
#include "sae/data/synthetic.h"
#include "sae/train/options.h"
#include "sae/train/trainer.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;

namespace sae {

namespace {

// A folder that already holds a run must hold this run; anything else is an error.
void check_same_run(const std::string& dir, const TrainConfig& wanted) {
  const std::string path = (fs::path(dir) / "config.json").string();
  const Json have = run_identity(TrainConfig::from_json(read_json_file(path))), want = run_identity(wanted);
  for (const auto& [key, value] : want.items())
    if (!have.has(key) || have.at(key) != value)
      throw DataError(cat(path, ": this folder holds a run with ", key, " = ",
                          have.has(key) ? have.at(key).dump() : "(absent)", ", but the study asks for ", value.dump(),
                          "; use another --out or remove the folder"));
}

bool has_checkpoint(const std::string& dir) {
  try {
    find_latest_checkpoint(dir);
    return true;
  } catch (const Error&) {
    return false;
  }
}

int64_t checkpoint_step(const std::string& checkpoint_dir) {
  SafetensorsFile file = SafetensorsFile::open((fs::path(checkpoint_dir) / "training_state.safetensors").string());
  auto meta = file.metadata().find("training_state");
  if (meta == file.metadata().end()) return -1;
  return Json::parse(meta->second).at("step").as_int();
}

Json concepts_json(const std::optional<ConceptRecovery>& c) {
  if (!c) return Json();
  Json j = Json::object();
  j["mmcs"] = c->mmcs;
  j["recovered"] = c->recovered;
  j["purity"] = c->purity;
  j["concepts"] = c->concepts;
  j["alive_features"] = c->alive_features;
  return j;
}

std::optional<ConceptRecovery> concepts_from_json(const Json& j) {
  if (j.is_null()) return std::nullopt;
  ConceptRecovery c;
  c.mmcs = j.at("mmcs").as_number();
  c.recovered = j.at("recovered").as_number();
  c.purity = j.at("purity").as_number();
  c.concepts = j.at("concepts").as_int();
  c.alive_features = j.at("alive_features").as_int();
  return c;
}

void write_run_summary(const RunOutcome& r) {
  Json j = Json::object();
  j["name"] = r.name;
  j["steps"] = r.steps;
  j["tokens"] = r.tokens;
  j["d"] = r.d;
  j["seconds"] = r.seconds;
  j["concepts"] = concepts_json(r.concepts);
  write_file_atomic((fs::path(r.dir) / "summary.json").string(), j.dump(2) + "\n");
}

// A finished run from an earlier invocation: its summary.json, or (when the process was killed
// between the final model and the summary) the same facts recomputed from the final model.
RunOutcome finished_outcome(const std::string& name, const std::string& dir, const TrainConfig& config) {
  RunOutcome r;
  r.name = name;
  r.dir = dir;
  r.action = "skipped";
  const fs::path summary = fs::path(dir) / "summary.json";
  if (fs::exists(summary)) {
    const Json j = read_json_file(summary.string());
    r.steps = j.at("steps").as_int();
    r.tokens = j.at("tokens").as_int();
    r.d = j.at("d").as_int();
    r.concepts = concepts_from_json(j.at("concepts"));
    if (r.steps == finished_step(dir)) return r;  // else: stale (the run was extended since)
  }
  Checkpoint final_model = load_checkpoint((fs::path(dir) / "sae").string(), Device::CPU);
  r.steps = final_model.state->step;
  r.tokens = final_model.state->tokens;
  r.d = final_model.params.d_in();
  r.concepts.reset();
  if (config.data == "synthetic") {
    SyntheticSource source(config.synthetic);
    DeadFeatureTracker dead(final_model.params.d_sae(), config.dead_window);
    dead.last_fired() = final_model.state->last_fired;
    r.concepts = concept_recovery(source.concepts(), final_model.params.W_dec, dead.alive(r.tokens));
  }
  write_run_summary(r);
  return r;
}

RunOutcome run_one(const StudyRun& run, const std::string& out_root) {
  const std::string dir = (fs::path(out_root) / run.name).string();
  TrainConfig config = run.config;
  config.out = dir;
  config.resume = "";
  if (fs::exists(fs::path(dir) / "config.json"))
    check_same_run(dir, config);
  else if (fs::exists(dir) && !fs::is_empty(dir))
    throw DataError(cat(dir, ": exists but holds no run (no config.json); use another --out or remove it"));
  if (finished_step(dir) >= config.steps) return finished_outcome(run.name, dir, config);

  std::string action = "trained";
  if (has_checkpoint(dir)) {
    config.resume = dir;
    action = cat("resumed from step ", checkpoint_step(find_latest_checkpoint(dir)));
  } else if (!run.continue_from.empty()) {
    // Start from a copy of the finished run (copied to a temporary name, then renamed: a kill
    // mid-copy leaves no half-made run folder).
    if (finished_step(run.continue_from) < 0)
      throw DataError(cat(run.continue_from, ": has no finished model to continue from"));
    const fs::path temp = dir + ".tmp-copy";
    fs::remove_all(temp);
    fs::create_directories(temp);
    for (const char* part : {"config.json", "metrics.csv", "sae", "tensorboard"})
      if (fs::exists(fs::path(run.continue_from) / part))
        fs::copy(fs::path(run.continue_from) / part, temp / part, fs::copy_options::recursive);
    fs::remove_all(dir);
    fs::rename(temp, dir);
    config.resume = dir;
    action = cat("continued ", fs::path(run.continue_from).filename().string(), " from step ", finished_step(dir));
  } else if (fs::exists(dir)) {
    fs::remove_all(dir);  // our own run (checked above), killed before its first checkpoint
  }

  const TrainResult result = train(config);
  RunOutcome r;
  r.name = run.name;
  r.dir = dir;
  r.action = action;
  r.steps = result.steps;
  r.tokens = result.tokens;
  r.d = read_json_file((fs::path(dir) / "config.json").string()).at("resolved").at("d_in").as_int();
  r.seconds = result.seconds;
  r.concepts = result.concepts;
  write_run_summary(r);
  return r;
}

}  // namespace

int64_t finished_step(const std::string& run_dir) {
  const fs::path sae = fs::path(run_dir) / "sae";
  if (!fs::exists(sae / "training_state.safetensors") || !fs::exists(sae / "sae_weights.safetensors")) return -1;
  try {
    return checkpoint_step(sae.string());
  } catch (const Error&) {
    return -1;
  }
}

std::vector<RunOutcome> run_study(const std::vector<StudyRun>& runs, const std::string& out_root) {
  std::vector<RunOutcome> outcomes;
  for (size_t i = 0; i < runs.size(); ++i) {
    std::printf("[%zu/%zu] %s: %s steps, F = %lld, lambda = %g\n", i + 1, runs.size(), runs[i].name.c_str(),
                std::to_string(runs[i].config.steps).c_str(), (long long)runs[i].config.features, runs[i].config.l1);
    std::fflush(stdout);
    RunOutcome r = run_one(runs[i], out_root);
    if (r.action == "skipped")
      std::printf("[%zu/%zu] %s: skipped (already finished at step %lld)\n", i + 1, runs.size(), r.name.c_str(),
                  (long long)r.steps);
    else
      std::printf("[%zu/%zu] %s: %s, %lld steps (%lld tokens) in %s\n", i + 1, runs.size(), r.name.c_str(),
                  r.action.c_str(), (long long)r.steps, (long long)r.tokens, format_duration(r.seconds).c_str());
    std::fflush(stdout);
    outcomes.push_back(r);
  }
  return outcomes;
}

// ---- metrics.csv ----

Metrics read_metrics(const std::string& csv_path) {
  std::ifstream in(csv_path);
  if (!in) throw DataError(cat(csv_path, ": cannot open"));
  Metrics m;
  m.path = csv_path;
  std::string line, cell;
  if (!std::getline(in, line) || line.empty()) throw DataError(cat(csv_path, ": empty (no header row)"));
  std::stringstream header(line);
  while (std::getline(header, cell, ',')) m.columns.push_back(cell);
  if (m.columns.empty() || m.columns[0] != "step") throw DataError(cat(csv_path, ": the first column should be 'step'"));
  int64_t line_number = 1;
  while (std::getline(in, line)) {
    ++line_number;
    if (line.empty()) continue;
    std::vector<double> row;
    std::stringstream cells(line);
    while (std::getline(cells, cell, ',')) {
      char* end = nullptr;
      const double value = std::strtod(cell.c_str(), &end);
      if (cell.empty() || *end != '\0') throw DataError(cat(csv_path, ":", line_number, ": not a number: '", cell, "'"));
      row.push_back(value);
    }
    if (row.size() != m.columns.size())
      throw DataError(cat(csv_path, ":", line_number, ": ", row.size(), " values for ", m.columns.size(), " columns"));
    m.rows.push_back(std::move(row));
  }
  if (m.rows.empty()) throw DataError(cat(csv_path, ": no logged steps"));
  return m;
}

std::vector<double> Metrics::column(const std::string& name) const {
  for (size_t c = 0; c < columns.size(); ++c)
    if (columns[c] == name) {
      std::vector<double> values;
      for (const auto& row : rows) values.push_back(row[c]);
      return values;
    }
  throw DataError(cat(path, ": no column '", name, "'"));
}

size_t Metrics::row_at_or_below(int64_t step) const {
  size_t found = rows.size();
  for (size_t i = 0; i < rows.size(); ++i)
    if (rows[i][0] <= double(step)) found = i;
  if (found == rows.size()) throw DataError(cat(path, ": no logged step at or below ", step));
  return found;
}

double Metrics::tail_mean(const std::string& name, size_t last, double fraction) const {
  const std::vector<double> values = column(name);
  const size_t count = std::max<size_t>(1, static_cast<size_t>((last + 1) * fraction));
  double sum = 0;
  for (size_t i = last + 1 - count; i <= last; ++i) sum += values[i];
  return sum / double(count);
}

// ---- tables ----

std::string format_number(double value, int significant) {
  if (std::isnan(value)) return "";
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*g", significant, value);
  return buffer;
}

std::string markdown(const Table& table) {
  std::string out = "|";
  for (const std::string& h : table.header) out += " " + h + " |";
  out += "\n|";
  for (size_t i = 0; i < table.header.size(); ++i) out += " --- |";
  out += "\n";
  for (const auto& row : table.rows) {
    out += "|";
    for (const std::string& cell : row) out += " " + cell + " |";
    out += "\n";
  }
  return out;
}

std::string markdown_paragraphs(const std::string& lines) {
  std::string out;
  for (char c : lines) out += c == '\n' ? std::string("\n\n") : std::string(1, c);
  return out;
}

void write_csv(const Table& table, const std::string& path) {
  auto quoted = [](const std::string& cell) {
    if (cell.find_first_of(",\"\n") == std::string::npos) return cell;
    std::string q = "\"";
    for (char c : cell) q += c == '"' ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
  };
  std::string out;
  auto line = [&](const std::vector<std::string>& cells) {
    for (size_t i = 0; i < cells.size(); ++i) {
      if (i) out += ',';
      out += quoted(cells[i]);
    }
    out += "\n";
  };
  line(table.header);
  for (const auto& row : table.rows) line(row);
  write_file_atomic(path, out);
}

// ---- figures ----

namespace {

std::string gnuplot_string(const std::string& text) {  // a double-quoted gnuplot string
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
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

void plot(const Figure& figure, const std::string& png_path) {
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

  std::string gp = cat("# Redraw with: cd ", dir.string(), " && gnuplot ", stem, ".gp\n");
  gp += "set terminal " + png_terminal() + "\n";
  gp += "set output '" + stem + ".png'\n";
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
    gp += cat(i ? ", \\\n    " : " ", "'", stem, ".dat' index ", i, " using 1:2 with lines lw 2 title ",
              gnuplot_string(figure.series[i].title));
  gp += "\n";
  write_file_atomic((dir / (stem + ".gp")).string(), gp);

  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0)
    throw DataError(cat(png_path, ": gnuplot was not found on PATH (install gnuplot-nox, e.g. scripts/install-deps.sh); "
                        "the data and script are in ", (dir / (stem + ".gp")).string()));
  const std::string log = (dir / (stem + ".gnuplot.log")).string();
  const std::string command = "cd " + shell_quote(dir.string()) + " && gnuplot " + shell_quote(stem + ".gp") + " > " +
                              shell_quote(stem + ".gnuplot.log") + " 2>&1";
  const int status = std::system(command.c_str());
  if (status != 0 || !fs::exists(png)) {
    std::string first_line;
    std::ifstream in(log);
    while (first_line.find_first_not_of(" \t") == std::string::npos && std::getline(in, first_line)) {
    }
    throw DataError(cat(png_path, ": gnuplot failed (", (dir / (stem + ".gp")).string(), "): ", first_line));
  }
  std::error_code ec;
  fs::remove(log, ec);
}

std::vector<std::string> plot_training_run(const std::string& run_dir) {
  const Metrics m = read_metrics(run_dir + "/metrics.csv");
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
  plot(loss, paths[0]);
  plot(sparsity, paths[1]);
  return paths;
}

}  // namespace sae
