// The L0 set-point controller (see l0_controller.h).
#include "sae/train/l0_controller.h"

#include <algorithm>
#include <cmath>

#include "tensor/error.h"

namespace sae {

namespace {
// A batch where nothing fired would make log(Lbar / L*) -infinite: Lbar is floored here.
constexpr double kSmallestL0 = 1e-6;
constexpr double kLogRange = 10.0;  // u stays within log lambda0 +- this
}  // namespace

L0Controller::L0Controller(const L0ControllerSettings& settings, double lambda0) : settings_(settings) {
  if (!(lambda0 > 0) || !std::isfinite(lambda0))
    throw UsageError(cat("--target-l0 needs a starting --l1 > 0, got ", lambda0));
  u_ = std::log(lambda0);
  u_min_ = u_ - kLogRange;
  u_max_ = u_ + kLogRange;
}

double L0Controller::lambda() const { return std::exp(u_); }

void L0Controller::update(double batch_l0) {
  smoothed_ = started_ ? (1 - settings_.ema) * smoothed_ + settings_.ema * batch_l0 : batch_l0;
  const double error = std::log(std::max(smoothed_, kSmallestL0) / settings_.target);
  double change = settings_.ki * error;
  if (started_) change += settings_.kp * (error - previous_error_);
  change = std::clamp(change, -settings_.max_change, settings_.max_change);
  u_ = std::clamp(u_ + change, u_min_, u_max_);
  previous_error_ = error;
  started_ = true;
}

Json L0Controller::state() const {
  Json j = Json::object();
  j["log_lambda"] = u_;
  j["log_lambda_min"] = u_min_;
  j["log_lambda_max"] = u_max_;
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
    smoothed_ = state.at("smoothed_l0").as_number();
    previous_error_ = state.at("previous_error").as_number();
    started_ = state.at("started").as_bool();
  } catch (const DataError& e) {
    throw DataError(cat("l0_controller: ", e.what()));
  }
  if (!std::isfinite(u_) || !std::isfinite(u_min_) || !std::isfinite(u_max_) || u_ < u_min_ || u_ > u_max_ ||
      !std::isfinite(smoothed_) || smoothed_ < 0 || !std::isfinite(previous_error_))
    throw DataError("l0_controller: values out of range");
}

}  // namespace sae
