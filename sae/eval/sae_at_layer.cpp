// load_sae_at_layer, reconstruct and decoder_direction (see sae_at_layer.h). T tokens, D width, F features.
#include "sae/eval/sae_at_layer.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "sae/arch_model.h"
#include "sae/data/text_batches.h"
#include "sae/train/checkpoint.h"
#include "tensor/ops.h"

namespace sae {

namespace {

// N from "blocks.N.<suffix>", or -1.
int block_index(const std::string& hook_name, const std::string& suffix) {
  const std::string prefix = "blocks.";
  if (hook_name.rfind(prefix, 0) != 0 || hook_name.size() <= prefix.size() + suffix.size() + 1) return -1;
  if (hook_name.compare(hook_name.size() - suffix.size(), suffix.size(), suffix) != 0) return -1;
  const std::string digits = hook_name.substr(prefix.size(), hook_name.size() - prefix.size() - suffix.size() - 1);
  if (digits.empty() || digits.size() > 6 || hook_name[prefix.size() + digits.size()] != '.') return -1;
  int n = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return -1;
    n = n * 10 + (c - '0');
  }
  return n;
}

// The layer the folder says, with where it said it; nothing when it says nothing usable (a hook
// other than the residual stream's; `source` then names it).
std::optional<int64_t> layer_from_cfg(const Json& cfg, int64_t model_layers, std::string& source) {
  if (cfg.has("sae_cpp") && cfg.at("sae_cpp").is_object()) {
    const Json& ours = cfg.at("sae_cpp");
    if (ours.has("data") && ours.at("data").is_object() && ours.at("data").has("layer")) {
      source = "cfg.json sae_cpp.data.layer";
      return ours.at("data").at("layer").as_int();
    }
  }
  std::string hook_name;
  if (cfg.has("metadata") && cfg.at("metadata").is_object() && cfg.at("metadata").has("hook_name") &&
      cfg.at("metadata").at("hook_name").is_string())
    hook_name = cfg.at("metadata").at("hook_name").as_string();
  else if (cfg.has("hook_name") && cfg.at("hook_name").is_string())
    hook_name = cfg.at("hook_name").as_string();
  if (hook_name.empty()) return std::nullopt;
  source = "cfg.json hook_name " + printable(hook_name);
  const int pre = block_index(hook_name, "hook_resid_pre");
  if (pre >= 0) return pre;
  // The last block's hook_resid_post is before ln_f, which no hidden_states index is.
  const int post = block_index(hook_name, "hook_resid_post");
  if (post >= 0 && post + 1 < model_layers) return post + 1;
  return std::nullopt;
}

// A SAELens key that must be absent, null or `allowed`.
void require_key(const Json& cfg, const std::string& key, const std::string& allowed, const std::string& where,
                 const std::string& why) {
  if (!cfg.has(key) || cfg.at(key).is_null()) return;
  if (!allowed.empty() && cfg.at(key).is_string() && cfg.at(key).as_string() == allowed) return;
  throw DataError(cat(where, ": ", key, " ", cfg.at(key).dump(), " is not supported (", why, ")"));
}

}  // namespace

SaeLayer sae_layer(const std::string& dir, const Json& cfg, const GptNeoConfig& model, int layer_override,
                   int fallback) {
  SaeLayer s;
  if (layer_override >= 0) {
    s.layer = layer_override;
    s.source = "--layer";
    check_hidden_states_index(s.layer, model, "--layer");
    return s;
  }
  std::optional<int64_t> from_cfg;
  try {
    from_cfg = layer_from_cfg(cfg, model.num_layers, s.source);
  } catch (const Error& e) {
    throw DataError(cat(dir, "/cfg.json: ", e.what()));
  }
  if (from_cfg) {
    check_hidden_states_index(*from_cfg, model, cat(dir, "/", s.source));
    s.layer = static_cast<int>(*from_cfg);
    return s;
  }
  if (fallback >= 0) {
    check_hidden_states_index(fallback, model, "--layer");
    s.layer = fallback;
    s.source = "default";
    return s;
  }
  if (!s.source.empty())
    throw UsageError(cat(dir, "/", s.source, " is not a hidden_states index of the model: give --layer"));
  throw UsageError(cat(dir, " does not say which hidden_states index the SAE reads (no sae_cpp.data.layer, no "
                       "hook_name blocks.N.hook_resid_pre): give --layer"));
}

