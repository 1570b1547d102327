// dispatch_float: the one place a kernel turns a runtime dtype into its element type (the idea of
// ATen's AT_DISPATCH). The body is a generic lambda called with a value of the element type:
//   dispatch_float(x.dtype(), "relu", [&](auto zero) {
//     using T = decltype(zero);
//     relu_loop(out.data<T>(), x.data<T>(), x.numel());
//   });
// Float32 and float64 only; any other dtype throws Error naming the op (front-ends check dtypes
// first, so kernels never see one). dispatch_storage also takes the 16-bit storage types
// (BFloat16, Float16: tensor/half.h), for the kernels that read or write them (copy, embedding).
#pragma once
#include "tensor/tensor.h"

namespace sae {

template <typename Body>
decltype(auto) dispatch_float(DType dtype, const char* op, Body&& body) {
  if (dtype == DType::F32) return body(float{});
  if (dtype == DType::F64) return body(double{});
  throw Error(cat(op, ": expects float32 or float64, got ", dtype_name(dtype)));
}

// A float tensor read by an op that computes in float32 / float64: body(T{}, data) with T the
// compute type and data the stored elements (float32 and float64 as stored, bfloat16 computed in
// float32: the op widens each element where it reads it).
template <typename Body>
decltype(auto) dispatch_float_or_bf16(const Tensor& x, const char* op, Body&& body) {
  if (x.dtype() == DType::BF16) return body(float{}, x.data<BFloat16>());
  return dispatch_float(x.dtype(), op, [&](auto zero) {
    using T = decltype(zero);
    return body(zero, x.data<T>());
  });
}

// A kernel that stores its elements as bfloat16 or as its compute type: body(T{}, S{}) with T the
// compute type and S the storage type (float32: float, float; float64: double, double; bf16: float,
// BFloat16; tensor/half.h load_value and store_value convert).
template <typename Body>
decltype(auto) dispatch_compute_and_storage(DType dtype, const char* op, Body&& body) {
  if (dtype == DType::BF16) return body(float{}, BFloat16{});
  return dispatch_float(dtype, op, [&](auto zero) { return body(zero, zero); });
}

template <typename Body>
decltype(auto) dispatch_storage(DType dtype, const char* op, Body&& body) {
  if (dtype == DType::F32) return body(float{});
  if (dtype == DType::F64) return body(double{});
  if (dtype == DType::BF16) return body(BFloat16{});
  if (dtype == DType::F16) return body(Float16{});
  throw Error(cat(op, ": expects a float dtype (f32, f64, bf16, f16), got ", dtype_name(dtype)));
}

}  // namespace sae
