// Stopping a training loop by a signal, as SAELens's runner does on SIGINT (Ctrl-C) and SIGTERM (a
// job scheduler's preemption or time limit): while a StopOnSignal lives, the first SIGINT or SIGTERM
// is only recorded; the loop asks requested() after each step, saves a checkpoint of every SAE at that
// step and throws TrainingInterrupted. After the first, both signals have their default action again:
// a second signal of either kind ends the process at once (what was saved stays complete: saves are
// atomic). The previous handlers are put back when it ends; one ignored at the start stays ignored.
#pragma once
#include <csignal>
#include <string>

#include "tensor/error.h"

namespace sae {

class StopOnSignal {
 public:
  StopOnSignal();   // installs the handlers; clears an earlier request
  ~StopOnSignal();  // puts the previous handlers back
  StopOnSignal(const StopOnSignal&) = delete;
  StopOnSignal& operator=(const StopOnSignal&) = delete;
  int requested() const;  // the signal received (SIGINT or SIGTERM), or 0

 private:
  struct sigaction old_int_ {}, old_term_ {};
};

// The run stopped on a signal after saving (the message says where, and how to go on). Programs exit
// with 128 + signal, as a shell reports a process ended by it.
struct TrainingInterrupted : Error {
  TrainingInterrupted(int signal, const std::string& message) : Error(message), signal(signal) {}
  int signal = 0;
};

// "SIGINT", "SIGTERM", or "signal N".
std::string signal_name(int signal);

// Test hook (tests/experiments/test_cli_interrupt.cpp): SAE_TEST_SIGNAL_AT=<point>:<INT|TERM> sends
// this process that signal at that point ("final-save": before the final models are saved;
// "mid-save": in a checkpoint's save, its weights written and its training state not), as a user or
// a scheduler would.
void test_signal_point(const char* point);

}  // namespace sae
