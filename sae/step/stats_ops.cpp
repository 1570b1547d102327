// Front-end of the feature-statistics kernels (sae_ops.h, sae_kernels.h "feature statistics"):
// shapes, dtypes and devices checked, naming the op and the operands, then the device's kernel.
#include "sae/step/feature_stats_math.h"
#include "sae/step/sae_ops.h"
#include "tensor/checks.h"

namespace sae {

namespace {
void check_device(const char* op, const Tensor& t, const Tensor& like) {
  check_defined(op, t);
  if (t.device() != like.device()) throw Error(cat(op, ": device mismatch: ", t.describe(), " vs ", like.describe()));
}

void check_i32(const char* op, const char* name, const Tensor& t, const Tensor& like) {
  check_device(op, t, like);
  if (t.dtype() != DType::I32) throw Error(cat(op, ": ", name, " must be i32, got ", t.describe()));
}

// The scan's outputs and per-feature / per-row inputs, for F features and N rows of values like `like`.
void check_scan(const char* op, const FeatureCandidates& out, const Tensor& histogram, const Tensor& threshold,
                const Tensor& group, int64_t features, int64_t n, const Tensor& like) {
  check_device(op, out.values, like);
  check_same_device_dtype(op, like, out.values);
  if (out.values.ndim() != 2 || out.values.size(0) != features || out.values.size(1) < 1)
    throw Error(cat(op, ": candidate values must be [F = ", features, ", K >= 1], got ", out.values.describe()));
  check_i32(op, "candidate rows", out.rows, like);
  check_i32(op, "candidate groups", out.groups, like);
  check_i32(op, "candidate count", out.count, like);
  if (out.rows.shape() != out.values.shape() || out.groups.shape() != out.values.shape() ||
      out.count.shape() != Shape{features})
    throw Error(cat(op, ": candidates should be rows and groups ", out.values.shape().str(), " and count [", features,
                    "], got ", out.rows.describe(), ", ", out.groups.describe(), ", ", out.count.describe()));
  check_device(op, histogram, like);
  if (histogram.dtype() != DType::F64 || histogram.shape() != Shape{features, kHistogramBins})
    throw Error(cat(op, ": histogram must be f64 [", features, ", ", kHistogramBins, "], got ", histogram.describe()));
  check_same_device_dtype(op, like, threshold);
  check_shape(op, "threshold", threshold, Shape{features});
  check_i32(op, "group", group, like);
  check_shape(op, "group", group, Shape{n});
  if (n >= (int64_t(1) << 31)) throw Error(cat(op, ": ", n, " rows do not fit int32 row indices"));
}

// The by-feature lists of s: col_ptr [F+1], rows and vals of one length (i32, float).
void check_feature_lists(const char* op, const SparseFeatures& s, int64_t features, const Tensor& like) {
  check_i32(op, "col_ptr", s.col_ptr, like);
  check_shape(op, "col_ptr", s.col_ptr, Shape{features + 1});
  check_i32(op, "rows", s.rows, like);
  check_float(op, s.vals);
  check_same_device_dtype(op, like, s.vals);
  if (s.rows.ndim() != 1 || s.vals.shape() != s.rows.shape())
    throw Error(cat(op, ": rows and vals must be 1-D and of one length, got ", s.rows.describe(), " and ",
                    s.vals.describe()));
}

// Look-ups: out [M] like the values, rows and features [M] i32.
void check_lookups(const char* op, const Tensor& out, const Tensor& rows, const Tensor& features, const Tensor& like) {
  check_same_device_dtype(op, like, out);
  if (out.ndim() != 1) throw Error(cat(op, ": out must be 1-D, got ", out.describe()));
  check_i32(op, "rows", rows, like);
  check_i32(op, "features", features, like);
  if (rows.shape() != out.shape() || features.shape() != out.shape())
    throw Error(cat(op, ": rows and features must be shaped like out ", out.shape().str(), ", got ", rows.describe(),
                    " and ", features.describe()));
}
}  // namespace

void feature_stats_scan_(FeatureCandidates& out, Tensor& histogram, const Tensor& f, const Tensor& threshold,
                         const Tensor& group) {
  const char* op = "feature_stats_scan";
  check_float(op, f);
  if (f.ndim() != 2) throw Error(cat(op, ": f must be [N, F], got ", f.describe()));
  check_scan(op, out, histogram, threshold, group, f.size(1), f.size(0), f);
  sae_kernels_for(f.device()).feature_stats_scan(out, histogram, f, threshold, group);
}

void feature_stats_scan_sparse_(FeatureCandidates& out, Tensor& histogram, const SparseFeatures& s, int64_t rows,
                                const Tensor& threshold, const Tensor& group) {
  const char* op = "feature_stats_scan_sparse";
  check_defined(op, s.vals);
  check_defined(op, histogram);
  if (histogram.ndim() != 2)
    throw Error(cat(op, ": histogram must be f64 [F, ", kHistogramBins, "], got ", histogram.describe()));
  const int64_t features = histogram.size(0);
  check_feature_lists(op, s, features, s.vals);
  if (rows < 0) throw Error(cat(op, ": rows must be >= 0, got ", rows));
  check_scan(op, out, histogram, threshold, group, features, rows, s.vals);
  sae_kernels_for(s.vals.device()).feature_stats_scan_sparse(out, histogram, s, rows, threshold, group);
}

void feature_values_at_(Tensor& out, const Tensor& f, const Tensor& rows, const Tensor& features) {
  const char* op = "feature_values_at";
  check_float(op, f);
  if (f.ndim() != 2) throw Error(cat(op, ": f must be [N, F], got ", f.describe()));
  check_lookups(op, out, rows, features, f);
  sae_kernels_for(f.device()).feature_values_at(out, f, rows, features);
}

void feature_values_at_sparse_(Tensor& out, const SparseFeatures& s, int64_t rows_limit, const Tensor& rows,
                               const Tensor& features) {
  const char* op = "feature_values_at_sparse";
  check_defined(op, s.vals);
  check_defined(op, s.col_ptr);
  check_feature_lists(op, s, s.col_ptr.numel() - 1, s.vals);
  check_lookups(op, out, rows, features, s.vals);
  sae_kernels_for(s.vals.device()).feature_values_at_sparse(out, s, rows_limit, rows, features);
}

}  // namespace sae
