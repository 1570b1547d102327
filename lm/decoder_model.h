// DecoderModel: the decoder-only transformer every supported family runs on (docs/models.md), on CPU
// or CUDA, forward pass only (no autograd graph), one workspace reused between calls. A family
// (lm/model_family.h: GPT-Neo, GPT-2, GPT-NeoX/Pythia, Llama, Qwen 2, Mistral, Gemma 2) states its
// differences as data in a DecoderConfig (norms, position scheme, residual wiring, activation, biases,
// key/value heads, per-layer attention window and score scale, Gemma 2's extras) and as a table
// mapping its file's tensors onto the parameters below; the forward pass itself is written once, here:
//   x = E[ids] * embed_scale (+ P[positions] when positions are learned)        hidden_states[0]
//   per block:  a = norm1(x); [q k v] = a Wqkv^T (+ b); rotary on q, k (when rotary);
//               z = softmax(cap(scale q k^T), causal / local mask) v  (heads side by side: hook_z;
//                   query head j reads key/value head j / (H / KV))
//               attn_out = z Wo^T (+ bo)  (then post-norm1 when post_norms)
//               sequential:  x = x + attn_out;  m = norm2(x);   parallel:  m = norm2(x_before)
//               mlp_out = act(m Win^T + bin) Wout^T + bout (gated: act(gate) * up; then post-norm2)
//               x = x + (attn_out when parallel) + mlp_out
//   y = final_norm(x);  logits = cap(y U^T)                                      hidden_states[N]
// Hooks (lm/hook_points.h) read or change the state at any TransformerLens hook point, and a run
// stops at the requested one: the blocks after it are neither loaded (load with a ModelPart) nor run.
// Generation runs one new token at a time against a KvCache (lm/generate.h).
// Letters: T tokens, d hidden size, H heads, KV key/value heads, hd head size, f MLP width, V
// vocabulary, P positions, N blocks, R rotated pairs per head (rotary dims / 2).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lm/hook_points.h"
#include "tensor/tensor.h"

namespace sae {

enum class NormKind { LayerNorm, RMSNorm };       // RMSNorm: x / sqrt(mean(x^2) + eps) * w, no bias
enum class PositionKind { Learned, Rotary };       // a table added to the embeddings, or rotary on q and k
// The MLP: act(m Win^T + bin) Wout^T + bout with the tanh GELU or the erf GELU, or gated (Win holds
// the gate's rows then the up projection's, [2f, d]): (act(gate) * up) Wout^T with silu (SwiGLU:
// Llama, Qwen 2, Mistral) or the tanh GELU (GeGLU: Gemma 2).
enum class MlpActivation { GeluNew, GeluExact, SwiGlu, GeGlu };
enum class ResidualWiring { Sequential, Parallel };
// How rotary frequencies are rescaled for long contexts (Hugging Face's rope_type): none (default),
// linear (every frequency / factor) or llama3 (low frequencies / factor, high ones kept, smoothed between).
struct RopeScaling {
  enum class Kind { None, Linear, Llama3 } kind = Kind::None;
  double factor = 1, low_freq_factor = 1, high_freq_factor = 4, original_positions = 8192;
};

// What one block's attention does differently from the others.
struct AttentionLayer {
  int64_t window = 0;        // 0: global (causal); else a query sees exactly `window` keys, itself included
  double score_scale = 1.0;  // scores = score_scale * q k^T (GPT-Neo 1; GPT-2 1/sqrt(hd), / (L+1) optionally)
};

struct DecoderConfig {
  std::string family;  // the family's display name ("GPT-Neo", "GPT-2", "GPT-NeoX")
  std::string source;  // the config file (or a label), for messages
  int64_t vocab_size = 0, hidden_size = 0, num_layers = 0, num_heads = 0, head_dim = 0;
  int64_t num_kv_heads = 0;  // grouped-query attention: key/value heads (0: num_heads); divides num_heads
  int64_t intermediate_size = 0, max_positions = 0;
  NormKind norm = NormKind::LayerNorm;
  double norm_eps = 1e-5;
  PositionKind positions = PositionKind::Learned;
  int64_t rotary_dims = 0;      // rotary: the first rotary_dims of each head are turned (even, <= hd)
  double rotary_base = 10000;   // rotary: theta; pair j turns by position * base^(-2j / rotary_dims)
  RopeScaling rope_scaling;     // rotary: rescaled frequencies
  MlpActivation activation = MlpActivation::GeluNew;
  ResidualWiring residual = ResidualWiring::Sequential;
  bool qkv_bias = false, out_bias = true, mlp_bias = true;
  bool tie_word_embeddings = true;  // the unembedding is the token embedding unless the file has its own
  // Gemma 2: the embeddings are multiplied by embed_scale (float32 sqrt(d)); post_norms adds a norm
  // after attention and after the MLP (their outputs are normed before joining the residual);
  // attention scores and final logits are soft-capped, cap tanh(s / cap), where the cap is > 0.
  float embed_scale = 1.0f;
  bool post_norms = false;
  double attn_softcap = 0, final_softcap = 0;
  std::vector<AttentionLayer> layers;  // one per block

