// The standard SAE unit (see standard.h): options, parameters, its step, reference, inference.
//
// The step, in the order it runs (N tokens, D input width, F latents), with the kernels of each line
// (GEMMs by matmul_, the rest the unit's fused kernels, standard_kernels.h):
//   pre = x W_enc; f = relu(pre + b_enc)      GEMM, encoder_activate (also sums and counts f per latent)
//   n_i = ||W_dec[i,:]||; l1 = sum_i n_i * sum_t f[t,i]; active = #(f > 0)           decoder_penalty
//   x_hat = f W_dec + b_dec; r = x_hat - x; rec = sum r^2; dx_hat = 2 r          GEMM, decoder_residual
//   db_dec = sum_t dx_hat                                                                 reduce_axis_
//   dW_dec = f^T dx_hat + lambda * (sum_t f[t,i] / n_i) W_dec[i,:]      GEMM, decoder_penalty_backward
//   df = dx_hat W_dec^T + lambda n;  dpre = df * (f > 0);  db_enc = sum_t dpre   GEMM, encoder_backward
//   dW_enc = x^T dpre                                                                             GEMM
// A crosscoder (sources > 1; n_i = sum_s ||W_dec[i, block s]||) computes the two penalty lines with
// the tensor ops one by one.
// At --precision bf16 a float32 SAE keeps pre, f and df/dpre [N, F] in bfloat16 (activation_dtype,
// unit.h): the GEMMs write them rounded once from their float32 sums and read them as stored, and
// encoder_activate / encoder_backward widen each value and compute in float32. The [F] and [N, D]
// tensors, every sum (sum_t f from the stored values, db_enc before rounding) and the parameters stay
// float32.
// The sparse path (tests/sae/step/test_sparse.cpp) computes the same formulas from the entries of f
// that are > 0 only: after the encoder GEMM (which stays dense) the positive entries are listed by
// feature and by token (sparse_index), and then
//   x_hat[t,:] = b_dec + sum_{i: f[t,i] > 0} f[t,i] W_dec[i,:]                      (sparse_decode)
//   dpre[t,i]  = dx_hat[t,:] . W_dec[i,:] + lambda n_i, only where f[t,i] > 0;
//   dW_dec[i,:] = sum_t f[t,i] dx_hat[t,:] + lambda (sum_t f[t,i] / n_i) W_dec[i,:]  (sparse_decoder_backward)
//   dW_enc[:,i] = sum_t dpre[t,i] x[t,:];  db_enc[i] = sum_t dpre[t,i]              (sparse_encoder_backward)
// so the four products that were GEMMs cost O(entries * D) instead of O(N * F * D). In a training
// step the two backward kernels also apply Adam to each row of W_dec and each block of columns of
// W_enc as soon as its gradient is known: those gradients are never stored, and Adam's one pass
// over all the parameters is the same memory pass that computes them.
#include "sae/arch/standard/standard.h"

#include <algorithm>
#include <cmath>

#include "sae/arch/dictionary.h"
#include "sae/arch/standard/standard_kernels.h"
#include "sae/step/sae_ops.h"
#include "tensor/ops.h"

