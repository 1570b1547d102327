// FileLock: an exclusive advisory lock (flock) on a file, held while the object lives, so that two
// processes cannot work on one run folder at once. The lock file records the holder's pid for the
// message the second process gets. The kernel drops the lock when the holder dies, even by kill -9,
// so a stale lock file never blocks a later run.
#pragma once
#include <functional>
#include <string>
#include <vector>

namespace sae {

class FileLock {
 public:
  // Creates `path` if needed and locks it without waiting. DataError naming the path (and the pid
  // that holds it) when another process holds it or it cannot be created. The lock taken is always
  // on the file the path names once it is held: a holder that gives up removes the file (a run that
  // failed before it began, remove_made_folders), and a lock taken on the removed file would leave
  // the path free for a third process, so the path is opened and locked again.
  explicit FileLock(const std::string& path);
  // For tests: `between` runs once, after the first open and before the lock, where another process
  // may remove the file.
  FileLock(const std::string& path, const std::function<void()>& between);
  ~FileLock();
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_ = -1;
};

// A run folder that its run leaves as it found it when it fails before it begins: the folders
// create_directories(path) would make, outermost first (none when path exists) ...
std::vector<std::string> missing_folders(const std::string& path);
// ... and, once the run is over, those folders removed again, innermost first: the last (the run's
// folder) only while it holds nothing but .lock, whose holder is this process (the lock file goes
// with it), each other only while empty.
void remove_made_folders(const std::vector<std::string>& made);

// The two together: the folders `path` lacks when this is made, removed when it ends if they hold
// nothing then (but the .lock of the last): a program that fails before it writes there leaves
// none behind.
class MadeFolders {
 public:
  explicit MadeFolders(const std::string& path) : made_(missing_folders(path)) {}
  ~MadeFolders() { remove_made_folders(made_); }
  // They are another process's after all (it took their lock first): left alone.
  void keep() { made_.clear(); }
  MadeFolders(const MadeFolders&) = delete;
  MadeFolders& operator=(const MadeFolders&) = delete;

 private:
  std::vector<std::string> made_;
};

}  // namespace sae
