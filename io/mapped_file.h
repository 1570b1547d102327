// MappedFile: a read-only memory mapping of a whole file (POSIX mmap), released on destruction.
// Lets readers of big activation files touch only the pages they use instead of reading the
// file into RAM. Errors (missing file, directory, no permission, not a regular file) throw
// DataError naming the path and the OS reason. The file must not be truncated while mapped: a
// program that calls report_truncated_mappings ends then with one line naming the file (exit 1)
// instead of dying of SIGBUS.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace sae {

class MappedFile {
 public:
  MappedFile() = default;  // maps nothing
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }  // nullptr for an empty file
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Tells the kernel whether reads will be scattered (madvise MADV_RANDOM: no read-ahead around
  // each page touched; for shuffled batches and sampling from multi-GB files) or not (MADV_NORMAL).
  // A hint; never fails.
  void advise_random(bool random) const;
  // Drops the pages of bytes [begin, begin + bytes) from this process's memory (madvise
  // MADV_DONTNEED; whole pages inside the range only): they are read from the file again if touched.
  // For data converted once into a copy of its own (model weights). A hint; never fails.
  void release_pages(size_t begin, size_t bytes) const;

 private:
  void release();

  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  int slot_ = -1;  // its entry in the table the SIGBUS handler reads (-1: none)
};

// The first `bytes` bytes of a regular file (fewer when it is shorter), to tell what it is by its
// magic; refused as open_regular_file refuses.
std::string read_file_head(const std::string& path, size_t bytes);

// Installs a SIGBUS handler for the process: a read of a mapped file past its end (the file was
// truncated or replaced by another program while mapped) writes "<program>: error: PATH: ..." as one
// line on stderr and exits with status 1; any other SIGBUS keeps the default action. The mappings
// alive are kept in a fixed table of 256 (more are mapped but not named).
void report_truncated_mappings(const char* program);

// Opens `path` read-only after checking that it is a regular file, and returns the descriptor.
// A FIFO, a device, a socket or a directory is refused at once (a FIFO is opened without blocking
// and never read), with the one message every program gives for it: "cannot read PATH: it is a
// FIFO (named pipe), not a regular file". DataError naming the path and the OS reason otherwise.
int open_regular_file(const std::string& path);

// The whole of a small file (a config, a cfg.json, a CSV) as bytes, read through a MappedFile, so
// a FIFO, a device or a directory is refused instead of blocking or being read forever. DataError
// naming the path when the file is larger than max_bytes.
std::string read_small_file(const std::string& path, size_t max_bytes = size_t(64) << 20);

}  // namespace sae
