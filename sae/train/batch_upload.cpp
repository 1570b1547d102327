// make_batch_upload (see batch_upload.h).
#include "sae/train/batch_upload.h"

#include <cstring>

#include "tensor/cuda/backend.h"

namespace sae {

namespace {

class HostBatchUpload : public BatchUpload {
 public:
  HostBatchUpload(int64_t max_tokens, int64_t d) {
    for (Tensor& b : buffers_) b = Tensor::empty(Shape{max_tokens, d});
  }
  Device device() const override { return Device::CPU; }
  Tensor& device_buffer(int slot) override { return buffers_[slot]; }
  void before_fill(int) override {}
  void after_fill(int slot, const PreparedBatch& batch) override {
    if (batch.tokens > 0)
      std::memcpy(buffers_[slot].raw(), batch.normalized.raw(), batch.tokens * batch.normalized.size(1) * sizeof(float));
  }
  void hand_out(int) override {}
  void hand_back(int) override {}
  void finish() override {}

 private:
  Tensor buffers_[2];
};

class CudaBatchUpload : public BatchUpload {
 public:
  CudaBatchUpload(int64_t max_tokens, int64_t d) {
    for (Tensor& b : buffers_) b = Tensor::empty(Shape{max_tokens, d}, DType::F32, Device::CUDA);
  }
  ~CudaBatchUpload() override {
    try {  // never throws from a destructor (see ~BatchPrefetcher)
      finish();
    } catch (const std::exception&) {
    }
  }
  Device device() const override { return Device::CUDA; }
  Tensor& device_buffer(int slot) override { return buffers_[slot]; }
  void before_fill(int slot) override { copies_[slot].wait_source_free(); }
  void after_fill(int slot, const PreparedBatch& batch) override {
    copies_[slot].start(buffers_[slot].raw(), batch.normalized.raw(),
                        batch.tokens * batch.normalized.size(1) * sizeof(float));
  }
  void hand_out(int slot) override { copies_[slot].make_compute_wait(); }
  void hand_back(int slot) override { copies_[slot].release(); }
  void finish() override {
    for (CudaUpload& c : copies_) c.wait_source_free();
  }

 private:
  Tensor buffers_[2];
  CudaUpload copies_[2];
};

}  // namespace

std::unique_ptr<BatchUpload> make_batch_upload(Device device, int64_t max_tokens, int64_t d) {
  if (device == Device::CPU) return std::make_unique<HostBatchUpload>(max_tokens, d);
  return std::make_unique<CudaBatchUpload>(max_tokens, d);
}

}  // namespace sae
