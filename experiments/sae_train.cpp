// sae_train: trains one SAE, or several on one data stream (--l1-list, --k-list, --layer-list,
// --transcoder-list: each batch read and run through the model once; OUT/l1_<value>/, OUT/k_<value>/,
// OUT/layer_<L>/ per SAE or transcoder, each a complete run folder) (docs/contract.md §5), listed in
// OUT/sweep.json. Under mpirun, on several ranks (docs/distributed.md): --shards S latent shards times
// P / S data-parallel replicas, or --distribute (each SAE of a list on one rank; from text the ranks
// share the language model's work).
// Thin: options -> TrainConfig(s) -> train() / train_together() -> report, figures.
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <vector>

#include "io/atomic_file.h"
#include "io/file_lock.h"
#include "io/mapped_file.h"
#include "sae/arch/registry.h"
#include "sae/cli/cli.h"
#include "sae/train/arch_config.h"
#include "sae/dist/mpi_world.h"
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
// OUT/sweep.json: the SAEs of a list's run (the option, its values, and the options
// they share), written before any of them starts, so that `--resume OUT` after a crash continues
// every one of them, also one killed before it wrote its config.json.
constexpr const char* kSweepFile = "sweep.json";

// The list options and what each value sets.
const char* const kListOptions[] = {"l1", "k", "layer", "transcoder"};

// One config per value of --l1-list, --k-list, --layer-list (an SAE at hidden_states[L]) or
// --transcoder-list (a transcoder of block L's MLP), each into OUT/<option>_<value>/ (layer_<L>/ for
// the last two).
std::vector<sae::TrainConfig> sweep_configs(const sae::TrainConfig& base, const std::string& option,
                                            const std::vector<std::string>& values) {
  std::vector<sae::TrainConfig> configs;
  for (const std::string& value : values) {
    sae::TrainConfig c = base;
    std::string name;
    if (option == "l1") {
      c.l1 = std::stod(value);
      name = "l1_" + sae::format_number(c.l1, 6);
    } else if (option == "k") {
      const int64_t k = std::stoll(value);
      c.arch.set("k", sae::Json(k));
      name = "k_" + std::to_string(k);
    } else {
      const int64_t block = std::stoll(value);
      if (option == "layer") c.layer = block;
      else c.transcoder_block = block;
      c.given.push_back(option);
      name = "layer_" + std::to_string(block);
    }
    c.out = (std::filesystem::path(base.out) / name).string();
    configs.push_back(c);
  }
  return configs;
}

// Block indices of --layer-list / --transcoder-list: non-negative integers, increasing.
std::vector<std::string> block_list(const std::string& option, const std::string& text) {
  std::vector<std::string> out;
  for (double v : sae::parse_increasing_number_list(option, text)) {
    if (v != static_cast<double>(static_cast<int64_t>(v)) || v > 1024)
      throw sae::UsageError(sae::cat("--", option, ": ", v, " is not a block index"));
    out.push_back(std::to_string(static_cast<int64_t>(v)));
  }
  return out;
}

// A list's OUT is its process's while it runs (OUT/.lock, held to the end): a second list into it,
// or a --resume of it, stops with one line before it rewrites sweep.json.
void hold_list_folder(const std::string& out) {
  static std::unique_ptr<sae::FileLock> held;
  held = std::make_unique<sae::FileLock>((std::filesystem::path(out) / ".lock").string());
}

// What a list's process wrote into OUT, taken back at its exit when none of its SAEs began (each
// failed or was refused before it wrote its config.json: its data was missing, say): the sweep.json
// it replaced is put back (a failed --overwrite kept the old SAEs but had lost their list) or its own
// removed, and OUT, when made for the list, removed once empty. Static, like OUT's lock, and made
// after it: undone while the lock is held.
class ListRecord {
 public:
  ListRecord(std::string file, std::vector<std::string> made, const std::vector<sae::TrainConfig>& saes)
      : file_(std::move(file)), made_(std::move(made)) {
    std::error_code ec;
    if (std::filesystem::exists(file_, ec)) replaced_ = sae::read_small_file(file_);
    for (const sae::TrainConfig& c : saes) {
      paths_.push_back((std::filesystem::path(c.out) / "config.json").string());
      stamps_.push_back(stamp(paths_.back()));
    }
  }
  ~ListRecord() {
    for (size_t i = 0; i < paths_.size(); ++i)
      if (stamp(paths_[i]) != stamps_[i]) return;  // an SAE began: the list is this one now
    try {
      if (replaced_) sae::write_file_atomic(file_, *replaced_);
      else std::filesystem::remove(file_);
    } catch (const std::exception&) {
      return;  // left as it is (the list's own command starts it again)
    }
    sae::remove_made_folders(made_);
  }

