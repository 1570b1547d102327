// Tensor: a contiguous, row-major block of float32 or float64 numbers with up to 4 dimensions,
// living on one device (CPU or CUDA). int32 tensors hold indices (the sparse feature lists of
// sae/step/sae_kernels.h): they can be created, copied, moved between devices and read back, and only the
// sparse kernels take them; every arithmetic op rejects them. bf16 and f16 tensors hold a model's weights
// as its file stores them (tensor/half.h): created, copied and converted to and from float32/64, moved
// between devices, read back, and read (widened) by embedding and by matmul as its weight operand only.
// Storage is shared between a tensor and its views (reshape, row slices); everything else makes a new
// tensor. Storage may also be borrowed (a memory-mapped file's bytes, kept alive by an owner): such a
// tensor is read-only in fact, and nothing may write into it. Ops live in ops.h.
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "tensor/error.h"
#include "tensor/half.h"

namespace sae {

enum class DType { F32, F64, I32, BF16, F16 };
enum class Device { CPU, CUDA };

const char* dtype_name(DType dtype);
const char* device_name(Device device);
size_t dtype_size(DType dtype);
inline bool is_half_dtype(DType dtype) { return dtype == DType::BF16 || dtype == DType::F16; }

// What a GPU training step must not do between its kernels if it is never to wait for the GPU (and
// what a captured CUDA graph could not hold): allocate tensor memory or read values back to the
// host. A HostWorkCounter counts both on its thread while it lives: every owned Storage made, and
// every read-back (Tensor::to_vector and item, and the direct device-to-host copies, which call
// note_read). The CPU counts the same calls, so a CPU test shows what a step does on the GPU.
// Counters nest: an inner one's counts are added to the outer one's when it ends.
struct HostWork {
  int64_t allocations = 0, reads = 0;
};
class HostWorkCounter {
 public:
  HostWorkCounter();
  ~HostWorkCounter();
  HostWorkCounter(const HostWorkCounter&) = delete;
  HostWorkCounter& operator=(const HostWorkCounter&) = delete;
  const HostWork& counted() const { return work_; }
  // Counted by the thread's innermost counter, if any.
  static void note_allocation();
  static void note_read();

 private:
  HostWork work_;
  HostWorkCounter* outer_;
  static thread_local HostWorkCounter* current_;
};

// Up to 4 dimensions, stored inline.
struct Shape {
  static constexpr int kMaxDims = 4;
  std::array<int64_t, kMaxDims> dims{};
  int ndim = 0;

  Shape() = default;
  Shape(std::initializer_list<int64_t> list);
  static Shape from_vector(const std::vector<int64_t>& list);
  int64_t operator[](int i) const { return dims[i]; }
  int64_t& operator[](int i) { return dims[i]; }
  int64_t numel() const;
  bool operator==(const Shape& other) const;
  bool operator!=(const Shape& other) const { return !(*this == other); }
  std::string str() const;  // "[218, 768]"
};

// Owns one device allocation. CPU memory is 64-byte aligned; CUDA memory comes from the caching
// allocator (tensor/cuda/backend.h). Or borrows host bytes that `owner` keeps alive (a memory mapping).
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device = Device::CPU;
  std::shared_ptr<const void> owner;  // set: borrowed bytes, not freed here
  bool pinned = false;                // page-locked host memory (Tensor::empty_pinned)
  Storage(size_t bytes, Device device, bool pinned = false);
  Storage(void* borrowed, size_t bytes, std::shared_ptr<const void> owner);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

class Tensor {
 public:
  Tensor() = default;  // undefined tensor: defined() is false

  // Creation. Contents of empty() are unspecified.
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  // A host tensor in page-locked memory when a GPU is available (copies to the device from it run
  // asynchronously: tensor/cuda/backend.h CudaUpload), in ordinary memory otherwise.
  static Tensor empty_pinned(const Shape& shape, DType dtype = DType::F32);
  bool is_pinned() const { return storage_ && storage_->pinned; }
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor full(const Shape& shape, double value, DType dtype = DType::F32,
                     Device device = Device::CPU);
  static Tensor scalar(double value, DType dtype = DType::F32, Device device = Device::CPU);
  // Copies values (converted to dtype) from host memory.
  static Tensor from_vector(const std::vector<double>& values, const Shape& shape,
                            DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor from_data(const float* values, const Shape& shape, Device device = Device::CPU);
  // A host tensor over bytes it does not own (e.g. a memory-mapped file's), which `owner` keeps alive
  // as long as any view of it lives. The bytes must be aligned to the element size and must not be
  // written (a read-only mapping faults).
  static Tensor borrowed(const void* data, const Shape& shape, DType dtype, std::shared_ptr<const void> owner);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return shape_.ndim; }
  int64_t size(int dim) const;  // negative dims count from the end
  int64_t numel() const { return shape_.numel(); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : Device::CPU; }
  size_t nbytes() const { return numel() * dtype_size(dtype_); }
  std::string describe() const;  // "f32[218, 768] cpu"

  // Raw pointers to the first element. The typed forms check the dtype.
  void* raw();
  const void* raw() const;
  template <typename T>
  T* data();
  template <typename T>
  const T* data() const;

  // Views sharing storage.
  Tensor reshape(const Shape& shape) const;
  Tensor slice_rows(int64_t begin, int64_t end) const;  // rows [begin, end) of dim 0
  bool shares_storage(const Tensor& other) const { return storage_ == other.storage_; }
  // True when this is the only handle on host bytes of its own (not borrowed) that it spans whole:
  // writing them in place then changes no other tensor.
  bool owns_its_host_bytes() const {
    return storage_ && storage_.use_count() == 1 && storage_->device == Device::CPU && !storage_->owner &&
           offset_ == 0 && nbytes() == storage_->bytes;
  }

  // New tensors.
  Tensor clone() const;
  Tensor to(Device device) const;  // returns *this when already there
  Tensor to(DType dtype) const;

  // Host read-back (copies from the device when needed).
  std::vector<double> to_vector() const;
  double item() const;  // requires numel() == 1

 private:
  std::shared_ptr<Storage> storage_;
  int64_t offset_ = 0;  // in elements
  Shape shape_;
  DType dtype_ = DType::F32;
};

template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::F32;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::F64;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::I32;
}
template <>
constexpr DType dtype_of<BFloat16>() {
  return DType::BF16;
}
template <>
constexpr DType dtype_of<Float16>() {
  return DType::F16;
}

template <typename T>
T* Tensor::data() {
  if (dtype_of<T>() != dtype_) throw Error(cat("Tensor::data: asked for ", dtype_name(dtype_of<T>()), " of ", describe()));
  return static_cast<T*>(raw());
}
template <typename T>
const T* Tensor::data() const {
  if (dtype_of<T>() != dtype_) throw Error(cat("Tensor::data: asked for ", dtype_name(dtype_of<T>()), " of ", describe()));
  return static_cast<const T*>(raw());
}

}  // namespace sae
