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
