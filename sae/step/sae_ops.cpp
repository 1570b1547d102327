// The SAE step kernels' front-end (see sae_ops.h) and the per-device kernel table.
#include "sae/step/sae_ops.h"

#include "tensor/checks.h"

namespace sae {

void no_cuda_kernels(const char* family) {
  throw Error(cat("CUDA requested for the ", family, " kernels, but this build has no CUDA support (nvcc was not "
                  "found)"));
}

const SaeKernelTable& sae_kernels_for(Device device) { return SAE_KERNELS_FOR(device, sae); }

void check_rows_and_column_vector(const char* op, const Tensor& m, const Tensor& v) {
  check_same_device_dtype(op, m, v);
  if (m.ndim() != 2 || v.shape() != Shape{m.size(1)})
    throw Error(cat(op, ": expects [N, F] and [F], got ", m.describe(), " and ", v.describe()));
}

void check_like_activations(const char* op, const Tensor& a, const Tensor& m) {
  check_defined(op, a);
  check_defined(op, m);
  if (m.dtype() != DType::BF16) check_float(op, m);
  if (a.shape() != m.shape() || a.dtype() != m.dtype() || a.device() != m.device())
    throw Error(cat(op, ": ", a.describe(), " and ", m.describe(), " differ in shape, dtype or device"));
}

void check_activations_and_column_vector(const char* op, const Tensor& m, const Tensor& v) {
  check_float(op, v);
  if (m.defined() && m.dtype() == DType::BF16 && v.dtype() == DType::F32) {
    if (m.ndim() != 2 || v.shape() != Shape{m.size(1)} || m.device() != v.device())
      throw Error(cat(op, ": expects [N, F] and [F] on one device, got ", m.describe(), " and ", v.describe()));
    return;
  }
  check_float(op, m);
  check_rows_and_column_vector(op, m, v);
}

void add_scaled_rows_(Tensor& out, const Tensor& x, const Tensor& row_scale) {
  check_same_shape("add_scaled_rows", out, x);
  check_same_device_dtype("add_scaled_rows", x, row_scale);
  if (x.ndim() != 2 || row_scale.shape() != Shape{x.size(0)})
    throw Error(cat("add_scaled_rows: expects [R, C] and [R], got ", x.describe(), " and ", row_scale.describe()));
  sae_kernels_for(x.device()).add_scaled_rows(out, x, row_scale);
}

namespace {
constexpr int64_t kInt32Limit = int64_t(1) << 31;

void check_int32_lists(const char* op, int64_t rows, int64_t features, int64_t entries) {
  if (rows >= kInt32Limit || features >= kInt32Limit || entries >= kInt32Limit)
    throw Error(cat(op, ": ", rows, " rows, ", features, " features or ", entries,
                    " list entries do not fit int32 indices"));
}

// Lists made from every cell of a dense f [N, F] may hold N F entries.
void check_int32_cells(const char* op, int64_t rows, int64_t features) {
  if (rows * features >= kInt32Limit)
    throw Error(cat(op, ": ", rows, " x ", features, " entries do not fit int32 indices"));
}

// The lists of SparseFeatures for f [N, F] (sae_kernels.h): int32 pointers and indices, values in
// `like`'s dtype, everything on `like`'s device. Entry positions, rows and features must fit in int32;
// N F may not (the kernels index [N, F] and [F, D] in int64: TopK at 4096 tokens x 2^20 latents).
void check_lists(const char* op, const SparseFeatures& s, int64_t n, int64_t features, const Tensor& like) {
  check_shape(op, "col_ptr", s.col_ptr, Shape{features + 1});
  check_shape(op, "row_ptr", s.row_ptr, Shape{n + 1});
  for (const Tensor* t : {&s.rows, &s.vals, &s.cols, &s.row_vals}) check_defined(op, *t);
  if (s.col_ptr.dtype() != DType::I32 || s.rows.dtype() != DType::I32 || s.row_ptr.dtype() != DType::I32 ||
      s.cols.dtype() != DType::I32)
    throw Error(cat(op, ": col_ptr, rows, row_ptr and cols must be i32, got ", s.col_ptr.describe(), ", ",
                    s.rows.describe(), ", ", s.row_ptr.describe(), ", ", s.cols.describe()));
  if (s.rows.ndim() != 1 || s.vals.shape() != s.rows.shape() || s.cols.shape() != s.rows.shape() ||
      s.row_vals.shape() != s.rows.shape())
    throw Error(cat(op, ": the entry lists must be 1-D and of one length, got rows ", s.rows.describe(), ", vals ",
                    s.vals.describe(), ", cols ", s.cols.describe(), ", row_vals ", s.row_vals.describe()));
  check_same_device_dtype(op, like, s.vals);
  check_same_device_dtype(op, like, s.row_vals);
  for (const Tensor* t : {&s.col_ptr, &s.rows, &s.row_ptr, &s.cols})
    if (t->device() != like.device())
      throw Error(cat(op, ": device mismatch: ", t->describe(), " vs ", like.describe()));
  check_int32_lists(op, n, features, s.rows.numel());
}

// dpre: one value per entry, in the lists' dtype and length.
void check_entry_values(const char* op, const SparseFeatures& s, const Tensor& dpre) {
  check_same_device_dtype(op, s.vals, dpre);
  if (dpre.shape() != s.vals.shape())
    throw Error(cat(op, ": dpre should be ", s.vals.shape().str(), ", got ", dpre.describe()));
}

void check_update(const char* op, const char* name, const ParamUpdate& u, const Shape& shape, const Tensor& like) {
  check_shape(op, name, u.param, shape);
  check_same_device_dtype(op, u.param, like);
  if (u.adam) {
    check_same_shape(op, u.param, u.m);
    check_same_shape(op, u.param, u.v);
    if (u.scalars.step < 1) throw Error(cat(op, ": Adam step must be >= 1, got ", u.scalars.step));
  } else {
    check_same_shape(op, u.param, u.grad);
  }
}
}  // namespace

void sparse_index_(SparseFeatures& s, const Tensor& f, const Tensor& col_count) {
  const char* op = "sparse_index";
  if (f.ndim() != 2) throw Error(cat(op, ": f must be [N, F], got ", f.describe()));
  check_activations_and_column_vector(op, f, col_count);
  check_lists(op, s, f.size(0), f.size(1), col_count);
  check_int32_cells(op, f.size(0), f.size(1));
  sae_kernels_for(f.device()).sparse_index(s, f, col_count);
}

void sparse_decode_(Tensor& x_hat, const SparseFeatures& s, const Tensor& W_dec, const Tensor& b_dec) {
  const char* op = "sparse_decode";
  check_float(op, x_hat);
  check_float(op, W_dec);
  if (x_hat.ndim() != 2 || W_dec.ndim() != 2 || W_dec.size(1) != x_hat.size(1))
    throw Error(cat(op, ": expects x_hat [N, D] and W_dec [F, D], got ", x_hat.describe(), " and ", W_dec.describe()));
  check_same_device_dtype(op, x_hat, W_dec);
  check_same_device_dtype(op, x_hat, b_dec);
  check_shape(op, "b_dec", b_dec, Shape{x_hat.size(1)});
  check_lists(op, s, x_hat.size(0), W_dec.size(0), x_hat);
  sae_kernels_for(x_hat.device()).sparse_decode(x_hat, s, W_dec, b_dec);
}

void sparse_decoder_backward_(Tensor& dpre, ParamUpdate& W_dec, const Tensor& grad_x_hat, const SparseFeatures& s,
                              const Tensor& norms, const Tensor& col_sum, double l1, bool unit_norm) {
  const char* op = "sparse_decoder_backward";
  check_float(op, grad_x_hat);
  if (grad_x_hat.ndim() != 2 || !W_dec.param.defined() || W_dec.param.ndim() != 2)
    throw Error(cat(op, ": expects grad_x_hat [N, D] and W_dec [F, D], got ", grad_x_hat.describe(), " and ",
                    W_dec.param.describe()));
  const int64_t n = grad_x_hat.size(0), d = grad_x_hat.size(1), features = W_dec.param.size(0);
  check_update(op, "W_dec", W_dec, Shape{features, d}, grad_x_hat);
  check_same_device_dtype(op, grad_x_hat, norms);
  check_same_device_dtype(op, grad_x_hat, col_sum);
  check_shape(op, "norms", norms, Shape{features});
  check_shape(op, "col_sum", col_sum, Shape{features});
  check_lists(op, s, n, features, grad_x_hat);
  check_entry_values(op, s, dpre);
  sae_kernels_for(grad_x_hat.device()).sparse_decoder_backward(dpre, W_dec, grad_x_hat, s, norms, col_sum, l1,
                                                                unit_norm);
}

void sparse_encoder_backward_(ParamUpdate& W_enc, ParamUpdate& b_enc, const Tensor& x, const SparseFeatures& s,
                              const Tensor& dpre) {
  const char* op = "sparse_encoder_backward";
  check_float(op, x);
  if (x.ndim() != 2 || !W_enc.param.defined() || W_enc.param.ndim() != 2)
    throw Error(cat(op, ": expects x [N, D] and W_enc [D, F], got ", x.describe(), " and ", W_enc.param.describe()));
  const int64_t n = x.size(0), d = x.size(1), features = W_enc.param.size(1);
  check_update(op, "W_enc", W_enc, Shape{d, features}, x);
  check_update(op, "b_enc", b_enc, Shape{features}, x);
  check_lists(op, s, n, features, x);
  check_entry_values(op, s, dpre);
  sae_kernels_for(x.device()).sparse_encoder_backward(W_enc, b_enc, x, s, dpre);
}

// ---- the other architectures ----

namespace {
// The by-token lists of a selection into rows row0 .. row0+rows-1: int32 row_ptr with room for
// them, cols and row_vals of one length (row_vals in `like`'s dtype), all on like's device.
void check_token_lists(const char* op, const SparseFeatures& s, int64_t row0, int64_t rows, int64_t features,
                       const Tensor& like) {
  check_defined(op, s.row_ptr);
  check_defined(op, s.cols);
  check_defined(op, s.row_vals);
  if (s.row_ptr.dtype() != DType::I32 || s.cols.dtype() != DType::I32 || s.row_ptr.ndim() != 1 ||
      s.cols.ndim() != 1 || s.row_vals.shape() != s.cols.shape())
    throw Error(cat(op, ": row_ptr and cols must be 1-D i32 and row_vals as long as cols, got ", s.row_ptr.describe(),
                    ", ", s.cols.describe(), ", ", s.row_vals.describe()));
  if (row0 < 0 || s.row_ptr.numel() < row0 + rows + 1)
    throw Error(cat(op, ": rows ", row0, " to ", row0 + rows, " do not fit row_ptr ", s.row_ptr.describe()));
  check_same_device_dtype(op, like, s.row_vals);
  if (s.row_ptr.device() != like.device() || s.cols.device() != like.device())
    throw Error(cat(op, ": device mismatch: ", s.row_ptr.describe(), ", ", s.cols.describe(), " vs ", like.describe()));
  check_int32_lists(op, rows, features, s.cols.numel());
}

}  // namespace

void sparse_scatter_(Tensor& f, const SparseFeatures& s, int64_t row0) {
  const char* op = "sparse_scatter";
  check_float(op, f);
  if (f.ndim() != 2) throw Error(cat(op, ": f must be [R, F], got ", f.describe()));
  check_token_lists(op, s, row0, f.size(0), f.size(1), f);
  sae_kernels_for(f.device()).sparse_scatter(f, s, row0);
}

void topk_select_(SparseFeatures& s, const Tensor& pre, const Tensor& bias, const Tensor& allowed, int64_t k,
                  int64_t row0) {
  const char* op = "topk_select";
  check_activations_and_column_vector(op, pre, bias);
  if (allowed.defined()) {
    check_same_device_dtype(op, bias, allowed);
    check_same_shape(op, bias, allowed);
  }
  if (k < 1) throw Error(cat(op, ": k must be >= 1, got ", k));
  check_token_lists(op, s, row0, pre.size(0), pre.size(1), bias);
  sae_kernels_for(pre.device()).topk_select(s, pre, bias, allowed, k, row0);
}

void batchtopk_select_(SparseFeatures& s, const Tensor& pre, const Tensor& bias, int64_t total) {
  const char* op = "batchtopk_select";
  check_activations_and_column_vector(op, pre, bias);
  if (total < 0) throw Error(cat(op, ": total must be >= 0, got ", total));
  if (s.cols.defined() && total > s.cols.numel())
    throw Error(cat(op, ": ", total, " entries do not fit lists of ", s.cols.numel()));
  check_token_lists(op, s, 0, pre.size(0), pre.size(1), bias);
  sae_kernels_for(pre.device()).batchtopk_select(s, pre, bias, total);
}

void sparse_by_feature_(SparseFeatures& s, Tensor& col_sum, Tensor& col_count) {
  const char* op = "sparse_by_feature";
  check_float(op, col_sum);
  check_same_shape(op, col_sum, col_count);
  if (col_sum.ndim() != 1) throw Error(cat(op, ": col_sum must be [F], got ", col_sum.describe()));
  check_defined(op, s.row_ptr);
  check_lists(op, s, s.row_ptr.numel() - 1, col_sum.numel(), col_sum);
  sae_kernels_for(col_sum.device()).sparse_by_feature(s, col_sum, col_count);
}

void decoder_project_(Tensor& grad, const Tensor& W, const Tensor& norms) {
  const char* op = "decoder_project";
  check_float(op, W);
  check_same_shape(op, grad, W);
  if (W.ndim() != 2) throw Error(cat(op, ": W must be [F, D], got ", W.describe()));
  check_same_device_dtype(op, W, norms);
  check_shape(op, "norms", norms, Shape{W.size(0)});
  sae_kernels_for(W.device()).decoder_project(grad, W, norms);
}

void decoder_normalize_(Tensor& W) {
  const char* op = "decoder_normalize";
  check_float(op, W);
  if (W.ndim() != 2) throw Error(cat(op, ": W must be [F, D], got ", W.describe()));
  sae_kernels_for(W.device()).decoder_normalize(W);
}

}  // namespace sae
