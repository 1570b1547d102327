// TrainConfig: validation, schedules, --batch and --device (see train_config.h).
#include "sae/train/train_config.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <tuple>

#include "lm/text_data.h"
#include "lm/text_windows.h"
#include "sae/train/arch_config.h"
#include "sae/train/dictionary_reads.h"
#include "sae/train/feature_stats.h"
#include "tensor/cuda/backend.h"

namespace sae {

namespace {
void require(bool ok, const std::string& message) {
  if (!ok) throw UsageError(message);
}

// Whether only a profile set `option` (--profile demo, a study's per-run values).
bool set_by_profile(const TrainConfig& c, const std::string& option) {
  return std::find(c.from_profile.begin(), c.from_profile.end(), option) != c.from_profile.end();
}

void check_schedules(const TrainConfig& c, bool lengths);  // (below)
}  // namespace

void TrainConfig::validate() const {
  require(!data.empty(), "--data: expected 'synthetic', a .safetensors or .npy file, or an activation cache folder");
  require((data == "text") == !model.empty(), "--model DIR and --text FILE train from text: give both, and no --data");
  require(model.empty() == text.empty(), "--model DIR and --text FILE go together");
  require(layer >= 0 && layer <= (1 << 20), cat("--layer must be a hidden_states index >= 0, got ", layer));  // as hook_choice says it
  if (!hook.empty()) {
    parse_hook_name(hook, "--hook");  // UsageError naming the option
    require(!was_given("layer"), "--hook and --layer both say where to read activations: give one");
  }
  if (data != "text")  // they would be recorded and ignored (sae_browser then trusted a recorded --hook)
    for (const char* option : {"layer", "hook", "long-stories", "text-field", "prepend-bos", "context-size",
                               "bos-activations", "text-chunk-tokens"})
      require(!was_given(option), cat("--", option, " applies only to training from text (--model, --text); --data ",
                                      data, " holds its activations as they are"));
  require(text_chunk_tokens >= 1 && text_chunk_tokens <= (int64_t{1} << 30),
          cat("--text-chunk-tokens must be in [1, 2^30] (a chunk of T tokens holds T x d float32 activations), got ",
              text_chunk_tokens));
  check_context_size(context_size);
  require(!text_field.empty(), "--text-field must not be empty");
  require(features >= 1 && features <= 10000000, cat("--features must be in [1, 1e7], got ", features));
  require(std::isfinite(l1) && l1 >= 0, cat("--l1 must be a finite number >= 0, got ", l1));
  require(std::isfinite(lr) && lr > 0 && lr < 10, cat("--lr must be in (0, 10), got ", lr));
  require(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, "--beta1 and --beta2 must be in [0, 1)");
  // Adam's epsilon is added in float32: below its smallest normal number it is (nearly) 0.
  require(std::isfinite(eps) && eps >= std::numeric_limits<float>::min() && eps <= 1.0,
          cat("--eps must be in [1.2e-38, 1] (added in float32), got ", eps));
  require(std::isfinite(max_grad_norm) && max_grad_norm >= 0,
          cat("--max-grad-norm must be a finite number >= 0 (0: no clipping), got ", max_grad_norm));
  require(steps >= 1, cat("--steps must be >= 1, got ", steps));
  require(batch_tokens >= 0, cat("--batch: expected 'story' or a positive token count, got ", batch_tokens));
  check_batch_tokens(batch_tokens);
  check_story_normalization(batch_tokens, normalize);  // (the batchers too; here before the run's folder is made)
  require(!out.empty(), "--out must not be empty");
  require(checkpoint_every >= 1, cat("--checkpoint-every must be >= 1, got ", checkpoint_every));
  require(log_every >= 1, cat("--log-every must be >= 1, got ", log_every));
  require(lr_warmup_steps >= 0 && lr_decay_steps >= 0 && l1_warmup_steps >= 0,
          "--lr-warmup-steps, --lr-decay-steps and --l1-warmup-steps must be >= 0");
  require(dead_window >= 1, cat("--dead-window must be >= 1 token, got ", dead_window));
  require(encoder_chunk >= 0 && encoder_chunk <= (int64_t{1} << 30),
          cat("--encoder-chunk must be in [0, 2^30] tokens (0: the whole batch, or as many as fit in memory), got ",
              encoder_chunk));
  require(threads >= 0 && threads <= 1024, cat("--threads must be in [0, 1024] (0: all cores), got ", threads));
  require(shards >= 1 && shards <= 65536, cat("--shards must be in [1, 65536], got ", shards));
  require(features % shards == 0,
          cat("--shards ", shards, " does not divide --features ", features, " (each shard holds F / S latents)"));
  validate_architecture_options(*this);
  dictionary_reads(*this);  // what it reads and reconstructs: UsageError for contradicting options
  if (apply_b_dec_to_input)
    require(dictionary_kind(*this) == DictionaryKind::Sae && !skip,
            cat("--apply-b-dec-to-input: an SAE's only: a ", dictionary_kind_name(dictionary_kind(*this)),
                "'s b_dec is not of its input (SAELens refuses it for transcoders too)"));
  if (!trained_before) refuse_options_without_effect(*this);
  if (!ends_at_resume) check_schedules(*this, !trained_before || was_given("steps") || was_given("training-tokens"));
  const TrainConfig defaults;
  if (target_l0 == 0) {
    // (Given ones: a run from before the gains' defaults changed records the old ones.)
    require(!was_given("target-l0-ki") && !was_given("target-l0-kp") && !was_given("target-l0-ema") &&
                !was_given("target-l0-max-change"),
            "--target-l0-ki, --target-l0-kp, --target-l0-ema and --target-l0-max-change apply only with --target-l0");
  } else {
    require(std::isfinite(target_l0) && target_l0 > 0 && target_l0 <= double(features),
            cat("--target-l0 must be in (0, --features = ", features, "], got ", target_l0));
    require(std::isfinite(target_l0_ki) && target_l0_ki >= 0, cat("--target-l0-ki must be >= 0, got ", target_l0_ki));
    require(std::isfinite(target_l0_kp) && target_l0_kp >= 0, cat("--target-l0-kp must be >= 0, got ", target_l0_kp));
    require(target_l0_ema > 0 && target_l0_ema <= 1, cat("--target-l0-ema must be in (0, 1], got ", target_l0_ema));
    require(std::isfinite(target_l0_max_change) && target_l0_max_change > 0,
            cat("--target-l0-max-change must be > 0, got ", target_l0_max_change));
  }
  require(feature_stats_steps >= 0, cat("--feature-stats-steps must be >= 0 (0: no statistics), got ",
                                         feature_stats_steps));
  if (feature_stats_steps > 0)  // their lists' size (statistics off: nothing is gathered)
    check_feature_stats_options(features, FeatureStatsOptions{feature_stats_k, feature_stats_context});
  else  // the values themselves still (an out-of-range value was recorded)
    check_feature_stats_options(1, FeatureStatsOptions{feature_stats_k, feature_stats_context});
  // Given beside --feature-stats-steps 0 they would be recorded as if they shaped something (and a
  // resume giving other values refused as a contradiction).
  for (const char* option : {"feature-stats-k", "feature-stats-context"})
    require(trained_before || feature_stats_steps > 0 || !was_given(option),
            cat("--", option, " shapes the feature statistics, which --feature-stats-steps 0 does not gather"));
  require(!eval_text_field.empty(), "--eval-text-field must not be empty");
  require(eval_stories >= 0, cat("--eval-stories must be >= 0 (0: every story of --eval-text), got ", eval_stories));
  if (!eval_text.empty()) {
    require(data == "text", "--eval-text splices the SAE into the language model it trains on: it needs --model and "
                            "--text (evaluate an SAE trained on activation files with sae_eval)");
    require(dictionary_kind(*this) != DictionaryKind::Crosscoder, "--eval-text: a crosscoder's checkpoints are evaluated with sae_eval (it splices the "
                           "crosscoder in at each of its hooks), not during training");
    require(shards == 1, "--eval-text: a run split over ranks (--shards, replicas) is not evaluated during training; "
                         "evaluate its checkpoints with sae_eval");
  }
  if (data == "synthetic") synthetic.validate();
}

namespace {

// The schedules against the run's length (UsageError): with `lengths`, a warm-up or decay longer than
// --steps (at a run's start, and on a resume that gives a new length: --steps, --training-tokens);
// always, the cosine's span and cycles (a period of 0 steps would divide by zero: config.json edited
// by hand, say) and --lr-end / --lr-cycles that contradict the schedule.
void check_schedules(const TrainConfig& c, bool lengths) {
  const auto by_profile = [&](const std::string& option) { return set_by_profile(c, option); };
  if (lengths) {
    // Longer than the run, a schedule never reaches (or never starts from) the recorded --lr / --l1
    // (lambda reaches --l1 at step W + 1, so its warm-up must be shorter than the run).
    for (const auto& [option, length, limit, effect] :
         {std::tuple<const char*, int64_t, int64_t, const char*>{"lr-warmup-steps", c.lr_warmup_steps, c.steps,
                                                                "the lr would never reach --lr"},
          {"lr-decay-steps", c.lr_decay_steps, c.steps, "the lr would start below --lr"},
          {"l1-warmup-steps", c.l1_warmup_steps, c.steps - 1, "lambda would never reach --l1"}})
      require(length <= limit, cat("--", option, " ", length, by_profile(option) ? " (set by the profile)" : "",
                                   limit == c.steps ? " is more than --steps " : " is not less than --steps ", c.steps,
                                   ": ", effect));
  }
  // The cosines (SAELens's): between the warm-up and the decay, from --lr down to --lr-end.
  require(c.lr_end == -1 || (std::isfinite(c.lr_end) && c.lr_end >= 0),
          cat("--lr-end must be a finite number >= 0 (or -1: --lr / 10), got ", c.lr_end));
  require(c.lr_cycles >= 1, cat("--lr-cycles must be >= 1, got ", c.lr_cycles));
  if (c.lr_schedule == LrSchedule::Constant) {
    for (const char* option : {"lr-end", "lr-cycles"})
      require(!c.was_given(option), cat("--", option, " applies to --lr-schedule cosine or cosine-restarts"));
  } else {
    const int64_t span = c.steps - c.lr_warmup_steps - c.lr_decay_steps;
    const int64_t cycles = c.lr_schedule == LrSchedule::CosineRestarts ? c.lr_cycles : 1;
    require(span >= cycles, cat("--lr-schedule ", lr_schedule_name(c.lr_schedule), " needs at least ", cycles,
                                " step(s) between the warm-up and the decay: --steps ", c.steps, " - --lr-warmup-steps ",
                                c.lr_warmup_steps, " - --lr-decay-steps ", c.lr_decay_steps, " leaves ", span));
    require(c.lr_schedule == LrSchedule::CosineRestarts || !c.was_given("lr-cycles"),
            "--lr-cycles applies to --lr-schedule cosine-restarts");
    require(c.lr_decay_steps == 0 || c.lr_end_value() > 0,
            "--lr-decay-steps after a cosine that ends at --lr-end 0 would decay from 0 to 0 (SAELens refuses it too)");
    require(c.lr_decay_steps == 0 || c.lr_end_value() <= c.lr,
            cat("--lr-end ", c.lr_end, " is above --lr ", c.lr, ": the cosine would rise to it before the decay (SAELens ",
                "refuses it too)"));
  }
}

}  // namespace

void refuse_options_without_effect(const TrainConfig& c) {
  const TrainConfig defaults;
  const auto by_profile = [&](const std::string& option) { return set_by_profile(c, option); };
  // The generator's parameters: a file or a model's text has none (a profile's are left aside).
  if (c.data != "synthetic")
    for (const std::string& option : c.given)
      require(option.rfind("synthetic-", 0) != 0 || by_profile(option),
              cat("--", option, " sets the synthetic generator: it applies only with --data synthetic, not ", c.data));
  require(c.text_chunk_tokens == defaults.text_chunk_tokens || c.batch_tokens > 0,
          "--text-chunk-tokens gathers token batches (--batch N): with --batch story each story is one batch");
  require(c.data != "text" || c.text_field == defaults.text_field || is_json_lines_path(c.text),
          cat("--text-field ", c.text_field, " names a field of JSON lines (.jsonl): ", c.text,
              " is plain text, stories separated by <|endoftext|>"));
  require(!c.eval_text.empty() || c.eval_stories == defaults.eval_stories, "--eval-stories applies only with --eval-text");
  require(!c.split_long_stories || c.context_size == 0, kSplitBesideContextSize);
  require(c.eval_text_field == defaults.eval_text_field || (!c.eval_text.empty() && is_json_lines_path(c.eval_text)),
          cat("--eval-text-field ", c.eval_text_field, " names a field of JSON lines (.jsonl) given as --eval-text"));
  const ArchSettings arch = arch_settings(c);
  if (arch.has("auxk-k") && arch.has("auxk-coefficient"))
    require(arch.integer("auxk-k") == 0 || arch.number("auxk-coefficient") > 0,
            "--auxk-k sets AuxK's k_aux: AuxK is off (--auxk-coefficient 0)");
}

bool TrainConfig::was_given(const std::string& option) const {
  return std::find(given.begin(), given.end(), option) != given.end();
}

std::string TrainConfig::batch_name() const { return batch_tokens == 0 ? "story" : std::to_string(batch_tokens); }

// SAELens's schedules (its get_lr_scheduler with the constant schedule, and CoefficientScheduler):
// the lr warm-up gives step s the factor s / W; the decay over the last N steps gives step s the
// factor (steps + 1 - s) / N, so the last step still updates (1 / N); lambda is 0 at step 1 and
// rises by lambda / W a step to reach --l1 at step W + 1.
double TrainConfig::lr_at(int64_t step) const {
  if (lr_schedule == LrSchedule::Constant) {
    double factor = 1.0;
    if (lr_warmup_steps > 0) factor *= std::min(1.0, double(step) / double(lr_warmup_steps));
    if (lr_decay_steps > 0 && step > steps - lr_decay_steps)
      factor *= std::max(0.0, double(steps + 1 - step) / double(lr_decay_steps));
    return lr * factor;
  }
  // SAELens's SequentialLR of the warm-up, CosineAnnealingLR(T_max = span, eta_min = lr_end) or
  // CosineAnnealingWarmRestarts(T_0 = span / cycles) over the steps between, then the decay from
  // lr_end (validate keeps the three apart).
  const double end = lr_end_value();
  if (step <= lr_warmup_steps) return lr * double(step) / double(lr_warmup_steps);
  if (lr_decay_steps > 0 && step > steps - lr_decay_steps)
    return end * double(steps + 1 - step) / double(lr_decay_steps);
  const int64_t span = steps - lr_warmup_steps - lr_decay_steps;
  const int64_t period = lr_schedule == LrSchedule::Cosine ? span : span / lr_cycles;
  const int64_t t = (step - lr_warmup_steps - 1) % period;
  return end + (lr - end) * (1 + std::cos(M_PI * double(t) / double(period))) / 2;
}

double TrainConfig::lr_end_value() const { return lr_end < 0 ? lr / 10 : lr_end; }

double TrainConfig::l1_at(int64_t step) const {
  if (l1_warmup_steps <= 0) return l1;
  return l1 * std::min(1.0, double(step - 1) / double(l1_warmup_steps));
}

void check_batch_tokens(int64_t tokens) {
  if (tokens > 65536)
    throw UsageError(cat("--batch ", tokens, ": token batches of at most 65536 tokens are supported (the step's [N, F] "
                         "buffers grow with N)"));
}

int64_t parse_batch(const std::string& text) {
  if (text == "story") return 0;
  size_t used = 0;
  long long value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || value <= 0)
    throw UsageError(cat("--batch: expected 'story' or a token count in [1, 65536], got '", text, "'"));
  check_batch_tokens(value);
  return value;
}

