// Safetensors reader (mmap + header validation + conversion to float32) and atomic writer.
#include "io/safetensors.h"

#include <algorithm>
#include <cmath>
#include <climits>
#include <cstring>

#include "io/atomic_file.h"
#include "io/float_convert.h"
#include "io/json.h"

namespace sae {

namespace {

// The reference implementation refuses headers above 100 MB.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// JSON values in a header: a tensor takes about 8 (name, dtype, shape dims, offsets); a real
// model has thousands of tensors.
constexpr size_t kMaxHeaderValues = size_t(1) << 21;

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// A JSON number that must be a non-negative integer; DataError naming where it is otherwise.
uint64_t read_count(const Json& value, const std::string& path, const std::string& where) {
  if (!value.is_number()) throw DataError(cat(path, ": ", where, " must be a non-negative integer, found a ", value.type_name()));
  double x = value.as_number();
  if (x > 9007199254740992.0)
    throw DataError(cat(path, ": ", where, " is ", value.dump(), ", beyond 2^53 (no file is that large; corrupt header?)"));
  if (x < 0 || x != std::floor(x))
    throw DataError(cat(path, ": ", where, " must be a non-negative integer, found ", value.dump()));
  return static_cast<uint64_t>(x);
}

SafetensorsEntry parse_entry(const std::string& name, const Json& info, const std::string& path) {
  std::string where = cat("tensor '", printable(name), "'");
  if (!info.is_object()) throw DataError(cat(path, ": ", where, " must be an object with dtype, shape and data_offsets, found a ", info.type_name()));
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!info.has(key)) throw DataError(cat(path, ": ", where, " has no \"", key, "\""));

  SafetensorsEntry e;
  e.name = name;
  const Json& dtype = info.at("dtype");
  if (!dtype.is_string()) throw DataError(cat(path, ": ", where, ": dtype must be a string, found a ", dtype.type_name()));
  e.dtype = dtype.as_string();
  size_t element_size = safetensors_dtype_size(e.dtype);
  if (element_size == 0)
    throw DataError(cat(path, ": ", where, " has unknown dtype \"", printable(e.dtype),
                        "\" (expected one of F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL, F8_E4M3, F8_E5M2)"));

  const Json& shape = info.at("shape");
  if (!shape.is_array()) throw DataError(cat(path, ": ", where, ": shape must be an array, found a ", shape.type_name()));
  // The element count: 0 when any dimension is 0, otherwise the product, which must fit int64
  // (so that every later signed count is safe).
  uint64_t numel = 1;
  bool empty = false;
  for (size_t i = 0; i < shape.size(); ++i) {
    const uint64_t dim = read_count(shape.at(i), path, cat(where, " shape[", i, "]"));
    e.shape.push_back(static_cast<int64_t>(dim));
    empty = empty || dim == 0;
  }
  for (int64_t dim : e.shape)
    if (!empty && (__builtin_mul_overflow(numel, static_cast<uint64_t>(dim), &numel) || numel > uint64_t(INT64_MAX)))
      throw DataError(cat(path, ": ", where, " shape ", shape_str(e.shape), " is too large"));
  if (empty) numel = 0;
  e.elements = static_cast<int64_t>(numel);
  uint64_t expected_bytes;
  if (__builtin_mul_overflow(numel, element_size, &expected_bytes)) throw DataError(cat(path, ": ", where, " shape ", shape.dump(), " is too large"));

