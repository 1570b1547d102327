// Fuzzes the .npy reader (io/npy.h) on the input as a file: open, shape and numel against the file
// size, read_f32 and read_rows_f32 (first, middle, last rows) against the raw bytes; then a 1- to
// 4-dim array is written back with write_npy and must read back with the same shape and values.
#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "fuzz_float.h"
#include "fuzz_util.h"
#include "io/npy.h"

using namespace sae;

namespace {

// Where the data starts: after the magic, version, length field and header (the file was accepted,
// so these fields are valid).
const uint8_t* data_start(const uint8_t* bytes) {
  const int major = bytes[6];
  uint32_t header_bytes = 0;
  std::memcpy(&header_bytes, bytes + 8, major == 1 ? 2 : 4);
  return bytes + 8 + (major == 1 ? 2 : 4) + header_bytes;
}

void check_floats(const NpyFile& file, const uint8_t* raw, const float* got, int64_t first, int64_t count) {
  for (int64_t i = 0; i < count; ++i)
    fuzz::require(fuzz::same_float(got[i], fuzz::expected_f32(raw, file.dtype(), static_cast<size_t>(first + i))),
                  cat("element ", first + i, " of a ", file.descr(), " array converted wrongly"));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::write_scratch_file("input.npy", std::string_view(reinterpret_cast<const char*>(data), size));
  fuzz::attempt([&] {
    NpyFile file = NpyFile::open(path);
    const uint8_t* raw = data_start(data);
    const int64_t numel = file.numel();
    const size_t element = file.dtype() == "F64" ? 8 : file.dtype() == "F32" ? 4 : 2;
    fuzz::require(file.dtype() == "F64" || file.dtype() == "F32" || file.dtype() == "F16", "an unknown dtype was accepted");
    fuzz::require(numel >= 0 && static_cast<size_t>(raw - data) + static_cast<uint64_t>(numel) * element == size,
                  cat("shape of ", numel, " elements does not account for the file's ", size, " bytes"));

    Tensor whole;
    if (fuzz::attempt([&] { whole = file.read_f32(); })) {
      fuzz::require(whole.numel() == std::max<int64_t>(numel, file.shape().empty() ? 1 : 0), "read_f32 returned the wrong size");
      check_floats(file, raw, whole.data<float>(), 0, numel);
    }
    if (!file.shape().empty()) {
      const int64_t rows = file.shape()[0];
      const int64_t width = rows == 0 ? 0 : numel / rows;
      const std::vector<std::pair<int64_t, int64_t>> blocks = {
          {0, std::min<int64_t>(rows, 2)}, {rows / 2, rows > 0 ? 1 : 0}, {rows > 0 ? rows - 1 : 0, rows > 0 ? 1 : 0}, {rows, 0}};
      for (const auto& block : blocks) {
        const int64_t begin = block.first, count = block.second;  // (clang 14 cannot capture bindings)
        Tensor part;
        if (fuzz::attempt([&] { part = file.read_rows_f32(begin, count); })) {
          fuzz::require(part.numel() == count * width, "read_rows_f32 returned the wrong size");
          check_floats(file, raw, part.data<float>(), begin * width, count * width);
        }
      }
      fuzz::require(!fuzz::attempt([&] { file.read_rows_f32(rows, 1); }), "read_rows_f32 past the end was accepted");
    }

    // Written back as float32 .npy, the array reads back with the same shape and values.
    if (whole.defined() && !file.shape().empty()) {
      const std::string out = fuzz::scratch_dir() + "/written.npy";
      const bool round_trip = fuzz::attempt([&] {
        write_npy(out, whole);
        NpyFile back = NpyFile::open(out);
        fuzz::require(back.shape() == file.shape() && back.dtype() == "F32", "shape changed in a write_npy round trip");
        Tensor again = back.read_f32();
        for (int64_t i = 0; i < numel; ++i)
          fuzz::require(fuzz::same_float(again.data<float>()[i], whole.data<float>()[i]), "values changed in a write_npy round trip");
      });
      fuzz::require(round_trip, "an array written by write_npy does not read back");
    }
  });
  return 0;
}
