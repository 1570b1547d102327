// GPT-Neo (TinyStories-33M and its kin), forward pass only, on CPU or CUDA, exactly as Hugging Face
// transformers computes it (docs/gpt_neo.md is the specification; its "Our implementation" section
// describes this code): the config.json rules, loading a model folder (config.json +
// model.safetensors, F32/F16/BF16 widened to float32), and a forward pass that builds no autograd
// graph and reuses one workspace.
// Letters: T tokens, d hidden size, H heads, hd = d / H, f MLP width, V vocabulary,
// P max positions, L layers. hidden_states[k] is Hugging Face's: k = 0 the embeddings, 1..L-1 the
// residual stream after block k, L the last block's output with ln_f applied.
// Generation runs one new token at a time against a KvCache (the keys and values of the positions
// already run), as Hugging Face's generate does with its cache; lm/generate.h decodes with it.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "io/json.h"
#include "tensor/tensor.h"

namespace sae {

enum class AttentionKind { Global, Local };

// What the forward pass needs from config.json, after every rule of docs/gpt_neo.md section 1.
struct GptNeoConfig {
  int64_t vocab_size = 0;          // V
  int64_t hidden_size = 0;         // d
  int64_t num_layers = 0;          // L
  int64_t num_heads = 0;           // H
  int64_t max_positions = 0;       // P (max_position_embeddings)
  int64_t window_size = 256;       // local attention: a query sees exactly this many keys, itself included
  int64_t intermediate_size = 0;   // f (null in the file: 4 d)
  double layer_norm_epsilon = 1e-5;
  bool tie_word_embeddings = true;
  std::vector<AttentionKind> attention_layers;  // one per layer
  std::string source;                           // the file it came from, for messages

  int64_t head_dim() const { return hidden_size / num_heads; }

  // Throws DataError naming `source` and the key for anything docs/gpt_neo.md section 1 refuses
  // (and for sizes above 2^24, which no GPT-Neo has and which would only allocate absurdly).
  static GptNeoConfig from_json(const Json& config, const std::string& source);
  static GptNeoConfig load(const std::string& config_json_path);

  // Every parameter a weights file must hold, in file order of layers, with its shape ([out, in]
  // for Linear weights). lm_head.weight is listed only when the embeddings are not tied.
  std::vector<std::pair<std::string, std::vector<int64_t>>> parameter_shapes() const;
};

// Float32 CPU tensors by their safetensors names (transformer.h.0.ln_1.weight, ...).
using NamedTensors = std::map<std::string, Tensor>;

// Called with (k, state) where state [T, d] is hidden_states[k]; it may read it (copy activations
// out) or change it in place (add a steering vector, put back an SAE's reconstruction): every later
// block, ln_f and the logits are computed from what it leaves there. state is a view into the
// model's workspace: copy what must outlive the call.
using ResidualHook = std::function<void(int layer, Tensor& state)>;

// The keys and values of one sequence's positions 0..length()-1, per layer, so that the next
// positions can be run alone (GptNeo::logits_cached). Made by GptNeo::new_cache for one model; it
// holds up to capacity() positions (at most P). clear() starts a new sequence.
class KvCache {
 public:
  KvCache();
  KvCache(KvCache&&) noexcept;
  KvCache& operator=(KvCache&&) noexcept;
  ~KvCache();
  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }
  void clear() { length_ = 0; }

 private:
  friend class GptNeo;
  const void* owner_ = nullptr;        // the model's workspace: identifies the model (which may move)
  int64_t length_ = 0, capacity_ = 0;
  std::vector<Tensor> keys_, values_;  // per layer [capacity, d]: one row per position, heads side by side
  Tensor key_heads_, value_heads_;     // flat scratch: the rows a block attends to, heads first [H, keys, hd]
  Tensor scores_;                      // flat scratch [H, new positions, keys], grown when needed
};

class GptNeo {
 public:
  // dir/config.json and dir/model.safetensors. Every expected tensor must be present with its shape
  // (F32, F16, BF16 or F64, widened to float32) and finite; lm_head.weight is used when present, else
  // the tied wte; the legacy buffers transformer.h.{i}.attn.attention.bias / .masked_bias are
  // ignored; any other name is refused. Errors are one-line DataErrors naming the file and tensor.
  static GptNeo load(const std::string& model_dir, Device device = Device::CPU);
  // The same checks on tensors in memory (e.g. lm/hashed_weights.h); `source` names them in errors.
  static GptNeo from_tensors(GptNeoConfig config, const NamedTensors& weights, Device device,
                             const std::string& source);

