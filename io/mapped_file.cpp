// MappedFile: open + fstat + mmap(PROT_READ, MAP_PRIVATE), munmap on destruction; each mapping is
// entered in a fixed table that the SIGBUS handler (report_truncated_mappings) reads.
#include "io/mapped_file.h"

#include <algorithm>

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "io/atomic_file.h"
#include "io/signal_safe_table.h"
#include "tensor/error.h"

namespace sae {

namespace {
const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "a special file";
}

// The live mappings (path, first and past-the-end address), for the SIGBUS handler.
SignalSafePathTable<256> g_mappings;
char g_program[64] = "program";

void write_text(const char* text) {
  ssize_t ignored = ::write(2, text, std::strlen(text));
  (void)ignored;
}

void write_number(uint64_t v) {
  char digits[24];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v > 0);
  char out[24];
  for (int i = 0; i < n; ++i) out[i] = digits[n - 1 - i];
  out[n] = '\0';
  write_text(out);
}

void on_sigbus(int signal, siginfo_t* info, void*) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(info->si_addr);
  g_mappings.for_each([address](const char* path, uintptr_t begin, uintptr_t end) {
    if (address < begin || address >= end) return;
    write_text(g_program);
    write_text(": error: ");
    write_text(path);
    write_text(": the file became shorter while it was read (no data at byte ");
    write_number(address - begin);
    write_text(" of the ");
    write_number(end - begin);
    write_text(" it had): another program truncated or replaced it; run again on a file that is not being written\n");
    remove_open_temp_files();  // the outputs being written: none is put in place
    ::_exit(1);
  });
  ::signal(signal, SIG_DFL);  // not a mapping of ours: the default action, as if never caught
  ::raise(signal);
}
}  // namespace

void report_truncated_mappings(const char* program) {
  const size_t n = std::min(std::strlen(program), sizeof g_program - 1);
  std::memcpy(g_program, program, n);
  g_program[n] = '\0';
  struct sigaction action = {};
  action.sa_sigaction = on_sigbus;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGBUS, &action, nullptr);
}

int open_regular_file(const std::string& path) {
  // O_NONBLOCK so that opening a FIFO by mistake cannot hang; it has no effect on regular files.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw DataError(cat("cannot open ", path, ": ", std::strerror(errno)));
  struct stat info;
  if (::fstat(fd, &info) != 0) {
    const int saved = errno;
    ::close(fd);
    throw DataError(cat("cannot stat ", path, ": ", std::strerror(saved)));
  }
  if (!S_ISREG(info.st_mode)) {
    ::close(fd);
    if (S_ISDIR(info.st_mode)) throw DataError(cat("cannot read ", path, ": it is a directory, expected a file"));
    throw DataError(cat("cannot read ", path, ": it is ", file_kind(info.st_mode), ", not a regular file"));
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);  // plain blocking reads from here on
  return fd;
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
  const int fd = open_regular_file(path);
  struct stat info;
  if (::fstat(fd, &info) != 0) {
    int saved = errno;
    ::close(fd);
    throw DataError(cat("cannot stat ", path, ": ", std::strerror(saved)));
  }
  size_ = static_cast<size_t>(info.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int saved = errno;
      ::close(fd);
      throw DataError(cat("cannot memory-map ", path, " (", size_, " bytes): ", std::strerror(saved)));
    }
    data_ = static_cast<const uint8_t*>(p);
    slot_ = g_mappings.enter(path, reinterpret_cast<uintptr_t>(data_), reinterpret_cast<uintptr_t>(data_) + size_);
  }
  ::close(fd);  // the mapping keeps the file alive
}

MappedFile::~MappedFile() { release(); }

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      slot_(std::exchange(other.slot_, -1)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    slot_ = std::exchange(other.slot_, -1);
  }
  return *this;
}

void MappedFile::advise_random(bool random) const {
  if (data_ != nullptr) ::madvise(const_cast<uint8_t*>(data_), size_, random ? MADV_RANDOM : MADV_NORMAL);
}

void MappedFile::release_pages(size_t begin, size_t bytes) const {
  if (data_ == nullptr || begin >= size_) return;
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t end = std::min(size_, begin + bytes);
  const size_t first = (begin + page - 1) / page * page, last = end / page * page;
  if (last > first) ::madvise(const_cast<uint8_t*>(data_) + first, last - first, MADV_DONTNEED);
}

std::string read_file_head(const std::string& path, size_t bytes) {
  const int fd = open_regular_file(path);  // a FIFO, a device or a folder is refused, never read
  std::string head(bytes, '\0');
  const ssize_t got = ::read(fd, head.data(), bytes);
  ::close(fd);
  head.resize(got > 0 ? static_cast<size_t>(got) : 0);
  return head;
}

std::string read_small_file(const std::string& path, size_t max_bytes) {
  MappedFile file(path);
  if (file.size() > max_bytes)
    throw DataError(cat(path, ": is ", file.size(), " bytes, more than the ", max_bytes, " expected of this file"));
  return std::string(reinterpret_cast<const char*>(file.data()), file.size());
}

void MappedFile::release() {
  g_mappings.leave(slot_);  // before the pages go: the handler never names a mapping that is gone
  slot_ = -1;
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

}  // namespace sae
