// The references' shared parts (see reference.h).
#include "sae/arch/reference.h"

#include <algorithm>
#include <numeric>

#include "tensor/ops.h"

namespace sae {

const Variable& ArchVariables::own_var(const std::string& name) const {
  for (const auto& [key, v] : own)
    if (key == name) return v;
  throw Error(cat("ArchVariables: no tensor ", name));
}

ArchVariables ArchVariables::leaves(const SaeParams& p, bool requires_grad) {
  auto leaf = [requires_grad](const Tensor& t) { return t.defined() ? Variable(t, requires_grad) : Variable(); };
  ArchVariables v;
  v.W_enc = leaf(p.W_enc);
  v.b_enc = leaf(p.b_enc);
  v.W_dec = leaf(p.W_dec);
  v.b_dec = leaf(p.b_dec);
  v.W_skip = leaf(p.W_skip);
  for (const NamedTensor& o : p.own) v.own.push_back({o.name, leaf(o.tensor)});
  v.sources = p.sources;
  return v;
}

Variable ArchVariables::encoder_input(const Tensor& x) const { return centred ? Variable(x) - b_dec : Variable(x); }

Tensor ArchVariables::encoder_input_value(const Tensor& x) const { return centred ? sub(x, b_dec.data()) : x; }

SaeParams ArchVariables::grads(const SaeParams& like) const {
  SaeParams g = SaeParams::zeros_like(like);
  auto take = [](Tensor& into, const Variable& from) {
    if (into.defined() && from.defined() && from.grad().defined()) copy_(into, from.grad());
  };
  take(g.W_enc, W_enc);
  take(g.b_enc, b_enc);
  take(g.W_dec, W_dec);
  take(g.b_dec, b_dec);
  take(g.W_skip, W_skip);
  for (NamedTensor& o : g.own) take(o.tensor, own_var(o.name));
  return g;
}

Variable zero_term(const Tensor& like) { return Variable(Tensor::zeros(Shape{1}, like.dtype(), like.device())); }

void finish_reference(ReferenceLoss& out, const ArchVariables& p, const Tensor& x, const Tensor& target,
                      const Variable& f, double lambda) {
  const int64_t n = x.size(0), features = p.W_enc.shape()[1];
  if (!out.sparsity.defined()) out.sparsity = zero_term(x);
  if (!out.aux.defined()) out.aux = zero_term(x);
  Variable x_hat = ag::matmul(f, p.W_dec) + p.b_dec;
  if (p.W_skip.defined()) x_hat = x_hat + ag::matmul(Variable(x), p.W_skip);
  out.rec = ag::sum(ag::square(Variable(target) - x_hat));
  out.f = f.data();
  out.x_hat = x_hat.data();
  const std::vector<double> fv = out.f.to_vector();
  out.fired.assign(features, 0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < features; ++i) out.fired[i] |= fv[t * features + i] > 0;
  out.total = out.rec + out.sparsity * lambda + out.aux;
}

Variable decoder_norms(const Variable& W_dec, int64_t sources) {
  if (sources == 1) return ag::norm2(W_dec, 1);
  const int64_t f = W_dec.shape()[0], d = W_dec.shape()[1];
  const Variable blocks = ag::norm2(ag::reshape(W_dec, Shape{f * sources, d / sources}), 1);
  return ag::sum(ag::reshape(blocks, Shape{f, sources}), 1);
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

Tensor flags_tensor(const std::vector<uint8_t>& flags, const Shape& shape, const Tensor& like) {
  std::vector<double> v(flags.begin(), flags.end());
  return Tensor::from_vector(v, shape, like.dtype(), like.device());
}

}  // namespace sae
