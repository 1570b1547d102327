// sae_train: trains one SAE (docs/contract.md §5). Thin: options -> TrainConfig -> train() -> report.
#include <cstdio>

#include "sae/cli/cli.h"
#include "sae/report/plot.h"
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
}  // namespace

int main(int argc, char** argv) {
  return sae::run_main("sae_train", argc, argv, [&] {
    cxxopts::Options options("sae_train", "Train a sparse autoencoder on activations (defaults: the original study)");
    sae::add_training_options(options);
    options.add_options()("profile", "preset option values: 'demo' (what make demo runs) or 'none'",
                          cxxopts::value<std::string>()->default_value("none"));
    cxxopts::ParseResult parsed;
    if (!sae::parse_command_line(options, argc, argv, parsed)) return 0;
    const std::string profile_name = parsed["profile"].as<std::string>();
    if (profile_name != "demo" && profile_name != "none")
      throw sae::UsageError("--profile: expected demo or none, got '" + profile_name + "'");
    sae::TrainConfig config = sae::training_config(parsed, profile_name == "demo" ? kDemo : sae::Profile{});
    sae::TrainResult result = sae::train(config);
    std::printf("%s", sae::format_report(result).c_str());
    try {  // the model is saved; a missing gnuplot only costs the figures
      for (const std::string& png : sae::plot_training_run(result.out_dir)) std::printf("  figure: %s\n", png.c_str());
    } catch (const sae::DataError& e) {
      std::fprintf(stderr, "sae_train: warning: no figures: %s\n", e.what());
    }
    return 0;
  });
}
