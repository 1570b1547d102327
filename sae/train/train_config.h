// TrainConfig: every option of a training run, with the original study's values as defaults
// (each default is written once, here), plus validation and the schedules. The options' names,
// help, command-line parsing, config.json form and behaviour on --resume all come from one table,
// sae/train/options.h.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/json.h"
#include "lm/hook_points.h"
#include "lm/text_windows.h"
#include "sae/data/batches.h"
#include "sae/data/prefetch.h"
#include "sae/data/synthetic.h"
#include "sae/report/run_log.h"
#include "sae/arch/settings.h"
#include "tensor/precision.h"
#include "tensor/tensor.h"

namespace sae {

// --device: cpu, cuda, or auto (cuda when a GPU is present).
enum class DeviceChoice { Cpu, Cuda, Auto };
DeviceChoice parse_device_choice(const std::string& text);  // UsageError naming --device
const char* device_choice_name(DeviceChoice choice);
// The device to run on: UsageError for cuda in a build without CUDA or on a machine without a GPU.
Device resolve_device(DeviceChoice choice);

// --lr-schedule: the learning rate between the warm-up and the decay, SAELens's lr_scheduler_name
// (constant, cosineannealing, cosineannealingwarmrestarts; theirs are accepted too).
enum class LrSchedule { Constant, Cosine, CosineRestarts };
LrSchedule parse_lr_schedule(const std::string& text);  // UsageError naming --lr-schedule
const char* lr_schedule_name(LrSchedule schedule);

struct TrainConfig {
  std::string data = "synthetic";    // "synthetic", a .safetensors / .npy path, a cache folder, or "text"
  std::string model;                 // --model DIR (a Hugging Face GPT-Neo folder): train from text
  std::string text;                  // --text FILE: the corpus (.txt or .jsonl)
  int64_t layer = 2;                 // hidden_states[layer] of the model (when no --hook)
  std::string hook;                  // --hook NAME (lm/hook_points.h): where activations are read; "" = --layer
  bool split_long_stories = false;   // --long-stories split: cut stories longer than the model's positions
  std::string text_field = "text";   // --text-field: the JSON lines field holding the text
  BosMode prepend_bos = BosMode::Auto;  // --prepend-bos on|off|auto: a BOS before every window (lm/text_windows.h)
  int64_t context_size = 0;          // --context-size: positions per window (0: the model's)
  bool keep_bos_activations = false; // --bos-activations keep: train on the BOS positions too (default skip)
  int64_t text_chunk_tokens = 65536; // token batches from text: tokens shuffled together
  // Transcoders and crosscoders (sae/train/dictionary_reads.h; docs/architectures.md §2.13).
  std::string target_data;           // --target-data: a transcoder's target activations (files or caches)
  int64_t transcoder_block = -1;     // --transcoder L: block L's MLP (ln2.hook_normalized -> hook_mlp_out)
  std::string hook_in, hook_out;     // --hook-in / --hook-out: a transcoder's hooks (text)
  std::string hooks;                 // --hooks a,b,...: a crosscoder's hooks (text)
  std::string model_b;               // --model-b DIR: the same hooks of a second model (crosscoder)
  bool skip = false;                 // --skip: a skip transcoder (x_hat += x W_skip, W_skip from zero)
  SyntheticOptions synthetic;
  int64_t features = 10000;          // F (d_sae)
  double l1 = 0.0;                   // lambda
  double lr = 1e-5;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double max_grad_norm = 0;          // SAELens's gradient clipping (of the mean loss's gradient); 0: none
  bool apply_b_dec_to_input = false;  // the encoder sees x - b_dec (SAELens's and the other peers' centring)
  int64_t steps = 35000;
  int64_t training_tokens = 0;       // --training-tokens N: steps = ceil(N / batch tokens) (0: --steps)
  int64_t batch_tokens = 0;          // 0 = one story per step ("story")
  Normalization normalize = Normalization::Story;
  std::string init;                  // start from this SAELens-format checkpoint directory
  std::string resume;                // continue this run (run dir or checkpoint dir)
  std::string out = "runs/sae";
  bool overwrite = false;            // a fresh run may replace a run already in `out`
  uint64_t seed = 0;
  DeviceChoice device = DeviceChoice::Auto;
  Precision precision = Precision::FP32;  // float32 GEMMs: fp32, tf32 or bf16 inputs (tensor/precision.h)
  PrefetchMode prefetch = PrefetchMode::Auto;  // next batch on a worker thread (auto: on for CUDA)
  DeviceDataMode device_data = DeviceDataMode::Auto;  // batches to / made on the device, metrics there
  int64_t checkpoint_every = 5000;
  int64_t log_every = 10;
  int64_t expansion_factor = 0;      // --expansion-factor: features = this x d (0: --features; resolve_expansion_factor)
  int64_t lr_warmup_steps = 0;       // linear warm-up from 0
  int64_t lr_decay_steps = 0;        // linear decay over the last N steps (the last step at lr / N)
  LrSchedule lr_schedule = LrSchedule::Constant;  // between the warm-up and the decay
  double lr_end = -1;                // the cosines' final lr (SAELens's lr_end; -1: --lr / 10, its default)
  int64_t lr_cycles = 1;             // cosine-restarts: cosines (SAELens's n_restart_cycles)
  int64_t l1_warmup_steps = 0;       // lambda ramps linearly from 0
  int64_t dead_window = 1000000;     // tokens without firing before a feature counts as dead
  int64_t encoder_chunk = 0;         // topk: tokens per encoder GEMM (0: the batch, or as many as fit in memory)
  ProgressMode progress = ProgressMode::Auto;
  // The architecture (a unit of sae/arch/registry.h) and the values of its options' rows that were
  // given (the command line, config.json); a unit's other options keep their rows' defaults
  // (sae/train/arch_config.h arch_settings). --l1 is lambda, the sparsity coefficient of every unit
  // that has one (ArchUnit::has_lambda); units whose sparsity is set otherwise refuse it.
  std::string architecture = "standard";
  ArchSettings arch;

