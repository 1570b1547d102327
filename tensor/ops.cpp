// Front-end of the tensor ops: validation, output allocation, dispatch by device.
#include "tensor/ops.h"

#include "tensor/checks.h"
#include "tensor/cuda/backend.h"

namespace sae {

void check_defined(const char* op, const Tensor& t) {
  if (!t.defined()) throw Error(cat(op, ": undefined tensor"));
}

// Arithmetic is on float32 and float64 only; int32 tensors are index lists for the sparse kernels,
// bf16 and f16 ones stored weights that only copy, embedding and matmul's weight operand read.
void check_float(const char* op, const Tensor& t) {
  check_defined(op, t);
  if (t.dtype() != DType::F32 && t.dtype() != DType::F64)
    throw Error(cat(op, ": expects a float32 or float64 tensor, got ", t.describe()));
}

void check_same_device_dtype(const char* op, const Tensor& a, const Tensor& b) {
  check_float(op, a);
  check_float(op, b);
  if (a.device() != b.device())
    throw Error(cat(op, ": device mismatch: ", a.describe(), " vs ", b.describe()));
  if (a.dtype() != b.dtype())
    throw Error(cat(op, ": dtype mismatch: ", a.describe(), " vs ", b.describe()));
}

void check_same_shape(const char* op, const Tensor& a, const Tensor& b) {
  check_same_device_dtype(op, a, b);
  if (a.shape() != b.shape())
    throw Error(cat(op, ": shape mismatch: ", a.describe(), " vs ", b.describe()));
}

void check_shape(const char* op, const char* name, const Tensor& t, const Shape& shape) {
  check_defined(op, t);
  if (t.shape() != shape) throw Error(cat(op, ": ", name, " should be ", shape.str(), ", got ", t.describe()));
}

namespace {

#define SAE_NAME_CASE(name) \
  case Op::name:            \
    return #name;

int normalize_axis(const char* op, const Tensor& x, int axis) {
  int a = axis < 0 ? axis + x.ndim() : axis;
  if (a < 0 || a >= x.ndim()) throw Error(cat(op, ": axis ", axis, " out of range for ", x.describe()));
  return a;
}

// True when the bytes of a and b overlap (views of one storage may or may not).
bool overlaps(const Tensor& a, const Tensor& b) {
  if (!a.shares_storage(b) || a.nbytes() == 0 || b.nbytes() == 0) return false;
  const char *pa = static_cast<const char*>(a.raw()), *pb = static_cast<const char*>(b.raw());
  return pa < pb + b.nbytes() && pb < pa + a.nbytes();
}

// Rows of the last dim: numel / D (0 when D is 0).
int64_t last_dim_rows(const Tensor& x) { return x.size(-1) == 0 ? 0 : x.numel() / x.size(-1); }

std::array<int64_t, 4> padded_dims(const Shape& s) {
  std::array<int64_t, 4> d{1, 1, 1, 1};
  for (int i = 0; i < s.ndim; ++i) d[4 - s.ndim + i] = s[i];
  return d;
}

// Contiguous strides of a padded shape, with 0 where the input is broadcast (size 1 vs larger).
std::array<int64_t, 4> broadcast_strides(const std::array<int64_t, 4>& in, const std::array<int64_t, 4>& out) {
  std::array<int64_t, 4> strides{};
  int64_t stride = 1;
  for (int i = 3; i >= 0; --i) {
    strides[i] = (in[i] == 1 && out[i] != 1) ? 0 : stride;
    stride *= in[i];
  }
  return strides;
}

}  // namespace

const char* op_name(UnaryOp op) {
  using Op = UnaryOp;
  switch (op) { SAE_UNARY_OPS(SAE_NAME_CASE) default: return "?"; }
}
const char* op_name(BinaryOp op) {
  using Op = BinaryOp;
  switch (op) { SAE_BINARY_OPS(SAE_NAME_CASE) default: return "?"; }
}
const char* op_name(ReduceOp op) {
  using Op = ReduceOp;
  switch (op) { SAE_REDUCE_OPS(SAE_NAME_CASE) default: return "?"; }
}
#undef SAE_NAME_CASE

const char* glu_activation_name(GluActivation act) { return act == GluActivation::silu ? "silu" : "gelu_tanh"; }

const KernelTable& kernels_for(Device device) {
  if (device == Device::CPU) return cpu_kernels();
  return cuda_kernels();
}

// ---------------------------------------------------------------- in place

void fill_(Tensor& out, double value) {
  check_float("fill", out);
  kernels_for(out.device()).fill(out, value);
}

void copy_(Tensor& out, const Tensor& src) {
  check_defined("copy", out);
  check_defined("copy", src);
  if (out.shape() != src.shape() || out.device() != src.device() ||
      (out.dtype() != src.dtype() && (out.dtype() == DType::I32 || src.dtype() == DType::I32)) ||
      (out.dtype() != src.dtype() && overlaps(out, src)))
    throw Error(cat("copy: cannot copy ", src.describe(), " into ", out.describe()));
  kernels_for(out.device()).copy(out, src);
}

void add_(Tensor& out, const Tensor& x) { binary_(BinaryOp::add, out, out, x); }

void unary_(UnaryOp op, Tensor& out, const Tensor& x) {
  check_same_shape(op_name(op), out, x);
  kernels_for(x.device()).unary(op, out, x);
}

Shape broadcast_shape(const Shape& a, const Shape& b, const char* op) {
  Shape out;
  out.ndim = std::max(a.ndim, b.ndim);
  for (int i = 0; i < out.ndim; ++i) {
    int ia = a.ndim - out.ndim + i, ib = b.ndim - out.ndim + i;
    int64_t da = ia >= 0 ? a[ia] : 1, db = ib >= 0 ? b[ib] : 1;
    if (da != db && da != 1 && db != 1)
      throw Error(cat(op, ": shapes ", a.str(), " and ", b.str(), " do not broadcast"));
    out[i] = da == 1 ? db : da;
  }
  return out;
}

void binary_(BinaryOp op, Tensor& out, const Tensor& a, const Tensor& b) {
  const char* name = op_name(op);
  check_same_device_dtype(name, a, b);
  check_same_device_dtype(name, out, a);
  Shape shape = broadcast_shape(a.shape(), b.shape(), name);
  if (shape != out.shape())
    throw Error(cat(name, ": output ", out.describe(), " does not hold the broadcast of ", a.describe(), " and ",
                    b.describe()));
  Broadcast plan;
  plan.out_dims = padded_dims(shape);
  plan.a_strides = broadcast_strides(padded_dims(a.shape()), plan.out_dims);
  plan.b_strides = broadcast_strides(padded_dims(b.shape()), plan.out_dims);
  plan.same_shape = a.numel() == out.numel() && b.numel() == out.numel();
  kernels_for(a.device()).binary(op, out, a, b, plan);
}

void affine_(Tensor& out, const Tensor& x, double scale, double shift) {
  check_same_shape("affine", out, x);
  kernels_for(x.device()).affine(out, x, scale, shift);
}

void matmul_(Tensor& out, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, double alpha,
             double beta) {
  check_defined("matmul", b);
  check_defined("matmul", a);
  const bool mixed = out.dtype() == DType::BF16 || is_half_dtype(a.dtype()) || is_half_dtype(b.dtype());
  if (mixed) {  // 16-bit operands (stored weights, bf16 activations) or a bf16 output: widened, float32 sums
    auto f32_or_half = [](DType t) { return t == DType::F32 || is_half_dtype(t); };
    if (!f32_or_half(a.dtype()) || !f32_or_half(b.dtype()) ||
        (out.dtype() != DType::F32 && out.dtype() != DType::BF16) || a.device() != b.device() ||
        out.device() != a.device())
      throw Error(cat("matmul: 16-bit operands or a bf16 output need float32 or 16-bit operands and a float32 or "
                      "bf16 output on one device, got ",
                      a.describe(), " @ ", b.describe(), " into ", out.describe()));
    if (out.dtype() == DType::BF16 && beta != 0.0)
      throw Error("matmul: a bf16 output is written, never accumulated into (beta must be 0)");
  } else {
    check_same_device_dtype("matmul", a, b);
    check_same_device_dtype("matmul", out, a);
  }
  if (a.ndim() != 2 || b.ndim() != 2)
    throw Error(cat("matmul: expects 2-D operands, got ", a.describe(), " and ", b.describe()));
  int64_t m = trans_a ? a.size(1) : a.size(0), k = trans_a ? a.size(0) : a.size(1);
  int64_t kb = trans_b ? b.size(1) : b.size(0), n = trans_b ? b.size(0) : b.size(1);
  if (k != kb)
    throw Error(cat("matmul: inner dimensions differ: ", a.describe(), trans_a ? "^T" : "", " @ ", b.describe(),
                    trans_b ? "^T" : ""));
  if (out.shape() != Shape{m, n})
    throw Error(cat("matmul: output ", out.describe(), " should be [", m, ", ", n, "]"));
  kernels_for(a.device()).matmul(out, a, trans_a, b, trans_b, alpha, beta);
}

void reduce_axis_(ReduceOp op, Tensor& out, const Tensor& x, int axis) {
  const char* name = op_name(op);
  check_same_device_dtype(name, out, x);
  int ax = normalize_axis(name, x, axis);
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < ax; ++i) outer *= x.shape()[i];
  for (int i = ax + 1; i < x.ndim(); ++i) inner *= x.shape()[i];
  // An empty axis is fine (a [3, 0, 4] tensor sums to [3, 4] zeros): count the other dims directly.
  if (out.numel() != outer * inner)
    throw Error(cat(name, ": output ", out.describe(), " does not fit ", x.describe(), " reduced over axis ", axis));
  kernels_for(x.device()).reduce_axis(op, out, x, outer, x.shape()[ax], inner);
}

