// sae_train: trains one SAE, or several on one data stream (--l1-list, --k-list, --layer-list,
// --transcoder-list, --hook-list: each batch read and run through the model once; OUT/l1_<value>/,
// OUT/k_<value>/, OUT/layer_<L>/, OUT/hook_<name>/ per SAE or transcoder, each a complete run folder)
// (docs/contract.md §5), listed in
// OUT/sweep.json. Under mpirun, on several ranks (docs/distributed.md): --shards S latent shards times
// P / S data-parallel replicas, or --distribute (each SAE of a list on one rank; from text the ranks
// share the language model's work).
// Thin: options -> TrainConfig(s) -> train() / train_together() (with the checkpoint evaluator of
// --eval-text) -> report, evals.csv, figures.
#include <cstdio>
#include <memory>
#include <optional>
#include <vector>

#include "sae/cli/cli.h"
#include "sae/cli/run_list.h"
#include "sae/dist/mpi_world.h"
#include "sae/eval/checkpoint_eval.h"
#include "sae/report/plot.h"
#include "sae/train/options.h"
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
// The options, the configs they make (one per SAE), and whether the program should go on (not --help).
struct Parsed {
  std::vector<sae::TrainConfig> configs;
  std::unique_ptr<sae::ListFolder> list_folder;  // a list's OUT, held to the end (sae/cli/run_list.h)
  bool distribute = false;  // --distribute: each SAE on one rank
  bool go = false;
};

// owner: as list_configs's.
Parsed parse(int argc, char** argv, bool owner) {
  cxxopts::Options options("sae_train", "Train a sparse autoencoder on activations (defaults: the original study)");
  sae::add_training_options(options);
  options.add_options()("profile", "preset option values: 'demo' (what make demo runs) or 'none'",
                        cxxopts::value<std::string>()->default_value("none"))(
      "l1-list", "train one SAE per lambda (comma-separated, increasing) on the same batches, into OUT/l1_<lambda>/",
      cxxopts::value<std::string>())(
      "k-list", "architectures set by --k: one SAE per k (comma-separated, increasing) on the same batches, into "
                "OUT/k_<k>/",
      cxxopts::value<std::string>())(
      "layer-list", "from text: one SAE per block index L (comma-separated, increasing) at hidden_states[L], all "
                    "from one forward pass, into OUT/layer_<L>/",
      cxxopts::value<std::string>())(
      "transcoder-list", "from text: one transcoder per block L (comma-separated, increasing) of its MLP "
                         "(--transcoder L), all from one forward pass, into OUT/layer_<L>/",
      cxxopts::value<std::string>())(
      "hook-list", "from text: one SAE per hook point (comma-separated, SAELens's names as --hook), all from one "
                   "forward pass, into OUT/hook_<name>/",
      cxxopts::value<std::string>())(
      "distribute", "under mpirun with --l1-list, --k-list, --layer-list, --transcoder-list or --hook-list: each SAE "
                    "trained "
                    "whole on one rank (SAE i on rank i mod P) instead of every SAE on every rank's shards; from "
                    "text, the ranks share the language model's work (docs/distributed.md)");
  cxxopts::ParseResult parsed;
  Parsed out;
  if (!sae::parse_command_line(options, argc, argv, parsed)) return out;
  const std::string profile_name = parsed["profile"].as<std::string>();
  if (profile_name != "demo" && profile_name != "none")
    throw sae::UsageError("--profile: expected demo or none, got '" + profile_name + "'");
  auto list_text = [&](const char* option) {
    return parsed.count(option) ? std::optional<std::string>(parsed[option].as<std::string>()) : std::nullopt;
  };
  const sae::ListOptions lists{list_text("l1-list"), list_text("k-list"), list_text("layer-list"),
                               list_text("transcoder-list"), list_text("hook-list")};
  sae::TrainConfig config = sae::training_config(parsed, profile_name == "demo" ? kDemo : sae::Profile{},
                                                 !lists.any());  // each SAE of a list is validated when it starts
  out.distribute = parsed["distribute"].as<bool>();
  if (out.distribute && !sae::launched_by_mpirun())  // (it would train the whole list here, as without it)
    throw sae::UsageError("--distribute spreads a list's SAEs over the ranks of mpirun: launched alone, give the "
                          "list without it (one pass trains them all here)");
  std::vector<sae::TrainConfig> configs = sae::list_configs(config, lists, owner, out.list_folder);
  if (configs.empty()) configs = sae::resumed_list_configs(config, owner, out.list_folder);  // --resume OUT of a list's run
  if (out.distribute && configs.empty())
    throw sae::UsageError("--distribute spreads the SAEs of a list over the ranks: give --l1-list, --k-list, "
                          "--layer-list, --transcoder-list or --hook-list");
  if (out.distribute && config.shards > 1)
    throw sae::UsageError("--distribute trains each SAE whole on one rank: leave --shards out");
  if (configs.empty()) configs.push_back(config);
  out.configs = configs;
  out.go = true;
  return out;
}

