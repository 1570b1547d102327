// The architecture options' choices, rules and resolution (see arch_config.h).
#include "sae/train/arch_config.h"

#include <cmath>

#include "sae/data/activations.h"
#include "sae/data/batches.h"
#include "sae/train/train_config.h"
#include "sae/train/training_data.h"

namespace sae {

namespace {
Toggle parse_toggle(const char* option, const std::string& text) {
  if (text == "auto") return Toggle::Auto;
  if (text == "on") return Toggle::On;
  if (text == "off") return Toggle::Off;
  throw UsageError(cat("--", option, ": expected auto, on or off, got '", text, "'"));
}

void require(bool ok, const std::string& message) {
  if (!ok) throw UsageError(message);
}
}  // namespace

Toggle parse_unit_norm_decoder(const std::string& text) { return parse_toggle("unit-norm-decoder", text); }
Toggle parse_init_tied(const std::string& text) { return parse_toggle("init-tied", text); }
const char* toggle_name(Toggle t) { return t == Toggle::Auto ? "auto" : (t == Toggle::On ? "on" : "off"); }

BDecChoice parse_init_b_dec(const std::string& text) {
  if (text == "auto") return BDecChoice::Auto;
  if (text == "zero") return BDecChoice::Zero;
  if (text == "geometric_median") return BDecChoice::GeometricMedian;
  throw UsageError(cat("--init-b-dec: expected auto, zero or geometric_median, got '", text, "'"));
}

const char* b_dec_choice_name(BDecChoice c) {
  return c == BDecChoice::Auto ? "auto" : (c == BDecChoice::Zero ? "zero" : "geometric_median");
}

void validate_architecture_options(const TrainConfig& c) {
  const TrainConfig defaults;
  const Architecture a = c.architecture;
  const std::string arch = architecture_name(a);
  const bool topk = is_topk_family(a), jumprelu = a == Architecture::JumpReLU;
  // Given with an architecture it does not apply to.
  auto only_for = [&](bool applies, bool given, const char* option, const char* where) {
    require(applies || !given, cat("--", option, " applies only to ", where, ", not to --architecture ", arch));
  };
  only_for(topk, c.k != defaults.k, "k", "--architecture topk or batchtopk");
  only_for(topk, c.auxk_coefficient != defaults.auxk_coefficient, "auxk-coefficient",
           "--architecture topk or batchtopk");
  only_for(topk, c.auxk_k != defaults.auxk_k, "auxk-k", "--architecture topk or batchtopk");
  only_for(a == Architecture::BatchTopK, c.batchtopk_threshold_lr != defaults.batchtopk_threshold_lr,
           "batchtopk-threshold-lr", "--architecture batchtopk");
  only_for(jumprelu, c.jumprelu_penalty != defaults.jumprelu_penalty, "jumprelu-penalty", "--architecture jumprelu");
  only_for(jumprelu, c.jumprelu_bandwidth != defaults.jumprelu_bandwidth, "jumprelu-bandwidth",
           "--architecture jumprelu");
  only_for(jumprelu, c.jumprelu_init_threshold != defaults.jumprelu_init_threshold, "jumprelu-init-threshold",
           "--architecture jumprelu");
  const bool tanh = jumprelu && c.jumprelu_penalty == JumpReluPenalty::Tanh;
  only_for(tanh, c.jumprelu_tanh_c != defaults.jumprelu_tanh_c, "jumprelu-tanh-c",
           "--architecture jumprelu --jumprelu-penalty tanh");
  only_for(tanh, c.jumprelu_pre_act != defaults.jumprelu_pre_act, "jumprelu-pre-act",
           "--architecture jumprelu --jumprelu-penalty tanh");
  require(!(a == Architecture::Standard && c.unit_norm_decoder == Toggle::On),
          "--unit-norm-decoder applies to topk, batchtopk, jumprelu and gated; the standard SAE weights its L1 by "
          "the decoder norms instead");
  require(a == Architecture::Standard || c.sparse == defaults.sparse,
          cat("--sparse applies only to --architecture standard (topk and batchtopk always take the sparse path, "
              "jumprelu and gated the dense one), not to --architecture ", arch));
  require(!topk || c.l1 == defaults.l1,
          cat("--l1 does not apply to --architecture ", arch, ": its sparsity is set by --k"));
  require(!topk || c.l1_warmup_steps == defaults.l1_warmup_steps,
          cat("--l1-warmup-steps does not apply to --architecture ", arch, ": its sparsity is set by --k"));
  // Ranges.
  if (topk) {
    require(c.k != 0, cat("--k is required with --architecture ", arch, " (latents per token, 1 to --features)"));
    require(c.k >= 1 && c.k <= c.features,
            cat("--k must be in [1, ", c.features, "] (at most --features), got ", c.k));
    require(std::isfinite(c.auxk_coefficient) && c.auxk_coefficient >= 0,
            cat("--auxk-coefficient must be a finite number >= 0, got ", c.auxk_coefficient));
    require(c.auxk_k >= 0 && c.auxk_k <= c.features,
            cat("--auxk-k must be in [0, ", c.features, "] (0 = d_in / 2), got ", c.auxk_k));
  }
  if (a == Architecture::BatchTopK)
    require(c.batchtopk_threshold_lr > 0 && c.batchtopk_threshold_lr <= 1,
            cat("--batchtopk-threshold-lr must be in (0, 1], got ", c.batchtopk_threshold_lr));
  if (jumprelu) {
    require(std::isfinite(c.jumprelu_bandwidth) && c.jumprelu_bandwidth > 0,
            cat("--jumprelu-bandwidth must be a finite number > 0, got ", c.jumprelu_bandwidth));
    require(std::isfinite(c.jumprelu_init_threshold) && c.jumprelu_init_threshold > 0,
            cat("--jumprelu-init-threshold must be a finite number > 0, got ", c.jumprelu_init_threshold));
    require(std::isfinite(c.jumprelu_tanh_c) && c.jumprelu_tanh_c > 0,
            cat("--jumprelu-tanh-c must be a finite number > 0, got ", c.jumprelu_tanh_c));
    require(std::isfinite(c.jumprelu_pre_act) && c.jumprelu_pre_act >= 0,
            cat("--jumprelu-pre-act must be a finite number >= 0, got ", c.jumprelu_pre_act));
  }
}

bool resolved_unit_norm_decoder(const TrainConfig& c) {
  if (c.unit_norm_decoder != Toggle::Auto) return c.unit_norm_decoder == Toggle::On;
  return is_topk_family(c.architecture) ||
         (c.architecture == Architecture::JumpReLU && c.jumprelu_penalty == JumpReluPenalty::Step);
}

ArchOptions arch_options(const TrainConfig& c, int64_t d_in) {
  ArchOptions o;
  o.architecture = c.architecture;
  if (is_topk_family(c.architecture)) {
    o.k = c.k;
    o.auxk_coefficient = c.auxk_coefficient;
    o.auxk_k = c.auxk_k > 0 ? c.auxk_k : std::max<int64_t>(1, d_in / 2);
  }
  o.dead_tokens = c.dead_window;
  o.unit_norm_decoder = resolved_unit_norm_decoder(c);
  o.jumprelu_penalty = c.jumprelu_penalty;
  o.jumprelu_bandwidth = c.jumprelu_bandwidth;
  o.jumprelu_tanh_c = c.jumprelu_tanh_c;
  o.jumprelu_pre_act = c.jumprelu_pre_act;
  o.jumprelu_ste_to_input = c.jumprelu_penalty == JumpReluPenalty::Tanh;  // docs/architectures.md §2.3
  o.batchtopk_threshold_lr = c.batchtopk_threshold_lr;
  return o;
}

ArchInit arch_init(const TrainConfig& c) {
  ArchInit init;
  init.architecture = c.architecture;
  init.k = c.k;
  init.tied = c.init_tied == Toggle::Auto ? c.architecture != Architecture::Standard : c.init_tied == Toggle::On;
  init.unit_norm_decoder = resolved_unit_norm_decoder(c);
  if (c.init_b_dec == BDecChoice::Zero) init.b_dec = BDecInit::Zero;
  if (c.init_b_dec == BDecChoice::GeometricMedian ||
      (c.init_b_dec == BDecChoice::Auto && is_topk_family(c.architecture)))
    init.b_dec = BDecInit::GeometricMedian;
  init.jumprelu_threshold = c.jumprelu_init_threshold;
  return init;
}

SaeParams fresh_params(const TrainConfig& c, TrainingData& data) {
  const ArchInit init = arch_init(c);
  std::vector<double> sample;
  if (init.b_dec == BDecInit::GeometricMedian) sample = first_training_tokens(data, c);
  Rng rng(c.seed);
  return arch_initial_params(init, data.d, c.features, rng, sample);
}

void adopt_init_architecture(TrainConfig& c, const SaeParams& loaded) {
  if (loaded.architecture != c.architecture)
    throw UsageError(cat("--init ", c.init, " holds a ", architecture_name(loaded.architecture),
                         " SAE: pass --architecture ", architecture_name(loaded.architecture),
                         " (the run has --architecture ", architecture_name(c.architecture), ")"));
  if (is_topk_family(c.architecture) && c.k == 0) c.k = loaded.k;
}

void set_dead_clock(std::vector<int64_t>& clock, const std::vector<int64_t>& last_fired, int64_t tokens) {
  for (size_t i = 0; i < clock.size() && i < last_fired.size(); ++i) clock[i] = tokens - last_fired[i];
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
