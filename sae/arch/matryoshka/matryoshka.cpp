// The Matryoshka BatchTopK unit (see matryoshka.h). Its step is BatchTopK's (the TopK family's sparse
// step, sae/arch/topk_family.h) plus the nested reconstructions:
//   forward:  the kN largest relu(P), f; x_hat = x_hat_{M-1} and AuxK as BatchTopK's; the kept entries
//             regrouped into level rows (row g N + t: token t's latents of group g, matryoshka_levels);
//             y_g = the group's partial decode (no bias); x_hat_m - x = b_dec + y_0 + ... + y_m - x
//   loss:     rec = ||x - x_hat_{M-1}||^2; aux = AuxK + sum_{m < M-1} ||x - x_hat_m||^2
//   backward: G_{M-1} = 2 (x_hat - x), G_g = 2 (x_hat_g - x) + G_{g+1}: latent i of group g sees G_g
//             (it is in every prefix from g on); the level rows stacked with their G rows (and AuxK's
//             rows with dL/de_hat) go through the shared sparse backward with Adam fused in, against x
//             stacked as often; db_dec = sum_t G_0.
// Letters: N tokens, D input width, F latents, M prefixes.
#include "sae/arch/matryoshka/matryoshka.h"

#include <algorithm>

#include "sae/arch/matryoshka/matryoshka_kernels.h"
#include "sae/arch/topk_family.h"
#include "sae/step/sae_ops.h"
#include "tensor/ops.h"

namespace sae {

namespace {
class MatryoshkaStep : public BatchTopKStep {
 public:
  MatryoshkaStep(const TopKSettings& settings, double rate, const std::vector<int64_t>& widths, const StepShape& shape,
                 DType dtype, Device device)
      : BatchTopKStep(settings, rate, shape, dtype, device, "matryoshka_batchtopk"),
        levels_count_(static_cast<int64_t>(widths.size())) {
    const int64_t m = levels_count_, max_tokens = shape.max_tokens, d_sae = shape.d_sae;
    // A latent shard's prefixes end where the global ones do, within its latents (some may be empty).
    std::vector<double> ends(widths.size());
    for (size_t g = 0; g < widths.size(); ++g)
      ends[g] = double(std::clamp<int64_t>(widths[g] - shape.first_latent, 0, d_sae));
    widths_ = Tensor::from_vector(ends, Shape{m}, DType::I32, device);
    // The level lists hold the BatchTopK lists' entries (their room checked by BatchTopKStep), each in
    // one of (m + 1) N rows: int32 row indices.
    const int64_t rows = (m + 1) * max_tokens;
    if (rows >= (int64_t(1) << 31))
      throw UsageError(cat("--architecture matryoshka_batchtopk: ", max_tokens, " tokens x ", m + 1,
                           " level rows do not fit int32 row indices; use smaller batches"));
    levels_ = lists_;  // the same room for entries, in their own buffers
    levels_.col_ptr = lists_.col_ptr.clone();
    levels_.rows = lists_.rows.clone();
    levels_.vals = lists_.vals.clone();
    levels_.cols = lists_.cols.clone();
    levels_.row_vals = lists_.row_vals.clone();
    levels_.row_ptr = Tensor::from_vector(std::vector<double>(rows + 1, 0.0), Shape{rows + 1}, DType::I32, device);
    inner_ = Tensor::zeros(Shape{std::max<int64_t>(m - 1, 1) * max_tokens, shape.d_out}, dtype, device);
    grads_ = Tensor::zeros(Shape{rows, shape.d_out}, dtype, device);
    x_levels_ = Tensor::zeros(Shape{rows, shape.d_in}, dtype, device);
    level_sum_ = Tensor::zeros(Shape{d_sae}, dtype, device);
    level_count_ = Tensor::zeros(Shape{d_sae}, dtype, device);
  }

  StepSums forward(const SaeParams& params, const Tensor& x, const Tensor& target, double lambda,
                   bool train) override {
    StepSums sums = BatchTopKStep::forward(params, x, target, lambda, train);
    const int64_t n = tokens_, m = levels_count_, aux = aux_rows_ ? n : 0;
    // The kept (and AuxK's) entries regrouped into level rows, and by feature.
    matryoshka_levels_(levels_, lists(0, n + aux), widths_, n, aux);
    SparseFeatures levels = level_lists(m * n + aux);
    sparse_by_feature_(levels, level_sum_, level_count_);
    // The inner prefixes' residuals x_hat_g - x, g < M-1, by running sums of the groups' decodes.
    if (m > 1 && n > 0) {
      Tensor inner = inner_.slice_rows(0, (m - 1) * n);
      sparse_decode_(inner, level_lists((m - 1) * n), params.W_dec, zero_d_);
      sum_over(collectives_, Group::Shards, inner);  // the groups' partial decodes of every shard
      for (int64_t g = 0; g < m - 1; ++g) {
        Tensor block = inner_.slice_rows(g * n, (g + 1) * n);
        if (g == 0) {
          add_(block, params.b_dec);
          binary_(BinaryOp::sub, block, block, target);
        } else {
          binary_(BinaryOp::add, block, block, inner_.slice_rows((g - 1) * n, g * n));
        }
      }
      reduce_all_(ReduceOp::sum_squares, sums_, inner);
      const double inner_sum = sum_over(collectives_, Group::Replicas, sums_.item());
      sums.aux += inner_sum;
      sums.loss = sums.rec + lambda * 0.0 + sums.aux;
    }
    return sums;
  }

