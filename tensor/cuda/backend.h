// The host-side face of the CUDA backend: device memory, copies, synchronisation and the CUDA
// kernel table. Implemented in backend.cu when nvcc is found, else in stub.cpp, where
// cuda_built() is false and everything else throws "built without CUDA".
#pragma once
#include <cstddef>
#include <string>

namespace sae {

struct KernelTable;

bool cuda_built();      // compiled with CUDA support
bool cuda_available();  // compiled with CUDA support and a GPU is present
// Why cuda_available() is false: cudaGetDeviceCount's error name and text, "0 devices", or "built
// without CUDA"; "" when a GPU is there.
std::string cuda_unavailable_reason();
void* cuda_alloc(size_t bytes);  // from the caching allocator; throws on out-of-memory
void cuda_free(void* ptr);       // returns the block to the cache
void cuda_copy_to_device(void* dst, const void* src, size_t bytes);
void cuda_copy_to_host(void* dst, const void* src, size_t bytes);
void cuda_copy_on_device(void* dst, const void* src, size_t bytes);
void cuda_synchronize();
const KernelTable& cuda_kernels();
// Caching allocator counters (bytes currently handed out, bytes held from the driver).
size_t cuda_bytes_in_use();
size_t cuda_bytes_reserved();

}  // namespace sae
