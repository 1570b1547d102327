// The table of training options (see options.h): one row per option, each built from a field of
// TrainConfig and a codec for its type (text, JSON).
#include "sae/train/options.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <type_traits>

#include "lm/model_family.h"
#include "lm/text_data.h"
#include "sae/arch/registry.h"

namespace sae {

namespace {

// How one value type reads and writes itself. parse() throws UsageError naming the option.
template <typename T>
struct Codec {
  std::function<T(const std::string& option, const std::string& text)> parse;
  std::function<std::string(const T&)> text;
  std::function<Json(const T&)> to_json;
  std::function<T(const Json&)> from_json;
  bool flag = false;  // "--name" alone means true
};

[[noreturn]] void bad_value(const std::string& option, const char* expected, const std::string& text) {
  throw UsageError(cat("--", option, ": expected ", expected, ", got '", text, "'"));
}

std::string number_text(double v) {
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof buffer, v);  // shortest exact form
  return std::string(buffer, result.ptr);
}

// Integers within +-2^53 (kJsonMaxExactInteger), which config.json's numbers hold exactly: a larger
// one was recorded rounded, and the run it made could not be resumed.
Codec<int64_t> integer() {
  return {[](const std::string& option, const std::string& text) {
            int64_t v = 0;
            const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
            if (text.empty() || r.ec != std::errc() || r.ptr != text.data() + text.size())
              bad_value(option, "an integer", text);
            if (v > kJsonMaxExactInteger || v < -kJsonMaxExactInteger)
              bad_value(option, "an integer of at most 2^53 in size (config.json records it exactly)", text);
            return v;
          },
          [](const int64_t& v) { return std::to_string(v); }, [](const int64_t& v) { return Json(v); },
          [](const Json& j) { return j.as_int(); }};
}

// A count that may be written as SAELens's configs write theirs (--training-tokens 2e9): an integer, or
// a number in scientific notation whose value is a whole number.
Codec<int64_t> count() {
  Codec<int64_t> c = integer();
  const auto whole = c.parse;
  c.parse = [whole](const std::string& option, const std::string& text) {
    if (text.find_first_of("eE.") == std::string::npos) return whole(option, text);
    double v = 0;
    const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
    if (r.ec != std::errc() || r.ptr != text.data() + text.size() || v != std::floor(v) ||
        std::fabs(v) > double(kJsonMaxExactInteger))
      bad_value(option, "a whole number of at most 2^53 (e.g. 2000000000 or 2e9)", text);
    return static_cast<int64_t>(v);
  };
  return c;
}

// Seeds: integers in [0, 2^53], which config.json's numbers (doubles) hold exactly, so that a run
// resumed or repeated from what it recorded is the same run.
constexpr uint64_t kMaxExactSeed = static_cast<uint64_t>(kJsonMaxExactInteger);

Codec<uint64_t> unsigned_integer() {
  return {[](const std::string& option, const std::string& text) {
            uint64_t v = 0;
            const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
            if (text.empty() || r.ec != std::errc() || r.ptr != text.data() + text.size() || v > kMaxExactSeed)
              bad_value(option, "an integer in [0, 2^53]", text);
            return v;
          },
          [](const uint64_t& v) { return std::to_string(v); },
          [](const uint64_t& v) { return Json(static_cast<int64_t>(v)); },
          [](const Json& j) {
            const int64_t v = j.as_int();
            if (v < 0 || static_cast<uint64_t>(v) > kMaxExactSeed)
              throw DataError(cat("a seed must be an integer in [0, 2^53], got ", v));
            return static_cast<uint64_t>(v);
          }};
}

Codec<double> number() {
  return {[](const std::string& option, const std::string& text) {
            double v = 0;
            const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
            if (text.empty() || r.ec != std::errc() || r.ptr != text.data() + text.size())
              bad_value(option, "a number", text);
            return v;
          },
          [](const double& v) { return number_text(v); }, [](const double& v) { return Json(v); },
          [](const Json& j) { return j.as_number(); }};
}

Codec<bool> flag() {
  return {[](const std::string& option, const std::string& text) {
            if (text == "true" || text == "1") return true;
            if (text == "false" || text == "0") return false;
            bad_value(option, "true or false", text);
          },
          [](const bool& v) { return std::string(v ? "true" : "false"); }, [](const bool& v) { return Json(v); },
          [](const Json& j) { return j.as_bool(); }, true};
}

Codec<std::string> text() {
  return {[](const std::string&, const std::string& t) { return t; }, [](const std::string& v) { return v; },
          [](const std::string& v) { return Json(v); }, [](const Json& j) { return j.as_string(); }};
}

Codec<int64_t> batch() {
  return {[](const std::string&, const std::string& t) { return parse_batch(t); },
          [](const int64_t& v) { return v == 0 ? std::string("story") : std::to_string(v); },
          [](const int64_t& v) { return Json(v == 0 ? std::string("story") : std::to_string(v)); },
          [](const Json& j) { return parse_batch(j.as_string()); }};
}

// --long-stories error|split, held as TrainConfig::split_long_stories.
Codec<bool> long_stories() {
  auto parse = [](const std::string& t) {
    if (t == "error") return false;
    if (t == "split") return true;
    throw UsageError(cat("--long-stories: expected error or split, got '", t, "'"));
  };
  return {[parse](const std::string&, const std::string& t) { return parse(t); },
          [](const bool& v) { return std::string(v ? "split" : "error"); },
          [](const bool& v) { return Json(v ? "split" : "error"); }, [parse](const Json& j) { return parse(j.as_string()); }};
}

// --bos-activations skip|keep, held as TrainConfig::keep_bos_activations.
Codec<bool> skip_or_keep() {
  auto parse = [](const std::string& t) {
    if (t == "skip") return false;
    if (t == "keep") return true;
    throw UsageError(cat("--bos-activations: expected skip or keep, got '", t, "'"));
  };
  return {[parse](const std::string&, const std::string& t) { return parse(t); },
          [](const bool& v) { return std::string(v ? "keep" : "skip"); },
          [](const bool& v) { return Json(v ? "keep" : "skip"); }, [parse](const Json& j) { return parse(j.as_string()); }};
}

// An enum stored by name; parse_fn throws UsageError naming the option.
template <typename E>
Codec<E> choice(E (*parse_fn)(const std::string&), const char* (*name_fn)(E)) {
  return {[parse_fn](const std::string&, const std::string& t) { return parse_fn(t); },
          [name_fn](const E& v) { return std::string(name_fn(v)); },
          [name_fn](const E& v) { return Json(name_fn(v)); },
          [parse_fn](const Json& j) { return parse_fn(j.as_string()); }};
}

// One row: `field` gives the TrainConfig member the option sets.
template <typename Field, typename T>
TrainOption row(const char* name, const std::string& group, const std::string& help, OptionRole role,
                const char* json_key,
                Field field, Codec<T> codec, std::optional<std::string> when_missing = std::nullopt) {
  TrainOption o;
  o.name = name;
  o.group = group;
  o.help = help;
  o.role = role;
  o.json_key = json_key;
  o.is_flag = codec.flag;
  o.implicit_value = codec.flag ? std::string("true") : std::string();
  o.when_missing = when_missing;
  // The getters take the config by const reference; the field accessor is written once for both.
  auto get = [field](const TrainConfig& c) -> const T& { return field(const_cast<TrainConfig&>(c)); };
  o.text = [get, codec](const TrainConfig& c) { return codec.text(get(c)); };
  o.parse = [field, codec, option = std::string(name)](TrainConfig& c, const std::string& t) {
    field(c) = codec.parse(option, t);
  };
  o.to_json = [get, codec](const TrainConfig& c) { return codec.to_json(get(c)); };
  o.from_json = [field, codec, key = std::string(json_key)](TrainConfig& c, const Json& j) {
    try {
      field(c) = codec.from_json(j);
    } catch (const Error& e) {
      throw DataError(cat("config key '", key, "': ", e.what()));
    }
  };
  o.copy = [field](TrainConfig& to, const TrainConfig& from) { field(to) = field(const_cast<TrainConfig&>(from)); };
  return o;
}

#define FIELD(member) [](TrainConfig& c) -> auto& { return c.member; }

// --architecture: a unit's name (sae/arch/registry.h).
Codec<std::string> architecture_codec() {
  auto check = [](const std::string& t) { return arch_unit(t).name(); };
  return {[check](const std::string&, const std::string& t) { return check(t); },
          [](const std::string& v) { return v; }, [](const std::string& v) { return Json(v); },
          [check](const Json& j) { return check(j.as_string()); }};
}

// A unit's option row (sae/arch/settings.h): its value lives in TrainConfig::arch, by name.
TrainOption arch_option(const ArchOption& a, const std::string& group) {
  TrainOption o;
  o.name = a.name;
  o.group = group;
  o.help = cat(a.help, " [", units_reading(a.name), "]");
  o.role = OptionRole::Defines;
  o.json_key = a.json_key;
  o.implicit_value = a.implicit_value;
  o.when_missing = a.when_missing.empty() ? a.default_text : a.when_missing;
  auto value = [a](const TrainConfig& c) { return c.arch.has(a.name) ? c.arch.at(a.name) : a.default_value(); };
  o.text = [a, value](const TrainConfig& c) { return a.text(value(c)); };
  o.parse = [a](TrainConfig& c, const std::string& t) { c.arch.set(a.name, a.parse(t)); };
  o.to_json = value;
  o.from_json = [a](TrainConfig& c, const Json& j) { c.arch.set(a.name, a.from_json(j)); };
  o.copy = [a, value](TrainConfig& to, const TrainConfig& from) { to.arch.set(a.name, value(from)); };
  return o;
}

// --precision (tensor/precision.h), which replaced the flag --tf32: a config.json with "tf32" and no
// "precision" (a run from before) reads as tf32 or fp32.
TrainOption precision_row(const char* group) {
  TrainOption o = row("precision", group,
                      "float32 GEMMs: fp32 | tf32 (TF32 tensor cores) | bf16 (bfloat16 inputs, float32 sums; the SAE's "
                      "[N, F] activations held in bf16; Adam, weights and sums stay float32). On CPU the inputs are "
                      "rounded alike: a reference, not faster",
                      OptionRole::Controls, "precision", FIELD(precision), choice(parse_precision, precision_name),
                      "fp32");
  o.from_older_key = [](const Json& section) -> std::optional<std::string> {
    if (!section.has("tf32")) return std::nullopt;
    try {
      return section.at("tf32").as_bool() ? "tf32" : "fp32";
    } catch (const Error& e) {
      throw DataError(cat("config key 'tf32': ", e.what()));
    }
  };
  return o;
}

std::vector<TrainOption> make_table() {
  const char* training = "Training";
  const std::string architecture = "Architecture (docs/architectures.md; auto = the architecture's default)";
  const char* synthetic = "Synthetic data (--data synthetic)";
  const char* target = "L0 set point (docs/architectures.md §2.9)";
  const char* text_group = "Text through a language model (--model, --text)";
  const char* dictionaries = "Transcoders and crosscoders (docs/architectures.md §2.13)";
  const char* stats_group = "Feature statistics (what each feature fires on; sae_browser shows them)";
  const char* eval_group = "Evaluation during training (the SAE spliced into the language model, as sae_eval scores it)";
  const OptionRole defines = OptionRole::Defines, controls = OptionRole::Controls, launch = OptionRole::Launch;
  std::vector<TrainOption> table = {
      row("data", training, "activations: 'synthetic', a .safetensors/.npy file, or an activation cache folder", defines,
          "data", FIELD(data), text()),
      row("model", text_group, "a Hugging Face model folder, " + supported_families_text() + " (config.json, "
          "model.safetensors, tokenizer.json): train on its activations, computed from --text inside the loop",
          defines, "model", FIELD(model), text(), std::string()),
      row("text", text_group, std::string("the text corpus: ") + kCorpusFormats, defines, "text", FIELD(text), text(),
          std::string()),
      row("layer", text_group, "train on hidden_states[layer], the residual stream entering block `layer` (the original: 2, "
          "blocks.2.hook_resid_pre = blocks.1.hook_resid_post; sparsify's layers.L and Gemma Scope's layer_L are "
          "block L's output: --layer L+1)",
          defines, "layer", FIELD(layer), integer(), "2"),
      row("hook", text_group, "train at this hook point instead of --layer, named as SAELens names it: "
          "blocks.L.hook_resid_pre | hook_resid_mid | hook_resid_post | hook_attn_out | hook_mlp_out | "
          "ln2.hook_normalized | attn.hook_z (docs/models.md)", defines, "hook", FIELD(hook), text(), std::string()),
      row("long-stories", text_group, "a story longer than the model's positions: error | split (into pieces)", defines,
          "long_stories", FIELD(split_long_stories), long_stories(), "error"),
      row("text-field", text_group, "JSON lines: the field that holds each document's text", defines, "text_field",
          FIELD(text_field), text(), "text"),
      row("prepend-bos", text_group, "on | off | auto: a BOS token at the start of every window (auto: when the "
          "model's tokenizer adds one, as Llama 3's does; GPT-2's and Pythia's do not)", defines, "prepend_bos",
          FIELD(prepend_bos), choice(parse_bos_mode, bos_mode_name), "off"),  // runs from before it had none
      row("context-size", text_group, "positions per window: every document is cut into windows of this many, "
          "the BOS included (SAELens's context_size; unlike SAELens, documents are not packed together: each "
          "starts a window; 0: the model's positions, and --long-stories decides)", defines,
          "context_size", FIELD(context_size), integer(), "0"),
      row("bos-activations", text_group, "skip | keep: train on the activations at BOS positions (skipped by "
          "default: their norms are often 10-100x the others')", defines, "bos_activations",
          FIELD(keep_bos_activations), skip_or_keep(), "skip"),
      row("text-chunk-tokens", text_group, "token batches from text: tokens gathered and shuffled together", defines,
          "text_chunk_tokens", FIELD(text_chunk_tokens), integer(), "65536"),
      row("target-data", dictionaries, "a transcoder from activation files or caches: --data holds its input, this "
          "its target (the same tokens, in the same order)", defines, "target_data", FIELD(target_data), text(),
          std::string()),
      row("transcoder", dictionaries, "a transcoder of block L's MLP from text: reads blocks.L.ln2.hook_normalized, "
          "reconstructs blocks.L.hook_mlp_out (-1: none)", defines, "transcoder_block", FIELD(transcoder_block),
          integer(), "-1"),
      row("hook-in", dictionaries, "a transcoder's input hook (text; default with --transcoder L: "
          "blocks.L.ln2.hook_normalized)", defines, "hook_in", FIELD(hook_in), text(), std::string()),
      row("hook-out", dictionaries, "a transcoder's target hook (text; default with --transcoder L: "
          "blocks.L.hook_mlp_out)", defines, "hook_out", FIELD(hook_out), text(), std::string()),
      row("hooks", dictionaries, "a crosscoder over these hooks, comma-separated (text; with --model-b: of both "
          "models)", defines, "hooks", FIELD(hooks), text(), std::string()),
      row("model-b", dictionaries, "a crosscoder over the same hooks (--hook, --layer or --hooks) of --model and "
          "this model (same tokenizer): model diffing", defines, "model_b", FIELD(model_b), text(), std::string()),
      row("skip", dictionaries, "a skip transcoder: adds a linear skip path x W_skip, W_skip starting at zero",
          defines, "skip", FIELD(skip), flag(), "false"),
      row("features", training, "number of SAE features F (d_sae)", defines, "features", FIELD(features), integer()),
      row("expansion-factor", training, "F as a multiple of the width d of the activation read (one source's for a "
          "crosscoder), instead of --features: SAELens's and sparsify's expansion_factor (0: --features)", defines,
          "expansion_factor", FIELD(expansion_factor), integer(), "0"),
      row("l1", training, "lambda, the sparsity coefficient (of " + units_that(&ArchUnit::has_lambda) + ")", defines,
          "l1", FIELD(l1), number()),
      row("lr", training, "Adam learning rate", defines, "lr", FIELD(lr), number()),
      row("beta1", training, "Adam beta1", defines, "beta1", FIELD(beta1), number()),
      row("beta2", training, "Adam beta2", defines, "beta2", FIELD(beta2), number()),
      row("eps", training, "Adam epsilon", defines, "eps", FIELD(eps), number()),
      row("max-grad-norm", training,
          "clip the gradient's global norm as SAELens does (its clip_grad_norm_ on the mean loss: ours, a sum over "
          "the batch's N tokens, at N times this); SAELens clips at 1; 0: no clipping",
          defines, "max_grad_norm", FIELD(max_grad_norm), number(), "0"),  // "0": runs from before it
      row("apply-b-dec-to-input", training,
          "the encoder sees x - b_dec, as SAELens (its apply_b_dec_to_input), dictionary_learning, sparsify and OpenAI "
          "train; b_dec then gets gradient through the encoder too; an SAE's only (not a transcoder's or crosscoder's)",
          defines, "apply_b_dec_to_input", FIELD(apply_b_dec_to_input), flag(), "false"),  // "false": runs from before it
      row("steps", training, "optimizer steps in total", controls, "steps", FIELD(steps), integer()),
      row("training-tokens", training, "tokens to train on, instead of --steps (SAELens's training_tokens): --steps "
          "becomes ceil(N / --batch); token batches only (0: --steps)", controls, "training_tokens",
          FIELD(training_tokens), count(), "0"),
      row("batch", training, "'story' (one story per step) or N (shuffled N-token batches)", defines, "batch",
          FIELD(batch_tokens), batch()),
      row("normalize", training, "story | dataset | none | layer_norm | constant_norm_rescale (per token, SAELens's and OpenAI's: an SAE's input)", defines, "normalize", FIELD(normalize),
          choice(parse_normalization, normalization_name)),
      row("init", training, "start from this SAE: a SAELens-format checkpoint directory (ours or another's), a sparsify folder, a Gemma Scope params.npz or a torch.save .pt (dictionary_learning's ae.pt, OpenAI's)", defines, "init", FIELD(init),
          text()),
      row("resume", training, "continue the run in this directory to --steps", launch, "", FIELD(resume), text()),
      row("out", training, "output directory", launch, "out", FIELD(out), text()),
      row("overwrite", training, "a fresh run into an --out that holds a run replaces it (deletes its files once the new data is read)", launch,
          "", FIELD(overwrite), flag()),
      row("seed", training, "random seed (initialisation, token shuffling)", defines, "seed", FIELD(seed),
          unsigned_integer()),
      row("device", training, "cpu | cuda | auto", controls, "device", FIELD(device),
          choice(parse_device_choice, device_choice_name)),
      precision_row(training),
      row("prefetch", training, "prepare the next batch on a worker thread: auto (on for CUDA) | on | off", controls,
          "prefetch", FIELD(prefetch), choice(parse_prefetch_mode, prefetch_mode_name), "auto"),
      row("device-data", training, "batches to the GPU asynchronously (page-locked, their own stream) or made "
          "there (synthetic data), metrics computed there, loss sums read back only where needed: auto (on for "
          "CUDA) | on | off", controls, "device_data",
          FIELD(device_data), choice(parse_device_data_mode, device_data_mode_name), "auto"),
      row("checkpoint-every", training, "steps between checkpoints", controls, "checkpoint_every",
          FIELD(checkpoint_every), integer()),
      row("log-every", training, "steps between metrics rows", controls, "log_every", FIELD(log_every), integer()),
      row("lr-warmup-steps", training, "linear learning-rate warm-up", defines, "lr_warmup_steps",
          FIELD(lr_warmup_steps), integer()),
      row("lr-decay-steps", training, "linear learning-rate decay over the last N steps (SAELens's: step s at (steps + 1 - s) / N, the last at 1 / N)", defines,
          "lr_decay_steps", FIELD(lr_decay_steps), integer()),
      row("lr-schedule", training, "the learning rate between the warm-up and the decay (SAELens's lr_scheduler_name): "
          "constant | cosine (from --lr down to --lr-end) | cosine-restarts (--lr-cycles such cosines); a cosine's "
          "decay starts from --lr-end", defines, "lr_schedule", FIELD(lr_schedule),
          choice(parse_lr_schedule, lr_schedule_name), "constant"),  // runs from before it had none
      row("lr-end", training, "the cosines' final learning rate (SAELens's lr_end; -1: --lr / 10, its default)", defines,
          "lr_end", FIELD(lr_end), number(), "-1"),
      row("lr-cycles", training, "cosine-restarts: the number of cosines (SAELens's n_restart_cycles)", defines,
          "lr_cycles", FIELD(lr_cycles), integer(), "1"),
      row("l1-warmup-steps", training, "linear lambda warm-up", defines, "l1_warmup_steps", FIELD(l1_warmup_steps),
          integer()),
      row("dead-window", training, "tokens (not steps) without firing before a feature counts as dead (sparsify's dead_feature_threshold; "
          "SAELens's dead_feature_window counts steps: give steps x batch tokens)", defines, "dead_window",
          FIELD(dead_window), integer()),
      row("encoder-chunk", training, "topk: tokens whose pre-activations [tokens, F] are computed and selected from "
          "at once (a large F need not hold the batch's; AuxK computes them again on steps with dead latents); "
          "0: the whole batch when the run fits in memory with it, else as many tokens as fit (at least 256)",
          controls, "encoder_chunk", FIELD(encoder_chunk), count(), "0"),
      row("progress", training, "auto | bar | lines | none", controls, "progress", FIELD(progress),
          choice(parse_progress_mode, progress_mode_name)),
      row("threads", training, "CPU threads for our loops and OpenBLAS (0: OMP_NUM_THREADS or all cores)", controls,
          "threads", FIELD(threads), integer(), "0"),
      row("shards", training, "under mpirun -np P: the latents split over S ranks, times P / S data-parallel "
          "replicas (docs/distributed.md); needs a build with MPI", launch, "shards", FIELD(shards), integer(), "1"),
      row("architecture", architecture, "the SAE's architecture: " + arch_unit_names(), defines, "architecture",
          FIELD(architecture), architecture_codec(), "standard"),
      row("target-l0", target, "an L0 set point: lambda is adjusted every step so that the average L0 reaches and "
          "holds this many latents per token (" + units_that(&ArchUnit::has_lambda) + "); it starts at --l1, or, with --l1 0, at the "
          "data's scale (docs/architectures.md 7.7); 0 = off",
          defines, "target_l0", FIELD(target_l0), number(), "0"),
      row("target-l0-ki", target, "the controller's integral gain K_i (per step, on log lambda)", defines,
          "target_l0_ki", FIELD(target_l0_ki), number(), "0.02"),
      row("target-l0-kp", target, "the controller's proportional gain K_p (on the change of the error)", defines,
          "target_l0_kp", FIELD(target_l0_kp), number(), "2"),
      row("target-l0-ema", target, "weight of the newest batch in the smoothed L0 the controller reads", defines,
          "target_l0_ema", FIELD(target_l0_ema), number(), "0.05"),
      row("target-l0-max-change", target, "largest change of log lambda in one step", defines,
          "target_l0_max_change", FIELD(target_l0_max_change), number(), "0.01"),
      row("feature-stats-steps", stats_group, "gather what each feature fires on over the last N steps (0: "
          "not at all): counts, histograms, top activations with context, in sae/feature_stats.safetensors",
          defines, "feature_stats_steps", FIELD(feature_stats_steps), integer(), "1000"),
      row("feature-stats-k", stats_group, "top activations kept per feature (one per story)", defines,
          "feature_stats_k", FIELD(feature_stats_k), integer(), "10"),
      row("feature-stats-context", stats_group, "tokens kept on either side of each top activation", defines,
          "feature_stats_context", FIELD(feature_stats_context), integer(), "8"),
      row("eval-text", eval_group, "evaluate every checkpoint and the final model as it is saved, on the first "
          "--eval-stories stories of this corpus (runs from text; e.g. the validation split): CE and KL with the "
          "reconstruction spliced in, their scores against zero ablation, FVU, L0 (CHECKPOINT/eval.json, "
          "OUT/evals.csv; SAELens's evals during training); \"\": none", controls, "eval_text", FIELD(eval_text), text(),
          std::string()),
      row("eval-stories", eval_group, "stories of --eval-text per evaluation (0: all of them)", controls,
          "eval_stories", FIELD(eval_stories), integer(), "100"),
      row("eval-text-field", eval_group, "JSON lines: the field of --eval-text with the text", controls,
          "eval_text_field", FIELD(eval_text_field), text(), "text"),
      row("synthetic-d", synthetic, "activation width D", defines, "d", FIELD(synthetic.d), integer()),
      row("synthetic-concepts", synthetic, "number of true concepts C", defines, "concepts", FIELD(synthetic.concepts),
          integer()),
      row("synthetic-story-concepts", synthetic, "how many of them are story-level", defines, "story_concepts",
          FIELD(synthetic.story_concepts), integer()),
      row("synthetic-stories", synthetic, "number of stories", defines, "stories", FIELD(synthetic.stories), integer()),
      row("synthetic-mean-length", synthetic, "mean story length in tokens", defines, "mean_length",
          FIELD(synthetic.mean_length), number()),
      row("synthetic-active", synthetic, "mean token-level concepts per token", defines, "active",
          FIELD(synthetic.active), number()),
      row("synthetic-story-active", synthetic, "story-level concepts per story", defines, "story_active",
          FIELD(synthetic.story_active), integer()),
      row("synthetic-story-presence", synthetic, "chance a story concept is on for a token", defines,
          "story_presence", FIELD(synthetic.story_presence), number()),
      row("synthetic-zipf", synthetic, "power-law exponent of concept frequencies", defines, "zipf",
          FIELD(synthetic.zipf), number()),
      row("synthetic-magnitude", synthetic, "scale of concept magnitudes", defines, "magnitude",
          FIELD(synthetic.magnitude), number()),
      row("synthetic-mean-norm", synthetic, "norm of the shared mean vector", defines, "mean_norm",
          FIELD(synthetic.mean_norm), number()),
      row("synthetic-noise", synthetic, "per-dimension noise standard deviation", defines, "noise",
          FIELD(synthetic.noise), number()),
      row("synthetic-seed", synthetic, "seed of the generator", defines, "seed", FIELD(synthetic.seed),
          unsigned_integer()),
  };
  // The architecture units' rows, after --architecture's.
  auto at = std::find_if(table.begin(), table.end(), [](const TrainOption& o) { return o.name == "architecture"; }) + 1;
  std::vector<TrainOption> units;
  for (const ArchOption& a : arch_option_rows()) units.push_back(arch_option(a, architecture));
  table.insert(at, units.begin(), units.end());
  return table;
}
#undef FIELD

}  // namespace

