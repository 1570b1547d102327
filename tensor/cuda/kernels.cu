// CUDA kernels for every entry of the op list (op_list.h), registered in cuda_kernels(). Each one
// computes what its CPU reference in cpu_kernels.cpp computes, with the same expressions in the same
// order (the build passes --fmad=false so nvcc does not fuse a*b+c where the CPU rounds twice).
// Inputs were validated by the front-end (ops.cpp); the kernels trust them.
//
//   element-wise ops   grid-stride loops over n elements (no launch when n == 0)
//   binary             same-shape fast path; otherwise the 4-D Broadcast plan (stride 0 = repeat)
//   reductions         x viewed as [outer, len, inner] and reduced over len, accumulated in double
//                      like the CPU; fixed-shape tree reductions, no atomics, so results are
//                      deterministic. Long reductions are split across blocks into double partials
//                      that a second kernel combines.
//   matmul             cuBLAS sgemm/dgemm on row-major [m, k] @ [k, n] data
//   transpose          32x32 tiles through shared memory
//   adam_step          one fused pass over param, m, v and grad
//   encoder_activate,  one pass over f [N, F] in column tiles, column sums reduced down the rows in
//   encoder_backward   a fixed order (split into row slices plus a finishing kernel for large N)
//   add_scaled_rows    rows on grid y, columns on grid x
// Everything is queued on the backend's one stream (cuda_check.h).
#include <algorithm>
#include <climits>
#include <cmath>

#include "tensor/cuda/backend.h"
#include "tensor/cuda/check.h"
#include "tensor/op_list.h"

namespace sae {

namespace {

constexpr int kBlock = 256;  // threads per block of the 1-D kernels

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for a grid-stride loop over `work` items of `per_block` each: enough to fill every SM
// several times over, no more (the loop covers the rest).
int grid_for(int64_t work, int64_t per_block = kBlock) {
  const int64_t max_blocks = static_cast<int64_t>(cuda_sm_count()) * 16;
  return static_cast<int>(std::max<int64_t>(1, std::min(ceil_div(work, per_block), max_blocks)));
}

// First index and stride of this thread in a 1-D grid-stride loop.
__device__ inline int64_t thread_index() { return blockIdx.x * int64_t(blockDim.x) + threadIdx.x; }
__device__ inline int64_t grid_stride() { return int64_t(blockDim.x) * gridDim.x; }

// Scratch device memory from the caching allocator, given back when it goes out of scope. Giving
// it back before the kernels that use it have run is safe: every user is on the one stream.
struct DeviceBuffer {
  void* ptr;
  explicit DeviceBuffer(size_t bytes) : ptr(cuda_alloc(bytes)) {}
  ~DeviceBuffer() { cuda_free(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

// Float and double overloads of the math functions, so templates pick the right precision.
__device__ inline float dev_sqrt(float x) { return sqrtf(x); }
__device__ inline double dev_sqrt(double x) { return sqrt(x); }
__device__ inline float dev_exp(float x) { return expf(x); }
__device__ inline double dev_exp(double x) { return exp(x); }
__device__ inline float dev_log(float x) { return logf(x); }
__device__ inline double dev_log(double x) { return log(x); }
__device__ inline float dev_abs(float x) { return fabsf(x); }
__device__ inline double dev_abs(double x) { return fabs(x); }

// ---------------------------------------------------------------- fill, copy, affine, where

template <typename T>
__global__ void fill_kernel(T* out, int64_t n, T value) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) out[i] = value;
}

void fill_cuda(Tensor& out, double value) {
  const int64_t n = out.numel();
  if (n == 0) return;
  if (out.dtype() == DType::F32)
    fill_kernel<<<grid_for(n), kBlock, 0, cuda_stream()>>>(out.data<float>(), n, static_cast<float>(value));
  else
    fill_kernel<<<grid_for(n), kBlock, 0, cuda_stream()>>>(out.data<double>(), n, value);
  SAE_CUDA_CHECK_LAUNCH();
}

template <typename To, typename From>
__global__ void convert_kernel(To* out, const From* src, int64_t n) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) out[i] = static_cast<To>(src[i]);
}

void copy_cuda(Tensor& out, const Tensor& src) {
  const int64_t n = out.numel();
  if (n == 0) return;
  if (out.dtype() != src.dtype()) {
    if (out.dtype() == DType::F32)
      convert_kernel<<<grid_for(n), kBlock, 0, cuda_stream()>>>(out.data<float>(), src.data<double>(), n);
    else
      convert_kernel<<<grid_for(n), kBlock, 0, cuda_stream()>>>(out.data<double>(), src.data<float>(), n);
    SAE_CUDA_CHECK_LAUNCH();
    return;
  }
  char* dst = static_cast<char*>(out.raw());
  const char* from = static_cast<const char*>(src.raw());
  const size_t bytes = out.nbytes();
  if (dst == from) return;
  if (dst < from + bytes && from < dst + bytes) {  // overlapping views: go through scratch, like memmove
    DeviceBuffer scratch(bytes);
    cuda_copy_on_device(scratch.ptr, from, bytes);
    cuda_copy_on_device(dst, scratch.ptr, bytes);
    return;
  }
  cuda_copy_on_device(dst, from, bytes);
}

template <typename T>
__global__ void affine_kernel(T* out, const T* x, int64_t n, T scale, T shift) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) out[i] = scale * x[i] + shift;
}

void affine_cuda(Tensor& out, const Tensor& x, double scale, double shift) {
  const int64_t n = x.numel();
  if (n == 0) return;
  if (x.dtype() == DType::F32)
    affine_kernel<<<grid_for(n), kBlock, 0, cuda_stream()>>>(out.data<float>(), x.data<float>(), n,
                                                             static_cast<float>(scale), static_cast<float>(shift));
  else
    affine_kernel<<<grid_for(n), kBlock, 0, cuda_stream()>>>(out.data<double>(), x.data<double>(), n, scale, shift);
  SAE_CUDA_CHECK_LAUNCH();
}

template <typename T>
__global__ void where_kernel(T* out, const T* cond, const T* a, const T* b, int64_t n) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) out[i] = cond[i] != T(0) ? a[i] : b[i];
}

void where_cuda(Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b) {
  const int64_t n = a.numel();
  if (n == 0) return;
  if (a.dtype() == DType::F32)
    where_kernel<<<grid_for(n), kBlock, 0, cuda_stream()>>>(out.data<float>(), cond.data<float>(), a.data<float>(),
                                                            b.data<float>(), n);
  else
    where_kernel<<<grid_for(n), kBlock, 0, cuda_stream()>>>(out.data<double>(), cond.data<double>(),
                                                            a.data<double>(), b.data<double>(), n);
  SAE_CUDA_CHECK_LAUNCH();
}

// ---------------------------------------------------------------- unary

template <typename T, UnaryOp Op>
__device__ inline T apply_unary(T x) {
  switch (Op) {
    case UnaryOp::neg: return -x;
    case UnaryOp::square: return x * x;
    case UnaryOp::sqrt: return dev_sqrt(x);
    case UnaryOp::abs: return dev_abs(x);
    case UnaryOp::relu: return x > T(0) ? x : T(0);
    case UnaryOp::step: return x > T(0) ? T(1) : T(0);
    case UnaryOp::sign: return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));
    case UnaryOp::exp: return dev_exp(x);
    case UnaryOp::log: return dev_log(x);
    default: return x;
  }
}

template <typename T, UnaryOp Op>
__global__ void unary_kernel(T* out, const T* x, int64_t n) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) out[i] = apply_unary<T, Op>(x[i]);
}

template <typename T>
void unary_typed(UnaryOp op, T* out, const T* x, int64_t n) {
  switch (op) {
#define SAE_UNARY_CASE(name)                                                                 \
  case UnaryOp::name:                                                                        \
    unary_kernel<T, UnaryOp::name><<<grid_for(n), kBlock, 0, cuda_stream()>>>(out, x, n);    \
    break;
    SAE_UNARY_OPS(SAE_UNARY_CASE)
#undef SAE_UNARY_CASE
    default: throw Error(cat("unary (cuda): unknown op ", static_cast<int>(op)));
  }
  SAE_CUDA_CHECK_LAUNCH();
}