  const Json& offsets = info.at("data_offsets");
  if (!offsets.is_array() || offsets.size() != 2)
    throw DataError(cat(path, ": ", where, ": data_offsets must be [begin, end], found ", offsets.dump()));
  e.begin = read_count(offsets.at(0), path, cat(where, " data_offsets[0]"));
  e.end = read_count(offsets.at(1), path, cat(where, " data_offsets[1]"));
  if (e.end < e.begin) throw DataError(cat(path, ": ", where, " data_offsets [", e.begin, ", ", e.end, "] end before begin"));
  e.bytes = e.end - e.begin;
  if (e.bytes != expected_bytes)
    throw DataError(cat(path, ": ", where, " is ", e.dtype, shape_str(e.shape), " = ", expected_bytes, " bytes, but data_offsets [",
                        e.begin, ", ", e.end, "] span ", e.bytes, " bytes"));
  return e;
}

// What convert_to_f32 names in its one error, a float64 beyond float32's range ("" for other dtypes,
// which cannot have one: the string is made only where it can be needed).
std::string float64_where(const std::string& path, const SafetensorsEntry& e, const std::string& name) {
  return e.dtype == "F64" ? cat(path, ": tensor '", printable(name), "'") : std::string();
}

}  // namespace

size_t safetensors_dtype_size(const std::string& dtype) {
  static const std::map<std::string, size_t> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"I16", 2}, {"U16", 2}, {"F16", 2},
      {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4},     {"I64", 8},     {"U64", 8}, {"F64", 8},
  };
  auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.file_ = MappedFile(path);
  const uint8_t* bytes = f.file_.data();
  uint64_t file_size = f.file_.size();

  if (file_size < 8) throw DataError(cat(path, ": not a safetensors file: ", file_size, " bytes, too short for the 8-byte header length"));
  uint64_t header_bytes;
  std::memcpy(&header_bytes, bytes, 8);  // little-endian host (float_convert.cpp asserts it)
  if (header_bytes > kMaxHeaderBytes)
    throw DataError(cat(path, ": safetensors header length ", header_bytes, " is above the 100 MB limit (corrupt or not a safetensors file)"));
  if (header_bytes > file_size - 8)
    throw DataError(cat(path, ": safetensors header length ", header_bytes, " runs past the end of the file (", file_size,
                        " bytes; truncated or not a safetensors file)"));

  std::string text(reinterpret_cast<const char*>(bytes + 8), header_bytes);
  // The header must be an object: refuse anything else before parsing it (a large array would
  // otherwise be built whole first). Its values are capped well above what real files hold.
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos || text[first] != '{')
    throw DataError(cat(path, ": safetensors header must be a JSON object (it does not start with '{')"));
  Json header;
  try {
    header = Json::parse(text, kMaxHeaderValues);
  } catch (const DataError& e) {
    throw DataError(cat(path, ": safetensors header is not valid JSON: ", e.what()));
  }
  if (!header.is_object()) throw DataError(cat(path, ": safetensors header must be a JSON object, found a ", header.type_name()));

  const uint8_t* data_region = bytes + 8 + header_bytes;
  uint64_t data_size = file_size - 8 - header_bytes;
  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (value.is_null()) continue;
      if (!value.is_object()) throw DataError(cat(path, ": __metadata__ must be an object of strings, found a ", value.type_name()));
      for (const auto& [key, text_value] : value.items()) {
        if (!text_value.is_string())
          throw DataError(cat(path, ": __metadata__ value for \"", printable(key), "\" must be a string, found a ",
                              text_value.type_name()));
        f.metadata_[key] = text_value.as_string();
      }
      continue;
    }
    SafetensorsEntry e = parse_entry(name, value, path);
    if (e.end > data_size)
      throw DataError(cat(path, ": tensor '", printable(name), "' data_offsets [", e.begin, ", ", e.end, "] run past the data region (", data_size,
                          " bytes; truncated file?)"));
    e.data = data_region + e.begin;
    by_offset.push_back(&(f.entries_[name] = std::move(e)));
  }

  // The tensors must tile the data region: sorted by offset, each starts where the last ended.
  std::sort(by_offset.begin(), by_offset.end(), [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t expected_begin = 0;
  const SafetensorsEntry* previous = nullptr;
  for (const SafetensorsEntry* e : by_offset) {
    if (e->begin < expected_begin)
      throw DataError(cat(path, ": tensor '", printable(e->name), "' data_offsets [", e->begin, ", ", e->end, "] overlap tensor '",
                          printable(previous->name),
                          "' [", previous->begin, ", ", previous->end, "]"));
    if (e->begin > expected_begin)
      throw DataError(cat(path, ": tensor '", printable(e->name), "' data_offsets [", e->begin, ", ", e->end,
                          "] leave a gap: expected it to begin at ",
                          expected_begin));
    expected_begin = e->end;
    previous = e;
  }
  if (expected_begin != data_size)
    throw DataError(cat(path, ": the tensors cover ", expected_begin, " bytes of the data region but it has ", data_size,
                        " (extra bytes at the end of the file)"));
  return f;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& item : entries_) out.push_back(item.first);
  return out;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    std::string have;
    for (const auto& item : entries_) have += (have.empty() ? "" : ", ") + item.first;
    throw DataError(cat(path(), ": no tensor named '", printable(name), "' (has: ", have.empty() ? "none" : printable(have, 300), ")"));
  }
  return it->second;
}

