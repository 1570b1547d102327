// Atomic file writes: the bytes go to PATH.tmp-<pid>-<n>, a name of this writer alone (two
// processes writing one PATH each rename a whole file of their own: the last rename wins), which is
// flushed to disk (fsync) and renamed over PATH, and then the directory is flushed too. A process
// killed at any moment leaves either the old PATH or the new one, never a torn file; the temporary
// file it may leave is removed by the next writer of PATH once its process is gone. (A name too long
// to take that ending within NAME_MAX gets a shortened stem with a hash: temp_stem.) Errors throw
// DataError naming the path and the OS reason.
#pragma once
#include <cstddef>
#include <string>

namespace sae {

// fsync of an open file or directory: DataError "cannot sync WHAT: reason"; a file system that
// cannot sync it (EINVAL: a pipe, some special file systems) is not an error.
void sync_fd(int fd, const std::string& what);
// Flushes a directory's entries (a rename into it, a new file) to disk. DataError naming the
// directory and the OS reason (sync_fd's).
void sync_directory(const std::string& dir);
// Flushes a file another program wrote to disk before it is renamed into place. DataError as
// sync_directory (`missing_ok`: a file that is not there, such as a link to nowhere, is skipped).
void sync_file(const std::string& path, bool missing_ok = false);
// Flushes every file under `root` and every directory's entries (a folder copied before it is
// renamed into place). DataError as sync_directory.
void sync_tree(const std::string& root);

// Unlinks the temporary files of the AtomicFileWriters alive in this process (at most 64 are
// tracked): for a handler of a fatal signal, which ends the process without running destructors
// (io/mapped_file.h report_truncated_mappings). Async-signal-safe.
void remove_open_temp_files();

// Copies a file, or a folder with everything under it (regular files and folders; a symbolic link
// is copied as the file or folder it points to), to `to`, which the caller then syncs and renames
// into place. DataError naming the file and the OS reason ("No space left on device"), where
// std::filesystem::copy reported a full disk as "Input/output error"; what was copied stays for the
// caller to remove.
void copy_tree(const std::string& from, const std::string& to);

// Writes a whole file at once.
void write_file_atomic(const std::string& path, const std::string& bytes);

// A temporary name of this writer alone for PATH (PATH.tmp-<pid>-<n>, the writers' own form), for a
// file another program makes and the caller renames over PATH; the temporary files of processes
// that are gone are removed first.
std::string unique_temp_path(const std::string& path);

// The streaming form, for files too big to build in memory first:
//   AtomicFileWriter out(path); out.write(p, n); ...; out.commit();
// Destroying a writer that was not committed removes its temporary file and leaves PATH untouched.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(const std::string& path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t bytes);
  void write(const std::string& bytes) { write(bytes.data(), bytes.size()); }
  void commit();  // fsync, close, rename over the target, fsync the directory

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  int slot_ = -1;  // its entry for remove_open_temp_files (-1: none)
  bool committed_ = false;
};

}  // namespace sae
