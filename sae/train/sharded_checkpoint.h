// Checkpoints of a distributed run (docs/distributed.md §4): the folder save_checkpoint writes, made
// by the ranks that hold the latent shards, so that the whole SAE is never gathered on one rank:
//   sae_weights.safetensors   the whole SAE (SAELens reads it as any other): rank 0 lays the file out
//                             (header, size); each shard's owner (replica 0 of the shard) writes its
//                             slices into it (W_enc's columns, W_dec's rows, its [F] entries)
//   cfg.json                  rank 0, as one process writes it (d_sae the whole F)
//   training_state.safetensors  rank 0: the metadata (step, tokens, data position, ...) with
//                             "shards": S, "latents": F, and no tensors
//   training_state.shard_<s>.safetensors  shard s's owner: the optimizer shard (Adam's moments of its
//                             slice; b_dec's and W_skip's in every shard), its dead-feature clocks
//                             and its unit state
// The save is atomic as save_checkpoint's (a temporary folder of rank 0's pid, put in place by rank
// 0 once every owner has written and synced), so a rank killed mid-save leaves the previous complete
// checkpoint. load_checkpoint assembles the whole state from the shard files (load_sharded_state),
// so a checkpoint of S shards resumes with any number of ranks, each keeping its own slice.
#pragma once
#include <string>

#include "io/json.h"
#include "sae/arch/collectives.h"
#include "sae/params.h"
#include "sae/train/checkpoint.h"

namespace sae {

// Every rank calls it. shard_params: this rank's latents [first_latent, first_latent + F/S) of an SAE
// of `latents`; state: this shard's Adam moments and clocks, the rest as one process's.
void save_sharded_checkpoint(Collectives& c, const std::string& dir, const SaeParams& shard_params,
                             int64_t first_latent, int64_t latents, const Json& extra, const TrainingState& state);

// Whether a training state's metadata says its moments are in shard files (a distributed run's,
// also with one shard and several replicas), and how many (1 otherwise).
bool sharded_state(const Json& info);
int64_t state_shards(const Json& info);
// Whether every shard file of a sharded state is there and readable.
bool shard_files_complete(const std::string& dir, const Json& info);
// The whole SAE's Adam moments, clocks and unit state from the shard files of `dir` into st and
// params (whose tensors are the whole SAE's, on the CPU). DataError naming the file. A centred run's
// (--apply-b-dec-to-input) trained vectors go to st.centred_params, and params stay the SAE of x
// (b_dec W_enc folded into the encoder's biases), as load_checkpoint's are for one process.
void load_sharded_state(const std::string& dir, const Json& info, SaeParams& params, TrainingState& st, Device device,
                        bool centred = false);

}  // namespace sae
