// Tensor, Shape and Storage: creation, views, device and dtype conversion, host read-back.
#include "tensor/tensor.h"

#include <cstdlib>
#include <cstring>

#include "tensor/cuda/backend.h"
#include "tensor/ops.h"

namespace sae {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "f32";
    case DType::F64: return "f64";
    case DType::I32: return "i32";
    case DType::BF16: return "bf16";
    case DType::F16: return "f16";
  }
  return "?";
}
const char* device_name(Device device) { return device == Device::CPU ? "cpu" : "cuda"; }
size_t dtype_size(DType dtype) { return dtype == DType::F64 ? 8 : (is_half_dtype(dtype) ? 2 : 4); }

Shape::Shape(std::initializer_list<int64_t> list) {
  if (list.size() > kMaxDims) throw Error(cat("Shape: at most ", kMaxDims, " dims, got ", list.size()));
  for (int64_t d : list) dims[ndim++] = d;
}

Shape Shape::from_vector(const std::vector<int64_t>& list) {
  if (list.size() > kMaxDims) throw Error(cat("Shape: at most ", kMaxDims, " dims, got ", list.size()));
  Shape s;
  for (int64_t d : list) s.dims[s.ndim++] = d;
  return s;
}

int64_t Shape::numel() const {
  for (int i = 0; i < ndim; ++i)
    if (dims[i] == 0) return 0;  // before multiplying: huge dims before a zero must not overflow
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i)
    if (__builtin_mul_overflow(n, dims[i], &n)) throw Error(cat("Shape: ", str(), " has more elements than int64 holds"));
  return n;
}

bool Shape::operator==(const Shape& other) const {
  if (ndim != other.ndim) return false;
  for (int i = 0; i < ndim; ++i)
    if (dims[i] != other.dims[i]) return false;
  return true;
}

std::string Shape::str() const {
  std::string s = "[";
  for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

thread_local HostWorkCounter* HostWorkCounter::current_ = nullptr;

HostWorkCounter::HostWorkCounter() : outer_(current_) { current_ = this; }

HostWorkCounter::~HostWorkCounter() {
  current_ = outer_;
  if (outer_) {
    outer_->work_.allocations += work_.allocations;
    outer_->work_.reads += work_.reads;
  }
}

void HostWorkCounter::note_allocation() {
  if (current_) ++current_->work_.allocations;
}

void HostWorkCounter::note_read() {
  if (current_) ++current_->work_.reads;
}

Storage::Storage(size_t nbytes, Device dev, bool page_locked) : bytes(nbytes), device(dev), pinned(page_locked) {
  size_t alloc_bytes = nbytes == 0 ? 64 : (nbytes + 63) / 64 * 64;
  HostWorkCounter::note_allocation();
  if (pinned) {
    data = cuda_host_alloc(alloc_bytes);  // page-aligned
  } else if (device == Device::CPU) {
    data = std::aligned_alloc(64, alloc_bytes);
    if (!data) throw Error(cat("out of host memory allocating ", nbytes, " bytes"));
  } else {
    data = cuda_alloc(alloc_bytes);
  }
}

Storage::Storage(void* borrowed, size_t nbytes, std::shared_ptr<const void> keep_alive)
    : data(borrowed), bytes(nbytes), device(Device::CPU), owner(std::move(keep_alive)) {
  if (!owner) throw Error("Storage: borrowed bytes need an owner");
}

Storage::~Storage() {
  if (owner) return;  // borrowed
  if (pinned)
    cuda_host_free(data);
  else if (device == Device::CPU)
    std::free(data);
  else
    cuda_free(data);
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int i = 0; i < shape.ndim; ++i)
    if (shape[i] < 0) throw Error(cat("Tensor::empty: negative dimension in ", shape.str()));
  Tensor t;
  t.storage_ = std::make_shared<Storage>(shape.numel() * dtype_size(dtype), device);
  t.shape_ = shape;
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::borrowed(const void* data, const Shape& shape, DType dtype, std::shared_ptr<const void> owner) {
  for (int i = 0; i < shape.ndim; ++i)
    if (shape[i] < 0) throw Error(cat("Tensor::borrowed: negative dimension in ", shape.str()));
  if (reinterpret_cast<uintptr_t>(data) % dtype_size(dtype) != 0)
    throw Error(cat("Tensor::borrowed: bytes not aligned for ", dtype_name(dtype)));
  Tensor t;
  t.storage_ = std::make_shared<Storage>(const_cast<void*>(data), shape.numel() * dtype_size(dtype), std::move(owner));
  t.shape_ = shape;
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::empty_pinned(const Shape& shape, DType dtype) {
  for (int i = 0; i < shape.ndim; ++i)
    if (shape[i] < 0) throw Error(cat("Tensor::empty_pinned: negative dimension in ", shape.str()));
  Tensor t;
  t.storage_ = std::make_shared<Storage>(shape.numel() * dtype_size(dtype), Device::CPU, cuda_available());
  t.shape_ = shape;
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0.0, dtype, device); }

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  fill_(t, value);
  return t;
}

Tensor Tensor::scalar(double value, DType dtype, Device device) { return full(Shape{1}, value, dtype, device); }

