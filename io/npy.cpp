// .npy reader (header dict parser, validation, conversion to float32) and float32 writer.
#include "io/npy.h"

#include <algorithm>
#include <climits>
#include <cstring>

#include "io/atomic_file.h"
#include "io/float_convert.h"

namespace sae {

namespace {

const char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicBytes = 6;

// Parses the header, a Python dict literal with exactly the keys 'descr' (a string),
// 'fortran_order' (True or False) and 'shape' (a tuple of ints), in any order.
class NpyHeaderParser {
 public:
  NpyHeaderParser(const std::string& text, const std::string& path) : text_(text), path_(path) {}

  void parse(std::string& descr, bool& fortran_order, std::vector<int64_t>& shape) {
    bool have_descr = false, have_order = false, have_shape = false;
    skip_space();
    expect('{');
    while (true) {
      skip_space();
      if (peek() == '}') break;
      std::string key = parse_string();
      skip_space();
      expect(':');
      skip_space();
      if (key == "descr") {
        if (peek() != '\'' && peek() != '"')
          fail("'descr' is not a simple type string (structured dtypes are not supported; expected '<f4', '<f2' or '<f8')");
        descr = parse_string();
        have_descr = true;
      } else if (key == "fortran_order") {
        fortran_order = parse_bool();
        have_order = true;
      } else if (key == "shape") {
        shape = parse_tuple();
        have_shape = true;
      } else {
        fail(cat("unexpected key '", printable(key), "' (expected only 'descr', 'fortran_order' and 'shape')"));
      }
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      skip_space();
      if (peek() != '}') fail("expected ',' or '}'");
    }
    ++pos_;  // '}'
    skip_space();
    if (pos_ != text_.size()) fail("unexpected text after the header dict");
    if (!have_descr || !have_order || !have_shape) fail("header must contain 'descr', 'fortran_order' and 'shape'");
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw DataError(cat(path_, ": bad .npy header at byte ", pos_, " of \"", printable(text_), "\": ", what));
  }
  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\n' || text_[pos_] == '\t' || text_[pos_] == '\r')) ++pos_;
  }
  void expect(char c) {
    if (peek() != c) fail(cat("expected '", c, "'"));
    ++pos_;
  }

  std::string parse_string() {
    char quote = peek();
    if (quote != '\'' && quote != '"') fail("expected a quoted string");
    ++pos_;
    size_t end = text_.find(quote, pos_);
    if (end == std::string::npos) fail("unterminated string");
    std::string s = text_.substr(pos_, end - pos_);
    if (s.find('\\') != std::string::npos) fail("escapes in header strings are not supported");
    pos_ = end + 1;
    return s;
  }

