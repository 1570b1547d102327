// The JumpReLU unit (see jumprelu.h): options, parameters, its dense step, reference, inference,
// SAELens export ("jumprelu" with threshold = exp(log_threshold)) and training state (log_threshold
// exactly: exp then log would not give it back).
//   step:  pre = P; f = P H(P - theta); x_hat = f W_dec + b_dec; the straight-through backward of
//          jumprelu_backward; dW_enc = x^T dL/dP
#include "sae/arch/jumprelu/jumprelu.h"

#include <cmath>
#include <limits>

#include "sae/arch/dense_step.h"
#include "sae/arch/dictionary.h"
#include "sae/step/sae_ops.h"
#include "tensor/ops.h"

namespace sae {

namespace {
using Grads = std::vector<Tensor>;
using Needs = std::vector<bool>;

void require(bool ok, const std::string& message) {
  if (!ok) throw UsageError(message);
}

Tensor constant_like(double value, const Tensor& like) {
  return Tensor::full(Shape{1}, value, like.dtype(), like.device());
}

// tanh(z) = 1 - 2 / (exp(2 z) + 1), from the ops autograd has (saturates to 1 for large z).
Variable tanh_of(const Variable& z) {
  const Variable twice_exp = ag::affine(ag::exp(ag::affine(z, 2.0, 0.0)), 1.0, 1.0);
  const Variable two(Tensor::full(z.shape(), 2.0, z.data().dtype(), z.data().device()));
  return ag::affine(ag::div(two, twice_exp), -1.0, 1.0);
}

// The rectangle window K((P - theta) / eps) and H(P - theta), theta = exp(log_threshold).
struct Window {
  Tensor theta, H, K;
};
Window window(const Tensor& pre, const Tensor& log_threshold, double eps) {
  Window w;
  w.theta = exp(log_threshold);
  const Tensor d = sub(pre, w.theta);
  w.H = step(d);
  const Tensor u = div(d, constant_like(eps, pre));
  w.K = mul(gt(u, constant_like(-0.5, pre)), lt(u, constant_like(0.5, pre)));
  return w;
}

class JumpReluStep : public DenseUnitStep {
 public:
  JumpReluStep(const JumpReluSettings& s, bool unit_norm, const StepShape& shape, DType dtype, Device device)
      : DenseUnitStep(unit_norm, /*bf16_pre=*/false, shape, dtype, device), settings_(s) {
    if (!(s.bandwidth > 0)) throw UsageError(cat("--jumprelu-bandwidth must be > 0, got ", s.bandwidth));
  }

  StepSums forward(const SaeParams& params, const Tensor& x, const Tensor& target, double lambda, bool) override {
    start_forward(params, x);
    const int64_t n = tokens_;
    Tensor pre = pre_.slice_rows(0, n), f = f_.slice_rows(0, n), r = grad_x_hat_.slice_rows(0, n);
    jumprelu_forward_(f, pre, params.b_enc, params.own_tensor("log_threshold"), norms_, settings_, col_count_, col_a_,
                      col_b_);
    decode(params, target);
    Tensor s0 = sums_.slice_rows(0, 1), s1 = sums_.slice_rows(1, 2), s2 = sums_.slice_rows(2, 3),
           s3 = sums_.slice_rows(3, 4);
    reduce_all_(ReduceOp::sum_squares, s0, r);
    reduce_all_(ReduceOp::sum, s1, col_count_);
    reduce_all_(ReduceOp::sum, s2, col_a_);
    binary_(BinaryOp::mul, scale_, col_b_, norms_);
    reduce_all_(ReduceOp::sum, s3, scale_);
    return sums_or_pending(lambda);
  }

  StepSums read_sums() override {
    const std::vector<double> s = sums_.to_vector();
    StepSums out;
    out.rec = s[0];
    out.active = s[1];
    out.l1 = s[2];
    out.aux = settings_.tanh ? settings_.pre_act * s[3] : 0.0;
    out.loss = loss_since_read(out.rec + lambda_ * out.l1 + out.aux);
    out.tokens = tokens_;
    complete_step_sums(collectives_, out, lambda_, out.aux);  // the pre-activation loss sums over latents
    return out;
  }

