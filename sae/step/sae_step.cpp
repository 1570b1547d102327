// SaeStep: see sae_step.h for the formulas, in the order they run here.
#include "sae/step/sae_step.h"

#include <cmath>

#include "sae/step/arch_step.h"
#include "sae/step/sae_ops.h"
#include "tensor/ops.h"

namespace sae {

namespace {
bool finite(const StepSums& s) { return std::isfinite(s.loss) && std::isfinite(s.rec) && std::isfinite(s.l1); }

// Auto mode's default density thresholds. CPU: measured (bench/bench_sparse.cpp BM_SparseCrossover,
// bench/RESULTS.md), the sparse step is faster below about 25% at 4096 tokens and 40% at 218.
// CUDA: not measured yet; a cautious guess until a GPU run of the same benchmark sets it.
constexpr double kAutoMaxDensityCpu = 0.2;
constexpr double kAutoMaxDensityCuda = 0.05;
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

SaeStep::SaeStep(int64_t max_tokens, int64_t d_in, int64_t d_sae, DType dtype, Device device, SparseMode sparse,
                 const ArchOptions& arch)
    : max_tokens_(max_tokens), sparse_mode_(sparse) {
  if (max_tokens <= 0) throw UsageError(cat("SaeStep: max_tokens must be positive, got ", max_tokens));
  auto_max_density_ = device == Device::CPU ? kAutoMaxDensityCpu : kAutoMaxDensityCuda;
  if (arch.architecture != Architecture::Standard) {
    arch_ = std::make_unique<ArchStep>(max_tokens, d_in, d_sae, dtype, device, arch);
    return;
  }
  f_ = Tensor::zeros(Shape{max_tokens, d_sae}, dtype, device);
  x_hat_ = Tensor::zeros(Shape{max_tokens, d_in}, dtype, device);
  grad_x_hat_ = Tensor::zeros(Shape{max_tokens, d_in}, dtype, device);
  col_sum_ = Tensor::zeros(Shape{d_sae}, dtype, device);
  col_count_ = Tensor::zeros(Shape{d_sae}, dtype, device);
  norms_ = Tensor::zeros(Shape{d_sae}, dtype, device);
  scratch_f_ = Tensor::zeros(Shape{d_sae}, dtype, device);
  sums_ = Tensor::zeros(Shape{3}, dtype, device);
  tiny_ = Tensor::full(Shape{1}, 1e-30, dtype, device);
  if (sparse != SparseMode::Off) {
    if (max_tokens * d_sae >= (int64_t(1) << 31))
      throw UsageError(cat("--sparse: ", max_tokens, " tokens x ", d_sae, " features do not fit int32 entry indices; "
                           "use smaller batches or --sparse off"));
    lists_.col_ptr = Tensor::empty(Shape{d_sae + 1}, DType::I32, device);
    lists_.row_ptr = Tensor::empty(Shape{max_tokens + 1}, DType::I32, device);
  }
}

SaeStep::~SaeStep() = default;

Tensor SaeStep::features() const { return arch_ ? arch_->features() : f_.slice_rows(0, tokens_); }
Tensor SaeStep::reconstruction() const { return arch_ ? arch_->reconstruction() : x_hat_.slice_rows(0, tokens_); }
const Tensor& SaeStep::feature_counts() const { return arch_ ? arch_->feature_counts() : col_count_; }
StepFeatures SaeStep::step_features() const {
  if (arch_) return arch_->step_features();
  StepFeatures out;
  out.tokens = tokens_;
  out.sparse = sparse_;
  if (sparse_)
    out.lists = lists_for_batch();
  else
    out.dense = features();
  return out;
}
std::vector<int64_t>& SaeStep::tokens_since_fired() { return arch_ ? arch_->tokens_since_fired() : no_clock_; }

SparseFeatures SaeStep::lists_for_batch() const {
  SparseFeatures s = lists_;
  s.row_ptr = lists_.row_ptr.slice_rows(0, tokens_ + 1);
  return s;
}

// Room for `active` entries (read back as a float: exact below 2^24, within a few units above).
void SaeStep::reserve_entries(double active) {
  const int64_t most = max_tokens_ * f_.size(1);
  const int64_t need = std::min(most, static_cast<int64_t>(active * (1.0 + 1e-6)) + 16);
  if (need <= capacity_) return;
  capacity_ = std::min(most, need + need / 4 + 1024);  // headroom: density drifts during training
  const Device device = f_.device();
  for (Tensor* t : {&lists_.rows, &lists_.vals, &lists_.cols, &lists_.row_vals, &dpre_})
    *t = Tensor();  // free the old lists before making the new ones
  lists_.rows = Tensor::empty(Shape{capacity_}, DType::I32, device);
  lists_.cols = Tensor::empty(Shape{capacity_}, DType::I32, device);
  lists_.vals = Tensor::empty(Shape{capacity_}, f_.dtype(), device);
  lists_.row_vals = Tensor::empty(Shape{capacity_}, f_.dtype(), device);
  dpre_ = Tensor::empty(Shape{capacity_}, f_.dtype(), device);
}

void SaeStep::run_forward(const SaeParams& params, const Tensor& x) {
  const int64_t n = x.size(0);
  if (x.ndim() != 2 || x.size(1) != params.d_in())
    throw Error(cat("SaeStep: batch ", x.describe(), " does not match d_in ", params.d_in()));
  if (n > max_tokens_) throw Error(cat("SaeStep: batch of ", n, " tokens exceeds the workspace (", max_tokens_, ")"));
  if (params.architecture != Architecture::Standard)
    throw Error(cat("SaeStep: made for the standard SAE, given a ", architecture_name(params.architecture), " SAE"));
  tokens_ = n;
  Tensor f = features(), x_hat = reconstruction(), grad_x_hat = grad_x_hat_.slice_rows(0, n);
  Tensor rec = sums_.slice_rows(0, 1), l1 = sums_.slice_rows(1, 2), active = sums_.slice_rows(2, 3);

  matmul_(f, x, false, params.W_enc, false);
  encoder_activate_(f, params.b_enc, col_sum_, col_count_);
  reduce_all_(ReduceOp::sum, active, col_count_);
  sparse_ = false;
  if (sparse_mode_ != SparseMode::Off && n > 0) {
    const double entries = active.item();  // one value back to the host
    sparse_ = sparse_mode_ == SparseMode::On || entries <= auto_max_density_ * double(n) * double(f.size(1));
    if (sparse_) {
      reserve_entries(entries);
      SparseFeatures lists = lists_for_batch();
      sparse_index_(lists, f, col_count_);
      sparse_decode_(x_hat, lists, params.W_dec, params.b_dec);
    }
  }
  if (!sparse_) {
    matmul_(x_hat, f, false, params.W_dec, false);
    add_(x_hat, params.b_dec);
  }
  binary_(BinaryOp::sub, grad_x_hat, x_hat, x);  // r = x_hat - x (scaled to 2r in backward)
  reduce_all_(ReduceOp::sum_squares, rec, grad_x_hat);
  reduce_axis_(ReduceOp::norm2, norms_, params.W_dec, 1);
  binary_(BinaryOp::mul, scratch_f_, col_sum_, norms_);
  reduce_all_(ReduceOp::sum, l1, scratch_f_);
}

StepSums SaeStep::read_sums(double l1_coefficient) {
  std::vector<double> host = sums_.to_vector();
  StepSums s;
  s.rec = host[0];
  s.l1 = host[1];
  s.active = host[2];
  s.loss = s.rec + l1_coefficient * s.l1;
  s.tokens = tokens_;
  s.sparse = sparse_;
  return s;
}

StepSums SaeStep::forward(const SaeParams& params, const Tensor& x, double l1_coefficient) {
  if (arch_) return arch_->forward(params, x, l1_coefficient);
  run_forward(params, x);
  return read_sums(l1_coefficient);
}

namespace {
ParamUpdate gradient_into(const Tensor& param, Tensor& grad) {
  ParamUpdate u;
  u.param = param;
  u.grad = grad;
  return u;
}

ParamUpdate adam_into(Tensor& param, Tensor& m, Tensor& v, const AdamScalars& scalars) {
  ParamUpdate u;
  u.param = param;
  u.m = m;
  u.v = v;
  u.adam = true;
  u.scalars = scalars;
  return u;
}
}  // namespace

// After run_forward: grad_x_hat becomes d rec / d x_hat = 2 r, and its column sums d rec / d b_dec.
void SaeStep::output_gradient(Tensor& grad_b_dec) {
  Tensor grad_x_hat = grad_x_hat_.slice_rows(0, tokens_);
  affine_(grad_x_hat, grad_x_hat, 2.0, 0.0);
  reduce_axis_(ReduceOp::sum, grad_b_dec, grad_x_hat, 0);
}

// The dense backward (the five-GEMM path), after output_gradient.
void SaeStep::dense_backward(const SaeParams& params, const Tensor& x, double l1_coefficient, SaeParams& grads) {
  const int64_t n = tokens_;
  if (!grad_f_.defined()) grad_f_ = Tensor::zeros(f_.shape(), f_.dtype(), f_.device());
  Tensor f = features(), grad_x_hat = grad_x_hat_.slice_rows(0, n), grad_f = grad_f_.slice_rows(0, n);
  const Tensor& W_dec = params.W_dec;

  matmul_(grads.W_dec, f, true, grad_x_hat, false);
  // L1 through the decoder norms: d(lambda sum_i s_i n_i)/dW_dec[i,:] = lambda s_i W_dec[i,:] / n_i
  binary_(BinaryOp::maximum, scratch_f_, norms_, tiny_);
  binary_(BinaryOp::div, scratch_f_, col_sum_, scratch_f_);
  affine_(scratch_f_, scratch_f_, l1_coefficient, 0.0);
  add_scaled_rows_(grads.W_dec, W_dec, scratch_f_);
  // Back to the features: df = dx_hat W_dec^T + lambda n, masked by f > 0.
  matmul_(grad_f, grad_x_hat, false, W_dec, true);
  affine_(scratch_f_, norms_, l1_coefficient, 0.0);
  encoder_backward_(grad_f, f, scratch_f_, grads.b_enc);
  matmul_(grads.W_enc, x, true, grad_f, false);
}

StepSums SaeStep::forward_backward(const SaeParams& params, const Tensor& x, double l1_coefficient, SaeParams& grads) {
  if (arch_) return arch_->forward_backward(params, x, l1_coefficient, grads);
  run_forward(params, x);
  output_gradient(grads.b_dec);
  if (!sparse_) {
    dense_backward(params, x, l1_coefficient, grads);
  } else {
    ParamUpdate W_dec = gradient_into(params.W_dec, grads.W_dec), W_enc = gradient_into(params.W_enc, grads.W_enc);
    ParamUpdate b_enc = gradient_into(params.b_enc, grads.b_enc);
    const SparseFeatures lists = lists_for_batch();
    sparse_decoder_backward_(dpre_, W_dec, grad_x_hat_.slice_rows(0, tokens_), lists, norms_, col_sum_,
                             l1_coefficient);
    sparse_encoder_backward_(W_enc, b_enc, x, lists, dpre_);
  }
  return read_sums(l1_coefficient);
}

StepSums SaeStep::train_step(SaeParams& params, SaeAdamState& adam, const Tensor& x, double l1_coefficient,
                             double lr) {
  if (arch_) return arch_->train_step(params, adam, x, l1_coefficient, lr);
  if (!grads_.W_enc.defined()) grads_ = SaeParams::zeros_like(params);
  run_forward(params, x);
  const StepSums sums = read_sums(l1_coefficient);
  if (!finite(sums)) return sums;
  output_gradient(grads_.b_dec);
  const AdamScalars scalars = adam.next_step(lr);
  if (!sparse_) {
    dense_backward(params, x, l1_coefficient, grads_);
    for (int i = 0; i < 4; ++i)
      adam_step_(*params.all()[i], *adam.m.all()[i], *adam.v.all()[i], *grads_.all()[i], scalars);
    return sums;
  }
  ParamUpdate W_dec = adam_into(params.W_dec, adam.m.W_dec, adam.v.W_dec, scalars);
  ParamUpdate W_enc = adam_into(params.W_enc, adam.m.W_enc, adam.v.W_enc, scalars);
  ParamUpdate b_enc = adam_into(params.b_enc, adam.m.b_enc, adam.v.b_enc, scalars);
  const SparseFeatures lists = lists_for_batch();
  sparse_decoder_backward_(dpre_, W_dec, grad_x_hat_.slice_rows(0, tokens_), lists, norms_, col_sum_, l1_coefficient);
  sparse_encoder_backward_(W_enc, b_enc, x, lists, dpre_);
  adam_step_(params.b_dec, adam.m.b_dec, adam.v.b_dec, grads_.b_dec, scalars);
  return sums;
}

}  // namespace sae