  Tensor output_gradient() const override { return grads_.slice_rows(0, tokens_); }  // G_0, in every prefix

  std::vector<std::string> backward(const SaeParams& params, const Tensor& x, double, SaeParams& grads,
                                    const FusedAdam* fused) override {
    const int64_t n = tokens_, m = levels_count_, aux = aux_rows_ ? n : 0, rows = m * n + aux;
    // G_{M-1} = 2 r, G_g = 2 (x_hat_g - x) + G_{g+1}; AuxK's dL/de_hat below them.
    Tensor top = grads_.slice_rows((m - 1) * n, m * n);
    affine_(top, grad_x_hat_.slice_rows(0, n), 2.0, 0.0);
    for (int64_t g = m - 2; g >= 0; --g) {
      Tensor block = grads_.slice_rows(g * n, (g + 1) * n);
      affine_(block, inner_.slice_rows(g * n, (g + 1) * n), 2.0, 0.0);
      binary_(BinaryOp::add, block, block, grads_.slice_rows((g + 1) * n, (g + 2) * n));
    }
    if (aux > 0) {
      Tensor below = grads_.slice_rows(m * n, m * n + n);
      copy_(below, grad_x_hat_.slice_rows(n, 2 * n));
    }
    reduce_axis_(ReduceOp::sum, grads.b_dec, grads_.slice_rows(0, n), 0);
    for (int64_t b = 0; b < rows / std::max<int64_t>(n, 1); ++b) {
      Tensor block = x_levels_.slice_rows(b * n, (b + 1) * n);
      copy_(block, x);
    }
    const SaeAdamState* adam = fused ? fused->adam : nullptr;
    ParamUpdate W_dec = param_update(params.W_dec, grads.W_dec, adam ? adam->m.W_dec : Tensor(),
                                     adam ? adam->v.W_dec : Tensor(), fused);
    ParamUpdate W_enc = param_update(params.W_enc, grads.W_enc, adam ? adam->m.W_enc : Tensor(),
                                     adam ? adam->v.W_enc : Tensor(), fused);
    ParamUpdate b_enc = param_update(params.b_enc, grads.b_enc, adam ? adam->m.b_enc : Tensor(),
                                     adam ? adam->v.b_enc : Tensor(), fused);
    const SparseFeatures levels = level_lists(rows);
    sparse_decoder_backward_(dpre_, W_dec, grads_.slice_rows(0, rows), levels, norms_, level_sum_, 0.0,
                             settings_.unit_norm_decoder);
    sparse_encoder_backward_(W_enc, b_enc, x_levels_.slice_rows(0, rows), levels, dpre_);
    normalize_after_update_ = settings_.unit_norm_decoder && !fused;  // (TopKFamilyStep::after_update)
    if (fused) return {"W_enc", "b_enc", "W_dec"};
    return {};
  }

 private:
  SparseFeatures level_lists(int64_t rows) const {
    SparseFeatures s = levels_;
    s.row_ptr = levels_.row_ptr.slice_rows(0, rows + 1);
    return s;
  }

