// Log-softmax, next-token losses and KL per position (see next_token.h). T positions, V vocabulary.
#include "sae/eval/next_token.h"

#include <limits>

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
