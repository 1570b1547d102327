// The CPU backend's threads: our OpenMP loops and OpenBLAS share one OpenMP pool, sized here.
#pragma once

namespace sae {

// Sets the threads of the CPU kernels and of OpenBLAS to n >= 1 (UsageError otherwise).
void set_cpu_threads(int n);
// The threads a parallel CPU kernel will use.
int cpu_threads();

}  // namespace sae