namespace sae {

namespace {
// Auto mode's default density thresholds. CPU: measured (bench/bench_sparse.cpp BM_SparseCrossover,
// bench/RESULTS.md), the sparse step is faster below about 25% at 4096 tokens and 40% at 218.
// CUDA: bracketed by the H200 sitting of 2026-12-04 (bench/RESULTS.md, BM_Cuda_SparseStep): sparse
// over dense 1.23x at 2% and 0.80x at 10% density (218 tokens), 1.84x and 0.66x (4096 tokens), so the
// crossover lies between about 6% and 8% by interpolation; 5% stays on the side where sparse pays
// until BM_Cuda_SparseCrossover (scripts/device_check.sh) measures it.
constexpr double kAutoMaxDensityCpu = 0.2;
constexpr double kAutoMaxDensityCuda = 0.05;

class StandardStep : public UnitStep {
 public:
  StandardStep(SparseMode mode, const StepShape& shape, DType dtype, Device device)
      : max_tokens_(shape.max_tokens), latents_(shape.total_latents()), dtype_(dtype), sparse_mode_(mode),
        auto_max_density_(sae::auto_max_density(device)) {
    const int64_t max_tokens = shape.max_tokens, d_sae = shape.d_sae;
    f_ = Tensor::empty(Shape{max_tokens, d_sae}, activation_dtype(dtype), device);  // written before read
    x_hat_ = Tensor::zeros(Shape{max_tokens, shape.d_out}, dtype, device);
    grad_x_hat_ = Tensor::zeros(Shape{max_tokens, shape.d_out}, dtype, device);
    col_sum_ = Tensor::zeros(Shape{d_sae}, dtype, device);
    col_count_ = Tensor::zeros(Shape{d_sae}, dtype, device);
    norms_ = Tensor::zeros(Shape{d_sae}, dtype, device);
    scratch_f_ = Tensor::zeros(Shape{d_sae}, dtype, device);
    sums_ = Tensor::zeros(Shape{3}, dtype, device);
    tiny_ = Tensor::full(Shape{1}, 1e-30, dtype, device);
    zero_d_ = Tensor::zeros(Shape{shape.d_out}, dtype, device);
    // The sparse path indexes [N, F] cells in int32: beyond, auto stays dense and on is refused.
    const bool cells_fit = max_tokens * d_sae < (int64_t(1) << 31);
    if (mode == SparseMode::Auto && !cells_fit) sparse_mode_ = SparseMode::Off;
    if (sparse_mode_ != SparseMode::Off) {
      if (!cells_fit)
        throw UsageError(cat("--sparse: ", max_tokens, " tokens x ", d_sae, " features do not fit int32 entry "
                             "indices; use smaller batches or --sparse off"));
      lists_.col_ptr = Tensor::empty(Shape{d_sae + 1}, DType::I32, device);
      lists_.row_ptr = Tensor::empty(Shape{max_tokens + 1}, DType::I32, device);
    }
  }

  StepSums forward(const SaeParams& params, const Tensor& x, const Tensor& target, double lambda, bool) override {
    const int64_t n = x.size(0);
    tokens_ = n;
    if (f_.dtype() != activation_dtype(dtype_)) grad_f_ = Tensor();  // remade by the next dense backward
    keep_dtype(f_, activation_dtype(dtype_));                         // the precision may have changed
    Tensor f = features(), x_hat = reconstruction(), grad_x_hat = grad_x_hat_.slice_rows(0, n);
    Tensor rec = sums_.slice_rows(0, 1), l1 = sums_.slice_rows(1, 2), active = sums_.slice_rows(2, 3);

    matmul_(f, x, false, params.W_enc, false);
    encoder_activate_(f, params.b_enc, col_sum_, col_count_);
    sources_ = params.sources;
    penalty_sums(params, l1, active);
    sparse_ = false;
    // Latent shards (collectives.h) decode their own latents; the partial sums are summed over the
    // shards and b_dec added once. The density that picks the path is the whole batch's.
    Collectives* c = collectives_;
    const bool sharded = spans(c, Group::Shards);
    // A crosscoder's penalty weighs each decoder block by its own norm: the dense path only.
    if (sparse_mode_ != SparseMode::Off && n > 0 && params.sources == 1) {
      const double entries = active.item();  // one value back to the host
      const double cells = double(sum_over(c, Group::Replicas, n)) * double(latents_);
      sparse_ = sparse_mode_ == SparseMode::On || sum_over(c, Group::All, entries) <= auto_max_density_ * cells;
      if (sparse_) {
        reserve_entries(entries);
        SparseFeatures lists = lists_for_batch();
        sparse_index_(lists, f, col_count_);
        sparse_decode_(x_hat, lists, params.W_dec, sharded ? zero_d_ : params.b_dec);
      }
    }
    if (!sparse_) matmul_(x_hat, f, false, params.W_dec, false);
    if (sharded) c->sum(Group::Shards, x_hat);
    // x_hat += b_dec (unless the sparse decode added it); r = x_hat - target; rec = sum r^2; and
    // grad_x_hat = 2 r, d rec / d x_hat, for the backward.
    const Tensor no_bias;
    decoder_residual_(x_hat, !sparse_ || sharded ? params.b_dec : no_bias, target, grad_x_hat, rec);
    lambda_ = lambda;
    if (keeps_sums_on_device()) return pending_sums(sums_, tokens_, sparse_);
    return read_sums();
  }