  int64_t levels_count_;
  Tensor widths_;                 // [M] i32
  SparseFeatures levels_;         // the level rows' lists
  Tensor inner_;                  // [(M-1) max_tokens, D]: the inner prefixes' residuals x_hat_g - x
  Tensor grads_, x_levels_;       // [(M+1) max_tokens, D]: the level rows' dL/dx_hat, and x for each
  Tensor level_sum_, level_count_;  // [F]
};

std::vector<int64_t> widths_of(const ArchSettings& s) { return s.integers("matryoshka-widths"); }

// f [N, F] masked to prefix m's latents (columns < w).
Tensor prefix_mask(int64_t n, int64_t features, int64_t w, const Tensor& like) {
  std::vector<uint8_t> flags(n * features, 0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < w; ++i) flags[t * features + i] = 1;
  return flags_tensor(flags, Shape{n, features}, like);
}

class MatryoshkaUnit : public BatchThresholdUnit {
 public:
  std::string name() const override { return "matryoshka_batchtopk"; }
  std::string description() const override {
    return "BatchTopK with nested prefixes of the latents, each reconstructing x (Bussmann et al. 2025)";
  }
  std::vector<ArchOption> option_rows() const override {
    std::vector<ArchOption> rows = BatchThresholdUnit::option_rows();
    rows.push_back({"matryoshka-widths", "matryoshka_widths",
                    "the nested prefixes' widths, strictly increasing and ending at --features (required)",
                    ArchValueType::IntegerList, ""});
    return rows;
  }
  std::vector<std::string> reads() const override {
    std::vector<std::string> names = BatchThresholdUnit::reads();
    names.push_back("matryoshka-widths");
    return names;
  }
  void validate(const ArchSettings& s, int64_t d_sae) const override {
    BatchThresholdUnit::validate(s, d_sae);
    const std::vector<int64_t> widths = widths_of(s);
    if (widths.empty())
      throw UsageError("--matryoshka-widths is required with --architecture matryoshka_batchtopk (strictly "
                       "increasing, ending at --features)");
    for (size_t i = 0; i < widths.size(); ++i)
      if (widths[i] < 1 || (i > 0 && widths[i] <= widths[i - 1]))
        throw UsageError(cat("--matryoshka-widths must be positive and strictly increasing, got ",
                             s.at("matryoshka-widths").dump()));
    if (widths.back() != d_sae)
      throw UsageError(cat("--matryoshka-widths must end at --features = ", d_sae, ", got ", widths.back()));
  }
  // Its reference and step take a target like the family's, but no fixture checks them yet.
  bool trains_transcoders() const override { return false; }
  bool trains_crosscoders() const override { return false; }
  void init_own(SaeParams& p, const ArchSettings& s) const override {
    BatchThresholdUnit::init_own(p, s);
    p.settings["widths"] = s.at("matryoshka-widths");
  }
  std::unique_ptr<UnitStep> make_step(const ArchSettings& s, const StepShape& shape, DType dtype,
                                      Device device) const override {
    validate(s, shape.total_latents());
    return std::make_unique<MatryoshkaStep>(topk_settings(s, shape.d_out), s.number("batchtopk-threshold-lr"),
                                            widths_of(s), shape, dtype, device);
  }
  ReferenceLoss reference_loss(const ArchSettings& s, const ArchVariables& p, const Tensor& x, const Tensor& target,
                               double lambda, const std::vector<uint8_t>* dead,
                               const ArchFrozen* frozen) const override {
    const TopKSettings o = topk_settings(s, target.size(1));
    const Tensor P = add(matmul(p.encoder_input_value(x), p.W_enc.data()), p.b_enc.data());
    const std::vector<uint8_t> kept = top_k_flat(relu(P).to_vector(), o.k * x.size(0));
    ReferenceLoss out = topk_family_reference(o, kept, p, x, target, lambda, dead, frozen);
    // The inner prefixes: sum_{m < M-1} ||target - (f masked to prefix m) W_dec - b_dec [- x W_skip]||^2.
    const Variable X(x), Y(target);
    const Variable f =
        ag::relu(ag::matmul(p.encoder_input(x), p.W_enc) + p.b_enc) * Variable(flags_tensor(kept, P.shape(), x));
    const std::vector<int64_t> widths = widths_of(s);
    for (size_t m = 0; m + 1 < widths.size(); ++m) {
      const Variable prefix = f * Variable(prefix_mask(x.size(0), P.size(1), widths[m], x));
      Variable level = ag::matmul(prefix, p.W_dec) + p.b_dec;
      if (p.W_skip.defined()) level = level + ag::matmul(X, p.W_skip);
      out.aux = out.aux + ag::sum(ag::square(Y - level));
    }
    out.total = out.rec + out.sparsity * lambda + out.aux;
    return out;
  }
  void set_cfg_keys(const SaeParams& p, Json& cfg, Json& ours) const override {
    BatchThresholdUnit::set_cfg_keys(p, cfg, ours);
    ours["matryoshka_widths"] = p.settings.at("widths");
  }
  void check_cfg(const Json& cfg) const override {
    BatchThresholdUnit::check_cfg(cfg);
    const Json& ours = cfg.at("sae_cpp");
    if (ours.has("matryoshka_widths"))
      for (const Json& w : ours.at("matryoshka_widths").elements()) w.as_int();
  }
  void import_rest(const NamedTensorFile& weights, const Json& cfg, const std::string& where,
                   SaeParams& p) const override {
    BatchThresholdUnit::import_rest(weights, cfg, where, p);
    const Json& ours = cfg.at("sae_cpp");
    p.settings["widths"] = ours.has("matryoshka_widths") ? ours.at("matryoshka_widths") : Json::array();
  }
};
}  // namespace

const ArchUnit& matryoshka_unit() {
  static const MatryoshkaUnit unit;
  return unit;
}

}  // namespace sae
