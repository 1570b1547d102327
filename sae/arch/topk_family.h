// What the units whose sparsity is set by k share (topk, batchtopk, matryoshka): their options (k,
// AuxK's), their dictionary defaults (unit-norm rows, tied init, b_dec at the geometric median),
// their sparse training step and the reference's AuxK term (docs/architectures.md §2.1-2.2, §2.5).
//
// The step takes the sparse path from the first step: after the encoder GEMM (dense) the unit's
// selection writes the kept latents straight into by-token entry lists, the decoder product and
// every gradient come from those entries only (sparse_decode, sparse_decoder_backward,
// sparse_encoder_backward), and Adam is fused into the backward. AuxK adds a second block of rows to
// the lists: the dead latents' activations a of token t are entries of row N + t, whose "output
// gradient" row is dL/de_hat and whose input row is x_t again, so one backward pass serves both
// terms (the two sets of latents are disjoint: a dead latent fired on no token of the batch).
//   P = x W_enc + b_enc; f: the selected P, where > 0
//   x_hat = f W_dec + b_dec; r = x_hat - x; rec = sum r^2; dL/dx_hat = 2 r
//   AuxK: e = -r; a: the k_aux largest P of each token among dead latents, where > 0;
//         e_hat = a W_dec; Z = sum (e - mean_t e)^2; aux = alpha N sum (e_hat - e)^2 / Z;
//         dL/de_hat = 2 alpha N (e_hat - e) / Z
//   unit-norm decoder: each row's gradient loses its component along the row, Adam, then the row
//   is renormalised (inside sparse_decoder_backward)
// Letters: N tokens (up to max_tokens), D input width, F latents.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sae/arch/unit.h"

namespace sae {

struct TopKSettings {
  int64_t k = 0;                  // latents per token (batchtopk: their mean, k N per batch)
  double auxk_coefficient = 0.0;  // AuxK's alpha; 0 = off
  int64_t auxk_k = 0;             // AuxK's k_aux (resolved: d_out / 2 when the option is 0, as sparsify)
  int64_t dead_tokens = 1000000;  // a latent is dead once this many tokens passed without it firing
  bool unit_norm_decoder = true;
  int64_t encoder_chunk = 0;      // topk: tokens per encoder GEMM (--encoder-chunk; 0: the whole batch)
};
TopKSettings topk_settings(const ArchSettings& s, int64_t d_out);  // d_out: the reconstructed width

// The rows of P = x W_enc + b_enc a per-token selection (topk) computes and selects from at once:
// encoder_chunk (--encoder-chunk, which sae_train sets by memory when it is 0) up to the batch's
// max_tokens, or (0) the whole batch. A batch of more rows runs the encoder GEMM and the selection
// chunk by chunk; AuxK then computes the chunks' P again once the batch's dead latents are known (a
// second encoder GEMM on steps with dead latents). Units that select by batch hold the whole batch's P.
int64_t topk_encoder_rows(int64_t encoder_chunk, int64_t max_tokens);

std::vector<ArchOption> topk_family_rows();       // k, auxk-coefficient, auxk-k and the dictionary rows
std::vector<std::string> topk_family_reads();     // those and dead-window
void validate_topk_family(const ArchSettings& s, int64_t d_sae, const std::string& unit);
DictionaryInit topk_family_dictionary_init(const ArchSettings& s);

// On several ranks (collectives.h) a latent shard selects among its own latents and the global
// selection is exact: TopK's and AuxK's per token by shard_topk_cut over the shards' candidates,
// BatchTopK's over every rank by distributed_batchtopk_select; the partial decodes are summed over
// the shards; AuxK's dead mask counts every replica's firings, its n_dead and k_aux are global, and
// its residual statistics (mean_t e, Z, N) are the whole batch's.
class TopKFamilyStep : public UnitStep {
 public:
  // by_batch: the unit selects by batch (room for k N entries of the whole batch).
  TopKFamilyStep(const TopKSettings& settings, const StepShape& shape, DType dtype, Device device,
                 const std::string& unit, bool by_batch = false);

