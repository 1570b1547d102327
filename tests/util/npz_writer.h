// A hand-rolled .npz (zip of .npy) writer for the tests of the .npz reader (tests/io/test_npz.cpp)
// and of the programs reading a Gemma Scope params.npz (tests/experiments/test_cli_gemma_scope.cpp):
// entries stored or deflated (zlib, raw deflate), local headers as numpy writes them (ZIP64 extra
// field, sizes 0xFFFFFFFF in the main record), optionally a ZIP64 end record, so that tests can
// build well-formed archives numpy would not (float16, a ZIP64 end record) and then break them
// byte by byte. Written from the ZIP specification (APPNOTE.TXT), independently of io/npz.cpp.
#pragma once
#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace sae::testing {

inline std::string le16(uint32_t v) { return std::string{char(v & 0xFF), char((v >> 8) & 0xFF)}; }
inline std::string le32(uint32_t v) { return le16(v & 0xFFFF) + le16(v >> 16); }
inline std::string le64(uint64_t v) { return le32(uint32_t(v)) + le32(uint32_t(v >> 32)); }

// A .npy version 1.0: the header dict (descr, C order, shape as Python writes it, e.g. "(2, 3)" or
// "(3,)"), padded with spaces and '\n' to a multiple of 64 bytes, then `data` as given.
inline std::string npy_bytes(const std::string& descr, const std::string& shape, const std::string& data) {
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  const size_t prefix = 10;
  header.append((64 - (prefix + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  return std::string("\x93NUMPY\x01\x00", 8) + le16(uint32_t(header.size())) + header + data;
}

template <typename T>
std::string bytes_of(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

// A float32 .npy of `values` with `shape` (Python tuple text).
inline std::string npy_f32(const std::string& shape, const std::vector<float>& values) {
  return npy_bytes("<f4", shape, bytes_of(values));
}

inline std::string raw_deflate(const std::string& data) {
  z_stream zs;
  std::memset(&zs, 0, sizeof zs);
  if (deflateInit2(&zs, 9, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK) throw std::runtime_error("deflateInit2");
  std::string out(deflateBound(&zs, uLong(data.size())) + 16, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = uInt(data.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = uInt(out.size());
  if (deflate(&zs, Z_FINISH) != Z_STREAM_END) throw std::runtime_error("deflate");
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

inline uint32_t crc32_of(const std::string& data) {
  return uint32_t(crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(data.data()), uInt(data.size())));
}

struct ZipMember {
  std::string name;  // e.g. "W_enc.npy"
  std::string data;  // the bytes of the file (a .npy)
  int method = 0;    // 0 stored, 8 deflated (other values: written as stored bytes under that method)
};

struct ZipOptions {
  bool zip64_end = false;  // a ZIP64 end record and locator, the end record's fields saturated
  std::string comment;     // the archive comment after the end record
};

// The archive's bytes: each entry's local header (numpy's layout: version 45, sizes 0xFFFFFFFF and
// a ZIP64 extra field with both sizes) and data, the central directory (plain 32-bit fields), the
// end record.
inline std::string make_zip(const std::vector<ZipMember>& entries, const ZipOptions& options = {}) {
  std::string out, central;
  for (const ZipMember& e : entries) {
    const std::string stored = e.method == 8 ? raw_deflate(e.data) : e.data;
    const uint32_t crc = crc32_of(e.data), offset = uint32_t(out.size());
    out += le32(0x04034b50) + le16(45) + le16(0) + le16(uint32_t(e.method)) + le16(0) + le16(0x21) + le32(crc) +
           le32(0xFFFFFFFF) + le32(0xFFFFFFFF) + le16(uint32_t(e.name.size())) + le16(20) + e.name + le16(1) + le16(16) +
           le64(e.data.size()) + le64(stored.size());
    out += stored;
    central += le32(0x02014b50) + le16(45) + le16(45) + le16(0) + le16(uint32_t(e.method)) + le16(0) + le16(0x21) +
               le32(crc) + le32(uint32_t(stored.size())) + le32(uint32_t(e.data.size())) +
               le16(uint32_t(e.name.size())) + le16(0) + le16(0) + le16(0) + le16(0) + le32(0x01800000) + le32(offset) +
               e.name;
  }
  const uint64_t cd_offset = out.size(), cd_size = central.size(), count = entries.size();
  out += central;
  if (options.zip64_end) {
    const uint64_t record_at = out.size();
    out += le32(0x06064b50) + le64(44) + le16(45) + le16(45) + le32(0) + le32(0) + le64(count) + le64(count) +
           le64(cd_size) + le64(cd_offset);
    out += le32(0x07064b50) + le32(0) + le64(record_at) + le32(1);
    out += le32(0x06054b50) + le16(0xFFFF) + le16(0xFFFF) + le16(0xFFFF) + le16(0xFFFF) + le32(0xFFFFFFFF) +
           le32(0xFFFFFFFF) + le16(uint32_t(options.comment.size())) + options.comment;
  } else {
    out += le32(0x06054b50) + le16(0) + le16(0) + le16(uint32_t(count)) + le16(uint32_t(count)) +
           le32(uint32_t(cd_size)) + le32(uint32_t(cd_offset)) + le16(uint32_t(options.comment.size())) +
           options.comment;
  }
  return out;
}

// Where the n-th (0-based) occurrence of a 4-byte signature starts in `zip`; npos when absent.
inline size_t find_signature(const std::string& zip, uint32_t signature, int n = 0) {
  const std::string sig = le32(signature);
  size_t at = zip.find(sig);
  while (at != std::string::npos && n-- > 0) at = zip.find(sig, at + 1);
  return at;
}

inline void put_le32(std::string& bytes, size_t at, uint32_t v) { bytes.replace(at, 4, le32(v)); }
inline void put_le16(std::string& bytes, size_t at, uint32_t v) { bytes.replace(at, 2, le16(v)); }

}  // namespace sae::testing