void reduce_all_(ReduceOp op, Tensor& out, const Tensor& x) {
  check_same_device_dtype(op_name(op), out, x);
  if (out.numel() != 1) throw Error(cat(op_name(op), ": output ", out.describe(), " should hold one element"));
  if (x.numel() == 0 && (op == ReduceOp::max || op == ReduceOp::min || op == ReduceOp::mean))
    throw Error(cat(op_name(op), ": empty tensor ", x.describe()));
  kernels_for(x.device()).reduce_all(op, out, x);
}

void adam_step_(Tensor& param, Tensor& m, Tensor& v, const Tensor& grad, const AdamScalars& s) {
  check_same_shape("adam_step", param, grad);
  check_same_shape("adam_step", param, m);
  check_same_shape("adam_step", param, v);
  if (s.step < 1) throw Error(cat("adam_step: step must be >= 1, got ", s.step));
  kernels_for(param.device()).adam_step(param, m, v, grad, s);
}

// ---------------------------------------------------------------- element-wise

Tensor unary(UnaryOp op, const Tensor& x) {
  check_defined(op_name(op), x);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  unary_(op, out, x);
  return out;
}
#define SAE_DEFINE_UNARY(name) \
  Tensor name(const Tensor& x) { return unary(UnaryOp::name, x); }
