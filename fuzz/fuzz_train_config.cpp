// Fuzzes a run's config.json as --resume reads it (sae/train/options.h): the input is parsed as
// JSON, turned into a TrainConfig (TrainConfig::from_json, resumed_config) and validated. A config
// that reads must write back (to_json) to JSON that reads to the same config, and have a run
// identity (what a study compares).
#include <string>

#include "fuzz_util.h"
#include "sae/train/options.h"

using namespace sae;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Json saved;
  if (!fuzz::attempt([&] { saved = Json::parse(std::string(reinterpret_cast<const char*>(data), size)); })) return 0;
  TrainConfig config;
  if (!fuzz::attempt([&] { config = TrainConfig::from_json(saved); })) return 0;
  fuzz::attempt([&] { config.validate(); });

  Json written, again;
  const bool round_trip = fuzz::attempt([&] {
    written = config.to_json();
    again = TrainConfig::from_json(Json::parse(written.dump())).to_json();
  });
  fuzz::require(round_trip, "a config that was read does not write and read back");
  fuzz::require(again == written, "a config changed in a config.json round trip: " + fuzz::escaped(written.dump()) + " vs " +
                                      fuzz::escaped(again.dump()));
  fuzz::require(fuzz::attempt([&] { (void)run_identity(config).dump(); }), "a config that was read has no run identity");

  TrainConfig command_line;
  command_line.out = "runs/resumed";
  command_line.steps = 7;
  TrainConfig resumed;
  const bool resumes = fuzz::attempt([&] { resumed = resumed_config(saved, command_line); });
  fuzz::require(resumes, "resumed_config refused a config that from_json read");
  fuzz::require(resumed.out == "runs/resumed" && resumed.steps == 7, "resumed_config did not take the command line's options");
  fuzz::require(run_identity(resumed) == run_identity(config), "resumed_config changed what the run computes");
  fuzz::attempt([&] { resumed.validate(); });
  fuzz::attempt([&] { (void)config.batch_name(), (void)config.lr_at(1), (void)config.l1_at(1); });
  return 0;
}
