// Front-end of the feature-statistics kernels (sae_ops.h, sae_kernels.h "feature statistics"):
// shapes, dtypes and devices checked, naming the op and the operands, then the device's kernel.
#include <algorithm>
#include <limits>

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

// What dense features f are checked like: f itself, or for bf16 features (the standard step's f at
// --precision bf16, widened as read) a float32 tensor of the op on f's device.
const Tensor& float32_like(const char* op, const Tensor& f, const Tensor& float32) {
  if (f.dtype() != DType::BF16) {
    check_float(op, f);
    return f;
  }
  if (float32.dtype() != DType::F32 || float32.device() != f.device())
    throw Error(cat(op, ": bf16 features ", f.describe(), " need float32 statistics on their device, got ",
                    float32.describe()));
  return float32;
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

// The lists of F features with K entries of W values each, the candidates [F, K] and the batch's rows
// (N of them), all float32 / on the device of `like`.
void check_merge(const char* op, const FeatureTopLists& l, const FeatureCandidates& c, const FeatureStatsRows& rows,
                 int64_t features, int64_t n, const Tensor& like) {
  if (like.dtype() != DType::F32) throw Error(cat(op, ": features must be f32, got ", like.describe()));
  check_device(op, l.value, like);
  check_same_device_dtype(op, like, l.value);
  if (l.value.ndim() != 2 || l.value.size(0) != features || l.value.size(1) < 1 || l.value.size(1) > kMaxTopK)
    throw Error(cat(op, ": list values must be [F = ", features, ", K in 1..", kMaxTopK, "], got ", l.value.describe()));
  const Shape fk = l.value.shape();
  auto check = [&](const char* name, const Tensor& t, DType dtype, const Shape& shape) {
    check_device(op, t, like);
    if (t.dtype() != dtype || t.shape() != shape)
      throw Error(cat(op, ": ", name, " must be ", dtype_name(dtype), " ", shape.str(), ", got ", t.describe()));
  };
  check("list keys", l.key, DType::F64, fk);
  check("list slots", l.slot, DType::I32, fk);
  check("list count", l.count, DType::I32, Shape{features});
  check("thresholds", l.threshold, DType::F32, Shape{features});
  check("stories", l.story, DType::F64, fk);
  check("positions", l.position, DType::F64, fk);
  check("steps", l.step, DType::F64, fk);
  check("pending rows", l.pending_row, DType::I32, fk);
  if (l.tokens.ndim() != 3 || l.tokens.size(2) % 2 != 1)
    throw Error(cat(op, ": list tokens must be [F, K, W = 2C + 1], got ", l.tokens.describe()));
  const int64_t w = l.tokens.size(2);
  check("list tokens", l.tokens, DType::I32, Shape{fk[0], fk[1], w});
  check("list values", l.values, DType::F32, Shape{fk[0], fk[1], w});
  check("error", l.error, DType::I32, Shape{1});
  check("candidate values", c.values, DType::F32, fk);
  check("candidate rows", c.rows, DType::I32, fk);
  check("candidate count", c.count, DType::I32, Shape{features});
  if (rows.story.defined() != rows.position.defined() || rows.story.defined() != rows.tokens.defined())
    throw Error(cat(op, ": the rows' story, position and tokens are given together or not at all"));
  if (rows.story.defined()) {
    check("row stories", rows.story, DType::F64, Shape{n});
    check("row positions", rows.position, DType::F64, Shape{n});
    check("row tokens", rows.tokens, DType::I32, Shape{n, w});
  }
  if (n >= (int64_t(1) << 31)) throw Error(cat(op, ": ", n, " rows do not fit int32 row indices"));
}
// A tensor of `shape` on `device` holding `fill` (T's bytes: int64 in 8-byte F64 elements).
template <typename T>
Tensor filled(const Shape& shape, DType dtype, T fill, Device device) {
  Tensor t = Tensor::empty(shape, dtype, Device::CPU);
  std::fill_n(static_cast<T*>(t.raw()), t.numel(), fill);
  return t.to(device);
}
}  // namespace

FeatureTopLists empty_top_lists(int64_t features, int64_t k, int64_t context, Device device) {
  const Shape fk{features, k}, fkw{features, k, 2 * context + 1};
  FeatureTopLists l;
  l.value = filled(fk, DType::F32, 0.0f, device);
  l.key = filled(fk, DType::F64, int64_t(0), device);
  l.slot = filled(fk, DType::I32, int32_t(-1), device);
  l.count = filled(Shape{features}, DType::I32, int32_t(0), device);
  l.threshold = filled(Shape{features}, DType::F32, 0.0f, device);
  l.story = filled(fk, DType::F64, int64_t(-1), device);
  l.position = filled(fk, DType::F64, int64_t(-1), device);
  l.step = filled(fk, DType::F64, int64_t(-1), device);
  l.pending_row = filled(fk, DType::I32, int32_t(-1), device);
  l.tokens = filled(fkw, DType::I32, int32_t(-1), device);
  l.values = filled(fkw, DType::F32, std::numeric_limits<float>::quiet_NaN(), device);
  l.error = filled(Shape{1}, DType::I32, int32_t(0), device);
  return l;
}

void feature_stats_scan_(FeatureCandidates& out, Tensor& histogram, const Tensor& f, const Tensor& threshold,
                         const Tensor& group) {
  const char* op = "feature_stats_scan";
  if (f.ndim() != 2) throw Error(cat(op, ": f must be [N, F], got ", f.describe()));
  check_scan(op, out, histogram, threshold, group, f.size(1), f.size(0), float32_like(op, f, out.values));
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

void feature_stats_merge_(FeatureTopLists& lists, const FeatureCandidates& candidates, const FeatureStatsRows& rows,
                          const Tensor& f) {
  const char* op = "feature_stats_merge";
  if (f.ndim() != 2) throw Error(cat(op, ": f must be [N, F], got ", f.describe()));
  check_merge(op, lists, candidates, rows, f.size(1), f.size(0), float32_like(op, f, lists.value));
  sae_kernels_for(f.device()).feature_stats_merge(lists, candidates, rows, f);
}

void feature_stats_merge_sparse_(FeatureTopLists& lists, const FeatureCandidates& candidates,
                                 const FeatureStatsRows& rows, const SparseFeatures& s, int64_t n) {
  const char* op = "feature_stats_merge_sparse";
  check_defined(op, s.vals);
  check_defined(op, s.col_ptr);
  if (n < 0) throw Error(cat(op, ": rows must be >= 0, got ", n));
  const int64_t features = s.col_ptr.numel() - 1;
  check_feature_lists(op, s, features, s.vals);
  check_merge(op, lists, candidates, rows, features, n, s.vals);
  sae_kernels_for(s.vals.device()).feature_stats_merge_sparse(lists, candidates, rows, s, n);
}

void latent_clock_(Tensor& clock, Tensor& dead, const Tensor& counts, double tokens, double dead_tokens) {
  const char* op = "latent_clock";
  check_float(op, counts);
  check_device(op, clock, counts);
  if (counts.ndim() != 1 || clock.dtype() != DType::F64 || clock.shape() != counts.shape())
    throw Error(cat(op, ": expects clock f64 [F] and counts [F], got ", clock.describe(), " and ", counts.describe()));
  if (dead.defined()) check_same_shape(op, dead, counts);
  if (!(tokens >= 0) || !(dead_tokens >= 0))
    throw Error(cat(op, ": tokens and dead_tokens must be >= 0, got ", tokens, " and ", dead_tokens));
  sae_kernels_for(counts.device()).latent_clock(clock, dead, counts, tokens, dead_tokens);
}

}  // namespace sae
