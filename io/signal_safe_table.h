// SignalSafePathTable: a fixed table of paths, each with an address range, that a signal handler
// reads without locking or allocating (the live memory mappings and the temporary files being
// written, for the SIGBUS handler of io/mapped_file.h). An entry is claimed by compare-exchange,
// filled, then published; it is unpublished before the resource it names goes.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace sae {

template <int Slots>
class SignalSafePathTable {
 public:
  // The entry's index, or -1 when the table is full or the path does not fit (PATH_MAX): that
  // resource is then not named.
  int enter(const std::string& path, uintptr_t begin = 0, uintptr_t end = 0) {
    if (path.size() >= sizeof slots_[0].path) return -1;
    for (int i = 0; i < Slots; ++i) {
      int expected = 0;
      if (!slots_[i].claimed.compare_exchange_strong(expected, 1)) continue;
      std::memcpy(slots_[i].path, path.c_str(), path.size() + 1);
      slots_[i].begin = begin;
      slots_[i].end = end;
      slots_[i].published.store(true, std::memory_order_release);
      return i;
    }
    return -1;
  }
  void leave(int slot) {
    if (slot < 0) return;
    slots_[slot].published.store(false, std::memory_order_release);
    slots_[slot].claimed.store(0, std::memory_order_release);
  }
  // f(path, begin, end) for each published entry; async-signal-safe when f is.
  template <typename F>
  void for_each(F f) const {
    for (const Slot& slot : slots_)
      if (slot.published.load(std::memory_order_acquire)) f(slot.path, slot.begin, slot.end);
  }

 private:
  struct Slot {
    std::atomic<int> claimed{0};
    std::atomic<bool> published{false};
    uintptr_t begin = 0, end = 0;
    char path[4096] = {};
  };
  Slot slots_[Slots];
};

}  // namespace sae
