// BatchPrefetcher: prepares the next batch (read, check, normalise on the host) while the current
// step runs, on a worker thread, so a GPU does not wait for the host. Two buffers alternate; each
// prepared batch carries the Batcher's position after it, which is what a checkpoint must save.
// With background = false it prepares each batch when asked (same results, no thread).
#pragma once
#include <condition_variable>
#include <exception>
#include <mutex>
#include <string>
#include <thread>

#include "sae/data/batches.h"

namespace sae {

// --prefetch: prepare batches on a worker thread always (on), never (off), or with a GPU (auto).
enum class PrefetchMode { Auto, On, Off };
PrefetchMode parse_prefetch_mode(const std::string& text);  // UsageError naming --prefetch
const char* prefetch_mode_name(PrefetchMode mode);

struct PreparedBatch {
  Tensor raw, normalized;  // host float32 [max_tokens, D]; the first `tokens` rows are the batch
  int64_t tokens = 0;
  BatchStats stats;
  Json position;  // Batcher::state() after this batch
  BatchOrigins origins;  // where its rows came from, when the source records them (record_origins)
};

class BatchPrefetcher {
 public:
  BatchPrefetcher(BatchSource& batcher, int64_t d, bool background);
  ~BatchPrefetcher();
  BatchPrefetcher(const BatchPrefetcher&) = delete;
  BatchPrefetcher& operator=(const BatchPrefetcher&) = delete;
  // The next batch, valid until the following call. Rethrows what preparing it threw.
  const PreparedBatch& next();

 private:
  void prepare(PreparedBatch& slot);
  void worker_loop();

  BatchSource& batcher_;
  PreparedBatch slots_[2];
  int current_ = -1;  // slot handed out last
  bool background_;
  std::thread worker_;
  std::mutex mutex_;
  std::condition_variable changed_;
  bool requested_ = false, ready_ = false, stop_ = false;
  int target_ = 0;  // slot the worker fills
  std::exception_ptr error_;
};

}  // namespace sae