  StepSums read_sums() override {
    const std::vector<double> host = sums_.to_vector();
    StepSums s;
    s.rec = host[0];
    s.l1 = host[1];
    s.active = host[2];
    s.loss = loss_since_read(s.rec + lambda_ * s.l1);
    s.tokens = tokens_;
    s.sparse = sparse_;
    complete_step_sums(collectives_, s, lambda_, 0.0);
    return s;
  }

  std::vector<std::string> backward(const SaeParams& params, const Tensor& x, double lambda, SaeParams& grads,
                                    const FusedAdam* fused) override {
    // d rec / d x_hat = 2 r (the forward wrote it), and its column sums d rec / d b_dec.
    Tensor grad_x_hat = grad_x_hat_.slice_rows(0, tokens_);
    reduce_axis_(ReduceOp::sum, grads.b_dec, grad_x_hat, 0);
    if (!sparse_) {
      dense_backward(params, x, lambda, grads);
      return {};
    }
    const SaeAdamState* adam = fused ? fused->adam : nullptr;
    ParamUpdate W_dec = param_update(params.W_dec, grads.W_dec, adam ? adam->m.W_dec : Tensor(),
                                     adam ? adam->v.W_dec : Tensor(), fused);
    ParamUpdate W_enc = param_update(params.W_enc, grads.W_enc, adam ? adam->m.W_enc : Tensor(),
                                     adam ? adam->v.W_enc : Tensor(), fused);
    ParamUpdate b_enc = param_update(params.b_enc, grads.b_enc, adam ? adam->m.b_enc : Tensor(),
                                     adam ? adam->v.b_enc : Tensor(), fused);
    const SparseFeatures lists = lists_for_batch();
    sparse_decoder_backward_(dpre_, W_dec, grad_x_hat, lists, norms_, col_sum_, lambda);
    sparse_encoder_backward_(W_enc, b_enc, x, lists, dpre_);
    if (fused) return {"W_enc", "b_enc", "W_dec"};
    return {};
  }

  Tensor features() const override { return f_.slice_rows(0, tokens_); }
  Tensor reconstruction() const override { return x_hat_.slice_rows(0, tokens_); }
  Tensor output_gradient() const override { return grad_x_hat_.slice_rows(0, tokens_); }
  const Tensor& feature_counts() const override { return col_count_; }
  StepFeatures step_features() const override {
    StepFeatures out;
    out.tokens = tokens_;
    out.sparse = sparse_;
    if (sparse_)
      out.lists = lists_for_batch();
    else
      out.dense = features();
    return out;
  }

  double auto_max_density() const { return auto_max_density_; }
  void set_auto_max_density(double density) { auto_max_density_ = density; }

 private:
  // The penalty's sums (norms_ n_i, l1 = sum_i n_i sum_t f[t,i], active = sum_t,i [f > 0]) from
  // encoder_activate's column sums: one fused kernel, or for a crosscoder (n_i = sum_s ||W_dec[i,
  // block s]||) the ops one by one.
  void penalty_sums(const SaeParams& params, Tensor& l1, Tensor& active) {
    if (sources_ == 1) {
      decoder_penalty_(norms_, l1, active, params.W_dec, col_sum_, col_count_);
      return;
    }
    reduce_all_(ReduceOp::sum, active, col_count_);
    const int64_t f_count = params.d_sae(), width = params.d_out() / sources_;
    if (!block_norms_.defined() || block_norms_.numel() != f_count * sources_)
      block_norms_ = Tensor::zeros(Shape{f_count, sources_}, norms_.dtype(), norms_.device());
    Tensor flat = block_norms_.reshape(Shape{f_count * sources_});
    reduce_axis_(ReduceOp::norm2, flat, params.W_dec.reshape(Shape{f_count * sources_, width}), 1);
    reduce_axis_(ReduceOp::sum, norms_, block_norms_, 1);
    binary_(BinaryOp::mul, scratch_f_, col_sum_, norms_);
    reduce_all_(ReduceOp::sum, l1, scratch_f_);
  }

