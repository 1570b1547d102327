// Reader of the reference fixtures: safetensors files of named arrays (F32, F64, I64, I32) written
// by the Python generators in scripts/ (scripts/fixture_io.py and others) and committed under
// tests/ref/, read with the project's own safetensors reader (io/safetensors.h), plus the closeness
// measure the reference tests share. Text (a torch version) lives in the header's __metadata__.
// Every bad lookup throws sae::DataError naming the file and the array.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "tensor/tensor.h"

namespace sae::test {

class Fixture {
 public:
  explicit Fixture(const std::string& path);

  const std::string& source() const { return file_.path(); }  // the path, for messages
  bool has(const std::string& name) const { return file_.has(name); }
  std::vector<std::string> names() const { return file_.names(); }

  // A float array as a CPU tensor of its own dtype (F32 or F64, exactly), or converted to `dtype`.
  // A scalar (0-dim) becomes shape [1].
  Tensor tensor(const std::string& name) const;
  Tensor tensor(const std::string& name, DType dtype) const;
  std::vector<double> values(const std::string& name) const;  // F32, F64, I32 or I64, as doubles
  std::vector<int64_t> ints(const std::string& name) const;   // I32 or I64 arrays only
  double scalar(const std::string& name) const;                // exactly one element, any dtype
  int64_t integer(const std::string& name) const;              // exactly one integer element
  std::string text(const std::string& name) const;             // a __metadata__ entry

 private:
  const SafetensorsEntry& entry(const std::string& name) const;
  SafetensorsFile file_;
};

inline Fixture load_fixture(const std::string& path) { return Fixture(path); }

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
