// FileLock (see file_lock.h).
#include "io/file_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>

#include "tensor/error.h"

namespace sae {

namespace {
constexpr size_t kPidWidth = 20;  // pids are at most 7 digits (pid_max 4194304); room to spare
}  // namespace

FileLock::FileLock(const std::string& path) : FileLock(path, {}) {}

FileLock::FileLock(const std::string& path, const std::function<void()>& between) {
  const auto open_path = [&] { return ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644); };
  for (int attempt = 0;; ++attempt) {
    fd_ = open_path();
    if (fd_ < 0 && errno == ENOENT && attempt > 0) {  // the holder that gave up removed the folder too
      std::error_code ec;
      std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
      fd_ = open_path();
    }
    if (fd_ < 0) throw DataError(cat("cannot create the lock file ", path, ": ", std::strerror(errno)));
    if (attempt == 0 && between) between();
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int saved = errno;
      char holder[32] = {};
      const ssize_t n = ::pread(fd_, holder, sizeof holder - 1, 0);
      ::close(fd_);
      fd_ = -1;
      std::string pid = n > 0 ? std::string(holder, size_t(n)) : "";
      pid.erase(pid.find_last_not_of(' ') + 1);
      if (saved == EWOULDBLOCK)
        throw DataError(cat(path, ": another process (pid ", !pid.empty() ? printable(pid) : "unknown",
                            ") is running in this folder; wait for it to finish or use another --out"));
      throw DataError(cat("cannot lock ", path, ": ", std::strerror(saved)));
    }
    // Held: is it still the file the path names (not one removed between the open and the lock)?
    struct stat held {}, named {};
    if (::fstat(fd_, &held) == 0 && ::stat(path.c_str(), &named) == 0 && held.st_dev == named.st_dev &&
        held.st_ino == named.st_ino)
      break;
    ::close(fd_);
    fd_ = -1;
    if (attempt == 100)
      throw DataError(cat("cannot lock ", path, ": another process keeps removing it as it is locked"));
  }
  // The pid in a fixed width, written over the last holder's in one write: a process that reads it
  // meanwhile never sees an empty file.
  std::string pid = std::to_string(::getpid());
  pid.resize(kPidWidth, ' ');
  (void)!::pwrite(fd_, pid.data(), pid.size(), 0);
  (void)!::ftruncate(fd_, kPidWidth);
}

FileLock::~FileLock() {
  if (fd_ >= 0) ::close(fd_);  // closing releases the flock
}

std::vector<std::string> missing_folders(const std::string& path) {
  namespace fs = std::filesystem;
  // Each prefix of the path that ends in a name and is not there yet, as the file system will
  // resolve it when it makes it ("p/../q" makes p, then p/../q; removed by the same names, in
  // reverse). "." and empty parts (a trailing slash) name no folder of their own.
  std::error_code ec;
  const fs::path absolute = fs::absolute(path, ec);
  if (ec) return {};
  std::vector<std::string> made;
  fs::path prefix;
  for (const fs::path& part : absolute) {
    prefix /= part;
    if (part.empty() || part == "." || part == ".." || part == part.root_path()) continue;
    const bool there = fs::exists(prefix, ec);
    if (ec) return made;  // a prefix that is not a folder: create_directories refuses it
    if (!there) made.push_back(prefix.string());
  }
  return made;
}

void remove_made_folders(const std::vector<std::string>& made) {
  namespace fs = std::filesystem;
  if (made.empty()) return;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(made.back(), ec))
    if (entry.path().filename() != ".lock") return;
  if (ec) return;
  fs::remove(fs::path(made.back()) / ".lock", ec);
  for (auto it = made.rbegin(); it != made.rend(); ++it)
    if (!fs::remove(*it, ec)) return;  // not empty (or gone): the folders above it stay too
}

}  // namespace sae