SAE_UNARY_OPS(SAE_DEFINE_UNARY)
#undef SAE_DEFINE_UNARY

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  check_same_device_dtype(op_name(op), a, b);
  Tensor out = Tensor::empty(broadcast_shape(a.shape(), b.shape(), op_name(op)), a.dtype(), a.device());
  binary_(op, out, a, b);
  return out;
}
#define SAE_DEFINE_BINARY(name) \
  Tensor name(const Tensor& a, const Tensor& b) { return binary(BinaryOp::name, a, b); }
SAE_BINARY_OPS(SAE_DEFINE_BINARY)
#undef SAE_DEFINE_BINARY

Tensor affine(const Tensor& x, double scale, double shift) {
  check_defined("affine", x);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  affine_(out, x, scale, shift);
  return out;
}
Tensor add_scalar(const Tensor& x, double s) { return affine(x, 1.0, s); }
Tensor mul_scalar(const Tensor& x, double s) { return affine(x, s, 0.0); }

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_same_shape("where", cond, a);
  check_same_shape("where", a, b);
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  kernels_for(a.device()).where(out, cond, a, b);
  return out;
}

Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator-(const Tensor& x) { return neg(x); }
Tensor operator*(const Tensor& x, double s) { return mul_scalar(x, s); }
Tensor operator*(double s, const Tensor& x) { return mul_scalar(x, s); }
Tensor operator+(const Tensor& x, double s) { return add_scalar(x, s); }

// ---------------------------------------------------------------- reductions

Tensor reduce(ReduceOp op, const Tensor& x) {
  check_defined(op_name(op), x);
  Tensor out = Tensor::empty(Shape{1}, x.dtype(), x.device());
  reduce_all_(op, out, x);
  return out;
}

