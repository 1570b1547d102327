// CUDA kernels for every entry of the generic op list (tensor/op_list.h), registered in
// cuda_kernels(). Each one computes what its CPU twin (tensor/cpu/kernels.cpp) computes with the
// same element expressions (the build passes --fmad=false so nvcc does not fuse a*b+c where the CPU
// rounds twice); reductions accumulate in double like the CPU but in a tree order, so they agree
// to rounding, not bitwise. Inputs were validated by the front-end (tensor/ops.cpp).
//
//   element-wise ops   grid-stride loops over n elements (no launch when n == 0)
//   binary             same-shape fast path; otherwise the 4-D Broadcast plan (stride 0 = repeat)
//   reductions         x viewed as [outer, len, inner] and reduced over len, accumulated in double;
//                      fixed-shape tree reductions, no atomics, so results are deterministic. Long
//                      reductions are split across blocks into double partials that a second
//                      kernel combines.
//   matmul             cuBLAS sgemm/dgemm on row-major [m, k] @ [k, n] data; at --precision tf32
//                      TF32 tensor-op math, at bf16 cublasGemmEx on bfloat16 copies (precision.h);
//                      a bf16 output straight from cublasGemmEx at bf16; bf16 operands at bf16 read
//                      as stored; otherwise a 16-bit b (weights) widened a tile at a time, a 16-bit
//                      a (activations) widened whole
//   transpose          32x32 tiles through shared memory
//   adam_step          one fused pass over param, m, v and grad (tensor/adam_math.h)
//   transformer ops    in transformer_kernels.cu (the table below holds them too)
// Everything is queued on the backend's one stream (tensor/cuda/check.h).
#include <algorithm>
#include <climits>
#include <cmath>
#include <type_traits>

#include "tensor/cuda/common.cuh"
#include "tensor/cuda/transformer_kernels.h"
#include "tensor/dispatch.h"
#include "tensor/element_math.h"
#include "tensor/op_list.h"

namespace sae {

namespace {

// ---------------------------------------------------------------- fill, copy, affine, where

template <typename T>
__global__ void fill_kernel(T* out, int64_t n, T value) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) out[i] = value;
}

void fill_cuda(Tensor& out, double value) {
  const int64_t n = out.numel();
  if (n == 0) return;
  dispatch_float(out.dtype(), "fill", [&](auto zero) {
    using T = decltype(zero);
    fill_kernel<<<grid_for(n), kBlock, 0, cuda_stream()>>>(out.data<T>(), n, static_cast<T>(value));
  });
  SAE_CUDA_CHECK_LAUNCH();
}

template <typename To, typename From>
__global__ void convert_kernel(To* out, const From* src, int64_t n) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) out[i] = convert_element<To>(src[i]);
}

void copy_cuda(Tensor& out, const Tensor& src) {
  const int64_t n = out.numel();
  if (n == 0) return;
  if (out.dtype() != src.dtype()) {
    dispatch_storage(out.dtype(), "copy", [&](auto to) {
      dispatch_storage(src.dtype(), "copy", [&](auto from) {
        using To = decltype(to);
        using From = decltype(from);
        convert_kernel<<<grid_for(n), kBlock, 0, cuda_stream()>>>(out.data<To>(), src.data<From>(), n);
      });
    });
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
  dispatch_float(x.dtype(), "affine", [&](auto zero) {
    using T = decltype(zero);
    affine_kernel<<<grid_for(n), kBlock, 0, cuda_stream()>>>(out.data<T>(), x.data<T>(), n,
                                                             static_cast<T>(scale), static_cast<T>(shift));
  });
  SAE_CUDA_CHECK_LAUNCH();
}

template <typename T>
__global__ void where_kernel(T* out, const T* cond, const T* a, const T* b, int64_t n) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) out[i] = cond[i] != T(0) ? a[i] : b[i];
}

void where_cuda(Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b) {
  const int64_t n = a.numel();
  if (n == 0) return;
  dispatch_float(a.dtype(), "where", [&](auto zero) {
    using T = decltype(zero);
    where_kernel<<<grid_for(n), kBlock, 0, cuda_stream()>>>(out.data<T>(), cond.data<T>(), a.data<T>(),
                                                            b.data<T>(), n);
  });
  SAE_CUDA_CHECK_LAUNCH();
}

// ---------------------------------------------------------------- unary

template <typename T, UnaryOp Op>
__global__ void unary_kernel(T* out, const T* x, int64_t n) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) out[i] = apply_unary<T>(Op, x[i]);
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
  dispatch_float(x.dtype(), "unary", [&](auto zero) {
    using T = decltype(zero);
    unary_typed(op, out.data<T>(), x.data<T>(), n);
  });
}

// ---------------------------------------------------------------- binary

