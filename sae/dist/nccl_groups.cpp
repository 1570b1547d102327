// NcclGroups (see nccl_groups.h).
#include "sae/dist/nccl_groups.h"

#include <cstring>
#include <map>

#include "tensor/error.h"

#if SAE_WITH_CUDA
#include <cuda_runtime.h>
#endif
#if SAE_WITH_NCCL
#include <nccl.h>

#include "tensor/cuda/check.h"
#endif

namespace sae {

int cuda_select_device_for_rank(int local_rank) {
#if SAE_WITH_CUDA
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    cudaGetLastError();  // no GPU: the run is on the CPU, or fails later with the backend's message
    return 0;
  }
  if (cudaSetDevice(local_rank % devices) != cudaSuccess)
    throw Error(cat("CUDA: cannot select GPU ", local_rank % devices, " for MPI rank ", local_rank, " of this machine"));
  return devices;
#else
  (void)local_rank;
  return 0;
#endif
}

#if SAE_WITH_NCCL

namespace {
void check_nccl(ncclResult_t status, const char* what) {
  if (status != ncclSuccess) throw Error(cat("NCCL: ", what, ": ", ncclGetErrorString(status)));
}
}  // namespace

bool nccl_built() { return true; }

NcclId nccl_unique_id() {
  static_assert(sizeof(ncclUniqueId) == sizeof(NcclId::bytes), "ncclUniqueId is 128 bytes");
  ncclUniqueId id;
  check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
  NcclId out;
  std::memcpy(out.bytes, &id, sizeof out.bytes);
  return out;
}

struct NcclGroups::Impl {
  std::map<int, ncclComm_t> comms;
};

NcclGroups::NcclGroups() : impl_(std::make_unique<Impl>()) {}

NcclGroups::~NcclGroups() {
  for (auto& [group, comm] : impl_->comms) ncclCommDestroy(comm);
}

void NcclGroups::join(int group, const NcclId& id, int size, int index) {
  ncclUniqueId nccl_id;
  std::memcpy(&nccl_id, id.bytes, sizeof nccl_id);
  ncclComm_t comm;
  check_nccl(ncclCommInitRank(&comm, size, nccl_id, index), "ncclCommInitRank");
  impl_->comms[group] = comm;
}

void NcclGroups::sum(int group, void* data, int64_t count, bool f64) {
  check_nccl(ncclAllReduce(data, data, static_cast<size_t>(count), f64 ? ncclFloat64 : ncclFloat32, ncclSum,
                           impl_->comms.at(group), cuda_stream()),
             "ncclAllReduce");
}

#else

bool nccl_built() { return false; }

NcclId nccl_unique_id() { throw Error("this build has no NCCL"); }

struct NcclGroups::Impl {};
NcclGroups::NcclGroups() : impl_(std::make_unique<Impl>()) {}
NcclGroups::~NcclGroups() = default;
void NcclGroups::join(int, const NcclId&, int, int) { throw Error("this build has no NCCL"); }
void NcclGroups::sum(int, void*, int64_t, bool) { throw Error("this build has no NCCL"); }

#endif

}  // namespace sae
