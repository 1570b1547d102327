// The device side of a run's batches (sae/data/prefetch.h BatchUpload), for --device-data:
//   on CUDA, two device buffers, each filled from the prefetcher's page-locked host buffer by a
//   CudaUpload (tensor/cuda/backend.h): the copy runs on its own stream while the step before it
//   runs, and the step waits for it on the device, not on the host;
//   on the CPU, two host buffers filled with memcpy (the same protocol with plain copies: what the
//   tests run where no GPU is).
// Letters: N tokens (up to max_tokens), D input width.
#pragma once
#include <cstdint>
#include <memory>

#include "sae/data/prefetch.h"

namespace sae {

std::unique_ptr<BatchUpload> make_batch_upload(Device device, int64_t max_tokens, int64_t d);

}  // namespace sae