  bool parse_bool() {
    if (text_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (text_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    fail("expected True or False");
  }

  // "()", "(3,)", "(3, 4)", "(3, 4,)"; Python 2 writers may add an 'L' suffix to ints.
  std::vector<int64_t> parse_tuple() {
    std::vector<int64_t> dims;
    expect('(');
    while (true) {
      skip_space();
      if (peek() == ')') break;
      if (peek() < '0' || peek() > '9') fail("expected a non-negative integer in shape");
      int64_t value = 0;
      while (peek() >= '0' && peek() <= '9') {
        if (value > (INT64_MAX - 9) / 10) fail("shape dimension too large");
        value = value * 10 + (peek() - '0');
        ++pos_;
      }
      if (peek() == 'L') ++pos_;
      dims.push_back(value);
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() != ')') fail("expected ',' or ')' in shape");
    }
    ++pos_;  // ')'
    return dims;
  }

  const std::string& text_;
  const std::string& path_;
  size_t pos_ = 0;
};

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

}  // namespace

size_t npy_header_bytes(const uint8_t* bytes, size_t available, uint64_t total, const std::string& path) {
  if (total < kMagicBytes + 2 || available < kMagicBytes + 2 || std::memcmp(bytes, kMagic, kMagicBytes) != 0)
    throw DataError(cat(path, ": not a .npy file (missing the \\x93NUMPY magic)"));
  int major = bytes[6], minor = bytes[7];
  size_t length_bytes;
  if (major == 1 && minor == 0) length_bytes = 2;  // numpy reads these three versions and no other
  else if ((major == 2 || major == 3) && minor == 0) length_bytes = 4;
  else throw DataError(cat(path, ": unsupported .npy format version ", major, ".", minor, " (expected 1.0, 2.0 or 3.0)"));
  size_t prefix = kMagicBytes + 2 + length_bytes;
  if (total < prefix || available < prefix) throw DataError(cat(path, ": truncated .npy header (", total, " bytes)"));
  uint32_t header_bytes = 0;
  std::memcpy(&header_bytes, bytes + 8, length_bytes);  // little-endian
  if (header_bytes > total - prefix)
    throw DataError(cat(path, ": .npy header length ", header_bytes, " runs past the end of the file (", total, " bytes)"));
  return prefix + header_bytes;
}

NpyHeader parse_npy_header(const uint8_t* bytes, uint64_t total, const std::string& path) {
  NpyHeader h;
  const size_t end = npy_header_bytes(bytes, static_cast<size_t>(std::min<uint64_t>(total, kMagicBytes + 2 + 4)), total, path);
  const size_t prefix = kMagicBytes + 2 + (bytes[6] == 1 ? 2 : 4);
  std::string header(reinterpret_cast<const char*>(bytes + prefix), end - prefix);
  bool fortran_order = false;
  NpyHeaderParser(header, path).parse(h.descr, fortran_order, h.shape);

  if (fortran_order) throw DataError(cat(path, ": Fortran-order arrays are not supported (save a C-order array, e.g. np.ascontiguousarray)"));
  if (h.descr == "<f4") h.dtype = "F32", h.element_size = 4;
  else if (h.descr == "<f2") h.dtype = "F16", h.element_size = 2;
  else if (h.descr == "<f8") h.dtype = "F64", h.element_size = 8;
  else if (!h.descr.empty() && h.descr[0] == '>')
    throw DataError(cat(path, ": big-endian dtype '", printable(h.descr), "' is not supported (expected '<f4', '<f2' or '<f8')"));
  else throw DataError(cat(path, ": dtype '", printable(h.descr), "' is not supported (expected '<f4', '<f2' or '<f8')"));

  // The element count: 0 when any dimension is 0, otherwise the product, which must fit int64.
  uint64_t numel = 1;
  const bool empty = std::find(h.shape.begin(), h.shape.end(), int64_t(0)) != h.shape.end();
  for (int64_t d : h.shape)
    if (!empty && (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel) || numel > uint64_t(INT64_MAX)))
      throw DataError(cat(path, ": shape ", shape_str(h.shape), " is too large"));
  if (empty) numel = 0;
  h.elements = static_cast<int64_t>(numel);
  uint64_t expected;
  if (__builtin_mul_overflow(numel, h.element_size, &expected))
    throw DataError(cat(path, ": shape ", shape_str(h.shape), " is too large"));
  uint64_t available = total - end;
  if (available < expected)
    throw DataError(cat(path, ": truncated .npy data: shape ", shape_str(h.shape), " of '", h.descr, "' needs ", expected, " bytes, file has ",
                        available));
  if (available > expected)
    throw DataError(cat(path, ": .npy file has ", available - expected, " bytes after the data of shape ", shape_str(h.shape), " of '",
                        h.descr, "' (corrupt or wrong header)"));
  h.data_offset = end;
  return h;
}

NpyFile NpyFile::open(const std::string& path) {
  NpyFile f;
  f.file_ = MappedFile(path);
  const uint8_t* bytes = f.file_.data();
  NpyHeader h = parse_npy_header(bytes, f.file_.size(), path);
  f.descr_ = std::move(h.descr);
  f.dtype_ = std::move(h.dtype);
  f.element_size_ = h.element_size;
  f.shape_ = std::move(h.shape);
  f.elements_ = h.elements;
  f.data_ = bytes + h.data_offset;
  return f;
}