void unary_cuda(UnaryOp op, Tensor& out, const Tensor& x) {
  const int64_t n = x.numel();
  if (n == 0) return;
  if (x.dtype() == DType::F32)
    unary_typed(op, out.data<float>(), x.data<float>(), n);
  else
    unary_typed(op, out.data<double>(), x.data<double>(), n);
}

// ---------------------------------------------------------------- binary

template <typename T, BinaryOp Op>
__device__ inline T apply_binary(T a, T b) {
  switch (Op) {
    case BinaryOp::add: return a + b;
    case BinaryOp::sub: return a - b;
    case BinaryOp::mul: return a * b;
    case BinaryOp::div: return a / b;
    case BinaryOp::maximum: return a > b ? a : b;
    case BinaryOp::minimum: return a < b ? a : b;
    case BinaryOp::gt: return a > b ? T(1) : T(0);
    case BinaryOp::ge: return a >= b ? T(1) : T(0);
    case BinaryOp::lt: return a < b ? T(1) : T(0);
    case BinaryOp::le: return a <= b ? T(1) : T(0);
    case BinaryOp::eq: return a == b ? T(1) : T(0);
    default: return a;
  }
}

template <typename T, BinaryOp Op>
__global__ void binary_same_shape_kernel(T* out, const T* a, const T* b, int64_t n) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) out[i] = apply_binary<T, Op>(a[i], b[i]);
}

// The Broadcast plan in plain arrays for the kernel. Index is uint32_t when every index fits (the
// common case: 32-bit division is several times cheaper than 64-bit on the GPU), else int64_t.
template <typename Index>
struct BroadcastIndex {
  Index dims[4], a_strides[4], b_strides[4];
};

template <typename T, BinaryOp Op, typename Index>
__global__ void binary_broadcast_kernel(T* out, const T* a, const T* b, int64_t n, BroadcastIndex<Index> p) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) {
    Index rest = static_cast<Index>(i);
    const Index i3 = rest % p.dims[3];
    rest /= p.dims[3];
    const Index i2 = rest % p.dims[2];
    rest /= p.dims[2];
    const Index i1 = rest % p.dims[1];
    const Index i0 = rest / p.dims[1];
    const Index ia = i0 * p.a_strides[0] + i1 * p.a_strides[1] + i2 * p.a_strides[2] + i3 * p.a_strides[3];
    const Index ib = i0 * p.b_strides[0] + i1 * p.b_strides[1] + i2 * p.b_strides[2] + i3 * p.b_strides[3];
    out[i] = apply_binary<T, Op>(a[ia], b[ib]);
  }
}

template <typename T, BinaryOp Op, typename Index>
void launch_broadcast(T* out, const T* a, const T* b, int64_t n, const Broadcast& plan) {
  BroadcastIndex<Index> p;
  for (int d = 0; d < 4; ++d) {
    p.dims[d] = static_cast<Index>(plan.out_dims[d]);
    p.a_strides[d] = static_cast<Index>(plan.a_strides[d]);
    p.b_strides[d] = static_cast<Index>(plan.b_strides[d]);
  }
  binary_broadcast_kernel<T, Op, Index><<<grid_for(n), kBlock, 0, cuda_stream()>>>(out, a, b, n, p);
  SAE_CUDA_CHECK_LAUNCH();
}

template <typename T, BinaryOp Op>
void binary_launch(T* out, const T* a, const T* b, int64_t n, const Broadcast& plan) {
  if (plan.same_shape) {
    binary_same_shape_kernel<T, Op><<<grid_for(n), kBlock, 0, cuda_stream()>>>(out, a, b, n);
    SAE_CUDA_CHECK_LAUNCH();
  } else if (n <= INT32_MAX) {  // input offsets are below their sizes, which are at most n
    launch_broadcast<T, Op, uint32_t>(out, a, b, n, plan);
  } else {
    launch_broadcast<T, Op, int64_t>(out, a, b, n, plan);
  }
}

template <typename T>
void binary_typed(BinaryOp op, T* out, const T* a, const T* b, int64_t n, const Broadcast& plan) {
  switch (op) {
#define SAE_BINARY_CASE(name)                                   \
  case BinaryOp::name:                                          \
    return binary_launch<T, BinaryOp::name>(out, a, b, n, plan);
    SAE_BINARY_OPS(SAE_BINARY_CASE)
#undef SAE_BINARY_CASE
    default: throw Error(cat("binary (cuda): unknown op ", static_cast<int>(op)));
  }
}

void binary_cuda(BinaryOp op, Tensor& out, const Tensor& a, const Tensor& b, const Broadcast& plan) {
  const int64_t n = out.numel();
  if (n == 0) return;
  if (a.dtype() == DType::F32)
    binary_typed(op, out.data<float>(), a.data<float>(), b.data<float>(), n, plan);
  else
    binary_typed(op, out.data<double>(), a.data<double>(), b.data<double>(), n, plan);
}

// ---------------------------------------------------------------- reductions
//
// A running value is one double with the rules of the CPU Accumulator (cpu_kernels.cpp): max/min
// let a NaN win, squares are taken in double, count_nonzero counts x != 0 (so NaN counts).
// term() is what one element contributes; combine() merges two running values.

__host__ __device__ inline double reduce_identity(ReduceOp op) {
  return op == ReduceOp::max ? -INFINITY : (op == ReduceOp::min ? INFINITY : 0.0);
}

__device__ inline double reduce_term(ReduceOp op, double x) {
  switch (op) {
    case ReduceOp::sum_squares:
    case ReduceOp::norm2: return x * x;
    case ReduceOp::count_nonzero: return x != 0.0 ? 1.0 : 0.0;
    default: return x;
  }
}

__device__ inline double reduce_combine(ReduceOp op, double acc, double value) {
  switch (op) {
    case ReduceOp::max: return (value > acc || isnan(value)) ? value : acc;
    case ReduceOp::min: return (value < acc || isnan(value)) ? value : acc;
    default: return acc + value;
  }
}

__host__ __device__ inline double reduce_finish(ReduceOp op, double acc, int64_t count) {
  if (op == ReduceOp::mean) return acc / static_cast<double>(count);
  if (op == ReduceOp::norm2) return sqrt(acc);
  return acc;
}

// Lane 0 ends with the warp's combined value.
__device__ inline double warp_reduce(ReduceOp op, double value) {
  for (int offset = 16; offset > 0; offset /= 2)
    value = reduce_combine(op, value, __shfl_down_sync(0xffffffffu, value, offset));
  return value;
}

// Thread 0 ends with the block's combined value. Every thread of the block must call it;
// blockDim.x is a multiple of 32.
__device__ double block_reduce(ReduceOp op, double value) {
  __shared__ double warp_values[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  value = warp_reduce(op, value);
  if (lane == 0) warp_values[warp] = value;
  __syncthreads();
  if (warp == 0) value = warp_reduce(op, lane < warps ? warp_values[lane] : reduce_identity(op));
  __syncthreads();  // warp_values is free for the next call
  return value;
}

// inner == 1, short rows: one warp per row of x [rows, len].
template <typename T>
__global__ void reduce_rows_warp_kernel(ReduceOp op, T* out, const T* x, int64_t rows, int64_t len) {
  const int lane = threadIdx.x % 32;
  const int64_t warps_per_block = blockDim.x / 32, all_warps = warps_per_block * gridDim.x;
  for (int64_t row = blockIdx.x * warps_per_block + threadIdx.x / 32; row < rows; row += all_warps) {
    const T* x_row = x + row * len;
    double acc = reduce_identity(op);
    for (int64_t j = lane; j < len; j += 32) acc = reduce_combine(op, acc, reduce_term(op, x_row[j]));
    acc = warp_reduce(op, acc);
    if (lane == 0) out[row] = static_cast<T>(reduce_finish(op, acc, len));
  }
}

// inner == 1, long rows: one block per (row, split) task; split s covers row elements
// [s*chunk, (s+1)*chunk). With one split the block writes the result, else a partial.
template <typename T>
__global__ void reduce_rows_block_kernel(ReduceOp op, T* out, double* partials, const T* x, int64_t rows,
                                         int64_t len, int64_t splits) {
  const int64_t chunk = (len + splits - 1) / splits;
  for (int64_t task = blockIdx.x; task < rows * splits; task += gridDim.x) {
    const int64_t row = task / splits, split = task % splits;
    const int64_t begin = split * chunk, end = min(len, begin + chunk);
    const T* x_row = x + row * len;
    double acc = reduce_identity(op);
    for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x)
      acc = reduce_combine(op, acc, reduce_term(op, x_row[j]));
    acc = block_reduce(op, acc);
    if (threadIdx.x == 0) {
      if (splits == 1)
        out[row] = static_cast<T>(reduce_finish(op, acc, len));
      else
        partials[task] = acc;
    }
  }
}

