// BatchPrefetcher (see prefetch.h).
#include "sae/data/prefetch.h"

#include "tensor/threads.h"

namespace sae {

PrefetchMode parse_prefetch_mode(const std::string& text) {
  if (text == "auto") return PrefetchMode::Auto;
  if (text == "on") return PrefetchMode::On;
  if (text == "off") return PrefetchMode::Off;
  throw UsageError(cat("--prefetch: expected auto, on or off, got '", text, "'"));
}

const char* prefetch_mode_name(PrefetchMode mode) {
  return mode == PrefetchMode::Auto ? "auto" : (mode == PrefetchMode::On ? "on" : "off");
}

BatchPrefetcher::BatchPrefetcher(BatchSource& batcher, int64_t d, bool background)
    : batcher_(batcher), background_(background) {
  for (PreparedBatch& slot : slots_) {
    slot.raw = Tensor::empty(Shape{batcher.max_batch_tokens(), d});
    slot.normalized = Tensor::empty(Shape{batcher.max_batch_tokens(), d});
  }
  if (background_) {
    set_blas_shared_between_threads(true);  // the worker may run GEMMs beside the step's
    worker_ = std::thread([this] { worker_loop(); });
    std::lock_guard<std::mutex> lock(mutex_);
    target_ = 0;
    requested_ = true;
    changed_.notify_all();
  }
}

BatchPrefetcher::~BatchPrefetcher() {
  if (!background_) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
    changed_.notify_all();
  }
  worker_.join();
  set_blas_shared_between_threads(false);
}

void BatchPrefetcher::prepare(PreparedBatch& slot) {
  slot.tokens = batcher_.next(slot.raw.data<float>(), slot.normalized.data<float>(), slot.stats);
  slot.position = batcher_.state();
  if (batcher_.recording_origins()) slot.origins = batcher_.origins();
}

void BatchPrefetcher::worker_loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    changed_.wait(lock, [this] { return requested_ || stop_; });
    if (stop_) return;
    requested_ = false;
    const int target = target_;
    lock.unlock();
    std::exception_ptr error;
    try {
      prepare(slots_[target]);
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    error_ = error;
    ready_ = true;
    changed_.notify_all();
  }
}

const PreparedBatch& BatchPrefetcher::next() {
  if (!background_) {
    current_ = current_ == 0 ? 1 : 0;
    prepare(slots_[current_]);
    return slots_[current_];
  }
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [this] { return ready_; });
  ready_ = false;
  if (error_) {
    std::exception_ptr error = error_;
    error_ = nullptr;
    std::rethrow_exception(error);
  }
  current_ = target_;
  // Start on the other slot while the caller uses this one.
  target_ = 1 - current_;
  requested_ = true;
  changed_.notify_all();
  return slots_[current_];
}

}  // namespace sae
