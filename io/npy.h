// Reader of NumPy .npy files (format versions 1.0, 2.0 and 3.0), memory-mapped, and a small
// float32 writer. Layout: "\x93NUMPY", major and minor version bytes, header length (2 bytes
// little-endian in v1, 4 in v2/v3), a Python dict literal
//   {'descr': '<f4', 'fortran_order': False, 'shape': (N, D), }
// padded with spaces and ended by '\n', then the raw C-order data.
// Accepted element types: '<f4', and '<f2' or '<f8' converted to float32. Fortran order,
// big-endian, other dtypes, truncated or over-long data are DataErrors naming the file.
// The row-block API matches SafetensorsFile so a data loader can treat both alike. The header
// checks work on bytes in memory too (npy_header_bytes, parse_npy_header), for the .npy entries of
// a .npz archive (io/npz.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/atomic_file.h"
#include "io/mapped_file.h"
#include "tensor/tensor.h"

namespace sae {

// What a .npy header says, checked against the .npy's total size: the element type, the shape,
// and where the data starts.
struct NpyHeader {
  std::string descr;         // as in the header, e.g. "<f4"
  std::string dtype;         // safetensors name: "F32", "F16" or "F64"
  size_t element_size = 0;
  std::vector<int64_t> shape;
  int64_t elements = 0;      // 0 when a dimension is 0; checked to fit int64
  size_t data_offset = 0;    // bytes before the data (magic, version, length field, header)
};

// The number of bytes before the data (magic + version + length field + header) of a .npy of
// `total` bytes, from its first `available` bytes (12 suffice; fewer only when total is smaller).
// DataError naming `where` for a missing magic, an unknown version, a header past the end.
size_t npy_header_bytes(const uint8_t* bytes, size_t available, uint64_t total, const std::string& where);
// Parses and checks the header at `bytes` (which hold at least npy_header_bytes of them) of a .npy
// of `total` bytes: dtype '<f4', '<f2' or '<f8', C order, and exactly shape * element size data
// bytes after it. DataError naming `where` otherwise.
NpyHeader parse_npy_header(const uint8_t* bytes, uint64_t total, const std::string& where);

class NpyFile {
 public:
  static NpyFile open(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const MappedFile& mapping() const { return file_; }
  const std::string& descr() const { return descr_; }  // as in the header, e.g. "<f4"
  const std::string& dtype() const { return dtype_; }  // safetensors name: "F32", "F16" or "F64"
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t numel() const { return elements_; }  // 0 when a dimension is 0; checked to fit int64

  // The whole array as a float32 CPU tensor (at most 4 dims; 0-dim comes back as shape [1]).
  Tensor read_f32() const;
  // Rows [row_begin, row_begin + row_count) along dim 0; out holds row_count * (numel / shape[0]).
  Tensor read_rows_f32(int64_t row_begin, int64_t row_count) const;
  void read_rows_f32(int64_t row_begin, int64_t row_count, float* out) const;

 private:
  void check_rows(int64_t row_begin, int64_t row_count) const;  // Error for rows outside the array
  NpyFile() = default;

  MappedFile file_;
  std::string descr_;
  std::string dtype_;
  size_t element_size_ = 0;
  std::vector<int64_t> shape_;
  int64_t elements_ = 0;
  const uint8_t* data_ = nullptr;
};

// Writes a float32 tensor (any number of dims; CUDA tensors are copied to the host) as .npy
// version 1.0, atomically (PATH.tmp, fsync, rename). The header is padded so the data starts at
// a multiple of 64 bytes, as NumPy does.
void write_npy(const std::string& path, const Tensor& tensor);

// The same file written row block by row block, for a matrix [rows, width] too large to hold whole:
// the header first, then write_rows in order, then commit() (which requires every row; a writer
// destroyed before commit leaves PATH untouched, as AtomicFileWriter).
class NpyRowWriter {
 public:
  NpyRowWriter(const std::string& path, int64_t rows, int64_t width);
  void write_rows(const float* values, int64_t rows);
  void commit();

 private:
  AtomicFileWriter out_;
  int64_t rows_, width_, written_ = 0;
};

}  // namespace sae
