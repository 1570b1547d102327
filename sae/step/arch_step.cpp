// ArchStep: see arch_step.h for the formulas, in the order they run here.
#include "sae/step/arch_step.h"

#include <algorithm>
#include <cmath>

#include "sae/arch_model.h"
#include "sae/step/sae_ops.h"
#include "tensor/ops.h"

namespace sae {

namespace {
ParamUpdate gradient_into(const Tensor& param, Tensor& grad) {
  ParamUpdate u;
  u.param = param;
  u.grad = grad;
  return u;
}

// The parameter's handle shares its storage: Adam updates the caller's tensor.
ParamUpdate adam_into(const Tensor& param, const Tensor& m, const Tensor& v, const AdamScalars& scalars) {
  ParamUpdate u;
  u.param = param;
  u.m = m;
  u.v = v;
  u.adam = true;
  u.scalars = scalars;
  return u;
}

// Reduces x into element `slot` of sums (a [4] scratch tensor).
void reduce_into(ReduceOp op, Tensor& sums, int64_t slot, const Tensor& x) {
  Tensor out = sums.slice_rows(slot, slot + 1);
  reduce_all_(op, out, x);
}

Tensor zero_indices(int64_t count, Device device) {
  return Tensor::from_vector(std::vector<double>(count, 0.0), Shape{count}, DType::I32, device);
}

int32_t read_index(const Tensor& row_ptr, int64_t at) {
  return static_cast<int32_t>(row_ptr.slice_rows(at, at + 1).item());
}
}  // namespace

ArchStep::ArchStep(int64_t max_tokens, int64_t d_in, int64_t d_sae, DType dtype, Device device,
                   const ArchOptions& options)
    : options_(options), max_tokens_(max_tokens), d_in_(d_in), d_sae_(d_sae) {
  const Architecture a = options.architecture;
  if (a == Architecture::Standard) throw Error("ArchStep: the standard SAE runs in SaeStep");
  if (max_tokens <= 0 || d_in <= 0 || d_sae <= 0)
    throw UsageError(cat("ArchStep: max_tokens, d_in and d_sae must be positive, got ", max_tokens, ", ", d_in, ", ",
                         d_sae));
  sparse_ = is_topk_family(a);
  const bool auxk = sparse_ && options.auxk_coefficient > 0;
  if (sparse_ && (options.k < 1 || options.k > d_sae))
    throw UsageError(cat("--k must be in [1, ", d_sae, "] (the number of features), got ", options.k));
  if (a == Architecture::JumpReLU && !(options.jumprelu_bandwidth > 0))
    throw UsageError(cat("--jumprelu-bandwidth must be > 0, got ", options.jumprelu_bandwidth));
  k_aux_ = auxk ? std::min(d_sae, options.auxk_k > 0 ? options.auxk_k : std::max<int64_t>(1, d_in / 2)) : 0;
  if (sparse_ && (auxk ? 2 : 1) * max_tokens * d_sae >= (int64_t(1) << 31))
    throw UsageError(cat("--architecture ", architecture_name(a), ": ", max_tokens, " tokens x ", d_sae,
                         " features do not fit int32 entry indices; use smaller batches"));

  pre_ = Tensor::zeros(Shape{max_tokens, d_sae}, dtype, device);
  x_hat_ = Tensor::zeros(Shape{max_tokens, d_in}, dtype, device);
  grad_x_hat_ = Tensor::zeros(Shape{2 * max_tokens, d_in}, dtype, device);
  scratch_rows_ = Tensor::zeros(Shape{max_tokens, d_in}, dtype, device);
  col_mean_ = Tensor::zeros(Shape{d_in}, dtype, device);
  zero_d_ = Tensor::zeros(Shape{d_in}, dtype, device);
  for (Tensor* t : {&col_sum_, &col_count_, &col_a_, &col_b_, &all_sum_, &all_count_, &norms_, &scale_, &dead_flags_})
    *t = Tensor::zeros(Shape{d_sae}, dtype, device);
  tiny_ = Tensor::full(Shape{1}, 1e-30, dtype, device);
  sums_ = Tensor::zeros(Shape{4}, dtype, device);
  if (sparse_) {
    const int64_t capacity = max_tokens * (std::min(options.k, d_sae) + k_aux_);
    lists_.col_ptr = zero_indices(d_sae + 1, device);
    lists_.row_ptr = zero_indices(2 * max_tokens + 1, device);
    lists_.rows = zero_indices(capacity, device);
    lists_.cols = zero_indices(capacity, device);
    lists_.vals = Tensor::zeros(Shape{capacity}, dtype, device);
    lists_.row_vals = Tensor::zeros(Shape{capacity}, dtype, device);
    dpre_ = Tensor::zeros(Shape{capacity}, dtype, device);
  } else {
    f_ = Tensor::zeros(Shape{max_tokens, d_sae}, dtype, device);
    grad_ = Tensor::zeros(Shape{max_tokens, d_sae}, dtype, device);
    if (a == Architecture::Gated) gate_ = Tensor::zeros(Shape{max_tokens, d_sae}, dtype, device);
  }
  if (auxk) tokens_since_fired_.assign(d_sae, 0);
}

SparseFeatures ArchStep::lists(int64_t row0, int64_t rows) const {
  SparseFeatures s = lists_;
  s.row_ptr = lists_.row_ptr.slice_rows(row0, row0 + rows + 1);
  return s;
}

StepFeatures ArchStep::step_features() const {
  StepFeatures out;
  out.tokens = tokens_;
  out.sparse = sparse_;
  if (sparse_)
    out.lists = lists_;  // by feature: rows >= tokens_ are AuxK's when aux_rows_
  else
    out.dense = f_.slice_rows(0, tokens_);
  return out;
}

JumpReluConstants ArchStep::jumprelu_constants(double lambda) const {
  JumpReluConstants c;
  c.tanh = options_.jumprelu_penalty == JumpReluPenalty::Tanh;
  c.ste_to_input = options_.jumprelu_ste_to_input;
  c.lambda = lambda;
  c.pre_act = options_.jumprelu_pre_act;
  c.tanh_c = options_.jumprelu_tanh_c;
  c.bandwidth = options_.jumprelu_bandwidth;
  return c;
}

// ---------------------------------------------------------------- forward

void ArchStep::run_forward(const SaeParams& params, const Tensor& x, bool advance_clock) {
  if (params.architecture != options_.architecture)
    throw Error(cat("ArchStep: made for ", architecture_name(options_.architecture), ", given a ",
                    architecture_name(params.architecture), " SAE"));
  params.check();
  if (params.d_in() != d_in_ || params.d_sae() != d_sae_)
    throw Error(cat("ArchStep: made for d_in ", d_in_, ", d_sae ", d_sae_, "; the SAE has ", params.d_in(), ", ",
                    params.d_sae()));
  if (x.ndim() != 2 || x.size(1) != d_in_)
    throw Error(cat("ArchStep: batch ", x.describe(), " does not match d_in ", d_in_));
  if (x.size(0) > max_tokens_)
    throw Error(cat("ArchStep: batch of ", x.size(0), " tokens exceeds the workspace (", max_tokens_, ")"));
  tokens_ = x.size(0);
  aux_ = sparsity_ = 0;
  Tensor pre = pre_.slice_rows(0, tokens_);
  matmul_(pre, x, false, params.W_enc, false);
  reduce_axis_(ReduceOp::norm2, norms_, params.W_dec, 1);
  if (sparse_)
    sparse_forward(params, x, advance_clock);
  else if (options_.architecture == Architecture::JumpReLU)
    jumprelu_forward(params, x);
  else
    gated_forward(params, x);
}

void ArchStep::sparse_forward(const SaeParams& params, const Tensor& x, bool advance_clock) {
  const int64_t n = tokens_;
  Tensor pre = pre_.slice_rows(0, n), x_hat = x_hat_.slice_rows(0, n), r = grad_x_hat_.slice_rows(0, n);
  Tensor one = sums_.slice_rows(0, 1);
  // The kept latents: rows 0 .. N-1 of the lists; then by feature (which also counts them).
  SparseFeatures main = lists(0, n);
  if (options_.architecture == Architecture::TopK)
    topk_select_(main, pre, params.b_enc, Tensor(), options_.k, 0);
  else
    batchtopk_select_(main, pre, params.b_enc, options_.k * n);
  main_entries_ = all_entries_ = read_index(lists_.row_ptr, n);
  sparse_by_feature_(main, col_sum_, col_count_);
  sparse_decode_(x_hat, main, params.W_dec, params.b_dec);
  binary_(BinaryOp::sub, r, x_hat, x);
  reduce_all_(ReduceOp::sum_squares, one, r);
  rec_ = one.item();
  active_ = double(main_entries_);
  if (options_.architecture == Architecture::BatchTopK && main_entries_ > 0) {
    reduce_all_(ReduceOp::min, one, lists_.row_vals.slice_rows(0, main_entries_));
    min_positive_ = one.item();
  }
  aux_rows_ = false;
  if (k_aux_ == 0) return;

  // AuxK: the dead mask counts this batch's firings; the dead latents' k_aux largest P per token.
  std::vector<uint8_t> fired(d_sae_);
  const std::vector<double> counts = col_count_.to_vector();
  for (int64_t i = 0; i < d_sae_; ++i) fired[i] = counts[i] > 0;
  std::vector<int64_t> clock = tokens_since_fired_;
  dead_ = dead_after_batch(clock, fired, n, options_.dead_tokens);
  if (advance_clock) tokens_since_fired_ = clock;
  int64_t n_dead = 0;
  for (uint8_t d : dead_) n_dead += d;
  if (n_dead == 0 || n == 0) return;
  copy_(dead_flags_, Tensor::from_vector(std::vector<double>(dead_.begin(), dead_.end()), Shape{d_sae_},
                                         dead_flags_.dtype(), Device::CPU)
                         .to(dead_flags_.device()));
  SparseFeatures all = lists(0, 2 * n);
  topk_select_(all, pre, params.b_enc, dead_flags_, std::min(k_aux_, n_dead), n);
  all_entries_ = read_index(lists_.row_ptr, 2 * n);
  if (all_entries_ == main_entries_) return;
  // e_hat = a W_dec (no b_dec) in the rows below r; Z = sum (e - mean_t e)^2 = sum (r - mean_t r)^2.
  Tensor e_hat = grad_x_hat_.slice_rows(n, 2 * n), centred = scratch_rows_.slice_rows(0, n);
  SparseFeatures aux = lists(n, n);
  sparse_decode_(e_hat, aux, params.W_dec, zero_d_);
  reduce_axis_(ReduceOp::mean, col_mean_, r, 0);
  binary_(BinaryOp::sub, centred, r, col_mean_);
  reduce_all_(ReduceOp::sum_squares, one, centred);
  const double Z = one.item();
  if (!(Z > 0)) return;  // the peers' nan_to_num: no term
  binary_(BinaryOp::add, e_hat, e_hat, r);  // e_hat - e, with e = -r
  reduce_all_(ReduceOp::sum_squares, one, e_hat);
  const double scale = options_.auxk_coefficient * double(n) / Z;
  aux_ = scale * one.item();
  affine_(e_hat, e_hat, 2.0 * scale, 0.0);  // dL/de_hat
  sparse_by_feature_(all, all_sum_, all_count_);  // both blocks of rows, for the backward
  aux_rows_ = true;
}

void ArchStep::jumprelu_forward(const SaeParams& params, const Tensor& x) {
  const int64_t n = tokens_;
  Tensor pre = pre_.slice_rows(0, n), f = f_.slice_rows(0, n), x_hat = x_hat_.slice_rows(0, n);
  Tensor r = grad_x_hat_.slice_rows(0, n);
  jumprelu_forward_(f, pre, params.b_enc, params.log_threshold, norms_, jumprelu_constants(0.0), col_count_, col_a_,
                    col_b_);
  matmul_(x_hat, f, false, params.W_dec, false);
  add_(x_hat, params.b_dec);
  binary_(BinaryOp::sub, r, x_hat, x);
  reduce_into(ReduceOp::sum_squares, sums_, 0, r);
  reduce_into(ReduceOp::sum, sums_, 1, col_count_);
  reduce_into(ReduceOp::sum, sums_, 2, col_a_);
  binary_(BinaryOp::mul, scale_, col_b_, norms_);
  reduce_into(ReduceOp::sum, sums_, 3, scale_);
  const std::vector<double> s = sums_.to_vector();
  rec_ = s[0];
  active_ = s[1];
  sparsity_ = s[2];
  aux_ = options_.jumprelu_penalty == JumpReluPenalty::Tanh ? options_.jumprelu_pre_act * s[3] : 0.0;
}

void ArchStep::gated_forward(const SaeParams& params, const Tensor& x) {
  const int64_t n = tokens_;
  Tensor pre = pre_.slice_rows(0, n), f = f_.slice_rows(0, n), gate = gate_.slice_rows(0, n);
  Tensor x_hat = x_hat_.slice_rows(0, n), r = grad_x_hat_.slice_rows(0, n), r_gate = scratch_rows_.slice_rows(0, n);
  gated_forward_(f, gate, pre, params.b_gate, params.b_mag, params.r_mag, col_count_, col_a_);
  matmul_(x_hat, f, false, params.W_dec, false);
  add_(x_hat, params.b_dec);
  binary_(BinaryOp::sub, r, x_hat, x);
  // The auxiliary reconstruction from relu(pi_gate): r_gate = gate W_dec + b_dec - x.
  matmul_(r_gate, gate, false, params.W_dec, false);
  add_(r_gate, params.b_dec);
  binary_(BinaryOp::sub, r_gate, r_gate, x);
  reduce_into(ReduceOp::sum_squares, sums_, 0, r);
  reduce_into(ReduceOp::sum, sums_, 1, col_count_);
  binary_(BinaryOp::mul, scale_, col_a_, norms_);
  reduce_into(ReduceOp::sum, sums_, 2, scale_);
  reduce_into(ReduceOp::sum_squares, sums_, 3, r_gate);
  const std::vector<double> s = sums_.to_vector();
  rec_ = s[0];
  active_ = s[1];
  sparsity_ = s[2];
  aux_ = s[3];
}

StepSums ArchStep::sums(double lambda) const {
  StepSums s;
  s.rec = rec_;
  s.l1 = sparsity_;
  s.aux = aux_;
  s.loss = rec_ + lambda * sparsity_ + aux_;
  s.active = active_;
  s.tokens = tokens_;
  s.sparse = sparse_;
  return s;
}

// ---------------------------------------------------------------- backward

void ArchStep::sparse_backward(const SaeParams& params, const Tensor& x, SaeParams& grads, SaeAdamState* adam,
                               const AdamScalars& scalars) {
  const int64_t n = tokens_;
  Tensor dx = grad_x_hat_.slice_rows(0, n);
  affine_(dx, dx, 2.0, 0.0);
  reduce_axis_(ReduceOp::sum, grads.b_dec, dx, 0);
  // With AuxK rows the lists, the output gradients and the inputs are two stacked blocks of N rows.
  const int64_t rows = aux_rows_ ? 2 * n : n;
  Tensor inputs = x;
  if (aux_rows_) {
    if (!x_stacked_.defined()) x_stacked_ = Tensor::zeros(grad_x_hat_.shape(), x.dtype(), x.device());
    Tensor top = x_stacked_.slice_rows(0, n), bottom = x_stacked_.slice_rows(n, 2 * n);
    copy_(top, x);
    copy_(bottom, x);
    inputs = x_stacked_.slice_rows(0, 2 * n);
  }
  const SparseFeatures by_feature = lists(0, rows);
  ParamUpdate W_dec, W_enc, b_enc;
  if (adam) {
    W_dec = adam_into(params.W_dec, adam->m.W_dec, adam->v.W_dec, scalars);
    W_enc = adam_into(params.W_enc, adam->m.W_enc, adam->v.W_enc, scalars);
    b_enc = adam_into(params.b_enc, adam->m.b_enc, adam->v.b_enc, scalars);
  } else {
    W_dec = gradient_into(params.W_dec, grads.W_dec);
    W_enc = gradient_into(params.W_enc, grads.W_enc);
    b_enc = gradient_into(params.b_enc, grads.b_enc);
  }
  Tensor dpre = dpre_;
  sparse_decoder_backward_(dpre, W_dec, grad_x_hat_.slice_rows(0, rows), by_feature, norms_,
                           aux_rows_ ? all_sum_ : col_sum_, 0.0, options_.unit_norm_decoder);
  sparse_encoder_backward_(W_enc, b_enc, inputs, by_feature, dpre);
}

void ArchStep::dense_backward(const SaeParams& params, const Tensor& x, double lambda, SaeParams& grads) {
  const int64_t n = tokens_;
  Tensor dx = grad_x_hat_.slice_rows(0, n), f = f_.slice_rows(0, n), grad = grad_.slice_rows(0, n);
  affine_(dx, dx, 2.0, 0.0);
  reduce_axis_(ReduceOp::sum, grads.b_dec, dx, 0);
  matmul_(grads.W_dec, f, true, dx, false);
  matmul_(grad, dx, false, params.W_dec, true);  // dL/df from the reconstruction
  if (options_.architecture == Architecture::JumpReLU) {
    jumprelu_backward_(grad, pre_.slice_rows(0, n), params.log_threshold, norms_, jumprelu_constants(lambda),
                       grads.b_enc, grads.log_threshold, scale_);
  } else {
    // L1 of relu(pi_gate) through the decoder norms: lambda (sum_t gate) W_dec[i,:] / n_i.
    affine_(scale_, col_a_, lambda, 0.0);
    Tensor gate = gate_.slice_rows(0, n), d_gate = scratch_rows_.slice_rows(0, n);
    affine_(d_gate, d_gate, 2.0, 0.0);                 // d aux / d x_gate
    matmul_(gate, d_gate, false, params.W_dec, true);  // d aux / d gate, through the frozen decoder
    gated_backward_(grad, gate, pre_.slice_rows(0, n), params.b_gate, params.b_mag, params.r_mag, norms_, lambda,
                    grads.b_gate, grads.b_mag, grads.r_mag);
  }
  // The decoder-norm terms: scale_i u_i = (scale_i / n_i) W_dec[i,:].
  Tensor safe_norms = col_b_;  // col_b_ is not needed after the forward's sums
  binary_(BinaryOp::maximum, safe_norms, norms_, tiny_);
  binary_(BinaryOp::div, scale_, scale_, safe_norms);
  add_scaled_rows_(grads.W_dec, params.W_dec, scale_);
  matmul_(grads.W_enc, x, true, grad, false);
}

// ---------------------------------------------------------------- the three entry points

StepSums ArchStep::forward(const SaeParams& params, const Tensor& x, double lambda) {
  run_forward(params, x, false);
  return sums(lambda);
}

StepSums ArchStep::forward_backward(const SaeParams& params, const Tensor& x, double lambda, SaeParams& grads) {
  run_forward(params, x, true);
  if (sparse_)
    sparse_backward(params, x, grads, nullptr, AdamScalars{});
  else
    dense_backward(params, x, lambda, grads);
  if (options_.unit_norm_decoder && !sparse_) decoder_project_(grads.W_dec, params.W_dec, norms_);
  return sums(lambda);
}

StepSums ArchStep::train_step(SaeParams& params, SaeAdamState& adam, const Tensor& x, double lambda, double lr) {
  if (!grads_.W_enc.defined()) grads_ = SaeParams::zeros_like(params);
  const std::vector<int64_t> clock_before = tokens_since_fired_;
  run_forward(params, x, true);
  const StepSums s = sums(lambda);
  if (!std::isfinite(s.loss) || !std::isfinite(s.rec) || !std::isfinite(s.l1) || !std::isfinite(s.aux)) {
    tokens_since_fired_ = clock_before;
    return s;
  }
  const AdamScalars scalars = adam.next_step(lr);
  if (sparse_) {
    sparse_backward(params, x, grads_, &adam, scalars);
    adam_step_(params.b_dec, adam.m.b_dec, adam.v.b_dec, grads_.b_dec, scalars);
  } else {
    dense_backward(params, x, lambda, grads_);
    if (options_.unit_norm_decoder) decoder_project_(grads_.W_dec, params.W_dec, norms_);
    std::vector<std::pair<const char*, Tensor*>> p = params.present(), m = adam.m.present(), v = adam.v.present(),
                                                 g = grads_.present();
    for (size_t i = 0; i < p.size(); ++i) adam_step_(*p[i].second, *m[i].second, *v[i].second, *g[i].second, scalars);
    if (options_.unit_norm_decoder) decoder_normalize_(params.W_dec);
  }
  // BatchTopK's inference threshold, from this step's f (the parameters before the update).
  if (options_.architecture == Architecture::BatchTopK && main_entries_ > 0) {
    const double rate = options_.batchtopk_threshold_lr;
    params.batchtopk_threshold = params.batchtopk_threshold > 0
                                     ? (1.0 - rate) * params.batchtopk_threshold + rate * min_positive_
                                     : min_positive_;
  }
  return s;
}

// ---------------------------------------------------------------- views

namespace {
// Dense [rows, F] from by-token lists rows row0 .. row0+rows-1 (made on the host).
Tensor dense_from_lists(const SparseFeatures& s, int64_t row0, int64_t rows, int64_t features, const Tensor& like) {
  std::vector<double> out(rows * features, 0.0);
  if (rows > 0) {
    const std::vector<double> ptr = s.row_ptr.slice_rows(row0, row0 + rows + 1).to_vector();
    const int64_t end = static_cast<int64_t>(ptr[rows]);
    if (end > 0) {
      const std::vector<double> cols = s.cols.slice_rows(0, end).to_vector();
      const std::vector<double> vals = s.row_vals.slice_rows(0, end).to_vector();
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t e = static_cast<int64_t>(ptr[r]); e < static_cast<int64_t>(ptr[r + 1]); ++e)
          out[r * features + static_cast<int64_t>(cols[e])] = vals[e];
    }
  }
  return Tensor::from_vector(out, Shape{rows, features}, like.dtype(), like.device());
}
}  // namespace

Tensor ArchStep::features() const {
  if (!sparse_) return f_.slice_rows(0, tokens_);
  return dense_from_lists(lists_, 0, tokens_, d_sae_, pre_);
}

Tensor ArchStep::aux_activations() const {
  if (!sparse_ || all_entries_ == main_entries_)
    return Tensor::zeros(Shape{tokens_, d_sae_}, pre_.dtype(), pre_.device());
  return dense_from_lists(lists_, tokens_, tokens_, d_sae_, pre_);
}

}  // namespace sae
