// The benchmark runner's main: the CPU runtime's start-up settings first (tensor/cpu_runtime.h), as
// the programs have them, and the OpenBLAS kernels in use in the context lines.
#include <benchmark/benchmark.h>

#include "tensor/cpu_runtime.h"

int main(int argc, char** argv) {
  sae::restart_with_cpu_runtime_environment(argv);
  benchmark::AddCustomContext("openblas_core", sae::blas_core_name());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