  int64_t attention_width() const { return num_heads * head_dim; }  // H hd: hook_z's width
  int64_t kv_heads() const { return num_kv_heads > 0 ? num_kv_heads : num_heads; }
  int64_t kv_width() const { return kv_heads() * head_dim; }  // one of k, v: KV hd
  int64_t qkv_width() const { return (num_heads + 2 * kv_heads()) * head_dim; }
  bool gated_mlp() const { return activation == MlpActivation::SwiGlu || activation == MlpActivation::GeGlu; }
  // The width of the state at a hook point: hd * H for hook_z, d elsewhere.
  int64_t hook_width(const HookSite& site) const;
  // Every parameter the forward pass reads (our names, docs/models.md), with its shape, for the
  // first `blocks` blocks and, with `head`, the final norm and the unembedding. "unembed" is listed
  // only when untied.
  std::vector<std::pair<std::string, std::vector<int64_t>>> parameter_shapes(int64_t blocks, bool head) const;
  void check() const;  // Error for sizes that contradict each other (a family's parser bug, not user input)
};

// The site as a model of this config reads it: hidden_states[K] resolved (K < N:
// blocks.K.hook_resid_pre), the block index in range, resid_mid refused where the residual is
// parallel. UsageError naming `what` (the option) otherwise.
HookSite resolve_hook_site(const DecoderConfig& config, const HookSite& site, const std::string& what = "--hook");

// Which parts of a model to load: the embeddings, the first `blocks` blocks (-1: all) and, with
// `head`, the final norm and the unembedding.
struct ModelPart {
  int64_t blocks = -1;
  bool head = true;
  static ModelPart whole() { return {}; }
  // What a run to `site` needs (the final norm only for the final output; never the unembedding).
  static ModelPart up_to(const HookSite& site, int64_t layers);
};

// Float32 CPU tensors by name.
using NamedTensors = std::map<std::string, Tensor>;

// Called with (k, state) where state [T, d] is hidden_states[k]; it may read it (copy activations
// out) or change it in place (add a steering vector, put back an SAE's reconstruction): every later
// block, the final norm and the logits are computed from what it leaves there. state is a view into
// the model's workspace: copy what must outlive the call.
using ResidualHook = std::function<void(int layer, Tensor& state)>;

// A function run at one hook site on its state [T, width] (a view into the workspace: copy what must
// outlive the call; change it in place to change the rest of the run, never replace it).
using SiteHook = std::function<void(Tensor& state)>;
struct SiteHooks {
  std::vector<std::pair<HookSite, SiteHook>> at;  // called in the order the sites are computed
  SiteHooks() = default;
  SiteHooks(const HookSite& site, SiteHook hook) { at.emplace_back(site, std::move(hook)); }
  bool empty() const { return at.empty(); }
};

// The keys and values of one sequence's positions 0..length()-1, per layer, so that the next
// positions can be run alone (DecoderModel::logits_cached). Made by new_cache for one model; it
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
  friend class DecoderModel;
  const void* owner_ = nullptr;        // the model's workspace: identifies the model (which may move)
  int64_t length_ = 0, capacity_ = 0;
  std::vector<Tensor> keys_, values_;  // per layer [capacity, KV hd]: one row per position (keys after rotary)
  Tensor key_heads_, value_heads_;     // flat scratch: the rows a block attends to, heads first [KV, keys, hd]
  Tensor scores_;                      // flat scratch [H, new positions, keys], grown when needed
};

class DecoderModel {
 public:
  // From our parameters (the names of DecoderConfig::parameter_shapes; families convert their
  // files' tensors to these, lm/model_family.h) for the part given. Every listed tensor must be
  // present with its shape; "unembed" defaults to the token embedding when tied. Errors name `source`.
  static DecoderModel from_parameters(DecoderConfig config, const NamedTensors& parameters, Device device,
                                      const std::string& source, ModelPart part = ModelPart::whole());

  DecoderModel(DecoderModel&&) noexcept;
  DecoderModel& operator=(DecoderModel&&) noexcept;
  virtual ~DecoderModel();

  const DecoderConfig& config() const { return config_; }
  Device device() const { return device_; }
  const std::string& source() const { return source_; }
  int64_t loaded_blocks() const { return loaded_blocks_; }
  bool has_head() const { return has_head_; }

  // The site as this model reads it: hidden_states[K] resolved (K < N: blocks.K.hook_resid_pre),
  // the block index in range, resid_mid refused where the residual is parallel, and what the site
  // needs loaded. UsageError naming `what` (the option) otherwise.
  HookSite resolve(const HookSite& site, const std::string& what = "--hook") const;