// Combines the partials [rows, splits] of reduce_rows_block_kernel, one block per row.
template <typename T>
__global__ void finish_rows_kernel(ReduceOp op, T* out, const double* partials, int64_t rows, int64_t splits,
                                   int64_t len) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    double acc = reduce_identity(op);
    for (int64_t s = threadIdx.x; s < splits; s += blockDim.x) acc = reduce_combine(op, acc, partials[row * splits + s]);
    acc = block_reduce(op, acc);
    if (threadIdx.x == 0) out[row] = static_cast<T>(reduce_finish(op, acc, len));
  }
}

// inner > 1: the outer*inner output "columns" are reduced down len. A block of 32 x 8 threads takes
// 32 neighbouring columns (coalesced loads along inner) and one split of len, its 8 thread rows
// striding down len; shared memory then combines the 8 thread rows in a fixed order.
constexpr int kColumnTile = 32, kRowLanes = 8;

template <typename T>
__global__ void reduce_columns_kernel(ReduceOp op, T* out, double* partials, const T* x, int64_t outer, int64_t len,
                                      int64_t inner, int64_t splits) {
  __shared__ double lanes[kRowLanes][kColumnTile + 1];
  const int64_t columns = outer * inner, column_tiles = (columns + kColumnTile - 1) / kColumnTile;
  const int64_t chunk = (len + splits - 1) / splits;
  for (int64_t task = blockIdx.x; task < column_tiles * splits; task += gridDim.x) {
    const int64_t tile = task % column_tiles, split = task / column_tiles;
    const int64_t c = tile * kColumnTile + threadIdx.x;
    double acc = reduce_identity(op);
    if (c < columns) {
      const T* x_col = x + (c / inner) * len * inner + c % inner;
      const int64_t begin = split * chunk, end = min(len, begin + chunk);
      for (int64_t j = begin + threadIdx.y; j < end; j += kRowLanes)
        acc = reduce_combine(op, acc, reduce_term(op, x_col[j * inner]));
    }
    lanes[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < columns) {
      for (int r = 1; r < kRowLanes; ++r) acc = reduce_combine(op, acc, lanes[r][threadIdx.x]);
      if (splits == 1)
        out[c] = static_cast<T>(reduce_finish(op, acc, len));
      else
        partials[split * columns + c] = acc;
    }
    __syncthreads();  // lanes is rewritten by the next task
  }
}

// Combines the partials [splits, columns] of reduce_columns_kernel, one thread per column.
template <typename T>
__global__ void finish_columns_kernel(ReduceOp op, T* out, const double* partials, int64_t columns, int64_t splits,
                                      int64_t len) {
  for (int64_t c = thread_index(); c < columns; c += grid_stride()) {
    double acc = reduce_identity(op);
    for (int64_t s = 0; s < splits; ++s) acc = reduce_combine(op, acc, partials[s * columns + c]);
    out[c] = static_cast<T>(reduce_finish(op, acc, len));
  }
}

constexpr int64_t kWarpRowMax = 2048;     // rows up to this long get one warp each
constexpr int64_t kRowSplitMin = 4096;    // a split of a long row holds at least this many elements
constexpr int64_t kRowSplitsMax = 1024;
constexpr int64_t kColumnSplitMin = 64;   // a split of a column holds at least this many rows
constexpr int64_t kColumnSplitsMax = 256;

// Reduces x [outer, len, inner] over len into out [outer, inner]. reduce_all is the case
// outer = inner = 1.
template <typename T>
void reduce_typed(ReduceOp op, T* out, const T* x, int64_t outer, int64_t len, int64_t inner) {
  const int64_t columns = outer * inner;
  if (columns == 0) return;
  if (len == 0) {  // nothing to reduce: every output is the finished identity (0 for the sums)
    const T value = static_cast<T>(reduce_finish(op, reduce_identity(op), 0));
    fill_kernel<<<grid_for(columns), kBlock, 0, cuda_stream()>>>(out, columns, value);
    SAE_CUDA_CHECK_LAUNCH();
    return;
  }
  cudaStream_t stream = cuda_stream();
  const int64_t target_blocks = 4 * static_cast<int64_t>(cuda_sm_count());  // enough to fill the GPU
  if (inner == 1) {
    const int64_t rows = outer;
    if (len <= kWarpRowMax) {
      reduce_rows_warp_kernel<<<grid_for(rows, kBlock / 32), kBlock, 0, stream>>>(op, out, x, rows, len);
      SAE_CUDA_CHECK_LAUNCH();
      return;
    }
    const int64_t splits =
        std::clamp(ceil_div(target_blocks, rows), int64_t(1), std::min(kRowSplitsMax, ceil_div(len, kRowSplitMin)));
    if (splits == 1) {
      reduce_rows_block_kernel<<<grid_for(rows, 1), kBlock, 0, stream>>>(op, out, nullptr, x, rows, len, 1);
      SAE_CUDA_CHECK_LAUNCH();
      return;
    }
    DeviceBuffer partials(rows * splits * sizeof(double));
    double* p = static_cast<double*>(partials.ptr);
    reduce_rows_block_kernel<<<grid_for(rows * splits, 1), kBlock, 0, stream>>>(op, out, p, x, rows, len, splits);
    SAE_CUDA_CHECK_LAUNCH();
    finish_rows_kernel<<<grid_for(rows, 1), kBlock, 0, stream>>>(op, out, p, rows, splits, len);
    SAE_CUDA_CHECK_LAUNCH();
    return;
  }
  const dim3 block(kColumnTile, kRowLanes);
  const int64_t column_tiles = ceil_div(columns, kColumnTile);
  const int64_t splits = std::clamp(ceil_div(target_blocks, column_tiles), int64_t(1),
                                    std::min(kColumnSplitsMax, ceil_div(len, kColumnSplitMin)));
  if (splits == 1) {
    reduce_columns_kernel<<<grid_for(column_tiles, 1), block, 0, stream>>>(op, out, nullptr, x, outer, len, inner, 1);
    SAE_CUDA_CHECK_LAUNCH();
    return;
  }
  DeviceBuffer partials(splits * columns * sizeof(double));
  double* p = static_cast<double*>(partials.ptr);
  reduce_columns_kernel<<<grid_for(column_tiles * splits, 1), block, 0, stream>>>(op, out, p, x, outer, len, inner,
                                                                                  splits);
  SAE_CUDA_CHECK_LAUNCH();
  finish_columns_kernel<<<grid_for(columns), kBlock, 0, stream>>>(op, out, p, columns, splits, len);
  SAE_CUDA_CHECK_LAUNCH();
}

void reduce_all_cuda(ReduceOp op, Tensor& out, const Tensor& x) {
  if (x.dtype() == DType::F32)
    reduce_typed(op, out.data<float>(), x.data<float>(), 1, x.numel(), 1);
  else
    reduce_typed(op, out.data<double>(), x.data<double>(), 1, x.numel(), 1);
}

void reduce_axis_cuda(ReduceOp op, Tensor& out, const Tensor& x, int64_t outer, int64_t len, int64_t inner) {
  if (x.dtype() == DType::F32)
    reduce_typed(op, out.data<float>(), x.data<float>(), outer, len, inner);
  else
    reduce_typed(op, out.data<double>(), x.data<double>(), outer, len, inner);
}

// ---------------------------------------------------------------- matmul

