// Shared by the CPU kernels (tensor/cpu, sae/step): when a loop is worth splitting across threads.
#pragma once
#include <cstdint>

namespace sae {

// Below this many elements a loop runs on one thread: thread wake-up costs more than it saves.
constexpr int64_t kParallelMin = 1 << 15;

}  // namespace sae
