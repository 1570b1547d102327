// SKIP_WITHOUT_GPU(): the first line of every CUDA test. Without a GPU the test is skipped, with
// the reason (cudaGetDeviceCount's error, no device, or a build without CUDA) in the message; with
// SAE_REQUIRE_GPU=1 in the environment (scripts/device_check.sh sets it on the device) it fails
// instead, so that a CUDA start-up failure cannot pass as a green run of skipped tests.
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "tensor/cuda/backend.h"

namespace sae::testing {
inline bool gpu_required() {
  const char* v = std::getenv("SAE_REQUIRE_GPU");
  return v && std::string(v) == "1";
}
}  // namespace sae::testing

#define SKIP_WITHOUT_GPU()                                                                             \
  do {                                                                                                  \
    if (!sae::cuda_available()) {                                                                       \
      if (sae::testing::gpu_required()) FAIL() << "SAE_REQUIRE_GPU=1 but " << sae::cuda_unavailable_reason(); \
      GTEST_SKIP() << "no GPU: " << sae::cuda_unavailable_reason();                                   \
    }                                                                                                   \
  } while (0)
