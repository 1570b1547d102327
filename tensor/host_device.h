// Writing one function for host and device: SAE_HOST_DEVICE marks it for both when nvcc compiles
// it (and is empty for the host compiler), and math_sqrt / math_exp / math_log / math_abs /
// math_tanh / math_erf are the float and double overloads on either side (sqrtf on the device for a float,
// std::sqrt on the host), so float32 stays float32 everywhere.
#pragma once
#include <cmath>

#if defined(__CUDACC__)
#define SAE_HOST_DEVICE __host__ __device__
#else
#define SAE_HOST_DEVICE
#endif

namespace sae {

#if defined(__CUDA_ARCH__)
__device__ inline float math_sqrt(float x) { return sqrtf(x); }
__device__ inline double math_sqrt(double x) { return ::sqrt(x); }
__device__ inline float math_exp(float x) { return expf(x); }
__device__ inline double math_exp(double x) { return ::exp(x); }
__device__ inline float math_log(float x) { return logf(x); }
__device__ inline double math_log(double x) { return ::log(x); }
__device__ inline float math_abs(float x) { return fabsf(x); }
__device__ inline double math_abs(double x) { return ::fabs(x); }
__device__ inline float math_tanh(float x) { return tanhf(x); }
__device__ inline double math_tanh(double x) { return ::tanh(x); }
__device__ inline float math_erf(float x) { return erff(x); }
__device__ inline double math_erf(double x) { return ::erf(x); }
#else
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__)
}  // namespace sae
// glibc's libmvec has vector versions of expf and exp (found through libm's linker script): declared
// so, GCC turns exp in an `omp simd` loop (softmax, gelu_new, the exp op) into 8 or 16 lanes at
// once instead of one call per element. libmvec's results are within 4 ulp (glibc's tables list at
// most 1 for these), not always the scalar call's bits; CPU results stay bit-exact run to run.
extern "C" float expf(float) noexcept __attribute__((simd("notinbranch")));
extern "C" double exp(double) noexcept __attribute__((simd("notinbranch")));
namespace sae {
#endif
template <typename T>
inline T math_sqrt(T x) { return std::sqrt(x); }
template <typename T>
inline T math_exp(T x) { return std::exp(x); }
template <typename T>
inline T math_log(T x) { return std::log(x); }
template <typename T>
inline T math_abs(T x) { return std::abs(x); }
template <typename T>
inline T math_tanh(T x) { return std::tanh(x); }
template <typename T>
inline T math_erf(T x) { return std::erf(x); }
#endif

}  // namespace sae