template <typename T, BinaryOp Op>
__global__ void binary_same_shape_kernel(T* out, const T* a, const T* b, int64_t n) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) out[i] = apply_binary<T>(Op, a[i], b[i]);
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
    out[i] = apply_binary<T>(Op, a[ia], b[ib]);
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
  dispatch_float(a.dtype(), "binary", [&](auto zero) {
    using T = decltype(zero);
    binary_typed(op, out.data<T>(), a.data<T>(), b.data<T>(), n, plan);
  });
}

// ---------------------------------------------------------------- reductions
//
// A running value is one double with the rules of the CPU Accumulator (tensor/cpu/kernels.cpp): max/min
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
  dispatch_float(x.dtype(), "reduce_all", [&](auto zero) {
    using T = decltype(zero);
    reduce_typed(op, out.data<T>(), x.data<T>(), 1, x.numel(), 1);
  });
}

void reduce_axis_cuda(ReduceOp op, Tensor& out, const Tensor& x, int64_t outer, int64_t len, int64_t inner) {
  dispatch_float(x.dtype(), "reduce_axis", [&](auto zero) {
    using T = decltype(zero);
    reduce_typed(op, out.data<T>(), x.data<T>(), outer, len, inner);
  });
}

// ---------------------------------------------------------------- matmul

// Columns j0..j0+nb of op(b) widened into w: rows j0.. of b [., ld] (trans_b: w [nb, k]) or its
// columns j0.. (w [k, nb]); rounded as `precision` rounds GEMM inputs (as the CPU's matmul_widened).
template <typename H>
__global__ void widen_tile_kernel(float* w, const H* b, bool trans_b, int64_t j0, int64_t nb, int64_t k, int64_t ld,
                                  Precision precision) {
  for (int64_t i = thread_index(); i < nb * k; i += grid_stride()) {
    if (trans_b) {
      const int64_t r = i / k, c = i % k;
      w[i] = round_to_precision(widen(b[(j0 + r) * ld + c]), precision);
    } else {
      const int64_t r = i / nb, c = i % nb;
      w[i] = round_to_precision(widen(b[r * ld + j0 + c]), precision);
    }
  }
}

// x rounded to bfloat16 values, kept as float32 (an f16 weight's activations at --precision bf16).
__global__ void round_bf16_kernel(float* out, const float* x, int64_t n) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) out[i] = round_to_bf16(x[i]);
}

}  // namespace

// A float32 operand as bfloat16 (round to nearest even: the CPU reference's round_to_bf16, bit for
// bit), in scratch memory from the caching allocator, for --precision bf16 (tensor/precision.h).
__global__ void to_bf16_kernel(__nv_bfloat16* out, const float* x, int64_t n) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) out[i] = __float2bfloat16_rn(x[i]);
}

Bf16Operand::Bf16Operand(const Tensor& t) {
  if (t.dtype() == DType::BF16) {  // as stored
    data_ = reinterpret_cast<__nv_bfloat16*>(const_cast<void*>(t.raw()));
    return;
  }
  const int64_t n = t.numel();
  copy_ = std::make_unique<DeviceBuffer>(std::max<size_t>(1, n * sizeof(__nv_bfloat16)));
  data_ = static_cast<__nv_bfloat16*>(copy_->ptr);
  if (n == 0) return;
  to_bf16_kernel<<<grid_for(n), kBlock, 0, cuda_stream()>>>(data_, t.data<float>(), n);
  SAE_CUDA_CHECK_LAUNCH();
}

