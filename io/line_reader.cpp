// LineReader (see line_reader.h): plain files through stdio, gzip through zlib's gz* functions
// (which also read concatenated members), zstd through its streaming decompressor.
#include "io/line_reader.h"

#include <zlib.h>
#include <zstd.h>

#include <cerrno>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <unistd.h>
#include <vector>

#include "io/mapped_file.h"
#include "tensor/error.h"

namespace sae {

namespace {

constexpr size_t kBlock = size_t(1) << 16;

enum class Compression { None, Gzip, Zstd };

// The file through open_regular_file: a FIFO, a device or a directory is refused at once, never
// waited on.
std::FILE* open_file(const std::string& path) {
  const int fd = open_regular_file(path);
  std::FILE* f = ::fdopen(fd, "rb");
  if (!f) {
    const int saved = errno;
    ::close(fd);
    throw DataError(cat("cannot open ", path, ": ", std::strerror(saved)));
  }
  return f;
}

Compression sniff(const std::string& path) {
  std::FILE* f = open_file(path);
  unsigned char magic[4] = {0, 0, 0, 0};
  const size_t n = std::fread(magic, 1, 4, f);
  std::fclose(f);
  if (n >= 2 && magic[0] == 0x1F && magic[1] == 0x8B) return Compression::Gzip;
  if (n == 4 && magic[0] == 0x28 && magic[1] == 0xB5 && magic[2] == 0x2F && magic[3] == 0xFD) return Compression::Zstd;
  return Compression::None;
}

}  // namespace

struct LineReader::Decoder {
  Compression kind = Compression::None;
  std::FILE* file = nullptr;        // plain and zstd
  gzFile gz = nullptr;              // gzip
  ZSTD_DCtx* zstd = nullptr;
  std::vector<char> input;          // zstd: compressed bytes read but not yet used
  ZSTD_inBuffer in{nullptr, 0, 0};
  bool input_done = false;
  size_t frame_left = 0;            // zstd: the decompressor's last hint, 0 when a frame just ended
  ~Decoder() {
    if (file) std::fclose(file);
    if (gz) gzclose(gz);
    if (zstd) ZSTD_freeDCtx(zstd);
  }
};

LineReader::LineReader(const std::string& path) : path_(path) { open(); }
LineReader::~LineReader() = default;

void LineReader::open() {
  auto d = std::make_unique<Decoder>();
  d->kind = sniff(path_);
  if (d->kind == Compression::Gzip) {
    d->gz = gzopen(path_.c_str(), "rb");
    if (!d->gz) throw DataError(cat("cannot open ", path_, " (gzip): ", std::strerror(errno)));
    gzbuffer(d->gz, kBlock);
  } else {
    d->file = open_file(path_);
    if (d->kind == Compression::Zstd) {
      d->zstd = ZSTD_createDCtx();
      if (!d->zstd) throw Error(cat(path_, ": cannot make a zstd decompressor"));
      d->input.resize(ZSTD_DStreamInSize());
    }
  }
  decoder_ = std::move(d);
  buffer_.clear();
  begin_ = 0;
  offset_ = 0;
}

int64_t LineReader::file_offset() const {
  switch (decoder_->kind) {
    case Compression::Gzip: return static_cast<int64_t>(gzoffset(decoder_->gz));
    case Compression::Zstd: return static_cast<int64_t>(std::ftell(decoder_->file));
    default: return offset_;
  }
}

const char* LineReader::compression() const {
  switch (decoder_->kind) {
    case Compression::Gzip: return "gzip";
    case Compression::Zstd: return "zstd";
    default: return "none";
  }
}

bool LineReader::fill() {
  // Keep the unread tail, then append one block of text.
  buffer_.erase(0, begin_);
  begin_ = 0;
  const size_t old = buffer_.size();
  Decoder& d = *decoder_;
  size_t got = 0;
  if (d.kind == Compression::None) {
    buffer_.resize(old + kBlock);
    got = std::fread(buffer_.data() + old, 1, kBlock, d.file);
    if (got < kBlock && std::ferror(d.file)) throw DataError(cat(path_, ": read error: ", std::strerror(errno)));
  } else if (d.kind == Compression::Gzip) {
    buffer_.resize(old + kBlock);
    const int n = gzread(d.gz, buffer_.data() + old, static_cast<unsigned>(kBlock));
    if (n < 0) {
      int code = 0;
      const char* message = gzerror(d.gz, &code);
      throw DataError(cat(path_, ": gzip: ", message ? message : "read error", " (at text byte ", offset_ + int64_t(old), ")"));
    }
    got = static_cast<size_t>(n);
    if (got == 0 && !gzeof(d.gz)) throw DataError(cat(path_, ": gzip: stopped before the end of the file"));
  } else {
    const size_t out_size = ZSTD_DStreamOutSize();
    buffer_.resize(old + out_size);
    ZSTD_outBuffer out{buffer_.data() + old, out_size, 0};
    while (out.pos == 0) {
      if (d.in.pos == d.in.size) {
        if (d.input_done) break;
        const size_t n = std::fread(d.input.data(), 1, d.input.size(), d.file);
        if (n < d.input.size() && std::ferror(d.file)) throw DataError(cat(path_, ": read error: ", std::strerror(errno)));
        if (n == 0) {
          d.input_done = true;
          break;
        }
        d.in = ZSTD_inBuffer{d.input.data(), n, 0};
      }
      const size_t hint = ZSTD_decompressStream(d.zstd, &out, &d.in);
      if (ZSTD_isError(hint)) throw DataError(cat(path_, ": zstd: ", ZSTD_getErrorName(hint)));
      d.frame_left = hint;
    }
    got = out.pos;
    if (got == 0 && d.input_done && d.frame_left != 0)
      throw DataError(cat(path_, ": zstd: the file ends inside a frame (truncated?)"));
  }
  buffer_.resize(old + got);
  return got > 0;
}

bool LineReader::read_line(std::string& line, int64_t max_bytes) {
  line.clear();
  size_t scanned = 0;  // bytes after begin_ already searched for '\n' (fill() keeps them at the front)
  while (true) {
    const size_t newline = buffer_.find('\n', begin_ + scanned);
    if (newline != std::string::npos) {
      line.assign(buffer_, begin_, newline - begin_);
      offset_ += static_cast<int64_t>(newline - begin_ + 1);
      begin_ = newline + 1;
      break;
    }
    scanned = buffer_.size() - begin_;
    if (static_cast<int64_t>(scanned) > max_bytes)
      throw DataError(cat(path_, ": a line at byte ", offset_, " is longer than ", max_bytes, " bytes (not a text corpus?)"));
    if (!fill()) {
      if (buffer_.size() == begin_) return false;  // the end, after a final '\n'
      line.assign(buffer_, begin_, std::string::npos);
      offset_ += static_cast<int64_t>(buffer_.size() - begin_);
      begin_ = buffer_.size();
      break;
    }
  }
  if (static_cast<int64_t>(line.size()) > max_bytes)
    throw DataError(cat(path_, ": a line at byte ", offset_ - int64_t(line.size()) - 1, " is longer than ", max_bytes,
                        " bytes (not a text corpus?)"));
  return true;
}

void LineReader::seek(int64_t offset) {
  if (offset < 0) throw DataError(cat(path_, ": cannot continue at byte ", offset));
  if (decoder_->kind == Compression::None) {
    if (std::fseek(decoder_->file, static_cast<long>(offset), SEEK_SET) != 0)
      throw DataError(cat(path_, ": cannot continue at byte ", offset));
    buffer_.clear();
    begin_ = 0;
    offset_ = offset;
    return;
  }
  open();  // compressed: from the start, reading up to the offset
  while (offset_ < offset) {
    if (buffer_.size() == begin_ && !fill())
      throw DataError(cat(path_, ": cannot continue at byte ", offset, ": the text has only ", offset_));
    const size_t take = static_cast<size_t>(std::min<int64_t>(offset - offset_, int64_t(buffer_.size() - begin_)));
    begin_ += take;
    offset_ += static_cast<int64_t>(take);
  }
}

}  // namespace sae
