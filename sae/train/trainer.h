// train(): one SAE training run, start to finish (docs/architecture.md, "The flow of data"):
//   source -> batch -> normalise -> fused forward/backward (SaeStep) -> Adam -> metrics -> log /
//   checkpoint. Writes config.json, metrics.csv, TensorBoard scalars, checkpoints/step_<N>/ and the
//   final model in sae/ under config.out. Library code: throws, never exits.
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "sae/data/batches.h"
#include "sae/train/metrics.h"
#include "sae/report/run_log.h"
#include "sae/train/train_config.h"

namespace sae {

// A NaN or Inf loss: training stops, nothing after the last good checkpoint is written.
struct TrainingDiverged : Error {
  using Error::Error;
};

struct TrainResult {
  int64_t steps = 0, tokens = 0;
  double seconds = 0;           // wall time of the training loop (this invocation)
  MetricRow last_row;           // the final step's metrics
  double fvu = 0, l0 = 0, nonzero_proportion = 0;
  int64_t dead_features = 0;
  std::optional<ConceptRecovery> concepts;  // synthetic data only
  std::string out_dir, model_dir, metrics_csv, tensorboard_file;
  bool wrote_checkpoints = false;  // checkpoints/ holds at least one checkpoint
  std::string saelens_note = "SAELens format";  // what SAELens makes of model_dir (saelens_note())
  std::string superseded;          // a rewinding --resume: where the run's later checkpoints went (RunStart)
  std::string kept_final;          // extending a finished run: its final model, kept as a checkpoint (RunStart)
  std::string memory_note;         // a topk whose pre-activations were computed in chunks to fit (trainer.cpp)
  Device device = Device::CPU;
  CollectiveStats collectives;     // a distributed run's collectives in the training loop (this rank's)
  // A --resume of a run that was at its last step already (RunStart::finished): nothing was
  // trained; the numbers are its last metrics.csv row and its final model's.
  bool already_finished = false;
};

// Evaluates a checkpoint while it is saved (TrainConfig::eval_text; sae/eval/checkpoint_eval.h makes
// one): `folder` is the folder being built (its weights and cfg.json are written; what is written into
// it is put in place with it, atomically), `dir` the name it will have, step and tokens the run's.
// Returns a line for the progress display.
using CheckpointEvaluator = std::function<std::string(const TrainConfig& config, const std::string& folder,
                                                      const std::string& dir, int64_t step, int64_t tokens)>;

// `config.resume` set: continues that run to config.steps (other options come from its config.json).
// A run that is at config.steps already is not trained again: its result is read back from its
// folder (a job scheduler's retry after a crash while the final outputs were written succeeds; the
// caller draws what is missing, sae_train its figures).
// ranks: a distributed run (docs/distributed.md): this process is one rank of ranks' grid of latent
// shards x data-parallel replicas, and every rank calls train with the same configuration; rank 0
// writes the logs and the folder's files, every shard's owner its part of each checkpoint. Null:
// one process.
// evaluate: called for each checkpoint of a run with --eval-text (one process only: not with ranks);
// empty: such a run is refused (UsageError), since nothing would evaluate it.
TrainResult train(TrainConfig config, Collectives* ranks = nullptr, const CheckpointEvaluator& evaluate = {});

// How the final SAE folder of a run with this configuration stands to SAELens, for the summary line:
// "SAELens format", or why SAELens does not load it (a crosscoder, a transcoder of a unit SAELens has
// no transcoder class for; per-story normalisation).
std::string saelens_note(const TrainConfig& config);

// Several SAEs trained on one data stream (sae_train --l1-list / --k-list, the study drivers): each
// batch is read (and, from text, run through the language model) once and goes through every SAE in
// turn. Each config writes its own run folder, exactly as train() would: the results are identical to
// separate runs. The configs must agree on every option that shapes the batches (options.h,
// data_stream_identity) and on --steps (UsageError otherwise). Resumed ones that stand at different
// steps (a crash between their checkpoints) train in groups, one pass over the data per group; runs
// at their last step already are not trained (see train()).
// ranks: as train()'s; on several ranks every rank forms the same groups and trains them in turn.
std::vector<TrainResult> train_together(std::vector<TrainConfig> configs, Collectives* ranks = nullptr,
                                        const CheckpointEvaluator& evaluate = {});

// One pass over the data of a --distribute run, as this rank saw it (train_spread).
struct PassShare {
  int64_t first_step = 0, last_step = 0;  // the pass trained steps first_step + 1 .. last_step
  bool shared = false;                    // the ranks shared its language-model work
  int64_t saes_here = 0;                  // SAEs this rank trained in it (0: it only computed its share)
  BatchSource::ComputeCounts counts;      // the model's windows run here, of all, and the floats summed in
};
struct SpreadResult {
  std::vector<TrainResult> results;  // this rank's SAEs (config i for i mod P == rank), in order
  std::vector<PassShare> passes;     // every pass over the data, in order (the same number on every rank)
};

// --distribute (docs/distributed.md): the SAEs of `configs` (a list's run) spread over the ranks of
// `all`, config i trained whole on rank i mod P, exactly as one process trains it alone. From text
// through a language model with token batches, the ranks share one model pass: each rank runs the
// model on its share of every chunk's windows, one sum over the ranks completes the chunk on each,
// and a rank without an SAE (P above the number of SAEs) still computes its share. Every activation
// any SAE reads (several --layer-list hooks) travels in the chunk. Resumed SAEs standing at different
// steps train in passes, one per step, every rank taking part in each. Other data: each rank reads
// it for its own SAEs, nothing is shared. Every rank calls this with the same configs.
SpreadResult train_spread(const std::vector<TrainConfig>& configs, Collectives& all);

// Seconds one dense training step of this configuration takes on this machine: a fresh SAE, a few
// steps on the configuration's own data after one warm-up step. For the study drivers' estimates.
double measure_step_seconds(const TrainConfig& config);

// The final report, a few lines of text (FVU, L0, dead features, concept recovery, files).
std::string format_report(const TrainResult& result);

double metric(const MetricRow& row, const std::string& name);  // Error when absent

}  // namespace sae
