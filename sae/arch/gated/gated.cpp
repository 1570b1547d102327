// The Gated unit (see gated.h): options, parameters, its dense step, reference, inference and
// SAELens export ("gated": W_enc, W_dec, b_dec, b_gate, b_mag, r_mag).
//   step:  pre = Q = x W_enc; f, gate = relu(pi_gate); x_hat = f W_dec + b_dec and the auxiliary
//          x_gate = gate W_dec + b_dec (the decoder frozen in its gradient)
#include "sae/arch/gated/gated.h"

#include "sae/arch/dense_step.h"
#include "sae/arch/dictionary.h"
#include "sae/arch/gated/gated_kernels.h"
#include "sae/step/sae_ops.h"
#include "tensor/ops.h"

namespace sae {

namespace {
class GatedStep : public DenseUnitStep {
 public:
  GatedStep(bool unit_norm, const StepShape& shape, DType dtype, Device device)
      : DenseUnitStep(unit_norm, /*bf16_pre=*/true, shape, dtype, device) {
    gate_ = Tensor::empty(Shape{shape.max_tokens, shape.d_sae}, activations_dtype(), device);  // written before read
  }

  StepSums forward(const SaeParams& params, const Tensor& x, const Tensor& target, double lambda, bool) override {
    start_forward(params, x);
    keep_dtype(gate_, activations_dtype());
    const int64_t n = tokens_;
    Tensor pre = pre_.slice_rows(0, n), f = f_.slice_rows(0, n), gate = gate_.slice_rows(0, n);
    Tensor r = grad_x_hat_.slice_rows(0, n), r_gate = scratch_rows_.slice_rows(0, n);
    gated_forward_(f, gate, pre, params.own_tensor("b_gate"), params.own_tensor("b_mag"), params.own_tensor("r_mag"),
                   col_count_, col_a_);
    decode(params, target);
    // The auxiliary reconstruction from relu(pi_gate): r_gate = gate W_dec + b_dec - target.
    decode_into(r_gate, gate, params);
    binary_(BinaryOp::sub, r_gate, r_gate, target);
    Tensor s0 = sums_.slice_rows(0, 1), s1 = sums_.slice_rows(1, 2), s2 = sums_.slice_rows(2, 3),
           s3 = sums_.slice_rows(3, 4);
    reduce_all_(ReduceOp::sum_squares, s0, r);
    reduce_all_(ReduceOp::sum, s1, col_count_);
    binary_(BinaryOp::mul, scale_, col_a_, norms_);
    reduce_all_(ReduceOp::sum, s2, scale_);
    reduce_all_(ReduceOp::sum_squares, s3, r_gate);
    return sums_or_pending(lambda);
  }

  StepSums read_sums() override {
    const std::vector<double> s = sums_.to_vector();
    StepSums out;
    out.rec = s[0];
    out.active = s[1];
    out.l1 = s[2];
    out.aux = s[3];
    out.loss = loss_since_read(out.rec + lambda_ * out.l1 + out.aux);
    out.tokens = tokens_;
    complete_step_sums(collectives_, out, lambda_, 0.0);  // the auxiliary reconstruction is complete
    return out;
  }

 protected:
  void activation_backward(const SaeParams& params, double lambda, SaeParams& grads, Tensor& grad) override {
    const int64_t n = tokens_;
    // L1 of relu(pi_gate) through the decoder norms: lambda (sum_t gate) W_dec[i,:] / n_i.
    affine_(scale_, col_a_, lambda, 0.0);
    Tensor gate = gate_.slice_rows(0, n), d_gate = scratch_rows_.slice_rows(0, n);
    affine_(d_gate, d_gate, 2.0, 0.0);                 // d aux / d x_gate
    matmul_(gate, d_gate, false, params.W_dec, true);  // d aux / d gate, through the frozen decoder
    gated_backward_(grad, gate, pre_.slice_rows(0, n), params.own_tensor("b_gate"), params.own_tensor("b_mag"),
                    params.own_tensor("r_mag"), norms_, lambda, grads.own_tensor("b_gate"),
                    grads.own_tensor("b_mag"), grads.own_tensor("r_mag"));
  }

