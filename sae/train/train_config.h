// TrainConfig: every option of a training run (SPEC section 5), with the original study's values
// as defaults, its JSON form (config.json; read back by --resume) and validation.
#pragma once
#include <cstdint>
#include <string>

#include "sae/data/synthetic.h"
#include "io/json.h"
#include "tensor/tensor.h"

namespace sae {

struct TrainConfig {
  std::string data = "synthetic";    // "synthetic" or a .safetensors / .npy path
  SyntheticOptions synthetic;
  int64_t features = 10000;          // F (d_sae)
  double l1 = 0.0;                   // lambda
  double lr = 1e-5;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  int64_t steps = 35000;
  int64_t batch_tokens = 0;          // 0 = one story per step ("story")
  std::string normalize = "story";   // story | dataset | none
  std::string init;                  // start from this SAELens-format checkpoint directory
  std::string resume;                // continue this run (run dir or checkpoint dir)
  std::string out = "runs/sae";
  uint64_t seed = 0;
  std::string device = "auto";       // cpu | cuda | auto
  bool tf32 = false;                 // CUDA: TF32 tensor-core GEMMs (faster, ~1e-3 relative error)
  std::string sparse = "auto";       // auto | on | off: sparse decoder and gradients (sae_step.h)
  std::string prefetch = "auto";     // prepare the next batch on a worker thread: auto (on for CUDA) | on | off
  int64_t checkpoint_every = 5000;
  int64_t log_every = 10;
  int64_t lr_warmup_steps = 0;       // linear warm-up from 0
  int64_t lr_decay_steps = 0;        // linear decay to 0 over the last N steps
  int64_t l1_warmup_steps = 0;       // lambda ramps linearly from 0
  int64_t dead_window = 1000000;     // tokens without firing before a feature counts as dead
  std::string progress = "auto";     // auto (bar on a terminal) | bar | lines | none

  void validate() const;  // UsageError naming the option
  Json to_json() const;
  static TrainConfig from_json(const Json& j);  // DataError on missing or mistyped keys
  std::string batch_name() const;  // "story" or the token count
  double lr_at(int64_t step) const;      // step counts from 1
  double l1_at(int64_t step) const;
};

// Parses --batch: "story" or a positive integer. UsageError otherwise.
int64_t parse_batch(const std::string& text);
// Resolves --device: auto picks cuda when a GPU is present. UsageError for unknown names or cuda
// without a GPU.
Device resolve_device(const std::string& name);

}  // namespace sae
