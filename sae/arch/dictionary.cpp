// A fresh dictionary and the geometric median (see dictionary.h).
#include "sae/arch/dictionary.h"

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

namespace {
// Rows N(0, I) scaled to norm 1, [rows, width].
Tensor unit_rows(int64_t rows, int64_t width, Rng& rng) {
  Tensor t = normal_tensor(Shape{rows, width}, 0.0, 1.0, rng);
  return div(t, norm2(t, 1, true));
}
}  // namespace

SaeParams initial_dictionary(const DictionaryInit& init, const DictionaryShape& shape, Rng& rng,
                             const std::vector<double>& sample) {
  const int64_t d_in = shape.d_in, d_out = shape.d_out, features = shape.d_sae;
  if (d_in <= 0 || d_out <= 0 || features <= 0)
    throw UsageError(cat("SAE: d_in, d_out and d_sae must be positive, got ", d_in, ", ", d_out, ", ", features));
  SaeParams p;
  if (!init.tied && d_in == d_out) {
    p = SaeParams::standard_init(d_in, features, rng);
  } else if (!init.tied) {  // nn.Linear's init of Linear(D_in, F) and Linear(F, D_out)
    const double enc_bound = 1.0 / std::sqrt(static_cast<double>(d_in));
    const double dec_bound = 1.0 / std::sqrt(static_cast<double>(features));
    p.W_enc = uniform_tensor(Shape{d_in, features}, -enc_bound, enc_bound, rng);
    p.b_enc = uniform_tensor(Shape{features}, -enc_bound, enc_bound, rng);
    p.W_dec = uniform_tensor(Shape{features, d_out}, -dec_bound, dec_bound, rng);
    p.b_dec = uniform_tensor(Shape{d_out}, -dec_bound, dec_bound, rng);
  } else {  // tied: W_enc = W_dec^T; a transcoder's encoder gets its own unit rows of width D_in
    p.W_dec = unit_rows(features, d_out, rng);
    p.W_enc = transpose(d_in == d_out ? p.W_dec : unit_rows(features, d_in, rng));
    p.b_enc = Tensor::zeros(Shape{features});
    p.b_dec = Tensor::zeros(Shape{d_out});
  }
  if (init.unit_norm_decoder) p.W_dec = div(p.W_dec, norm2(p.W_dec, 1, true));
  if (init.b_dec == BDecInit::Zero) p.b_dec = Tensor::zeros(Shape{d_out});
  if (init.b_dec == BDecInit::GeometricMedian) {
    if (sample.empty() || sample.size() % d_out != 0)
      throw DataError(cat("--init-b-dec geometric_median: no data sample to take the median of"));
    const GeometricMedian m = geometric_median(sample, static_cast<int64_t>(sample.size()) / d_out, d_out);
    p.b_dec = Tensor::from_vector(m.point, Shape{d_out}, DType::F32);
  }
  p.sources = shape.sources;
  p.transcoder = shape.transcoder;
  if (shape.skip) p.W_skip = Tensor::zeros(Shape{d_in, d_out});
  return p;
}

ArchOption unit_norm_decoder_row() {
  ArchOption row{"unit-norm-decoder", "unit_norm_decoder",
          "auto | on | off: decoder rows at norm 1 (gradient projected, rows renormalised); auto = the "
          "architecture's default",
          ArchValueType::Choice, "auto", {"auto", "on", "off"}};
  row.implicit_value = "on";
  return row;
}

ArchOption init_tied_row() {
  ArchOption row{"init-tied", "init_tied",
          "auto | on | off: W_enc = W_dec^T at init, unit rows, zero biases (auto = the architecture's default)",
          ArchValueType::Choice, "auto", {"auto", "on", "off"}};
  row.implicit_value = "on";
  return row;
}

ArchOption init_b_dec_row() {
  return {"init-b-dec", "init_b_dec",
          "auto | zero | geometric_median (of the first 32768 training tokens); auto = the architecture's default",
          ArchValueType::Choice, "auto", {"auto", "zero", "geometric_median"}};
}

DictionaryInit resolve_dictionary_init(const ArchSettings& s, bool unit_norm_when_auto, bool tied_when_auto,
                                       bool median_when_auto) {
  DictionaryInit init;
  init.unit_norm_decoder = s.toggle("unit-norm-decoder", unit_norm_when_auto);
  init.tied = s.toggle("init-tied", tied_when_auto);
  const std::string& b_dec = s.text("init-b-dec");
  if (b_dec == "zero") init.b_dec = BDecInit::Zero;
  if (b_dec == "geometric_median" || (b_dec == "auto" && median_when_auto)) init.b_dec = BDecInit::GeometricMedian;
  return init;
}

}  // namespace sae