const SafetensorsEntry& SafetensorsFile::float_entry(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  if (!is_float_dtype(e.dtype)) throw DataError(cat(path(), ": tensor '", name, "' is ", e.dtype, ", expected F32, F16, BF16 or F64"));
  return e;
}

Tensor SafetensorsFile::read_f32(const std::string& name) const {
  const SafetensorsEntry& e = float_entry(name);
  if (e.shape.size() > static_cast<size_t>(Shape::kMaxDims))
    throw DataError(cat(path(), ": tensor '", name, "' has shape ", shape_str(e.shape), "; at most ", Shape::kMaxDims, " dims are supported"));
  // A 0-dim entry becomes [1], the library's scalar shape.
  Tensor out = Tensor::empty(e.shape.empty() ? Shape{1} : Shape::from_vector(e.shape), DType::F32);
  // Converted 64 MiB of the file at a time, each part's pages dropped from the mapping once copied:
  // a multi-GB weight is never held twice (the copy and the mapped file).
  const size_t element_size = safetensors_dtype_size(e.dtype), total = static_cast<size_t>(e.numel());
  const size_t part = std::max<size_t>(1, (size_t(64) << 20) / element_size);
  const size_t offset = static_cast<size_t>(static_cast<const uint8_t*>(e.data) - file_.data());
  const std::string where = float64_where(path(), e, name);
  for (size_t first = 0; first < total; first += part) {
    const size_t count = std::min(part, total - first);
    convert_to_f32(static_cast<const uint8_t*>(e.data) + first * element_size, e.dtype, count,
                   out.data<float>() + first, where, static_cast<int64_t>(first));
    file_.release_pages(offset + first * element_size, count * element_size);
  }
  return out;
}

Tensor SafetensorsFile::read_rows_f32(const std::string& name, int64_t row_begin, int64_t row_count) const {
  const SafetensorsEntry& e = float_entry(name);
  if (e.shape.empty() || e.shape.size() > static_cast<size_t>(Shape::kMaxDims))
    throw DataError(cat(path(), ": tensor '", name, "' has shape ", shape_str(e.shape), "; rows need 1 to ", Shape::kMaxDims, " dims"));
  // Before the allocation: rows past an empty tensor's end are of any width.
  check_row_range(cat(path(), ": tensor '", name, "'"), e.shape[0], row_begin, row_count);
  std::vector<int64_t> shape = e.shape;
  shape[0] = row_count < 0 ? 0 : row_count;
  Tensor out = Tensor::empty(Shape::from_vector(shape), DType::F32);
  read_rows_f32(name, row_begin, row_count, out.data<float>());
  return out;
}

void SafetensorsFile::read_rows_f32(const std::string& name, int64_t row_begin, int64_t row_count, float* out) const {
  const SafetensorsEntry& e = float_entry(name);
  if (e.shape.empty()) throw DataError(cat(path(), ": tensor '", name, "' is a scalar; it has no rows"));
  const int64_t rows = e.shape[0];
  check_row_range(cat(path(), ": tensor '", name, "'"), rows, row_begin, row_count);
  int64_t row_width = rows == 0 ? 0 : e.numel() / rows;
  size_t element_size = safetensors_dtype_size(e.dtype);
  const uint8_t* src = static_cast<const uint8_t*>(e.data) + static_cast<size_t>(row_begin * row_width) * element_size;
  convert_to_f32(src, e.dtype, static_cast<size_t>(row_count * row_width), out, float64_where(path(), e, name),
                 row_begin * row_width, row_width);
}

