// sae_train: trains one SAE, or several on one data stream (--l1-list, --k-list: each batch read and
// run through the model once; OUT/l1_<value>/ or OUT/k_<value>/ per SAE, each a complete run folder)
// (docs/contract.md §5). Thin: options -> TrainConfig(s) -> train() / train_together() -> report.
#include <cstdio>
#include <filesystem>
#include <vector>

#include "sae/cli/cli.h"
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
// One config per value of --l1-list or --k-list, each into OUT/<option>_<value>/.
std::vector<sae::TrainConfig> sweep_configs(const sae::TrainConfig& base, const cxxopts::ParseResult& parsed) {
  const bool l1s = parsed.count("l1-list"), ks = parsed.count("k-list");
  if (l1s && ks) throw sae::UsageError("give --l1-list or --k-list, not both");
  if (l1s && base.was_given("l1")) throw sae::UsageError("give --l1 or --l1-list, not both");
  if (ks && base.was_given("k")) throw sae::UsageError("give --k or --k-list, not both");
  std::vector<sae::TrainConfig> configs;
  auto add = [&](const std::string& name, auto set) {
    sae::TrainConfig c = base;
    set(c);
    c.out = (std::filesystem::path(base.out) / name).string();
    configs.push_back(c);
  };
  if (l1s)
    for (double l1 : sae::parse_increasing_number_list("l1-list", parsed["l1-list"].as<std::string>()))
      add("l1_" + sae::format_number(l1, 6), [l1](sae::TrainConfig& c) { c.l1 = l1; });
  if (ks)
    for (int64_t k : sae::parse_positive_int_list("k-list", parsed["k-list"].as<std::string>()))
      add("k_" + std::to_string(k), [k](sae::TrainConfig& c) { c.arch.set("k", sae::Json(k)); });
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
    if (configs.empty() && !config.resume.empty()) {  // --resume OUT of an --l1-list / --k-list run
      for (const std::string& run : sae::run_folders_under(config.resume)) {
        sae::TrainConfig c = config;
        c.resume = run;
        configs.push_back(c);
      }
    }
    if (configs.empty()) configs.push_back(config);
    // The model is saved: a missing gnuplot only costs the PNGs (their data and scripts are still
    // written) and gets one note; a gnuplot that fails gets a warning.
    const bool draw = sae::gnuplot_found();
    for (const sae::TrainResult& result : sae::train_together(configs)) {
      std::printf("%s", sae::format_report(result).c_str());
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