 private:
  // A file's identity (atomic writes make a new one): inode and change time, or "" when absent.
  static std::string stamp(const std::string& path) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return "";
    return sae::cat(st.st_ino, ":", st.st_ctim.tv_sec, ".", st.st_ctim.tv_nsec);
  }
  std::string file_;
  std::vector<std::string> made_;
  std::optional<std::string> replaced_;
  std::vector<std::string> paths_, stamps_;  // each SAE's config.json, its identity at the start
};

// owner: this process writes OUT/sweep.json (under mpirun, rank 0; the other ranks make the same
// configs without touching the folder).
std::vector<sae::TrainConfig> sweep_configs(const sae::TrainConfig& base, const cxxopts::ParseResult& parsed,
                                            bool owner) {
  const bool l1s = parsed.count("l1-list"), ks = parsed.count("k-list"), layers = parsed.count("layer-list"),
             transcoders = parsed.count("transcoder-list");
  if (int(l1s) + int(ks) + int(layers) + int(transcoders) > 1)
    throw sae::UsageError("give one of --l1-list, --k-list, --layer-list and --transcoder-list");
  if (l1s && base.was_given("l1")) throw sae::UsageError("give --l1 or --l1-list, not both");
  if (ks && base.was_given("k")) throw sae::UsageError("give --k or --k-list, not both");
  if (ks) {  // (the check of each SAE's --k would name an option the command line does not give)
    const std::vector<std::string> reads = sae::run_unit(base).reads();
    if (std::find(reads.begin(), reads.end(), "k") == reads.end())
      throw sae::UsageError(sae::cat("--k-list trains one SAE per k: --architecture ", base.architecture,
                                     " has no k (", sae::units_reading("k"), " have one)"));
  }
  if (layers && (base.was_given("layer") || base.was_given("hook") || base.was_given("transcoder")))
    throw sae::UsageError("--layer-list trains an SAE at hidden_states[L] for each L: give it without --layer, "
                          "--hook and --transcoder");
  if (transcoders && base.was_given("transcoder"))
    throw sae::UsageError("give --transcoder or --transcoder-list, not both");
  if (!l1s && !ks && !layers && !transcoders) return {};
  if ((layers || transcoders) && base.data != "text")  // each SAE the same, labelled by a layer it did not read
    throw sae::UsageError(sae::cat("--", layers ? "layer" : "transcoder", "-list reads the model's blocks: it trains "
                                   "from text (--model, --text), not --data ", base.data));
  std::vector<std::string> values;
  if (l1s)
    for (double l1 : sae::parse_increasing_number_list("l1-list", parsed["l1-list"].as<std::string>()))
      values.push_back(sae::format_number(l1, 17));
  if (ks)
    for (int64_t k : sae::parse_increasing_int_list("k-list", parsed["k-list"].as<std::string>()))
      values.push_back(std::to_string(k));
  if (layers) values = block_list("layer-list", parsed["layer-list"].as<std::string>());
  if (transcoders) values = block_list("transcoder-list", parsed["transcoder-list"].as<std::string>());
  const std::string option = l1s ? "l1" : ks ? "k" : layers ? "layer" : "transcoder";
  if (!base.resume.empty())
    throw sae::UsageError(sae::cat("--", option, "-list and --resume: --resume OUT continues the SAEs its list started "
                                   "(OUT/sweep.json); give it alone"));
  sae::refuse_options_without_effect(base);  // said before OUT and its sweep.json are made (its SAEs share them)
  if (!owner) return sweep_configs(base, option, values);
  const std::filesystem::path file = std::filesystem::path(base.out) / kSweepFile;
  const std::vector<std::string> made = sae::missing_folders(base.out);
  std::filesystem::create_directories(base.out);
  hold_list_folder(base.out);
  // A list stopped before any of its SAEs began (bad data, say) holds no SAE yet: started again.
  const bool begun = !sae::run_folders_under(base.out).empty();
  if (std::filesystem::exists(file) && begun && !base.overwrite)
    throw sae::UsageError(sae::cat("--out ", base.out, " already holds SAEs trained together (", file.string(),
                                   "); continue them with --resume ", base.out,
                                   ", replace them with --overwrite, or choose another --out"));
  sae::Json sweep = sae::Json::object();
  sweep["option"] = option;
  sae::Json list = sae::Json::array();
  for (const std::string& v : values) list.push_back(v);
  sweep["values"] = list;
  sweep["config"] = base.to_json();
  const std::vector<sae::TrainConfig> configs = sweep_configs(base, option, values);
  static std::unique_ptr<ListRecord> record;
  record = std::make_unique<ListRecord>(file.string(), made, configs);
  sae::write_file_atomic(file.string(), sweep.dump(2) + "\n");
  return configs;
}

