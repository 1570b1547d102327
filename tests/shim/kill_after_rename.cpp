// An LD_PRELOAD shim for the crash tests (tests/experiments/test_kill_at_rename.cpp): it wraps
// rename(2), renameat(2) and renameat2(2), the calls that put every file and folder of a run, a
// cache or a study in place, and in the process named by SAE_RENAME_SHIM_PROGRAM (other processes,
// such as gnuplot started by the program, are left alone):
//   SAE_RENAME_LOG=FILE         appends "N FROM -> TO" for each successful rename, N counting from 1
//   SAE_KILL_AFTER_RENAME=N     SIGKILLs the process right after its N-th successful rename
// so a test can count the renames of an uninterrupted run, then kill a fresh one after each in turn,
// as a power cut or the OOM killer would. Built as a shared library beside the test runner; never
// linked into a program.
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

namespace {

long renames_done = 0;

bool watched() {
  static const int answer = [] {
    const char* wanted = getenv("SAE_RENAME_SHIM_PROGRAM");
    return wanted != nullptr && strcmp(wanted, program_invocation_short_name) == 0 ? 1 : 0;
  }();
  return answer == 1;
}

int after_rename(int result, const char* from, const char* to) {
  if (result != 0 || !watched()) return result;
  const int saved_errno = errno;
  const long n = ++renames_done;
  if (const char* log = getenv("SAE_RENAME_LOG")) {
    const int fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
      dprintf(fd, "%ld %s -> %s\n", n, from, to);
      close(fd);
    }
  }
  const char* kill_at = getenv("SAE_KILL_AFTER_RENAME");
  if (kill_at != nullptr && atol(kill_at) == n) raise(SIGKILL);
  errno = saved_errno;
  return result;
}

template <typename F>
F next_symbol(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" {

int rename(const char* from, const char* to) {
  static const auto real = next_symbol<int (*)(const char*, const char*)>("rename");
  return after_rename(real(from, to), from, to);
}

int renameat(int from_dir, const char* from, int to_dir, const char* to) {
  static const auto real = next_symbol<int (*)(int, const char*, int, const char*)>("renameat");
  return after_rename(real(from_dir, from, to_dir, to), from, to);
}

int renameat2(int from_dir, const char* from, int to_dir, const char* to, unsigned int flags) {
  static const auto real = next_symbol<int (*)(int, const char*, int, const char*, unsigned int)>("renameat2");
  return after_rename(real(from_dir, from, to_dir, to, flags), from, to);
}

}  // extern "C"