 protected:
  void activation_backward(const SaeParams& params, double lambda, SaeParams& grads, Tensor& grad) override {
    jumprelu_backward_(grad, pre_.slice_rows(0, tokens_), params.own_tensor("log_threshold"), norms_, settings_, lambda,
                       grads.b_enc, grads.own_tensor("log_threshold"), scale_);
  }

 private:
  JumpReluSettings settings_;
};

bool tanh_penalty(const ArchSettings& s) { return s.text("jumprelu-penalty") == "tanh"; }

// The inference threshold: as a loaded folder states it, else exp(log_threshold).
Tensor threshold_of(const SaeParams& p) {
  for (const NamedTensor& o : p.stated)
    if (o.name == "threshold") {
      const Tensor& log_threshold = p.own_tensor("log_threshold");
      if (o.tensor.shape() != log_threshold.shape() || o.tensor.dtype() != log_threshold.dtype() ||
          o.tensor.device() != log_threshold.device())
        throw DataError(cat("jumprelu: the stated threshold ", o.tensor.describe(), " does not go with log_threshold ",
                            log_threshold.describe()));
      return o.tensor;
    }
  return exp(p.own_tensor("log_threshold"));
}

class JumpReluUnit : public ArchUnit {
 public:
  bool fold_decoder_norms(SaeParams& p, const std::vector<double>& norms) const override {
    // theta_i n_i, made before the fold so that a failure leaves p as it was
    Tensor t = p.own_tensor("log_threshold").to(Device::CPU).to(DType::F32).clone();
    if (t.numel() != static_cast<int64_t>(norms.size()))
      throw Error(cat("fold_decoder_norms: ", t.numel(), " thresholds for ", norms.size(), " latents"));
    float* v = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) v[i] = static_cast<float>(v[i] + std::log(norms[static_cast<size_t>(i)]));
    fold_dictionary_norms(p, norms, {});
    p.own_tensor("log_threshold") = std::move(t);
    p.stated.clear();  // the stated thresholds were of the unfolded latents
    return true;
  }
  std::string name() const override { return "jumprelu"; }
  bool needs_lambda() const override { return true; }
  bool l0_like_penalty() const override { return true; }  // step: lambda L0; tanh: lambda sum tanh(c f n)
  std::string description() const override {
    return "f = P H(P - theta), straight-through thresholds; lambda L0 (step) or lambda sum tanh(c f n) + "
           "pre-activation loss (tanh)";
  }
  std::vector<ArchOption> option_rows() const override {
    return {{"jumprelu-penalty", "jumprelu_penalty",
             "step (lambda L0, DeepMind) | tanh (lambda sum tanh(c f ||W_dec||) + pre-activation loss, Anthropic)",
             ArchValueType::Choice, "step", {"step", "tanh"}},
            {"jumprelu-bandwidth", "jumprelu_bandwidth", "bandwidth epsilon of the straight-through estimators (SAELens's jumprelu_bandwidth "
             "defaults to 0.05)",
             ArchValueType::Number, "0.001"},
            {"jumprelu-tanh-c", "jumprelu_tanh_c", "with the tanh penalty: c", ArchValueType::Number, "4"},
            {"jumprelu-pre-act", "jumprelu_pre_act",
             "with the tanh penalty: lambda_P of the pre-activation loss sum relu(theta - P) ||W_dec|| over "
             "every latent (SAELens's pre_act_loss_coefficient counts dead latents only)",
             ArchValueType::Number, "0"},
            {"jumprelu-init-threshold", "jumprelu_init_threshold",
             "the initial threshold theta_0 (trained as log theta; SAELens trains theta itself, "
             "from 0.01)", ArchValueType::Number, "0.001"},
            unit_norm_decoder_row(), init_tied_row(), init_b_dec_row()};
  }
  std::vector<std::string> reads() const override {
    return {"jumprelu-penalty", "jumprelu-bandwidth",  "jumprelu-tanh-c", "jumprelu-pre-act",
            "jumprelu-init-threshold", "unit-norm-decoder", "init-tied",       "init-b-dec"};
  }
  void validate(const ArchSettings& s, int64_t) const override {
    const double bandwidth = s.number("jumprelu-bandwidth"), theta0 = s.number("jumprelu-init-threshold");
    const double c = s.number("jumprelu-tanh-c"), pre_act = s.number("jumprelu-pre-act");
    if (!tanh_penalty(s)) {
      const ArchOption defaults[] = {option_rows()[2], option_rows()[3]};
      for (const ArchOption& o : defaults)
        require(s.at(o.name) == o.default_value(),
                cat("--", o.name, " applies only to --architecture jumprelu --jumprelu-penalty tanh"));
    }
    // Both are float32 values in training (the threshold is exp of a float32 log_threshold).
    const double lowest = std::numeric_limits<float>::min(), highest = std::numeric_limits<float>::max();
    require(std::isfinite(bandwidth) && bandwidth >= lowest && bandwidth <= highest,
            cat("--jumprelu-bandwidth must be a number > 0 in float32's range, got ", bandwidth));
    require(std::isfinite(theta0) && theta0 >= lowest && theta0 <= highest,
            cat("--jumprelu-init-threshold must be a number > 0 in float32's range, got ", theta0));
    require(std::isfinite(c) && c > 0, cat("--jumprelu-tanh-c must be a finite number > 0, got ", c));
    require(std::isfinite(pre_act) && pre_act >= 0,
            cat("--jumprelu-pre-act must be a finite number >= 0, got ", pre_act));
  }
  std::vector<std::string> own_tensors() const override { return {"log_threshold"}; }
  DictionaryInit dictionary_init(const ArchSettings& s) const override {
    return resolve_dictionary_init(s, /*unit_norm_when_auto=*/!tanh_penalty(s), /*tied_when_auto=*/true,
                                   /*median_when_auto=*/false);
  }
  void init_own(SaeParams& p, const ArchSettings& s) const override {
    p.own.push_back({"log_threshold", Tensor::full(Shape{p.d_sae()}, std::log(s.number("jumprelu-init-threshold")))});
  }
  std::unique_ptr<UnitStep> make_step(const ArchSettings& s, const StepShape& shape, DType dtype,
                                      Device device) const override {
    return std::make_unique<JumpReluStep>(jumprelu_settings(s), dictionary_init(s).unit_norm_decoder, shape, dtype,
                                          device);
  }
  ReferenceLoss reference_loss(const ArchSettings& s, const ArchVariables& p, const Tensor& x, const Tensor& target,
                               double lambda, const std::vector<uint8_t>*, const ArchFrozen*) const override {
    const JumpReluSettings o = jumprelu_settings(s);
    const Variable& log_threshold = p.own_var("log_threshold");
    ReferenceLoss out;
    const Variable P = ag::matmul(p.encoder_input(x), p.W_enc) + p.b_enc;
    out.pre = P.data();
    const Variable f = jumprelu_ste(P, log_threshold, o.bandwidth, o.ste_to_input);
    if (!o.tanh) {
      out.sparsity = ag::sum(step_ste(P, log_threshold, o.bandwidth, o.ste_to_input));
    } else {
      const Variable norms = ag::norm2(p.W_dec, 1);
      out.sparsity = ag::sum(tanh_of(ag::affine(f * norms, o.tanh_c, 0.0)));
      out.aux = ag::sum(ag::relu(ag::exp(log_threshold) - P) * norms) * o.pre_act;
    }
    finish_reference(out, p, x, target, f, lambda);
    return out;
  }
  Tensor encode(const SaeParams& p, const Tensor& x) const override {
    check(p);
    const Tensor P = add(matmul(x, p.W_enc), p.b_enc);
    return mul(relu(P), gt(P, threshold_of(p)));
  }
  std::string saelens_transcoder_architecture(bool skip) const override {
    return skip ? "jumprelu_skip_transcoder" : "jumprelu_transcoder";
  }
  std::vector<std::pair<std::string, Tensor>> saelens_weights(const SaeParams& p) const override {
    std::vector<std::pair<std::string, Tensor>> out;
    for (auto& named : ArchUnit::saelens_weights(p))
      if (named.first != "log_threshold") out.push_back(std::move(named));
    out.push_back({"threshold", threshold_of(p).to(Device::CPU).to(DType::F32)});
    return out;
  }
  void import_rest(const NamedTensorFile& weights, const Json&, const std::string& where,
                   SaeParams& p) const override {
    if (!weights.has("threshold")) throw DataError(cat(where, ": missing tensor threshold"));
    if (p.has_own("log_threshold"))  // read as one of the unit's own tensors: SAELens's strict load refuses it too
      throw DataError(cat(where, ": both threshold and log_threshold (a SAELens jumprelu folder holds threshold)"));
    const Tensor threshold = weights.read_f32("threshold");
    if (threshold.shape() != Shape{p.d_sae()})
      throw DataError(cat(where, ": threshold should be [", p.d_sae(), "], got ", threshold.describe()));
    for (double v : threshold.to_vector())
      if (!(v >= 0) || !std::isfinite(v)) throw DataError(cat(where, ": jumprelu thresholds must be >= 0, got ", v));
    // Trained as log theta; exp(log theta) is theta only to within a few ulps (half the float32
    // thresholds differ), so inference and a re-export read the threshold as stated. Our training
    // state keeps log_threshold exactly (load_state).
    p.own.push_back({"log_threshold", log(threshold)});
    p.stated.push_back({"threshold", threshold});
  }
  void save_state(const SaeParams& p, std::vector<std::pair<std::string, Tensor>>& tensors, Json&) const override {
    tensors.push_back({"param.log_threshold", p.own_tensor("log_threshold").to(Device::CPU)});
  }
  void load_state(const SafetensorsFile& file, const Json&, SaeParams& p) const override {
    Tensor& log_threshold = p.own_tensor("log_threshold");
    const Tensor exact = file.read_f32("param.log_threshold");
    if (exact.shape() != log_threshold.shape())
      throw DataError(cat(file.path(), ": param.log_threshold is ", exact.describe()));
    log_threshold = exact.to(log_threshold.device());
  }
};
}  // namespace

