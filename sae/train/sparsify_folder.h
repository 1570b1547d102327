// EleutherAI sparsify's SAE folders (docs/contract.md §4): cfg.json (SparseCoderConfig and d_in) and
// sae.safetensors (encoder.weight [F, D], encoder.bias [F], W_dec [F, D_out], b_dec [D_out], W_skip
// [D_out, D] with skip_connection), one folder per hookpoint (named after it, as layers.6), as
// sparsify's save_to_disk writes them. Its encode is the k largest relu((x - b_dec) W_enc^T + b),
// the input not centred for a transcoder, and its decode f W_dec + b_dec (+ x W_skip^T): our TopK
// unit, read as SAELens's layout with apply_b_dec_to_input for an SAE.
#pragma once
#include <string>

#include "sae/train/checkpoint.h"

namespace sae {

// Whether `dir` is a folder with cfg.json and sae.safetensors but no sae_weights.safetensors.
bool is_sparsify_folder(const std::string& dir);

// The folder as a TopK SAE or transcoder with a SAELens-style cfg made for it: architecture topk,
// topk_transcoder or topk_skip_transcoder, k, d_in, d_sae, no normalisation, the original cfg under
// "sparsify", and for an SAE in a folder named as a block's output (layers.N, h.N, model.layers.N, ...)
// metadata.hook_name blocks.N.hook_resid_post. DataError naming the file for activation groupmax, a
// skip connection on an autoencoder, or anything missing or malformed.
Checkpoint load_sparsify_folder(const std::string& dir, Device device);

}  // namespace sae
