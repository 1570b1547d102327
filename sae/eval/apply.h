// apply_dictionary: a trained dictionary (SAE, transcoder or crosscoder) run on activations as
// sae_apply runs it (docs/contract.md §5): its inputs normalised as in training, encoded and decoded
// story by story (per-story normalisation) or in blocks of rows, the reconstruction brought back to
// the scale of what it reconstructs (a transcoder's: its target's).
#pragma once
#include <string>

#include "sae/arch/registry.h"
#include "sae/data/activations.h"
#include "sae/data/batches.h"

namespace sae {

struct AppliedDictionary {
  Tensor features;        // [N, d_sae] host float32, when asked for
  Tensor reconstruction;  // [N, d_out] host float32 (d_in for an SAE or crosscoder), when asked for
};

// `normalization` is the trained one (trained_normalization), or none for inputs given as they are.
// DataError naming `sae_dir` for columns other than the dictionary's d_in, a story normalisation of
// a transcoder or crosscoder, a dataset scale count other than the data's column blocks (plus the
// target's), an output that is not finite (nothing is returned then); UsageError for a per-story
// normalisation on data without story boundaries.
AppliedDictionary apply_dictionary(const SaeParams& dictionary, const InputNormalization& normalization,
                                   ActivationSource& input, bool features, bool reconstruction, Device device,
                                   const std::string& sae_dir);

}  // namespace sae