SaeAtLayer load_sae_at_layer(const std::string& dir, const GptNeoConfig& model, int layer_override, Device device) {
  SaeAtLayer s;
  s.dir = dir;
  Checkpoint checkpoint = load_checkpoint(dir, device, /*with_state=*/false);
  s.params = std::move(checkpoint.params);
  s.cfg = std::move(checkpoint.cfg);
  const std::string where = dir + "/cfg.json";
  require_key(s.cfg, "normalize_activations", "none", where,
              "only \"none\": SAELens folds its dataset scaling into the weights when it saves");
  require_key(s.cfg, "reshape_activations", "none", where, "only \"none\"");
  if (s.cfg.has("metadata") && s.cfg.at("metadata").is_object())
    require_key(s.cfg.at("metadata"), "hook_head_index", "", where + " metadata",
                "an SAE of one attention head does not read the residual stream");
  require_key(s.cfg, "hook_head_index", "", where, "an SAE of one attention head does not read the residual stream");
  if (s.params.d_in() != model.hidden_size)
    throw DataError(cat(dir, ": the SAE's d_in is ", s.params.d_in(), " but the model's hidden size is ",
                        model.hidden_size, " (", model.source, ")"));

  const SaeLayer layer = sae_layer(dir, s.cfg, model, layer_override);
  s.layer = layer.layer;
  s.layer_source = layer.source;
  try {
    if (s.cfg.has("sae_cpp")) {
      const Json& ours = s.cfg.at("sae_cpp");
      if (ours.has("normalization")) s.normalization = parse_normalization(ours.at("normalization").as_string());
      if (ours.has("dataset_scale")) s.dataset_scale = ours.at("dataset_scale").as_number();
    }
  } catch (const Error& e) {
    throw DataError(cat(where, ": ", e.what()));
  }
  if (s.normalization == Normalization::Dataset && !(s.dataset_scale > 0 && std::isfinite(s.dataset_scale)))
    throw DataError(cat(where, ": sae_cpp.dataset_scale must be a positive number, got ", s.dataset_scale));
  return s;
}

Tensor reconstruct(const SaeAtLayer& sae, const Tensor& x, Tensor* features) {
  const int64_t t = x.size(0), d = x.size(1);
  const Tensor raw = x.to(Device::CPU);
  Tensor normalized = Tensor::empty(Shape{t, d});
  const BatchStats stats =
      normalize_batch(raw.data<float>(), normalized.data<float>(), t, d, sae.normalization, sae.dataset_scale,
                      [](int64_t row) { return row; }, cat("hidden_states[", sae.layer, "]"));
  const Tensor f = sae_encode(sae.params, normalized.to(sae.params.device()));
  Tensor x_hat = sae_decode(sae.params, f);
  affine_(x_hat, x_hat, 1.0 / stats.norm_scale, stats.norm_shift);  // x = x_n / scale + shift
  if (features) *features = f;
  return x_hat;
}

Tensor decoder_direction(const SaeAtLayer& sae, int64_t feature) {
  const int64_t features = sae.params.d_sae();
  if (feature < 0 || feature >= features)
    throw UsageError(cat("--feature ", feature, " is outside 0..", features - 1, " (the SAE has ", features,
                         " features)"));
  // In double on the host: a float32 sum of squares overflows for weights above ~1e19 (a norm of
  // inf would make the direction 0, and the "steered" text the unsteered one).
  const std::vector<double> row =
      sae.params.W_dec.slice_rows(feature, feature + 1).to(Device::CPU).to_vector();
  double largest = 0;
  for (double v : row) largest = std::max(largest, std::abs(v));
  if (!std::isfinite(largest))
    throw DataError(cat(sae.dir, ": feature ", feature, "'s decoder row holds a value that is not finite"));
  if (!(largest > 0)) throw DataError(cat(sae.dir, ": feature ", feature, " has a zero decoder row: no direction to steer along"));
  double scaled = 0;  // sum of (v / largest)^2: no overflow, no underflow
  for (double v : row) scaled += (v / largest) * (v / largest);
  const double norm = largest * std::sqrt(scaled);
  std::vector<double> direction(row.size());
  for (size_t j = 0; j < row.size(); ++j) direction[j] = row[j] / norm;
  return Tensor::from_vector(direction, Shape{sae.params.d_in()}, DType::F32, sae.params.device());
}

}  // namespace sae
