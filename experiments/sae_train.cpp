// sae_train: trains one SAE, or several on one data stream (--l1-list, --k-list: each batch read and
// run through the model once; OUT/l1_<value>/ or OUT/k_<value>/ per SAE, each a complete run folder)
// (docs/contract.md §5), listed in OUT/sweep.json. Thin: options -> TrainConfig(s) -> train() /
// train_together() -> report, figures.
#include <cstdio>
#include <filesystem>
#include <vector>

#include "io/atomic_file.h"
#include "sae/cli/cli.h"
#include "sae/train/options.h"
#include "sae/report/plot.h"
#include "sae/report/table.h"
#include "sae/train/run_start.h"
#include "sae/train/trainer.h"

namespace {
// --profile demo: what `make demo` runs: a short CPU run on synthetic data (under 3 minutes on 2
// cores) that still learns sparse features and recovers planted concepts.
const sae::Profile kDemo = {
    {"synthetic-d", "256"},        {"synthetic-concepts", "512"}, {"synthetic-story-concepts", "32"},
    {"synthetic-active", "6"},     {"features", "2048"},          {"batch", "512"},
    {"normalize", "dataset"},      {"lr", "3e-3"},                {"l1", "1"},
    {"steps", "4000"},             {"checkpoint-every", "1000"},   {"log-every", "20"},
    {"l1-warmup-steps", "100"},    {"dead-window", "200000"},
};
// OUT/sweep.json: the SAEs of an --l1-list / --k-list run (the option, its values, and the options
// they share), written before any of them starts, so that `--resume OUT` after a crash continues
// every one of them, also one killed before it wrote its config.json.
constexpr const char* kSweepFile = "sweep.json";

// One config per value of --l1-list or --k-list, each into OUT/<option>_<value>/.
std::vector<sae::TrainConfig> sweep_configs(const sae::TrainConfig& base, const std::string& option,
                                            const std::vector<std::string>& values) {
  std::vector<sae::TrainConfig> configs;
  for (const std::string& value : values) {
    sae::TrainConfig c = base;
    std::string name;
    if (option == "l1") {
      c.l1 = std::stod(value);
      name = "l1_" + sae::format_number(c.l1, 6);
    } else {
      const int64_t k = std::stoll(value);
      c.arch.set("k", sae::Json(k));
      name = "k_" + std::to_string(k);
    }
    c.out = (std::filesystem::path(base.out) / name).string();
    configs.push_back(c);
  }
  return configs;
}

std::vector<sae::TrainConfig> sweep_configs(const sae::TrainConfig& base, const cxxopts::ParseResult& parsed) {
  const bool l1s = parsed.count("l1-list"), ks = parsed.count("k-list");
  if (l1s && ks) throw sae::UsageError("give --l1-list or --k-list, not both");
  if (l1s && base.was_given("l1")) throw sae::UsageError("give --l1 or --l1-list, not both");
  if (ks && base.was_given("k")) throw sae::UsageError("give --k or --k-list, not both");
  if (!l1s && !ks) return {};
  std::vector<std::string> values;
  if (l1s)
    for (double l1 : sae::parse_increasing_number_list("l1-list", parsed["l1-list"].as<std::string>()))
      values.push_back(sae::format_number(l1, 17));
  if (ks)
    for (int64_t k : sae::parse_positive_int_list("k-list", parsed["k-list"].as<std::string>()))
      values.push_back(std::to_string(k));
  const std::string option = l1s ? "l1" : "k";
  const std::filesystem::path file = std::filesystem::path(base.out) / kSweepFile;
  if (std::filesystem::exists(file) && !base.overwrite)
    throw sae::UsageError(sae::cat("--out ", base.out, " already holds SAEs trained together (", file.string(),
                                   "); continue them with --resume ", base.out,
                                   ", replace them with --overwrite, or choose another --out"));
  std::filesystem::create_directories(base.out);
  sae::Json sweep = sae::Json::object();
  sweep["option"] = option;
  sae::Json list = sae::Json::array();
  for (const std::string& v : values) list.push_back(v);
  sweep["values"] = list;
  sweep["config"] = base.to_json();
  sae::write_file_atomic(file.string(), sweep.dump(2) + "\n");
  return sweep_configs(base, option, values);
}

// --resume OUT of an --l1-list / --k-list run: every SAE of OUT/sweep.json (each continued from its
// folder, or started there when it had not begun), else every run folder under OUT.
std::vector<sae::TrainConfig> resumed_sweep_configs(const sae::TrainConfig& cli) {
  std::vector<sae::TrainConfig> configs;
  const std::filesystem::path file = std::filesystem::path(cli.resume) / kSweepFile;
  if (!std::filesystem::exists(file)) {
    for (const std::string& run : sae::run_folders_under(cli.resume)) {
      sae::TrainConfig c = cli;
      c.resume = run;
      configs.push_back(c);
    }
    return configs;
  }
  const sae::Json sweep = sae::read_json_file(file.string());
  std::vector<std::string> values;
  sae::TrainConfig base;
  try {
    const std::string option = sweep.at("option").as_string();
    if (option != "l1" && option != "k") throw sae::DataError("option must be \"l1\" or \"k\"");
    for (const sae::Json& v : sweep.at("values").elements()) values.push_back(v.as_string());
    base = sae::resumed_config(sweep.at("config"), cli);
    base.out = cli.resume;
    base.resume.clear();
    base.given = cli.given;
    for (sae::TrainConfig& c : sweep_configs(base, option, values)) {
      if (std::filesystem::exists(std::filesystem::path(c.out) / "config.json")) {  // begun: continued
        sae::TrainConfig resumed = cli;
        resumed.resume = c.out;
        configs.push_back(resumed);
      } else {
        configs.push_back(c);  // killed before it began: started
      }
    }
  } catch (const std::invalid_argument&) {
    throw sae::DataError(sae::cat(file.string(), ": a value is not a number"));
  } catch (const sae::DataError& e) {
    throw sae::DataError(sae::cat(file.string(), ": ", e.what()));
  }
  return configs;
}
}  // namespace

