// An SAE as it sits inside the language model (docs/contract.md §6): its parameters (any
// architecture our trainer writes, or a standard SAELens folder), the hidden_states index it reads,
// and the normalisation its run trained it with, so that a reconstruction spliced into the model is
// brought back to the raw scale of the residual stream. Also the steering direction of a feature.
// Letters: T tokens, D the model's width (= the SAE's d_in), F the SAE's features.
#pragma once
#include <string>

#include "io/json.h"
#include "lm/gpt_neo.h"
#include "sae/data/batches.h"
#include "sae/params.h"

namespace sae {

struct SaeAtLayer {
  std::string dir;
  SaeParams params;
  Json cfg;
  int layer = -1;             // hidden_states[layer] (docs/gpt_neo.md section 5)
  std::string layer_source;   // where `layer` came from, for the report
  Normalization normalization = Normalization::None;
  double dataset_scale = 1.0;
};

// The hidden_states index the SAE in `dir` (its cfg.json: `cfg`) reads, and where that came from:
// layer_override when >= 0 ("--layer"), else cfg.json's sae_cpp.data.layer or SAELens hook_name
// (below), else `fallback` when >= 0 ("default"), else a UsageError asking for --layer. An index
// outside the model's 0..L: UsageError naming --layer, or DataError naming DIR/cfg.json and its key.
struct SaeLayer {
  int layer = -1;
  std::string source;  // "--layer", "cfg.json sae_cpp.data.layer", "cfg.json hook_name ...", "default"
};
SaeLayer sae_layer(const std::string& dir, const Json& cfg, const GptNeoConfig& model, int layer_override,
                   int fallback = -1);

// Loads DIR (sae/train/checkpoint.h load_checkpoint) onto `device` and fits it to the model. The
// layer: `layer_override` when >= 0, else cfg.json's sae_cpp.data.layer (what sae_train records for
// a run from text), else a SAELens metadata.hook_name "blocks.N.hook_resid_pre" (N) or
// "blocks.N.hook_resid_post" (N + 1, when that is not the last block); none of these is a
// UsageError asking for --layer. The normalisation: cfg.json's sae_cpp.normalization and
// dataset_scale (none for a folder from elsewhere). DataError, one line naming the folder, for: d_in
// != the model's hidden size, a layer outside 0..L, SAELens normalize_activations or
// reshape_activations other than "none", a hook_head_index.
SaeAtLayer load_sae_at_layer(const std::string& dir, const GptNeoConfig& model, int layer_override, Device device);

// The SAE's reconstruction of raw activations x [T, D] (one story or piece, on the SAE's device):
// normalised as in training (story: this x's own mean and std), encoded (sae_encode), decoded, and
// brought back to x's scale. `features`, when given, receives f [T, F]. DataError if x holds NaN/Inf.
Tensor reconstruct(const SaeAtLayer& sae, const Tensor& x, Tensor* features = nullptr);

// W_dec[feature] / ||W_dec[feature]|| [D] on the SAE's device: the direction sae_steer adds.
// UsageError for a feature outside 0..F-1, DataError for a zero decoder row.
Tensor decoder_direction(const SaeAtLayer& sae, int64_t feature);

}  // namespace sae
