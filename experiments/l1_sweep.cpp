// l1_sweep: the study's second and third results (docs/contract.md §1.2-1.3): an L1 sweep at F = 10000,
// lambda in {0, 5, 50, 500}, then lambda = 50 continued to step 105000. Defaults = the original:
// one story per step, per-story normalisation, Adam lr 1e-5, 35000 steps. Thin: options -> one
// TrainConfig per lambda (+ the continuation) -> run_study (skips finished runs, resumes
// interrupted ones) -> summary table at --summary-step and figures.
//   OUT/l1_<lambda>/, OUT/l1_<lambda>_to_<N>/ (the continuation), OUT/summary.csv, OUT/summary.md,
//   OUT/l1_sweep_{l1,rec_loss,nonzero,zoom,continued}.png (each with .gp and .dat beside it); the zoom
//   is the reconstruction loss over the last half of training on a linear axis
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "sae/cli/cli.h"
#include "sae/study/study.h"
#include "sae/study/summary.h"
#include "sae/train/dictionary_reads.h"

namespace fs = std::filesystem;

namespace {

// --profile quick: the same study at width 64 instead of 768, so that both studies finish in a few
// minutes on 2 CPU cores. Every width-like quantity is scaled by 64/768 = 1/12: d, F (10000 -> 833),
// the synthetic data's concept counts and active concepts per token (story-level ones: 1 per story,
// the smallest count), and lambda (per-story normalisation scales every token to norm d, so the
// penalty's strength relative to the reconstruction scales with d); a larger learning rate and
// fewer steps (the continuation keeps the original's 3x: 35000 -> 105000 becomes 12000 -> 36000).
sae::Profile quick_profile() {
  sae::Profile p = sae::quick_study_data();
  p.insert({
    {"features", "833"},
    {"l1-list", "0,0.4167,4.167,41.67"},
    {"lr", "3e-4"},
    {"steps", "12000"},
    {"summary-step", "12000"},
    {"continue-lambda", "4.167"},
  });
  return p;
}
const sae::Profile kQuick = quick_profile();

// The original's nonzero proportions at step 35000 (docs/contract.md §1.2) and lambda = 50 at 105000.
struct OriginalPoint {
  double lambda, proportion;
};
const OriginalPoint kOriginal[] = {{0, 0.9959}, {5, 0.2484}, {50, 0.03829}, {500, 0.01068}};
constexpr double kOriginalContinued = 0.0156;  // lambda = 50, step 105000: ~156 active features
constexpr double kOriginalD = 768, kOriginalF = 10000;

// Per-story normalisation scales every token to norm d, so a penalty lambda at width d acts like
// lambda * 768 / d at the original's width: the original's numbers go beside the lambda that
// stands for theirs (exactly theirs when d = 768).
double original_lambda(double lambda, int64_t d) { return lambda * kOriginalD / double(d); }
const OriginalPoint* original_point(double lambda, int64_t d) {
  const double l = original_lambda(lambda, d);
  for (const OriginalPoint& p : kOriginal)
    if (std::fabs(l - p.lambda) <= 0.01 * p.lambda + 1e-12) return &p;
  return nullptr;
}

std::string run_name(double lambda) { return "l1_" + sae::format_number(lambda, 6); }

// One run per lambda, then (unless --continue-lambda none) the chosen lambda's run continued to
// --continue-steps as a last run. Returns the index of the continued lambda in `lambdas`, or -1.
int plan_runs(const cxxopts::ParseResult& parsed, const sae::Profile& profile, const std::vector<double>& lambdas,
              int64_t continue_steps, const std::string& out, std::vector<sae::StudyRun>& runs) {
  for (double lambda : lambdas) {
    sae::Profile run_profile = profile;
    run_profile["l1"] = sae::format_number(lambda, 17);
    run_profile["init"] = "";
    run_profile["resume"] = "";
    runs.push_back({run_name(lambda), sae::training_config(parsed, run_profile), ""});
  }
  const std::string continue_text = sae::option_value(parsed, profile, "continue-lambda");
  if (continue_text == "none") return -1;
  const double lambda = sae::number_value("continue-lambda", continue_text);
  int continued = -1;
  for (size_t i = 0; i < lambdas.size(); ++i)
    if (std::fabs(lambdas[i] - lambda) <= 1e-9 * std::max(1.0, lambda)) continued = int(i);
  if (continued < 0)
    throw sae::UsageError("--continue-lambda: expected one of --l1-list or 'none', got '" + continue_text + "'");
  // 0: three times the runs' steps (as resolved: --training-tokens sets them from the batch).
  if (continue_steps == 0) continue_steps = 3 * runs[continued].config.steps;
  if (continue_steps <= runs[continued].config.steps)
    throw sae::UsageError(sae::cat("--continue-steps: ", continue_steps, " is not beyond --steps ",
                                   runs[continued].config.steps));
  if (continue_steps > sae::kJsonMaxExactInteger)  // config.json records it exactly (as every integer option)
    throw sae::UsageError(sae::cat("--continue-steps: ", continue_steps, " is more than 2^53 (3 x --steps by default)"));
  sae::StudyRun more = runs[continued];
  more.name = run_name(lambdas[continued]) + "_to_" + std::to_string(continue_steps);
  more.config.steps = continue_steps;
  more.config.training_tokens = 0;  // its length is continue_steps (a recorded token count would set it back)
  more.continue_from = (fs::path(out) / runs[continued].name).string();
  runs.push_back(more);
  return continued;
}

std::vector<std::string> concept_cells(const sae::RunOutcome& r) {
  if (!r.concepts) return {"", "", ""};
  return {sae::format_number(r.concepts->mmcs, 3), sae::format_number(r.concepts->recovered, 3),
          sae::format_number(r.concepts->purity, 3)};
}

// One table row: a run's read-outs at (the last logged step at or below) `step`, beside the
// original's number for the lambda that stands for this one (`original_proportion`, NaN if none).
std::vector<std::string> summary_row(const std::string& label, double lambda, int64_t d, int64_t features,
                                     const sae::Metrics& m, size_t row, const sae::RunOutcome& outcome,
                                     double original_proportion, const std::string& original_note, bool comparable) {
  const double proportion = m.tail_mean("nonzero_proportion", row);
  const bool known = !std::isnan(original_proportion);
  std::vector<std::string> cells = {
      label, comparable ? sae::format_number(original_lambda(lambda, d), 4) : "", sae::format_number(m.rows[row][0], 10),
      sae::format_number(m.column("nonzero_proportion")[row]), sae::format_number(proportion),
      sae::format_number(proportion * double(features), 4), sae::format_number(m.tail_mean("rec_loss_per_element", row)),
      sae::format_number(m.tail_mean("l1_per_element", row)),
      known ? sae::format_number(original_proportion) + original_note : "",
      known ? sae::format_number(original_proportion * kOriginalF, 4) : ""};
  for (const std::string& c : concept_cells(outcome)) cells.push_back(c);
  return cells;
}

// The summary table at --summary-step, the four figures of the sweep and the continued run's
// figure, and summary.csv / summary.md.
void summarise(const std::vector<sae::StudyRun>& runs, const std::vector<sae::RunOutcome>& outcomes,
               const std::vector<double>& lambdas, int continued, int64_t summary_step, const std::string& out) {
  const int64_t d = outcomes.front().d, features = runs.front().config.features;
  // The original's lambda means the same only for its SAE (standard, an L1 penalty) on inputs it
  // normalised per story (each token at norm d); otherwise its numbers are left out.
  const sae::TrainConfig& c0 = runs.front().config;
  const bool comparable = c0.normalize == sae::Normalization::Story && c0.architecture == "standard" &&
                          sae::dictionary_kind(c0) == sae::DictionaryKind::Sae;
  sae::Table table{{"lambda", "as lambda at d = 768", "step", "nonzero proportion at step",
                    "nonzero proportion (mean)", "active features / token (mean)", "rec loss / element (mean)",
                    "l1 / element (mean)", "original proportion", "original active / token", "MMCS",
                    "recovered", "purity"},
                   {}};
  std::vector<sae::Series> l1_curves, rec_curves, nonzero_curves;
  std::vector<int64_t> steps_used;
  std::vector<double> final_rec;  // plateau of each sweep run's rec loss, for the zoom's range
  double last_step = 0;
  for (size_t i = 0; i < lambdas.size(); ++i) {
    const sae::Metrics m = sae::read_metrics((fs::path(outcomes[i].dir) / "metrics.csv").string());
    const size_t row = m.row_at_or_below(std::min(summary_step, runs[i].config.steps));
    const OriginalPoint* original = comparable ? original_point(lambdas[i], d) : nullptr;
    table.rows.push_back(summary_row(sae::format_number(lambdas[i], 6), lambdas[i], d, features, m, row, outcomes[i],
                                     original ? original->proportion : NAN, "", comparable));
    steps_used.push_back(int64_t(m.rows[row][0]));
    // Curves up to the sweep's own length (the continued run is drawn in its own figure).
    const size_t last = m.row_at_or_below(runs[i].config.steps);
    auto head = [&](const std::string& column) {
      std::vector<double> v = m.column(column);
      v.resize(last + 1);
      return v;
    };
    const std::string title = "lambda = " + sae::format_number(lambdas[i], 6);
    l1_curves.push_back({title, head("step"), head("l1_per_element")});
    rec_curves.push_back({title, head("step"), head("rec_loss_per_element")});
    nonzero_curves.push_back({title, head("step"), head("nonzero_proportion")});
    last_step = std::max(last_step, m.rows[last][0]);
    final_rec.push_back(m.tail_mean("rec_loss_per_element", last));
  }
  std::string continuation, figures = "l1_sweep_l1.png, l1_sweep_rec_loss.png, l1_sweep_nonzero.png, l1_sweep_zoom.png";
  sae::FigureDrawer drawing;
  if (continued >= 0) {
    const sae::RunOutcome& r = outcomes.back();
    const int64_t continue_steps = runs.back().config.steps;
    const sae::Metrics m = sae::read_metrics((fs::path(r.dir) / "metrics.csv").string());
    const size_t row = m.row_at_or_below(continue_steps);
    const double proportion = m.tail_mean("nonzero_proportion", row);
    const OriginalPoint* original = comparable ? original_point(lambdas[continued], d) : nullptr;
    const bool is_fifty = original && original->lambda == 50;
    table.rows.push_back(summary_row(sae::format_number(lambdas[continued], 6) + " (continued)", lambdas[continued], d,
                                     features, m, row, r, is_fifty ? kOriginalContinued : NAN, " (step 105000)", comparable));
    continuation = sae::cat("lambda = ", sae::format_number(lambdas[continued], 6), " continued to step ",
                            int64_t(m.rows[row][0]), ": ", sae::format_number(proportion * double(features), 4),
                            " active features per token (nonzero proportion ", sae::format_number(proportion), ")",
                            is_fifty ? "; the original: about 156 (0.0156) at step 105000" : "", ".\n");
    sae::Figure more;
    more.title = sae::cat("lambda = ", sae::format_number(lambdas[continued], 6), " continued to step ", continue_steps,
                          " (d = ", d, ", F = ", features, ")");
    more.xlabel = sae::cat("step (dashed: the end of the sweep's run, step ", runs[continued].config.steps, ")");
    more.ylabel = "active features per token (L0, log scale)";
    more.logy = true;
    more.series.push_back({"lambda = " + sae::format_number(lambdas[continued], 6), m.column("step"), m.column("l0")});
    more.xmarks.push_back(double(runs[continued].config.steps));
    drawing.plot(more, (fs::path(out) / "l1_sweep_continued.png").string());
    figures += ", l1_sweep_continued.png";
  }
  const bool same_step = std::all_of(steps_used.begin(), steps_used.end(), [&](int64_t s) { return s == steps_used[0]; });
  const std::string notes = sae::cat(
      "Data: ", sae::data_description(runs[0].config, d), "; F = ", features, ", ",
      sae::training_description(runs[0].config), ".\n", "Summary at step ",
      same_step ? std::to_string(steps_used[0]) : std::string("(see the step column)"),
      " (the last logged step at or below --summary-step ", summary_step, "). \"mean\" = mean over the last 10% of "
      "logged steps up to that step; active features / token = mean proportion * F; losses per element; l1 before "
      "multiplying by lambda (of a JumpReLU SAE: L0 per element, what its lambda multiplies). ",
      comparable ? "\"as lambda at d = 768\" = lambda * 768 / d (per-story normalisation scales tokens to norm d); the "
                   "original's numbers (step 35000, F = 10000) stand beside the lambda that matches theirs. "
                 : "The original's numbers are left out: its lambda means the same only for the standard SAE under "
                   "per-story normalisation. ",
      continued >= 0 && (c0.lr_decay_steps > 0 || c0.lr_schedule != sae::LrSchedule::Constant)
          ? "The continuation follows the learning-rate schedule over its own length: its lr rises again where the "
            "sweep's run ended. "
          : "",
      "Concept recovery (synthetic data): of each run's final model; recovered = concepts with a decoder row at "
      "cosine >= 0.9, purity = alive features whose best concept has cosine >= 0.9.\n",
      continuation);

  auto figure = [&](const std::string& title, const std::string& ylabel, const std::vector<sae::Series>& series) {
    sae::Figure f;
    f.title = sae::cat(title, " (d = ", d, ", F = ", features,
                       comparable && d != kOriginalD ? "; original's lambda = " + sae::format_number(kOriginalD / double(d), 4) +
                                             " x ours)"
                                       : std::string(")"));
    f.xlabel = "step";
    f.ylabel = ylabel;
    f.logy = true;
    f.series = series;
    return f;
  };
  drawing.plot(figure("L1 penalty before multiplying by lambda", "l1 per element (log scale)", l1_curves),
               (fs::path(out) / "l1_sweep_l1.png").string());
  drawing.plot(figure("Reconstruction loss vs lambda", "reconstruction loss per element (log scale)", rec_curves),
               (fs::path(out) / "l1_sweep_rec_loss.png").string());
  drawing.plot(figure("Proportion of nonzero features vs lambda", "nonzero proportion (log scale)", nonzero_curves),
               (fs::path(out) / "l1_sweep_nonzero.png").string());
  sae::Figure zoom = sae::zoom_figure("", "reconstruction loss per element", rec_curves, final_rec, last_step);
  zoom.title = figure("Zoom: reconstruction loss, last half, linear axis", "", {}).title;
  drawing.plot(zoom, (fs::path(out) / "l1_sweep_zoom.png").string());
  for (const std::string& failure : drawing.failures()) std::fprintf(stderr, "l1_sweep: warning: %s\n", failure.c_str());
  std::fputs(sae::write_summary(out, "l1_sweep: sparsity vs lambda", notes, table, drawing.describe(figures)).c_str(),
             stdout);
}

}  // namespace

