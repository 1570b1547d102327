// The host-side face of the CUDA backend: device memory, copies, synchronisation and the CUDA
// kernel table. Implemented in backend.cu when nvcc is found, else in stub.cpp, where
// cuda_built() is false, cuda_current_device() is -1, cuda_use_device() does nothing and everything
// else throws "built without CUDA".
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
// The GPU this thread's CUDA calls go to (-1 without CUDA), and making it a thread's: a thread that
// works for another (a prefetch worker) takes its GPU, or its first call opens a context on GPU 0.
int cuda_current_device();
void cuda_use_device(int device);
const KernelTable& cuda_kernels();
// Page-locked host memory (cudaHostAlloc): copies from it to the device run asynchronously, at full
// bus speed. Throws when no GPU is available.
void* cuda_host_alloc(size_t bytes);
void cuda_host_free(void* ptr);  // never throws (logs a failure)

// A host-to-device copy into one destination buffer, on the backend's second stream (the upload
// stream), ordered against the compute stream by events, so that it overlaps the kernels queued
// before it. The protocol, for one buffer used over and over:
//   wait_source_free()   before rewriting the host source: the previous copy has read it (host waits)
//   start(dst, src, n)   copy once the compute stream has passed the last release() (device waits)
//   make_compute_wait()  before queuing kernels that read dst (the compute stream waits, not the host)
//   release()            after queuing the last kernel that reads dst this round
// The source must be page-locked (cuda_host_alloc) for the copy to be asynchronous.
class CudaUpload {
 public:
  CudaUpload();  // throws when no GPU is available
  ~CudaUpload();  // waits for a copy in flight
  CudaUpload(const CudaUpload&) = delete;
  CudaUpload& operator=(const CudaUpload&) = delete;
  void wait_source_free();
  void start(void* dst, const void* src, size_t bytes);
  void make_compute_wait();
  void release();

 private:
  void* copied_ = nullptr;    // cudaEvent_t: recorded on the upload stream after each copy
  void* released_ = nullptr;  // cudaEvent_t: recorded on the compute stream at construction and by release()
  bool copied_recorded_ = false, released_recorded_ = false;
};

// Caching allocator counters (bytes currently handed out, bytes held from the driver).
size_t cuda_bytes_in_use();
size_t cuda_bytes_reserved();
// What allocations on this thread's GPU can still get: the driver's free memory (cudaMemGetInfo) and
// the cache's unused blocks (released when a request finds no room).
size_t cuda_free_bytes();

}  // namespace sae