Tensor reduce(ReduceOp op, const Tensor& x, int axis, bool keepdim) {
  check_defined(op_name(op), x);
  int ax = normalize_axis(op_name(op), x, axis);
  if (x.shape()[ax] == 0 && (op == ReduceOp::max || op == ReduceOp::min || op == ReduceOp::mean))
    throw Error(cat(op_name(op), ": empty axis ", axis, " of ", x.describe()));
  Shape shape;
  for (int i = 0; i < x.ndim(); ++i) {
    if (i != ax)
      shape[shape.ndim++] = x.shape()[i];
    else if (keepdim)
      shape[shape.ndim++] = 1;
  }
  if (shape.ndim == 0) shape = Shape{1};
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  reduce_axis_(op, out, x, ax);
  return out;
}

Tensor sum(const Tensor& x) { return reduce(ReduceOp::sum, x); }
Tensor sum(const Tensor& x, int axis, bool keepdim) { return reduce(ReduceOp::sum, x, axis, keepdim); }
Tensor mean(const Tensor& x) { return reduce(ReduceOp::mean, x); }
Tensor mean(const Tensor& x, int axis, bool keepdim) { return reduce(ReduceOp::mean, x, axis, keepdim); }
Tensor norm2(const Tensor& x, int axis, bool keepdim) { return reduce(ReduceOp::norm2, x, axis, keepdim); }

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  if (shape.numel() == 1) return sum(x).reshape(shape);
  // Sum away leading dims x has beyond `shape`, then dims where `shape` has 1.
  Tensor r = x;
  while (r.ndim() > shape.ndim) r = sum(r, 0, false);
  for (int i = 0; i < shape.ndim; ++i)
    if (shape[i] == 1 && r.shape()[i] != 1) r = sum(r, i, true);
  if (r.shape() != shape) throw Error(cat("sum_to: cannot reduce ", x.describe(), " to ", shape.str()));
  return r;
}

// ---------------------------------------------------------------- linear algebra

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  check_float("matmul", a);
  check_defined("matmul", b);
  if (a.ndim() != 2 || b.ndim() != 2)
    throw Error(cat("matmul: expects 2-D operands, got ", a.describe(), " and ", b.describe()));
  int64_t m = trans_a ? a.size(1) : a.size(0), n = trans_b ? b.size(0) : b.size(1);
  Tensor out = Tensor::empty(Shape{m, n}, a.dtype(), a.device());
  matmul_(out, a, trans_a, b, trans_b, 1.0, 0.0);
  return out;
}

Tensor transpose(const Tensor& x) {
  check_float("transpose", x);
  if (x.ndim() != 2) throw Error(cat("transpose: expects a 2-D tensor, got ", x.describe()));
  Tensor out = Tensor::empty(Shape{x.size(1), x.size(0)}, x.dtype(), x.device());
  kernels_for(x.device()).transpose(out, x);
  return out;
}

// ---------------------------------------------------------------- transformer ops

void embedding_(Tensor& out, const Tensor& table, const Tensor& ids) {
  check_defined("embedding", table);
  if (!is_half_dtype(table.dtype())) check_float("embedding", table);
  check_defined("embedding", ids);
  if (table.ndim() != 2) throw Error(cat("embedding: the table should be 2-D [V, D], got ", table.describe()));
  if (ids.dtype() != DType::I32 || ids.ndim() != 1)
    throw Error(cat("embedding: ids should be int32 [N], got ", ids.describe()));
  if (ids.device() != table.device())
    throw Error(cat("embedding: device mismatch: table ", table.describe(), ", ids ", ids.describe()));
  if (is_half_dtype(table.dtype())) {
    check_float("embedding", out);
    if (out.dtype() != DType::F32 || out.device() != table.device())
      throw Error(cat("embedding: rows of a ", dtype_name(table.dtype()), " table go into float32 on its device, got ",
                      out.describe()));
  } else {
    check_same_device_dtype("embedding", out, table);
  }
  check_shape("embedding", "out", out, Shape{ids.size(0), table.size(1)});
  // Check every id on the host: a bad one would read outside the table.
  const Tensor host_ids = ids.to(Device::CPU);
  const int32_t* id = host_ids.data<int32_t>();
  for (int64_t i = 0; i < host_ids.numel(); ++i)
    if (id[i] < 0 || id[i] >= table.size(0))
      throw Error(cat("embedding: id ", id[i], " at position ", i, " is outside the table's rows [0, ", table.size(0),
                      ") of ", table.describe()));
  kernels_for(table.device()).embedding(out, table, ids);
}

