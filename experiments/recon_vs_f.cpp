// recon_vs_f: the study's first result (docs/contract.md §1.1): reconstruction loss against the number
// of features F at lambda = 0. Defaults = the original: F in {100, 767, 768, 1000}, one story per
// step, per-story normalisation, Adam lr 1e-5, 35000 steps. Thin: options -> one TrainConfig per F
// -> run_study (skips finished runs, resumes interrupted ones) -> summary table and figures.
//   OUT/F_<F>/ (one run each), OUT/summary.csv, OUT/summary.md, OUT/recon_vs_f.png,
//   OUT/recon_vs_f_zoom.png (each figure with its .gp script and .dat data beside it)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "sae/cli/cli.h"
#include "sae/study/study.h"
#include "sae/study/summary.h"
#include "sae/train/arch_config.h"
#include "sae/train/dictionary_reads.h"

namespace fs = std::filesystem;

namespace {

// --profile quick: the same study at width 64 instead of 768, so that both studies finish in a few
// minutes on 2 CPU cores. Every width-like quantity is scaled by 64/768 = 1/12: d, the F list
// (F/d about 0.13, d - 1, d, 1.3 d as in the original), the synthetic data's concept counts and
// active concepts per token (story-level ones: 1 per story, the smallest count); a larger learning
// rate and fewer steps. Still one story per step, per-story normalisation, lambda = 0.
sae::Profile quick_profile() {
  sae::Profile p = sae::quick_study_data();
  p.insert({{"features-list", "8,63,64,83"}, {"lr", "3e-4"}, {"steps", "12000"}});
  return p;
}
const sae::Profile kQuick = quick_profile();

std::string original_result(int64_t f, int64_t d) {
  if (f < d - 1) return "F = 100: plateaus at a high loss";
  if (f == d - 1) return "F = 767: stalls above F = 768";  // (its plot: near 0.1, in its own units)
  if (f == d) return "F = 768: goes towards 0";
  return "F = 1000: goes towards 0";
}

// The table (plateaus beside the original's results), the figures and summary.csv / summary.md.
void summarise(const std::vector<sae::StudyRun>& runs, const std::vector<sae::RunOutcome>& outcomes,
               const std::string& out) {
  const int64_t d = outcomes.front().d;
  // The original's results (F >= d reconstructs) are those of a standard SAE without a penalty, which
  // can learn the identity; a TopK SAE (k < d), a penalty, a transcoder's or a crosscoder's width say
  // nothing of the kind.
  const sae::TrainConfig& c0 = runs.front().config;
  const bool comparable =
      sae::dictionary_kind(c0) == sae::DictionaryKind::Sae && c0.architecture == "standard" && c0.l1 == 0;
  sae::Table table{{"F", "F / d", "steps", "final rec loss / element", "plateau rec loss / element",
                    "plateau FVU", "original study (d = 768)"},
                   {}};
  std::vector<sae::Series> curves;
  std::vector<double> plateaus;
  double last_step = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    const sae::Metrics m = sae::read_metrics((fs::path(outcomes[i].dir) / "metrics.csv").string());
    const size_t last = m.row_at_or_below(runs[i].config.steps);
    const double plateau = m.tail_mean("rec_loss_per_element", last);
    plateaus.push_back(plateau);
    const int64_t f = runs[i].config.features;
    table.rows.push_back({std::to_string(f), sae::format_number(double(f) / double(d), 3),
                          sae::format_number(m.rows[last][0], 10),
                          sae::format_number(m.column("rec_loss_per_element")[last]), sae::format_number(plateau),
                          sae::format_number(m.tail_mean("fvu", last)), comparable ? original_result(f, d) : ""});
    curves.push_back({"F = " + std::to_string(f), m.column("step"), m.column("rec_loss_per_element")});
    last_step = std::max(last_step, m.rows[last][0]);
  }
  const std::string notes = sae::cat(
      "Data: ", sae::data_description(runs[0].config, d), "; lambda = ", runs[0].config.l1, ", ",
      sae::training_description(runs[0].config), ".\n"
      "Losses are per element (the batch's sum of squared errors / (tokens * the reconstructed width)); d is the "
      "input's width; plateau = mean over the last 10% of "
      "logged steps; FVU = fraction of variance unexplained, each logged batch's in the space the SAE trains in "
      "(metrics.csv's fvu; sae_eval's pools every token at the raw scale).",
      comparable ? ""
                 : " The original's column is left out: its results are a standard SAE's at lambda = 0, which can "
                   "learn the identity.",
      "\n");

