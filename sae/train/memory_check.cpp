// The host-memory refusal (see memory_check.h).
#include "sae/train/memory_check.h"

#include <sys/resource.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "tensor/error.h"

namespace sae {

namespace {

// A "Name:   N kB" line of a /proc file, in bytes; -1 when absent.
double proc_kb(const char* path, const std::string& name) {
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(name + ":", 0) != 0) continue;
    std::istringstream fields(line.substr(name.size() + 1));
    double kb = -1;
    fields >> kb;
    return kb >= 0 ? kb * 1024.0 : -1;
  }
  return -1;
}

// The first number of a one-line file (cgroup v2's memory.max / memory.current); -1 for "max" or none.
double file_number(const char* path) {
  std::ifstream in(path);
  std::string text;
  if (!(in >> text) || text == "max") return -1;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  return end && *end == '\0' && v >= 0 ? v : -1;
}

}  // namespace

HostMemory available_host_memory() {
  HostMemory m;
  if (const char* test = std::getenv("SAE_TEST_AVAILABLE_MEMORY")) {
    m.bytes = std::strtod(test, nullptr);
    m.source = "SAE_TEST_AVAILABLE_MEMORY";
    return m;
  }
  const double available = proc_kb("/proc/meminfo", "MemAvailable"), swap = proc_kb("/proc/meminfo", "SwapFree");
  if (available >= 0) {
    m.bytes = available + std::max(swap, 0.0);
    m.source = "MemAvailable + SwapFree";
  }
  const double limit = file_number("/sys/fs/cgroup/memory.max"), used = file_number("/sys/fs/cgroup/memory.current");
  if (limit >= 0 && used >= 0 && (m.bytes < 0 || limit - used < m.bytes)) {
    m.bytes = std::max(limit - used, 0.0);
    m.source = "the cgroup's memory.max - memory.current";
  }
  rlimit as{};
  if (::getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != RLIM_INFINITY) {
    const double size = proc_kb("/proc/self/status", "VmSize");
    const double left = std::max(double(as.rlim_cur) - std::max(size, 0.0), 0.0);
    if (m.bytes < 0 || left < m.bytes) {
      m.bytes = left;
      m.source = "ulimit -v (RLIMIT_AS) less this process's address space";
    }
  }
  return m;
}

double SaeFootprint::lower_bound() const {
  const double parameters = double(d_in) * double(latents) + double(latents) * double(d_out) + double(latents) +
                            double(d_out);
  return 3.0 * 4.0 * parameters + double(tokens) * double(latents) * cell_bytes;
}

std::string format_bytes(double bytes) {
  char text[32];
  if (bytes >= 1e9)
    std::snprintf(text, sizeof text, "%.1f GB", bytes / 1e9);
  else
    std::snprintf(text, sizeof text, "%.0f MB", std::ceil(bytes / 1e6));
  return text;
}

void check_host_memory(const std::vector<SaeFootprint>& saes, const HostMemory& memory) {
  if (memory.bytes < 0 || saes.empty()) return;
  double need = 0, weights = 0, cells = 0;
  for (const SaeFootprint& s : saes) {
    need += s.lower_bound();
    cells += double(s.tokens) * double(s.latents) * s.cell_bytes;
  }
  weights = need - cells;
  if (need <= memory.bytes) return;
  const SaeFootprint& first = saes.front();
  const std::string what =
      saes.size() == 1 ? cat("the SAE (F ", first.latents, " x d ", first.d_in, ")")
                       : cat("the ", saes.size(), " SAEs trained together");
  throw Error(cat("not enough memory for this run: ", what, saes.size() == 1 ? " needs at least " : " need at least ", format_bytes(need),
                  " (weights and Adam's two moments ", format_bytes(weights), ", the batch's ", first.tokens, " x ",
                  first.latents, " pre-activations ", format_bytes(cells), ") and this process can get ",
                  format_bytes(memory.bytes), " (", memory.source, "): lower --features (--expansion-factor) or "
                  "--batch, or train on a GPU (--device cuda)"));
}

}  // namespace sae
