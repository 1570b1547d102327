// BatchPrefetcher (see prefetch.h).
#include "sae/data/prefetch.h"

#include <stdexcept>

#include "tensor/cuda/backend.h"
#include "tensor/error.h"
#include "tensor/precision.h"
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

DeviceDataMode parse_device_data_mode(const std::string& text) {
  if (text == "auto") return DeviceDataMode::Auto;
  if (text == "on") return DeviceDataMode::On;
  if (text == "off") return DeviceDataMode::Off;
  throw UsageError(cat("--device-data: expected auto, on or off, got '", text, "'"));
}

const char* device_data_mode_name(DeviceDataMode mode) {
  return mode == DeviceDataMode::Auto ? "auto" : (mode == DeviceDataMode::On ? "on" : "off");
}

BatchPrefetcher::BatchPrefetcher(BatchSource& batcher, int64_t d, bool background, BatchUpload* upload,
                                 int64_t batches)
    : batcher_(batcher),
      upload_(upload),
      on_device_(upload && batcher.generates_on_device(upload->device())),
      batches_(batches),
      background_(background && !on_device_) {
  const Shape shape{batcher.max_batch_tokens(), d};
  for (int s = 0; s < 2; ++s) {
    PreparedBatch& slot = slots_[s];
    if (on_device_) {  // nothing on the host
      slot.raw = Tensor::empty(Shape{0, d});
      slot.normalized = Tensor::empty(Shape{0, d});
    } else {
      slot.raw = upload ? Tensor::empty_pinned(shape) : Tensor::empty(shape);
      slot.normalized = upload ? Tensor::empty_pinned(shape) : Tensor::empty(shape);
    }
    if (upload) slot.device = upload->device_buffer(s);
  }
  if (background_) {
    if (upload_ && upload_->device() == Device::CUDA) cuda_device_ = cuda_current_device();
    set_blas_shared_between_threads(true);  // the worker may run GEMMs beside the step's
    // The worker's GEMMs (a language model run from text) at this thread's precision (tensor/precision.h:
    // each thread's own), whatever this thread sets later for a while (an evaluation at float32).
    const Precision precision = matmul_precision();
    worker_ = std::thread([this, precision] {
      const ScopedMatmulPrecision same(precision);
      worker_loop();
    });
    std::lock_guard<std::mutex> lock(mutex_);
    target_ = 0;
    requested_ = batches_ != 0;
    changed_.notify_all();
  }
}

BatchPrefetcher::~BatchPrefetcher() {
  if (background_) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
      changed_.notify_all();
    }
    worker_.join();
    set_blas_shared_between_threads(false);
  }
  // A destructor must not throw: after a device fault the wait reports the same (sticky) error that
  // is already unwinding the run, and a second throw here would abort the program (std::terminate)
  // instead of the run's one-line error.
  try {
    if (upload_) upload_->finish();
  } catch (const std::exception&) {
  }
}

void BatchPrefetcher::prepare(PreparedBatch& slot) {
  const int s = static_cast<int>(&slot - slots_);
  if (on_device_) {
    slot.tokens = batcher_.next_on_device(slot.device, slot.device_stats, slot.stats);
    slot.on_device = true;
  } else {
    if (upload_) upload_->before_fill(s);
    slot.tokens = batcher_.next(slot.raw.data<float>(), slot.normalized.data<float>(), slot.stats);
  }
  slot.position = batcher_.state();
  if (batcher_.recording_origins()) slot.origins = batcher_.origins();
  if (upload_ && !on_device_) upload_->after_fill(s, slot);
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
      cuda_use_device(cuda_device_);  // its uploads go to the step's GPU (a rank of latent shards: not GPU 0)
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
  // The slot handed out last is done with: its device work has all been queued.
  if (upload_ && !on_device_ && current_ >= 0) upload_->hand_back(current_);
  if (batches_ >= 0 && handed_out_ == batches_)
    throw std::logic_error(cat("BatchPrefetcher: batch ", batches_ + 1, " asked for, of ", batches_));
  ++handed_out_;
  if (!background_) {
    current_ = current_ == 0 ? 1 : 0;
    prepare(slots_[current_]);
    if (upload_ && !on_device_) upload_->hand_out(current_);
    return slots_[current_];
  }
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [this] { return ready_ || error_; });
  if (error_) std::rethrow_exception(error_);  // kept: a later call says the same, never waits for a worker that stopped
  ready_ = false;
  current_ = target_;
  // Start on the other slot while the caller uses this one (unless this was the last batch).
  target_ = 1 - current_;
  requested_ = batches_ < 0 || handed_out_ < batches_;
  changed_.notify_all();
  if (upload_) upload_->hand_out(current_);
  return slots_[current_];
}

}  // namespace sae
