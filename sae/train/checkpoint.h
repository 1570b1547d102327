// Checkpoints in SAELens's on-disk layout (docs/contract.md §4), plus our training state beside it:
//   DIR/sae_weights.safetensors   W_enc [D, F], W_dec [F, D], b_enc [F], b_dec [D], float32
//   DIR/cfg.json                  SAELens keys (architecture "standard", d_in, d_sae, ...) + ours
//   DIR/training_state.safetensors  Adam moments, dead-feature clocks and, in its metadata, the
//                                 step, tokens seen, data position and normalisation scale
// A directory is written as DIR.tmp-<pid>, synced, and exchanged with the old DIR in one atomic
// rename (renameat2 RENAME_EXCHANGE; where a file system lacks it, the old one is moved aside to
// DIR.old-<pid> first). A run killed at any moment leaves a complete DIR, or, in the second case, two
// complete copies under the temporary names, which recover_interrupted_saves() puts back.
// Loading also reads SAELens's folders (6.x, and older cfg.json spellings as SAELens reads them) and
// Gemma Scope's params.npz; other_model_warnings compares a folder's recorded model with another.
#pragma once
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "io/json.h"
#include "sae/data/batches.h"
#include "sae/params.h"

namespace sae {

struct TrainingState {
  int64_t step = 0;           // optimizer updates done
  int64_t tokens = 0;         // tokens seen
  DatasetScales dataset_scale;  // per activation read (one for an SAE)
  Json batcher;               // Batcher::state()
  std::vector<int64_t> last_fired;  // DeadFeatureTracker clocks [F]
  SaeAdamState adam;                // moments and steps taken (betas and eps come from the run's config)
  Json l0_controller;               // --target-l0 runs: L0Controller::state(); null otherwise
  // A run trained with --apply-b-dec-to-input: its vectors as trained (b_enc, b_dec, the unit's own),
  // for a resume; the Checkpoint's params are the SAE of x (the centring folded into its biases).
  std::vector<std::pair<std::string, Tensor>> centred_params;
};

// cfg.json for a model: SAELens's keys plus `extra` (our run description) under "sae_cpp".
Json saelens_config(const SaeParams& params, const Json& extra);

// A dataset-normalised dictionary's folder holds the SAE of raw activations, as SAELens's do: the
// scales of `extra` (sae_cpp: normalization "dataset", dataset_scale) folded into the weights
// (fold_input_scales; cfg.json says "dataset_scale_folded": true), while the training state keeps
// the trained tensors exactly (param.<name>) for a resume. A per-story one is marked
// normalize_activations "per_story", which SAELens refuses (it has no such normalisation). The
// tensors of sae_weights.safetensors for `params` (a whole SAE or a latent shard):
std::vector<std::pair<std::string, Tensor>> folder_weights(const SaeParams& params, const Json& extra);
// How a save writes that file (without a copy of W_enc and W_dec where it can): `tensors` as the
// unit exports them, except that the two named in scaled_while_written (W_enc's row factors, W_dec's
// column factors; present when folded and held as host float32) are the trained ones, scaled a
// block of rows at a time as they are written. Otherwise `tensors` is folder_weights' list.
struct FolderWeightsPlan {
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> scaled_while_written;
};
FolderWeightsPlan plan_folder_weights(const SaeParams& params, const Json& extra);
// The trained tensors a folded folder's training state keeps (param.<name>, host float32), added
// to `tensors`; nothing when the folder is not folded.
void add_exact_params(const SaeParams& params, const Json& extra, std::vector<std::pair<std::string, Tensor>>& tensors);

// Writes DIR (see the top of this file); the parameters may live on any device. write_more (when set)
// writes further files into the folder being built (its path is given), before it is swapped in. The
// training state file is written last, after write_more: a folder that holds it holds everything.
void save_checkpoint(const std::string& dir, const SaeParams& params, const Json& extra, const TrainingState* state,
                     const std::function<void(const std::string& folder)>& write_more = {});

struct Checkpoint {
  SaeParams params;
  Json cfg;
  std::optional<TrainingState> state;  // when the directory has training_state.safetensors
  std::string npz;  // a Gemma Scope params.npz: its path (cfg made for it, no hook point); else ""
};
// Loads an SAE onto `device`: a SAELens-format folder (sae_weights.safetensors + cfg.json; ours of
// any architecture, or SAELens's), and its training state when with_state (a program that only
// applies the SAE does not need it, nor fail on it); or Gemma Scope's release format (docs/contract.md
// §4), a params.npz (W_enc, W_dec, b_enc, b_dec, threshold) given as the file or as a folder that
// holds it and no cfg.json, read as a JumpReLU SAE with a cfg made for it (architecture jumprelu,
// d_in, d_sae, no normalisation, no hook point, no training state); or a torch.save .pt of
// dictionary_learning (dictionary_learning_file.h) or OpenAI (openai_sae_file.h). DataError naming the file for a
// missing/corrupt file, another architecture, shapes that disagree with cfg, non-finite weights, or
// a state out of range.
Checkpoint load_checkpoint(const std::string& dir, Device device, bool with_state = true);
// Where a Gemma Scope params.npz is when `path` is one (the file, or a folder that holds it and no
// cfg.json); "" otherwise.
std::string gemma_scope_npz(const std::string& path);
// An SAE saved by another tool as one file, when `path` is one: a Gemma Scope params.npz
// (gemma_scope_npz) or a torch.save .pt, dictionary_learning's or OpenAI's (the file given as such,
// or a folder that holds ae.pt and no cfg.json); "" otherwise. single_file_sae_name says which, for messages.
std::string single_file_sae(const std::string& path);
std::string single_file_sae_name(const std::string& path);

// The newest resumable checkpoint under a run directory (checkpoints/step_N or sae/, by step), or
// `dir` itself when it is a checkpoint. DataError when there is none.
std::string find_latest_checkpoint(const std::string& dir);
// The newest complete checkpoint of a run directory (sae/ or checkpoints/step_N); none when the run
// has not written one yet.
std::optional<std::string> latest_checkpoint_in_run(const std::string& run_dir);
// Every complete checkpoint of a run directory (sae/ and checkpoints/step_N) with its step, by step.
std::vector<std::pair<int64_t, std::string>> run_checkpoints(const std::string& run_dir);

// The pieces a distributed run's save (sharded_checkpoint.h) shares with save_checkpoint: the
// temporary folder a save of DIR builds (DIR.tmp-<pid>), putting a complete one in place as
// save_checkpoint does, and the training state's metadata and tensors (Adam's moments, the
// dead-feature clocks, the unit's state) for parameters `params` (a whole SAE or a latent shard).
// A saved Adam moment must be finite (and the second, v, >= 0): DataError naming `where` and `name`
// otherwise (a corrupt state would make the resumed run diverge at once).
void check_adam_moment(const Tensor& moment, bool second, const std::string& where, const std::string& name);
std::string checkpoint_temp_folder(const std::string& dir);
// A weight that is not finite is never saved: DataError naming DIR, the tensor and the element.
// The tensors are moved to the host in place (they are written from there).
void require_finite_weights(std::vector<std::pair<std::string, Tensor>>& weights, const std::string& dir);
// Test hook (tests/sae/train/): SAE_TEST_KILL_AT=<point> kills the process with SIGKILL at that
// point of a save or a folder change, as a crash would.
void test_kill_point(const char* point);
void install_checkpoint_folder(const std::string& temp, const std::string& dir);
Json training_state_info(const SaeParams& params, const TrainingState& state,
                         std::vector<std::pair<std::string, Tensor>>& tensors);

// After a crash inside save_checkpoint: for every checkpoint of the run (sae/, checkpoints/step_N/)
// that is missing while a complete copy of it sits under a temporary name, renames the newest such
// copy into place. Returns the folders recovered.
std::vector<std::string> recover_interrupted_saves(const std::string& run_dir);
// Removes what interrupted saves left under temporary names (DIR.tmp-<pid>, DIR.old-<pid>). Only
// for a run folder this process holds the lock of, after recover_interrupted_saves.
void remove_interrupted_saves(const std::string& run_dir);

// A warning to print for each of model_dir and model_b_dir ("": none given) whose weights are not
// those the SAE was trained on (its cfg.json sae_cpp.data.model_fingerprint, model_b_fingerprint);
// none for a folder that records no fingerprint (from elsewhere, a run from activation files).
// Widths alone do not tell two models apart, and every number would be the other model's.
std::vector<std::string> other_model_warnings(const Json& cfg, const std::string& model_dir,
                                              const std::string& model_b_dir = "");

}  // namespace sae