  // --target-l0: the L0 set-point controller (sae/train/l0_controller.h); 0 = off. It starts at
  // --l1, or, when --l1 is 0, at the data's scale of lambda (lambda_scale; the run then records it
  // as its l1).
  double target_l0 = 0;
  double target_l0_ki = 0.02;
  double target_l0_kp = 2.0;
  double target_l0_ema = 0.05;
  double target_l0_max_change = 0.01;

  int64_t threads = 0;               // CPU threads; 0 = OpenMP's default (OMP_NUM_THREADS or all cores)
  int64_t shards = 1;                // latent shards of a distributed run (under mpirun; docs/distributed.md)

  // Feature statistics (sae/train/feature_stats.h), gathered over the last feature_stats_steps steps
  // (0: none): per feature its firing count, histogram and top feature_stats_k activations, each with
  // feature_stats_context tokens on either side.
  int64_t feature_stats_steps = 1000;
  int64_t feature_stats_k = 10;
  int64_t feature_stats_context = 8;

  // Every checkpoint (and the final model) evaluated as it is saved, as sae_eval scores it: the SAE
  // spliced into the language model over the first eval_stories stories of eval_text, eval.json in
  // the checkpoint's folder, evals.csv in the run's (sae/eval/checkpoint_eval.h). "": not evaluated.
  std::string eval_text;
  std::string eval_text_field = "text";  // its JSON lines field
  int64_t eval_stories = 100;

  // Not options: the names of the options the user set (command line or profile), so --resume can
  // refuse one that contradicts the run, and --init one that contradicts the checkpoint.
  std::vector<std::string> given;
  bool was_given(const std::string& option) const;
  // Of those, the ones only a profile set (--profile demo, a study's per-run values).
  std::vector<std::string> from_profile;
  // Not an option: a --resume from a checkpoint (the run has trained). Options that would have no
  // effect are refused only before a run trains (docs/contract.md §5), so a run recorded before a
  // refusal existed still resumes.
  bool trained_before = false;
  // Not an option: a --resume that ends the run at its checkpoint's step (--steps that step): nothing
  // trains, so its schedules are not held to the new length.
  bool ends_at_resume = false;

  void validate() const;  // UsageError naming the option
  Json to_json() const;   // config.json (the options' table, sae/train/options.h)
  static TrainConfig from_json(const Json& j);  // DataError on missing or mistyped keys
  std::string batch_name() const;        // "story" or the token count
  double lr_at(int64_t step) const;      // step counts from 1
  double lr_end_value() const;           // --lr-end, or --lr / 10 when it is -1
  double l1_at(int64_t step) const;
};

// UsageError for an option that would have no effect and would be recorded as if it had (docs/
// contract.md §5): --synthetic-* beside other data (a profile's are left aside), --text-chunk-tokens
// with story batches, --text-field with plain text, --eval-stories / --eval-text-field without
// --eval-text, --auxk-k with AuxK off, --long-stories split beside --context-size. By value (a
// default has no effect to miss); validate() calls it before a run trains (it also refuses
// --feature-stats-k / -context given with --feature-stats-steps 0, and the schedules the length
// cannot hold).
void refuse_options_without_effect(const TrainConfig& c);
// Its message for --long-stories split beside --context-size (sae_cache refuses the same).
inline constexpr const char* kSplitBesideContextSize =
    "--long-stories split cuts stories longer than the model's positions; with --context-size every story is cut "
    "into windows already: give one of them";


// Parses --batch: "story" or a positive integer. UsageError otherwise.
int64_t parse_batch(const std::string& text);
// UsageError for a token batch above 65536 tokens (story batches are held to it too, by the trainer).
void check_batch_tokens(int64_t tokens);

}  // namespace sae