Tensor embedding(const Tensor& table, const Tensor& ids) {
  check_defined("embedding", table);
  check_defined("embedding", ids);
  if (table.ndim() != 2 || ids.ndim() != 1)
    throw Error(cat("embedding: expects a table [V, D] and ids [N], got ", table.describe(), " and ", ids.describe()));
  const DType out_dtype = is_half_dtype(table.dtype()) ? DType::F32 : table.dtype();
  Tensor out = Tensor::empty(Shape{ids.size(0), table.size(1)}, out_dtype, table.device());
  embedding_(out, table, ids);
  return out;
}

void embedding_backward_(Tensor& table_grad, const Tensor& grad, const Tensor& ids) {
  check_same_device_dtype("embedding_backward", table_grad, grad);
  check_defined("embedding_backward", ids);
  if (table_grad.ndim() != 2 || ids.dtype() != DType::I32 || ids.ndim() != 1 || ids.device() != grad.device())
    throw Error(cat("embedding_backward: expects table_grad [V, D], ids int32 [N] on its device, got ",
                    table_grad.describe(), " and ", ids.describe()));
  check_shape("embedding_backward", "grad", grad, Shape{ids.size(0), table_grad.size(1)});
  const Tensor host_ids = ids.to(Device::CPU);
  const int32_t* id = host_ids.data<int32_t>();
  for (int64_t i = 0; i < host_ids.numel(); ++i)
    if (id[i] < 0 || id[i] >= table_grad.size(0))
      throw Error(cat("embedding_backward: id ", id[i], " at position ", i, " is outside [0, ", table_grad.size(0), ")"));
  kernels_for(grad.device()).embedding_backward(table_grad, grad, ids);
}

void layer_norm_(Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& weight, const Tensor& bias,
                 double eps) {
  check_float("layer_norm", x);
  if (x.ndim() < 1) throw Error(cat("layer_norm: expects at least one dim, got ", x.describe()));
  const int64_t d = x.size(-1), rows = last_dim_rows(x);
  check_same_shape("layer_norm", out, x);
  check_same_device_dtype("layer_norm", weight, x);
  check_same_device_dtype("layer_norm", bias, x);
  check_shape("layer_norm", "weight", weight, Shape{d});
  check_shape("layer_norm", "bias", bias, Shape{d});
  check_same_device_dtype("layer_norm", mean, x);
  check_same_device_dtype("layer_norm", rstd, x);
  if (mean.numel() != rows || rstd.numel() != rows)
    throw Error(cat("layer_norm: mean and rstd should hold ", rows, " values (one per row of ", x.describe(), "), got ",
                    mean.describe(), " and ", rstd.describe()));
  if (!(eps >= 0.0) || std::isinf(eps)) throw Error(cat("layer_norm: eps must be finite and >= 0, got ", eps));
  kernels_for(x.device()).layer_norm(out, mean, rstd, x, weight, bias, eps);
}

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  check_float("layer_norm", x);
  if (x.ndim() < 1) throw Error(cat("layer_norm: expects at least one dim, got ", x.describe()));
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor mean = Tensor::empty(Shape{last_dim_rows(x)}, x.dtype(), x.device());
  Tensor rstd = Tensor::empty(Shape{last_dim_rows(x)}, x.dtype(), x.device());
  layer_norm_(out, mean, rstd, x, weight, bias, eps);
  return out;
}

void softmax_(Tensor& out, const Tensor& x) {
  check_float("softmax", x);
  if (x.ndim() < 1) throw Error(cat("softmax: expects at least one dim, got ", x.describe()));
  check_same_shape("softmax", out, x);
  kernels_for(x.device()).softmax(out, x);
}

Tensor softmax(const Tensor& x) {
  check_defined("softmax", x);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  softmax_(out, x);
  return out;
}

