// Atomic file writes (temp file + fsync + rename + directory fsync), POSIX.
#include "io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "tensor/error.h"

namespace sae {

namespace {

std::string os_reason() { return std::strerror(errno); }

std::string parent_directory(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

// Makes the rename itself durable. Some file systems do not support fsync on a directory
// (EINVAL); the rename has still happened there, so that case is not an error.
void sync_directory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw DataError(cat("cannot open directory ", dir, " to sync it: ", os_reason()));
  int rc = ::fsync(fd);
  int saved = errno;
  ::close(fd);
  if (rc != 0 && saved != EINVAL) {
    errno = saved;
    throw DataError(cat("cannot sync directory ", dir, ": ", os_reason()));
  }
}


AtomicFileWriter::AtomicFileWriter(const std::string& path) : path_(path), temp_path_(path + ".tmp") {
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw DataError(cat("cannot create ", temp_path_, " (to write ", path_, "): ", os_reason()));
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

void AtomicFileWriter::write(const void* data, size_t bytes) {
  if (fd_ < 0) throw Error(cat("AtomicFileWriter: write to ", path_, " after commit"));
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    ssize_t n = ::write(fd_, p, bytes);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw DataError(cat("cannot write ", temp_path_, " (to write ", path_, "): ", os_reason()));
    }
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

void AtomicFileWriter::commit() {
  if (fd_ < 0) throw Error(cat("AtomicFileWriter: ", path_, " committed twice"));
  if (::fsync(fd_) != 0) throw DataError(cat("cannot sync ", temp_path_, ": ", os_reason()));
  int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) throw DataError(cat("cannot close ", temp_path_, ": ", os_reason()));
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0)
    throw DataError(cat("cannot rename ", temp_path_, " to ", path_, ": ", os_reason()));
  committed_ = true;
  sync_directory(parent_directory(path_));
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  AtomicFileWriter out(path);
  out.write(bytes);
  out.commit();
}

}  // namespace sae