// cuBLAS is column-major, and a row-major [r, c] matrix is the column-major [c, r] matrix holding
// its transpose. So out^T = op(b)^T op(a)^T is one column-major GEMM with the operands swapped,
// m and n swapped, each transpose flag kept, and the leading dimensions the row-major row lengths.
void matmul_cuda(Tensor& out, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, double alpha,
                 double beta) {
  const int64_t m = out.size(0), n = out.size(1), k = trans_a ? a.size(0) : a.size(1);
  if (m == 0 || n == 0) return;
  if (k == 0) {  // the product is zero; as on the CPU, out = beta * out (0 when beta == 0, even over NaN)
    if (beta == 0.0)
      fill_cuda(out, 0.0);
    else
      affine_cuda(out, out, beta, 0.0);
    return;
  }
  if (m > INT_MAX || n > INT_MAX || k > INT_MAX || a.size(1) > INT_MAX || b.size(1) > INT_MAX)
    throw Error(cat("matmul (cuda): ", a.describe(), " @ ", b.describe(), " exceeds cuBLAS's 32-bit sizes"));
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  const int lda = static_cast<int>(a.size(1)), ldb = static_cast<int>(b.size(1)), ldc = ni;
  cublasHandle_t handle = cublas_handle();
  if (out.dtype() == DType::F32) {
    const float alpha_f = static_cast<float>(alpha), beta_f = static_cast<float>(beta);
    SAE_CUBLAS_CHECK(cublasSgemm(handle, op_b, op_a, ni, mi, ki, &alpha_f, b.data<float>(), ldb, a.data<float>(), lda,
                                 &beta_f, out.data<float>(), ldc));
  } else {
    SAE_CUBLAS_CHECK(cublasDgemm(handle, op_b, op_a, ni, mi, ki, &alpha, b.data<double>(), ldb, a.data<double>(), lda,
                                 &beta, out.data<double>(), ldc));
  }
}

// ---------------------------------------------------------------- transpose

constexpr int kTile = 32, kTileRows = 8;  // 32x32 tile, moved by 32x8 threads

// x [rows, cols] -> out [cols, rows]. Reads and writes are both coalesced along a tile row; the
// +1 column of padding keeps the column reads of the tile free of bank conflicts.
template <typename T>
__global__ void transpose_kernel(T* out, const T* x, int64_t rows, int64_t cols) {
  __shared__ T tile[kTile][kTile + 1];
  const int64_t tiles_r = (rows + kTile - 1) / kTile, tiles_c = (cols + kTile - 1) / kTile;
  for (int64_t tr = blockIdx.y; tr < tiles_r; tr += gridDim.y) {
    for (int64_t tc = blockIdx.x; tc < tiles_c; tc += gridDim.x) {
      const int64_t r0 = tr * kTile, c0 = tc * kTile;
      for (int j = threadIdx.y; j < kTile; j += kTileRows) {
        const int64_t r = r0 + j, c = c0 + threadIdx.x;
        if (r < rows && c < cols) tile[j][threadIdx.x] = x[r * cols + c];
      }
      __syncthreads();
      for (int j = threadIdx.y; j < kTile; j += kTileRows) {
        const int64_t c = c0 + j, r = r0 + threadIdx.x;  // out row c, out column r
        if (r < rows && c < cols) out[c * rows + r] = tile[threadIdx.x][j];
      }
      __syncthreads();  // the tile is refilled by the next iteration
    }
  }
}

void transpose_cuda(Tensor& out, const Tensor& x) {
  const int64_t rows = x.size(0), cols = x.size(1);
  if (rows == 0 || cols == 0) return;
  const dim3 block(kTile, kTileRows);
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(ceil_div(cols, kTile), 65535)),
                  static_cast<unsigned>(std::min<int64_t>(ceil_div(rows, kTile), 65535)));
  if (x.dtype() == DType::F32)
    transpose_kernel<<<grid, block, 0, cuda_stream()>>>(out.data<float>(), x.data<float>(), rows, cols);
  else
    transpose_kernel<<<grid, block, 0, cuda_stream()>>>(out.data<double>(), x.data<double>(), rows, cols);
  SAE_CUDA_CHECK_LAUNCH();
}

// ---------------------------------------------------------------- adam

// The scalars of the step in the parameter's precision, computed on the host exactly as
// adam_typed in cpu_kernels.cpp computes them.
template <typename T>
struct AdamConstants {
  T step_size, sqrt_bias2, b1, b2, eps, one_minus_b1, one_minus_b2, wd;
};

template <typename T>
AdamConstants<T> adam_constants(const AdamScalars& s) {
  const double bias1 = 1.0 - std::pow(s.beta1, static_cast<double>(s.step));
  const double bias2 = 1.0 - std::pow(s.beta2, static_cast<double>(s.step));
  AdamConstants<T> c;
  c.step_size = static_cast<T>(s.lr / bias1);
  c.sqrt_bias2 = static_cast<T>(std::sqrt(bias2));
  c.b1 = static_cast<T>(s.beta1);
  c.b2 = static_cast<T>(s.beta2);
  c.eps = static_cast<T>(s.eps);
  c.one_minus_b1 = static_cast<T>(1.0 - s.beta1);
  c.one_minus_b2 = static_cast<T>(1.0 - s.beta2);
  c.wd = static_cast<T>(s.weight_decay);
  return c;
}

// torch.optim.Adam, single-tensor form (torch/optim/adam.py, _single_tensor_adam):
//   g += wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// The one copy of the expression on the GPU: adam_kernel and the fused sparse kernels call it.
template <typename T>
__device__ inline void adam_element(T& param, T& m, T& v, T g, const AdamConstants<T>& c) {
  const T grad = g + c.wd * param;
  const T mi = c.b1 * m + c.one_minus_b1 * grad;
  const T vi = c.b2 * v + c.one_minus_b2 * grad * grad;
  m = mi;
  v = vi;
  param = param - c.step_size * (mi / (dev_sqrt(vi) / c.sqrt_bias2 + c.eps));
}

template <typename T>
__global__ void adam_kernel(T* p, T* m, T* v, const T* g, int64_t n, AdamConstants<T> c) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) {
    T param = p[i], mi = m[i], vi = v[i];
    adam_element(param, mi, vi, g[i], c);
    m[i] = mi;
    v[i] = vi;
    p[i] = param;
  }
}

void adam_step_cuda(Tensor& param, Tensor& m, Tensor& v, const Tensor& grad, const AdamScalars& s) {
  const int64_t n = param.numel();
  if (n == 0) return;
  if (param.dtype() == DType::F32)
    adam_kernel<<<grid_for(n), kBlock, 0, cuda_stream()>>>(param.data<float>(), m.data<float>(), v.data<float>(),
                                                           grad.data<float>(), n, adam_constants<float>(s));
  else
    adam_kernel<<<grid_for(n), kBlock, 0, cuda_stream()>>>(param.data<double>(), m.data<double>(), v.data<double>(),
                                                           grad.data<double>(), n, adam_constants<double>(s));
  SAE_CUDA_CHECK_LAUNCH();
}

// ---------------------------------------------------------------- SAE fused kernels
//
// encoder_activate and encoder_backward make one pass over f [N, F] (N rows = tokens, F columns =
// features), rewriting it in place and summing every column, as their CPU references do.
//
// Layout: a block of 32 x 8 threads owns a tile of 32 neighbouring columns and one slice of rows.
// The 32 threads of a warp read 32 consecutive values of one row (coalesced); the block's 8 thread
// rows stride down the slice, each keeping its own running sum per column, and shared memory then
// adds the 8 thread rows in a fixed order. The column values are loaded once per thread (bias,
// row_add). Each thread issues kSaeUnroll loads before it uses any, so several are in flight.
//
// Slices: long columns (large N) are cut into `splits` slices of rows, so that enough blocks run
// to keep the memory system busy (N = 4096, F = 10000: 313 column tiles x 8 slices); each slice
// writes partial sums [splits, F] and a second kernel adds them in slice order. The number of
// slices depends on N alone, never on the GPU, so the results are bitwise repeatable from run to
// run and from one GPU model to another. No atomics anywhere.
//
// Column sums are accumulated in double and rounded to T once at the end (the CPU accumulates in T
// in row order: for float32 the two differ by the CPU's rounding, at most about N * 6e-8 of the sum
// of |values|). Counts are exact integers.
constexpr int kSaeColumns = 32, kSaeRowLanes = 8, kSaeUnroll = 4;
constexpr int64_t kSaeRowsPerSplit = 512;  // a slice holds at least this many rows (or all of them)
constexpr int64_t kSaeMaxSplits = 64;