 private:
  Tensor gate_;  // [max_tokens, F]: relu(pi_gate), then d aux / d gate; in activations_dtype()
};

class GatedUnit : public ArchUnit {
 public:
  bool fold_decoder_norms(SaeParams& p, const std::vector<double>& norms) const override {
    fold_dictionary_norms(p, norms, {"b_gate", "b_mag"});  // r_mag scales W_enc's already scaled columns
    return true;
  }
  std::string name() const override { return "gated"; }
  bool needs_lambda() const override { return true; }
  std::string description() const override {
    return "f = H(x W_enc + b_gate) relu(x W_enc exp(r_mag) + b_mag), L1 of relu(pi_gate) and an auxiliary "
           "reconstruction";
  }
  std::vector<ArchOption> option_rows() const override {
    return {unit_norm_decoder_row(), init_tied_row(), init_b_dec_row()};
  }
  std::vector<std::string> reads() const override { return {"unit-norm-decoder", "init-tied", "init-b-dec"}; }
  bool has_b_enc() const override { return false; }
  bool trains_transcoders() const override { return false; }  // no gated transcoder in the peers
  std::vector<std::string> own_tensors() const override { return {"b_gate", "b_mag", "r_mag"}; }
  DictionaryInit dictionary_init(const ArchSettings& s) const override {
    return resolve_dictionary_init(s, /*unit_norm_when_auto=*/false, /*tied_when_auto=*/true,
                                   /*median_when_auto=*/false);
  }
  void init_own(SaeParams& p, const ArchSettings&) const override {
    p.own.push_back({"b_gate", p.b_enc});
    p.b_enc = Tensor();
    p.own.push_back({"b_mag", Tensor::zeros(Shape{p.d_sae()})});
    p.own.push_back({"r_mag", Tensor::zeros(Shape{p.d_sae()})});
  }
  std::unique_ptr<UnitStep> make_step(const ArchSettings& s, const StepShape& shape, DType dtype,
                                      Device device) const override {
    return std::make_unique<GatedStep>(dictionary_init(s).unit_norm_decoder, shape, dtype, device);
  }
  ReferenceLoss reference_loss(const ArchSettings&, const ArchVariables& p, const Tensor& x, const Tensor& target,
                               double lambda, const std::vector<uint8_t>*, const ArchFrozen* frozen) const override {
    const Variable X = p.encoder_input(x), Y(target);
    ReferenceLoss out;
    const Variable Q = ag::matmul(X, p.W_enc);
    const Variable pi_gate = Q + p.own_var("b_gate");
    const Variable pi_mag = Q * ag::exp(p.own_var("r_mag")) + p.own_var("b_mag");
    const Variable f = Variable(step(pi_gate.data())) * ag::relu(pi_mag);  // the gate passes no gradient
    const Variable gate = ag::relu(pi_gate);
    out.sparsity = ag::sum(gate * ag::norm2(p.W_dec, 1));
    const bool fixed = frozen && frozen->W_dec.defined();
    const Variable frozen_W_dec = fixed ? Variable(frozen->W_dec) : p.W_dec.detach();
    const Variable frozen_b_dec = fixed ? Variable(frozen->b_dec) : p.b_dec.detach();
    const Variable x_gate = ag::matmul(gate, frozen_W_dec) + frozen_b_dec;  // frozen decoder
    out.aux = ag::sum(ag::square(Y - x_gate));
    out.pre = pi_mag.data();
    finish_reference(out, p, x, target, f, lambda);
    return out;
  }
  Tensor encode(const SaeParams& p, const Tensor& x) const override {
    check(p);
    const Tensor Q = matmul(x, p.W_enc);
    return mul(step(add(Q, p.own_tensor("b_gate"))),
               relu(add(mul(Q, exp(p.own_tensor("r_mag"))), p.own_tensor("b_mag"))));
  }
  void fold_input_shift(SaeParams& p, const Tensor& shift) const override {
    Tensor& b_gate = p.own_tensor("b_gate");
    Tensor& b_mag = p.own_tensor("b_mag");
    b_gate = sub(b_gate, shift);
    b_mag = sub(b_mag, mul(shift, exp(p.own_tensor("r_mag"))));
  }
  // pi_gate = x' W_enc + b_gate, pi_mag = x' (W_enc exp(r_mag)) + b_mag.
  Tensor encoder_input_gradient(const SaeParams& p, const SaeParams& g) const override {
    const Tensor biases = add(g.own_tensor("b_gate"), mul(g.own_tensor("b_mag"), exp(p.own_tensor("r_mag"))));
    return matmul(p.W_enc, biases.reshape(Shape{p.d_sae(), 1})).reshape(Shape{p.d_in()});
  }
};
}  // namespace

const ArchUnit& gated_unit() {
  static const GatedUnit unit;
  return unit;
}

}  // namespace sae
