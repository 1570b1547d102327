// ArchUnit: one SAE architecture, everything about it behind one interface (docs/architectures.md
// "Adding an architecture" is the recipe). A unit states its option rows and their checks, its
// parameters and their initialisation, the forward and backward of its training step (a UnitStep over
// the shared kernel families of sae/step and its own kernels beside it), its plain autograd reference
// loss, its inference rule, its SAELens export and import, and what it reports. The registry
// (registry.h) lists the units; the trainer, checkpoints, sae_apply, sae_eval, feature statistics and
// the studies ask the unit and never branch on the kind.
// Letters: N tokens, D input width (d_in), F latents (d_sae); P = x W_enc + b_enc the pre-activation.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "io/json.h"
#include "io/named_tensor_file.h"
#include "io/safetensors.h"
#include "sae/arch/collectives.h"
#include "sae/arch/reference.h"
#include "sae/arch/settings.h"
#include "sae/params.h"
#include "sae/step/sae_kernels.h"

namespace sae {

// The sums of one step's loss (for the caller's metrics and the divergence check).
struct StepSums {
  double rec = 0;      // sum of squared reconstruction error
  double l1 = 0;       // the sparsity term lambda multiplies (the unit's: the decoder-norm-weighted L1,
                       // JumpReLU's L0 or tanh sum, 0 for units whose sparsity is set by k)
  double aux = 0;      // auxiliary terms as they enter the loss (AuxK, gated's, JumpReLU's pre-activation)
  double loss = 0;     // rec + lambda * l1 + aux
  double active = 0;   // number of (token, latent) pairs with f > 0
  int64_t tokens = 0;  // N
  bool sparse = false; // this step took the sparse path
  bool pending = false;  // the loss terms above are still on the step's device (SaeStep::read_sums)
};
bool finite(const StepSums& s);

// The dtype a step keeps its [N, F] activations in (the standard step's pre-activations, f and
// dLoss/df; the TopK family's pre-activations x W_enc) for an SAE of `dtype`: bfloat16 for a float32
// SAE at --precision bf16, else `dtype`. The GEMMs write them rounded once from their float32 sums
// and read them as stored; the kernels widen each value and compute in float32. Half the memory and
// the reads of a step's largest tensors. Read at each batch: the precision is the process's
// (tensor/precision.h).
DType activation_dtype(DType dtype);
// A step's buffer t in `dtype`: t itself, or (after a change of precision) a new buffer of its shape
// and device, written before read, the old one freed first.
void keep_dtype(Tensor& t, DType dtype);

// The latents of a step's batch as the step holds them, for statistics (sae/train/feature_stats.h):
// on the sparse path the by-feature entry lists (entries of rows >= tokens are auxiliary, not
// latents), otherwise f [N, F]. Views of the step's buffers, valid until its next call.
struct StepFeatures {
  int64_t tokens = 0;
  bool sparse = false;
  Tensor dense;          // f [N, F], when !sparse
  SparseFeatures lists;  // when sparse
};

// Adam fused into a unit's backward kernels (the sparse path updates W_enc, b_enc and W_dec row by
// row as their gradients are known).
struct FusedAdam {
  SaeAdamState* adam = nullptr;
  AdamScalars scalars;
};

// How a parameter's gradient leaves a shared sparse backward kernel: written into `grad`, or, with
// `fused`, as one Adam step on the parameter with its moments `m` and `v` (the gradient is never stored).
ParamUpdate param_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                         const FusedAdam* fused);

// The sizes a step is made for: up to max_tokens tokens of width d_in in, d_out out (d_in for an
// SAE or a crosscoder, the target's width for a transcoder), d_sae latents. A latent shard of a
// distributed run (collectives.h) holds latents [first_latent, first_latent + d_sae) of an SAE of
// all_latents (0: d_sae, the whole SAE); a replica holds up to max_tokens of a batch of up to
// all_tokens (0: max_tokens).
struct StepShape {
  int64_t max_tokens = 0, d_in = 0, d_out = 0, d_sae = 0;
  int64_t first_latent = 0, all_latents = 0, all_tokens = 0;
  int64_t total_latents() const { return all_latents > 0 ? all_latents : d_sae; }
};

