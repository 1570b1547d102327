// apply_dictionary: a trained dictionary (SAE, transcoder or crosscoder) run on activations as
// sae_apply runs it (docs/contract.md §5): its inputs normalised as in training, encoded and decoded
// story by story (per-story normalisation) or in blocks of rows, the reconstruction brought back to
// the scale of what it reconstructs (a transcoder's: its target's).
#pragma once
#include <functional>
#include <string>

#include "sae/arch/registry.h"
#include "sae/data/activations.h"
#include "sae/data/batches.h"

namespace sae {

// Where the outputs go, a block of rows at a time in order (host float32, `rows` x its width): the
// features [N, d_sae] and the reconstruction [N, d_out] (d_in for an SAE or crosscoder); an empty
// function is an output not asked for. Only one block is held at a time.
struct DictionaryOutputs {
  std::function<void(const float* rows_of_features, int64_t rows)> features;
  std::function<void(const float* rows_of_reconstruction, int64_t rows)> reconstruction;
};

// `normalization` is the trained one (trained_normalization), or none for inputs given as they are.
// DataError naming `sae_dir` for columns other than the dictionary's d_in, a story normalisation of
// a transcoder or crosscoder, a dataset scale count other than the data's column blocks (plus the
// target's), an output that is not finite (before that block is handed over: a caller that writes
// files commits them only after the call returns); UsageError for a per-story normalisation on
// data without story boundaries.
void apply_dictionary(const SaeParams& dictionary, const InputNormalization& normalization, ActivationSource& input,
                      const DictionaryOutputs& outputs, Device device, const std::string& sae_dir);

}  // namespace sae
