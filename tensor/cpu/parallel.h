// Shared by the CPU kernels (tensor/cpu, sae/step): when a loop is worth splitting across threads.
#pragma once
#include <cstdint>

namespace sae {

// Below this many elements a loop runs on one thread: waking the other threads costs more than it
// saves. On a busy machine much more: each parallel region waits for its slowest thread to be
// scheduled again, so a run of small steps (D 384, F 64, a story per step) beside two CPU-bound
// processes took 2.7x as long with every core as with one thread. At 2^18 floats (1 MiB,
// ~0.1 ms of simple work on one core) the wake-up is a small part of what is split.
constexpr int64_t kParallelMin = 1 << 18;
// GEMMs below this many multiply-adds run OpenBLAS on one thread (~0.2 ms of AVX-512 work on one
// core); OpenBLAS alone threads everything above 2^18 (tensor/cpu/kernels.cpp, matmul).
constexpr double kGemmParallelMin = double(1 << 24);

}  // namespace sae