LrSchedule parse_lr_schedule(const std::string& given) {
  std::string text = given;  // as SAELens reads its names: in any case
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (text == "constant") return LrSchedule::Constant;
  if (text == "cosine" || text == "cosineannealing") return LrSchedule::Cosine;
  if (text == "cosine-restarts" || text == "cosineannealingwarmrestarts") return LrSchedule::CosineRestarts;
  throw UsageError(cat("--lr-schedule: expected constant, cosine or cosine-restarts, got '", printable(given), "'"));
}

const char* lr_schedule_name(LrSchedule schedule) {
  return schedule == LrSchedule::Constant ? "constant" : schedule == LrSchedule::Cosine ? "cosine" : "cosine-restarts";
}

DeviceChoice parse_device_choice(const std::string& text) {
  if (text == "cpu") return DeviceChoice::Cpu;
  if (text == "cuda") return DeviceChoice::Cuda;
  if (text == "auto") return DeviceChoice::Auto;
  throw UsageError(cat("--device: expected cpu, cuda or auto, got '", text, "'"));
}

const char* device_choice_name(DeviceChoice choice) {
  return choice == DeviceChoice::Cpu ? "cpu" : (choice == DeviceChoice::Cuda ? "cuda" : "auto");
}

Device resolve_device(DeviceChoice choice) {
  if (choice == DeviceChoice::Cpu) return Device::CPU;
  if (choice == DeviceChoice::Cuda) {
    if (!cuda_built()) throw UsageError("--device cuda: this build has no CUDA support (nvcc was not found at build time)");
    if (!cuda_available()) throw UsageError("--device cuda: no CUDA GPU is available on this machine");
    return Device::CUDA;
  }
  return cuda_available() ? Device::CUDA : Device::CPU;
}

}  // namespace sae
