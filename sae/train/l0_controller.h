// The L0 set-point controller (--target-l0, docs/architectures.md §2.9 and §7.7): adjusts the
// sparsity coefficient lambda of a penalised SAE (standard L1, JumpReLU, Gated) during training so
// that the batch-average L0 reaches and holds a target L*.
//   u = log lambda;  Lbar <- L on the first controlled step, else (1 - a) Lbar + a L
//   e = log(Lbar / L*);  du = K_i clamp(e, -0.5, 0.5) + K_p (e - e_prev)  (no K_p term on the first step)
//   du clamped to [-delta, delta];  c <- min(c + delta, u_max);  u <- clamp(u + du, u_min, c)
// With the data's scale of lambda, lambda_s (lambda_scale below): u_min = log(lambda_s / 1000),
// u_max = log(10 lambda_s), and the ceiling c starts at log(lambda_s / 3), so lambda approaches its
// value from below whatever lambda0 is (a standard SAE given too large a lambda early shrinks its
// decoder rows instead of silencing latents, and then its L0 no longer answers lambda; see the .cpp).
// Without a scale: u within log lambda0 +- 10, no ceiling. Velocity form: the clamps on u are also
// the anti-windup. Its state goes into checkpoints, so a resumed run continues exactly.
#pragma once
#include "io/json.h"

namespace sae {

struct L0ControllerSettings {
  double target = 0;        // L*, latents per token (> 0)
  double ki = 0.02;         // K_i, per step
  double kp = 2.0;          // K_p, on the change of the smoothed error
  double ema = 0.05;        // a, the weight of the newest batch in Lbar
  double max_change = 0.01; // delta: |du| per step (lambda changes by at most ~1 % a step)
  double scale = 0;         // lambda_s, the data's scale of lambda (0: none)
};

// The data's scale of lambda for an L0 target: where the penalty of L* active latents is of the
// order of the reconstruction they buy. mean_squared_norm = E ||x||^2 of the SAE's inputs (D after
// story normalisation, and taken as D after dataset normalisation); each of L* equal activations then has size sqrt(E / L*):
//   L1 penalties (standard, gated: lambda f ||W_dec||, a soft threshold at about lambda / 2):
//     lambda_s = sqrt(E / L*);
//   L0-like penalties (jumprelu step and tanh: lambda per active latent, against an energy E / L*):
//     lambda_s = E / L*.
// A --target-l0 run without --l1 starts at lambda_s (sae_train --profile demo --target-l0 8: 5.66;
// the controller settles at 6.0).
double lambda_scale(bool l0_penalty, double mean_squared_norm, double target);

class L0Controller {
 public:
  // lambda0 > 0: where the controller starts (the run's --l1, or lambda_scale), within the bounds.
  L0Controller(const L0ControllerSettings& settings, double lambda0);
  double lambda() const;                // the coefficient for the next step
  double smoothed_l0() const { return smoothed_; }  // Lbar (0 before the first update)
  void update(double batch_l0);         // after a step, with that step's mean L0 per token
  Json state() const;                   // for checkpoints
  void restore(const Json& state);      // DataError when malformed

 private:
  L0ControllerSettings settings_;
  double u_, u_min_, u_max_, ceiling_;
  double smoothed_ = 0, previous_error_ = 0;
  bool started_ = false;
};

}  // namespace sae