int64_t sae_row_splits(int64_t rows) { return std::clamp<int64_t>(rows / kSaeRowsPerSplit, 1, kSaeMaxSplits); }

// Where the column sums of a block go: with one slice straight into the outputs (count may be
// null), otherwise into the partials [splits, cols].
template <typename T>
struct ColumnSumsOut {
  T* sum;
  T* count;
  double* partial_sum;
  long long* partial_count;
};

// Called by every thread of the block once per task (it synchronises). Thread (x, y) holds the
// running sum and count of column c over thread row y; the 8 thread rows are added in order 0..7.
template <typename T, bool kCount>
__device__ void store_column_sums(double sum, long long count, int64_t c, int64_t cols, int64_t split,
                                  int64_t splits, const ColumnSumsOut<T>& out) {
  __shared__ double lane_sums[kSaeRowLanes][kSaeColumns + 1];
  __shared__ long long lane_counts[kSaeRowLanes][kSaeColumns + 1];
  lane_sums[threadIdx.y][threadIdx.x] = sum;
  if (kCount) lane_counts[threadIdx.y][threadIdx.x] = count;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    for (int r = 1; r < kSaeRowLanes; ++r) {
      sum += lane_sums[r][threadIdx.x];
      if (kCount) count += lane_counts[r][threadIdx.x];
    }
    if (splits == 1) {
      out.sum[c] = static_cast<T>(sum);
      if (kCount) out.count[c] = static_cast<T>(count);
    } else {
      out.partial_sum[split * cols + c] = sum;
      if (kCount) out.partial_count[split * cols + c] = count;
    }
  }
  __syncthreads();  // the shared arrays are rewritten by the block's next task
}

// f [rows, cols] in place: f = relu(f + bias[c]); sums and counts the results per column.
template <typename T>
__global__ void encoder_activate_kernel(T* f, const T* bias, ColumnSumsOut<T> out, int64_t rows, int64_t cols,
                                        int64_t splits) {
  const int64_t tiles = (cols + kSaeColumns - 1) / kSaeColumns, chunk = (rows + splits - 1) / splits;
  for (int64_t task = blockIdx.x; task < tiles * splits; task += gridDim.x) {
    const int64_t tile = task % tiles, split = task / tiles;
    const int64_t c = tile * kSaeColumns + threadIdx.x;
    double sum = 0.0;
    long long count = 0;
    if (c < cols) {
      const T b = bias[c];
      T* column = f + c;
      const int64_t end = min(rows, (split + 1) * chunk);
      int64_t r = split * chunk + threadIdx.y;
      for (; r + (kSaeUnroll - 1) * kSaeRowLanes < end; r += kSaeUnroll * kSaeRowLanes) {
        T v[kSaeUnroll];
#pragma unroll
        for (int u = 0; u < kSaeUnroll; ++u) v[u] = column[(r + u * kSaeRowLanes) * cols];
#pragma unroll
        for (int u = 0; u < kSaeUnroll; ++u) {
          const T pre = v[u] + b;
          const T act = pre > T(0) ? pre : T(0);
          column[(r + u * kSaeRowLanes) * cols] = act;
          sum += act;
          count += act > T(0) ? 1 : 0;
        }
      }
      for (; r < end; r += kSaeRowLanes) {
        const T pre = column[r * cols] + b;
        const T act = pre > T(0) ? pre : T(0);
        column[r * cols] = act;
        sum += act;
        count += act > T(0) ? 1 : 0;
      }
    }
    store_column_sums<T, true>(sum, count, c, cols, split, splits, out);
  }
}

// grad [rows, cols] in place: grad = f > 0 ? grad + row_add[c] : 0; sums the results per column.
// grad is only read where f > 0: with sparse features most of its sectors are never fetched.
template <typename T>
__global__ void encoder_backward_kernel(T* grad, const T* f, const T* row_add, ColumnSumsOut<T> out, int64_t rows,
                                        int64_t cols, int64_t splits) {
  const int64_t tiles = (cols + kSaeColumns - 1) / kSaeColumns, chunk = (rows + splits - 1) / splits;
  for (int64_t task = blockIdx.x; task < tiles * splits; task += gridDim.x) {
    const int64_t tile = task % tiles, split = task / tiles;
    const int64_t c = tile * kSaeColumns + threadIdx.x;
    double sum = 0.0;
    if (c < cols) {
      const T a = row_add[c];
      T* g_column = grad + c;
      const T* f_column = f + c;
      const int64_t end = min(rows, (split + 1) * chunk);
      int64_t r = split * chunk + threadIdx.y;
      for (; r + (kSaeUnroll - 1) * kSaeRowLanes < end; r += kSaeUnroll * kSaeRowLanes) {
        bool on[kSaeUnroll];
        T v[kSaeUnroll];
#pragma unroll
        for (int u = 0; u < kSaeUnroll; ++u) on[u] = f_column[(r + u * kSaeRowLanes) * cols] > T(0);
#pragma unroll
        for (int u = 0; u < kSaeUnroll; ++u) v[u] = on[u] ? g_column[(r + u * kSaeRowLanes) * cols] : T(0);
#pragma unroll
        for (int u = 0; u < kSaeUnroll; ++u) {
          const T result = on[u] ? v[u] + a : T(0);
          g_column[(r + u * kSaeRowLanes) * cols] = result;
          sum += result;
        }
      }
      for (; r < end; r += kSaeRowLanes) {
        const T result = f_column[r * cols] > T(0) ? g_column[r * cols] + a : T(0);
        g_column[r * cols] = result;
        sum += result;
      }
    }
    store_column_sums<T, false>(sum, 0, c, cols, split, splits, out);
  }
}

// Adds the partials [splits, cols] of the kernels above in slice order, one thread per column.
template <typename T>
__global__ void finish_column_sums_kernel(ColumnSumsOut<T> out, int64_t cols, int64_t splits) {
  for (int64_t c = thread_index(); c < cols; c += grid_stride()) {
    double sum = 0.0;
    long long count = 0;
    for (int64_t s = 0; s < splits; ++s) {
      sum += out.partial_sum[s * cols + c];
      if (out.count) count += out.partial_count[s * cols + c];
    }
    out.sum[c] = static_cast<T>(sum);
    if (out.count) out.count[c] = static_cast<T>(count);
  }
}

