// SaeParams: an SAE's parameters as plain tensors, in SAELens's names and layout, and SaeAdamState,
// torch.optim.Adam's state for them. Every architecture (sae/arch: one unit each) has the
// dictionary: W_enc [D, F], b_enc [F] (absent where a unit has none, e.g. gated), W_dec [F, D_out],
// b_dec [D_out], where D_out = D except for a transcoder (which maps one activation to another), and
// W_skip [D, D_out] for a skip transcoder (x_hat += x W_skip; SAELens stores its transpose). A
// crosscoder reads `sources` activations concatenated (D = sources * D_source, D_out = D): its
// sparsity penalty weighs each latent by the sum of its decoder's per-source norms. A unit adds its own tensors (jumprelu: log_threshold [F]; gated: b_gate, b_mag, r_mag [F]) in
// the order it lists them, names the unit (`kind`, its registry name) and keeps what inference needs
// beyond tensors in `settings` (topk: {"k": 32}). The fused training step updates these buffers in
// place, checkpoints save and load them, and the autograd references wrap them; nothing here builds
// a graph, and nothing here knows one architecture from another.
// Letters: D = d_in, F = d_sae.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "io/json.h"
#include "tensor/adam_math.h"
#include "tensor/rng.h"
#include "tensor/tensor.h"

namespace sae {

struct NamedTensor {
  std::string name;
  Tensor tensor;
};

struct SaeParams {
  Tensor W_enc, b_enc, W_dec, b_dec;
  Tensor W_skip;                   // skip transcoders only
  std::vector<NamedTensor> own;    // the unit's own tensors, in its order
  // Values a unit's inference reads as a loaded folder states them, where its trained tensors can
  // only come close (jumprelu: SAELens's threshold, which exp(log threshold) gives back to within a
  // few ulps). Each [F]. Not trained, not in present(): SaeStep::train_step drops them, since the
  // trained tensors then rule.
  std::vector<NamedTensor> stated;
  int64_t sources = 1;             // crosscoders: the number of activations concatenated in x
  bool transcoder = false;         // x reconstructs another activation (d_out may equal d_in)
  std::string kind = "standard";   // the architecture unit (sae/arch/registry.h)
  Json settings = Json::object();  // the unit's inference settings (cfg.json's, e.g. topk's k)

  // PyTorch nn.Linear's default init of the original's encoder Linear(D, F) and decoder Linear(F,
  // D): W_enc, b_enc uniform in +-1/sqrt(D); W_dec, b_dec uniform in +-1/sqrt(F), drawn in that order.
  static SaeParams standard_init(int64_t d_in, int64_t d_sae, Rng& rng, DType dtype = DType::F32,
                                 Device device = Device::CPU);
  // The four dictionary tensors, shapes checked against each other (DataError naming every shape).
  static SaeParams from_tensors(Tensor W_enc, Tensor b_enc, Tensor W_dec, Tensor b_dec);
  // Zeros shaped like every tensor `like` has (gradients, Adam moments); kind and settings copied.
  static SaeParams zeros_like(const SaeParams& like);

