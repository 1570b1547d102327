// Reader of the reference fixtures (small binary files of named arrays written by the Python
// generators in scripts/, committed under tests/ref/), plus the closeness measure the reference
// tests share. The writer and the format's description are in scripts/fixture_io.py:
//
//   "SAEFIXT\0" | uint32 version (1) | uint32 count | count x { uint32 name_len, name,
//   uint32 dtype (0 f32, 1 f64, 2 i64), uint32 ndim, int64 dims[ndim], raw data }   (little-endian)
//
// Every defect of a file (missing, bad magic, other version, truncated, unknown dtype, trailing
// bytes, duplicate names) and every bad lookup throws sae::DataError naming the file and the array.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace sae::test {

enum class FixtureDType : uint32_t { F32 = 0, F64 = 1, I64 = 2 };
const char* fixture_dtype_name(FixtureDType dtype);

struct FixtureArray {
  std::string name;
  FixtureDType dtype = FixtureDType::F32;
  std::vector<int64_t> dims;        // empty for a scalar (ndim 0)
  std::vector<unsigned char> bytes;  // raw little-endian data, row-major
  int64_t numel() const;
  std::string describe() const;  // "f32[16, 6]"
};

class Fixture {
 public:
  Fixture(std::string source, std::vector<FixtureArray> arrays);

  const std::string& source() const { return source_; }  // the path, for messages
  bool has(const std::string& name) const;
  std::vector<std::string> names() const;  // in file order
  const FixtureArray& array(const std::string& name) const;

  // A float array as a CPU tensor of its own dtype (f32 or f64), or converted to `dtype`.
  // A scalar (ndim 0) becomes shape [1]. Throws for int64 arrays and for more than 4 dims.
  Tensor tensor(const std::string& name) const;
  Tensor tensor(const std::string& name, DType dtype) const;
  std::vector<double> values(const std::string& name) const;  // any dtype, as doubles
  std::vector<int64_t> ints(const std::string& name) const;   // int64 arrays only
  double scalar(const std::string& name) const;                // exactly one element, any dtype
  int64_t integer(const std::string& name) const;              // exactly one int64 element
  std::string text(const std::string& name) const;             // 1-D int64 array of UTF-8 bytes

 private:
  std::string source_;
  std::vector<FixtureArray> arrays_;
};

// Parses a whole fixture held in memory; `source` names it in error messages.
Fixture parse_fixture(const std::string& bytes, const std::string& source);
Fixture load_fixture(const std::string& path);

// How far `got` is from `want` (same shape and element count; dtypes may differ), element-wise
// with the test tolerance |got - want| <= atol + rtol * |want|. The relative error is measured only
// where |want| > atol, since near zero it says nothing.
struct Closeness {
  double max_abs = 0.0;
  double max_rel = 0.0;
  int64_t violations = 0;  // elements outside the tolerance
  int64_t worst = -1;      // flat index of the element with the largest |got - want| / (atol + rtol |want|)
  double worst_got = 0.0, worst_want = 0.0;
  std::string str() const;
};
Closeness closeness(const Tensor& got, const Tensor& want, double atol, double rtol);

}  // namespace sae::test