// Launches `launch(grid, out, splits)` for the main kernel, with partials and the finishing
// kernel when the rows are split. col_count may be null.
template <typename T, typename Launch>
void launch_column_pass(int64_t rows, int64_t cols, T* col_sum, T* col_count, Launch launch) {
  const int64_t splits = sae_row_splits(rows);
  const int64_t tasks = ceil_div(cols, kSaeColumns) * splits;
  ColumnSumsOut<T> out{col_sum, col_count, nullptr, nullptr};
  if (splits == 1) {
    launch(grid_for(tasks, 1), out, splits);
    SAE_CUDA_CHECK_LAUNCH();
    return;
  }
  const size_t partials = static_cast<size_t>(splits * cols);
  DeviceBuffer scratch(partials * sizeof(double) + (col_count ? partials * sizeof(long long) : 0));
  out.partial_sum = static_cast<double*>(scratch.ptr);
  out.partial_count = col_count ? reinterpret_cast<long long*>(out.partial_sum + partials) : nullptr;
  launch(grid_for(tasks, 1), out, splits);
  SAE_CUDA_CHECK_LAUNCH();
  finish_column_sums_kernel<<<grid_for(cols), kBlock, 0, cuda_stream()>>>(out, cols, splits);
  SAE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void encoder_activate_typed(T* f, const T* bias, T* col_sum, T* col_count, int64_t rows, int64_t cols) {
  if (cols == 0) return;  // rows == 0 still runs: the sums and counts become 0
  launch_column_pass(rows, cols, col_sum, col_count, [&](int grid, const ColumnSumsOut<T>& out, int64_t splits) {
    encoder_activate_kernel<<<grid, dim3(kSaeColumns, kSaeRowLanes), 0, cuda_stream()>>>(f, bias, out, rows, cols,
                                                                                         splits);
  });
}

template <typename T>
void encoder_backward_typed(T* grad, const T* f, const T* row_add, T* col_sum, int64_t rows, int64_t cols) {
  if (cols == 0) return;
  launch_column_pass(rows, cols, col_sum, static_cast<T*>(nullptr),
                     [&](int grid, const ColumnSumsOut<T>& out, int64_t splits) {
                       encoder_backward_kernel<<<grid, dim3(kSaeColumns, kSaeRowLanes), 0, cuda_stream()>>>(
                           grad, f, row_add, out, rows, cols, splits);
                     });
}

void encoder_activate_cuda(Tensor& f, const Tensor& bias, Tensor& col_sum, Tensor& col_count) {
  if (f.dtype() == DType::F32)
    encoder_activate_typed(f.data<float>(), bias.data<float>(), col_sum.data<float>(), col_count.data<float>(),
                           f.size(0), f.size(1));
  else
    encoder_activate_typed(f.data<double>(), bias.data<double>(), col_sum.data<double>(), col_count.data<double>(),
                           f.size(0), f.size(1));
}

void encoder_backward_cuda(Tensor& grad, const Tensor& f, const Tensor& row_add, Tensor& col_sum) {
  if (f.dtype() == DType::F32)
    encoder_backward_typed(grad.data<float>(), f.data<float>(), row_add.data<float>(), col_sum.data<float>(),
                           f.size(0), f.size(1));
  else
    encoder_backward_typed(grad.data<double>(), f.data<double>(), row_add.data<double>(), col_sum.data<double>(),
                           f.size(0), f.size(1));
}

// out[r, :] += scale[r] * x[r, :]. Rows along grid y (the scale is read once per row), columns
// along grid x and the threads (coalesced). The expression is the CPU's: out + (s * x), unfused.
template <typename T>
__global__ void add_scaled_rows_kernel(T* out, const T* x, const T* scale, int64_t rows, int64_t cols) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const T s = scale[r];
    T* out_row = out + r * cols;
    const T* x_row = x + r * cols;
    for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < cols; c += int64_t(blockDim.x) * gridDim.x)
      out_row[c] = out_row[c] + s * x_row[c];
  }
}

void add_scaled_rows_cuda(Tensor& out, const Tensor& x, const Tensor& row_scale) {
  const int64_t rows = x.size(0), cols = x.size(1);
  if (rows == 0 || cols == 0) return;
  // Narrow rows get narrow blocks (a warp at least); grid y is limited to 65535, the loop covers more.
  const int threads = static_cast<int>(std::min<int64_t>(kBlock, ceil_div(cols, 32) * 32));
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(ceil_div(cols, threads), 1024)),
                  static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
  if (x.dtype() == DType::F32)
    add_scaled_rows_kernel<<<grid, threads, 0, cuda_stream()>>>(out.data<float>(), x.data<float>(),
                                                                row_scale.data<float>(), rows, cols);
  else
    add_scaled_rows_kernel<<<grid, threads, 0, cuda_stream()>>>(out.data<double>(), x.data<double>(),
                                                                row_scale.data<double>(), rows, cols);
  SAE_CUDA_CHECK_LAUNCH();
}

// ---------------------------------------------------------------- sparse SAE kernels
//
// The sparse path of the SAE step (op_list.h, sae/sae_step.h): f's positive entries listed by
// feature (CSC), the decoder product from f's positive entries, and the two backward kernels that
// hand each gradient value to its ParamUpdate (written out, or one Adam step at once). Like the
// kernels above they use no atomics: every sum has one owner and a fixed order, so results are
// bitwise repeatable.
//
//   sparse_index             by feature: f [N, F] cut into slices of kSparseSliceRows rows; count
//                            the entries of every (slice, column), turn the counts into offsets
//                            (per column over its slices, then one scan over the columns), then
//                            each (slice, column) thread writes its entries in row order. By token:
//                            rows cut into segments of kRowSegment columns, one warp per (row,
//                            segment) counts its entries (ballots), offsets per row over its
//                            segments, one scan over the rows, then each warp writes its entries
//                            in column order (ballot prefix counts).
//   sparse_decode            one block per (token, 256 columns of x_hat): each thread adds its
//                            column of W_dec for every entry of the token, in feature order.
//   sparse_decoder_backward  one block per feature: each warp takes one entry at a time and
//                            computes dx[t] . W_dec[i] (lanes over D, a fixed shuffle tree); then,
//                            after a barrier (every old value of the row has been read), each
//                            thread sums its columns of dW_dec[i] over the entries in token order
//                            and hands them to the update.
//   sparse_encoder_backward  one block per tile of 32 features x 32 rows of W_enc: warp by feature,
//                            lane by row j, G[i][j] = sum over the feature's entries of
//                            dpre * x[t, j] (coalesced rows of x) into shared memory; then lanes
//                            over the 32 features update W_enc[j, i0:i0+32] (coalesced) reading G
//                            transposed (padded: no bank conflicts). The tiles of rows 0..31 also
//                            sum db_enc.

// Raw pointers of a ParamUpdate, passed to kernels by value.
template <typename T>
struct UpdateTarget {
  T* param;
  T* grad;
  T* m;
  T* v;
  bool adam;
  AdamConstants<T> c;
};

template <typename T>
UpdateTarget<T> update_target(ParamUpdate& u) {
  UpdateTarget<T> t{};
  t.param = u.param.data<T>();
  t.adam = u.adam;
  if (u.adam) {
    t.m = u.m.data<T>();
    t.v = u.v.data<T>();
    t.c = adam_constants<T>(u.scalars);
  } else {
    t.grad = u.grad.data<T>();
  }
  return t;
}

// Element `index` of the parameter has gradient g.
template <typename T>
__device__ inline void store_gradient(const UpdateTarget<T>& u, int64_t index, T g) {
  if (!u.adam) {
    u.grad[index] = g;
    return;
  }
  T param = u.param[index], m = u.m[index], v = u.v[index];
  adam_element(param, m, v, g, u.c);
  u.m[index] = m;
  u.v[index] = v;
  u.param[index] = param;
}

constexpr int64_t kSparseSliceRows = 256;
constexpr int kWarps = kBlock / 32;  // 8 warps in a block of kBlock threads

// counts[s * cols + c] = entries > 0 of column c in rows [s * kSparseSliceRows, ...) of that slice.
template <typename T>
__global__ void count_slices_kernel(int32_t* counts, const T* f, int64_t rows, int64_t cols, int64_t slices) {
  for (int64_t k = thread_index(); k < slices * cols; k += grid_stride()) {
    const int64_t slice = k / cols, c = k % cols;
    const int64_t end = min(rows, (slice + 1) * kSparseSliceRows);
    int32_t count = 0;
    for (int64_t r = slice * kSparseSliceRows; r < end; ++r) count += f[r * cols + c] > T(0) ? 1 : 0;
    counts[k] = count;
  }
}

// Per column: counts become offsets within the column (slice order); col_ptr[c + 1] = its total.
__global__ void slice_offsets_kernel(int32_t* counts, int32_t* col_ptr, int64_t cols, int64_t slices) {
  for (int64_t c = thread_index(); c < cols; c += grid_stride()) {
    int32_t running = 0;
    for (int64_t s = 0; s < slices; ++s) {
      const int32_t count = counts[s * cols + c];
      counts[s * cols + c] = running;
      running += count;
    }
    col_ptr[c + 1] = running;
  }
}

// One block: ptr[1..count] (counts) becomes their running sum; ptr[0] = 0. Each thread owns a
// contiguous chunk; the chunk totals are scanned by thread 0 (kBlock values).
__global__ void scan_counts_kernel(int32_t* ptr, int64_t count) {
  __shared__ int32_t chunk_base[kBlock];
  const int64_t chunk = (count + kBlock - 1) / kBlock;
  const int64_t begin = min(count, threadIdx.x * chunk), end = min(count, begin + chunk);
  int32_t total = 0;
  for (int64_t c = begin; c < end; ++c) total += ptr[c + 1];
  chunk_base[threadIdx.x] = total;
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t running = 0;
    for (int k = 0; k < kBlock; ++k) {
      const int32_t t = chunk_base[k];
      chunk_base[k] = running;
      running += t;
    }
    ptr[0] = 0;
  }
  __syncthreads();
  int32_t running = chunk_base[threadIdx.x];
  for (int64_t c = begin; c < end; ++c) {
    running += ptr[c + 1];
    ptr[c + 1] = running;
  }
}

