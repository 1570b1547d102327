// Log-softmax, next-token losses and KL per position (see next_token.h). T positions, V vocabulary.
#include "sae/eval/next_token.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "tensor/host_device.h"
#include "tensor/ops.h"

namespace sae {

Tensor log_softmax_rows(const Tensor& logits) {
  if (logits.ndim() != 2) throw Error(cat("log_softmax_rows: expects logits [T, V], got ", logits.describe()));
  const Tensor shifted = sub(logits, reduce(ReduceOp::max, logits, 1, /*keepdim=*/true));
  return sub(shifted, log(sum(exp(shifted), 1, /*keepdim=*/true)));
}

std::vector<double> next_token_losses(const Tensor& log_probs, const std::vector<int32_t>& ids) {
  const int64_t t = log_probs.size(0), v = log_probs.size(1);
  if (log_probs.ndim() != 2 || static_cast<int64_t>(ids.size()) != t)
    throw Error(cat("next_token_losses: ", ids.size(), " ids for log-probabilities ", log_probs.describe()));
  if (t < 2) return {};
  if (t * v > std::numeric_limits<int32_t>::max())
    throw Error(cat("next_token_losses: ", log_probs.describe(), " has more elements than int32 indices reach"));
  // One element per row, gathered on the device: the flat index of (t, ids[t + 1]) in [T * V, 1].
  std::vector<double> flat(t - 1);
  for (int64_t row = 0; row + 1 < t; ++row) {
    if (ids[row + 1] < 0 || ids[row + 1] >= v)
      throw Error(cat("next_token_losses: id ", ids[row + 1], " is outside the vocabulary [0, ", v, ")"));
    flat[row] = static_cast<double>(row * v + ids[row + 1]);
  }
  const Tensor index = Tensor::from_vector(flat, Shape{t - 1}, DType::I32, log_probs.device());
  std::vector<double> losses = embedding(log_probs.reshape(Shape{t * v, 1}), index).to_vector();
  for (double& loss : losses) loss = -loss;
  return losses;
}

std::vector<double> kl_per_position(const Tensor& log_p, const Tensor& log_q) {
  if (log_p.ndim() != 2 || log_p.shape() != log_q.shape())
    throw Error(cat("kl_per_position: expects two [T, V], got ", log_p.describe(), " and ", log_q.describe()));
  return sum(mul(exp(log_p), sub(log_p, log_q)), 1).to_vector();
}

}  // namespace sae

// ---------------------------------------------------------------- fused, on the host

namespace sae {

namespace {

void check_host_logits(const Tensor& logits, const std::vector<int32_t>& ids, const char* who) {
  if (logits.ndim() != 2 || logits.dtype() != DType::F32 || logits.device() != Device::CPU ||
      logits.size(0) != static_cast<int64_t>(ids.size()))
    throw Error(cat(who, ": expects host float32 logits [T, V] for ", ids.size(), " ids, got ", logits.describe()));
  for (size_t t = 1; t < ids.size(); ++t)
    if (ids[t] < 0 || ids[t] >= logits.size(1))
      throw Error(cat(who, ": id ", ids[t], " is outside the vocabulary [0, ", logits.size(1), ")"));
}

// lse of one row; when `p` is given, exp(z - lse) is written there. exp(z - max) below exp(-87)
// (near FLT_MIN) counts as 0: the row's sum is at least 1, so those terms cannot change it, and
// glibc's expf takes a slow path for every result that underflows, which made rows of widely
// spread logits much slower. The clamp is stored before the exp is taken (in chunks on the stack):
// GCC turns exp(d < -87 ? -87 : d) in one loop into exp(d) and a select after it.
double row_lse(const float* z, int64_t v, float* p) {
  float top = -INFINITY;
#pragma omp simd reduction(max : top)
  for (int64_t j = 0; j < v; ++j) top = z[j] > top ? z[j] : top;
  constexpr int64_t kChunk = 1024;
  alignas(64) float d[kChunk];
  double sum = 0;
  for (int64_t j0 = 0; j0 < v; j0 += kChunk) {
    const int64_t n = std::min(kChunk, v - j0);
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) d[k] = std::max(z[j0 + k] - top, -87.0f);
    if (p) {
#pragma omp simd reduction(+ : sum)
      for (int64_t k = 0; k < n; ++k) {
        p[j0 + k] = math_exp(d[k]) * static_cast<float>(d[k] > -87.0f);
        sum += p[j0 + k];
      }
    } else {
#pragma omp simd reduction(+ : sum)
      for (int64_t k = 0; k < n; ++k) sum += math_exp(d[k]) * static_cast<float>(d[k] > -87.0f);
    }
  }
  if (p) {
    const float scale = static_cast<float>(1.0 / sum);
#pragma omp simd
    for (int64_t j = 0; j < v; ++j) p[j] *= scale;
  }
  return static_cast<double>(top) + std::log(sum);
}

}  // namespace

double next_token_ce(const Tensor& logits, const std::vector<int32_t>& ids) {
  check_host_logits(logits, ids, "next_token_ce");
  const int64_t t = logits.size(0), v = logits.size(1);
  const float* z = logits.data<float>();
  std::vector<double> lse(static_cast<size_t>(t));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < t - 1; ++r) lse[r] = row_lse(z + r * v, v, nullptr);
  double ce = 0;
  for (int64_t r = 0; r + 1 < t; ++r) ce += lse[r] - static_cast<double>(z[r * v + ids[r + 1]]);
  return ce;
}

CleanScores score_clean_run(Tensor logits, const std::vector<int32_t>& ids, int64_t first) {
  check_host_logits(logits, ids, "score_clean_run");
  const int64_t t = logits.size(0), v = logits.size(1);
  CleanScores s;
  s.lse.assign(static_cast<size_t>(t), 0.0);
  s.p.resize(static_cast<size_t>(t * v));
  const float* z = logits.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < t; ++r) s.lse[r] = row_lse(z + r * v, v, s.p.data() + r * v);
  for (int64_t r = first; r + 1 < t; ++r) s.ce += s.lse[r] - static_cast<double>(z[r * v + ids[r + 1]]);
  s.logits = std::move(logits);
  return s;
}

RunScoreSums score_run(const Tensor& logits, const std::vector<int32_t>& ids, const CleanScores& clean,
                       int64_t first) {
  check_host_logits(logits, ids, "score_run");
  if (logits.shape() != clean.logits.shape())
    throw Error(cat("score_run: logits ", logits.describe(), " and the clean run's ", clean.logits.describe()));
  const int64_t t = logits.size(0), v = logits.size(1);
  const float *zq = logits.data<float>(), *zp = clean.logits.data<float>();
  std::vector<double> lse(static_cast<size_t>(t)), kl(static_cast<size_t>(t));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < t; ++r) {
    lse[r] = row_lse(zq + r * v, v, nullptr);
    const float *p = clean.p.data() + r * v, *a = zp + r * v, *b = zq + r * v;
    double dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < v; ++j) dot += static_cast<double>(p[j]) * static_cast<double>(a[j] - b[j]);
    kl[r] = dot - clean.lse[r] + lse[r];
  }
  RunScoreSums sums;
  for (int64_t r = first; r < t; ++r) {
    sums.kl += kl[r];
    if (r + 1 < t) sums.ce += lse[r] - static_cast<double>(zq[r * v + ids[r + 1]]);
  }
  return sums;
}

}  // namespace sae