  StepSums forward(const SaeParams& params, const Tensor& x, const Tensor& target, double lambda,
                   bool train) override;
  void undo_forward() override;
  std::vector<std::string> backward(const SaeParams& params, const Tensor& x, double lambda, SaeParams& grads,
                                    const FusedAdam* fused) override;
  void after_update(SaeParams& params) override;
  std::vector<std::string> always_fused() const override { return {"W_enc", "b_enc", "W_dec"}; }
  Tensor features() const override;
  Tensor reconstruction() const override { return x_hat_.slice_rows(0, tokens_); }
  Tensor output_gradient() const override { return grad_x_hat_.slice_rows(0, tokens_); }
  const Tensor& feature_counts() const override { return col_count_; }
  StepFeatures step_features() const override;
  std::optional<std::vector<int64_t>> dead_clock() const override;
  void set_dead_clock(const std::vector<int64_t>& clock) override;

  // AuxK's a [N, F] of the last call (zeros when no latent was dead) and its dead mask (read back).
  Tensor aux_activations() const;
  int64_t encoder_rows() const { return chunk_rows_; }  // rows of P computed at once
  std::vector<uint8_t> dead_mask() const;

 protected:
  // The kept latents of P = pre + b_enc, pre being x W_enc's rows row0 .. row0 + pre.size(0) - 1:
  // by-token lists of those rows of `main`. Units that select by batch get the whole batch (row0 0).
  virtual void select(SparseFeatures& main, const Tensor& pre, const Tensor& b_enc, int64_t row0) = 0;
  // After the last chunk's select (rows 0 .. n-1 of `main` complete): a latent shard's global cut.
  virtual void finish_selection(SparseFeatures& main, int64_t n) {}
  SparseFeatures lists(int64_t row0, int64_t rows) const;  // row_ptr viewed from row0, rows + 1 values

  // x_hat = (the kept entries) W_dec + b_dec: partial decodes summed over the shards.
  void decode(Tensor& x_hat, const SparseFeatures& entries, const SaeParams& params);
  Tensor pre_activations(int64_t n);  // pre_'s first n rows, made again when the precision changed
  // P's rows row0 .. row0 + rows - 1 without b_enc: x's rows times W_enc, into pre_.
  Tensor encode_rows(const Tensor& x, const Tensor& W_enc, int64_t row0, int64_t rows);

  TopKSettings settings_;
  int64_t max_tokens_, d_in_, d_out_, d_sae_, k_aux_ = 0, tokens_ = 0;
  int64_t chunk_rows_ = 0;                // rows of P computed at once (topk_encoder_rows; the batch when by batch)
  int64_t first_latent_ = 0;              // a latent shard's first latent (0 in one process)
  int64_t all_tokens_ = 0;                // the whole batch's N (every replica's tokens)
  bool normalize_after_update_ = false;   // the last backward left a unit-norm decoder's rows to renormalise
  Tensor pre_;                           // [chunk_rows_, F]: x W_enc, in activation_dtype
  Tensor x_hat_;                         // [max_tokens, D_out]
  Tensor grad_x_hat_;                    // [2 max_tokens, D_out]: r (then 2 r), and AuxK's dL/de_hat below it
  Tensor x_stacked_;                     // [2 max_tokens, D_in]: x twice, for the AuxK rows (made on first use)
  Tensor scratch_rows_;                  // [max_tokens, D_out]: the centred residual
  Tensor col_mean_, zero_d_;             // [D_out]
  Tensor col_sum_, col_count_, all_sum_, all_count_, norms_, dead_flags_;  // [F]
  Tensor fired_;                         // [F]: the firing counts summed over replicas (made when needed)
  Tensor sums_;                          // [1] scratch of reductions
  SparseFeatures lists_;                 // row_ptr [2 max_tokens + 1]; room for every entry
  Tensor dpre_;                          // dL/dP at each by-feature entry
  // AuxK's clock [F] f64 on the step's device (tokens since each latent last fired), and a copy from
  // before the last forward (undo_forward; a forward that does not train moves the copy only).
  Tensor clock_, clock_before_;
  bool clock_moved_ = false;             // the last forward moved clock_ (undo_forward puts it back)
  // The last forward.
  int64_t main_entries_ = 0, all_entries_ = 0;
  bool aux_rows_ = false;                // the by-feature lists hold AuxK's rows N .. 2N-1
  double rec_ = 0, aux_ = 0;
};

// The step of units that select by batch (batchtopk, matryoshka): the kN largest relu(P) of the batch,
// and the inference threshold theta <- (1 - rate) theta + rate min{f > 0} after each step (the first
// step sets it), kept in the SAE's settings as "threshold".
class BatchTopKStep : public TopKFamilyStep {
 public:
  BatchTopKStep(const TopKSettings& settings, double rate, const StepShape& shape, DType dtype, Device device,
                const std::string& unit);
  StepSums forward(const SaeParams& params, const Tensor& x, const Tensor& target, double lambda,
                   bool train) override;
  void after_update(SaeParams& params) override;

