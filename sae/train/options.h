// The one table of training options. Everything that names, parses, prints, stores or compares an
// option of TrainConfig comes from here: the command line of sae_train and the study drivers
// (sae/cli), config.json (TrainConfig::to_json / from_json), what --resume keeps from the run and
// what it takes from the command line, and a study run's identity (sae/study). Defaults are the
// values of a default-constructed TrainConfig (train_config.h), written nowhere else.
//
// Adding an option: a field in TrainConfig (with its default), a row in options.cpp, a check in
// TrainConfig::validate() if it has a range.
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "io/json.h"
#include "sae/train/train_config.h"

namespace sae {

enum class OptionRole {
  Defines,   // what the run computes: on --resume it comes from the run's config.json, and a study
             // folder holding a run with another value is refused
  Controls,  // how far it runs, where, and how it is watched: on --resume the command line's value when
             // given, else the run's saved one; not part of a study run's identity
  Launch,    // this launch only (where the run is, how many ranks split it): on --resume always from the
             // command line (or its default), never from the run
};

struct TrainOption {
  std::string name;      // command-line name, without the dashes ("lr", "synthetic-d")
  std::string group;     // --help section
  std::string help;
  OptionRole role;
  std::string json_key;  // key in config.json, under "synthetic" for the generator's options; "" = not stored
  bool is_flag = false;  // a bool: "--name" alone means true
  // What "--name" alone means ("" = a value must follow): "true" for flags, "on" for toggles.
  std::string implicit_value;
  // The value as command-line text (help shows the default's); parsed from text (UsageError naming
  // --name); as JSON and back (DataError naming the key); copied from one config to another.
  std::function<std::string(const TrainConfig&)> text;
  std::function<void(TrainConfig&, const std::string&)> parse;
  std::function<Json(const TrainConfig&)> to_json;
  std::function<void(TrainConfig&, const Json&)> from_json;
  std::function<void(TrainConfig&, const TrainConfig&)> copy;
  // Read when config.json lacks the key (runs from before the option existed); none: the key is required.
  std::optional<std::string> when_missing;
  // For an option that replaced an older one: when config.json lacks the key, the value (as command-line
  // text) its older key gives, if it holds one (config.json's section in, none when absent). Tried
  // before when_missing.
  std::function<std::optional<std::string>(const Json& section)> from_older_key;
  bool in_synthetic_section() const { return name.rfind("synthetic-", 0) == 0; }
};

const std::vector<TrainOption>& train_options();
const TrainOption& train_option(const std::string& name);  // Error for an unknown name

// The options that define what a run computes (OptionRole::Defines), as stored in config.json.
Json run_identity(const TrainConfig& config);
// What must agree for SAEs to train on one data stream (trainer.h, train_together): the data and
// how it is batched, normalised and shuffled, --steps, the device, the precision and threads.
Json data_stream_identity(const TrainConfig& config);
// On --resume: the run's saved config (config.json) with the Controls options `cli` was given and every
// Launch option taken from `cli`.
TrainConfig resumed_config(const Json& saved, const TrainConfig& cli);
// --training-tokens N (SAELens's training_tokens): --steps = ceil(N / --batch). UsageError for story
// batches, or beside --steps given on the command line. Nothing when it is 0.
void resolve_training_tokens(TrainConfig& config);
// Marks every Controls option of `config` as given: a config made in code (a study's run, a test)
// whose Controls values all hold on --resume, defaults included.
void give_every_control(TrainConfig& config);

}  // namespace sae
