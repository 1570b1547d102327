// The CPU runtime's start-up environment (tensor/cpu_runtime.h).
#include "tensor/cpu_runtime.h"

#include <cblas.h>
#include <unistd.h>

#include <cctype>
#include <cstdlib>

namespace sae {
namespace {

// OpenBLAS kernel families with no AVX2: what its dynamic dispatch falls back to for a CPU model
// it does not know.
bool is_pre_avx2_core(std::string name) {
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const char* old : {"prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "northwood", "banias",
                          "katmai", "coppermine", "opteron", "opteron_sse3", "barcelona", "bobcat", "sandybridge"})
    if (name == old) return true;
  return false;
}

const char* best_openblas_core() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return nullptr;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return "SkylakeX";
  return "Haswell";
#else
  return nullptr;
#endif
}

}  // namespace

std::string blas_core_name() {
  const char* name = openblas_get_corename();
  return name != nullptr ? name : "unknown";
}

std::vector<std::pair<std::string, std::string>> cpu_runtime_environment() {
  std::vector<std::pair<std::string, std::string>> set;
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) set.emplace_back("OMP_WAIT_POLICY", "passive");
  if (std::getenv("OPENBLAS_CORETYPE") == nullptr && is_pre_avx2_core(blas_core_name()))
    if (const char* core = best_openblas_core()) set.emplace_back("OPENBLAS_CORETYPE", core);
  return set;
}

void restart_with_cpu_runtime_environment(char** argv) {
  if (argv == nullptr || argv[0] == nullptr) return;
  const auto set = cpu_runtime_environment();
  if (set.empty()) return;
  for (const auto& [name, value] : set) ::setenv(name.c_str(), value.c_str(), 1);
  ::execv("/proc/self/exe", argv);  // returns only when it failed: then run as we are
}

std::string omp_wait_policy() {
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  return policy ? policy : "(unset: OpenMP's default)";
}

}  // namespace sae