 protected:
  void select(SparseFeatures& main, const Tensor& pre, const Tensor& b_enc, int64_t row0) override;
  bool selected_any_ = false;  // the last forward kept entries (on any rank)

 private:
  double rate_, min_positive_ = 0;
};

// What units that select by batch share as units: the family's options and the threshold's rate,
// k and the threshold as inference settings, inference relu(P) 1[P > theta], and the SAELens export
// as a "jumprelu" (threshold theta for every latent; sae_cpp keeps k and theta in full precision and
// names the unit). A unit adds its name, description, step and reference (and may add options).
class BatchThresholdUnit : public ArchUnit {
 public:
  std::vector<ArchOption> option_rows() const override;
  std::vector<std::string> reads() const override;
  void validate(const ArchSettings& s, int64_t d_sae) const override;
  bool has_lambda() const override { return false; }
  std::string sparsity_note() const override { return "sets its L0 with --k"; }
  DictionaryInit dictionary_init(const ArchSettings& s) const override { return topk_family_dictionary_init(s); }
  void init_own(SaeParams& p, const ArchSettings& s) const override;
  Tensor encode(const SaeParams& p, const Tensor& x) const override;
  std::string saelens_architecture() const override { return "jumprelu"; }
  std::string saelens_transcoder_architecture(bool skip) const override {
    return skip ? "jumprelu_skip_transcoder" : "jumprelu_transcoder";
  }
  bool trains_crosscoders() const override { return true; }
  bool reads_foreign_folders() const override { return false; }
  std::vector<std::pair<std::string, Tensor>> saelens_weights(const SaeParams& p) const override;
  void set_cfg_keys(const SaeParams& p, Json& cfg, Json& ours) const override;
  void check_cfg(const Json& cfg) const override;
  void import_rest(const NamedTensorFile& weights, const Json& cfg, const std::string& where,
                   SaeParams& p) const override;
  void save_state(const SaeParams& p, std::vector<std::pair<std::string, Tensor>>& tensors, Json& info) const override;
  void load_state(const SafetensorsFile& file, const Json& info, SaeParams& p) const override;
};
double batch_threshold(const SaeParams& p);  // 0 until the first step sets it

// The reference of a TopK-family unit: f = relu(P) * kept (the unit's selection as 0/1 flags
// [N * F]), plus AuxK's term when dead latents are given (ReferenceLoss.aux_acts, n_dead).
ReferenceLoss topk_family_reference(const TopKSettings& s, const std::vector<uint8_t>& kept, const ArchVariables& p,
                                    const Tensor& x, const Tensor& target, double lambda,
                                    const std::vector<uint8_t>* dead, const ArchFrozen* frozen);
// Dense [rows, F] from by-token lists rows row0 .. row0+rows-1, on the lists' device (then like's
// device and dtype).
Tensor dense_from_lists(const SparseFeatures& s, int64_t row0, int64_t rows, int64_t features, const Tensor& like);

}  // namespace sae