// The reports of finished runs, and their figures drawn.
std::string report(const std::vector<sae::TrainResult>& results) {
  // The model is saved: a missing gnuplot only costs the PNGs (their data and scripts are still
  // written) and gets one note; a gnuplot that fails gets a warning.
  const bool draw = sae::gnuplot_found();
  std::string text;
  for (const sae::TrainResult& result : results) {
    text += sae::format_report(result);
    const sae::CollectiveStats& c = result.collectives;
    if (c.calls > 0) {  // a distributed run: rank 0's share of the loop in collectives (bench/RESULTS.md)
      char line[400];
      std::snprintf(line, sizeof line,
                    "  collectives (rank 0, training loop): %lld calls, %.3f MB handed over, %.3f MB sent by a ring, "
                    "%.3f s = %.1f%% of the loop\n",
                    (long long)c.calls, c.payload_bytes / 1e6, c.ring_bytes / 1e6, c.seconds,
                    result.seconds > 0 ? 100 * c.seconds / result.seconds : 0.0);
      text += line;
    }
    // --eval-text: the evaluations of its checkpoints in one table (rewritten from their eval.json).
    const std::string evals = sae::write_evals_csv(result.out_dir);
    if (!evals.empty()) text += "  evaluations of its checkpoints: " + evals + "\n";
    // A run that was finished already gets its figures drawn again only where they are missing or
    // older than its metrics.csv (a crash while they were drawn).
    if (result.already_finished && sae::training_run_figures_current(result.out_dir)) continue;
    try {
      for (const std::string& png : sae::plot_training_run(result.out_dir, draw)) text += "  figure: " + png + "\n";
    } catch (const sae::DataError& e) {
      std::fprintf(stderr, "sae_train: warning: no figures: %s\n", e.what());
    }
  }
  if (!draw && !results.empty()) text += "figures: not drawn (no gnuplot on PATH); each run's figures/*.gp draws them\n";
  return text;
}

// --distribute from text: what each pass over the data cost this rank (its share of the language
// model's windows; the activations the others computed, summed in).
std::string pass_report(const std::vector<sae::PassShare>& passes, int rank, int ranks) {
  std::string text;
  for (const sae::PassShare& p : passes) {
    if (!p.shared) continue;
    char line[400];
    std::snprintf(line, sizeof line,
                  "rank %d of %d, steps %lld to %lld (%lld SAEs here): the language model ran on %lld of the %lld "
                  "windows here; %.3f MB of activations summed over the ranks\n",
                  rank, ranks, (long long)p.first_step + 1, (long long)p.last_step, (long long)p.saes_here,
                  (long long)p.counts.windows_run, (long long)p.counts.windows, 4e-6 * double(p.counts.floats_summed));
    text += line;
  }
  return text;
}