const std::vector<TrainOption>& train_options() {
  static const std::vector<TrainOption> table = make_table();
  return table;
}

const TrainOption& train_option(const std::string& name) {
  for (const TrainOption& o : train_options())
    if (o.name == name) return o;
  throw Error(cat("train_option: no option --", name));
}

Json TrainConfig::to_json() const {
  Json j = Json::object();
  Json synthetic_section = Json::object();
  for (const TrainOption& o : train_options()) {
    if (o.json_key.empty()) continue;
    if (o.in_synthetic_section())
      synthetic_section[o.json_key] = o.to_json(*this);
    else
      j[o.json_key] = o.to_json(*this);
  }
  if (data == "synthetic") j["synthetic"] = synthetic_section;  // a run on a file has no generator
  return j;
}

TrainConfig TrainConfig::from_json(const Json& j) {
  TrainConfig c;
  for (const TrainOption& o : train_options()) {
    if (o.json_key.empty()) continue;
    if (o.in_synthetic_section() && !j.has("synthetic")) continue;  // a run on a file: the defaults
    const Json& section = o.in_synthetic_section() ? j.at("synthetic") : j;
    std::optional<std::string> older;
    if (!section.has(o.json_key) && o.from_older_key) older = o.from_older_key(section);
    if (section.has(o.json_key))
      o.from_json(c, section.at(o.json_key));
    else if (older)
      o.parse(c, *older);
    else if (o.when_missing)
      o.parse(c, *o.when_missing);
    else
      throw DataError(cat("config: missing key '", o.json_key, "'"));
  }
  return c;
}

