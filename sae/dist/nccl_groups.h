// NCCL communicators for the groups of a distributed run (sae/arch/collectives.h Group), one per
// group, bootstrapped over MPI (the group's first rank makes the unique id, MPI broadcasts it), as
// llm.c does. Sums of device tensors run on the backend's one stream. Built when CMake found NCCL
// beside CUDA (SAE_WITH_NCCL); otherwise nccl_built() is false and the rest throws. NCCL runs one rank
// per GPU: when ranks share a GPU (more ranks than GPUs on a machine) MpiWorld does not make these,
// and device tensors go through the host to MPI.
#pragma once
#include <cstdint>
#include <memory>

namespace sae {

bool nccl_built();

struct NcclId {
  char bytes[128];  // ncclUniqueId
};
NcclId nccl_unique_id();

// With CUDA and a GPU: this rank uses GPU local_rank mod (the machine's GPUs). Nothing otherwise.
// Returns the machine's GPUs (0 without CUDA or GPU).
int cuda_select_device_for_rank(int local_rank);

class NcclGroups {
 public:
  NcclGroups();
  ~NcclGroups();
  // This rank joins group `group` (of `size` ranks, as its index-th) with the group's id.
  void join(int group, const NcclId& id, int size, int index);
  // In-place sum of `count` float32 (or float64) values on the device over the group.
  void sum(int group, void* data, int64_t count, bool f64);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sae