  sae::Figure all;
  all.title = sae::cat("Reconstruction loss vs F (lambda = ", runs[0].config.l1, ", d = ", d, ")");
  all.xlabel = "step";
  all.ylabel = "reconstruction loss per element (log scale)";
  all.logy = true;
  all.series = curves;
  sae::FigureDrawer figures;
  figures.plot(all, (fs::path(out) / "recon_vs_f.png").string());
  figures.plot(sae::zoom_figure(sae::cat("Zoom: last half of training, linear axis (d = ", d, ")"),
                                "reconstruction loss per element", curves, plateaus, last_step),
               (fs::path(out) / "recon_vs_f_zoom.png").string());
  for (const std::string& failure : figures.failures()) std::fprintf(stderr, "recon_vs_f: warning: %s\n", failure.c_str());
  const std::string summary =
      sae::write_summary(out, "recon_vs_f: reconstruction loss vs F", notes, table,
                         figures.describe("recon_vs_f.png (all steps, log y), recon_vs_f_zoom.png (last half, linear y)"));
  std::fputs(summary.c_str(), stdout);
}

}  // namespace

int main(int argc, char** argv) {
  return sae::run_main("recon_vs_f", argc, argv, [&] {
    cxxopts::Options options("recon_vs_f",
                             "Reconstruction loss vs the number of features F at lambda = 0 (the original study's "
                             "first result; defaults = its exact configuration)");
    std::vector<std::string> leaves_out = sae::kStudyLeavesOut;
    leaves_out.push_back("features");
    leaves_out.push_back("expansion-factor");  // (it would set every run's F)
    sae::add_training_options(options, {{"out", "runs/recon_vs_f"}}, leaves_out);
    options.add_options("Study")
        ("features-list", "the F values, comma-separated", cxxopts::value<std::string>()->default_value("100,767,768,1000"))
        ("profile",
         "full: the defaults, the original's exact configuration (34 min 37 s on 2 CPU cores, measured 2026-11-25). quick "
         "(synthetic data only; minutes): the study at width 64, every width-like value scaled by 64/768, with a "
         "larger lr and fewer steps: " + sae::profile_text(kQuick) + ". The command line overrides a profile.",
         cxxopts::value<std::string>()->default_value("full"));
    cxxopts::ParseResult parsed;
    if (!sae::parse_command_line(options, argc, argv, parsed)) return 0;
    const sae::Profile profile = sae::study_profile(options, parsed, kQuick);
    const std::string out = sae::option_value(parsed, profile, "out");
    const std::vector<int64_t> features = sae::parse_increasing_int_list("features-list", sae::option_value(parsed, profile, "features-list"));

    std::vector<sae::StudyRun> runs;
    for (int64_t f : features) {
      sae::Profile run_profile = profile;
      run_profile["features"] = std::to_string(f);
      run_profile["init"] = "";
      run_profile["resume"] = "";
      // What ties an architecture to one F is named as the sweep's (its checks name --features).
      const sae::TrainConfig base = sae::training_config(parsed, run_profile, /*validate=*/false);
      const std::vector<std::string> reads = sae::run_unit(base).reads();
      if (std::find(reads.begin(), reads.end(), "matryoshka-widths") != reads.end())
        throw sae::UsageError(sae::cat("--architecture ", base.architecture, ": its --matryoshka-widths end at one F, ",
                                       "and recon_vs_f trains one run per F of --features-list"));
      const sae::ArchSettings settings = sae::arch_settings(base);
      if (settings.has("k") && settings.integer("k") > f)
        throw sae::UsageError(sae::cat("--k ", settings.integer("k"), " is more than F = ", f, " of --features-list"));
      runs.push_back({"F_" + std::to_string(f), sae::training_config(parsed, run_profile), ""});
    }
    const auto begin = std::chrono::steady_clock::now();
    sae::run_study("recon_vs_f", runs, out, sae::print_line,
                   [&](const std::vector<sae::RunOutcome>& outcomes) { summarise(runs, outcomes, out); });
    std::fputs(sae::study_time(begin).c_str(), stdout);
    return 0;
  });
}
