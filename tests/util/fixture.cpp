// Fixture reader and closeness measure (see fixture.h). Defines no tests.
#include "tests/util/fixture.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>

namespace sae::test {

static_assert(std::endian::native == std::endian::little, "the fixture reader assumes a little-endian host");

namespace {

constexpr char kMagic[8] = {'S', 'A', 'E', 'F', 'I', 'X', 'T', '\0'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kMaxNdim = 16;

size_t element_size(FixtureDType dtype) { return dtype == FixtureDType::F32 ? 4 : 8; }

// Sequential reads from the file's bytes; every read checks that the bytes are there.
class Cursor {
 public:
  Cursor(const std::string& bytes, const std::string& source) : bytes_(bytes), source_(source) {}

  size_t pos() const { return pos_; }
  size_t left() const { return bytes_.size() - pos_; }

  void need(size_t n, const std::string& what) const {
    if (n > left())
      throw DataError(cat("fixture ", source_, ": truncated: ", what, " needs ", n, " bytes at offset ", pos_,
                          " but only ", left(), " remain"));
  }
  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T value;
    std::memcpy(&value, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }
  std::string read_bytes(size_t n, const std::string& what) {
    need(n, what);
    std::string out = bytes_.substr(pos_, n);
    pos_ += n;
    return out;
  }

 private:
  const std::string& bytes_;
  const std::string& source_;
  size_t pos_ = 0;
};

}  // namespace

const char* fixture_dtype_name(FixtureDType dtype) {
  switch (dtype) {
    case FixtureDType::F32: return "f32";
    case FixtureDType::F64: return "f64";
    case FixtureDType::I64: return "i64";
  }
  return "?";
}

int64_t FixtureArray::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

std::string FixtureArray::describe() const {
  std::string s = std::string(fixture_dtype_name(dtype)) + "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

Fixture parse_fixture(const std::string& bytes, const std::string& source) {
  Cursor in(bytes, source);
  if (in.read_bytes(sizeof(kMagic), "the magic number") != std::string(kMagic, sizeof(kMagic)))
    throw DataError(cat("fixture ", source, ": not a fixture file (bad magic number; expected \"SAEFIXT\\0\")"));
  const uint32_t version = in.read<uint32_t>("the version");
  if (version != kVersion)
    throw DataError(cat("fixture ", source, ": format version ", version, ", this reader knows version ", kVersion));
  const uint32_t count = in.read<uint32_t>("the array count");

  std::vector<FixtureArray> arrays;
  for (uint32_t a = 0; a < count; ++a) {
    const std::string which = cat("array ", a, " of ", count);
    FixtureArray array;
    const uint32_t name_len = in.read<uint32_t>(which + ": name length");
    array.name = in.read_bytes(name_len, which + ": name");
    const std::string what = cat(which, " '", array.name, "'");
    const uint32_t code = in.read<uint32_t>(what + ": dtype");
    if (code > static_cast<uint32_t>(FixtureDType::I64))
      throw DataError(cat("fixture ", source, ": ", what, ": unknown dtype code ", code,
                          " (0 = float32, 1 = float64, 2 = int64)"));
    array.dtype = static_cast<FixtureDType>(code);
    const uint32_t ndim = in.read<uint32_t>(what + ": ndim");
    if (ndim > kMaxNdim) throw DataError(cat("fixture ", source, ": ", what, ": ndim ", ndim, " > ", kMaxNdim));
    // The element count, checked against the remaining bytes as it grows (no overflow, no huge
    // allocation from a corrupt header).
    const uint64_t max_elements = std::numeric_limits<int64_t>::max() / 8;
    uint64_t elements = 1;
    for (uint32_t d = 0; d < ndim; ++d) {
      const int64_t dim = in.read<int64_t>(what + ": dims");
      if (dim < 0) throw DataError(cat("fixture ", source, ": ", what, ": negative dimension ", dim));
      array.dims.push_back(dim);
      if (dim != 0 && elements > max_elements / static_cast<uint64_t>(dim))
        throw DataError(cat("fixture ", source, ": ", what, ": dimensions overflow"));
      elements *= static_cast<uint64_t>(dim);
    }
    const uint64_t nbytes = elements * element_size(array.dtype);
    in.need(nbytes, cat(what, " ", array.describe(), ": data"));
    const std::string data = in.read_bytes(static_cast<size_t>(nbytes), what + ": data");
    array.bytes.assign(data.begin(), data.end());
    for (const FixtureArray& other : arrays)
      if (other.name == array.name) throw DataError(cat("fixture ", source, ": duplicate array name '", array.name, "'"));
    arrays.push_back(std::move(array));
  }
  if (in.left() != 0)
    throw DataError(cat("fixture ", source, ": ", in.left(), " trailing bytes after the last of ", count,
                        " arrays (corrupt count or file)"));
  return Fixture(source, std::move(arrays));
}

Fixture load_fixture(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw DataError(cat("fixture ", path, ": cannot open the file"));
  std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (file.bad()) throw DataError(cat("fixture ", path, ": read error"));
  return parse_fixture(bytes, path);
}

Fixture::Fixture(std::string source, std::vector<FixtureArray> arrays)
    : source_(std::move(source)), arrays_(std::move(arrays)) {}

bool Fixture::has(const std::string& name) const {
  for (const FixtureArray& a : arrays_)
    if (a.name == name) return true;
  return false;
}

std::vector<std::string> Fixture::names() const {
  std::vector<std::string> out;
  for (const FixtureArray& a : arrays_) out.push_back(a.name);
  return out;
}

const FixtureArray& Fixture::array(const std::string& name) const {
  for (const FixtureArray& a : arrays_)
    if (a.name == name) return a;
  throw DataError(cat("fixture ", source_, ": no array named '", name, "' (it has ", arrays_.size(), " arrays)"));
}

std::vector<double> Fixture::values(const std::string& name) const {
  const FixtureArray& a = array(name);
  const int64_t n = a.numel();
  std::vector<double> out(n);
  for (int64_t i = 0; i < n; ++i) {
    const unsigned char* p = a.bytes.data() + i * element_size(a.dtype);
    if (a.dtype == FixtureDType::F32) {
      float v;
      std::memcpy(&v, p, 4);
      out[i] = v;
    } else if (a.dtype == FixtureDType::F64) {
      std::memcpy(&out[i], p, 8);
    } else {
      int64_t v;
      std::memcpy(&v, p, 8);
      out[i] = static_cast<double>(v);
    }
  }
  return out;
}

std::vector<int64_t> Fixture::ints(const std::string& name) const {
  const FixtureArray& a = array(name);
  if (a.dtype != FixtureDType::I64)
    throw DataError(cat("fixture ", source_, ": array '", name, "' is ", a.describe(), ", not int64"));
  std::vector<int64_t> out(a.numel());
  std::memcpy(out.data(), a.bytes.data(), a.bytes.size());
  return out;
}

Tensor Fixture::tensor(const std::string& name) const {
  const FixtureArray& a = array(name);
  if (a.dtype == FixtureDType::I64)
    throw DataError(cat("fixture ", source_, ": array '", name, "' is ", a.describe(), "; a tensor needs float32/64"));
  if (a.dims.size() > static_cast<size_t>(Shape::kMaxDims))
    throw DataError(cat("fixture ", source_, ": array '", name, "' is ", a.describe(), "; tensors have at most ",
                        Shape::kMaxDims, " dims"));
  Shape shape = a.dims.empty() ? Shape{1} : Shape::from_vector(a.dims);
  Tensor t = Tensor::empty(shape, a.dtype == FixtureDType::F32 ? DType::F32 : DType::F64);
  std::memcpy(t.raw(), a.bytes.data(), a.bytes.size());
  return t;
}

Tensor Fixture::tensor(const std::string& name, DType dtype) const { return tensor(name).to(dtype); }

double Fixture::scalar(const std::string& name) const {
  const FixtureArray& a = array(name);
  if (a.numel() != 1)
    throw DataError(cat("fixture ", source_, ": array '", name, "' is ", a.describe(), ", not a single value"));
  return values(name)[0];
}

int64_t Fixture::integer(const std::string& name) const {
  std::vector<int64_t> v = ints(name);
  if (v.size() != 1)
    throw DataError(cat("fixture ", source_, ": array '", name, "' is ", array(name).describe(), ", not one integer"));
  return v[0];
}

std::string Fixture::text(const std::string& name) const {
  const FixtureArray& a = array(name);
  if (a.dims.size() != 1)
    throw DataError(cat("fixture ", source_, ": array '", name, "' is ", a.describe(), ", not 1-D text"));
  std::string out;
  for (int64_t c : ints(name)) {
    if (c < 0 || c > 255) throw DataError(cat("fixture ", source_, ": array '", name, "' holds ", c, ", not a byte"));
    out.push_back(static_cast<char>(c));
  }
  return out;
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
