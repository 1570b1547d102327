// Random SAEs of every architecture and batches for them, with every discrete decision (ReLU signs,
// top-k cut-offs, JumpReLU's thresholds and windows, gates) at least `margin` from its boundary when
// asked, so that finite differences and float32 runs make the decisions float64 makes. Shared by
// the tests of tests/sae/arch.
#pragma once
#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "sae/arch/reference.h"
#include "sae/params.h"
#include "tensor/ops.h"
#include "tensor/rng.h"

namespace sae::testing {

struct ArchProblem {
  SaeParams params;
  Tensor x;
};

// The dictionary tensor or own tensor `name` of p, and its autograd variable in v.
inline Tensor& tensor_named(SaeParams& p, const std::string& name) {
  if (name == "W_enc") return p.W_enc;
  if (name == "b_enc") return p.b_enc;
  if (name == "W_dec") return p.W_dec;
  if (name == "b_dec") return p.b_dec;
  return p.own_tensor(name);
}
inline Variable& variable_named(ArchVariables& v, const std::string& name) {
  if (name == "W_enc") return v.W_enc;
  if (name == "b_enc") return v.b_enc;
  if (name == "W_dec") return v.W_dec;
  if (name == "b_dec") return v.b_dec;
  for (auto& [key, var] : v.own)
    if (key == name) return var;
  throw Error(cat("no variable ", name));
}

inline bool topk_family(const std::string& a) { return a == "topk" || a == "batchtopk"; }

inline ArchProblem draw_arch_problem(const std::string& a, int64_t n, int64_t d, int64_t f, int64_t k, Rng& rng) {
  ArchProblem out;
  SaeParams& p = out.params;
  p.kind = a;
  if (topk_family(a)) p.settings["k"] = k;
  if (a == "batchtopk") p.settings["threshold"] = 0.0;
  out.x = add(normal_tensor(Shape{n, d}, 0.0, 1.0, rng, DType::F64),
              uniform_tensor(Shape{d}, -0.5, 0.5, rng, DType::F64));
  p.W_dec = normal_tensor(Shape{f, d}, 0.0, 1.0, rng, DType::F64);
  p.W_dec = mul(div(p.W_dec, norm2(p.W_dec, 1, true)), uniform_tensor(Shape{f, 1}, 0.5, 1.5, rng, DType::F64));
  p.W_enc = add(mul_scalar(transpose(p.W_dec), 0.8), normal_tensor(Shape{d, f}, 0.0, 0.3, rng, DType::F64));
  p.b_dec = normal_tensor(Shape{d}, 0.0, 0.2, rng, DType::F64);
  if (a == "gated") {
    p.own.push_back({"b_gate", normal_tensor(Shape{f}, 0.0, 0.3, rng, DType::F64)});
    p.own.push_back({"b_mag", normal_tensor(Shape{f}, 0.0, 0.3, rng, DType::F64)});
    p.own.push_back({"r_mag", normal_tensor(Shape{f}, 0.0, 0.3, rng, DType::F64)});
  } else {
    p.b_enc = normal_tensor(Shape{f}, 0.0, 0.3, rng, DType::F64);
  }
  if (a == "jumprelu") p.own.push_back({"log_threshold", log(uniform_tensor(Shape{f}, 0.3, 1.2, rng, DType::F64))});
  return out;
}

// The smallest distance of a decision quantity to its boundary (float64 values of P etc.).
inline double arch_margin(const ArchProblem& prob, int64_t k, double bandwidth, const std::vector<uint8_t>* allowed,
                          int64_t k_aux) {
  const SaeParams& p = prob.params;
  const int64_t n = prob.x.size(0), f = p.d_sae();
  double margin = INFINITY;
  if (p.kind == "gated") {
    const Tensor Q = matmul(prob.x, p.W_enc);
    for (double v : add(Q, p.own_tensor("b_gate")).to_vector()) margin = std::min(margin, std::abs(v));
    for (double v : add(mul(Q, exp(p.own_tensor("r_mag"))), p.own_tensor("b_mag")).to_vector())
      margin = std::min(margin, std::abs(v));
    return margin;
  }
  const std::vector<double> P = add(matmul(prob.x, p.W_enc), p.b_enc).to_vector();
  for (double v : P) margin = std::min(margin, std::abs(v));
  auto row_gap = [&](int64_t keep, const std::vector<uint8_t>* only) {
    for (int64_t t = 0; t < n; ++t) {
      std::vector<double> row;
      for (int64_t i = 0; i < f; ++i)
        if (!only || (*only)[i]) row.push_back(P[t * f + i]);
      std::sort(row.rbegin(), row.rend());
      if (keep < static_cast<int64_t>(row.size())) margin = std::min(margin, row[keep - 1] - row[keep]);
    }
  };
  if (p.kind == "topk") row_gap(k, nullptr);
  if (allowed) row_gap(k_aux, allowed);
  if (p.kind == "batchtopk") {
    std::vector<double> a;
    for (double v : P) a.push_back(std::max(v, 0.0));
    std::sort(a.rbegin(), a.rend());
    if (a[k * n - 1] > 0) margin = std::min(margin, a[k * n - 1] - a[k * n]);
  }
  if (p.kind == "jumprelu") {
    const std::vector<double> theta = exp(p.own_tensor("log_threshold")).to_vector();
    for (int64_t t = 0; t < n; ++t)
      for (int64_t i = 0; i < f; ++i) {
        const double dist = P[t * f + i] - theta[i];
        margin = std::min({margin, std::abs(dist), std::abs(std::abs(dist) - bandwidth / 2)});
      }
  }
  return margin;
}

// Draws (seed, seed + 1, ...), each changed by `tweak`, until arch_margin >= margin and `accept`
// agrees.
inline ArchProblem well_conditioned_problem(const std::string& a, int64_t n, int64_t d, int64_t f, int64_t k, uint64_t seed,
                                            double margin, double bandwidth = 0.5,
                                            const std::vector<uint8_t>* allowed = nullptr, int64_t k_aux = 0,
                                            const std::function<bool(const ArchProblem&)>& accept = nullptr,
                                            const std::function<void(ArchProblem&)>& tweak = nullptr) {
  for (int attempt = 0; attempt < 2000; ++attempt) {
    Rng rng(seed + attempt);
    ArchProblem prob = draw_arch_problem(a, n, d, f, k, rng);
    if (tweak) tweak(prob);
    if (arch_margin(prob, k, bandwidth, allowed, k_aux) >= margin && (!accept || accept(prob))) return prob;
  }
  throw Error("well_conditioned_problem: no draw met the margin");
}

inline ArchProblem to_dtype(const ArchProblem& prob, DType dtype) {
  ArchProblem out = prob;
  out.x = prob.x.to(dtype);
  out.params = prob.params.clone();
  for (auto& [name, t] : out.params.present()) *t = t->to(dtype);
  return out;
}

}  // namespace sae::testing
