// SaeStep (see sae_step.h).
#include "sae/arch/sae_step.h"

#include <algorithm>
#include <cmath>

#include "tensor/ops.h"

namespace sae {

SaeStep::SaeStep(const ArchUnit& unit, const ArchSettings& settings, const StepShape& shape, DType dtype,
                 Device device)
    : unit_(unit), shape_(shape) {
  if (shape.max_tokens <= 0 || shape.d_in <= 0 || shape.d_out <= 0 || shape.d_sae <= 0)
    throw UsageError(cat("SaeStep: max_tokens, d_in, d_out and d_sae must be positive, got ", shape.max_tokens, ", ",
                         shape.d_in, ", ", shape.d_out, ", ", shape.d_sae));
  step_ = unit.make_step(settings, shape, dtype, device);
}

SaeStep::SaeStep(const ArchUnit& unit, const ArchSettings& settings, int64_t max_tokens, int64_t d_in, int64_t d_sae,
                 DType dtype, Device device)
    : SaeStep(unit, settings, StepShape{max_tokens, d_in, d_in, d_sae}, dtype, device) {}

void SaeStep::check(const SaeParams& params, const Tensor& x, const Tensor& target) const {
  if (shape_.total_latents() == shape_.d_sae) {
    unit_.check(params);
  } else {  // a latent shard: its settings are the whole SAE's (topk's k may exceed its latents)
    if (params.kind != unit_.name())
      throw DataError(cat("SAE: a ", params.kind, " SAE given to the ", unit_.name(), " architecture"));
    params.check_shapes(unit_.has_b_enc(), unit_.own_tensors());
  }
  if (params.d_in() != shape_.d_in || params.d_out() != shape_.d_out || params.d_sae() != shape_.d_sae)
    throw Error(cat("SaeStep: made for d_in ", shape_.d_in, ", d_out ", shape_.d_out, ", d_sae ", shape_.d_sae,
                    "; the SAE has ", params.d_in(), ", ", params.d_out(), ", ", params.d_sae()));
  if (x.ndim() != 2 || x.size(1) != shape_.d_in)
    throw Error(cat("SaeStep: batch ", x.describe(), " does not match d_in ", shape_.d_in));
  if (target.ndim() != 2 || target.size(1) != shape_.d_out || target.size(0) != x.size(0))
    throw Error(cat("SaeStep: target ", target.describe(), " does not match ", x.size(0), " tokens of d_out ",
                    shape_.d_out));
  if (x.size(0) > shape_.max_tokens)
    throw Error(cat("SaeStep: batch of ", x.size(0), " tokens exceeds the workspace (", shape_.max_tokens, ")"));
}

Tensor SaeStep::unit_target(const SaeParams& params, const Tensor& x, const Tensor& target) {
  skipped_ = params.W_skip.defined();
  tokens_ = x.size(0);
  if (!skipped_) return target;
  if (!skip_out_.defined()) {
    skip_out_ = Tensor::zeros(Shape{shape_.max_tokens, shape_.d_out}, x.dtype(), x.device());
    skip_target_ = Tensor::zeros(Shape{shape_.max_tokens, shape_.d_out}, x.dtype(), x.device());
  }
  Tensor out = skip_out_.slice_rows(0, tokens_), reduced = skip_target_.slice_rows(0, tokens_);
  matmul_(out, x, false, params.W_skip, false);
  binary_(BinaryOp::sub, reduced, target, out);
  return reduced;
}

void SaeStep::set_input_centring(bool on) {
  if (on && shape_.d_in != shape_.d_out)
    throw UsageError("--apply-b-dec-to-input: an SAE's only (the encoder sees x - b_dec; a transcoder's or a "
                     "crosscoder's b_dec is not of its input, and SAELens refuses it for them too)");
  if (on && grads_made_ && !centring_)
    throw Error("SaeStep: input centring set after the first training step");
  centring_ = on;
}

Tensor SaeStep::unit_input(const SaeParams& params, const Tensor& x) {
  if (!centring_) return x;
  if (params.W_skip.defined() || params.transcoder || params.sources > 1)
    throw UsageError("--apply-b-dec-to-input: an SAE's only (not a transcoder's, a skip path's or a crosscoder's)");
  if (!centred_.defined()) centred_ = Tensor::zeros(Shape{shape_.max_tokens, shape_.d_in}, x.dtype(), x.device());
  Tensor out = centred_.slice_rows(0, x.size(0));
  binary_(BinaryOp::sub, out, x, params.b_dec);
  return out;
}

void SaeStep::centring_gradient(const SaeParams& params, SaeParams& grads) const {
  if (!centring_) return;
  Tensor input = unit_.encoder_input_gradient(params, grads);
  Collectives* c = step_->collectives();
  if (spans(c, Group::Shards)) c->sum(Group::Shards, input);  // each shard's latents' part
  binary_(BinaryOp::sub, grads.b_dec, grads.b_dec, input);
}

StepSums SaeStep::run_forward(const SaeParams& params, const Tensor& x, const Tensor& target, double lambda,
                              bool train) {
  check(params, x, target);
  return step_->forward(params, unit_input(params, x), unit_target(params, x, target), lambda, train);
}

Tensor SaeStep::reconstruction() const {
  if (!skipped_) return step_->reconstruction();
  Tensor with_skip = skip_target_.slice_rows(0, tokens_);  // the unit's target is no longer needed
  binary_(BinaryOp::add, with_skip, step_->reconstruction(), skip_out_.slice_rows(0, tokens_));
  return with_skip;
}

void SaeStep::skip_gradient(const Tensor& x, SaeParams& grads) const {
  if (skipped_) matmul_(grads.W_skip, x, true, step_->output_gradient(), false);
}

void SaeStep::set_collectives(Collectives* c) { step_->set_collectives(c); }

StepSums SaeStep::forward(const SaeParams& params, const Tensor& x, double lambda) {
  return forward(params, x, x, lambda);
}

StepSums SaeStep::forward(const SaeParams& params, const Tensor& x, const Tensor& target, double lambda) {
  return run_forward(params, x, target, lambda, false);
}

StepSums SaeStep::forward_backward(const SaeParams& params, const Tensor& x, double lambda, SaeParams& grads) {
  return forward_backward(params, x, x, lambda, grads);
}

StepSums SaeStep::forward_backward(const SaeParams& params, const Tensor& x, const Tensor& target, double lambda,
                                   SaeParams& grads) {
  const StepSums sums = run_forward(params, x, target, lambda, true);
  step_->backward(params, centring_ ? centred_.slice_rows(0, x.size(0)) : x, lambda, grads, nullptr);
  skip_gradient(x, grads);
  centring_gradient(params, grads);
  return sums;
}

StepSums SaeStep::train_step(SaeParams& params, SaeAdamState& adam, const Tensor& x, double lambda, double lr) {
  return train_step(params, adam, x, x, lambda, lr);
}

StepSums SaeStep::train_step(SaeParams& params, SaeAdamState& adam, const Tensor& x, const Tensor& target,
                             double lambda, double lr) {
  Collectives* c = step_->collectives();
  const bool replicated = spans(c, Group::Replicas), clipped = max_grad_norm_ > 0;
  const bool every_gradient = keeps_every_gradient(replicated, max_grad_norm_, centring_);
  if (!grads_made_) {
    // Gradient buffers for what Adam is applied to here, not for what the unit's kernels update;
    // with replicas every gradient is summed over them first, and a clip scales every one, so every
    // one gets a buffer.
    const std::vector<std::string> fused = every_gradient ? std::vector<std::string>{} : step_->always_fused();
    grads_ = params;  // handles: each is replaced below, params keep their storage
    for (auto& [name, t] : grads_.present())
      *t = std::find(fused.begin(), fused.end(), name) != fused.end() ? Tensor()
                                                                      : Tensor::zeros(t->shape(), t->dtype(), t->device());
    grads_made_ = true;
  }
  const StepSums sums = run_forward(params, x, target, lambda, true);
  if (!sums.pending && !finite(sums)) {
    step_->undo_forward();
    return sums;
  }
  FusedAdam fused;
  fused.adam = &adam;
  fused.scalars = adam.next_step(lr);
  const std::vector<std::string> done = step_->backward(
      params, centring_ ? centred_.slice_rows(0, x.size(0)) : x, lambda, grads_, every_gradient ? nullptr : &fused);
  skip_gradient(x, grads_);
  centring_gradient(params, grads_);
  auto p = params.present(), m = adam.m.present(), v = adam.v.present(), g = grads_.present();
  if (replicated)
    for (auto& [name, grad] : g) c->sum(Group::Replicas, *grad);
  if (clipped) {
    // The global squared norm, summed on the device and read back once: on latent shards each holds
    // its latents' part (summed over the shards) and the whole of b_dec / W_skip (counted once); the
    // batch's N tokens are summed over the replicas, whose gradient is already the batch's.
    Tensor latent_squares, whole_squares;
    for (auto& [name, grad] : g) {
      Tensor& into = SaeParams::latent_axis(name) >= 0 ? latent_squares : whole_squares;
      const Tensor squares = reduce(ReduceOp::sum_squares, *grad);  // one element, no [d, F] temporary
      into = into.defined() ? into + squares : squares;
    }
    const auto read = [](const Tensor& t) { return t.defined() ? t.to(Device::CPU).to_vector().at(0) : 0.0; };
    double latent = read(latent_squares), n = double(x.size(0));
    if (spans(c, Group::Shards)) c->sum(Group::Shards, &latent, 1);
    if (replicated) c->sum(Group::Replicas, &n, 1);
    const double norm = std::sqrt(latent + read(whole_squares));
    const double scale = n * max_grad_norm_ / (norm + n * 1e-6);
    if (scale < 1)
      for (auto& [name, grad] : g) affine_(*grad, *grad, scale, 0.0);
  }
  for (size_t i = 0; i < p.size(); ++i) {
    const std::string& name = p[i].first;
    if (std::find(done.begin(), done.end(), name) != done.end()) continue;
    auto grad = std::find_if(g.begin(), g.end(), [&](const auto& entry) { return entry.first == name; });
    if (grad == g.end())
      throw Error(cat("SaeStep: the ", unit_.name(), " step said it updates ", name, " itself, but did not"));
    adam_step_(*p[i].second, *m[i].second, *v[i].second, *grad->second, fused.scalars);
  }
  step_->after_update(params);
  params.stated.clear();  // what a folder stated is no longer what the trained tensors say
  return sums;
}

}  // namespace sae