namespace {
// [B, M, N] of op(a) op(b) for 3-D a and b; throws naming the operands.
Shape batched_matmul_shape(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b) {
  check_same_device_dtype("batched_matmul", a, b);
  if (a.ndim() != 3 || b.ndim() != 3 || a.size(0) != b.size(0))
    throw Error(cat("batched_matmul: expects 3-D operands with one batch size, got ", a.describe(), " and ",
                    b.describe()));
  const int64_t m = trans_a ? a.size(2) : a.size(1), k = trans_a ? a.size(1) : a.size(2);
  const int64_t kb = trans_b ? b.size(2) : b.size(1), n = trans_b ? b.size(1) : b.size(2);
  if (k != kb)
    throw Error(cat("batched_matmul: inner dimensions differ: ", a.describe(), trans_a ? "^T" : "", " @ ",
                    b.describe(), trans_b ? "^T" : ""));
  return Shape{a.size(0), m, n};
}
}  // namespace

void batched_matmul_(Tensor& out, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, double alpha,
                     double beta) {
  const Shape shape = batched_matmul_shape(a, trans_a, b, trans_b);
  check_same_device_dtype("batched_matmul", out, a);
  check_shape("batched_matmul", "out", out, shape);
  if (overlaps(out, a) || overlaps(out, b))
    throw Error(cat("batched_matmul: the output ", out.describe(), " overlaps an operand"));
  kernels_for(a.device()).batched_matmul(out, a, trans_a, b, trans_b, alpha, beta);
}

Tensor batched_matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  Tensor out = Tensor::empty(batched_matmul_shape(a, trans_a, b, trans_b), a.dtype(), a.device());
  batched_matmul_(out, a, trans_a, b, trans_b, 1.0, 0.0);
  return out;
}

void attention_mask_(Tensor& out, const Tensor& scores, int64_t window, double masked_value) {
  check_float("attention_mask", scores);
  if (scores.ndim() != 3 || scores.size(1) > scores.size(2))
    throw Error(cat("attention_mask: expects scores [B, Tq, Tk] with Tq <= Tk, got ", scores.describe()));
  if (window < 0) throw Error(cat("attention_mask: window must be >= 0 (0: global), got ", window));
  check_same_shape("attention_mask", out, scores);
  if (overlaps(out, scores) && out.raw() != scores.raw())
    throw Error(cat("attention_mask: the output ", out.describe(), " partly overlaps the scores"));
  kernels_for(scores.device()).attention_mask(out, scores, window, masked_value);
}

Tensor attention_mask(const Tensor& scores, int64_t window, double masked_value) {
  check_defined("attention_mask", scores);
  Tensor out = Tensor::empty(scores.shape(), scores.dtype(), scores.device());
  attention_mask_(out, scores, window, masked_value);
  return out;
}

void swap_axes01_(Tensor& out, const Tensor& x) {
  check_float("swap_axes01", x);
  if (x.ndim() != 3) throw Error(cat("swap_axes01: expects a 3-D tensor, got ", x.describe()));
  check_same_device_dtype("swap_axes01", out, x);
  check_shape("swap_axes01", "out", out, Shape{x.size(1), x.size(0), x.size(2)});
  if (overlaps(out, x)) throw Error(cat("swap_axes01: the output ", out.describe(), " overlaps the input"));
  kernels_for(x.device()).swap_axes01(out, x);
}

Tensor swap_axes01(const Tensor& x) {
  check_float("swap_axes01", x);
  if (x.ndim() != 3) throw Error(cat("swap_axes01: expects a 3-D tensor, got ", x.describe()));
  Tensor out = Tensor::empty(Shape{x.size(1), x.size(0), x.size(2)}, x.dtype(), x.device());
  swap_axes01_(out, x);
  return out;
}

void rotary_(Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin) {
  check_float("rotary", x);
  if (x.ndim() != 3) throw Error(cat("rotary: expects x [B, T, D], got ", x.describe()));
  check_same_device_dtype("rotary", cos, x);
  check_same_device_dtype("rotary", sin, x);
  if (cos.ndim() != 2 || cos.size(0) != x.size(1) || 2 * cos.size(1) > x.size(2))
    throw Error(cat("rotary: expects cos [T, R] with T = ", x.size(1), " and 2R <= ", x.size(2), ", got ",
                    cos.describe()));
  check_shape("rotary", "sin", sin, cos.shape());
  check_same_shape("rotary", out, x);
  if (overlaps(out, x) && out.raw() != x.raw())
    throw Error(cat("rotary: the output ", out.describe(), " partly overlaps the input"));
  kernels_for(x.device()).rotary(out, x, cos, sin);
}