template <typename T>
__global__ void fill_columns_kernel(int32_t* out_rows, T* out_vals, const int32_t* offsets, const int32_t* col_ptr,
                                    const T* f, int64_t rows, int64_t cols, int64_t slices) {
  for (int64_t k = thread_index(); k < slices * cols; k += grid_stride()) {
    const int64_t slice = k / cols, c = k % cols;
    const int64_t end = min(rows, (slice + 1) * kSparseSliceRows);
    int32_t e = col_ptr[c] + offsets[k];
    for (int64_t r = slice * kSparseSliceRows; r < end; ++r) {
      const T v = f[r * cols + c];
      if (v > T(0)) {
        out_rows[e] = static_cast<int32_t>(r);
        out_vals[e] = v;
        ++e;
      }
    }
  }
}

// By token, rows are cut into segments of kRowSegment columns, one warp per (row, segment) task.
constexpr int64_t kRowSegment = 1024;

// counts[r * segments + s] = entries > 0 of row r in segment s (ballots over 32 columns at a time).
template <typename T>
__global__ void count_row_segments_kernel(int32_t* counts, const T* f, int64_t rows, int64_t cols, int64_t segments) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * kWarps;
  for (int64_t task = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; task < rows * segments; task += warps) {
    const int64_t r = task / segments, c_end = min(cols, (task % segments + 1) * kRowSegment);
    int32_t count = 0;
    for (int64_t c0 = (task % segments) * kRowSegment; c0 < c_end; c0 += 32) {
      const int64_t c = c0 + lane;
      count += __popc(__ballot_sync(0xffffffffu, c < c_end && f[r * cols + c] > T(0)));
    }
    if (lane == 0) counts[task] = count;
  }
}

// Per row: segment counts become offsets within the row; row_ptr[r + 1] = the row's total.
__global__ void segment_offsets_kernel(int32_t* counts, int32_t* row_ptr, int64_t rows, int64_t segments) {
  for (int64_t r = thread_index(); r < rows; r += grid_stride()) {
    int32_t running = 0;
    for (int64_t s = 0; s < segments; ++s) {
      const int32_t count = counts[r * segments + s];
      counts[r * segments + s] = running;
      running += count;
    }
    row_ptr[r + 1] = running;
  }
}

// Each (row, segment) warp writes its entries in column order after the row's earlier segments.
template <typename T>
__global__ void fill_row_segments_kernel(int32_t* out_cols, T* out_vals, const int32_t* offsets,
                                         const int32_t* row_ptr, const T* f, int64_t rows, int64_t cols,
                                         int64_t segments) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * kWarps;
  for (int64_t task = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; task < rows * segments; task += warps) {
    const int64_t r = task / segments, c_end = min(cols, (task % segments + 1) * kRowSegment);
    int32_t written = row_ptr[r] + offsets[task];
    for (int64_t c0 = (task % segments) * kRowSegment; c0 < c_end; c0 += 32) {
      const int64_t c = c0 + lane;
      const T v = c < c_end ? f[r * cols + c] : T(0);
      const bool on = v > T(0);
      const unsigned ballot = __ballot_sync(0xffffffffu, on);
      if (on) {
        const int32_t k = written + __popc(ballot & ((1u << lane) - 1u));
        out_cols[k] = static_cast<int32_t>(c);
        out_vals[k] = v;
      }
      written += __popc(ballot);
    }
  }
}

template <typename T>
void sparse_index_typed(SparseFeatures& s, const T* f, int64_t rows, int64_t cols) {
  int32_t* col_ptr = s.col_ptr.data<int32_t>();
  int32_t* row_ptr = s.row_ptr.data<int32_t>();
  // By feature.
  if (cols == 0) {
    SAE_CUDA_CHECK(cudaMemsetAsync(col_ptr, 0, sizeof(int32_t), cuda_stream()));
  } else {
    const int64_t slices = std::max<int64_t>(1, ceil_div(rows, kSparseSliceRows));
    DeviceBuffer counts(static_cast<size_t>(slices * cols) * sizeof(int32_t));
    int32_t* count = static_cast<int32_t*>(counts.ptr);
    count_slices_kernel<<<grid_for(slices * cols), kBlock, 0, cuda_stream()>>>(count, f, rows, cols, slices);
    SAE_CUDA_CHECK_LAUNCH();
    slice_offsets_kernel<<<grid_for(cols), kBlock, 0, cuda_stream()>>>(count, col_ptr, cols, slices);
    SAE_CUDA_CHECK_LAUNCH();
    scan_counts_kernel<<<1, kBlock, 0, cuda_stream()>>>(col_ptr, cols);
    SAE_CUDA_CHECK_LAUNCH();
    fill_columns_kernel<<<grid_for(slices * cols), kBlock, 0, cuda_stream()>>>(
        s.rows.data<int32_t>(), s.vals.data<T>(), count, col_ptr, f, rows, cols, slices);
    SAE_CUDA_CHECK_LAUNCH();
  }
  // By token.
  if (rows == 0) {
    SAE_CUDA_CHECK(cudaMemsetAsync(row_ptr, 0, sizeof(int32_t), cuda_stream()));
    return;
  }
  const int64_t segments = std::max<int64_t>(1, ceil_div(cols, kRowSegment));
  DeviceBuffer counts(static_cast<size_t>(rows * segments) * sizeof(int32_t));
  int32_t* count = static_cast<int32_t*>(counts.ptr);
  count_row_segments_kernel<<<grid_for(rows * segments, kWarps), kBlock, 0, cuda_stream()>>>(count, f, rows, cols,
                                                                                         segments);
  SAE_CUDA_CHECK_LAUNCH();
  segment_offsets_kernel<<<grid_for(rows), kBlock, 0, cuda_stream()>>>(count, row_ptr, rows, segments);
  SAE_CUDA_CHECK_LAUNCH();
  scan_counts_kernel<<<1, kBlock, 0, cuda_stream()>>>(row_ptr, rows);
  SAE_CUDA_CHECK_LAUNCH();
  fill_row_segments_kernel<<<grid_for(rows * segments, kWarps), kBlock, 0, cuda_stream()>>>(
      s.cols.data<int32_t>(), s.row_vals.data<T>(), count, row_ptr, f, rows, cols, segments);
  SAE_CUDA_CHECK_LAUNCH();
}

void sparse_index_cuda(SparseFeatures& s, const Tensor& f, const Tensor& col_count) {
  if (f.dtype() == DType::F32)
    sparse_index_typed(s, f.data<float>(), f.size(0), f.size(1));
  else
    sparse_index_typed(s, f.data<double>(), f.size(0), f.size(1));
}

template <typename T>
__global__ void sparse_decode_kernel(T* x_hat, const int32_t* row_ptr, const int32_t* cols_in, const T* row_vals,
                                     const T* W, const T* b, int64_t rows, int64_t d) {
  const int64_t slices = (d + kBlock - 1) / kBlock;
  for (int64_t task = blockIdx.x; task < rows * slices; task += gridDim.x) {
    const int64_t t = task / slices, c = (task % slices) * kBlock + threadIdx.x;
    if (c >= d) continue;
    const int32_t k0 = row_ptr[t], k1 = row_ptr[t + 1];
    T acc = T(0);
    for (int32_t k = k0; k < k1; ++k) acc += row_vals[k] * W[int64_t(cols_in[k]) * d + c];
    x_hat[t * d + c] = acc + b[c];
  }
}

template <typename T>
void sparse_decode_typed(T* x_hat, const SparseFeatures& s, const T* W, const T* b, int64_t rows, int64_t d) {
  if (rows == 0 || d == 0) return;
  sparse_decode_kernel<<<grid_for(rows * ceil_div(d, kBlock), 1), kBlock, 0, cuda_stream()>>>(
      x_hat, s.row_ptr.data<int32_t>(), s.cols.data<int32_t>(), s.row_vals.data<T>(), W, b, rows, d);
  SAE_CUDA_CHECK_LAUNCH();
}

