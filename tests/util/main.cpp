// The test runner's main: the CPU runtime's start-up settings first (tensor/cpu_runtime.h), as the
// programs the tests run have them, so in-process and program results come from the same kernels.
#include <gtest/gtest.h>

#include "tensor/cpu_runtime.h"

int main(int argc, char** argv) {
  sae::restart_with_cpu_runtime_environment(argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
