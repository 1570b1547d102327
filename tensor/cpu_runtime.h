// What the CPU runtime reads from the environment when a process starts, set before it starts.
// OpenMP reads OMP_WAIT_POLICY and OpenBLAS OPENBLAS_CORETYPE while the process loads, before
// main() runs, so the programs (sae/cli run_main), the test runner and the benchmark runner call
// restart_with_cpu_runtime_environment first: it sets what the environment does not already say
// and restarts the process once with it.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace sae {

// The variables to set, each only when the environment does not set it:
//  - OMP_WAIT_POLICY=passive: idle OpenMP threads sleep instead of spinning, which otherwise makes
//    a 2-thread run many times slower whenever another process shares the cores;
//  - OPENBLAS_CORETYPE: when OpenBLAS does not know this CPU and fell back to its SSE-only
//    kernels (e.g. "Prescott" on CPUs newer than its release) although the CPU has AVX2 and FMA,
//    the best kernels it does have: SkylakeX with AVX-512 (F, CD, BW, DQ, VL), else Haswell. On
//    a 2-core Emerald Rapids VM this made the encoder GEMM 3.9x faster (docs/performance.md).
std::vector<std::pair<std::string, std::string>> cpu_runtime_environment();

// Sets cpu_runtime_environment() and, if it set anything, re-executes /proc/self/exe with argv.
// Returns when nothing was missing, or when the restart failed (then the process runs as it is).
void restart_with_cpu_runtime_environment(char** argv);

// The OpenBLAS kernel family in use (openblas_get_corename), for logs and benchmarks.
std::string blas_core_name();

// The OpenMP wait policy this process runs with (OMP_WAIT_POLICY, as OpenMP read it at load), or
// "(unset: OpenMP's default)", for run records.
std::string omp_wait_policy();

}  // namespace sae