// One training step of a unit with its buffers (allocated once, for up to max_tokens tokens).
class UnitStep {
 public:
  virtual ~UnitStep() = default;
  // The loss terms of x [N, D_in] reconstructing `target` [N, D_out] (x itself for an SAE) into the
  // step's buffers (params checked by SaeStep). `train`: this is a training step, so the unit's
  // clocks (AuxK's) move; undo_forward() puts them back.
  virtual StepSums forward(const SaeParams& params, const Tensor& x, const Tensor& target, double lambda,
                           bool train) = 0;
  virtual void undo_forward() {}
  // After forward: the gradient of every parameter into `grads` (as Adam sees it: projected for a
  // unit-norm decoder). With `fused`, the unit may apply Adam to some parameters inside its kernels
  // instead; it returns their names (SaeStep applies Adam to the others from `grads`).
  virtual std::vector<std::string> backward(const SaeParams& params, const Tensor& x, double lambda,
                                            SaeParams& grads, const FusedAdam* fused) = 0;
  // The parameters backward() always updates itself when given FusedAdam (returning their names):
  // SaeStep::train_step keeps no gradient buffer for them (at 2^20 latents W_enc's and W_dec's would
  // be tens of GB). Empty when some steps may need every gradient (a dense step).
  virtual std::vector<std::string> always_fused() const { return {}; }
  // After Adam has updated every parameter (a unit-norm decoder is renormalised here; BatchTopK
  // moves its inference threshold).
  virtual void after_update(SaeParams& params) {}
  // The last forward's results.
  virtual Tensor features() const = 0;            // f [N, F] (may be made from entry lists)
  virtual Tensor reconstruction() const = 0;      // x_hat [N, D_out]
  // After backward: dL/dx_hat [N, D_out] as a term added to every reconstruction would receive it
  // (2 (x_hat - target); summed over a Matryoshka's prefixes): a skip transcoder's W_skip gets x^T of it.
  virtual Tensor output_gradient() const = 0;
  virtual const Tensor& feature_counts() const = 0;  // tokens each latent fired on [F]
  virtual StepFeatures step_features() const = 0;
  // Tokens since each latent last fired, for units that keep such a clock (AuxK; on the step's
  // device, read back here); nullopt otherwise. set_dead_clock sets it (a resumed run), or does
  // nothing without one.
  virtual std::optional<std::vector<int64_t>> dead_clock() const { return std::nullopt; }
  virtual void set_dead_clock(const std::vector<int64_t>&) {}

  // Several ranks (docs/distributed.md): the step calls these collectives at its defined points (the
  // partial decode's all-reduce, the loss sums, the global selections, AuxK's dead counts and
  // residual statistics), so that its sums, reconstruction and gradients are those of the whole
  // SAE on the whole batch. Null (one process) by default; SaeStep sets it before the first step.
  void set_collectives(Collectives* c) { collectives_ = c; }
  Collectives* collectives() const { return collectives_; }

  // Loss sums left on the device (SaeStep::set_sums_on_device): a unit that can, and is asked to,
  // returns pending sums from forward (tokens and sparse set, no loss terms) and reads them back in
  // read_sums(). Never with collectives (their sums are completed over the ranks in the forward).
  void set_sums_on_device(bool keep) { sums_on_device_ = keep; }
  virtual StepSums read_sums() { throw Error("this step's loss sums were read in its forward"); }

 protected:
  bool keeps_sums_on_device() const { return sums_on_device_ && !collectives_; }
  // The end of a forward that keeps its sums [k] on the device: pending sums (tokens, sparse). A
  // non-finite sum also marks a flag on the device (0 * sum is NaN exactly there), so that a loss
  // that overflowed for one batch is seen at the next read even if every later one is finite.
  StepSums pending_sums(const Tensor& sums, int64_t tokens, bool sparse);
  // For read_sums(): the loss with that flag (NaN when a forward since the last read had a
  // non-finite sum); clears the flag.
  double loss_since_read(double loss);
  Collectives* collectives_ = nullptr;

 private:
  bool sums_on_device_ = false;
  Tensor nonfinite_, scratch_;  // [k]: sums of 0 * the pending sums since the last read
};

// What a fresh dictionary is shaped for: an SAE (d_out = d_in), a transcoder (x reconstructs a target
// of width d_out; with `skip`, W_skip [D_in, D_out] starts at zero) or a crosscoder over `sources`
// activations concatenated (d_in = d_out = sources * the width of one).
struct DictionaryShape {
  int64_t d_in = 0, d_out = 0, d_sae = 0, sources = 1;
  bool transcoder = false, skip = false;
  static DictionaryShape sae(int64_t d, int64_t d_sae) { return {d, d, d_sae}; }
};

// How a fresh dictionary starts (docs/architectures.md §2.7-2.8): the standard init (PyTorch
// nn.Linear's) or the tied one (decoder rows N(0, I) scaled to norm 1, W_enc = W_dec^T, biases 0),
// rows at unit norm, b_dec zero or at the geometric median of a sample of the data.
enum class BDecInit { Keep, Zero, GeometricMedian };  // Keep: what the init drew
struct DictionaryInit {
  bool tied = false;
  bool unit_norm_decoder = false;
  BDecInit b_dec = BDecInit::Keep;
};