  // The dense backward (the five-GEMM path), after d rec / d x_hat.
  void dense_backward(const SaeParams& params, const Tensor& x, double lambda, SaeParams& grads) {
    const int64_t n = tokens_;
    if (!grad_f_.defined()) grad_f_ = Tensor::empty(f_.shape(), f_.dtype(), f_.device());  // written before read
    Tensor f = features(), grad_x_hat = grad_x_hat_.slice_rows(0, n), grad_f = grad_f_.slice_rows(0, n);
    const Tensor& W_dec = params.W_dec;
    matmul_(grads.W_dec, f, true, grad_x_hat, false);
    // L1 through the decoder norms: d(lambda sum_i s_i n_i)/dW_dec[i,:] = lambda s_i W_dec[i,:] / n_i
    // (a crosscoder's: lambda s_i W_dec[i, block s] / n_is for each block).
    if (sources_ == 1) {
      decoder_penalty_backward_(grads.W_dec, W_dec, norms_, col_sum_, lambda);
    } else {
      const int64_t f_count = W_dec.size(0), width = W_dec.size(1) / sources_;
      if (!block_scale_.defined()) block_scale_ = Tensor::zeros(block_norms_.shape(), norms_.dtype(), norms_.device());
      binary_(BinaryOp::maximum, block_scale_, block_norms_, tiny_);
      binary_(BinaryOp::div, block_scale_, col_sum_.reshape(Shape{f_count, 1}), block_scale_);
      affine_(block_scale_, block_scale_, lambda, 0.0);
      Tensor grad_blocks = grads.W_dec.reshape(Shape{f_count * sources_, width});
      add_scaled_rows_(grad_blocks, W_dec.reshape(Shape{f_count * sources_, width}),
                       block_scale_.reshape(Shape{f_count * sources_}));
    }
    // Back to the latents: df = dx_hat W_dec^T + lambda n, masked by f > 0.
    matmul_(grad_f, grad_x_hat, false, W_dec, true);
    encoder_backward_(grad_f, f, norms_, lambda, grads.b_enc);
    matmul_(grads.W_enc, x, true, grad_f, false);
  }

  // Room for `active` entries (read back as a float: exact below 2^24, within a few units above).
  void reserve_entries(double active) {
    const int64_t most = max_tokens_ * f_.size(1);
    const int64_t need = std::min(most, static_cast<int64_t>(active * (1.0 + 1e-6)) + 16);
    if (need <= capacity_) return;
    capacity_ = std::min(most, need + need / 4 + 1024);  // headroom: density drifts during training
    const Device device = f_.device();
    for (Tensor* t : {&lists_.rows, &lists_.vals, &lists_.cols, &lists_.row_vals, &dpre_})
      *t = Tensor();  // free the old lists before making the new ones
    lists_.rows = Tensor::empty(Shape{capacity_}, DType::I32, device);
    lists_.cols = Tensor::empty(Shape{capacity_}, DType::I32, device);
    lists_.vals = Tensor::empty(Shape{capacity_}, dtype_, device);
    lists_.row_vals = Tensor::empty(Shape{capacity_}, dtype_, device);
    dpre_ = Tensor::empty(Shape{capacity_}, dtype_, device);
  }

  SparseFeatures lists_for_batch() const {
    SparseFeatures s = lists_;
    s.row_ptr = lists_.row_ptr.slice_rows(0, tokens_ + 1);
    return s;
  }