Json run_identity(const TrainConfig& config) {
  Json all = config.to_json(), kept = Json::object();
  for (const TrainOption& o : train_options())
    if (o.role == OptionRole::Defines && !o.json_key.empty() && !o.in_synthetic_section())
      kept[o.json_key] = all.at(o.json_key);
  if (all.has("synthetic")) kept["synthetic"] = all.at("synthetic");
  return kept;
}

Json data_stream_identity(const TrainConfig& config) {
  // Not the activations read (--layer, --hook, a transcoder's or crosscoder's hooks, --target-data):
  // dictionaries at several hooks train from one pass, each reading its own columns.
  static const char* const kStreamOptions[] = {"data",  "model", "model-b", "text", "long-stories",
                                               "text-field", "prepend-bos", "context-size", "bos-activations",
                                               "text-chunk-tokens", "batch", "normalize", "seed",  "steps",
                                               "device", "precision", "prefetch", "device-data", "threads"};
  Json all = config.to_json(), kept = Json::object();
  for (const char* name : kStreamOptions) {
    const TrainOption& o = train_option(name);
    kept[o.json_key] = all.at(o.json_key);
  }
  if (all.has("synthetic")) kept["synthetic"] = all.at("synthetic");
  return kept;
}

void give_every_control(TrainConfig& config) {
  for (const TrainOption& o : train_options())
    if (o.role == OptionRole::Controls && !config.was_given(o.name)) config.given.push_back(o.name);
}