Tensor Tensor::from_vector(const std::vector<double>& values, const Shape& shape, DType dtype, Device device) {
  if (static_cast<int64_t>(values.size()) != shape.numel())
    throw Error(cat("Tensor::from_vector: ", values.size(), " values for shape ", shape.str()));
  Tensor host = empty(shape, dtype, Device::CPU);
  if (dtype == DType::F32) {
    float* p = host.data<float>();
    for (size_t i = 0; i < values.size(); ++i) p[i] = static_cast<float>(values[i]);
  } else if (dtype == DType::I32) {
    int32_t* p = host.data<int32_t>();
    for (size_t i = 0; i < values.size(); ++i) p[i] = static_cast<int32_t>(values[i]);
  } else if (dtype == DType::BF16) {
    BFloat16* p = host.data<BFloat16>();
    for (size_t i = 0; i < values.size(); ++i) p[i] = to_bfloat16(static_cast<float>(values[i]));
  } else if (dtype == DType::F16) {
    Float16* p = host.data<Float16>();
    for (size_t i = 0; i < values.size(); ++i) p[i] = to_float16(static_cast<float>(values[i]));
  } else if (!values.empty()) {  // an empty vector's data() may be null: memcpy must not see it
    std::memcpy(host.raw(), values.data(), values.size() * sizeof(double));
  }
  return host.to(device);
}

Tensor Tensor::from_data(const float* values, const Shape& shape, Device device) {
  Tensor host = empty(shape, DType::F32, Device::CPU);
  if (host.nbytes() > 0) std::memcpy(host.raw(), values, host.nbytes());  // values may be null when empty
  return host.to(device);
}

int64_t Tensor::size(int dim) const {
  int d = dim < 0 ? dim + ndim() : dim;
  if (d < 0 || d >= ndim()) throw Error(cat("Tensor::size: dim ", dim, " out of range for ", describe()));
  return shape_[d];
}

std::string Tensor::describe() const {
  if (!defined()) return "undefined";
  return cat(dtype_name(dtype_), shape_.str(), " ", device_name(device()));
}

void* Tensor::raw() {
  if (!defined()) throw Error("Tensor: use of an undefined tensor");
  return static_cast<char*>(storage_->data) + offset_ * dtype_size(dtype_);
}

const void* Tensor::raw() const {
  if (!defined()) throw Error("Tensor: use of an undefined tensor");
  return static_cast<const char*>(storage_->data) + offset_ * dtype_size(dtype_);
}

Tensor Tensor::reshape(const Shape& shape) const {
  Shape resolved = shape;
  int infer = -1;
  int64_t known = 1;
  for (int i = 0; i < shape.ndim; ++i) {
    if (shape[i] == -1) {
      if (infer >= 0) throw Error(cat("reshape: more than one -1 in ", shape.str()));
      infer = i;
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0 && known > 0) resolved[infer] = numel() / known;
  if (resolved.numel() != numel())
    throw Error(cat("reshape: cannot view ", describe(), " as ", shape.str()));
  Tensor t = *this;
  t.shape_ = resolved;
  return t;
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  if (ndim() < 1 || begin < 0 || end < begin || end > shape_[0])
    throw Error(cat("slice_rows: rows [", begin, ", ", end, ") of ", describe()));
  int64_t row = ndim() == 1 ? 1 : numel() / shape_[0];
  Tensor t = *this;
  t.offset_ = offset_ + begin * row;
  t.shape_[0] = end - begin;
  return t;
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape_, dtype_, device());
  copy_(out, *this);
  return out;
}

Tensor Tensor::to(Device target) const {
  if (target == device()) return *this;
  Tensor out = empty(shape_, dtype_, target);
  if (target == Device::CUDA)
    cuda_copy_to_device(out.raw(), raw(), nbytes());
  else
    cuda_copy_to_host(out.raw(), raw(), nbytes());
  return out;
}

Tensor Tensor::to(DType target) const {
  if (target == dtype_) return *this;
  Tensor out = empty(shape_, target, device());
  copy_(out, *this);  // copy_ converts between dtypes
  return out;
}

std::vector<double> Tensor::to_vector() const {
  HostWorkCounter::note_read();
  Tensor host = to(Device::CPU);
  std::vector<double> values(numel());
  if (dtype_ == DType::F32) {
    const float* p = host.data<float>();
    for (int64_t i = 0; i < numel(); ++i) values[i] = p[i];
  } else if (dtype_ == DType::I32) {
    const int32_t* p = host.data<int32_t>();
    for (int64_t i = 0; i < numel(); ++i) values[i] = p[i];
  } else if (dtype_ == DType::BF16) {
    const BFloat16* p = host.data<BFloat16>();
    for (int64_t i = 0; i < numel(); ++i) values[i] = widen(p[i]);
  } else if (dtype_ == DType::F16) {
    const Float16* p = host.data<Float16>();
    for (int64_t i = 0; i < numel(); ++i) values[i] = widen(p[i]);
  } else if (!values.empty()) {
    std::memcpy(values.data(), host.raw(), numel() * sizeof(double));
  }
  return values;
}

double Tensor::item() const {
  if (numel() != 1) throw Error(cat("item: expected one element, got ", describe()));
  return to_vector()[0];
}

}  // namespace sae
