// A run's architecture: its unit, settings, option rules and first parameters (see arch_config.h).
#include "sae/train/arch_config.h"

#include <algorithm>

#include "sae/data/activations.h"
#include "sae/data/batches.h"
#include "sae/train/options.h"
#include "sae/train/train_config.h"
#include "sae/train/training_data.h"

namespace sae {

namespace {
void require(bool ok, const std::string& message) {
  if (!ok) throw UsageError(message);
}

const ArchOption* arch_row(const std::string& name) {
  for (const ArchOption& row : arch_option_rows())
    if (row.name == name) return &row;
  return nullptr;
}

// The value of architecture row `row` in c: as given, else its default.
Json row_value(const TrainConfig& c, const ArchOption& row) {
  return c.arch.has(row.name) ? c.arch.at(row.name) : row.default_value();
}

}  // namespace

const ArchUnit& run_unit(const TrainConfig& c) { return arch_unit(c.architecture); }

ArchSettings arch_settings(const TrainConfig& c) {
  ArchSettings s;
  for (const std::string& name : run_unit(c).reads()) {
    if (const ArchOption* row = arch_row(name))
      s.set(name, row_value(c, *row));
    else
      s.set(name, train_option(name).to_json(c));
  }
  return s;
}

ArchSettings arch_settings(const std::string& unit, const std::vector<std::pair<std::string, Json>>& given,
                           int64_t dead_window) {
  TrainConfig c;
  c.architecture = unit;
  c.dead_window = dead_window;
  for (const auto& [name, value] : given) c.arch.set(name, value);
  ArchSettings s = arch_settings(c);
  for (const auto& [name, value] : given)  // a common option the unit reads (e.g. "encoder-chunk")
    if (!arch_row(name) && s.has(name)) s.set(name, value);
  return s;
}

void validate_architecture_options(const TrainConfig& c) {
  const TrainConfig defaults;
  const ArchUnit& unit = run_unit(c);
  const std::string& arch = c.architecture;
  const std::vector<std::string> reads = unit.reads();
  for (const ArchOption& row : arch_option_rows()) {
    const bool read = std::find(reads.begin(), reads.end(), row.name) != reads.end();
    require(read || row_value(c, row) == row.default_value(),
            cat("--", row.name, " applies only to --architecture ", units_reading(row.name), ", not to --architecture ",
                arch));
  }
  require(c.encoder_chunk == defaults.encoder_chunk || unit.chunks_encoder(),
          cat("--encoder-chunk applies only to --architecture ", units_reading("encoder-chunk"), " (a per-token selection); ",
              arch, " holds the whole batch's pre-activations"));
  if (!unit.has_lambda()) {
    require(c.l1 == defaults.l1, cat("--l1 does not apply to --architecture ", arch, ": it ", unit.sparsity_note()));
    require(c.l1_warmup_steps == defaults.l1_warmup_steps,
            cat("--l1-warmup-steps does not apply to --architecture ", arch, ": it ", unit.sparsity_note()));
    require(c.target_l0 == defaults.target_l0,
            cat("--target-l0 applies to --architecture ", units_that(&ArchUnit::has_lambda), "; ", arch, " ", unit.sparsity_note()));
  }
  try {
    unit.validate(arch_settings(c), c.features);
  } catch (const UsageError& e) {  // its checks name --features, which --expansion-factor set here
    if (c.expansion_factor == 0) throw;
    throw UsageError(cat(e.what(), " (--features here is --expansion-factor ", c.expansion_factor, " x d = ", c.features,
                         c.hook.empty() ? "" : cat(", the SAE at ", c.hook), ")"));
  }
}

SaeParams fresh_params(const TrainConfig& c, TrainingData& data, const RunColumns& columns) {
  const ArchUnit& unit = run_unit(c);
  const ArchSettings settings = arch_settings(c);
  std::vector<double> sample;
  if (unit.dictionary_init(settings).b_dec == BDecInit::GeometricMedian) {
    sample = first_training_tokens(data, c);
    if (!(columns.whole_row && columns.target_is_input)) {  // the target's columns of the rows
      const int64_t n = static_cast<int64_t>(sample.size()) / data.d;
      std::vector<float> rows(sample.begin(), sample.end()), target(static_cast<size_t>(n * columns.d_out));
      columns.gather_target(data, rows.data(), n, target.data());
      sample.assign(target.begin(), target.end());
    }
  }
  DictionaryShape shape{columns.d_in, columns.d_out, c.features};
  shape.transcoder = !columns.target_is_input;
  shape.skip = c.skip;
  shape.sources = columns.target_is_input ? static_cast<int64_t>(columns.in.size()) : 1;
  Rng rng(c.seed);
  return unit.initial_params(settings, shape, rng, sample);
}

void adopt_init_architecture(TrainConfig& c, const SaeParams& loaded) {
  if (loaded.kind != c.architecture)
    throw UsageError(cat("--init ", c.init, " holds a ", loaded.kind, " SAE: pass --architecture ", loaded.kind,
                         " (the run has --architecture ", c.architecture, ")"));
  const std::vector<std::string> reads = run_unit(c).reads();
  const bool has_k = std::find(reads.begin(), reads.end(), "k") != reads.end();
  if (has_k && (!c.arch.has("k") || c.arch.at("k").as_int() == 0) && loaded.settings.has("k")) c.arch.set("k", loaded.settings.at("k"));
}

std::vector<double> first_training_tokens(TrainingData& data, const TrainConfig& c, int64_t max_tokens) {
  BatchSource& batches = *data.batches;
  const Json start = batches.state();
  const int64_t d = data.d, width = batches.max_batch_tokens();
  const int64_t wanted = data.activations ? std::min(max_tokens, data.activations->num_tokens()) : max_tokens;
  std::vector<float> raw(width * d), normalized(width * d);
  std::vector<double> out;
  out.reserve(wanted * d);
  BatchStats stats;
  // Story batches wrap around after the last story: one pass over the data at most.
  const int64_t most_batches =
      c.batch_tokens == 0 && data.activations ? std::max<int64_t>(1, data.activations->num_stories()) : wanted;
  for (int64_t b = 0; b < most_batches && static_cast<int64_t>(out.size()) < wanted * d; ++b) {
    const int64_t n = batches.next(raw.data(), normalized.data(), stats);
    const int64_t take = std::min(n, wanted - static_cast<int64_t>(out.size()) / d);
    out.insert(out.end(), normalized.begin(), normalized.begin() + take * d);
  }
  batches.restore(start);
  return out;
}

}  // namespace sae