// Under mpirun (docs/distributed.md): every rank parses the same command line and trains its part;
// a failure is one line on rank 0 (or on the rank that failed inside the loop, then mpirun stops the
// others) and a non-zero exit from every rank.
int train_distributed(sae::MpiWorld& world, int argc, char** argv) {
  world.announce_termination("sae_train");
  sae::Collectives& everyone = world.collectives(1, sae::Device::CPU);
  bool distribute = false;
  try {
    Parsed parsed;
    everyone.agree([&] { parsed = parse(argc, argv, /*owner=*/world.rank() == 0); });
    if (!parsed.go) return 0;
    distribute = parsed.distribute;
    // Every rank must run the same options: rank 0's, compared here.
    for (const sae::TrainConfig& mine : parsed.configs) {
      const sae::Json own = mine.to_json();
      const sae::Json lead = sae::Json::parse(everyone.broadcast(own.dump(), 0));
      everyone.agree([&] {
        for (const auto& [key, value] : lead.items())
          if (!own.has(key) || own.at(key) != value)
            throw sae::UsageError(sae::cat("every rank must be given the same options: its ", key, " is ",
                                           own.has(key) ? own.at(key).dump() : "(absent)", ", rank 0's ",
                                           value.dump()));
      });
    }
    std::string text;
    if (parsed.distribute) {  // SAE i on rank i mod P, each whole; from text, one model pass shared
      const sae::SpreadResult spread = sae::train_spread(parsed.configs, everyone);
      text = report(spread.results) + pass_report(spread.passes, world.rank(), world.ranks());
    } else {
      const sae::TrainConfig& first = parsed.configs.front();
      // The device and the grid's shape are agreed in a phase (a rank without the GPU asked for, or
      // S not dividing the ranks, refuses on every rank); the grid is made outside it, since its
      // communicators (and NCCL's) are collective calls, which a phase must not make: a failure
      // there is this rank's line and ends the job (world.fail).
      sae::Device device = sae::Device::CPU;
      everyone.agree([&] {
        device = sae::resolve_device(first.device);
        world.check_grid(static_cast<int>(first.shards));
      });
      sae::Collectives* grid = &world.collectives(static_cast<int>(first.shards), device);
      const std::vector<sae::TrainResult> results = sae::train_together(parsed.configs, grid);
      if (world.rank() == 0) text = report(results);
    }
    for (int r = 0; r < world.ranks(); ++r) {  // rank 0 prints every rank's reports, in rank order
      const std::string part = parsed.distribute ? everyone.broadcast(text, r) : (r == 0 ? text : "");
      if (world.rank() == 0) std::printf("%s", part.c_str());
    }
    return 0;
  } catch (const sae::RankFailure& e) {
    if (world.rank() == 0) std::fprintf(stderr, "sae_train: error: %s%s\n", e.what(), e.code == 2 ? " (see --help)" : "");
    world.error_reported();  // after the line: a stop while it is printed still leaves one line
    return e.code;
  } catch (const sae::TrainingDiverged& e) {
    // --distribute: this rank's own SAE (the others go on, then wait for this one): its line, and
    // the job ends (world.fail). A grid of shards x replicas: every rank sees the same sums.
    if (distribute) world.fail("sae_train", e, 1);
    if (world.rank() == 0) std::fprintf(stderr, "sae_train: error: %s\n", e.what());
    world.error_reported();
    return 1;
  } catch (const sae::UsageError& e) {
    world.fail("sae_train", e, 2);
  } catch (const std::exception& e) {
    world.fail("sae_train", e, 1);
  }
  return 1;  // not reached: fail() ends this rank
}
}  // namespace

int main(int argc, char** argv) {
  return sae::run_main("sae_train", argc, argv, [&] {
    // MPI starts first, before any option is read, so that every rank reads them together.
    bool shards_given = false;
    for (int i = 1; i < argc; ++i) shards_given = shards_given || std::string(argv[i]).rfind("--shards", 0) == 0;
    std::unique_ptr<sae::MpiWorld> world = sae::start_mpi_world(shards_given, &argc, &argv);
    if (world) return train_distributed(*world, argc, argv);
    const Parsed parsed = parse(argc, argv, /*owner=*/true);
    if (parsed.go)
      std::printf("%s", report(sae::train_together(parsed.configs, nullptr, sae::checkpoint_evaluator())).c_str());
    return 0;
  });
}
