// BatchPrefetcher: prepares the next batch (read, check, normalise on the host) while the current
// step runs, on a worker thread, so a GPU does not wait for the host. Two buffers alternate; each
// prepared batch carries the Batcher's position after it, which is what a checkpoint must save.
// With background = false it prepares each batch when asked (same results, no thread). For a GPU
// run a BatchUpload takes each prepared batch to the device (page-locked buffers, a copy on its own
// stream that overlaps the step before it), or the source makes the batch on the device itself
// (the synthetic generator: Batcher::next_on_device).
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

// --device-data: on a GPU, batches go to the device asynchronously (page-locked buffers, their own
// copy stream) or are made there (the synthetic generator), and the batch metrics are computed there
// (auto: with CUDA; on: also with --device cpu, the same code path on the host; off: the batch is
// copied with a plain synchronous copy and the metrics read x_hat back to the host).
enum class DeviceDataMode { Auto, On, Off };
DeviceDataMode parse_device_data_mode(const std::string& text);  // UsageError naming --device-data
const char* device_data_mode_name(DeviceDataMode mode);

struct PreparedBatch {
  Tensor raw, normalized;  // host float32 [max_tokens, D]; the first `tokens` rows are the batch
  int64_t tokens = 0;
  BatchStats stats;
  Json position;  // Batcher::state() after this batch
  BatchOrigins origins;  // where its rows came from, when the source records them (record_origins)
  // With a BatchUpload: the normalised batch on its device [max_tokens, D] (first `tokens` rows).
  // When made there (on_device), raw and normalized on the host are not filled, and stats holds
  // only the normalisation; device_stats [2] (float64: raw mean, raw std) has the rest (read it
  // at a log step: the one read-back).
  Tensor device;
  bool on_device = false;
  Tensor device_stats;
};

// What a batch needs beyond the host, for a run on a GPU (the trainer implements it with the CUDA
// backend; tests with plain host copies). Each of the prefetcher's two slots has a device buffer;
// the prefetcher calls, for slot s (0 or 1):
//   before_fill(s)       on the thread that fills it, before its host buffers are rewritten (the
//                        previous copy from them must have finished)
//   after_fill(s, b)     on that thread, once b (host) is ready: start copying b into device(s)
//   hand_out(s)          on the caller's thread, when next() returns the slot: what runs next on
//                        the device must see the copy
//   hand_back(s)         on the caller's thread, at the next call to next(): the device work that
//                        reads the slot has all been queued; a later copy into it must wait for it
//   finish()             when the prefetcher stops (no copy may still be running afterwards)
// When the source can make its batches on the device (generates_on_device), the prefetcher asks
// it to write into device(s) directly, on the caller's thread (no worker, no copy, no hooks).
class BatchUpload {
 public:
  virtual ~BatchUpload() = default;
  virtual Device device() const = 0;
  virtual Tensor& device_buffer(int slot) = 0;  // [max_tokens, D] float32 on device()
  virtual void before_fill(int slot) = 0;
  virtual void after_fill(int slot, const PreparedBatch& batch) = 0;
  virtual void hand_out(int slot) = 0;
  virtual void hand_back(int slot) = 0;
  virtual void finish() = 0;
};

class BatchPrefetcher {
 public:
  // upload: the device side of each batch (null: host batches only). With an upload the host
  // buffers are page-locked (Tensor::empty_pinned), and a source that makes its batches on the
  // upload's device does so, with background off. batches: how many next() will be asked for (-1:
  // no end); the worker prepares none past them (a run's last step: no batch read, or run through
  // the language model, for nothing), and a call past them is a std::logic_error.
  BatchPrefetcher(BatchSource& batcher, int64_t d, bool background, BatchUpload* upload = nullptr,
                  int64_t batches = -1);
  ~BatchPrefetcher();
  BatchPrefetcher(const BatchPrefetcher&) = delete;
  BatchPrefetcher& operator=(const BatchPrefetcher&) = delete;
  // The next batch, valid until the following call. Rethrows what preparing it threw.
  const PreparedBatch& next();

 private:
  void prepare(PreparedBatch& slot);
  void worker_loop();

  BatchSource& batcher_;
  BatchUpload* upload_;
  bool on_device_;  // the source makes the batches on upload_'s device
  PreparedBatch slots_[2];
  int current_ = -1;  // slot handed out last
  int64_t batches_ = -1, handed_out_ = 0;
  bool background_;
  int cuda_device_ = -1;  // the GPU of the thread that made this prefetcher: the worker's too
  std::thread worker_;
  std::mutex mutex_;
  std::condition_variable changed_;
  bool requested_ = false, ready_ = false, stop_ = false;
  int target_ = 0;  // slot the worker fills
  std::exception_ptr error_;
};

}  // namespace sae
