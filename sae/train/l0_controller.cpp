// The L0 set-point controller (see l0_controller.h).
#include "sae/train/l0_controller.h"

#include <algorithm>
#include <cmath>

#include "tensor/error.h"

namespace sae {

namespace {
// A batch where nothing fired would make log(Lbar / L*) -infinite: Lbar is floored here.
constexpr double kSmallestL0 = 1e-6;
constexpr double kLogRange = 10.0;  // without a scale, u stays within log lambda0 +- this
// With the data's scale lambda_s, lambda stays within [lambda_s / 1000, 10 lambda_s]. Above: a standard
// SAE whose penalty outweighs what L* latents can reconstruct shrinks its decoder rows instead of
// silencing latents (the penalty f ||W_dec|| is unchanged when f grows as ||W_dec|| shrinks); its L0
// then no longer answers lambda, and a controller pushing lambda further made it collapse (measured
// on planted data: lambda 10x its settling value took the decoder norms from ~1 to 3e-4 within 100
// steps, and L0 stayed above 100).
constexpr double kBelowScale = 1000.0, kAboveScale = 10.0;
// The ceiling starts at lambda_s / 3 and rises by delta a step: lambda approaches from below, as a
// run started at lambda_s / 3 and raised as fast as delta allows would (started at lambda_s or above,
// the same planted runs collapsed; from below they reach the target within 1%).
constexpr double kCeilingStart = 3.0;
// The integral term reads the error clamped to +-0.5 (L0 within a factor e^0.5 = 1.65 of the target):
// far from it, lambda moves at K_i 0.5 a step at most, and the K_p term (L0 already falling fast
// enough) can hold it; unclamped, the early L0 of a fresh SAE (~F/2, falling on its own) pushed
// lambda to its ceiling and past where the decoder collapses.
constexpr double kErrorLimit = 0.5;
}  // namespace

double lambda_scale(bool l0_penalty, double mean_squared_norm, double target) {
  if (!(mean_squared_norm > 0) || !std::isfinite(mean_squared_norm) || !(target > 0))
    throw DataError(cat("--target-l0: cannot take lambda's scale from inputs of mean squared norm ", mean_squared_norm,
                        " (give --l1 to start the controller)"));
  return l0_penalty ? mean_squared_norm / target : std::sqrt(mean_squared_norm / target);
}

L0Controller::L0Controller(const L0ControllerSettings& settings, double lambda0) : settings_(settings) {
  if (!(lambda0 > 0) || !std::isfinite(lambda0))
    throw UsageError(cat("--target-l0 needs a starting --l1 > 0, got ", lambda0));
  if (settings.scale > 0 && std::isfinite(settings.scale)) {
    u_min_ = std::log(settings.scale) - std::log(kBelowScale);
    u_max_ = std::log(settings.scale) + std::log(kAboveScale);
    ceiling_ = std::log(settings.scale) - std::log(kCeilingStart);
  } else {
    u_min_ = std::log(lambda0) - kLogRange;
    u_max_ = std::log(lambda0) + kLogRange;
    ceiling_ = u_max_;
  }
  u_ = std::clamp(std::log(lambda0), u_min_, ceiling_);
}

double L0Controller::lambda() const { return std::exp(u_); }

void L0Controller::update(double batch_l0) {
  smoothed_ = started_ ? (1 - settings_.ema) * smoothed_ + settings_.ema * batch_l0 : batch_l0;
  const double error = std::log(std::max(smoothed_, kSmallestL0) / settings_.target);
  double change = settings_.ki * std::clamp(error, -kErrorLimit, kErrorLimit);
  if (started_) change += settings_.kp * (error - previous_error_);
  change = std::clamp(change, -settings_.max_change, settings_.max_change);
  ceiling_ = std::min(ceiling_ + settings_.max_change, u_max_);
  u_ = std::clamp(u_ + change, u_min_, ceiling_);
  previous_error_ = error;
  started_ = true;
}

Json L0Controller::state() const {
  Json j = Json::object();
  j["log_lambda"] = u_;
  j["log_lambda_min"] = u_min_;
  j["log_lambda_max"] = u_max_;
  j["log_lambda_ceiling"] = ceiling_;
  j["smoothed_l0"] = smoothed_;
  j["previous_error"] = previous_error_;
  j["started"] = started_;
  return j;
}

void L0Controller::restore(const Json& state) {
  try {
    u_ = state.at("log_lambda").as_number();
    u_min_ = state.at("log_lambda_min").as_number();
    u_max_ = state.at("log_lambda_max").as_number();
    ceiling_ = state.has("log_lambda_ceiling") ? state.at("log_lambda_ceiling").as_number() : u_max_;
    smoothed_ = state.at("smoothed_l0").as_number();
    previous_error_ = state.at("previous_error").as_number();
    started_ = state.at("started").as_bool();
  } catch (const DataError& e) {
    throw DataError(cat("l0_controller: ", e.what()));
  }
  if (!std::isfinite(u_) || !std::isfinite(u_min_) || !std::isfinite(u_max_) || u_ < u_min_ || u_ > u_max_ || !std::isfinite(ceiling_) ||
      !std::isfinite(smoothed_) || smoothed_ < 0 || !std::isfinite(previous_error_))
    throw DataError("l0_controller: values out of range");
}

}  // namespace sae