TrainConfig resumed_config(const Json& saved, const TrainConfig& cli) {
  TrainConfig c = TrainConfig::from_json(saved);
  for (const TrainOption& o : train_options())
    if (o.role == OptionRole::Launch || (o.role == OptionRole::Controls && cli.was_given(o.name))) o.copy(c, cli);
  // A length given again replaces the recorded one: --steps a recorded token count, --training-tokens
  // the steps (of the run's own batch). Both given must say the same (a study's run gives both, as
  // resolved when it was made).
  if (cli.was_given("training-tokens") && cli.training_tokens != 0) {
    resolve_training_tokens(c);
    if (cli.was_given("steps") && cli.steps != c.steps) throw UsageError("give --steps or --training-tokens, not both");
  } else if (cli.was_given("steps")) {
    c.training_tokens = 0;
  }
  return c;
}

void resolve_training_tokens(TrainConfig& c) {
  if (c.training_tokens == 0) return;
  if (c.training_tokens < 0)
    throw UsageError(cat("--training-tokens must be >= 1 (0: --steps), got ", c.training_tokens));
  if (c.batch_tokens <= 0)
    throw UsageError("--training-tokens counts token batches (--batch N): a story batch's tokens vary, give --steps");
  const bool steps_given =
      c.was_given("steps") && std::find(c.from_profile.begin(), c.from_profile.end(), "steps") == c.from_profile.end();
  if (steps_given) throw UsageError("give --steps or --training-tokens, not both");
  c.steps = (c.training_tokens + c.batch_tokens - 1) / c.batch_tokens;
}

}  // namespace sae
