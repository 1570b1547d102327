// Fuzzes a run's config.json as --resume reads it (sae/train/options.h): the input is parsed as
// JSON, turned into a TrainConfig (TrainConfig::from_json, resumed_config: the command line's given
// options win, the run's others stay) and validated. A config that reads must write back (to_json)
// to JSON that reads to the same config, and have a run identity (what a study compares). A validated synthetic-data config must describe a generator
// whose sizes fit in int64; a small one is built and its first story drawn.
#include <cmath>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "sae/data/synthetic.h"
#include "sae/train/options.h"

using namespace sae;

namespace {

void check_generator(const SyntheticOptions& o) {
  int64_t concept_floats = 0, tokens_bound = 0;
  fuzz::require(!__builtin_mul_overflow(o.d, o.concepts, &concept_floats) && o.stories < INT64_MAX &&
                    !__builtin_mul_overflow(o.stories, static_cast<int64_t>(std::ceil(o.mean_length * 2)), &tokens_bound),
                cat("validate() accepted a synthetic generator whose sizes overflow int64: d ", o.d, ", concepts ", o.concepts,
                    ", stories ", o.stories, ", mean length ", o.mean_length));
  if (concept_floats > 4096 || o.stories > 4096 || o.mean_length > 512) return;  // keep runs fast
  fuzz::attempt([&] {
    SyntheticSource source(o);
    fuzz::require(source.d() == o.d && source.num_stories() == o.stories, "the generator's size differs from its options");
    const int64_t n = source.story_length(0);
    fuzz::require(n >= 1 && source.story_begin(0) == 0, "the generator's first story is empty");
    std::vector<float> tokens(static_cast<size_t>(n * o.d));
    source.read_tokens(0, n, tokens.data());
    for (float v : tokens) fuzz::require(std::isfinite(v), "the generator produced a non-finite activation");
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Json saved;
  if (!fuzz::attempt([&] { saved = Json::parse(std::string(reinterpret_cast<const char*>(data), size)); })) return 0;
  TrainConfig config;
  if (!fuzz::attempt([&] { config = TrainConfig::from_json(saved); })) return 0;
  if (fuzz::attempt([&] { config.validate(); })) {
    if (config.data == "synthetic") check_generator(config.synthetic);
  }

  Json written, again;
  const bool round_trip = fuzz::attempt([&] {
    written = config.to_json();
    again = TrainConfig::from_json(Json::parse(written.dump())).to_json();
  });
  fuzz::require(round_trip, "a config that was read does not write and read back");
  fuzz::require(again == written, "a config changed in a config.json round trip: " + fuzz::escaped(written.dump()) + " vs " +
                                      fuzz::escaped(again.dump()));
  fuzz::require(fuzz::attempt([&] { (void)run_identity(config).dump(); }), "a config that was read has no run identity");

  // As `--resume runs/resumed --steps 7` gives them: the Launch option and the given Controls option
  // come from the command line, the other Controls options from the run.
  TrainConfig command_line;
  command_line.out = "runs/resumed";
  command_line.steps = 7;
  command_line.given = {"steps"};
  TrainConfig resumed;
  const bool resumes = fuzz::attempt([&] { resumed = resumed_config(saved, command_line); });
  fuzz::require(resumes, "resumed_config refused a config that from_json read");
  fuzz::require(resumed.out == "runs/resumed" && resumed.steps == 7, "resumed_config did not take the command line's options");
  fuzz::require(resumed.log_every == config.log_every && resumed.checkpoint_every == config.checkpoint_every,
                "resumed_config did not keep the run's Controls options that the command line left out");
  fuzz::require(run_identity(resumed) == run_identity(config), "resumed_config changed what the run computes");
  fuzz::attempt([&] { resumed.validate(); });
  fuzz::attempt([&] { (void)config.batch_name(), (void)config.lr_at(1), (void)config.l1_at(1); });
  return 0;
}
