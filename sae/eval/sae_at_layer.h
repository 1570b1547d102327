// An SAE as it sits inside the language model (docs/contract.md §6): its parameters (any
// architecture our trainer writes, or a standard SAELens folder), the hook point it reads
// (lm/hook_points.h: a SAELens hook_name, or a hidden_states index),
// and the normalisation its run trained it with, so that a reconstruction spliced into the model is
// brought back to the raw scale of the residual stream. Also the steering direction of a feature.
// A crosscoder (docs/architectures.md §2.13) is its sources: the hooks it reads side by side, of the
// model or of a second model (model diffing), each with its dataset scale.
// Letters: T tokens, D the model's width (= the SAE's d_in), F the SAE's features, S a crosscoder's
// sources, d the width of one source.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "io/json.h"
#include "lm/decoder_model.h"
#include "lm/text_windows.h"
#include "sae/data/batches.h"
#include "sae/params.h"

namespace sae {

// One read of a crosscoder: a hook of the model (0) or of the second model (1), where it is spliced
// back too.
struct CrosscoderSource {
  std::string read;   // as cfg.json metadata.crosscoder_hooks names it ("model_b:" before a second model's)
  int model = 0;
  HookSite site;      // resolved against its model
  double scale = 1.0; // its dataset scale (1 without --normalize dataset)
};

struct SaeAtLayer {
  std::string dir;
  SaeParams params;
  Json cfg;
  HookSite site;              // where it is spliced in (resolved against the model): where an SAE reads,
                              // a transcoder's output hook (cfg.json metadata.hook_name_out)
  HookSite input_site;        // where it reads: `site` for an SAE, a transcoder's input hook
  int layer = -1;             // the hidden_states index of `site`, or -1 when it is not one
  std::string layer_source;   // where `site` came from, for the report
  Normalization normalization = Normalization::None;
  double dataset_scale = 1.0;  // of its input
  double output_scale = 1.0;   // of what it reconstructs: dataset_scale, a transcoder's target's
  int prepend_bos = -1;       // cfg.json metadata.prepend_bos: 1 true, 0 false, -1 not said
  bool kept_bos = false;      // trained on its BOS rows too (sae_cpp.data.bos_activations "keep")
  int64_t context_size = 0;   // cfg.json metadata.context_size (0: not said)
  std::vector<CrosscoderSource> sources;  // a crosscoder's S reads in order (empty for an SAE, a transcoder)
  bool crosscoder() const { return !sources.empty(); }
  bool reads_model_b() const;             // a crosscoder with a source of the second model
};

// Where it is spliced in, for reports: its hook name, with " = hidden_states[L]" where that says
// more (not for hidden_states[N] itself, the final norm's output).
std::string spliced_site_text(const SaeAtLayer& sae);

// cfg.json's metadata.prepend_bos (1 true, 0 false, -1 not said) and metadata.context_size (0: not
// said) of the SAE folder `dir`. A value of another type or out of range is a DataError naming
// DIR/cfg.json, not read as unsaid.
struct WindowMetadata {
  int prepend_bos = -1;
  int64_t context_size = 0;
};
WindowMetadata window_metadata(const Json& cfg, const std::string& dir);

// The BOS a run with this SAE puts before each window: --prepend-bos on / off as given; auto: what
// the SAE was trained with (metadata.prepend_bos) when its cfg.json says, else what the tokenizer does.
int32_t bos_for_sae(BosMode mode, const SaeAtLayer& sae, const BpeTokenizer& tokenizer);
int32_t bos_for_sae(BosMode mode, int prepend_bos, const BpeTokenizer& tokenizer);  // prepend_bos as SaeAtLayer's

// The hook point an SAE folder's cfg.json names (metadata.hook_name, a top-level hook_name, or
// sae_cpp.data.layer as hidden_states[layer]), with where it said it; false when it names none.
// UsageError for a hook_name we do not read; DataError for a hook_name that is not a string or a
// hook_head_index (an SAE of one head: no program reads a slice of a hook).
bool hook_site_from_cfg(const Json& cfg, HookSite& site, std::string& source);
// DataError when cfg.json says hook_head_index (metadata's or top-level, not null): every program
// that reads the SAE's hook refuses an SAE of one head.
void refuse_one_head(const Json& cfg);

// The UsageError text for an SAE that names no hook point: give --hook or --layer (for a Gemma
// Scope params.npz, `npz`, with Gemma Scope's hook naming; a `transcoder`, which --hook cannot place,
// is said to be for sae_apply only).
std::string no_hook_point_message(const std::string& dir, bool npz, bool transcoder = false);

// Loads DIR (sae/train/checkpoint.h load_checkpoint; a Gemma Scope params.npz too) onto `device` and fits it to the model. A
// transcoder reads and replaces the hooks its cfg.json names (metadata.hook_name, before
// metadata.hook_name_out; --hook/--layer refused). A crosscoder reads and replaces the hooks of
// metadata.crosscoder_hooks (one per source, each d = d_in / S wide; "model_b:" ones of `model_b`,
// which must then be given, and is refused otherwise: UsageError; --hook/--layer refused);
// sae_cpp.normalization story is refused, dataset needs one scale per source. Otherwise the
// hook point: `choice` when given, else cfg.json's metadata.hook_name (SAELens's, and ours), else a
// top-level hook_name, else sae_cpp.data.layer (runs from before --hook); none of these is a
// UsageError asking for --hook or --layer. The normalisation: cfg.json's sae_cpp.normalization and
// dataset_scale (a folder from elsewhere: its per-token normalize_activations, or none). DataError, one line naming the folder, for: d_in
// != the width at the hook point, a hook point the model does not have, a SAELens
// normalize_activations not read (load_checkpoint; layer_norm and constant_norm_rescale are, per
// token, for an SAE but not a transcoder or crosscoder), reshape_activations other than "none"
// ("hook_z" for an attn.hook_z SAE), a hook_head_index.
SaeAtLayer load_sae_at_layer(const std::string& dir, const DecoderConfig& model, const HookChoice& choice,
                             Device device, const DecoderConfig* model_b = nullptr);
// UsageError for --hook / --layer with a crosscoder or a transcoder: its cfg.json names its hooks.
void refuse_hook_choice(const SaeParams& params, const HookChoice& choice);

// Whether DIR's cfg.json says it is a crosscoder (architecture "crosscoder"); false when it cannot
// be read (load_sae_at_layer then says why). For programs that take SAEs and transcoders only.
bool is_crosscoder_folder(const std::string& dir);

// The SAE's reconstruction of raw activations x [T, D] (one story or piece, on the SAE's device):
// normalised as in training (story: this x's own mean and std; per token: each row's own), encoded
// (sae_encode), decoded, and brought back to x's scale (a transcoder: its prediction of the target
// [T, D_out], the skip path included, in the target's scale). Encoded and decoded a block of rows
// at a time (block_rows; 0: encode_block_rows, sae/arch/registry.h), so that f [T, F] is never made
// whole (at 2^20 latents a 512-token window's would be 2 GB an array); `features`, when given,
// receives each block's f [rows, F] with the index of its first row. DataError if x holds NaN/Inf.
// Not for a crosscoder (Error): reconstruct_sources.
using FeatureBlock = std::function<void(int64_t first_row, const Tensor& f)>;
Tensor reconstruct(const SaeAtLayer& sae, const Tensor& x, const FeatureBlock& features = {}, int64_t block_rows = 0);

// A crosscoder's reconstruction of its sources: raw x_s [T, d] for s = 1..S (the same T tokens, on
// the SAE's device), each scaled by its dataset scale, put side by side, encoded once
// (f = encode([s_1 x_1 | ... | s_S x_S])), decoded, and each source's block brought back:
// x_hat_s = x_hat[:, (s-1)d : s d] / s_s. Encoded and decoded in blocks of rows as reconstruct,
// `features` receiving each block's f. DataError if an x_s holds NaN/Inf; Error for a wrong count or
// shape.
std::vector<Tensor> reconstruct_sources(const SaeAtLayer& sae, const std::vector<Tensor>& x,
                                        const FeatureBlock& features = {}, int64_t block_rows = 0);

// W_dec[feature] / ||W_dec[feature]|| [D_out] on the SAE's device: the direction sae_steer adds (at
// `site`).
// UsageError for a feature outside 0..F-1 and for a crosscoder (its rows span its sources: steering
// at each of its hooks is not done), DataError for a zero decoder row.
Tensor decoder_direction(const SaeAtLayer& sae, int64_t feature);
// ||W_dec[feature]|| in double (a float32 sum of squares overflows for weights above ~1e19), after
// the same UsageError for a feature outside 0..F-1.
double decoder_row_norm(const SaeAtLayer& sae, int64_t feature);

}  // namespace sae
