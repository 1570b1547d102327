// .npz reader (see npz.h): the ZIP structures (end record, ZIP64 locator and record, central
// directory, local headers), the streaming inflate of deflated entries, the CRC-32 check.
#include "io/npz.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "io/float_convert.h"
#include "io/npy.h"

namespace sae {

namespace {

constexpr size_t kMaxNpyHeader = size_t(1) << 20;  // numpy itself reads at most 10000 header bytes

Tensor empty_for(const NpyHeader& h, const std::string& where) {
  if (h.shape.size() > static_cast<size_t>(Shape::kMaxDims))
    throw DataError(cat(where, ": array has ", h.shape.size(), " dims; at most ", Shape::kMaxDims, " are supported"));
  return Tensor::empty(h.shape.empty() ? Shape{1} : Shape::from_vector(h.shape), DType::F32);
}

}  // namespace

NpzFile NpzFile::open(const std::string& path) {
  NpzFile f;
  f.archive_ = std::make_unique<ZipArchive>(ZipArchive::open(path, "a .npz (zip) archive"));
  for (const ZipEntry& z : f.archive_->entries()) {
    NpzEntry e;
    static_cast<ZipEntry&>(e) = z;
    const std::string suffix = ".npy";
    e.array = z.name.size() > suffix.size() && z.name.compare(z.name.size() - suffix.size(), suffix.size(), suffix) == 0
                  ? z.name.substr(0, z.name.size() - suffix.size())
                  : z.name;
    if (f.entries_.count(e.array))
      throw DataError(cat(path, ": ", printable(e.name), ": the name appears twice in the archive"));
    f.entries_.emplace(e.array, std::move(e));
  }
  return f;
}

std::vector<std::string> NpzFile::names() const {
  std::vector<std::string> out;
  for (const auto& [name, e] : entries_) out.push_back(name);
  return out;
}

const NpzEntry& NpzFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw DataError(cat(path(), ": no array '", printable(name), "' in the archive"));
  return it->second;
}

Tensor NpzFile::read_f32(const std::string& name) const {
  const NpzEntry& e = entry(name);
  const std::string where = cat(path(), ": ", printable(e.name));
  const MappedFile& file = archive_->file();
  const uint8_t* stored = file.data() + e.data_offset;
  if (e.method == 0) {
    archive_->stored_bytes(e);  // the CRC check
    const NpyHeader h = parse_npy_header(stored, e.size, where);
    Tensor out = empty_for(h, where);
    convert_to_f32(stored + h.data_offset, h.dtype, static_cast<size_t>(h.elements), out.data<float>(), where);
    file.release_pages(e.data_offset, e.compressed);  // the array has a copy of its own now
    return out;
  }
  // Deflated: the header first, then the data inflated straight into the tensor (float32) or
  // converted block by block.
  ZipInflater z(stored, e.compressed, where);
  // Magic, version and the 2-byte length of version 1; versions 2 and 3 have a 4-byte length.
  std::vector<uint8_t> header(static_cast<size_t>(std::min<uint64_t>(e.size, 10)));
  z.read(header.data(), header.size());
  if (header.size() == 10 && (header[6] == 2 || header[6] == 3) && e.size >= 12) {
    header.resize(12);
    z.read(header.data() + 10, 2);
  }
  const size_t header_bytes = npy_header_bytes(header.data(), header.size(), e.size, where);
  if (header_bytes > kMaxNpyHeader) throw DataError(cat(where, ": .npy header of ", header_bytes, " bytes is too long"));
  const size_t have = header.size();  // <= header_bytes: npy_header_bytes needed all of them
  header.resize(header_bytes);
  z.read(header.data() + have, header_bytes - have);
  const NpyHeader h = parse_npy_header(header.data(), e.size, where);
  Tensor out = empty_for(h, where);
  float* dst = out.data<float>();
  if (h.dtype == "F32") {
    z.read(reinterpret_cast<uint8_t*>(dst), static_cast<size_t>(h.elements) * 4);
  } else {
    constexpr size_t kBlock = 1 << 16;  // elements per conversion
    std::vector<uint8_t> block(kBlock * h.element_size);
    for (int64_t done = 0; done < h.elements;) {
      const size_t n = static_cast<size_t>(std::min<int64_t>(kBlock, h.elements - done));
      z.read(block.data(), n * h.element_size);
      convert_to_f32(block.data(), h.dtype, n, dst + done, where, done);
      done += static_cast<int64_t>(n);
    }
  }
  z.finish();
  archive_->check_crc(e, z.crc());
  file.release_pages(e.data_offset, e.compressed);
  return out;
}

}  // namespace sae
