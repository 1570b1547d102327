// Reader of ZIP archives, the container of NumPy's .npz (io/npz.h) and PyTorch's torch.save files
// (io/torch_pickle.h). The archive is memory-mapped and checked when opened: the
// end-of-central-directory record (and, when a field is saturated or a locator is present, the
// ZIP64 locator and record), one disk only, the central directory inside the file, each entry's
// ZIP64 extra field (numpy writes entries with force_zip64, so sizes may read 0xFFFFFFFF in the main
// record), its local header (signature, name, method and CRC agreeing with the central directory),
// its data inside the file, no duplicate names, no encryption, method 0 (stored, compressed size =
// size) or 8 (deflate, with a declared size that deflate can produce from the compressed bytes: at
// most 1032 times them, checked before anything is allocated). Every violation is a one-line
// DataError naming the file (and the entry).
#pragma once
#include <zlib.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "io/mapped_file.h"

namespace sae {

struct ZipEntry {
  std::string name;          // as stored, e.g. "W_enc.npy" or "archive/data/0"
  int method = 0;            // 0 stored, 8 deflated
  uint32_t crc = 0;          // CRC-32 of the uncompressed bytes
  uint64_t compressed = 0;   // bytes in the archive
  uint64_t size = 0;         // bytes once uncompressed
  uint64_t data_offset = 0;  // where the entry's bytes start in the file
};

class ZipArchive {
 public:
  // `kind` names the format in the message of a file that is no archive at all ("a .npz (zip) archive").
  static ZipArchive open(const std::string& path, const std::string& kind);

  const std::string& path() const { return file_.path(); }
  const MappedFile& file() const { return file_; }
  const std::vector<ZipEntry>& entries() const { return entries_; }  // in the central directory's order
  // A stored entry's bytes, after their CRC-32 is checked (DataError for a deflated entry or a bad CRC).
  const uint8_t* stored_bytes(const ZipEntry& e) const;
  // DataError "PATH: NAME: CRC-32 mismatch ..." unless `got` is the entry's CRC.
  void check_crc(const ZipEntry& e, uint32_t got) const;

 private:
  ZipArchive() = default;
  MappedFile file_;
  std::vector<ZipEntry> entries_;
};

// Deflate's largest expansion: a stream of c bytes inflates to at most about 1032 c bytes.
constexpr uint64_t kMaxDeflateRatio = 1032;

// Streams a raw deflate stream (ZIP method 8) of known compressed size, output checked against the
// declared size and its CRC-32 accumulated.
class ZipInflater {
 public:
  ZipInflater(const uint8_t* in, uint64_t in_bytes, const std::string& where);
  ~ZipInflater();
  ZipInflater(const ZipInflater&) = delete;
  ZipInflater& operator=(const ZipInflater&) = delete;

  // Exactly `bytes` bytes of output into out.
  void read(uint8_t* out, size_t bytes);
  // After the declared size: the stream must end here, with all its input used.
  void finish();
  uint32_t crc() const { return static_cast<uint32_t>(crc_); }

 private:
  size_t step(uint8_t* out, size_t capacity);  // one call of inflate into out[0, capacity): bytes produced

  z_stream zs_;
  const uint8_t* in_;
  uint64_t left_;  // compressed bytes not yet given to zlib
  std::string where_;
  uLong crc_ = 0;
  uint64_t produced_ = 0;
  bool ended_ = false;
};

}  // namespace sae