std::vector<int64_t> SafetensorsFile::read_i64(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  size_t n = static_cast<size_t>(e.numel());
  std::vector<int64_t> out(n);
  const uint8_t* src = static_cast<const uint8_t*>(e.data);
  if (e.dtype == "I64") {
    if (n > 0) std::memcpy(out.data(), src, n * 8);
  } else if (e.dtype == "I32") {
    for (size_t i = 0; i < n; ++i) {
      int32_t value;
      std::memcpy(&value, src + 4 * i, 4);
      out[i] = value;
    }
  } else {
    throw DataError(cat(path(), ": tensor '", name, "' is ", e.dtype, ", expected I32 or I64"));
  }
  return out;
}

SafetensorsLayout safetensors_layout(std::vector<SafetensorsSpec> tensors,
                                     const std::map<std::string, std::string>& metadata, const std::string& path) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    const SafetensorsSpec& t = tensors[i];
    if (t.name == "__metadata__") throw Error(cat("write_safetensors ", path, ": '__metadata__' is reserved, not a tensor name"));
    for (size_t j = 0; j < i; ++j)
      if (tensors[j].name == t.name) throw Error(cat("write_safetensors ", path, ": tensor name '", t.name, "' given twice"));
    if (safetensors_dtype_size(t.dtype) == 0) throw Error(cat("write_safetensors ", path, ": unknown dtype '", t.dtype, "'"));
  }
  // As the reference writer orders them: by dtype, in the reverse of its Dtype enum's order (I64
  // before F64, BF16 before F16), then by name.
  static const std::vector<std::string> kDtypeOrder = {"BOOL", "U8",  "I8",  "F8_E5M2", "F8_E4M3", "I16", "U16", "F16",
                                                      "BF16", "I32", "U32", "F32", "F64",     "I64",     "U64"};
  const auto rank = [](const std::string& dtype) {
    return std::find(kDtypeOrder.begin(), kDtypeOrder.end(), dtype) - kDtypeOrder.begin();
  };
  std::stable_sort(tensors.begin(), tensors.end(), [&](const SafetensorsSpec& a, const SafetensorsSpec& b) {
    const auto ra = rank(a.dtype), rb = rank(b.dtype);
    return ra != rb ? ra > rb : a.name < b.name;
  });
  Json header = Json::object();
  if (!metadata.empty()) {
    Json& meta = header["__metadata__"];
    meta = Json::object();
    for (const auto& [key, value] : metadata) meta[key] = Json(value);
  }
  SafetensorsLayout layout;
  uint64_t offset = 0;
  for (const SafetensorsSpec& t : tensors) {
    uint64_t bytes = safetensors_dtype_size(t.dtype);
    for (int64_t d : t.shape) bytes *= static_cast<uint64_t>(d);
    Json info = Json::object();
    info["dtype"] = Json(t.dtype);
    Json shape = Json::array();
    for (int64_t d : t.shape) shape.push_back(Json(d));
    info["shape"] = shape;
    Json offsets = Json::array();
    offsets.push_back(Json(offset));
    offsets.push_back(Json(offset + bytes));
    info["data_offsets"] = offsets;
    layout.order.push_back(t.name);
    layout.begin[t.name] = offset;
    offset += bytes;
    header[t.name] = info;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_bytes = text.size();
  layout.header.assign(reinterpret_cast<const char*>(&header_bytes), 8);
  layout.header += text;
  for (auto& [name, begin] : layout.begin) begin += layout.header.size();
  layout.file_bytes = layout.header.size() + offset;
  return layout;
}

