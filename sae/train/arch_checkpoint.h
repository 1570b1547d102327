// Every architecture in SAELens's on-disk format (docs/architectures.md §3, checked with sae-lens
// 6.54.12), and what our training state keeps beside it so that --resume is exact:
//   standard  "standard"  W_enc, b_enc, W_dec, b_dec
//   topk      "topk"      the same four; cfg "k" (an int) and "rescale_acts_by_decoder_norm": false
//   batchtopk "jumprelu"  the four and threshold [F] = theta_BT (its inference rule is a JumpReLU's)
//   jumprelu  "jumprelu"  the four and threshold [F] = exp(log_threshold)
//   gated     "gated"     W_enc, W_dec, b_dec, b_gate, b_mag, r_mag (no b_enc)
// cfg.json's sae_cpp section names the architecture we trained ("training_architecture") and, for
// batchtopk, k and theta_BT in full precision. The training state stores log_threshold exactly
// (exp then log would not give it back) and theta_BT in its metadata. checkpoint.cpp calls these.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "io/json.h"
#include "io/safetensors.h"
#include "sae/params.h"

namespace sae {

// sae_weights.safetensors's tensors (float32 on the host), named and shaped as SAELens loads them.
std::vector<std::pair<std::string, Tensor>> saelens_weights(const SaeParams& params);
// Sets cfg.json's architecture-dependent keys (cfg holds saelens_config's common keys and sae_cpp).
void set_architecture_keys(Json& cfg, const SaeParams& params);
// The parameters a folder holds (float32, on the host), from cfg.json's architecture (default
// standard), with our training architecture from sae_cpp. SAELens folders of these architectures
// from elsewhere load too: apply_b_dec_to_input is folded into the encoder biases, a topk's
// rescale_acts_by_decoder_norm into the weights. DataError naming `where` for anything else.
SaeParams saelens_params(const SafetensorsFile& weights, const Json& cfg, const std::string& where);

// The training state's extras: tensors beside Adam's moments and keys of its metadata.
void add_training_state_extras(std::vector<std::pair<std::string, Tensor>>& tensors, Json& info,
                               const SaeParams& params);
void read_training_state_extras(const SafetensorsFile& file, const Json& info, SaeParams& params);

}  // namespace sae
