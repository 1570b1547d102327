// Fuzzes the safetensors reader (io/safetensors.h) on the input as a file: open, then every
// accessor on every entry (entry, numel, read_f32, read_rows_f32 on the first, middle and last
// rows, read_i64), each result checked against the raw bytes; then the float32 entries and the
// metadata are written back with write_safetensors and must read back identical.
#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "fuzz_float.h"
#include "fuzz_util.h"
#include "io/safetensors.h"

using namespace sae;

namespace {

void check_floats(const SafetensorsEntry& e, const float* got, int64_t first_element, int64_t count) {
  const uint8_t* raw = static_cast<const uint8_t*>(e.data);
  for (int64_t i = 0; i < count; ++i)
    fuzz::require(fuzz::same_float(got[i], fuzz::expected_f32(raw, e.dtype, static_cast<size_t>(first_element + i))),
                  cat("tensor '", fuzz::escaped(e.name), "' ", e.dtype, " element ", first_element + i, " converted wrongly"));
}

void check_entry(const SafetensorsFile& file, const std::string& name) {
  const SafetensorsEntry& e = file.entry(name);
  fuzz::require(e.name == name, "entry name differs from its key");
  fuzz::require(e.end >= e.begin && e.bytes == e.end - e.begin, "entry bytes disagree with its data_offsets");
  const size_t element = safetensors_dtype_size(e.dtype);
  fuzz::require(element > 0, "an entry with an unknown dtype was accepted");
  const int64_t numel = e.numel();
  fuzz::require(numel >= 0 && static_cast<uint64_t>(numel) * element == e.bytes,
                cat("tensor '", fuzz::escaped(name), "' numel ", numel, " * ", element, " != ", e.bytes, " bytes"));

  Tensor whole;
  if (fuzz::attempt([&] { whole = file.read_f32(name); })) {
    fuzz::require(whole.numel() == std::max<int64_t>(numel, e.shape.empty() ? 1 : 0), "read_f32 returned the wrong size");
    check_floats(e, whole.data<float>(), 0, numel);
  }
  if (!e.shape.empty()) {
    const int64_t rows = e.shape[0];
    const int64_t width = rows == 0 ? 0 : numel / rows;
    std::vector<std::pair<int64_t, int64_t>> blocks = {{0, std::min<int64_t>(rows, 2)}, {rows / 2, rows > 0 ? 1 : 0},
                                                       {rows > 0 ? rows - 1 : 0, rows > 0 ? 1 : 0}, {rows, 0}};
    for (const auto& block : blocks) {
      const int64_t begin = block.first, count = block.second;  // (clang 14 cannot capture bindings)
      Tensor part;
      if (fuzz::attempt([&] { part = file.read_rows_f32(name, begin, count); })) {
        fuzz::require(part.numel() == count * width, "read_rows_f32 returned the wrong size");
        check_floats(e, part.data<float>(), begin * width, count * width);
      }
    }
    // Out of range rows must be refused.
    fuzz::require(!fuzz::attempt([&] { file.read_rows_f32(name, rows, 1); }), "read_rows_f32 past the end was accepted");
  }
  std::vector<int64_t> ints;
  if (fuzz::attempt([&] { ints = file.read_i64(name); })) {
    fuzz::require(static_cast<int64_t>(ints.size()) == numel, "read_i64 returned the wrong count");
    const uint8_t* raw = static_cast<const uint8_t*>(e.data);
    for (size_t i = 0; i < ints.size(); ++i) {
      int64_t expected;
      if (e.dtype == "I64") {
        std::memcpy(&expected, raw + 8 * i, 8);
      } else {
        int32_t narrow;
        std::memcpy(&narrow, raw + 4 * i, 4);
        expected = narrow;
      }
      fuzz::require(ints[i] == expected, "read_i64 returned a wrong value");
    }
  }
}

// The float32 entries (1 to 4 dims) and the metadata through write_safetensors and back.
void check_write_round_trip(const SafetensorsFile& file) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& name : file.names()) {
    const SafetensorsEntry& e = file.entry(name);
    if (e.dtype != "F32" || e.shape.empty() || e.shape.size() > 4) continue;
    Tensor t;
    if (fuzz::attempt([&] { t = file.read_f32(name); })) tensors.push_back({name, t});
  }
  const std::string out = fuzz::scratch_dir() + "/written.safetensors";
  const bool written = fuzz::attempt([&] { write_safetensors(out, tensors, file.metadata()); });
  fuzz::require(written, "write_safetensors refused tensors that were just read");
  const bool read_back = fuzz::attempt([&] {
    SafetensorsFile back = SafetensorsFile::open(out);
    fuzz::require(back.metadata() == file.metadata(), "metadata changed in a write round trip");
    fuzz::require(back.names().size() == tensors.size(), "tensor count changed in a write round trip");
    for (const auto& [name, tensor] : tensors) {
      const SafetensorsEntry& a = file.entry(name);
      const SafetensorsEntry& b = back.entry(name);
      fuzz::require(a.shape == b.shape && b.dtype == "F32", "shape changed in a write round trip");
      fuzz::require(a.bytes == b.bytes && (a.bytes == 0 || std::memcmp(a.data, b.data, a.bytes) == 0),
                    "bytes changed in a write round trip");
    }
  });
  fuzz::require(read_back, "a file written by write_safetensors does not read back");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path =
      fuzz::write_scratch_file("input.safetensors", std::string_view(reinterpret_cast<const char*>(data), size));
  fuzz::attempt([&] {
    SafetensorsFile file = SafetensorsFile::open(path);
    for (const std::string& name : file.names()) check_entry(file, name);
    if (!file.has("no such tensor"))
      fuzz::require(!fuzz::attempt([&] { (void)file.entry("no such tensor"); }), "entry() found a missing name");
    check_write_round_trip(file);
  });
  return 0;
}