int main(int argc, char** argv) {
  return sae::run_main("sae_train", argc, argv, [&] {
    cxxopts::Options options("sae_train", "Train a sparse autoencoder on activations (defaults: the original study)");
    sae::add_training_options(options);
    options.add_options()("profile", "preset option values: 'demo' (what make demo runs) or 'none'",
                          cxxopts::value<std::string>()->default_value("none"))(
        "l1-list", "train one SAE per lambda (comma-separated, increasing) on the same batches, into OUT/l1_<lambda>/",
        cxxopts::value<std::string>())(
        "k-list", "architectures set by --k: one SAE per k (comma-separated, increasing) on the same batches, into "
                  "OUT/k_<k>/",
        cxxopts::value<std::string>());
    cxxopts::ParseResult parsed;
    if (!sae::parse_command_line(options, argc, argv, parsed)) return 0;
    const std::string profile_name = parsed["profile"].as<std::string>();
    if (profile_name != "demo" && profile_name != "none")
      throw sae::UsageError("--profile: expected demo or none, got '" + profile_name + "'");
    const bool lists = parsed.count("l1-list") || parsed.count("k-list");  // each SAE is validated when it starts
    sae::TrainConfig config = sae::training_config(parsed, profile_name == "demo" ? kDemo : sae::Profile{}, !lists);
    std::vector<sae::TrainConfig> configs = sweep_configs(config, parsed);
    if (configs.empty() && !config.resume.empty()) configs = resumed_sweep_configs(config);
    if (configs.empty()) configs.push_back(config);
    // The model is saved: a missing gnuplot only costs the PNGs (their data and scripts are still
    // written) and gets one note; a gnuplot that fails gets a warning.
    const bool draw = sae::gnuplot_found();
    for (const sae::TrainResult& result : sae::train_together(configs)) {
      std::printf("%s", sae::format_report(result).c_str());
      // A run that was finished already gets only the figures it lacks (a crash while they were drawn).
      if (result.already_finished && sae::training_run_figures_exist(result.out_dir)) continue;
      try {
        for (const std::string& png : sae::plot_training_run(result.out_dir, draw))
          std::printf("  figure: %s\n", png.c_str());
      } catch (const sae::DataError& e) {
        std::fprintf(stderr, "sae_train: warning: no figures: %s\n", e.what());
      }
    }
    if (!draw) std::printf("figures: not drawn (no gnuplot on PATH); each run's figures/*.gp draws them\n");
    return 0;
  });
}
