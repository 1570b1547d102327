// The CUDA backend's host side (backend.h): device discovery, the one stream and cuBLAS
// handle, the caching allocator, copies and synchronisation. The kernels are in kernels.cu (and sae/step/cuda_kernels.cu).
//
// Everything runs on one stream, in order. That is what lets the allocator hand a freed block to
// the next request at once: any kernel still using the old contents was queued before any kernel
// that can see the new ones.
//
// The context and the allocator are created on first use and deliberately never destroyed: at
// process exit the CUDA runtime may already be shut down when static destructors run, and the
// driver takes back all device memory anyway. So no destructor here can fail or throw.
#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <map>
#include <string>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "tensor/cuda/backend.h"
#include "tensor/cuda/check.h"

namespace sae {

namespace {

// ---------------------------------------------------------------- context

struct Context {
  cudaStream_t stream = nullptr;
  cudaStream_t upload = nullptr;  // host-to-device copies of CudaUpload (made on first use)
  int sm_count = 0;
};

std::mutex g_cublas_mutex;
cublasHandle_t g_cublas = nullptr;                // created on the first GEMM
cublasMath_t g_math_mode = CUBLAS_DEFAULT_MATH;   // the handle's math mode (cublas_handle_for)

Context* make_context() {
  if (!cuda_available())
    throw Error("CUDA requested, but no GPU is available (cudaGetDeviceCount found none or failed)");
  auto* ctx = new Context;
  int device = 0;
  SAE_CUDA_CHECK(cudaGetDevice(&device));
  SAE_CUDA_CHECK(cudaDeviceGetAttribute(&ctx->sm_count, cudaDevAttrMultiProcessorCount, device));
  // A blocking stream (not cudaStreamNonBlocking): it still orders itself against any stray use of
  // the legacy default stream.
  SAE_CUDA_CHECK(cudaStreamCreate(&ctx->stream));
  return ctx;
}

Context& context() {
  static Context* ctx = make_context();  // a throw leaves it unset and the next call retries
  return *ctx;
}

// ---------------------------------------------------------------- caching allocator

constexpr size_t kMinBlock = 512;
constexpr size_t kSmallLimit = size_t(1) << 20;  // up to 1 MiB: power-of-two size classes
constexpr size_t kLargeGranule = size_t(2) << 20;  // above: multiples of 2 MiB

size_t block_size_for(size_t bytes) {
  if (bytes <= kSmallLimit) {
    size_t size = kMinBlock;
    while (size < bytes) size *= 2;
    return size;
  }
  return (bytes + kLargeGranule - 1) / kLargeGranule * kLargeGranule;
}

// SAE_CUDA_EXACT_ALLOC=1: every request goes to cudaMalloc with its exact size and every release to
// cudaFree, so that compute-sanitizer's memcheck sees an access past the end of a tensor (rounded-up
// cached blocks would hide it). For checking only: slow.
bool exact_allocation() {
  static const bool exact = [] {
    const char* v = std::getenv("SAE_CUDA_EXACT_ALLOC");
    return v && std::string(v) == "1";
  }();
  return exact;
}

// Blocks are never split or merged: a freed block goes to the free list of its size class and
// serves the next request of that class. A training step asks for the same sizes every step, so
// after the first step no request reaches cudaMalloc.
class CachingAllocator {
 public:
  void* allocate(size_t bytes) {
    cudaStream_t stream = cuda_stream();  // first: a clear error when there is no GPU
    const bool exact = exact_allocation();
    const size_t size = exact ? std::max<size_t>(bytes, 1) : block_size_for(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    auto cached = exact ? free_.end() : free_.find(size);
    if (cached != free_.end() && !cached->second.empty()) {
      void* ptr = cached->second.back();
      cached->second.pop_back();
      live_[ptr] = size;
      in_use_ += size;
      return ptr;
    }
    void* ptr = nullptr;
    cudaError_t err = cudaMalloc(&ptr, size);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear it, or the next launch check would report it
      release_cache(stream);
      err = cudaMalloc(&ptr, size);
    }
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      size_t free_bytes = 0, total_bytes = 0;
      cudaMemGetInfo(&free_bytes, &total_bytes);
      cudaGetLastError();
      throw Error(cat("CUDA out of memory allocating ", bytes, " bytes (block of ", size, "): ", in_use_,
                      " bytes in use by tensors, ", reserved_, " held by the cache after emptying it, ", free_bytes,
                      " of ", total_bytes, " bytes free on the device"));
    }
    if (err != cudaSuccess) cuda_fail(err, "cudaMalloc(&ptr, size)", __FILE__, __LINE__);
    live_[ptr] = size;
    in_use_ += size;
    reserved_ += size;
    return ptr;
  }

