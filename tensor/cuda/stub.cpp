// The CUDA backend of a build without nvcc: nothing is available and every use throws.
#include "tensor/cuda/backend.h"
#include "tensor/error.h"
#include "tensor/op_list.h"

namespace sae {

namespace {
[[noreturn]] void not_built() { throw Error("CUDA requested, but this build has no CUDA support (nvcc was not found)"); }
}  // namespace

bool cuda_built() { return false; }
bool cuda_available() { return false; }
std::string cuda_unavailable_reason() { return "this build has no CUDA support (nvcc was not found at build time)"; }
void* cuda_alloc(size_t) { not_built(); }
void cuda_free(void*) {}
void cuda_copy_to_device(void*, const void*, size_t) { not_built(); }
void cuda_copy_to_host(void*, const void*, size_t) { not_built(); }
void cuda_copy_on_device(void*, const void*, size_t) { not_built(); }
void cuda_synchronize() {}
int cuda_current_device() { return -1; }
void cuda_use_device(int) {}
const KernelTable& cuda_kernels() { not_built(); }
void* cuda_host_alloc(size_t) { not_built(); }
void cuda_host_free(void*) {}
CudaUpload::CudaUpload() { not_built(); }
CudaUpload::~CudaUpload() {}
void CudaUpload::wait_source_free() { not_built(); }
void CudaUpload::start(void*, const void*, size_t) { not_built(); }
void CudaUpload::make_compute_wait() { not_built(); }
void CudaUpload::release() { not_built(); }
size_t cuda_bytes_in_use() { return 0; }
size_t cuda_bytes_reserved() { return 0; }
size_t cuda_free_bytes() { not_built(); }

}  // namespace sae