Tensor NpyFile::read_f32() const {
  if (shape_.size() > static_cast<size_t>(Shape::kMaxDims))
    throw DataError(cat(path(), ": array has shape ", shape_str(shape_), "; at most ", Shape::kMaxDims, " dims are supported"));
  // A 0-dim array becomes [1], the library's scalar shape.
  Tensor out = Tensor::empty(shape_.empty() ? Shape{1} : Shape::from_vector(shape_), DType::F32);
  convert_to_f32(data_, dtype_, static_cast<size_t>(numel()), out.data<float>(), path());
  return out;
}

Tensor NpyFile::read_rows_f32(int64_t row_begin, int64_t row_count) const {
  if (shape_.empty() || shape_.size() > static_cast<size_t>(Shape::kMaxDims))
    throw DataError(cat(path(), ": array has shape ", shape_str(shape_), "; rows need 1 to ", Shape::kMaxDims, " dims"));
  check_rows(row_begin, row_count);  // before the allocation: rows past an empty array's end are of any width
  std::vector<int64_t> shape = shape_;
  shape[0] = row_count < 0 ? 0 : row_count;
  Tensor out = Tensor::empty(Shape::from_vector(shape), DType::F32);
  read_rows_f32(row_begin, row_count, out.data<float>());
  return out;
}

void NpyFile::check_rows(int64_t row_begin, int64_t row_count) const {
  if (shape_.empty()) throw DataError(cat(path(), ": array is a scalar; it has no rows"));
  check_row_range(path(), shape_[0], row_begin, row_count);
}

void NpyFile::read_rows_f32(int64_t row_begin, int64_t row_count, float* out) const {
  check_rows(row_begin, row_count);
  const int64_t rows = shape_[0];
  int64_t row_width = rows == 0 ? 0 : numel() / rows;
  convert_to_f32(data_ + static_cast<size_t>(row_begin * row_width) * element_size_, dtype_,
                 static_cast<size_t>(row_count * row_width), out, path(), row_begin * row_width, row_width);
}

namespace {
// Magic, version 1.0, header length and a float32 C-order header padded so the data starts at a
// multiple of 64 bytes.
void write_f32_header(AtomicFileWriter& out, const std::vector<int64_t>& shape) {
  std::string header = cat("{'descr': '<f4', 'fortran_order': False, 'shape': ", shape_str(shape), ", }");
  size_t prefix = kMagicBytes + 2 + 2;
  size_t padding = (64 - (prefix + header.size() + 1) % 64) % 64;
  header.append(padding, ' ');
  header += '\n';
  uint16_t header_bytes = static_cast<uint16_t>(header.size());
  out.write(kMagic, kMagicBytes);
  const uint8_t version[2] = {1, 0};
  out.write(version, 2);
  out.write(&header_bytes, 2);
  out.write(header);
}
}  // namespace

void write_npy(const std::string& path, const Tensor& tensor) {
  if (!tensor.defined() || tensor.dtype() != DType::F32)
    throw Error(cat("write_npy ", path, ": expected a float32 tensor, got ", tensor.defined() ? tensor.describe() : "an undefined tensor"));
  Tensor host = tensor.to(Device::CPU);
  std::vector<int64_t> shape;
  for (int i = 0; i < host.ndim(); ++i) shape.push_back(host.size(i));
  AtomicFileWriter out(path);
  write_f32_header(out, shape);
  out.write(host.raw(), host.nbytes());
  out.commit();
}

NpyRowWriter::NpyRowWriter(const std::string& path, int64_t rows, int64_t width)
    : out_(path), rows_(rows), width_(width) {
  write_f32_header(out_, {rows, width});
}

void NpyRowWriter::write_rows(const float* values, int64_t rows) {
  if (rows < 0 || written_ + rows > rows_)
    throw Error(cat("NpyRowWriter ", out_.path(), ": ", written_ + rows, " rows written of ", rows_));
  out_.write(values, sizeof(float) * static_cast<size_t>(rows * width_));
  written_ += rows;
}

void NpyRowWriter::commit() {
  if (written_ != rows_) throw Error(cat("NpyRowWriter ", out_.path(), ": ", written_, " rows written of ", rows_));
  out_.commit();
}

}  // namespace sae
