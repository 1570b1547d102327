// A training run's architecture: the unit its config names (sae/arch/registry.h), the values of every
// option that unit reads (its rows as given or defaulted, and the common options it reads), the
// rules of which option applies to which unit, and how a run's first parameters are made.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "sae/arch/registry.h"

namespace sae {

struct TrainConfig;
struct TrainingData;

const ArchUnit& run_unit(const TrainConfig& c);  // UsageError naming --architecture for an unknown one
// Every option the unit reads, by name.
ArchSettings arch_settings(const TrainConfig& c);
// The settings of a run of `unit` with these option values (by name; every other option at its
// default), for programs that make a step without a TrainConfig (benchmarks, tests).
ArchSettings arch_settings(const std::string& unit, const std::vector<std::pair<std::string, Json>>& given,
                           int64_t dead_window = 1000000);
// UsageError (one line naming the option) for an architecture option given with a unit that does
// not read it (given = a value other than the row's default), lambda's options with a unit without
// lambda, and the unit's own range checks.
void validate_architecture_options(const TrainConfig& c);

// A fresh run's parameters (the standard SAE with default options: the study's init, exactly) for
// its columns of the data (an SAE's, a transcoder's with --skip's W_skip, a crosscoder's sources).
struct RunColumns;
SaeParams fresh_params(const TrainConfig& c, TrainingData& data, const RunColumns& columns);
// --init: the folder's architecture must be the run's (UsageError otherwise); a run without --k takes
// the folder's k when the unit has one.
void adopt_init_architecture(TrainConfig& c, const SaeParams& loaded);

// Tokens of the first batches a run will train on (normalised as it will see them), up to
// `max_tokens` and, for activation data, never more than the data holds, as float64 [n, d] (the
// geometric median's sample). The batch source is put back where it was.
std::vector<double> first_training_tokens(TrainingData& data, const TrainConfig& c, int64_t max_tokens = 32768);

}  // namespace sae
