// Running a built program as a user would, for the tests that try every program with the same
// hostile input (tests/experiments/test_cli_hostile.cpp) or kill one at a chosen point
// (test_kill_at_rename.cpp): environment variables set for that one process, and a time limit
// (SIGKILL), so a program that would block forever fails the test instead of hanging it.
#pragma once
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "tests/util/test_util.h"

namespace sae::testing {

// A shell word: 'text' with single quotes escaped.
inline std::string shell_quote(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs build/bin/<program> `args` with `env` ("NAME=value ...", shell-quoted values) in its
// environment, in the directory `cwd` (when given), killed after timeout_seconds. exit_code is
// 128 + the signal when a signal ended it (137 for SIGKILL: the time limit, or a kill the test
// asked for).
inline CommandResult run_program(const std::string& program, const std::string& args, const TempDir& scratch,
                                 const std::string& env = "", int timeout_seconds = 120, const std::string& cwd = "") {
  const std::string out_file = scratch.str("stdout.txt"), err_file = scratch.str("stderr.txt");
  const std::string cmd = (cwd.empty() ? std::string() : "cd " + shell_quote(cwd) + " && ") + "env " + env + " timeout -s KILL " + std::to_string(timeout_seconds) + " " +
                          std::string(SAE_BIN_DIR) + "/" + program + " " + args + " > " + shell_quote(out_file) +
                          " 2> " + shell_quote(err_file) + " < /dev/null";
  const int status = std::system(cmd.c_str());
  CommandResult r;
  // timeout reports a child killed by a signal as 128 + the signal (137 for SIGKILL).
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  auto slurp = [](const std::string& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  };
  r.out = slurp(out_file);
  r.err = slurp(err_file);
  return r;
}

}  // namespace sae::testing
