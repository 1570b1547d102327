// start_run and initial_params (see run_start.h).
#include "sae/train/run_start.h"

#include <filesystem>

#include "sae/train/options.h"

namespace fs = std::filesystem;

namespace sae {

namespace {

// The run directory of a --resume argument (a run dir, or a checkpoint inside one).
std::string run_dir_of(const std::string& resume, const std::string& checkpoint) {
  if (fs::exists(fs::path(resume) / "config.json")) return resume;
  fs::path p = fs::path(checkpoint);
  for (int up = 0; up < 3 && p.has_parent_path(); ++up) {
    p = p.parent_path();
    if (fs::exists(p / "config.json")) return p.string();
  }
  throw DataError(cat("--resume ", resume, ": cannot find the run's config.json"));
}

}  // namespace

RunStart start_run(TrainConfig config) {
  RunStart start;
  if (!config.resume.empty()) {
    start.resumed_from = find_latest_checkpoint(config.resume);
    const std::string run_dir = run_dir_of(config.resume, start.resumed_from);
    const TrainConfig cli = config;
    config = resumed_config(read_json_file((fs::path(run_dir) / "config.json").string()), cli);
    config.out = run_dir;
    config.resume = cli.resume;
    Checkpoint checkpoint = load_checkpoint(start.resumed_from, Device::CPU);
    if (!checkpoint.state) throw DataError(cat(start.resumed_from, ": has no training state to resume from"));
    start.params = std::move(checkpoint.params);
    start.state = std::move(checkpoint.state);
    if (start.state->step >= config.steps)
      throw UsageError(cat("--resume: the run is already at step ", start.state->step,
                           "; pass --steps larger than that"));
  } else if (!config.init.empty()) {
    start.params = load_checkpoint(config.init, Device::CPU).params;
    config.features = start.params->d_sae();
    adopt_init_architecture(config, *start.params);
  }
  config.validate();
  start.config = std::move(config);
  return start;
}

SaeParams initial_params(const RunStart& start, int64_t d) {
  if (!start.params) {
    Rng rng(start.config.seed);
    return SaeParams::standard_init(d, start.config.features, rng);
  }
  const SaeParams& p = *start.params;
  if (p.d_in() != d)
    throw DataError(cat(start.state ? "--resume" : "--init", " checkpoint has d_in ", p.d_in(), " but the data has d = ", d));
  if (p.d_sae() != start.config.features)
    throw DataError(cat("checkpoint has d_sae ", p.d_sae(), " but --features is ", start.config.features));
  return p;
}

}  // namespace sae
