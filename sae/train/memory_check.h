// A run that cannot fit in host memory is refused before its SAEs are made (docs/robustness.md
// "Memory"), instead of being killed by the kernel's out-of-memory killer part-way (Linux overcommits:
// the allocations succeed and the pages fail when touched). What is counted is a lower bound of what
// a CPU step holds per SAE: its parameters, Adam's two moments (3 x 4 bytes x (d_in F + F d_out + F +
// d_out)) and one [N, F] array of pre-activations (4 bytes a cell; 2 at --precision bf16), N the
// rows the unit holds at once (the largest batch, a replica's share, or a topk's --encoder-chunk:
// ArchUnit::pre_activation_rows) and F the latents of this rank. Measured peaks are higher (about
// 4 copies of the parameters and 2 of [N, F]): a run refused here could never have run.
// What the process can get: MemAvailable + SwapFree (/proc/meminfo), or less where a cgroup's limit
// (v2 memory.max, v1 memory.limit_in_bytes, of its cgroup or one above it) less its use (without
// the inactive page cache the kernel reclaims) or RLIMIT_AS (ulimit -v; minus the process's VmSize)
// says so. Under ulimit -v, OpenBLAS's buffers (about 128 MB a thread, not counted) may make it spin
// in its allocator instead of failing: give ulimit -v room beyond the bound.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sae {

struct HostMemory {
  double bytes = -1;       // what this process can still get; < 0: unknown (nothing is refused)
  std::string source;      // where it came from, for the message
};
// SAE_TEST_AVAILABLE_MEMORY=<bytes> stands in for the machine's (tests).
HostMemory available_host_memory();
// The least that the memory cgroups of `proc_self_cgroup` (/proc/self/cgroup's text) and their
// ancestors under `sys_root` (/sys/fs/cgroup) still allow, bytes; -1 when none limits.
double cgroup_headroom(const std::string& proc_self_cgroup, const std::string& sys_root);

// One SAE's shape on this rank.
struct SaeFootprint {
  int64_t d_in = 0, d_out = 0, latents = 0, tokens = 0;  // tokens: the rows of pre-activations held at once
  int cell_bytes = 4;                                    // of an [N, F] array: 2 at --precision bf16
  bool fewer_rows = false;                               // a topk that could hold fewer rows (the refusal says how)
  // A step that keeps every gradient (--max-grad-norm, replicas, --apply-b-dec-to-input: no Adam fused
  // into a TopK step's kernels) holds one more copy than ChunkBudget's count.
  double gradient_copies = 0;
  double stats_bytes = 0;  // its feature statistics (feature_stats_bytes; 0 when none are gathered)
  double parameters() const;                             // d_in F + F d_out + F + d_out
  double lower_bound() const;                            // bytes, as the top of this file says, + stats_bytes
};

// What sae_train's choice of a topk's rows (--encoder-chunk 0) counts: `bytes` it may use (< 0:
// unknown), `other_bytes` of it kept as a margin for the rest of the process, and per SAE
// (`parameter_copies` + its gradient_copies) x 4 bytes x its parameters (d_in F + F d_out + F + d_out)
// beside its [rows, F] pre-activations. The lower bound counts 3 copies (the parameters and Adam's
// moments). A CPU run of a TopK SAE at d 768 holds 3.1 copies beside its pre-activations through
// its steps, saves and concept recovery (F 2^19 and 2^20), 3.7 at --precision bf16 (the rounded
// W_enc) (bench/RESULTS.md, 2026-12-07): sae_train counts 3.5 copies (4 at bf16) and a 1 GB margin on
// the CPU (what the data source holds by then, such as the synthetic data's 0.9 GB at its default
// 200000 stories, is already out of what the process can get); a GPU holds about 4 copies on the
// device (a bf16 copy of W_enc at --precision bf16, the step's buffers) and no margin.
struct ChunkBudget {
  double bytes = -1;
  double parameter_copies = 3.5;
  int64_t min_rows = 256;  // fewer would cost GEMM efficiency (a run that needs fewer may still fail)
  double other_bytes = 1e9;
};
// The rows of pre-activations each SAE may hold at once so that together they stay within the
// budget: their `tokens` when that fits (or the budget is unknown); else every SAE marked `chunkable`
// (topk with --encoder-chunk 0) gets one smaller row count, the most that fits but at least
// min(min_rows, its tokens) (check_host_memory may still refuse the run). The others keep theirs.
std::vector<int64_t> pre_activation_rows_that_fit(const std::vector<SaeFootprint>& saes,
                                                  const std::vector<bool>& chunkable, const ChunkBudget& budget);
// The bytes the budget counts for one SAE holding `rows` rows of pre-activations.
double chunk_budget_need(const SaeFootprint& sae, int64_t rows, const ChunkBudget& budget);

// Error (one line: what is needed, of what, what there is, what to change) when the SAEs' lower
// bounds together exceed what `memory` says; nothing when it is unknown.
void check_host_memory(const std::vector<SaeFootprint>& saes, const HostMemory& memory);

std::string format_bytes(double bytes);  // "670 MB", "58.1 GB" (powers of 10)

}  // namespace sae