class ArchUnit {
 public:
  virtual ~ArchUnit() = default;
  virtual std::string name() const = 0;         // --architecture's word and cfg.json's sae_cpp name
  virtual std::string description() const = 0;  // one line: the formula and where it comes from

  // ---- options ----
  // The rows this unit defines (a family's shared rows may be listed by several units: the same row).
  virtual std::vector<ArchOption> option_rows() const { return {}; }
  // Every option it reads: its rows' names and common options (e.g. "dead-window"). Architecture
  // rows of other units, given with this one, are refused.
  virtual std::vector<std::string> reads() const = 0;
  // Ranges and combinations of its options (UsageError naming the option); d_sae = --features.
  virtual void validate(const ArchSettings& s, int64_t d_sae) const {}
  // Whether lambda (--l1) is its sparsity coefficient (then --l1-warmup-steps and --target-l0 apply,
  // and the L0 set point adjusts lambda); units whose sparsity is set otherwise (k) refuse them.
  virtual bool has_lambda() const { return true; }
  // Whether lambda 0 leaves it without the penalty that makes it sparse, so that a run without --l1
  // or --target-l0 is warned (jumprelu, gated: SAELens's coefficients default to 1; the standard
  // SAE's lambda 0 is the tutorial's reconstruction study).
  virtual bool needs_lambda() const { return false; }
  // For units without lambda: how their sparsity is set, for messages ("sets its L0 with --k").
  virtual std::string sparsity_note() const { return ""; }
  // Whether lambda prices each active latent (an L0-like penalty) rather than the activations' size
  // (an L1 penalty): the --target-l0 controller's scale of lambda (sae/train/l0_controller.h).
  virtual bool l0_like_penalty() const { return false; }

  // ---- parameters ----
  virtual bool has_b_enc() const { return true; }
  virtual std::vector<std::string> own_tensors() const { return {}; }  // each [F], after the dictionary
  virtual DictionaryInit dictionary_init(const ArchSettings& s) const = 0;
  // A fresh dictionary of `shape`: as dictionary_init says (sample: [n, D_out] float64 rows of the
  // target, read for the geometric median), then the unit's own tensors and settings. Draws from rng
  // exactly as SaeParams::standard_init when init.tied is false (for an SAE).
  SaeParams initial_params(const ArchSettings& s, const DictionaryShape& shape, Rng& rng,
                           const std::vector<double>& sample) const;
  SaeParams initial_params(const ArchSettings& s, int64_t d, int64_t d_sae, Rng& rng,
                           const std::vector<double>& sample) const {
    return initial_params(s, DictionaryShape::sae(d, d_sae), rng, sample);
  }
  // The unit's own tensors and inference settings on a fresh dictionary (which has b_enc).
  virtual void init_own(SaeParams& params, const ArchSettings& s) const {}
  // Shapes, kind and settings as this unit needs them: DataError naming the tensor or setting.
  void check(const SaeParams& params) const;
  virtual void check_settings(const SaeParams& params) const {}

  // ---- the training step ----
  virtual std::unique_ptr<UnitStep> make_step(const ArchSettings& s, const StepShape& shape, DType dtype,
                                              Device device) const = 0;
  // The rows of the [rows, F] pre-activations its step holds at once for batches of up to max_tokens,
  // as the memory check counts them (sae/train/memory_check.h), and whether "encoder-chunk" in its
  // settings sets them: whether it reads that option (then sae_train sets it, when the run leaves it
  // 0, to the rows that fit).
  virtual int64_t pre_activation_rows(const ArchSettings& s, int64_t max_tokens) const { return max_tokens; }
  bool chunks_encoder() const;
  // Whether the metrics carry an aux_loss column.
  virtual bool reports_aux() const { return true; }

  // ---- the plain reference (what gradchecks and the fused step are tested against) ----
  // x [N, D_in] reconstructing `target` [N, D_out]; dead: AuxK's dead mask (this batch's firings
  // counted), or null; frozen: stop-gradient values fixed from outside so finite differences see the
  // function autograd differentiates.
  virtual ReferenceLoss reference_loss(const ArchSettings& s, const ArchVariables& p, const Tensor& x,
                                       const Tensor& target, double lambda, const std::vector<uint8_t>* dead,
                                       const ArchFrozen* frozen) const = 0;
  // An SAE: x reconstructs itself.
  ReferenceLoss reference_loss(const ArchSettings& s, const ArchVariables& p, const Tensor& x, double lambda,
                               const std::vector<uint8_t>* dead, const ArchFrozen* frozen) const {
    return reference_loss(s, p, x, x, lambda, dead, frozen);
  }

