// ZIP reader (see zip_archive.h): the end record, the ZIP64 locator and record, the central
// directory, local headers, the streaming inflate of deflated entries, the CRC-32 check.
#include "io/zip_archive.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <set>

#include "tensor/error.h"

namespace sae {

namespace {

constexpr uint32_t kLocalHeader = 0x04034b50, kCentralHeader = 0x02014b50, kEndRecord = 0x06054b50;
constexpr uint32_t kZip64Locator = 0x07064b50, kZip64EndRecord = 0x06064b50;
constexpr size_t kEndRecordBytes = 22, kZip64LocatorBytes = 20, kZip64EndRecordBytes = 56;
constexpr size_t kCentralBytes = 46, kLocalBytes = 30;
constexpr uint32_t kSaturated32 = 0xFFFFFFFFu;
constexpr uint16_t kSaturated16 = 0xFFFF;
constexpr size_t kChunk = size_t(1) << 30;          // zlib counts bytes in 32 bits

uint16_t u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);  // little-endian host, as the format
  return v;
}
uint64_t u64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// Whether [begin, begin + bytes) lies inside [0, limit), without overflow.
bool inside(uint64_t begin, uint64_t bytes, uint64_t limit) { return begin <= limit && bytes <= limit - begin; }

uint32_t crc_of(const uint8_t* data, uint64_t bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  while (bytes > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(bytes, kChunk));
    crc = crc32(crc, data, static_cast<uInt>(n));
    data += n;
    bytes -= n;
  }
  return static_cast<uint32_t>(crc);
}

std::string hex32(uint32_t v) {
  char text[16];
  std::snprintf(text, sizeof text, "%08x", v);
  return text;
}

// A ZIP64 extended-information extra field (id 1) replaces, in this order, those of the entry's
// size, compressed size, local header offset and disk number that read saturated in the main
// record. Other extra fields are skipped; a field running past the extra data is an error.
void apply_zip64_extra(const uint8_t* extra, size_t bytes, uint64_t& size, uint64_t& compressed, uint64_t* offset,
                       uint32_t* disk, const std::string& where) {
  size_t at = 0;
  bool zip64 = false;
  while (at + 4 <= bytes) {
    const uint16_t id = u16(extra + at), length = u16(extra + at + 2);
    if (length > bytes - at - 4) throw DataError(cat(where, ": an extra field runs past the entry's extra data"));
    const uint8_t* field = extra + at + 4;
    if (id == 1) {
      zip64 = true;
      size_t used = 0;
      auto take = [&](size_t width) -> uint64_t {
        if (used + width > length) throw DataError(cat(where, ": the ZIP64 extra field is too short for the saturated fields"));
        const uint64_t v = width == 8 ? u64(field + used) : u32(field + used);
        used += width;
        return v;
      };
      if (size == kSaturated32) size = take(8);
      if (compressed == kSaturated32) compressed = take(8);
      if (offset && *offset == kSaturated32) *offset = take(8);
      if (disk && *disk == kSaturated16) *disk = static_cast<uint32_t>(take(4));
    }
    at += 4 + length;
  }
  if (!zip64 && (size == kSaturated32 || compressed == kSaturated32 || (offset && *offset == kSaturated32)))
    throw DataError(cat(where, ": a size or offset reads 0xFFFFFFFF but the entry has no ZIP64 extra field"));
}


}  // namespace

ZipInflater::ZipInflater(const uint8_t* in, uint64_t in_bytes, const std::string& where)
    : in_(in), left_(in_bytes), where_(where) {
  std::memset(&zs_, 0, sizeof zs_);
  if (inflateInit2(&zs_, -15) != Z_OK) throw Error(cat(where, ": cannot start zlib's inflate"));
  crc_ = crc32(0L, Z_NULL, 0);
}

ZipInflater::~ZipInflater() { inflateEnd(&zs_); }

void ZipInflater::read(uint8_t* out, size_t bytes) {
  while (bytes > 0) {
    const size_t want = std::min(bytes, kChunk);
    const size_t produced = step(out, want);
    out += produced;
    bytes -= produced;
    produced_ += produced;
    if (ended_ && bytes > 0)
      throw DataError(cat(where_, ": the deflated data ends after ", produced_, " bytes, before the declared size"));
  }
}

void ZipInflater::finish() {
  uint8_t extra = 0;
  while (!ended_)
    if (step(&extra, 1) > 0)
      throw DataError(cat(where_, ": the deflated data holds more than its declared ", produced_, " bytes"));
  if (zs_.avail_in + left_ > 0)
    throw DataError(cat(where_, ": ", zs_.avail_in + left_, " bytes after the end of the deflated data"));
}

