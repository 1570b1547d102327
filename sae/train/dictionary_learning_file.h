// dictionary_learning's SAEs (docs/contract.md §4): ae.pt, torch.save of the dictionary's
// state_dict (read by io/torch_pickle.h, never by Python), with the trainer's config.json beside it
// (its "trainer" entry: dict_class, k, submodule_name, ...), as its training loop saves them:
// SAVE_DIR/ae.pt at the end, SAVE_DIR/checkpoints/ae_STEP.pt on the way (config.json in SAVE_DIR).
// Both take raw activations (the loop scales the biases back by norm_factor before saving).
//
// Each dict_class is read as the unit that computes the same encode and decode:
//   AutoEncoder            relu(encoder(x - bias)), decoder(f) + bias      standard, input centred
//   AutoEncoderNew         relu(encoder(x)), decoder(f) (decoder's bias)   standard
//   AutoEncoderTopK        the k largest relu(encoder(x - b_dec))          topk, input centred
//   BatchTopKSAE           relu(P) where relu(P) > threshold               batchtopk (threshold max(t, 0))
//   MatryoshkaBatchTopKSAE as BatchTopKSAE, W_enc [D, F], group_sizes      matryoshka_batchtopk
//   JumpReluAutoEncoder    relu(P * (P > threshold)), P = x W_enc + b_enc  jumprelu
//   GatedAutoEncoder       gate and magnitude of encoder(x - decoder_bias) gated, input centred
// where P is the encoder's pre-activation and the weights are transposed to SAELens's layout.
#pragma once
#include <string>

#include "io/torch_pickle.h"
#include "sae/train/checkpoint.h"

namespace sae {

// Whether `path` names a torch.save file: ends in .pt or .pth, or (not in .npz) is a ZIP archive
// with a PREFIX/data.pkl record.
bool is_torch_file(const std::string& path);

// Whether `dir` is a dictionary_learning save dir: its config.json holds a "trainer" object with a
// dict_class (our runs' config.json does not). Said of a folder without ae.pt (a run still training,
// or killed) so that it is not taken for one of our runs.
bool is_dictionary_learning_save_dir(const std::string& dir);
// The one line for a save dir given where an SAE is wanted: its SAEs are ae.pt and checkpoints/ae_STEP.pt.
std::string dictionary_learning_save_dir_message(const std::string& dir);

// The file as an SAE with a SAELens-style cfg made for it: the unit above, d_in, d_sae, no
// normalisation, the original config under "dictionary_learning", and for a submodule_name of
// dictionary_learning's form resid_post_layer_N (mlp_out_layer_N, attn_out_layer_N)
// metadata.hook_name blocks.N.hook_resid_post (hook_mlp_out, hook_attn_out). The dict_class is
// config.json's, or without one told by the tensors' names (AutoEncoderTopK and BatchTopKSAE, which
// share them, need config.json). DataError naming the file for another class, a training backup of
// a run that normalised its activations, a tensor missing, unexpected or of the wrong shape.
Checkpoint load_dictionary_learning(const TorchFile& file, Device device);

}  // namespace sae