namespace {

// cuBLAS is column-major, and a row-major [r, c] matrix is the column-major [c, r] matrix holding
// its transpose. So out^T = op(b)^T op(a)^T is one column-major GEMM with the operands swapped,
// m and n swapped, each transpose flag kept, and the leading dimensions the row-major row lengths.
// A 16-bit b (a model's weights) is widened a tile of op(b)'s columns at a time into scratch, each
// tile one sgemm into those columns of out (as the CPU does, tensor/cpu/kernels.cpp).
void matmul_cuda(Tensor& out, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, double alpha,
                 double beta) {
  const int64_t m = out.size(0), n = out.size(1), k = trans_a ? a.size(0) : a.size(1);
  if (m == 0 || n == 0) return;
  if (k == 0) {  // the product is zero; as on the CPU, out = beta * out (0 when beta == 0, even over NaN)
    if (beta == 0.0 && out.dtype() == DType::BF16)  // fill takes float32 / float64; +0 is all zero bits
      SAE_CUDA_CHECK(cudaMemsetAsync(out.raw(), 0, out.nbytes(), cuda_stream()));
    else if (beta == 0.0)
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
  const bool bf16_out = out.dtype() == DType::BF16;
  const Precision precision = out.dtype() == DType::F32 || bf16_out ? matmul_precision() : Precision::FP32;
  cublasHandle_t handle = cublas_handle_for(precision);
  if (precision == Precision::BF16 && a.dtype() != DType::F16 && b.dtype() != DType::F16 &&
      out.dtype() != DType::F64) {
    // bfloat16 inputs (as stored, or float32 rounded into copies), float32 sums, a float32 or bf16 out
    const float alpha_f = static_cast<float>(alpha), beta_f = static_cast<float>(beta);
    Bf16Operand a16(a), b16(b);
    SAE_CUBLAS_CHECK(cublasGemmEx(handle, op_b, op_a, ni, mi, ki, &alpha_f, b16.data(), CUDA_R_16BF, ldb, a16.data(),
                                  CUDA_R_16BF, lda, &beta_f, out.raw(), bf16_out ? CUDA_R_16BF : CUDA_R_32F, ldc,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return;
  }
  if (bf16_out) {  // fp32 / tf32 inputs (or f16 ones at bf16): the float32 product in scratch, then rounded
    Tensor product = Tensor::empty(out.shape(), DType::F32, Device::CUDA);
    matmul_cuda(product, a, trans_a, b, trans_b, alpha, 0.0);
    to_bf16_kernel<<<grid_for(product.numel()), kBlock, 0, cuda_stream()>>>(
        reinterpret_cast<__nv_bfloat16*>(out.data<BFloat16>()), product.data<float>(), product.numel());
    SAE_CUDA_CHECK_LAUNCH();
    return;
  }
  if (is_half_dtype(a.dtype())) {  // 16-bit activations at fp32 / tf32 (or f16 at bf16): widened whole
    Tensor widened = Tensor::empty(a.shape(), DType::F32, Device::CUDA);
    copy_cuda(widened, a);
    matmul_cuda(out, widened, trans_a, b, trans_b, alpha, beta);
    return;
  }
  if (is_half_dtype(b.dtype())) {
    // tf32: the handle's TF32 math rounds both inputs; bf16 (f16 weights): the tiles and a are rounded
    // to bf16 values here and multiplied in float32 (exact products, as the CPU reference).
    Tensor a_rounded;
    if (precision == Precision::BF16) {
      a_rounded = Tensor::empty(a.shape(), DType::F32, Device::CUDA);
      round_bf16_kernel<<<grid_for(a.numel()), kBlock, 0, cuda_stream()>>>(a_rounded.data<float>(), a.data<float>(),
                                                                             a.numel());
      SAE_CUDA_CHECK_LAUNCH();
    }
    const float* pa = precision == Precision::BF16 ? a_rounded.data<float>() : a.data<float>();
    constexpr int64_t kTileFloats = int64_t(1) << 22;  // 16 MB of float32 scratch
    const int64_t tile = std::max<int64_t>(16, kTileFloats / k / 16 * 16);
    DeviceBuffer scratch(static_cast<size_t>(std::min(tile, n) * k) * sizeof(float));
    float* w = static_cast<float*>(scratch.ptr);
    const float alpha_f = static_cast<float>(alpha), beta_f = static_cast<float>(beta);
    for (int64_t j0 = 0; j0 < n; j0 += tile) {
      const int64_t nb = std::min(tile, n - j0);
      if (b.dtype() == DType::BF16)
        widen_tile_kernel<<<grid_for(nb * k), kBlock, 0, cuda_stream()>>>(w, b.data<BFloat16>(), trans_b, j0, nb, k,
                                                                           b.size(1), precision);
      else
        widen_tile_kernel<<<grid_for(nb * k), kBlock, 0, cuda_stream()>>>(w, b.data<Float16>(), trans_b, j0, nb, k,
                                                                           b.size(1), precision);
      SAE_CUDA_CHECK_LAUNCH();
      const int nbi = static_cast<int>(nb), ldw = static_cast<int>(trans_b ? k : nb);
      SAE_CUBLAS_CHECK(cublasSgemm(handle, op_b, op_a, nbi, mi, ki, &alpha_f, w, ldw, pa, lda, &beta_f,
                                   out.data<float>() + j0, ldc));
    }
    return;
  }
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
  dispatch_float(x.dtype(), "transpose", [&](auto zero) {
    using T = decltype(zero);
    transpose_kernel<<<grid, block, 0, cuda_stream()>>>(out.data<T>(), x.data<T>(), rows, cols);
  });
  SAE_CUDA_CHECK_LAUNCH();
}

// ---------------------------------------------------------------- adam

// One thread per element, the shared element formula (tensor/adam_math.h).
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
  dispatch_float(param.dtype(), "adam_step", [&](auto zero) {
    using T = decltype(zero);
    adam_kernel<<<grid_for(n), kBlock, 0, cuda_stream()>>>(param.data<T>(), m.data<T>(), v.data<T>(),
                                                           grad.data<T>(), n, adam_constants<T>(s));
  });
  SAE_CUDA_CHECK_LAUNCH();
}

}  // namespace

#define SAE_CUDA_ENTRY(name, signature) name##_cuda,
const KernelTable& cuda_kernels() {
  static const KernelTable table{SAE_KERNELS(SAE_CUDA_ENTRY)};
  return table;
}
#undef SAE_CUDA_ENTRY

}  // namespace sae