size_t ZipInflater::step(uint8_t* out, size_t capacity) {
  if (zs_.avail_in == 0 && left_ > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(left_, kChunk));
    zs_.next_in = const_cast<Bytef*>(in_);
    zs_.avail_in = static_cast<uInt>(n);
    in_ += n;
    left_ -= n;
  }
  zs_.next_out = out;
  zs_.avail_out = static_cast<uInt>(capacity);
  const uInt in_before = zs_.avail_in;
  const int rc = inflate(&zs_, Z_NO_FLUSH);
  const size_t produced = capacity - zs_.avail_out;
  crc_ = crc32(crc_, out, static_cast<uInt>(produced));
  if (rc == Z_STREAM_END) {
    ended_ = true;
  } else if (rc == Z_NEED_DICT || rc == Z_DATA_ERROR || rc == Z_STREAM_ERROR || rc == Z_MEM_ERROR) {
    throw DataError(cat(where_, ": corrupt deflated data (zlib: ", zs_.msg ? zs_.msg : "error", ")"));
  } else if (produced == 0 && zs_.avail_in == in_before && zs_.avail_in == 0 && left_ == 0) {
    throw DataError(cat(where_, ": the deflated data is truncated (it ends after ", produced_, " bytes of output)"));
  }
  return produced;
}

