// Internal to the CUDA backend (.cu files only): the check macros every CUDA and cuBLAS call goes
// through, and the shared context (the one stream, the cuBLAS handle bound to it, the SM count).
//
//   SAE_CUDA_CHECK(cudaMemcpyAsync(...));   throws sae::Error naming statement, file, line, error
//   SAE_CUBLAS_CHECK(cublasSgemm(...));      the same for cuBLAS status codes
//   kernel<<<grid, block, 0, cuda_stream()>>>(...); SAE_CUDA_CHECK_LAUNCH();
//
// Kernels run asynchronously, so an error inside a running kernel surfaces at the next check that
// synchronises (a device-to-host copy, cuda_synchronize()), not at its launch.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "tensor/error.h"
#include "tensor/precision.h"

namespace sae {

[[noreturn]] inline void cuda_fail(cudaError_t err, const char* stmt, const char* file, int line) {
  throw Error(cat("CUDA error ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") in `", stmt, "` at ",
                  file, ":", line));
}

[[noreturn]] inline void cublas_fail(cublasStatus_t status, const char* stmt, const char* file, int line) {
  throw Error(cat("cuBLAS error ", cublasGetStatusName(status), " (", cublasGetStatusString(status), ") in `", stmt,
                  "` at ", file, ":", line));
}

// The stream every kernel, copy and cuBLAS call runs on; created on first use. Throws when no GPU.
cudaStream_t cuda_stream();
// The cuBLAS handle, bound to cuda_stream(), in its default math mode.
cublasHandle_t cublas_handle();
// The handle with the math mode of a float32 GEMM at `precision` (tensor/precision.h): TF32 tensor-op
// math for tf32, the default otherwise (bf16 GEMMs name their types in cublasGemmEx).
cublasHandle_t cublas_handle_for(Precision precision);
// Streaming multiprocessors of the device (sizes grid-stride launches).
int cuda_sm_count();

}  // namespace sae

#define SAE_CUDA_CHECK(stmt)                                                        \
  do {                                                                              \
    cudaError_t sae_cuda_err_ = (stmt);                                             \
    if (sae_cuda_err_ != cudaSuccess) ::sae::cuda_fail(sae_cuda_err_, #stmt, __FILE__, __LINE__); \
  } while (0)

#define SAE_CUBLAS_CHECK(stmt)                                                               \
  do {                                                                                       \
    cublasStatus_t sae_cublas_status_ = (stmt);                                              \
    if (sae_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                         \
      ::sae::cublas_fail(sae_cublas_status_, #stmt, __FILE__, __LINE__);                     \
  } while (0)

// After every kernel launch: reports a bad launch configuration at once, naming this line.
#define SAE_CUDA_CHECK_LAUNCH() SAE_CUDA_CHECK(cudaGetLastError())