JumpReluSettings jumprelu_settings(const ArchSettings& s) {
  JumpReluSettings o;
  o.tanh = tanh_penalty(s);
  o.ste_to_input = o.tanh;  // docs/architectures.md §2.3: Anthropic's STE feeds P too
  o.bandwidth = s.number("jumprelu-bandwidth");
  o.tanh_c = s.number("jumprelu-tanh-c");
  o.pre_act = s.number("jumprelu-pre-act");
  return o;
}

Variable jumprelu_ste(const Variable& pre, const Variable& log_threshold, double eps, bool ste_to_input) {
  const Window w = window(pre.data(), log_threshold.data(), eps);
  const Tensor H = w.H, K = w.K, theta = w.theta;
  const double inv_eps = 1.0 / eps;
  return make_result(mul(pre.data(), H), "jumprelu_ste", {pre, log_threshold},
                     [H, K, theta, inv_eps, ste_to_input](const Tensor& g, const Needs& n) {
                       const Tensor ste = mul(mul(K, g), mul_scalar(theta, inv_eps));  // (theta/eps) K g
                       Tensor grad_pre, grad_log;
                       if (n[0]) grad_pre = ste_to_input ? add(mul(H, g), ste) : mul(H, g);
                       if (n[1]) grad_log = mul(theta, neg(sum(ste, 0)));
                       return Grads{grad_pre, grad_log};
                     });
}

Variable step_ste(const Variable& pre, const Variable& log_threshold, double eps, bool ste_to_input) {
  const Window w = window(pre.data(), log_threshold.data(), eps);
  const Tensor K = w.K, theta = w.theta;
  const double inv_eps = 1.0 / eps;
  return make_result(w.H, "step_ste", {pre, log_threshold},
                     [K, theta, inv_eps, ste_to_input](const Tensor& g, const Needs& n) {
                       const Tensor ste = mul_scalar(mul(K, g), inv_eps);  // (1/eps) K g
                       Tensor grad_pre, grad_log;
                       if (n[0]) grad_pre = ste_to_input ? ste : Tensor::zeros(g.shape(), g.dtype(), g.device());
                       if (n[1]) grad_log = mul(theta, neg(sum(ste, 0)));
                       return Grads{grad_pre, grad_log};
                     });
}

const ArchUnit& jumprelu_unit() {
  static const JumpReluUnit unit;
  return unit;
}

}  // namespace sae