  GptNeo(GptNeo&&) noexcept;
  GptNeo& operator=(GptNeo&&) noexcept;
  ~GptNeo();

  const GptNeoConfig& config() const { return config_; }
  Device device() const { return device_; }

  // Hugging Face's hidden_states[layer] (0 <= layer <= L) for one sequence of ids, [T, d] float32
  // on the model's device (a new tensor). Runs only blocks 0..layer-1 (and ln_f when layer == L),
  // never lm_head.
  Tensor hidden_states(const std::vector<int32_t>& ids, int layer);
  // Logits [T, V] of the full model (a new tensor).
  Tensor logits(const std::vector<int32_t>& ids, const ResidualHook& hook = {});

  // The forward pass behind both: runs blocks 0..layer-1, calling `hook` (when set) on
  // hidden_states[k] for k = 0..layer in order. Returns hidden_states[layer] as a view into the
  // workspace, valid until the next call. Ids must be in [0, V) and 1 <= T <= P (DataError
  // otherwise). One call at a time per model (the workspace is shared).
  Tensor forward_to(const std::vector<int32_t>& ids, int layer, const ResidualHook& hook = {});

  // A cache for one sequence of up to `capacity` positions (1 <= capacity <= P; DataError otherwise).
  KvCache new_cache(int64_t capacity) const;
  // Runs `ids` as positions cache.length() .. cache.length() + n - 1 of the cache's sequence, appends
  // their keys and values to the cache, and returns their logits [n, V] (only the last row, [1, V],
  // when last_only). `hook` is called as in forward_to, on the rows of the new positions only
  // ([n, d]): the earlier positions' hooked values live on in the cached keys and values. The logits
  // equal those rows of logits(all ids so far, hook) up to float rounding (the same formulas; GEMMs
  // of other shapes sum in another order). Local layers attend to exactly the last `window_size`
  // positions, as in the full forward. DataError when the cache is full (or the positions would pass
  // P) or an id is out of range; the cache is unchanged when anything throws.
  Tensor logits_cached(const std::vector<int32_t>& ids, KvCache& cache, const ResidualHook& hook = {},
                       bool last_only = false);

  // Sizes the workspace for sequences of up to max_tokens (it grows on its own when needed;
  // this only avoids the reallocation).
  void reserve(int64_t max_tokens);
  int64_t workspace_tokens() const;  // the length the workspace holds now

  // The model's own tensors, for tests, benchmarks and the feature browser: "wte", "wpe", "ln_f.weight",
  // "ln_f.bias", "lm_head" ([V, d]), and per block "h.{i}.qkv" ([3d, d]: q, k, v weights stacked),
  // "h.{i}.ln_1.weight", ".ln_1.bias", ".out_proj.weight", ".out_proj.bias", ".ln_2.weight", ".ln_2.bias",
  // ".mlp.c_fc.weight", ".mlp.c_fc.bias", ".mlp.c_proj.weight", ".mlp.c_proj.bias". Error for other names.
  const Tensor& parameter(const std::string& name) const;

 private:
  struct Block;
  struct Workspace;
  GptNeo();
  void check_ids(const std::vector<int32_t>& ids, int64_t first_position) const;
  // Runs `ids` at positions first_position.. (first_position = cache->length(), or 0 without a
  // cache) through blocks 0..layer-1 with the hook; returns hidden_states[layer] of those rows.
  Tensor forward_rows(const std::vector<int32_t>& ids, int layer, const ResidualHook& hook, KvCache* cache);
  void run_block(const Block& block, size_t index, int64_t tokens, KvCache* cache);

  GptNeoConfig config_;
  Device device_ = Device::CPU;
  std::string source_;
  std::map<std::string, Tensor> parameters_;
  std::vector<Block> blocks_;
  Tensor wte_, wpe_, ln_f_weight_, ln_f_bias_, lm_head_;
  std::unique_ptr<Workspace> workspace_;
};

}  // namespace sae
