// What the language model's logits say about the text, per position, computed with tensor ops on
// the logits' device (float32, as PyTorch's log_softmax) and read back as doubles:
//   log_softmax_rows:   log p[t, v] = z[t, v] - m_t - log sum_v exp(z[t, v] - m_t), m_t = max_v z[t, v]
//   next_token_losses:  -log p[t, ids[t + 1]] for t = 0..T-2 (the cross-entropy of each prediction)
//   kl_per_position:    KL(p || q)[t] = sum_v p[t, v] (log p[t, v] - log q[t, v]), from log p and log q
// Letters: T positions, V vocabulary.
#pragma once
#include <cstdint>
#include <vector>

#include "tensor/tensor.h"

namespace sae {

Tensor log_softmax_rows(const Tensor& logits);  // [T, V] -> [T, V]
std::vector<double> next_token_losses(const Tensor& log_probs, const std::vector<int32_t>& ids);  // [T-1]
std::vector<double> kl_per_position(const Tensor& log_p, const Tensor& log_q);                    // [T]

}  // namespace sae

namespace sae {

// The same numbers fused for logits on the host (sae_eval's four runs per window): one pass over a
// row of [T, V] gives its log-normaliser lse[t] = m + log sum_v exp(z[t, v] - m) (float exp, double
// sums), the clean run's probabilities are kept, and each other run's KL against them is
//   KL(p || q)[t] = sum_v p[t, v] (z_p[t, v] - z_q[t, v]) - lse_p[t] + lse_q[t]
// in a second pass without exp. CE[t] = lse[t] - z[t, ids[t + 1]]. Positions before `first` are
// left out of the sums (their predictions and their KL): a window's BOS, as SAELens's evals mask it.
// The summed next-token CE of host logits alone (one lse pass per row, nothing kept).
double next_token_ce(const Tensor& logits, const std::vector<int32_t>& ids);
struct CleanScores {
  Tensor logits;                // [T, V] (host)
  std::vector<double> lse;      // [T]
  std::vector<float> p;         // [T, V]: exp(z - lse)
  double ce = 0;                // sum of the losses of positions first .. T-2
};
CleanScores score_clean_run(Tensor logits, const std::vector<int32_t>& ids, int64_t first = 0);
struct RunScoreSums {
  double ce = 0, kl = 0;        // sums over the predictions and the positions
};
RunScoreSums score_run(const Tensor& logits, const std::vector<int32_t>& ids, const CleanScores& clean,
                       int64_t first = 0);

}  // namespace sae
