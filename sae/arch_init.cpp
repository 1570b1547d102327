// Initial parameters of every architecture and the geometric median (see arch_init.h).
#include "sae/arch_init.h"

#include <cmath>

#include "tensor/ops.h"

namespace sae {

namespace {
double distance(const double* x, const std::vector<double>& m, int64_t d) {
  double s = 0;
  for (int64_t j = 0; j < d; ++j) s += (x[j] - m[j]) * (x[j] - m[j]);
  return std::sqrt(s);
}

double objective(const std::vector<double>& points, int64_t n, int64_t d, const std::vector<double>& m) {
  double total = 0;
  for (int64_t t = 0; t < n; ++t) total += distance(points.data() + t * d, m, d);
  return total;
}
}  // namespace

GeometricMedian geometric_median(const std::vector<double>& points, int64_t n, int64_t d, int64_t max_iterations,
                                 double eps, double ftol) {
  if (n <= 0 || d <= 0 || static_cast<int64_t>(points.size()) != n * d)
    throw DataError(cat("geometric median: expected ", n, " x ", d, " points, got ", points.size(), " values"));
  GeometricMedian out;
  out.point.assign(d, 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < d; ++j) out.point[j] += points[t * d + j];
  for (double& v : out.point) v /= double(n);
  double obj = objective(points, n, d, out.point);
  for (int64_t it = 1; it <= max_iterations; ++it) {
    out.iterations = it;
    const double previous = obj;
    std::vector<double> next(d, 0.0);
    double weights = 0;
    for (int64_t t = 0; t < n; ++t) {
      const double* x = points.data() + t * d;
      const double w = 1.0 / std::max(distance(x, out.point, d), eps);
      weights += w;
      for (int64_t j = 0; j < d; ++j) next[j] += w * x[j];
    }
    for (double& v : next) v /= weights;
    out.point = next;
    obj = objective(points, n, d, out.point);
    if (std::abs(previous - obj) <= ftol * obj) break;
  }
  return out;
}

SaeParams arch_initial_params(const ArchInit& init, int64_t d, int64_t features, Rng& rng,
                              const std::vector<double>& sample) {
  SaeParams p;
  if (!init.tied) {
    p = SaeParams::standard_init(d, features, rng);
  } else {
    if (d <= 0 || features <= 0)
      throw UsageError(cat("SAE: d_in and d_sae must be positive, got ", d, ", ", features));
    p.W_dec = normal_tensor(Shape{features, d}, 0.0, 1.0, rng);
    p.W_dec = div(p.W_dec, norm2(p.W_dec, 1, true));  // rows of norm 1
    p.W_enc = transpose(p.W_dec);
    p.b_enc = Tensor::zeros(Shape{features});
    p.b_dec = Tensor::zeros(Shape{d});
  }
  if (init.unit_norm_decoder) p.W_dec = div(p.W_dec, norm2(p.W_dec, 1, true));
  if (init.b_dec == BDecInit::Zero) p.b_dec = Tensor::zeros(Shape{d});
  if (init.b_dec == BDecInit::GeometricMedian) {
    if (sample.empty() || sample.size() % d != 0)
      throw DataError(cat("--init-b-dec geometric_median: no data sample to take the median of"));
    const GeometricMedian m = geometric_median(sample, static_cast<int64_t>(sample.size()) / d, d);
    p.b_dec = Tensor::from_vector(m.point, Shape{d}, DType::F32);
  }
  p.architecture = init.architecture;
  if (is_topk_family(init.architecture)) p.k = init.k;
  if (init.architecture == Architecture::JumpReLU)
    p.log_threshold = Tensor::full(Shape{features}, std::log(init.jumprelu_threshold));
  if (init.architecture == Architecture::Gated) {
    p.b_gate = p.b_enc;
    p.b_enc = Tensor();
    p.b_mag = Tensor::zeros(Shape{features});
    p.r_mag = Tensor::zeros(Shape{features});
  }
  p.check();
  return p;
}

}  // namespace sae