  int64_t max_tokens_, tokens_ = 0;
  int64_t latents_;             // F of the whole SAE (a latent shard holds some of them)
  DType dtype_;                 // the SAE's; f_ and grad_f_ are in activation_dtype(dtype_)
  Tensor zero_d_;               // [D_out]: the partial decodes' bias
  Tensor f_, grad_f_;           // [max_tokens, F] (grad_f_ made on the first dense backward), bf16 at bf16
  Tensor x_hat_, grad_x_hat_;   // [max_tokens, D]
  Tensor col_sum_, col_count_;  // [F]: sum_t f[t,i], count_t f[t,i] > 0
  Tensor norms_, scratch_f_;    // [F]
  Tensor sums_;                 // [3]: rec, l1, active
  int64_t sources_ = 1;         // a crosscoder's sources (of the last forward's SAE)
  Tensor block_norms_, block_scale_;  // [F, sources]: crosscoders only
  Tensor tiny_;                 // [1]: floor for decoder norms in divisions
  SparseMode sparse_mode_;
  double auto_max_density_;
  bool sparse_ = false;         // the last forward took the sparse path
  double lambda_ = 0;           // the last forward's
  int64_t capacity_ = 0;        // entries the lists and dpre have room for
  SparseFeatures lists_;        // row_ptr [max_tokens+1]; lists_for_batch() views its first N+1
  Tensor dpre_;                 // [capacity_]: dLoss/dpre at each by-feature entry
};

class StandardUnit : public ArchUnit {
 public:
  bool fold_decoder_norms(SaeParams& p, const std::vector<double>& norms) const override {
    fold_dictionary_norms(p, norms, {});
    return true;
  }
  std::string name() const override { return "standard"; }
  std::string description() const override {
    return "f = relu(x W_enc + b_enc), loss = rec + lambda sum f ||W_dec[i]|| (the study's SAE)";
  }
  std::vector<ArchOption> option_rows() const override {
    ArchOption sparse{"sparse", "sparse",
                      "auto | on | off: sparse decoder and gradients, Adam fused in (auto: on steps whose feature "
                      "density is low)",
                      ArchValueType::Choice, "auto", {"auto", "on", "off"}};
    sparse.when_missing = "off";  // runs from before --sparse were dense
    return {sparse, init_tied_row(), init_b_dec_row()};
  }
  std::vector<std::string> reads() const override { return {"sparse", "init-tied", "init-b-dec"}; }
  DictionaryInit dictionary_init(const ArchSettings& s) const override {
    DictionaryInit init;
    init.tied = s.toggle("init-tied", false);  // the study's init unless asked
    const std::string& b_dec = s.text("init-b-dec");
    if (b_dec == "zero") init.b_dec = BDecInit::Zero;
    if (b_dec == "geometric_median") init.b_dec = BDecInit::GeometricMedian;
    return init;
  }
  std::unique_ptr<UnitStep> make_step(const ArchSettings& s, const StepShape& shape, DType dtype,
                                      Device device) const override {
    return std::make_unique<StandardStep>(parse_sparse_mode(s.text("sparse")), shape, dtype, device);
  }
  bool reports_aux() const override { return false; }
  std::string saelens_transcoder_architecture(bool skip) const override {
    return skip ? "skip_transcoder" : "transcoder";
  }
  bool trains_crosscoders() const override { return true; }
  void validate_crosscoder(const ArchSettings& s) const override {
    if (s.text("sparse") == "on")
      throw UsageError("--sparse on: a crosscoder's step is dense (its penalty weighs each latent by the sum of its "
                       "per-source decoder norms); use --sparse auto or off");
  }
  ReferenceLoss reference_loss(const ArchSettings&, const ArchVariables& p, const Tensor& x, const Tensor& target,
                               double lambda, const std::vector<uint8_t>*, const ArchFrozen*) const override {
    ReferenceLoss out;
    const Variable P = ag::matmul(p.encoder_input(x), p.W_enc) + p.b_enc;
    out.pre = P.data();
    const Variable f = ag::relu(P);
    // Sum the decoder rows' norms in first ([F]) and multiply by f after: never an [N, F, D] tensor.
    out.sparsity = ag::sum(f * decoder_norms(p.W_dec, p.sources));
    finish_reference(out, p, x, target, f, lambda);
    return out;
  }
  Tensor encode(const SaeParams& p, const Tensor& x) const override {
    check(p);
    return relu(add(matmul(x, p.W_enc), p.b_enc));
  }
};
}  // namespace

SparseMode parse_sparse_mode(const std::string& text) {
  if (text == "off") return SparseMode::Off;
  if (text == "on") return SparseMode::On;
  if (text == "auto") return SparseMode::Auto;
  throw UsageError(cat("--sparse: expected auto, on or off, got '", text, "'"));
}

const char* sparse_mode_name(SparseMode mode) {
  return mode == SparseMode::Off ? "off" : (mode == SparseMode::On ? "on" : "auto");
}

double auto_max_density(Device device) { return device == Device::CPU ? kAutoMaxDensityCpu : kAutoMaxDensityCuda; }

namespace {
StandardStep& standard_step(const UnitStep& step) {
  auto* s = dynamic_cast<const StandardStep*>(&step);
  if (!s) throw Error("not a standard SAE's step");
  return const_cast<StandardStep&>(*s);
}
}  // namespace

double sparse_auto_max_density(const UnitStep& step) { return standard_step(step).auto_max_density(); }
void set_sparse_auto_max_density(UnitStep& step, double density) { standard_step(step).set_auto_max_density(density); }

const ArchUnit& standard_unit() {
  static const StandardUnit unit;
  return unit;
}

}  // namespace sae
