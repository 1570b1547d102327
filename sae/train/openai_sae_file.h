// OpenAI's sparse_autoencoder SAEs (docs/contract.md §4): a .pt, torch.save of its Autoencoder's
// state dict (read by io/torch_pickle.h, never by Python): pre_bias [D], latent_bias [F],
// encoder.weight [F, D], decoder.weight [D, F] (a tied one: decoder.linear.weight, the encoder's),
// the statistics buffers stats_last_nonzero, latents_activation_frequency, latents_mean_square
// (not read), and the activation by name: "activation" ("ReLU" when absent, or "TopK" with
// activation_state_dict.k and .postact_fn "ReLU").
//
//   latents = activation(encoder(x - pre_bias) + latent_bias), x_hat = decoder(latents) + pre_bias
//
// ReLU is the standard unit, TopK the topk unit (the k largest pre-activations, rectified), both with
// the input centred by pre_bias. As its Autoencoder.from_state_dict decides, a TopK one normalises
// each token: x -> (x - mu) / (sigma + 1e-5) in, x_hat * sigma + mu out (layer_norm, sae/data/batches.h).
// The file does not say where it reads: --hook (or --layer) says.
#pragma once
#include <string>

#include "io/torch_pickle.h"
#include "sae/train/checkpoint.h"

namespace sae {

// Whether a torch.save file holds OpenAI's state dict (its pre_bias and latent_bias).
bool is_openai_sae(const TorchFile& file);

// The file as an SAE with a SAELens-style cfg made for it (architecture, d_in, d_sae, k,
// normalize_activations layer_norm for TopK, else none; no hook). DataError naming the file for an
// activation not read (Identity, or a TopK whose postact_fn is not ReLU), a tensor missing,
// unexpected or of the wrong shape, a k outside 1..F.
Checkpoint load_openai_sae(const TorchFile& file, Device device);

}  // namespace sae