void write_safetensors_streamed(
    const std::string& path, const std::vector<SafetensorsSpec>& specs, const std::map<std::string, std::string>& metadata,
    const std::function<void(const std::string& name, const SafetensorsSink& write)>& write_tensor) {
  const SafetensorsLayout layout = safetensors_layout(specs, metadata, path);
  std::map<std::string, const SafetensorsSpec*> by_name;
  for (const SafetensorsSpec& spec : specs) by_name[spec.name] = &spec;
  AtomicFileWriter out(path);
  out.write(layout.header);
  for (const std::string& name : layout.order) {
    const SafetensorsSpec& t = *by_name.at(name);
    uint64_t expected = safetensors_dtype_size(t.dtype), written = 0;
    for (int64_t d : t.shape) expected *= static_cast<uint64_t>(d);
    // A piece past the tensor's size is refused before it is written (the next tensor's bytes would move).
    write_tensor(name, [&](const void* data, size_t bytes) {
      written += bytes;
      if (written > expected)
        throw Error(cat("write_safetensors ", path, ": tensor '", t.name, "' has more than ", expected,
                        " bytes for shape ", shape_str(t.shape), " of ", t.dtype));
      out.write(data, bytes);
    });
    if (written != expected)
      throw Error(cat("write_safetensors ", path, ": tensor '", t.name, "' has ", written, " bytes for shape ",
                      shape_str(t.shape), " of ", t.dtype));
  }
  out.commit();
}

void write_safetensors_raw(const std::string& path, std::vector<RawTensor> tensors,
                           const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsSpec> specs;
  std::map<std::string, std::string*> bytes;
  for (RawTensor& t : tensors) {
    specs.push_back({t.name, t.dtype, t.shape});
    bytes[t.name] = &t.bytes;
  }
  write_safetensors_streamed(path, specs, metadata, [&](const std::string& name, const SafetensorsSink& write) {
    const std::string& b = *bytes.at(name);
    write(b.data(), b.size());
  });
}

namespace {
// The safetensors name of a tensor's dtype (its bytes are written as they are held).
std::string safetensors_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::I32: return "I32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
  }
  throw Error(cat("safetensors: no name for dtype ", dtype_name(dtype)));
}
}  // namespace

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // One tensor's bytes at a time (a checkpoint of 2^20 latents holds gigabytes: no copy of them all).
  std::vector<SafetensorsSpec> specs;
  std::map<std::string, const Tensor*> by_name;
  for (const auto& [name, tensor] : tensors) {
    if (!tensor.defined()) throw Error(cat("write_safetensors ", path, ": tensor '", name, "' is undefined"));
    SafetensorsSpec spec{name, safetensors_dtype_name(tensor.dtype()), {}};
    for (int i = 0; i < tensor.ndim(); ++i) spec.shape.push_back(tensor.size(i));
    specs.push_back(std::move(spec));
    by_name[name] = &tensor;
  }
  write_safetensors_streamed(path, specs, metadata, [&](const std::string& name, const SafetensorsSink& write) {
    const Tensor& t = *by_name.at(name);
    if (t.device() == Device::CPU) {
      write(t.raw(), t.nbytes());
      return;
    }
    constexpr int64_t kBlockBytes = int64_t(64) << 20;
    const int64_t rows = t.ndim() == 0 ? 1 : t.size(0);
    const int64_t row_bytes = rows > 0 ? int64_t(t.nbytes()) / rows : 1;
    if (t.ndim() == 0 || int64_t(t.nbytes()) <= kBlockBytes || row_bytes == 0) {
      const Tensor host = t.to(Device::CPU);
      write(host.raw(), host.nbytes());
      return;
    }
    const int64_t block = std::max<int64_t>(1, kBlockBytes / row_bytes);
    for (int64_t r0 = 0; r0 < rows; r0 += block) {
      const Tensor host = t.slice_rows(r0, std::min(rows, r0 + block)).to(Device::CPU);
      write(host.raw(), host.nbytes());
    }
  });
}

}  // namespace sae