  // The state at `site` ([T, hook_width], a view into the workspace valid until the next call) after
  // running only what it needs; `hooks` run on the way (those at or before the site). Ids in [0, V),
  // 1 <= T <= P (DataError otherwise). One call at a time per model (the workspace is shared).
  Tensor forward_to_site(const std::vector<int32_t>& ids, const HookSite& site, const SiteHooks& hooks = {});
  // Logits [T, V] of the whole model (a new tensor) with the hooks applied.
  Tensor logits_with(const std::vector<int32_t>& ids, const SiteHooks& hooks);
  // The same into `out` (made [T, V] on the model's device unless it is already; reused across calls).
  void logits_into(Tensor& out, const std::vector<int32_t>& ids, const SiteHooks& hooks);

  // Hugging Face's hidden_states[layer] (0 <= layer <= N), [T, d] on the model's device (a new tensor).
  Tensor hidden_states(const std::vector<int32_t>& ids, int layer);
  // Logits [T, V] of the full model (a new tensor), `hook` called on every hidden_states[k].
  Tensor logits(const std::vector<int32_t>& ids, const ResidualHook& hook = {});
  // Runs blocks 0..layer-1, calling `hook` (when set) on hidden_states[k] for k = 0..layer in order;
  // returns hidden_states[layer] as a view into the workspace, valid until the next call.
  Tensor forward_to(const std::vector<int32_t>& ids, int layer, const ResidualHook& hook = {});

  // A cache for one sequence of up to `capacity` positions (1 <= capacity <= P; DataError otherwise).
  KvCache new_cache(int64_t capacity) const;
  // Runs `ids` as positions cache.length() .. cache.length() + n - 1 of the cache's sequence, appends
  // their keys and values, and returns their logits [n, V] (only the last row when last_only).
  // Hooks are called on the rows of the new positions only ([n, width]). The logits equal those rows
  // of logits(all ids so far) up to float rounding. DataError when the cache is full (or the
  // positions would pass P) or an id is out of range; the cache is unchanged when anything throws.
  Tensor logits_cached(const std::vector<int32_t>& ids, KvCache& cache, const SiteHooks& hooks = {},
                       bool last_only = false);
  Tensor logits_cached(const std::vector<int32_t>& ids, KvCache& cache, const ResidualHook& hook,
                       bool last_only = false);

  // Sizes the workspace for sequences of up to max_tokens (it grows on its own when needed).
  void reserve(int64_t max_tokens);
  int64_t workspace_tokens() const;

  // Our parameters by name (docs/models.md: "embed.tokens", "blocks.0.attn.qkv.weight", "unembed", ...).
  const Tensor& parameter(const std::string& name) const;
  // The unembedding [V, d] (the token embedding when tied). Error when the head was not loaded.
  const Tensor& unembedding() const;
  std::vector<std::string> parameter_names() const;

  // The hidden_states hook as site hooks: hook(k, state) at every hidden_states[k], k <= up_to.
  SiteHooks hidden_state_hooks(const ResidualHook& hook, int64_t up_to) const;

 protected:
  DecoderModel();

 private:
  struct Block;
  struct Workspace;
  struct Run;  // one forward call's hooks and stop
  void check_ids(const std::vector<int32_t>& ids, int64_t first_position) const;
  void require_loaded(const HookSite& site) const;
  // Runs `ids` at positions first_position.. (cache->length(), or 0 without a cache) up to `stop`
  // with the hooks; returns the state at `stop`.
  Tensor run(const std::vector<int32_t>& ids, const HookSite& stop, const SiteHooks& hooks, KvCache* cache);
  // One block; false when the run stopped inside it (then *stopped_at holds the state).
  bool run_block(size_t index, int64_t tokens, int64_t past, KvCache* cache, Run& run);

  DecoderConfig config_;
  Device device_ = Device::CPU;
  std::string source_;
  int64_t loaded_blocks_ = 0;
  bool has_head_ = false;
  std::map<std::string, Tensor> parameters_;  // every parameter by our name
  std::vector<Block> blocks_;
  Tensor embed_tokens_, embed_positions_, final_weight_, final_bias_, unembed_;
  Tensor rotary_cos_, rotary_sin_;  // [P', R] on the device (rotary only), P' <= P positions so far
  std::vector<float> rotary_inv_freq_;  // [R]
  void extend_rotary(int64_t positions);
  void norm_(Tensor& out, const Tensor& x, const Tensor& weight, const Tensor& bias);  // config_.norm of x's rows
  void cap_logits_(Tensor& logits) const;                                              // final soft-capping
  Tensor unit_weight_, zero_bias_;  // [d]: a norm without its affine part (ln2.hook_normalized)
  std::unique_ptr<Workspace> workspace_;
};

}  // namespace sae