int main(int argc, char** argv) {
  return sae::run_main("l1_sweep", argc, argv, [&] {
    cxxopts::Options options("l1_sweep",
                             "L1 sweep at F = 10000 and one lambda continued to a longer run (the original study's "
                             "second and third results; defaults = its exact configuration)");
    std::vector<std::string> leaves_out = sae::kStudyLeavesOut;
    leaves_out.push_back("l1");
    sae::add_training_options(options, {{"out", "runs/l1_sweep"}}, leaves_out);
    options.add_options("Study")
        ("l1-list", "the lambdas, comma-separated, increasing", cxxopts::value<std::string>()->default_value("0,5,50,500"))
        ("summary-step", "the summary table's step (the last logged step at or below it is used)",
         cxxopts::value<int64_t>()->default_value("35000"))
        ("continue-lambda", "continue this lambda's run (one of --l1-list) to --continue-steps; 'none' to skip",
         cxxopts::value<std::string>()->default_value("50"))
        ("continue-steps", "steps in total of the continued run (0: 3 x --steps, the original's ratio)",
         cxxopts::value<int64_t>()->default_value("0"))
        ("profile",
         "full: the defaults, the original's exact configuration (about 5 h on 2 CPU cores, estimated: docs/results.md). quick "
         "(synthetic data only; minutes): the study at width 64, every width-like value scaled by 64/768, with a "
         "larger lr and fewer steps: " + sae::profile_text(kQuick) + ". The command line overrides a profile.",
         cxxopts::value<std::string>()->default_value("full"));
    cxxopts::ParseResult parsed;
    if (!sae::parse_command_line(options, argc, argv, parsed)) return 0;
    const sae::Profile profile = sae::study_profile(options, parsed, kQuick);
    const std::string out = sae::option_value(parsed, profile, "out");
    const std::vector<double> lambdas =
        sae::parse_increasing_number_list("l1-list", sae::option_value(parsed, profile, "l1-list"));
    for (size_t i = 1; i < lambdas.size(); ++i)  // folders are named by 6 significant digits
      if (run_name(lambdas[i]) == run_name(lambdas[i - 1]))
        throw sae::UsageError(sae::cat("--l1-list: ", sae::format_number(lambdas[i - 1], 12), " and ",
                                       sae::format_number(lambdas[i], 12), " would share the folder ",
                                       run_name(lambdas[i]), " (named by 6 significant digits)"));
    auto int_option = [&](const std::string& name) {
      return parsed.count(name) || !profile.count(name) ? parsed[name].as<int64_t>() : std::stoll(profile.at(name));
    };
    const int64_t summary_step = int_option("summary-step");
    if (summary_step <= 0) throw sae::UsageError("--summary-step: expected a positive step");

    std::vector<sae::StudyRun> runs;
    int64_t continue_steps = int_option("continue-steps");
    const int continued = plan_runs(parsed, profile, lambdas, continue_steps, out, runs);
    const auto begin = std::chrono::steady_clock::now();
    sae::run_study("l1_sweep", runs, out, sae::print_line, [&](const std::vector<sae::RunOutcome>& outcomes) {
      summarise(runs, outcomes, lambdas, continued, summary_step, out);
    });
    std::fputs(sae::study_time(begin).c_str(), stdout);
    return 0;
  });
}
