// The host-memory refusal (see memory_check.h).
#include "sae/train/memory_check.h"

#include <sys/resource.h>

#include <algorithm>
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

// A "name N" line of a cgroup's memory.stat; 0 when absent.
double stat_value(const std::string& path, const std::string& name) {
  std::ifstream in(path);
  std::string key;
  double value = 0;
  while (in >> key >> value)
    if (key == name) return value;
  return 0;
}

}  // namespace

double cgroup_headroom(const std::string& proc_self_cgroup, const std::string& sys_root) {
  double least = -1;
  auto consider = [&](double limit, double used, double reclaimable) {
    if (limit < 0 || used < 0 || limit >= 1e18) return;  // none ("max", v1's 2^63 rounded to pages)
    const double left = std::max(limit - std::max(used - reclaimable, 0.0), 0.0);
    if (least < 0 || left < least) least = left;
  };
  std::istringstream lines(proc_self_cgroup);
  for (std::string line; std::getline(lines, line);) {
    // "ID:CONTROLLERS:/PATH": v2 is "0::/PATH", v1's memory controller "N:memory:/PATH" (or listed with others).
    const size_t first = line.find(':'), second = first == std::string::npos ? first : line.find(':', first + 1);
    if (second == std::string::npos) continue;
    const std::string controllers = line.substr(first + 1, second - first - 1);
    std::string path = line.substr(second + 1);
    const bool v2 = line.substr(0, first) == "0" && controllers.empty();
    bool v1 = false;
    std::istringstream names(controllers);
    for (std::string name; std::getline(names, name, ',');) v1 = v1 || name == "memory";
    if (!v2 && !v1) continue;
    const std::string base = v2 ? sys_root : sys_root + "/memory";
    // This cgroup and every one above it: a limit higher up binds as well.
    for (;;) {
      const std::string dir = base + (path == "/" ? std::string() : path);
      if (v2)
        consider(file_number((dir + "/memory.max").c_str()), file_number((dir + "/memory.current").c_str()),
                 stat_value(dir + "/memory.stat", "inactive_file"));
      else
        consider(file_number((dir + "/memory.limit_in_bytes").c_str()),
                 file_number((dir + "/memory.usage_in_bytes").c_str()),
                 stat_value(dir + "/memory.stat", "total_inactive_file"));
      if (path.empty() || path == "/") break;
      const size_t cut = path.rfind('/');
      path = cut == 0 || cut == std::string::npos ? "/" : path.substr(0, cut);
    }
  }
  return least;
}

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
  std::ifstream groups("/proc/self/cgroup");
  std::stringstream text;
  text << groups.rdbuf();
  const double headroom = cgroup_headroom(text.str(), "/sys/fs/cgroup");
  if (headroom >= 0 && (m.bytes < 0 || headroom < m.bytes)) {
    m.bytes = headroom;
    m.source = "the cgroup's limit less its use";
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

double SaeFootprint::parameters() const {
  return double(d_in) * double(latents) + double(latents) * double(d_out) + double(latents) + double(d_out);
}

double SaeFootprint::lower_bound() const {
  return 3.0 * 4.0 * parameters() + double(tokens) * double(latents) * cell_bytes + stats_bytes;
}

double chunk_budget_need(const SaeFootprint& s, int64_t rows, const ChunkBudget& budget) {
  return (budget.parameter_copies + s.gradient_copies) * 4.0 * s.parameters() +
         double(rows) * double(s.latents) * s.cell_bytes + s.stats_bytes;
}

std::vector<int64_t> pre_activation_rows_that_fit(const std::vector<SaeFootprint>& saes,
                                                  const std::vector<bool>& chunkable, const ChunkBudget& budget) {
  std::vector<int64_t> rows;
  double need = 0, fixed = 0, chunked_cells = 0;  // bytes; chunked_cells: of one row of every chunkable SAE
  for (size_t i = 0; i < saes.size(); ++i) {
    rows.push_back(saes[i].tokens);
    need += chunk_budget_need(saes[i], saes[i].tokens, budget);
    fixed += chunk_budget_need(saes[i], chunkable[i] ? 0 : saes[i].tokens, budget);
    if (chunkable[i]) chunked_cells += double(saes[i].latents) * saes[i].cell_bytes;
  }
  const double usable = budget.bytes - budget.other_bytes;
  if (budget.bytes < 0 || need <= usable || chunked_cells <= 0) return rows;
  const double fit = std::floor((usable - fixed) / chunked_cells);
  const int64_t most = fit >= 1 ? static_cast<int64_t>(std::min(fit, 1e18)) : 0;
  for (size_t i = 0; i < saes.size(); ++i)
    if (chunkable[i]) rows[i] = std::min(std::max(most, std::min(budget.min_rows, saes[i].tokens)), saes[i].tokens);
  return rows;
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
  double need = 0, weights = 0, cells = 0, stats = 0;
  for (const SaeFootprint& s : saes) {
    need += s.lower_bound();
    cells += double(s.tokens) * double(s.latents) * s.cell_bytes;
    stats += s.stats_bytes;
  }
  weights = need - cells - stats;
  if (need <= memory.bytes) return;
  const SaeFootprint& first = saes.front();
  const bool one = saes.size() == 1;
  bool hint = false;
  for (const SaeFootprint& s : saes) hint = hint || s.fewer_rows;
  const std::string what =
      one ? cat("the SAE (F ", first.latents, " x d ", first.d_in,
                first.d_out != first.d_in ? cat(" -> ", first.d_out) : std::string(), ")")
          : cat("the ", saes.size(), " SAEs trained together");
  const std::string arrays = one ? cat(first.tokens, " x ", first.latents, " pre-activations ")
                                 : std::string("their pre-activations ");
  throw Error(cat("not enough memory for this run: ", what, one ? " needs at least " : " need at least ",
                  format_bytes(need), " (weights and Adam's two moments ", format_bytes(weights), ", ", arrays,
                  format_bytes(cells), stats > 0 ? cat(", feature statistics ", format_bytes(stats)) : std::string(),
                  ") and this process can get ", format_bytes(memory.bytes), " (", memory.source,
                  "): lower --features (--expansion-factor) or --batch", hint ? " (topk: --encoder-chunk)" : "",
                  stats > 0 ? ", gather no feature statistics (--feature-stats-steps 0)" : "",
                  ", or train on a GPU (--device cuda)"));
}

}  // namespace sae
