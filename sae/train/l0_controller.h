// The L0 set-point controller (--target-l0, docs/architectures.md §2.9): adjusts the sparsity
// coefficient lambda of a penalised SAE (standard L1, JumpReLU, Gated) during training so that the
// batch-average L0 reaches and holds a target L*.
//   u = log lambda;  Lbar <- L on the first controlled step, else (1 - a) Lbar + a L
//   e = log(Lbar / L*);  du = K_i e + K_p (e - e_prev)  (no K_p term on the first step)
//   du clamped to [-delta, delta];  u <- clamp(u + du, log lambda0 - 10, log lambda0 + 10)
// Velocity form: the clamp on u is also the anti-windup. Its state goes into checkpoints, so a
// resumed run continues exactly.
#pragma once
#include "io/json.h"

namespace sae {

struct L0ControllerSettings {
  double target = 0;        // L*, latents per token (> 0)
  double ki = 1e-3;         // K_i, per step
  double kp = 0.1;          // K_p, on the change of the smoothed error
  double ema = 0.01;        // a, the weight of the newest batch in Lbar
  double max_change = 0.01; // delta: |du| per step (lambda changes by at most ~1 % a step)
};

class L0Controller {
 public:
  // lambda0 > 0: where the controller starts (the run's --l1).
  L0Controller(const L0ControllerSettings& settings, double lambda0);
  double lambda() const;                // the coefficient for the next step
  double smoothed_l0() const { return smoothed_; }  // Lbar (0 before the first update)
  void update(double batch_l0);         // after a step, with that step's mean L0 per token
  Json state() const;                   // for checkpoints
  void restore(const Json& state);      // DataError when malformed

 private:
  L0ControllerSettings settings_;
  double u_, u_min_, u_max_;
  double smoothed_ = 0, previous_error_ = 0;
  bool started_ = false;
};

}  // namespace sae