  // ---- inference, as the exported folder means it (docs/architectures.md §3) ----
  virtual Tensor encode(const SaeParams& params, const Tensor& x) const = 0;  // f [N, F]

  // ---- SAELens export and import ----
  virtual std::string saelens_architecture() const { return name(); }
  // As a transcoder (with a skip path or not): SAELens's architecture name, "" where SAELens has no
  // such class (we then write "<unit>_transcoder" / "<unit>_skip_transcoder", which only we load).
  virtual std::string saelens_transcoder_architecture(bool skip) const { return ""; }
  // Whether the unit trains as a transcoder or a crosscoder (the option rules refuse the others).
  virtual bool trains_transcoders() const { return true; }
  virtual bool trains_crosscoders() const { return false; }
  // Option combinations a crosscoder of this unit refuses (UsageError naming the option).
  virtual void validate_crosscoder(const ArchSettings& s) const {}
  // Whether a SAELens folder of saelens_architecture() from elsewhere (no sae_cpp name) is this unit.
  virtual bool reads_foreign_folders() const { return true; }
  // The architecture name cfg.json gets for `params` (an SAE's, a transcoder's or "crosscoder").
  std::string folder_architecture(const SaeParams& params) const;
  // sae_weights.safetensors's tensors (float32, host; W_skip transposed, as SAELens stores it) and
  // cfg.json's architecture keys.
  virtual std::vector<std::pair<std::string, Tensor>> saelens_weights(const SaeParams& params) const;
  virtual void set_cfg_keys(const SaeParams& params, Json& cfg, Json& ours) const {}
  // Type checks of the cfg.json keys the unit reads (DataError, which the loader prefixes with the file).
  virtual void check_cfg(const Json& cfg) const {}
  // The parameters a folder holds (float32, host): the dictionary and own tensors by name, then
  // import_rest for what is not a plain tensor (own tensors stored otherwise, settings), the shape
  // check, apply_b_dec_to_input folded (fold_input_shift), and finish_import for folds of the unit's
  // own cfg keys. DataError naming `where`. `weights`: sae_weights.safetensors, or a params.npz
  // (Gemma Scope's release format) given with a cfg made for it (sae/train/checkpoint.h).
  SaeParams import_saelens(const NamedTensorFile& weights, const Json& cfg, const std::string& where) const;
  virtual void import_rest(const NamedTensorFile& weights, const Json& cfg, const std::string& where,
                           SaeParams& params) const {}
  virtual void finish_import(const Json& cfg, const std::string& where, SaeParams& params) const {}
  // SAELens's apply_b_dec_to_input: the encoder sees x - shift_source; folds shift = b_dec W_enc [F]
  // into the biases that see it, so the SAE takes x itself.
  virtual void fold_input_shift(SaeParams& params, const Tensor& shift) const;
  // Training with --apply-b-dec-to-input (the encoder sees x - b_dec): the loss's gradient by the
  // encoder's input summed over the tokens, [D], from the gradients of the biases beside W_enc:
  // W_enc g_b_enc (gated: W_enc (g_b_gate + exp(r_mag) g_b_mag)). b_dec's gradient gains minus it.
  virtual Tensor encoder_input_gradient(const SaeParams& params, const SaeParams& grads) const;
  // Puts each decoder row at norm 1 without changing what the SAE computes, where its activation
  // allows it (ReLU, JumpReLU, gated: latent i's pre-activations, bias and threshold times n_i,
  // W_dec[i] divided by n_i, so f_i is n_i times as large and x_hat the same); false where it does
  // not (a top-k selection ranks the pre-activations, which the fold changes). For --init into a
  // run that keeps decoder rows at norm 1. `norms` [F] are the rows' norms (> 0), params on the host.
  virtual bool fold_decoder_norms(SaeParams& params, const std::vector<double>& norms) const { return false; }
  // The training state beyond Adam's moments: tensors and metadata keys a resume needs exactly.
  virtual void save_state(const SaeParams& params, std::vector<std::pair<std::string, Tensor>>& tensors,
                          Json& info) const {}
  virtual void load_state(const SafetensorsFile& file, const Json& info, SaeParams& params) const {}
};

// The part of fold_decoder_norms every foldable unit shares: W_enc's columns and b_enc times n,
// W_dec's rows divided by n, and the unit's own [F] tensors named in `times` times n.
void fold_dictionary_norms(SaeParams& params, const std::vector<double>& norms, const std::vector<std::string>& times);
// b_dec W_enc [F]: what the encoder's pre-activations lose when it sees x - b_dec (SAELens's
// apply_b_dec_to_input), the shift ArchUnit::fold_input_shift folds into the biases.
Tensor input_shift(const SaeParams& params);

}  // namespace sae
