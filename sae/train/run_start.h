// Where a training run starts: a fresh initialisation, a SAELens checkpoint (--init) or the newest
// checkpoint of an interrupted run (--resume). start_run resolves the configuration (on --resume,
// the run's own config.json with the command line's Controls options, sae/train/options.h) and
// loads what the run continues from. Library code: throws, never exits.
#pragma once
#include <optional>
#include <string>

#include "sae/params.h"
#include "sae/train/checkpoint.h"
#include "sae/train/train_config.h"

namespace sae {

struct RunStart {
  TrainConfig config;                  // validated; on --resume out is the run's folder
  std::optional<SaeParams> params;     // from --init or --resume (on the CPU); none for a fresh run
  std::optional<TrainingState> state;  // --resume only
  std::string resumed_from;            // the checkpoint folder, on --resume
};

RunStart start_run(TrainConfig config);

// The parameters a run starts with: the loaded ones, or the standard init for data of width d
// (drawn from config.seed). DataError when loaded parameters do not fit d or config.features.
SaeParams initial_params(const RunStart& start, int64_t d);

}  // namespace sae
