// The argument checks of op front-ends (tensor/ops.cpp, sae/step/sae_ops.cpp): each throws Error
// naming the op and the offending tensors, so kernels can assume valid input.
#pragma once
#include "tensor/tensor.h"

namespace sae {

void check_defined(const char* op, const Tensor& t);
// Arithmetic is on float32 and float64 only; int32 tensors are index lists.
void check_float(const char* op, const Tensor& t);
void check_same_device_dtype(const char* op, const Tensor& a, const Tensor& b);  // both float too
void check_same_shape(const char* op, const Tensor& a, const Tensor& b);         // and device, dtype
void check_shape(const char* op, const char* name, const Tensor& t, const Shape& shape);

}  // namespace sae
