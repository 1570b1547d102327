// The CPU backend's threads: our OpenMP loops and OpenBLAS share one OpenMP pool, sized here. Loops
// and GEMMs below a size run on one thread (tensor/cpu/parallel.h).
#pragma once

namespace sae {

// Sets the threads of the CPU kernels and of OpenBLAS to n >= 1 (UsageError otherwise).
void set_cpu_threads(int n);
// The threads a parallel CPU kernel will use.
int cpu_threads();
// While another thread may run GEMMs at the same time (a background batch prefetcher running the
// language model), small GEMMs keep the full thread count instead of switching OpenBLAS to one
// thread and back (its count is one global, read by every thread). Calls nest: true then false.
void set_blas_shared_between_threads(bool shared);
bool blas_shared_between_threads();
// The same for a scope (threads that run GEMMs side by side, as tests' simulated ranks do: switching
// the count while another thread is in a GEMM crashed OpenBLAS 0.3.21 now and then).
struct BlasSharedScope {
  BlasSharedScope() { set_blas_shared_between_threads(true); }
  ~BlasSharedScope() { set_blas_shared_between_threads(false); }
  BlasSharedScope(const BlasSharedScope&) = delete;
  BlasSharedScope& operator=(const BlasSharedScope&) = delete;
};

}  // namespace sae