  int64_t d_in() const { return W_enc.size(0); }
  int64_t d_out() const { return W_dec.size(1); }
  int64_t d_sae() const { return W_enc.size(1); }
  Device device() const { return W_enc.device(); }
  // Every defined tensor with its name: W_enc, b_enc, W_dec, b_dec, W_skip, then the unit's own (handles:
  // they share storage with these). The order is fixed, so two SaeParams of one kind pair up.
  std::vector<std::pair<std::string, Tensor*>> present();
  std::vector<std::pair<std::string, const Tensor*>> present() const;
  // The unit's own tensor `name` (Error when it has none of that name).
  Tensor& own_tensor(const std::string& name);
  const Tensor& own_tensor(const std::string& name) const;
  bool has_own(const std::string& name) const;
  // W_enc 2-D, W_dec [F, D_out], b_dec [D_out], b_enc [F] when `with_b_enc` (absent otherwise),
  // W_skip [D, D_out] if any, each own tensor named in `own_names` [F] and no other, all of W_enc's
  // dtype and device, `sources` dividing D and D_out = D for a crosscoder (never a transcoder), D_out
  // = D and no W_skip for an SAE: DataError naming the kind and the tensor otherwise.
  void check_shapes(bool with_b_enc, const std::vector<std::string>& own_names) const;
  SaeParams to(Device device) const;  // copies (or shares, when already there)
  SaeParams clone() const;
  // Latents [begin, end) of this SAE, a latent shard of a distributed run (sae/arch/collectives.h):
  // those columns of W_enc, rows of W_dec and entries of b_enc and every own tensor; b_dec and W_skip,
  // which every shard holds whole, whole. Copies; kind, settings and sources too.
  SaeParams latent_slice(int64_t begin, int64_t end) const;
  // The axis along which a tensor of present() runs over the latents: 1 for W_enc, -1 for b_dec and
  // W_skip (no latent axis), 0 for every other (W_dec, b_enc, the own tensors).
  static int latent_axis(const std::string& name);
  // The tensors fold_input_scales changes.
  static bool scale_dependent(const std::string& name);
};

// The SAE of raw activations that computes what `p` computes on scaled ones, SAELens's
// fold_activation_norm_scaling_factor per block: p reads input column block b times in[b] and its
// output block b is the target times out[b] (blocks of equal width: a crosscoder's sources; one
// block otherwise), so W_enc's rows of block b are multiplied by in[b], W_dec's columns and b_dec's
// entries of block b divided by out[b], and W_skip by in / out. b_enc and the unit's own tensors
// (thresholds, gates) stay: the pre-activations and features are the same. `inverse` undoes it (to
// within a rounding). Computed in double, rounded to float32 once; the changed tensors are host
// float32 tensors, new ones unless p was moved in holding the only handles (then scaled in place,
// never a second copy of a multi-GB weight), the others shared with p.
SaeParams fold_input_scales(SaeParams p, const std::vector<double>& in, const std::vector<double>& out, bool inverse);
// The factors of that fold: W_enc's row r (and W_skip's) times in_rows[r], W_dec's, b_dec's (and
// W_skip's) column c times out_columns[c].
struct InputScaleFold {
  std::vector<double> in_rows, out_columns;
};
InputScaleFold input_scale_fold(const SaeParams& p, const std::vector<double>& in, const std::vector<double>& out,
                                bool inverse);
// The factor scaled_host applies to element (r, c): row[r] * col[c] in double (an empty vector: 1).
inline double scale_factor(const std::vector<double>& row, const std::vector<double>& col, int64_t r, int64_t c) {
  return (row.empty() ? 1.0 : row[static_cast<size_t>(r)]) * (col.empty() ? 1.0 : col[static_cast<size_t>(c)]);
}
// t ([R, C], or [C]) as host float32 with element (r, c) times row[r] * col[c] in double, rounded
// once (an empty vector: 1): scaled in place when t is moved in as the only handle on host float32
// bytes of its own (Tensor::owns_its_host_bytes), a new copy otherwise. The folds above and
// fold_dictionary_norms use it.
Tensor scaled_host(Tensor t, const std::vector<double>& row, const std::vector<double>& col);

// torch.optim.Adam's state for SaeParams: the moments m and v (shaped like the parameters) and the
// number of steps taken; betas and eps are fixed for a run.
struct SaeAdamState {
  SaeParams m, v;
  int64_t steps = 0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;

  static SaeAdamState zeros_like(const SaeParams& params, double beta1 = 0.9, double beta2 = 0.999,
                                 double eps = 1e-8);
  // Counts one step and returns its scalars (tensor/adam_math.h).
  AdamScalars next_step(double lr);
};

}  // namespace sae