void sparse_decode_cuda(Tensor& x_hat, const SparseFeatures& s, const Tensor& W_dec, const Tensor& b_dec) {
  if (x_hat.dtype() == DType::F32)
    sparse_decode_typed(x_hat.data<float>(), s, W_dec.data<float>(), b_dec.data<float>(), x_hat.size(0),
                        x_hat.size(1));
  else
    sparse_decode_typed(x_hat.data<double>(), s, W_dec.data<double>(), b_dec.data<double>(), x_hat.size(0),
                        x_hat.size(1));
}

template <typename T>
__global__ void sparse_decoder_backward_kernel(T* dpre, UpdateTarget<T> update, const T* dx, const int32_t* col_ptr,
                                               const int32_t* rows, const T* vals, const T* norms, const T* col_sum,
                                               T lambda, T tiny, int64_t d, int64_t cols) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t i = blockIdx.x; i < cols; i += gridDim.x) {
    const T* w = update.param + i * d;
    const int32_t e0 = col_ptr[i], e1 = col_ptr[i + 1];
    // The dense path's expressions: affine(norms, l1, 0), and affine(col_sum / maximum(norms, tiny), l1, 0).
    const T n = norms[i];
    const T row_add = lambda * n + T(0);
    const T scale = lambda * (col_sum[i] / (n > tiny ? n : tiny)) + T(0);
    for (int32_t e = e0 + warp; e < e1; e += kWarps) {
      const T* dx_t = dx + int64_t(rows[e]) * d;
      T part = T(0);
      for (int64_t k = lane; k < d; k += 32) part += dx_t[k] * w[k];
      for (int offset = 16; offset > 0; offset /= 2) part += __shfl_down_sync(0xffffffffu, part, offset);
      if (lane == 0) dpre[e] = part + row_add;
    }
    __syncthreads();  // every dot product has read the old row before it is updated
    for (int64_t k = threadIdx.x; k < d; k += kBlock) {
      T g = T(0);
      for (int32_t e = e0; e < e1; ++e) g += vals[e] * dx[int64_t(rows[e]) * d + k];
      g = g + scale * w[k];
      store_gradient(update, i * d + k, g);
    }
  }
}

template <typename T>
void sparse_decoder_backward_typed(T* dpre, ParamUpdate& W_dec, const T* dx, const int32_t* col_ptr,
                                   const int32_t* rows, const T* vals, const T* norms, const T* col_sum, double l1,
                                   int64_t d, int64_t cols) {
  if (cols == 0 || d == 0) return;
  sparse_decoder_backward_kernel<<<grid_for(cols, 1), kBlock, 0, cuda_stream()>>>(
      dpre, update_target<T>(W_dec), dx, col_ptr, rows, vals, norms, col_sum, static_cast<T>(l1),
      static_cast<T>(1e-30), d, cols);
  SAE_CUDA_CHECK_LAUNCH();
}

void sparse_decoder_backward_cuda(Tensor& dpre, ParamUpdate& W_dec, const Tensor& grad_x_hat, const SparseFeatures& s,
                                  const Tensor& norms, const Tensor& col_sum, double l1) {
  const int64_t d = grad_x_hat.size(1), cols = W_dec.param.size(0);
  if (grad_x_hat.dtype() == DType::F32)
    sparse_decoder_backward_typed(dpre.data<float>(), W_dec, grad_x_hat.data<float>(), s.col_ptr.data<int32_t>(),
                                  s.rows.data<int32_t>(), s.vals.data<float>(), norms.data<float>(),
                                  col_sum.data<float>(), l1, d, cols);
  else
    sparse_decoder_backward_typed(dpre.data<double>(), W_dec, grad_x_hat.data<double>(), s.col_ptr.data<int32_t>(),
                                  s.rows.data<int32_t>(), s.vals.data<double>(), norms.data<double>(),
                                  col_sum.data<double>(), l1, d, cols);
}

constexpr int kEncoderTile = 32;  // features per tile = rows of W_enc per tile = lanes of a warp

template <typename T>
__global__ void sparse_encoder_backward_kernel(UpdateTarget<T> W, UpdateTarget<T> b, const T* x,
                                               const int32_t* col_ptr, const int32_t* rows, const T* dpre, int64_t d,
                                               int64_t cols) {
  __shared__ T G[kEncoderTile][kEncoderTile + 1];  // G[feature][row j]; padded against bank conflicts
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // At least one chunk of rows, so that db_enc is summed even when D = 0.
  const int64_t tiles = (cols + kEncoderTile - 1) / kEncoderTile;
  const int64_t chunks = d > 0 ? (d + kEncoderTile - 1) / kEncoderTile : 1;
  for (int64_t task = blockIdx.x; task < tiles * chunks; task += gridDim.x) {
    const int64_t i0 = (task % tiles) * kEncoderTile, j0 = (task / tiles) * kEncoderTile;
    for (int ii = warp; ii < kEncoderTile; ii += kWarps) {
      const int64_t i = i0 + ii, j = j0 + lane;
      T acc = T(0);
      if (i < cols && j < d) {
        for (int32_t e = col_ptr[i]; e < col_ptr[i + 1]; ++e) acc += dpre[e] * x[int64_t(rows[e]) * d + j];
      }
      G[ii][lane] = acc;
    }
    __syncthreads();
    for (int jj = warp; jj < kEncoderTile; jj += kWarps) {
      const int64_t j = j0 + jj, i = i0 + lane;
      if (j < d && i < cols) store_gradient(W, j * cols + i, G[lane][jj]);
    }
    if (j0 == 0 && warp == 0 && i0 + lane < cols) {
      const int64_t i = i0 + lane;
      T sum = T(0);
      for (int32_t e = col_ptr[i]; e < col_ptr[i + 1]; ++e) sum += dpre[e];
      store_gradient(b, i, sum);
    }
    __syncthreads();  // G is rewritten by the next task
  }
}

template <typename T>
void sparse_encoder_backward_typed(ParamUpdate& W_enc, ParamUpdate& b_enc, const T* x, const int32_t* col_ptr,
                                   const int32_t* rows, const T* dpre, int64_t d, int64_t cols) {
  if (cols == 0) return;
  const int64_t tasks = ceil_div(cols, kEncoderTile) * std::max<int64_t>(1, ceil_div(d, kEncoderTile));
  sparse_encoder_backward_kernel<<<grid_for(tasks, 1), kBlock, 0, cuda_stream()>>>(
      update_target<T>(W_enc), update_target<T>(b_enc), x, col_ptr, rows, dpre, d, cols);
  SAE_CUDA_CHECK_LAUNCH();
}

void sparse_encoder_backward_cuda(ParamUpdate& W_enc, ParamUpdate& b_enc, const Tensor& x, const SparseFeatures& s,
                                  const Tensor& dpre) {
  const int64_t d = x.size(1), cols = W_enc.param.size(1);
  if (x.dtype() == DType::F32)
    sparse_encoder_backward_typed(W_enc, b_enc, x.data<float>(), s.col_ptr.data<int32_t>(), s.rows.data<int32_t>(),
                                  dpre.data<float>(), d, cols);
  else
    sparse_encoder_backward_typed(W_enc, b_enc, x.data<double>(), s.col_ptr.data<int32_t>(), s.rows.data<int32_t>(),
                                  dpre.data<double>(), d, cols);
}

KernelTable make_cuda_table() {
  KernelTable t;
  t.fill = fill_cuda;
  t.copy = copy_cuda;
  t.unary = unary_cuda;
  t.binary = binary_cuda;
  t.affine = affine_cuda;
  t.where = where_cuda;
  t.reduce_all = reduce_all_cuda;
  t.reduce_axis = reduce_axis_cuda;
  t.matmul = matmul_cuda;
  t.transpose = transpose_cuda;
  t.adam_step = adam_step_cuda;
  t.encoder_activate = encoder_activate_cuda;
  t.encoder_backward = encoder_backward_cuda;
  t.add_scaled_rows = add_scaled_rows_cuda;
  t.sparse_index = sparse_index_cuda;
  t.sparse_decode = sparse_decode_cuda;
  t.sparse_decoder_backward = sparse_decoder_backward_cuda;
  t.sparse_encoder_backward = sparse_encoder_backward_cuda;
  return t;
}

}  // namespace

const KernelTable& cuda_kernels() {
  static const KernelTable table = make_cuda_table();
  return table;
}

}  // namespace sae
