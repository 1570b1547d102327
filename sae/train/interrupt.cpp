// StopOnSignal (interrupt.h): a flag set by an async-signal-safe handler, read by the training loop.
#include "sae/train/interrupt.h"

#include <atomic>
#include <cstdlib>

namespace sae {
namespace {

std::atomic<int> g_received{0};      // the first signal; lock-free, so safe in a handler
std::atomic<bool> g_int{false}, g_term{false};  // the handler is installed for it
static_assert(std::atomic<int>::is_always_lock_free && std::atomic<bool>::is_always_lock_free);

void to_default(int signal) {
  struct sigaction action {};
  action.sa_handler = SIG_DFL;
  sigemptyset(&action.sa_mask);
  ::sigaction(signal, &action, nullptr);
}

// The first SIGINT or SIGTERM is recorded and both go back to the default action (the one that
// came by SA_RESETHAND, the other here): a second signal of either kind ends the process at once.
extern "C" void record_signal(int signal) {
  int none = 0;
  g_received.compare_exchange_strong(none, signal);
  if (signal != SIGINT && g_int.load()) to_default(SIGINT);
  if (signal != SIGTERM && g_term.load()) to_default(SIGTERM);
}

// A signal ignored when the program started (a background job of a script ignores SIGINT, `nohup`
// SIGHUP) stays ignored, as shells expect of the programs they start. Returns whether it installed.
bool install(int signal, struct sigaction* old) {
  ::sigaction(signal, nullptr, old);
  if (old->sa_handler == SIG_IGN) return false;
  struct sigaction action {};
  action.sa_handler = record_signal;
  sigemptyset(&action.sa_mask);
  // Interrupted system calls of the other threads (the batch prefetcher's reads) are restarted; the
  // second signal of this kind takes the default action.
  action.sa_flags = SA_RESTART | SA_RESETHAND;
  ::sigaction(signal, &action, old);
  return true;
}

}  // namespace

StopOnSignal::StopOnSignal() {
  g_received = 0;
  g_int = install(SIGINT, &old_int_);
  g_term = install(SIGTERM, &old_term_);
}

StopOnSignal::~StopOnSignal() {
  g_int = g_term = false;
  ::sigaction(SIGINT, &old_int_, nullptr);
  ::sigaction(SIGTERM, &old_term_, nullptr);
}

int StopOnSignal::requested() const { return g_received.load(); }

void test_signal_point(const char* point) {
  const char* at = std::getenv("SAE_TEST_SIGNAL_AT");
  if (!at) return;
  const std::string wanted(at), here(point);
  if (wanted == here + ":INT") std::raise(SIGINT);
  if (wanted == here + ":TERM") std::raise(SIGTERM);
}

std::string signal_name(int signal) {
  if (signal == SIGINT) return "SIGINT";
  if (signal == SIGTERM) return "SIGTERM";
  return cat("signal ", signal);
}

}  // namespace sae