  // Called from Storage's destructor: must not throw, so it only logs.
  void release(void* ptr) noexcept {
    try {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = live_.find(ptr);
      if (it == live_.end()) {
        std::fprintf(stderr, "sae: cuda_free of a pointer the CUDA allocator did not hand out (%p); ignored\n", ptr);
        return;
      }
      const size_t size = it->second;
      live_.erase(it);
      in_use_ -= size;
      if (exact_allocation()) {
        const cudaError_t err = cudaFree(ptr);  // synchronises: queued kernels finish first
        if (err != cudaSuccess) std::fprintf(stderr, "sae: cudaFree failed: %s\n", cudaGetErrorString(err));
        reserved_ -= size;
        return;
      }
      free_[size].push_back(ptr);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "sae: cuda_free failed: %s\n", e.what());
    }
  }

  size_t in_use() {
    std::lock_guard<std::mutex> lock(mutex_);
    return in_use_;
  }
  size_t reserved() {
    std::lock_guard<std::mutex> lock(mutex_);
    return reserved_;
  }

 private:
  // Returns every cached block to the driver. Caller holds mutex_.
  void release_cache(cudaStream_t stream) {
    SAE_CUDA_CHECK(cudaStreamSynchronize(stream));  // queued kernels may still use cached blocks
    for (auto& [size, blocks] : free_) {
      for (void* ptr : blocks) {
        SAE_CUDA_CHECK(cudaFree(ptr));
        reserved_ -= size;
      }
      blocks.clear();
    }
  }

  std::mutex mutex_;
  std::map<size_t, std::vector<void*>> free_;  // block size -> cached blocks of that size
  std::unordered_map<void*, size_t> live_;     // handed-out block -> its block size
  size_t in_use_ = 0, reserved_ = 0;
};

CachingAllocator& allocator() {
  static CachingAllocator* instance = new CachingAllocator;  // never destroyed, see the file comment
  return *instance;
}

}  // namespace

// The upload stream, made on first use. Non-blocking: it must not wait for the legacy default stream.
std::mutex g_upload_mutex;
cudaStream_t upload_stream() {
  Context& ctx = context();
  std::lock_guard<std::mutex> lock(g_upload_mutex);
  if (!ctx.upload) SAE_CUDA_CHECK(cudaStreamCreateWithFlags(&ctx.upload, cudaStreamNonBlocking));
  return ctx.upload;
}

// ---------------------------------------------------------------- check.h

cudaStream_t cuda_stream() { return context().stream; }

int cuda_sm_count() { return context().sm_count; }

cublasHandle_t cublas_handle() {
  cudaStream_t stream = cuda_stream();
  std::lock_guard<std::mutex> lock(g_cublas_mutex);
  if (!g_cublas) {
    cublasHandle_t handle = nullptr;
    SAE_CUBLAS_CHECK(cublasCreate(&handle));
    SAE_CUBLAS_CHECK(cublasSetStream(handle, stream));
    SAE_CUBLAS_CHECK(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH));
    g_cublas = handle;  // never destroyed, like the context
    g_math_mode = CUBLAS_DEFAULT_MATH;
  }
  return g_cublas;
}

cublasHandle_t cublas_handle_for(Precision precision) {
  cublasHandle_t handle = cublas_handle();
  // bf16: sums in float32 even where the output is bf16 (cuBLAS may otherwise reduce split-K partial
  // sums in the output's precision; docs/contract.md: bf16 inputs, float32 accumulation).
  const cublasMath_t mode =
      precision == Precision::TF32
          ? CUBLAS_TF32_TENSOR_OP_MATH
          : (precision == Precision::BF16
                 ? static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)
                 : CUBLAS_DEFAULT_MATH);
  std::lock_guard<std::mutex> lock(g_cublas_mutex);
  if (mode != g_math_mode) {
    SAE_CUBLAS_CHECK(cublasSetMathMode(handle, mode));
    g_math_mode = mode;
  }
  return handle;
}

// ---------------------------------------------------------------- backend.h

bool cuda_built() { return true; }