// --resume OUT of a list's run: every SAE of OUT/sweep.json (each continued from its
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
    if (std::find(std::begin(kListOptions), std::end(kListOptions), option) == std::end(kListOptions))
      throw sae::DataError("option must be \"l1\", \"k\", \"layer\" or \"transcoder\"");
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

// The options, the configs they make (one per SAE), and whether the program should go on (not --help).
struct Parsed {
  std::vector<sae::TrainConfig> configs;
  bool distribute = false;  // --distribute: each SAE on one rank
  bool go = false;
};

// owner: as sweep_configs's.
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
      "distribute", "under mpirun with --l1-list, --k-list, --layer-list or --transcoder-list: each SAE trained "
                    "whole on one rank (SAE i on rank i mod P) instead of every SAE on every rank's shards; from "
                    "text, the ranks share the language model's work (docs/distributed.md)");
  cxxopts::ParseResult parsed;
  Parsed out;
  if (!sae::parse_command_line(options, argc, argv, parsed)) return out;
  const std::string profile_name = parsed["profile"].as<std::string>();
  if (profile_name != "demo" && profile_name != "none")
    throw sae::UsageError("--profile: expected demo or none, got '" + profile_name + "'");
  const bool lists = parsed.count("l1-list") || parsed.count("k-list") || parsed.count("layer-list") ||
                     parsed.count("transcoder-list");  // each SAE is validated when it starts
  sae::TrainConfig config = sae::training_config(parsed, profile_name == "demo" ? kDemo : sae::Profile{}, !lists);
  std::vector<sae::TrainConfig> configs = sweep_configs(config, parsed, owner);
  if (configs.empty() && !config.resume.empty() &&
      std::filesystem::exists(std::filesystem::path(config.resume) / kSweepFile) && owner)
    hold_list_folder(config.resume);
  if (configs.empty() && !config.resume.empty()) configs = resumed_sweep_configs(config);  // --resume OUT of a list's run
  out.distribute = parsed.count("distribute") > 0;
  if (out.distribute && configs.empty())
    throw sae::UsageError("--distribute spreads the SAEs of a list over the ranks: give --l1-list, --k-list, "
                          "--layer-list or --transcoder-list");
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
  try {
    Parsed parsed;
    everyone.agree([&] { parsed = parse(argc, argv, /*owner=*/world.rank() == 0); });
    if (!parsed.go) return 0;
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
      sae::Collectives* grid = nullptr;
      everyone.agree([&] {
        grid = &world.collectives(static_cast<int>(first.shards), sae::resolve_device(first.device));
      });
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
  } catch (const sae::TrainingDiverged& e) {  // every rank sees the same sums
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
    if (parsed.go) std::printf("%s", report(sae::train_together(parsed.configs)).c_str());
    return 0;
  });
}