ZipArchive ZipArchive::open(const std::string& path, const std::string& kind) {
  ZipArchive f;
  f.file_ = MappedFile(path);
  const uint8_t* bytes = f.file_.data();
  const uint64_t size = f.file_.size();
  auto fail = [&](const std::string& what) { throw DataError(cat(path, ": ", what)); };

  // The end-of-central-directory record: the last 22 bytes, unless a comment (up to 64 KiB) follows it.
  if (size < kEndRecordBytes) fail(cat("not ", kind, ": ", size, " bytes is too short for one"));
  uint64_t end_at = 0;
  bool found = false;
  const uint64_t lowest = size - kEndRecordBytes > 0xFFFF ? size - kEndRecordBytes - 0xFFFF : 0;
  for (uint64_t at = size - kEndRecordBytes + 1; at-- > lowest;)
    if (u32(bytes + at) == kEndRecord && at + kEndRecordBytes + u16(bytes + at + 20) == size) {
      end_at = at;
      found = true;
      break;
    }
  if (!found) fail(cat("not ", kind, ", or a truncated one: no end-of-central-directory record"));
  const uint8_t* end = bytes + end_at;
  uint64_t disk = u16(end + 4), cd_disk = u16(end + 6), entries_on_disk = u16(end + 8), entries = u16(end + 10);
  uint64_t cd_size = u32(end + 12), cd_offset = u32(end + 16);
  uint64_t cd_limit = end_at;  // the central directory ends before the records that describe it
  const bool saturated = disk == kSaturated16 || cd_disk == kSaturated16 || entries_on_disk == kSaturated16 ||
                         entries == kSaturated16 || cd_size == kSaturated32 || cd_offset == kSaturated32;
  if (end_at >= kZip64LocatorBytes && u32(end - kZip64LocatorBytes) == kZip64Locator) {
    const uint8_t* locator = end - kZip64LocatorBytes;
    const uint64_t record_at = u64(locator + 8);
    if (u32(locator + 4) != 0 || u32(locator + 16) > 1) fail("multi-disk (split) zip archives are not supported");
    if (!inside(record_at, kZip64EndRecordBytes, end_at - kZip64LocatorBytes) || u32(bytes + record_at) != kZip64EndRecord)
      fail("the ZIP64 locator does not point at a ZIP64 end-of-central-directory record");
    const uint8_t* record = bytes + record_at;
    disk = u32(record + 16);
    cd_disk = u32(record + 20);
    entries_on_disk = u64(record + 24);
    entries = u64(record + 32);
    cd_size = u64(record + 40);
    cd_offset = u64(record + 48);
    cd_limit = record_at;
  } else if (saturated) {
    fail("the end-of-central-directory record has saturated (ZIP64) fields but no ZIP64 locator");
  }
  if (disk != 0 || cd_disk != 0 || entries_on_disk != entries) fail("multi-disk (split) zip archives are not supported");
  if (!inside(cd_offset, cd_size, cd_limit))
    fail(cat("the central directory (", cd_size, " bytes at ", cd_offset, ") lies outside the file"));
  if (entries > cd_size / kCentralBytes)
    fail(cat(entries, " entries cannot fit in a central directory of ", cd_size, " bytes"));

  const uint64_t cd_end = cd_offset + cd_size;
  uint64_t at = cd_offset;
  std::set<std::string> names;
  for (uint64_t i = 0; i < entries; ++i) {
    const std::string which = cat("central directory entry ", i);
    if (!inside(at, kCentralBytes, cd_end) || u32(bytes + at) != kCentralHeader)
      fail(cat(which, ": bad signature or past the end of the central directory"));
    const uint8_t* c = bytes + at;
    const uint16_t flags = u16(c + 8), method = u16(c + 10);
    const uint32_t crc = u32(c + 16);
    uint64_t compressed = u32(c + 20), usize = u32(c + 24);
    const size_t name_bytes = u16(c + 28), extra_bytes = u16(c + 30), comment_bytes = u16(c + 32);
    uint32_t disk_start = u16(c + 34);
    uint64_t local_at = u32(c + 42);
    if (!inside(at + kCentralBytes, name_bytes + extra_bytes + comment_bytes, cd_end))
      fail(cat(which, ": its name and extra fields run past the central directory"));
    ZipEntry e;
    e.name.assign(reinterpret_cast<const char*>(c + kCentralBytes), name_bytes);
    const std::string where = cat(path, ": ", printable(e.name));
    apply_zip64_extra(c + kCentralBytes + name_bytes, extra_bytes, usize, compressed, &local_at, &disk_start, where);
    at += kCentralBytes + name_bytes + extra_bytes + comment_bytes;

    if (e.name.empty()) fail(cat(which, " has an empty name"));
    if (flags & 0x41) throw DataError(cat(where, " is encrypted (not supported)"));
    if (method != 0 && method != 8)
      throw DataError(cat(where, ": compression method ", method, " is not supported (0 stored or 8 deflated, as numpy writes)"));
    if (disk_start != 0) fail("multi-disk (split) zip archives are not supported");
    if (method == 0 && compressed != usize)
      throw DataError(cat(where, ": stored entry with compressed size ", compressed, " != size ", usize));
    // Deflate cannot expand a stream more than about 1032 times; refuse a larger claim before allocating.
    if (method == 8 && usize / kMaxDeflateRatio > compressed + 1)
      throw DataError(cat(where, ": declared size ", usize, " is more than deflate can make of ", compressed,
                          " compressed bytes"));

    // The local header: its signature, and the name, method and (without a data descriptor) CRC
    // and sizes agreeing with the central directory's.
    if (!inside(local_at, kLocalBytes, size) || u32(bytes + local_at) != kLocalHeader)
      throw DataError(cat(where, ": no local header at offset ", local_at));
    const uint8_t* l = bytes + local_at;
    const uint16_t local_flags = u16(l + 6), local_method = u16(l + 8);
    const size_t local_name = u16(l + 26), local_extra = u16(l + 28);
    if (!inside(local_at + kLocalBytes, local_name + local_extra, size))
      throw DataError(cat(where, ": the local header runs past the end of the file"));
    if (local_method != method || local_name != name_bytes ||
        std::memcmp(l + kLocalBytes, e.name.data(), name_bytes) != 0)
      throw DataError(cat(where, ": the local header disagrees with the central directory (name or method)"));
    if (!(local_flags & 0x08)) {
      uint64_t local_size = u32(l + 22), local_compressed = u32(l + 18);
      apply_zip64_extra(l + kLocalBytes + local_name, local_extra, local_size, local_compressed, nullptr, nullptr, where);
      if (u32(l + 14) != crc || local_size != usize || local_compressed != compressed)
        throw DataError(cat(where, ": the local header disagrees with the central directory (CRC or sizes)"));
    }
    e.data_offset = local_at + kLocalBytes + local_name + local_extra;
    if (!inside(e.data_offset, compressed, size))
      throw DataError(cat(where, ": its ", compressed, " bytes at offset ", e.data_offset, " run past the end of the file (",
                          size, " bytes)"));
    e.method = method;
    e.crc = crc;
    e.compressed = compressed;
    e.size = usize;
    if (!names.insert(e.name).second) throw DataError(cat(where, ": the name appears twice in the archive"));
    f.entries_.push_back(std::move(e));
  }
  return f;
}

const uint8_t* ZipArchive::stored_bytes(const ZipEntry& e) const {
  if (e.method != 0) throw DataError(cat(path(), ": ", printable(e.name), ": expected a stored (uncompressed) entry"));
  const uint8_t* bytes = file_.data() + e.data_offset;
  check_crc(e, crc_of(bytes, e.size));
  return bytes;
}

void ZipArchive::check_crc(const ZipEntry& e, uint32_t got) const {
  if (got != e.crc)
    throw DataError(cat(path(), ": ", printable(e.name), ": CRC-32 mismatch (the archive says ", hex32(e.crc),
                        ", the data gives ", hex32(got), "): the file is corrupt"));
}

}  // namespace sae
