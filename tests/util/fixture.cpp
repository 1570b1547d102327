// Fixture reader and closeness measure (see fixture.h). Defines no tests.
#include "tests/util/fixture.h"

#include <cmath>
#include <cstring>

namespace sae::test {

Fixture::Fixture(const std::string& path) : file_(SafetensorsFile::open(path)) {}

const SafetensorsEntry& Fixture::entry(const std::string& name) const {
  if (!file_.has(name)) throw DataError(cat("fixture ", source(), ": no array '", name, "'"));
  return file_.entry(name);
}

std::vector<double> Fixture::values(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  const int64_t n = e.numel();
  std::vector<double> out(static_cast<size_t>(n));
  const char* p = static_cast<const char*>(e.data);
  for (int64_t i = 0; i < n; ++i) {
    if (e.dtype == "F32") {
      float v;
      std::memcpy(&v, p + 4 * i, 4);
      out[i] = v;
    } else if (e.dtype == "F64") {
      std::memcpy(&out[i], p + 8 * i, 8);
    } else if (e.dtype == "I64") {
      int64_t v;
      std::memcpy(&v, p + 8 * i, 8);
      out[i] = static_cast<double>(v);
    } else if (e.dtype == "I32") {
      int32_t v;
      std::memcpy(&v, p + 4 * i, 4);
      out[i] = v;
    } else {
      throw DataError(cat("fixture ", source(), ": array '", name, "' has dtype ", e.dtype));
    }
  }
  return out;
}

Tensor Fixture::tensor(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  if (e.dtype != "F32" && e.dtype != "F64")
    throw DataError(cat("fixture ", source(), ": array '", name, "' is ", e.dtype, ", not a float array"));
  if (e.shape.size() > 4) throw DataError(cat("fixture ", source(), ": array '", name, "' has more than 4 dims"));
  Shape shape = e.shape.empty() ? Shape{1} : Shape::from_vector(e.shape);
  Tensor t = Tensor::empty(shape, e.dtype == "F32" ? DType::F32 : DType::F64);
  std::memcpy(t.raw(), e.data, e.bytes);
  return t;
}

Tensor Fixture::tensor(const std::string& name, DType dtype) const { return tensor(name).to(dtype); }

std::vector<int64_t> Fixture::ints(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  if (e.dtype != "I64" && e.dtype != "I32")
    throw DataError(cat("fixture ", source(), ": array '", name, "' is ", e.dtype, ", not an integer array"));
  return file_.read_i64(name);
}

double Fixture::scalar(const std::string& name) const {
  const std::vector<double> v = values(name);
  if (v.size() != 1) throw DataError(cat("fixture ", source(), ": array '", name, "' is not a single value"));
  return v[0];
}

int64_t Fixture::integer(const std::string& name) const {
  const std::vector<int64_t> v = ints(name);
  if (v.size() != 1) throw DataError(cat("fixture ", source(), ": array '", name, "' is not one integer"));
  return v[0];
}

std::string Fixture::text(const std::string& name) const {
  auto it = file_.metadata().find(name);
  if (it == file_.metadata().end()) throw DataError(cat("fixture ", source(), ": no text '", name, "'"));
  return it->second;
}

std::string Closeness::str() const {
  return cat("max abs err ", max_abs, ", max rel err ", max_rel, ", ", violations, " outside tolerance",
             worst >= 0 ? cat("; worst at flat index ", worst, ": got ", worst_got, " want ", worst_want) : "");
}

Closeness closeness(const Tensor& got, const Tensor& want, double atol, double rtol) {
  if (got.numel() != want.numel() || got.shape() != want.shape())
    throw Error(cat("closeness: ", got.describe(), " vs ", want.describe()));
  const std::vector<double> g = got.to_vector(), w = want.to_vector();
  Closeness c;
  double worst_ratio = -1.0;
  for (size_t i = 0; i < g.size(); ++i) {
    const double err = std::abs(g[i] - w[i]);
    const double allowed = atol + rtol * std::abs(w[i]);
    if (!(err <= allowed)) ++c.violations;  // NaN counts as a violation
    if (std::isnan(err) || err > c.max_abs) c.max_abs = std::isnan(err) ? INFINITY : err;
    if (std::abs(w[i]) > atol) c.max_rel = std::max(c.max_rel, err / std::abs(w[i]));
    const double ratio = std::isnan(err) ? INFINITY : err / allowed;
    if (ratio > worst_ratio) {
      worst_ratio = ratio;
      c.worst = static_cast<int64_t>(i);
      c.worst_got = g[i];
      c.worst_want = w[i];
    }
  }
  return c;
}

}  // namespace sae::test
