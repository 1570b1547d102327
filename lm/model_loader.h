// Loading a Hugging Face model folder into a DecoderModel, for every family alike: config.json ->
// the family (lm/model_family.h) and its DecoderConfig; the weights (model.safetensors, or the shards
// model.safetensors.index.json lists; F32, F16, BF16 or F64) checked against the
// family's table and converted to our parameters, only for the part of the model asked for (the
// blocks after it are neither read nor converted: the file is memory-mapped and their pages are
// never touched). The weight matrices of a 16-bit file (the embedding table, the attention's and
// MLP's GEMM weights, the unembedding, where the family's rule copies or stacks rows) stay bf16 / f16
// as stored: the embedding gather and the GEMMs widen them (tensor/ops.h); everything else is
// widened to float32 at load. A 16-bit token embedding is not even copied: the model gathers its rows
// from the memory-mapped file, so only the rows of the tokens seen take memory. Errors are one-line
// DataErrors naming the file and the tensor or key.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "io/json.h"
#include "lm/decoder_model.h"
#include "lm/model_family.h"

namespace sae {

// Where the tensors come from: safetensors files (memory-mapped) or tensors in memory.
class WeightSource {
 public:
  static WeightSource open_model_dir(const std::string& dir);   // model.safetensors or its index's shards
  static WeightSource in_memory(const NamedTensors& tensors, const std::string& label);
  WeightSource(WeightSource&&) noexcept;
  WeightSource& operator=(WeightSource&&) noexcept;
  ~WeightSource();

  std::vector<std::string> names() const;  // sorted
  bool has(const std::string& name) const;
  std::vector<int64_t> shape(const std::string& name) const;
  Tensor read_f32(const std::string& name) const;  // float32 on the host; DataError for integer tensors
  void check_float(const std::string& name) const;  // DataError unless F32, F16, BF16 or F64 (header only)
  // Rows [begin, begin + count) along dim 0 as float32 into out (count * row length floats).
  void read_rows(const std::string& name, int64_t begin, int64_t count, float* out) const;
  // The stored dtype: BF16 or F16 for 16-bit tensors, F32 otherwise (F64 and F32 files alike).
  DType stored_dtype(const std::string& name) const;
  // Rows as stored, into out (count * row length elements of stored_dtype), for 16-bit tensors.
  void read_rows_stored(const std::string& name, int64_t begin, int64_t count, void* out) const;
  // A 16-bit tensor of a file as a read-only tensor over its memory-mapped bytes (the mapping kept
  // alive by the tensor, not copied: only the rows used come into memory); undefined when the tensor
  // is not 16-bit, not in a file, or its bytes are not aligned to its element size.
  Tensor borrowed_stored(const std::string& name) const;
  // Rows [begin, begin + count) need not stay resident (no-op in memory).
  void release_rows(const std::string& name, int64_t begin, int64_t count) const;
  // Done with a tensor: its pages of the file need not stay resident (no-op in memory).
  void release(const std::string& name) const;
  std::string where(const std::string& name) const;  // the file holding it (or the label)
  const std::string& label() const { return label_; }  // the file, or "N shards of DIR"
  int64_t bytes() const;  // the size of the files (0 in memory)

 private:
  WeightSource();
  struct Files;
  std::shared_ptr<Files> files_;  // shared with the tensors borrowed from its mappings
  const NamedTensors* memory_ = nullptr;
  std::string label_;
};

// Checks every tensor of the source against the family's rules (unexpected names, shapes, missing
// ones) and converts those of `part` to our parameters (host tensors, finite: float32, or bf16 / f16
// for the weight matrices a 16-bit file stores, see above).
NamedTensors convert_weights(const ModelFamily& family, const DecoderConfig& config, const WeightSource& source,
                             ModelPart part);

struct ModelFolder {
  const ModelFamily* family = nullptr;
  DecoderConfig config;
  std::string name;  // config.json's _name_or_path when set (e.g. "gpt2"), else the folder's name
};
// dir/config.json: its family and DecoderConfig (DataError for a family we do not read).
ModelFolder read_model_config(const std::string& dir);

// The unembedding [V, d] of the model in `dir` (float32, host: its own tensor when the file has one,
// else the tied token embedding) with the final norm's weight folded in, W_U[v, j] x w[j] (1 + w[j]
// for Gemma), each row then centred over j for a LayerNorm (which removes the mean of what reaches
// it), as TransformerLens's fold_ln gives W_U to feature dashboards (its center_unembed, a constant
// per feature, left out). Nothing else is read.
Tensor load_unembedding(const std::string& dir);

// The weights_fingerprint of a model folder's files (model.safetensors, or its index and every
// shard it names), joined (io/file_fingerprint.h): a run resumed on a model replaced under the same
// path can tell, and so can a program given another model than an SAE's (cfg.json
// sae_cpp.data.model_fingerprint).
std::string model_weights_fingerprint(const std::string& dir);

// The model in `dir` (config.json + safetensors), `part` of it, on `device`.
DecoderModel load_decoder_model(const std::string& dir, Device device = Device::CPU,
                                ModelPart part = ModelPart::whole());

}  // namespace sae
