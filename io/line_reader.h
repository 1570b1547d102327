// LineReader: the lines of a text file, plain or compressed with gzip or zstd (recognised by their
// magic bytes, whatever the name), decompressed block by block: the file is never read whole.
// offset() counts bytes of the (decompressed) text; seek(offset) jumps there, which for a
// compressed file means reading again from its start (neither format can jump). Errors are
// DataErrors naming the file.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

namespace sae {

class LineReader {
 public:
  explicit LineReader(const std::string& path);
  ~LineReader();
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // The next line without its '\n'; false at the end of the text. A line longer than max_bytes is a
  // DataError (a file without line ends read as one line).
  bool read_line(std::string& line, int64_t max_bytes);
  int64_t offset() const { return offset_; }  // bytes of text before the next line
  // How far into the file itself reading has got (the compressed bytes consumed so far, about;
  // = offset() for a plain file): for progress against the file's size.
  int64_t file_offset() const;
  void seek(int64_t offset);
  const std::string& path() const { return path_; }
  const char* compression() const;  // "none", "gzip" or "zstd"

 private:
  struct Decoder;
  bool fill();  // more text into the buffer; false at the end
  void open();

  std::string path_;
  std::unique_ptr<Decoder> decoder_;
  std::string buffer_;
  size_t begin_ = 0;    // next unread byte of buffer_
  int64_t offset_ = 0;  // of buffer_[begin_] in the text
};

}  // namespace sae