Tensor rotary(const Tensor& x, const Tensor& cos, const Tensor& sin) {
  check_defined("rotary", x);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  rotary_(out, x, cos, sin);
  return out;
}

void rms_norm_(Tensor& out, Tensor& rstd, const Tensor& x, const Tensor& weight, double eps) {
  check_float("rms_norm", x);
  if (x.ndim() < 1) throw Error(cat("rms_norm: expects at least one dim, got ", x.describe()));
  const int64_t d = x.size(-1), rows = last_dim_rows(x);
  check_same_shape("rms_norm", out, x);
  check_same_device_dtype("rms_norm", weight, x);
  check_shape("rms_norm", "weight", weight, Shape{d});
  check_same_device_dtype("rms_norm", rstd, x);
  if (rstd.numel() != rows)
    throw Error(cat("rms_norm: rstd should hold ", rows, " values (one per row of ", x.describe(), "), got ",
                    rstd.describe()));
  if (!(eps >= 0.0) || std::isinf(eps)) throw Error(cat("rms_norm: eps must be finite and >= 0, got ", eps));
  if (overlaps(out, x) && out.raw() != x.raw())
    throw Error(cat("rms_norm: the output ", out.describe(), " partly overlaps the input"));
  kernels_for(x.device()).rms_norm(out, rstd, x, weight, eps);
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  check_float("rms_norm", x);
  if (x.ndim() < 1) throw Error(cat("rms_norm: expects at least one dim, got ", x.describe()));
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor rstd = Tensor::empty(Shape{last_dim_rows(x)}, x.dtype(), x.device());
  rms_norm_(out, rstd, x, weight, eps);
  return out;
}

namespace {
// x [N, 2F] and its half-width partner [N, F] (out of glu, or the gradient coming in).
void check_glu_shapes(const char* op, const Tensor& wide, const Tensor& narrow) {
  check_float(op, wide);
  if (wide.ndim() != 2 || wide.size(1) % 2 != 0)
    throw Error(cat(op, ": expects x [N, 2F] (gate, then up), got ", wide.describe()));
  check_same_device_dtype(op, narrow, wide);
  check_shape(op, "the [N, F] operand", narrow, Shape{wide.size(0), wide.size(1) / 2});
}
}  // namespace

void glu_(Tensor& out, const Tensor& x, GluActivation act) {
  check_glu_shapes("glu", x, out);
  if (overlaps(out, x)) throw Error(cat("glu: the output ", out.describe(), " overlaps the input"));
  kernels_for(x.device()).glu(out, x, act);
}

Tensor glu(const Tensor& x, GluActivation act) {
  check_float("glu", x);
  if (x.ndim() != 2 || x.size(1) % 2 != 0) throw Error(cat("glu: expects x [N, 2F] (gate, then up), got ", x.describe()));
  Tensor out = Tensor::empty(Shape{x.size(0), x.size(1) / 2}, x.dtype(), x.device());
  glu_(out, x, act);
  return out;
}

void glu_backward_(Tensor& grad_x, const Tensor& x, const Tensor& grad, GluActivation act) {
  check_glu_shapes("glu_backward", x, grad);
  check_same_shape("glu_backward", grad_x, x);
  if (overlaps(grad_x, x) || overlaps(grad_x, grad))
    throw Error(cat("glu_backward: the output ", grad_x.describe(), " overlaps an input"));
  kernels_for(x.device()).glu_backward(grad_x, x, grad, act);
}

void soft_cap_(Tensor& out, const Tensor& x, double cap) {
  check_same_shape("soft_cap", out, x);
  if (!(cap > 0.0) || std::isinf(cap)) throw Error(cat("soft_cap: the cap must be a finite number > 0, got ", cap));
  if (overlaps(out, x) && out.raw() != x.raw())
    throw Error(cat("soft_cap: the output ", out.describe(), " partly overlaps the input"));
  kernels_for(x.device()).soft_cap(out, x, cap);
}

Tensor soft_cap(const Tensor& x, double cap) {
  check_float("soft_cap", x);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  soft_cap_(out, x, cap);
  return out;
}

}  // namespace sae
