// StopOnSignal (interrupt.h): a flag set by an async-signal-safe handler, read by the training loop.
#include "sae/train/interrupt.h"

namespace sae {
namespace {

volatile std::sig_atomic_t g_received = 0;

extern "C" void record_signal(int signal) { g_received = signal; }

// A signal ignored when the program started (a background job of a script ignores SIGINT, `nohup`
// SIGHUP) stays ignored, as shells expect of the programs they start.
void install(int signal, struct sigaction* old) {
  ::sigaction(signal, nullptr, old);
  if (old->sa_handler == SIG_IGN) return;
  struct sigaction action {};
  action.sa_handler = record_signal;
  sigemptyset(&action.sa_mask);
  // Interrupted system calls of the other threads (the batch prefetcher's reads) are restarted; the
  // second signal of this kind takes the default action.
  action.sa_flags = SA_RESTART | SA_RESETHAND;
  ::sigaction(signal, &action, old);
}

}  // namespace

StopOnSignal::StopOnSignal() {
  g_received = 0;
  install(SIGINT, &old_int_);
  install(SIGTERM, &old_term_);
}

StopOnSignal::~StopOnSignal() {
  ::sigaction(SIGINT, &old_int_, nullptr);
  ::sigaction(SIGTERM, &old_term_, nullptr);
}

int StopOnSignal::requested() const { return g_received; }

std::string signal_name(int signal) {
  if (signal == SIGINT) return "SIGINT";
  if (signal == SIGTERM) return "SIGTERM";
  return cat("signal ", signal);
}

}  // namespace sae
