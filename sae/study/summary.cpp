// Shared summary pieces of the study drivers (see summary.h).
#include "sae/study/summary.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "io/atomic_file.h"
#include "sae/report/run_log.h"
#include "sae/train/arch_config.h"
#include "sae/train/dictionary_reads.h"

namespace fs = std::filesystem;

namespace sae {

std::string data_description(const TrainConfig& config, int64_t d) {
  if (config.data == "synthetic") return cat("synthetic, d = ", d);
  const DictionaryReads reads = dictionary_reads(config);
  std::string in, out;
  for (const std::string& r : reads.in) in += (in.empty() ? "" : ", ") + r;
  for (const std::string& r : reads.out) out += (out.empty() ? "" : ", ") + r;
  const std::string read = reads.kind == DictionaryKind::Transcoder ? cat(in, " -> ", out) : in;
  if (reads.text) return cat("text ", config.text, " through ", config.model, " at ", read, ", d = ", d);
  return cat(read, ", d = ", d);
}

std::string training_description(const TrainConfig& config) {
  const ArchSettings settings = arch_settings(config);
  return cat(dictionary_kind_name(dictionary_kind(config)), " of architecture ", config.architecture,
             settings.has("k") && settings.integer("k") > 0 ? cat(" (k = ", settings.integer("k"), ")") : std::string(),
             ", lr = ", config.lr,
             config.lr_schedule == LrSchedule::Constant ? "" : cat(" (", lr_schedule_name(config.lr_schedule), ")"),
             ", batch = ", config.batch_name(), ", normalisation = ", normalization_name(config.normalize), ", ",
             config.steps, " steps");
}

Figure zoom_figure(const std::string& title, const std::string& ylabel, const std::vector<Series>& curves,
                   const std::vector<double>& plateaus, double last_step) {
  std::vector<double> sorted = plateaus;
  std::sort(sorted.rbegin(), sorted.rend());
  Figure zoom;
  zoom.title = title;
  zoom.xlabel = "step";
  zoom.ylabel = ylabel;
  zoom.xmin = last_step / 2;
  zoom.xmax = last_step;
  zoom.ymin = 0;
  zoom.ymax = 2 * sorted[std::min<size_t>(1, sorted.size() - 1)];
  for (size_t i = 0; i < curves.size(); ++i) {
    zoom.series.push_back(curves[i]);
    if (plateaus[i] > zoom.ymax) zoom.series.back().title += " (off the top)";
  }
  return zoom;
}

std::string write_summary(const std::string& out, const std::string& heading, const std::string& notes,
                          const Table& table, const std::string& figures) {
  write_csv(table, (fs::path(out) / "summary.csv").string());
  const std::string md =
      "# " + heading + "\n\n" + markdown_paragraphs(notes) + markdown(table) + "\nFigures: " + figures + ".\n";
  write_file_atomic((fs::path(out) / "summary.md").string(), md);
  return cat("\n", notes, "\n", markdown(table), "\nwrote ", out, "/summary.csv, ", out, "/summary.md and figures ",
             figures, " in ", out, "\n");
}

std::string study_time(std::chrono::steady_clock::time_point begin) {
  return cat("study wall time: ",
             format_duration(std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count()), "\n");
}

}  // namespace sae
