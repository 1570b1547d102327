// The architectures' autograd reference, selections and inference (see arch_model.h).
#include "sae/arch_model.h"

#include <algorithm>
#include <numeric>

#include "tensor/ops.h"

namespace sae {

namespace {
using Grads = std::vector<Tensor>;
using Needs = std::vector<bool>;

Tensor flags_tensor(const std::vector<uint8_t>& flags, const Shape& shape, const Tensor& like) {
  std::vector<double> v(flags.begin(), flags.end());
  return Tensor::from_vector(v, shape, like.dtype(), like.device());
}

Tensor constant_like(double value, const Tensor& like) {
  return Tensor::full(Shape{1}, value, like.dtype(), like.device());
}

Variable zero_like(const Tensor& like) { return Variable(Tensor::zeros(Shape{1}, like.dtype(), like.device())); }

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
}  // namespace

ArchVariables ArchVariables::leaves(const SaeParams& p, bool requires_grad) {
  auto leaf = [requires_grad](const Tensor& t) { return t.defined() ? Variable(t, requires_grad) : Variable(); };
  return {leaf(p.W_enc),         leaf(p.b_enc),  leaf(p.W_dec), leaf(p.b_dec),
          leaf(p.log_threshold), leaf(p.b_gate), leaf(p.b_mag), leaf(p.r_mag)};
}

SaeParams ArchVariables::grads(const SaeParams& like) const {
  SaeParams g = SaeParams::zeros_like(like);
  const Variable* vars[8] = {&W_enc, &b_enc, &W_dec, &b_dec, &log_threshold, &b_gate, &b_mag, &r_mag};
  for (int i = 0; i < 8; ++i)
    if (g.slots()[i]->defined() && vars[i]->defined() && vars[i]->grad().defined())
      copy_(*g.slots()[i], vars[i]->grad());
  return g;
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

std::vector<uint8_t> top_k_per_row(const std::vector<double>& values, int64_t rows, int64_t cols, int64_t k,
                                   const std::vector<uint8_t>* allowed) {
  std::vector<uint8_t> out(values.size(), 0);
  std::vector<int64_t> order;
  for (int64_t r = 0; r < rows; ++r) {
    order.clear();
    for (int64_t c = 0; c < cols; ++c)
      if (!allowed || (*allowed)[c]) order.push_back(c);
    const double* row = values.data() + r * cols;
    std::stable_sort(order.begin(), order.end(), [row](int64_t a, int64_t b) { return row[a] > row[b]; });
    for (int64_t j = 0; j < std::min<int64_t>(k, order.size()); ++j) out[r * cols + order[j]] = 1;
  }
  return out;
}

std::vector<uint8_t> top_k_flat(const std::vector<double>& values, int64_t total) {
  std::vector<int64_t> order(values.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&values](int64_t a, int64_t b) { return values[a] > values[b]; });
  std::vector<uint8_t> out(values.size(), 0);
  for (int64_t j = 0; j < std::min<int64_t>(total, order.size()); ++j) out[order[j]] = 1;
  return out;
}

std::vector<uint8_t> dead_after_batch(std::vector<int64_t>& tokens_since_fired, const std::vector<uint8_t>& fired,
                                      int64_t tokens, int64_t dead_tokens) {
  std::vector<uint8_t> dead(tokens_since_fired.size());
  for (size_t i = 0; i < dead.size(); ++i) {
    tokens_since_fired[i] = fired[i] ? 0 : tokens_since_fired[i] + tokens;
    dead[i] = tokens_since_fired[i] >= dead_tokens;
  }
  return dead;
}

ArchReferenceLoss arch_reference_loss(const ArchOptions& o, const ArchVariables& p, const Tensor& x, double lambda,
                                      const std::vector<uint8_t>* dead, const ArchFrozen* frozen) {
  const Variable X(x);
  const int64_t n = x.size(0), features = p.W_enc.shape()[1];
  ArchReferenceLoss out;
  out.aux = zero_like(x);
  out.sparsity = zero_like(x);
  Variable f;
  if (o.architecture == Architecture::Gated) {
    const Variable Q = ag::matmul(X, p.W_enc);
    const Variable pi_gate = Q + p.b_gate;
    const Variable pi_mag = Q * ag::exp(p.r_mag) + p.b_mag;
    f = Variable(step(pi_gate.data())) * ag::relu(pi_mag);  // the gate passes no gradient
    const Variable gate = ag::relu(pi_gate);
    out.sparsity = ag::sum(gate * ag::norm2(p.W_dec, 1));
    const bool fixed = frozen && frozen->W_dec.defined();
    const Variable frozen_W_dec = fixed ? Variable(frozen->W_dec) : p.W_dec.detach();
    const Variable frozen_b_dec = fixed ? Variable(frozen->b_dec) : p.b_dec.detach();
    const Variable x_gate = ag::matmul(gate, frozen_W_dec) + frozen_b_dec;  // frozen decoder
    out.aux = ag::sum(ag::square(X - x_gate));
    out.pre = pi_mag.data();
  } else {
    const Variable P = ag::matmul(X, p.W_enc) + p.b_enc;
    out.pre = P.data();
    switch (o.architecture) {
      case Architecture::Standard:
        f = ag::relu(P);
        out.sparsity = ag::sum(f * ag::norm2(p.W_dec, 1));
        break;
      case Architecture::TopK:
        f = ag::relu(P) * Variable(flags_tensor(top_k_per_row(P.data().to_vector(), n, features, o.k), P.shape(), x));
        break;
      case Architecture::BatchTopK:
        f = ag::relu(P) * Variable(flags_tensor(top_k_flat(relu(P.data()).to_vector(), o.k * n), P.shape(), x));
        break;
      case Architecture::JumpReLU: {
        f = jumprelu_ste(P, p.log_threshold, o.jumprelu_bandwidth, o.jumprelu_ste_to_input);
        if (o.jumprelu_penalty == JumpReluPenalty::Step) {
          out.sparsity = ag::sum(step_ste(P, p.log_threshold, o.jumprelu_bandwidth, o.jumprelu_ste_to_input));
        } else {
          const Variable norms = ag::norm2(p.W_dec, 1);
          out.sparsity = ag::sum(tanh_of(ag::affine(f * norms, o.jumprelu_tanh_c, 0.0)));
          out.aux = ag::sum(ag::relu(ag::exp(p.log_threshold) - P) * norms) * o.jumprelu_pre_act;
        }
        break;
      }
      case Architecture::Gated: break;
    }
  }
  const Variable x_hat = ag::matmul(f, p.W_dec) + p.b_dec;
  out.rec = ag::sum(ag::square(X - x_hat));
  out.f = f.data();
  out.x_hat = x_hat.data();
  const std::vector<double> fv = out.f.to_vector();
  out.fired.assign(features, 0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < features; ++i) out.fired[i] |= fv[t * features + i] > 0;
  // AuxK: the k_aux largest P of each token among the dead latents predict the (constant) residual.
  if (is_topk_family(o.architecture) && o.auxk_coefficient > 0 && dead) {
    for (uint8_t d : *dead) out.n_dead += d;
    const int64_t k_aux_option = o.auxk_k > 0 ? o.auxk_k : x.size(1) / 2;
    if (out.n_dead > 0) {
      const Variable P = ag::matmul(X, p.W_enc) + p.b_enc;
      const int64_t k_aux = std::min(k_aux_option, out.n_dead);
      const Tensor selected = flags_tensor(top_k_per_row(P.data().to_vector(), n, features, k_aux, dead), P.shape(), x);
      const Variable a = ag::relu(P) * Variable(selected);
      out.aux_acts = a.data();
      const Tensor e = frozen && frozen->residual.defined() ? frozen->residual : sub(x, out.x_hat);
      const double Z = sum(square(sub(e, mean(e, 0, true)))).item();
      if (Z > 0) {
        const Variable e_hat = ag::matmul(a, p.W_dec);
        out.aux = ag::sum(ag::square(e_hat - Variable(e))) * (o.auxk_coefficient * double(n) / Z);
      }
    }
  }
  out.total = out.rec + out.sparsity * lambda + out.aux;
  return out;
}

Tensor sae_encode(const SaeParams& p, const Tensor& x) {
  p.check();
  if (p.architecture == Architecture::Gated) {
    const Tensor Q = matmul(x, p.W_enc);
    return mul(step(add(Q, p.b_gate)), relu(add(mul(Q, exp(p.r_mag)), p.b_mag)));
  }
  const Tensor P = add(matmul(x, p.W_enc), p.b_enc);
  switch (p.architecture) {
    case Architecture::TopK: {
      const Tensor host = P.to(Device::CPU);
      const std::vector<uint8_t> mask = top_k_per_row(host.to_vector(), P.size(0), P.size(1), p.k);
      return mul(relu(P), flags_tensor(mask, P.shape(), P));
    }
    case Architecture::BatchTopK:
      return mul(relu(P), gt(P, constant_like(p.batchtopk_threshold, P)));
    case Architecture::JumpReLU:
      return mul(relu(P), gt(P, exp(p.log_threshold)));
    default:
      return relu(P);
  }
}

Tensor sae_decode(const SaeParams& p, const Tensor& f) { return add(matmul(f, p.W_dec), p.b_dec); }

}  // namespace sae
