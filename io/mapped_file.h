// MappedFile: a read-only memory mapping of a whole file (POSIX mmap), released on destruction.
// Lets readers of big activation files touch only the pages they use instead of reading the
// file into RAM. Errors (missing file, directory, no permission, not a regular file) throw
// DataError naming the path and the OS reason. The file must not be truncated while mapped.
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

 private:
  void release();

  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace sae
