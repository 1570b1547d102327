// Atomic file writes (temp file + fsync + rename + directory fsync), POSIX.
#include "io/atomic_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "io/signal_safe_table.h"
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

void sync_fd(int fd, const std::string& what) {
  if (::fsync(fd) != 0 && errno != EINVAL) throw DataError(cat("cannot sync ", what, ": ", os_reason()));
}

// Makes the rename itself durable (file systems that cannot sync a directory have still renamed).
void sync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw DataError(cat("cannot open directory ", dir, " to sync it: ", os_reason()));
  try {
    sync_fd(fd, "directory " + dir);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
}

void sync_file(const std::string& path, bool missing_ok) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (missing_ok && errno == ENOENT) return;
    throw DataError(cat("cannot open ", path, " to sync it: ", os_reason()));
  }
  try {
    sync_fd(fd, path);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
}

namespace {
void copy_file_contents(const std::string& from, const std::string& to) {
  const int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) throw DataError(cat("cannot open ", from, " to copy it: ", os_reason()));
  const int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0) {
    const std::string reason = os_reason();
    ::close(in);
    throw DataError(cat("cannot create ", to, ": ", reason));
  }
  std::vector<char> buffer(size_t(1) << 20);
  std::string failure;
  while (failure.empty()) {
    const ssize_t n = ::read(in, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) failure = cat("cannot read ", from, ": ", os_reason());
    if (n <= 0) break;
    for (ssize_t done = 0; done < n && failure.empty();) {
      const ssize_t w = ::write(out, buffer.data() + done, static_cast<size_t>(n - done));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) failure = cat("cannot write ", to, ": ", os_reason());
      else done += w;
    }
  }
  ::close(in);
  if (::close(out) != 0 && failure.empty()) failure = cat("cannot write ", to, ": ", os_reason());
  if (!failure.empty()) throw DataError(failure);
}
}  // namespace

void copy_tree(const std::string& from, const std::string& to) {
  struct stat info;
  if (::stat(from.c_str(), &info) != 0) throw DataError(cat("cannot copy ", from, ": ", os_reason()));
  if (!S_ISDIR(info.st_mode)) {
    copy_file_contents(from, to);
    return;
  }
  if (::mkdir(to.c_str(), 0755) != 0 && errno != EEXIST) throw DataError(cat("cannot create ", to, ": ", os_reason()));
  DIR* d = ::opendir(from.c_str());
  if (d == nullptr) throw DataError(cat("cannot open directory ", from, " to copy it: ", os_reason()));
  std::vector<std::string> names;
  while (const dirent* entry = ::readdir(d)) {
    const std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  ::closedir(d);
  for (const std::string& name : names) copy_tree(from + "/" + name, to + "/" + name);
}

void sync_tree(const std::string& root) {
  DIR* d = ::opendir(root.c_str());
  if (d == nullptr) throw DataError(cat("cannot open directory ", root, " to sync it: ", os_reason()));
  std::vector<std::string> folders;
  while (const dirent* entry = ::readdir(d)) {
    const std::string name = entry->d_name;
    if (name == "." || name == "..") continue;
    const std::string path = root + "/" + name;
    if (entry->d_type == DT_DIR) {
      folders.push_back(path);
      continue;
    }
    try {
      sync_file(path, /*missing_ok=*/true);  // a link to nowhere: nothing of ours to flush
    } catch (const DataError&) {
      ::closedir(d);
      throw;
    }
  }
  ::closedir(d);
  for (const std::string& folder : folders) sync_tree(folder);
  sync_directory(root);
}

namespace {
std::atomic<uint64_t> writers{0};

// The live writers' temporary names, for remove_open_temp_files.
SignalSafePathTable<64> g_temps;
// The name temporary files of PATH start with: PATH's own name, or, for a name too long to take the
// ".tmp-<pid>-<n>" ending within NAME_MAX (255 bytes), its first 183 bytes, "~" and a hash of it
// (a legal 255-byte output name had failed only once all the work was done).
std::string temp_stem(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  const std::string name = path.substr(slash == std::string::npos ? 0 : slash + 1);
  constexpr size_t kLongest = 200;  // + ".tmp-<pid>-<n>" and a ".gnuplot.log" beside it (plot.cpp)
  if (name.size() <= kLongest) return name;
  uint64_t hash = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : name) hash = (hash ^ c) * 1099511628211ull;
  static const char* kHex = "0123456789abcdef";
  size_t cut = kLongest - 17;  // at a character's first byte: a cut UTF-8 sequence is no text name
  while (cut > 0 && (static_cast<unsigned char>(name[cut]) & 0xC0) == 0x80) --cut;
  std::string stem = name.substr(0, cut) + "~";
  for (int shift = 60; shift >= 0; shift -= 4) stem += kHex[(hash >> shift) & 15];
  return stem;
}

// Removes PATH.tmp-<pid>-<n> files whose process is gone (killed while writing PATH).
void remove_stale_temps(const std::string& path) {
  const std::string dir = parent_directory(path);
  const std::string prefix = temp_stem(path) + ".tmp-";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  while (const dirent* entry = ::readdir(d)) {
    const std::string name = entry->d_name;
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    const long pid = std::strtol(name.c_str() + prefix.size(), nullptr, 10);
    if (pid > 0 && pid != static_cast<long>(::getpid()) && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH)
      ::unlink((dir + "/" + name).c_str());
  }
  ::closedir(d);
}
}  // namespace

std::string unique_temp_path(const std::string& path) {
  remove_stale_temps(path);
  const size_t slash = path.find_last_of('/');
  const std::string stem = temp_stem(path), head = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  return cat(head, stem, ".tmp-", ::getpid(), "-", writers++);
}

AtomicFileWriter::AtomicFileWriter(const std::string& path) : path_(path), temp_path_(unique_temp_path(path)) {
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) throw DataError(cat("cannot create ", temp_path_, " (to write ", path_, "): ", os_reason()));
  slot_ = g_temps.enter(temp_path_);
}

AtomicFileWriter::~AtomicFileWriter() {
  g_temps.leave(slot_);
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

void remove_open_temp_files() {
  g_temps.for_each([](const char* path, uintptr_t, uintptr_t) { ::unlink(path); });
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
  sync_fd(fd_, temp_path_);
  int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) throw DataError(cat("cannot close ", temp_path_, ": ", os_reason()));
  g_temps.leave(slot_);  // from here the file is (about to be) PATH's: no handler removes it
  slot_ = -1;
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
