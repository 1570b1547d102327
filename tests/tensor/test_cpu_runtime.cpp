// The CPU runtime's start-up settings (tensor/cpu_runtime.h): the test runner applies them, so by
// the time a test runs nothing is left to set, and OpenBLAS runs a kernel family with AVX2 whenever
// the CPU has it.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "tensor/cpu_runtime.h"

using namespace sae;

TEST(CpuRuntime, TheTestRunnerStartedWithEverySetting) {
  EXPECT_NE(std::getenv("OMP_WAIT_POLICY"), nullptr);
  EXPECT_TRUE(cpu_runtime_environment().empty()) << "left to set: " << cpu_runtime_environment().front().first;
}

TEST(CpuRuntime, OpenBlasUsesAvx2KernelsWhenTheCpuHasAvx2) {
  const std::string core = blas_core_name();
  std::printf("OpenBLAS core: %s (OPENBLAS_CORETYPE %s)\n", core.c_str(),
              std::getenv("OPENBLAS_CORETYPE") ? std::getenv("OPENBLAS_CORETYPE") : "unset");
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) GTEST_SKIP() << "this CPU has no AVX2/FMA";
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr && std::string(std::getenv("OPENBLAS_CORETYPE")) == "Prescott")
    GTEST_SKIP() << "OPENBLAS_CORETYPE=Prescott was asked for";
  for (const char* old : {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom", "Sandybridge"})
    EXPECT_NE(core, old);
#endif
}