namespace {
// cudaGetDeviceCount's answer, asked once: "" when a GPU is there, else why not.
const std::string& unavailable_reason() {
  static const std::string reason = [] {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    cudaGetLastError();  // no driver / no device is an answer here, not an error to report later
    if (err != cudaSuccess)
      return std::string("cudaGetDeviceCount: ") + cudaGetErrorName(err) + ": " + cudaGetErrorString(err);
    if (count == 0) return std::string("cudaGetDeviceCount: 0 devices");
    return std::string();
  }();
  return reason;
}
}  // namespace

bool cuda_available() { return unavailable_reason().empty(); }

std::string cuda_unavailable_reason() { return unavailable_reason(); }

void* cuda_alloc(size_t bytes) { return allocator().allocate(bytes); }

void cuda_free(void* ptr) {
  if (ptr) allocator().release(ptr);
}

// From pageable host memory cudaMemcpyAsync returns once the source has been staged, so the caller
// may free or reuse `src` at once (CUDA runtime API docs, "API synchronization behavior").
void cuda_copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  SAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cuda_stream()));
}

void cuda_copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  SAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cuda_stream()));
  SAE_CUDA_CHECK(cudaStreamSynchronize(cuda_stream()));
}

void cuda_copy_on_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  SAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cuda_stream()));
}

void* cuda_host_alloc(size_t bytes) {
  cuda_stream();  // a clear error when there is no GPU
  void* ptr = nullptr;
  const cudaError_t err = cudaHostAlloc(&ptr, std::max<size_t>(bytes, 1), cudaHostAllocPortable);
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw Error(cat("out of page-locked host memory allocating ", bytes, " bytes (", cudaGetErrorString(err), ")"));
  }
  return ptr;
}

void cuda_host_free(void* ptr) {
  if (!ptr) return;
  const cudaError_t err = cudaFreeHost(ptr);
  if (err != cudaSuccess) std::fprintf(stderr, "sae: cudaFreeHost failed: %s\n", cudaGetErrorString(err));
}

CudaUpload::CudaUpload() {
  cudaEvent_t copied = nullptr, released = nullptr;
  upload_stream();
  SAE_CUDA_CHECK(cudaEventCreateWithFlags(&copied, cudaEventDisableTiming));
  SAE_CUDA_CHECK(cudaEventCreateWithFlags(&released, cudaEventDisableTiming));
  copied_ = copied;
  released_ = released;
  // The first copy waits for the work queued so far too: a destination may be a block the caching
  // allocator took back from tensors that queued kernels still use (it assumes one stream).
  SAE_CUDA_CHECK(cudaEventRecord(released, cuda_stream()));
  released_recorded_ = true;
}

CudaUpload::~CudaUpload() {
  // A copy in flight still writes its destination: wait for it before anyone frees either end.
  if (copied_recorded_) cudaEventSynchronize(static_cast<cudaEvent_t>(copied_));
  cudaEventDestroy(static_cast<cudaEvent_t>(copied_));
  cudaEventDestroy(static_cast<cudaEvent_t>(released_));
  cudaGetLastError();
}

void CudaUpload::wait_source_free() {
  if (copied_recorded_) SAE_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(copied_)));
}

void CudaUpload::start(void* dst, const void* src, size_t bytes) {
  cudaStream_t stream = upload_stream();
  if (released_recorded_) SAE_CUDA_CHECK(cudaStreamWaitEvent(stream, static_cast<cudaEvent_t>(released_), 0));
  if (bytes > 0) SAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
  SAE_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(copied_), stream));
  copied_recorded_ = true;
}

void CudaUpload::make_compute_wait() {
  if (copied_recorded_) SAE_CUDA_CHECK(cudaStreamWaitEvent(cuda_stream(), static_cast<cudaEvent_t>(copied_), 0));
}

void CudaUpload::release() {
  SAE_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(released_), cuda_stream()));
  released_recorded_ = true;
}

void cuda_synchronize() {
  if (!cuda_available()) return;  // nothing can have been queued
  SAE_CUDA_CHECK(cudaStreamSynchronize(cuda_stream()));
}

int cuda_current_device() {
  if (!cuda_available()) return -1;
  int device = 0;
  SAE_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

void cuda_use_device(int device) {
  if (device >= 0) SAE_CUDA_CHECK(cudaSetDevice(device));
}

size_t cuda_bytes_in_use() { return allocator().in_use(); }
size_t cuda_bytes_reserved() { return allocator().reserved(); }

size_t cuda_free_bytes() {
  cuda_stream();  // a clear error when there is no GPU
  size_t free_bytes = 0, total_bytes = 0;
  SAE_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return free_bytes + (allocator().reserved() - allocator().in_use());
}

}  // namespace sae
