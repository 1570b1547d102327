// dispatch_float: the one place a kernel turns a runtime dtype into its element type (the idea of
// ATen's AT_DISPATCH). The body is a generic lambda called with a value of the element type:
//   dispatch_float(x.dtype(), "relu", [&](auto zero) {
//     using T = decltype(zero);
//     relu_loop(out.data<T>(), x.data<T>(), x.numel());
//   });
// Float32 and float64 only; any other dtype throws Error naming the op (front-ends check dtypes
// first, so kernels never see one).
#pragma once
#include "tensor/tensor.h"

namespace sae {

template <typename Body>
decltype(auto) dispatch_float(DType dtype, const char* op, Body&& body) {
  if (dtype == DType::F32) return body(float{});
  if (dtype == DType::F64) return body(double{});
  throw Error(cat(op, ": expects float32 or float64, got ", dtype_name(dtype)));
}

}  // namespace sae
