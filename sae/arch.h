// The SAE architectures (docs/architectures.md §2: our formulation) and the per-run constants the
// training step needs to know about them. The sparsity coefficient lambda is not here: the trainer
// passes it to every step (a schedule or a controller may change it from step to step).
//   standard   f = relu(P), loss = rec + lambda sum_{t,i} f n_i                (the study's SAE)
//   topk       f = relu(P) on the k largest P of each token                   (Gao et al. 2024)
//   batchtopk  f = relu(P) on the k N largest relu(P) of the batch            (Bussmann et al. 2024)
//   jumprelu   f = P H(P - theta), theta = exp(log_threshold), straight-through estimators
//   gated      f = H(x W_enc + b_gate) relu(x W_enc exp(r_mag) + b_mag)        (Rajamanoharan et al. 2024)
// Letters: P = x W_enc + b_enc the pre-activation [N, F], n_i = ||W_dec[i,:]||, H(z) = 1[z > 0].
#pragma once
#include <cstdint>
#include <string>

namespace sae {

enum class Architecture { Standard, TopK, BatchTopK, JumpReLU, Gated };
Architecture parse_architecture(const std::string& text);  // UsageError naming --architecture
const char* architecture_name(Architecture a);             // "standard", "topk", ...
bool is_topk_family(Architecture a);                       // topk or batchtopk: sparsity set by k

// JumpReLU's sparsity penalty: "step" = lambda sum H(P - theta) (DeepMind's L0), "tanh" = lambda
// sum tanh(c f n) plus the pre-activation loss (Anthropic, January 2025).
enum class JumpReluPenalty { Step, Tanh };
JumpReluPenalty parse_jumprelu_penalty(const std::string& text);  // UsageError naming --jumprelu-penalty
const char* jumprelu_penalty_name(JumpReluPenalty p);

// What one training step computes beyond the standard SAE, fixed for a run.
struct ArchOptions {
  Architecture architecture = Architecture::Standard;
  int64_t k = 0;                    // topk: latents per token; batchtopk: k N latents over the batch
  // AuxK (topk and batchtopk): aux = alpha N sum (e_hat - e)^2 / Z on the k_aux largest dead
  // pre-activations of each token; alpha 0 = off. A latent is dead once dead_tokens tokens have
  // passed without it firing (this batch included).
  double auxk_coefficient = 0.0;
  int64_t auxk_k = 0;
  int64_t dead_tokens = 1000000;
  // Decoder rows kept at unit norm: the gradient of each row loses its component along the row
  // before Adam, and the row is renormalised after.
  bool unit_norm_decoder = false;
  // JumpReLU: rectangle-kernel bandwidth epsilon; the penalty; tanh's c and the pre-activation
  // loss coefficient lambda_P; whether the straight-through estimators also feed P (on for tanh).
  JumpReluPenalty jumprelu_penalty = JumpReluPenalty::Step;
  double jumprelu_bandwidth = 0.001;
  double jumprelu_tanh_c = 4.0;
  double jumprelu_pre_act = 0.0;
  bool jumprelu_ste_to_input = false;
  // BatchTopK's inference threshold: theta <- (1 - rate) theta + rate min{f > 0} after each step.
  double batchtopk_threshold_lr = 0.01;
};

}  // namespace sae
