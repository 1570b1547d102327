// DecoderModel: parameters, workspace, hooks and the forward pass (see decoder_model.h). Every op
// comes from tensor/ops.h, so CPU and CUDA run the same code. Letters as in decoder_model.h.
//
// One block (run_block):
//   a = norm1(x);  qkv [T, (H + 2 KV) hd] = a Wqkv^T (+ bqkv)   one GEMM (q, k, v weights stacked at load)
//   heads [H + 2KV, T, hd] = swap_axes01(qkv viewed [T, H + 2KV, hd]);  rotary on rows 0..H+KV-1 (q, k)
//   scores [H, T, T] = scale q k^T (the GEMM's alpha; one batch entry per key/value head holding its
//   group of query heads), soft-capped (Gemma 2);  mask (-inf), softmax in place
//   context [H, T, hd] = scores v;  z [T, H hd] = swap_axes01(context)
//   sequential: x += (z Wo^T + bo);  m = LN2(x)
//   parallel:   m = LN2(x) first (from the block's input), then x += (z Wo^T + bo)
//   hidden [T, f] = act(m Win^T + bin) (gated: act(gate) * up);  x += (hidden Wout^T + bout)
//   (Gemma 2: attn_out and mlp_out pass through their post-norms before being added)
// attn_out and mlp_out always have buffers of their own (computed, hooked when asked, then added), so
// every state is the same to the bit whichever hooks a run reads; a hook on ln2.hook_normalized
// computes LN2 without its affine part, hooks it, then applies weight and bias.
// With a KV cache (generation) the T rows are the new positions; their k and v rows are appended to
// the cache and the queries attend to the cached rows instead.
#include "lm/decoder_model.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "tensor/cuda/backend.h"
#include "tensor/ops.h"

namespace sae {

namespace {

// Flat 1-D workspace buffer -> a contiguous view of its first shape.numel() elements.
Tensor view(const Tensor& flat, const Shape& shape) { return flat.slice_rows(0, shape.numel()).reshape(shape); }

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::vector<int64_t> shape_of(const Tensor& t) {
  std::vector<int64_t> s;
  for (int i = 0; i < t.ndim(); ++i) s.push_back(t.size(i));
  return s;
}

// Hugging Face's rope_type rescaling of the inverse frequencies, in float32 as it computes them
// (modeling_rope_utils: _compute_linear_scaling_rope_parameters, _compute_llama3_parameters).
void scale_rotary_frequencies(std::vector<float>& inv_freq, const RopeScaling& scaling) {
  const float factor = static_cast<float>(scaling.factor);
  if (scaling.kind == RopeScaling::Kind::Linear) {
    for (float& f : inv_freq) f = f / factor;
  } else if (scaling.kind == RopeScaling::Kind::Llama3) {
    const double low = scaling.low_freq_factor, high = scaling.high_freq_factor, old = scaling.original_positions;
    const double low_freq_wavelen = old / low, high_freq_wavelen = old / high;
    for (float& f : inv_freq) {
      const float wavelen = static_cast<float>(2 * M_PI) / f;
      const float scaled = wavelen > low_freq_wavelen ? f / factor : f;  // long wavelengths: slowed down
      const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
      if (medium) {
        const float smooth = static_cast<float>((static_cast<float>(old) / wavelen - low) / (high - low));
        f = (1.0f - smooth) * scaled / factor + smooth * scaled;
      } else {
        f = scaled;
      }
    }
  }
}

}  // namespace

// ---------------------------------------------------------------- config

int64_t DecoderConfig::hook_width(const HookSite& site) const {
  return site.point == HookPoint::AttnZ ? attention_width() : hidden_size;
}

void DecoderConfig::check() const {
  const bool ok = vocab_size > 0 && hidden_size > 0 && num_layers > 0 && num_heads > 0 && head_dim > 0 &&
                  intermediate_size > 0 && max_positions > 0 && static_cast<int64_t>(layers.size()) == num_layers &&
                  norm_eps >= 0 && (positions != PositionKind::Rotary ||
                                    (rotary_dims > 0 && rotary_dims % 2 == 0 && rotary_dims <= head_dim)) &&
                  kv_heads() > 0 && num_heads % kv_heads() == 0 && attn_softcap >= 0 && final_softcap >= 0 &&
                  embed_scale > 0;
  if (!ok) throw Error(cat(family, " ", source, ": inconsistent decoder configuration"));
}

std::vector<std::pair<std::string, std::vector<int64_t>>> DecoderConfig::parameter_shapes(int64_t blocks,
                                                                                         bool head) const {
  const int64_t d = hidden_size, f = intermediate_size, a = attention_width();
  const int64_t f_in = gated_mlp() ? 2 * f : f;  // a gated MLP's Win: gate rows, then up rows
  const bool norm_bias = norm == NormKind::LayerNorm;
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  shapes.push_back({"embed.tokens", {vocab_size, d}});
  if (positions == PositionKind::Learned) shapes.push_back({"embed.positions", {max_positions, d}});
  if (blocks < 0) blocks = num_layers;
  for (int64_t i = 0; i < blocks; ++i) {
    const std::string b = cat("blocks.", i, ".");
    shapes.push_back({b + "ln1.weight", {d}});
    if (norm_bias) shapes.push_back({b + "ln1.bias", {d}});
    shapes.push_back({b + "attn.qkv.weight", {qkv_width(), d}});
    if (qkv_bias) shapes.push_back({b + "attn.qkv.bias", {qkv_width()}});
    shapes.push_back({b + "attn.out.weight", {d, a}});
    if (out_bias) shapes.push_back({b + "attn.out.bias", {d}});
    if (post_norms) shapes.push_back({b + "ln1_post.weight", {d}});
    shapes.push_back({b + "ln2.weight", {d}});
    if (norm_bias) shapes.push_back({b + "ln2.bias", {d}});
    shapes.push_back({b + "mlp.in.weight", {f_in, d}});
    if (mlp_bias) shapes.push_back({b + "mlp.in.bias", {f_in}});
    shapes.push_back({b + "mlp.out.weight", {d, f}});
    if (mlp_bias) shapes.push_back({b + "mlp.out.bias", {d}});
    if (post_norms) shapes.push_back({b + "ln2_post.weight", {d}});
  }
  if (head) {
    shapes.push_back({"final_norm.weight", {d}});
    if (norm_bias) shapes.push_back({"final_norm.bias", {d}});
    if (!tie_word_embeddings) shapes.push_back({"unembed", {vocab_size, d}});
  }
  return shapes;
}

ModelPart ModelPart::up_to(const HookSite& site, int64_t layers) {
  return ModelPart{blocks_needed(site, layers), site.point == HookPoint::FinalOutput};
}

// ---------------------------------------------------------------- buffers

struct DecoderModel::Block {
  Tensor ln1_weight, ln1_bias, qkv_weight, qkv_bias, out_weight, out_bias, ln2_weight, ln2_bias;
  Tensor in_weight, in_bias, out2_weight, out2_bias;  // the MLP's two Linears
  Tensor post1_weight, post2_weight;                  // post_norms: after attention, after the MLP
  AttentionLayer attention;
};

// Flat 1-D buffers sized for `tokens`; the forward pass takes views of their first elements.
struct DecoderModel::Workspace {
  int64_t tokens = 0;
  Tensor ids;                  // int32 [T]
  Tensor residual, normed;     // [T, d]
  Tensor mlp_input;            // [T, d]: LN2's output (its own buffer: parallel blocks need a and m at once)
  Tensor mean, rstd;           // [T]
  Tensor qkv, heads;           // [T, 3 H hd], [3H, T, hd]
  Tensor scores;               // [H, T, T]
  Tensor context, merged;      // [H, T, hd], [T, H hd] (hook_z)
  Tensor attn_out, mlp_out;    // [T, d], used when hooked
  Tensor mlp;                  // [T, f] ([T, 2f] for a gated MLP: gate and up)
  Tensor gated;                // [T, f]: act(gate) * up (gated MLPs)
};

// One call's hooks (which points of which block are wanted) and where it stops.
struct DecoderModel::Run {
  const SiteHooks* hooks = nullptr;
  HookSite stop;
  Tensor stopped_at;  // the state at `stop`, once reached
  bool wants(int64_t layer, HookPoint point) const {
    if (stop.layer == layer && stop.point == point) return true;
    for (const auto& [site, fn] : hooks->at)
      if (site.layer == layer && site.point == point) return true;
    return false;
  }
  // Calls the hooks of the site on `state`; true when the run stops here.
  bool at(int64_t layer, HookPoint point, Tensor& state) {
    for (const auto& [site, fn] : hooks->at) {
      if (site.layer != layer || site.point != point) continue;
      const void* where = state.raw();
      const Shape shape = state.shape();
      fn(state);
      if (!state.defined() || state.raw() != where || state.shape() != shape)
        throw UsageError(cat("the hook at ", hook_name(site), " replaced the state tensor; write into it instead"));
    }
    if (stop.layer == layer && stop.point == point) {
      stopped_at = state;
      return true;
    }
    return false;
  }
};

DecoderModel::DecoderModel() : workspace_(std::make_unique<Workspace>()) {}
DecoderModel::DecoderModel(DecoderModel&&) noexcept = default;
DecoderModel& DecoderModel::operator=(DecoderModel&&) noexcept = default;
DecoderModel::~DecoderModel() = default;

KvCache::KvCache() = default;
KvCache::KvCache(KvCache&&) noexcept = default;
KvCache& KvCache::operator=(KvCache&&) noexcept = default;
KvCache::~KvCache() = default;

// ---------------------------------------------------------------- construction

DecoderModel DecoderModel::from_parameters(DecoderConfig config, const NamedTensors& parameters, Device device,
                                           const std::string& source, ModelPart part) {
  config.check();
  const int64_t blocks = part.blocks < 0 ? config.num_layers : std::min(part.blocks, config.num_layers);
  const bool head = part.head && blocks == config.num_layers;
  DecoderModel model;
  model.config_ = std::move(config);
  model.device_ = device;
  model.source_ = source;
  model.loaded_blocks_ = blocks;
  model.has_head_ = head;
  const DecoderConfig& c = model.config_;
  for (const auto& [name, shape] : c.parameter_shapes(blocks, head)) {
    auto it = parameters.find(name);
    if (it == parameters.end()) throw DataError(cat(source, ": missing parameter '", name, "'"));
    if (shape_of(it->second) != shape)
      throw DataError(cat(source, ": parameter '", name, "' has shape ", shape_text(shape_of(it->second)),
                          ", expected ", shape_text(shape)));
    model.parameters_[name] = it->second.to(device);
  }
  if (head && c.tie_word_embeddings) {
    // The file's own unembedding when it has one (Hugging Face's rule), else the token embedding.
    auto it = parameters.find("unembed");
    const bool own = it != parameters.end() && shape_of(it->second) == std::vector<int64_t>{c.vocab_size, c.hidden_size};
    model.parameters_["unembed"] = own ? it->second.to(device) : model.parameters_.at("embed.tokens");
  }
  auto p = [&](const std::string& name) { return model.parameters_.at(name); };
  model.embed_tokens_ = p("embed.tokens");
  if (c.positions == PositionKind::Learned) model.embed_positions_ = p("embed.positions");
  const bool norm_bias = c.norm == NormKind::LayerNorm;
  for (int64_t i = 0; i < blocks; ++i) {
    const std::string b = cat("blocks.", i, ".");
    Block block;
    block.ln1_weight = p(b + "ln1.weight");
    if (norm_bias) block.ln1_bias = p(b + "ln1.bias");
    block.qkv_weight = p(b + "attn.qkv.weight");
    if (c.qkv_bias) block.qkv_bias = p(b + "attn.qkv.bias");
    block.out_weight = p(b + "attn.out.weight");
    if (c.out_bias) block.out_bias = p(b + "attn.out.bias");
    block.ln2_weight = p(b + "ln2.weight");
    if (norm_bias) block.ln2_bias = p(b + "ln2.bias");
    if (c.post_norms) {
      block.post1_weight = p(b + "ln1_post.weight");
      block.post2_weight = p(b + "ln2_post.weight");
    }
    block.in_weight = p(b + "mlp.in.weight");
    if (c.mlp_bias) block.in_bias = p(b + "mlp.in.bias");
    block.out2_weight = p(b + "mlp.out.weight");
    if (c.mlp_bias) block.out2_bias = p(b + "mlp.out.bias");
    block.attention = c.layers[static_cast<size_t>(i)];
    model.blocks_.push_back(std::move(block));
  }
  if (head) {
    model.final_weight_ = p("final_norm.weight");
    if (norm_bias) model.final_bias_ = p("final_norm.bias");
    model.unembed_ = p("unembed");
  }
  if (c.positions == PositionKind::Rotary) {
    // Hugging Face's tables (GPTNeoXRotaryEmbedding): inv_freq[j] = 1 / base^(2j / dims) and the angle
    // position * inv_freq[j], both in float32 as it computes them; cos and sin of that float32 angle.
    const int64_t r = c.rotary_dims / 2, positions = c.max_positions;
    std::vector<float> inv_freq(static_cast<size_t>(r));
    for (int64_t j = 0; j < r; ++j) {
      const float exponent = static_cast<float>(2 * j) / static_cast<float>(c.rotary_dims);
      const float power = static_cast<float>(std::pow(static_cast<double>(static_cast<float>(c.rotary_base)),
                                                      static_cast<double>(exponent)));
      inv_freq[static_cast<size_t>(j)] = 1.0f / power;
    }
    scale_rotary_frequencies(inv_freq, c.rope_scaling);
    model.rotary_inv_freq_ = std::move(inv_freq);
    model.extend_rotary(std::min<int64_t>(positions, 256));  // more as longer runs need them
  }
  model.unit_weight_ = Tensor::full(Shape{c.hidden_size}, 1.0, DType::F32, device);
  model.zero_bias_ = Tensor::zeros(Shape{c.hidden_size}, DType::F32, device);
  return model;
}

// The rotary tables up to `positions` (at least; doubling, at most the model's): cos and sin of the
// float32 angle position * inv_freq[j], as Hugging Face computes them. Built as runs reach further,
// so that a model of a million positions run on short windows keeps short tables.
void DecoderModel::extend_rotary(int64_t positions) {
  const int64_t have = rotary_cos_.defined() ? rotary_cos_.size(0) : 0;
  if (positions <= have) return;
  const int64_t r = static_cast<int64_t>(rotary_inv_freq_.size());
  const int64_t rows = std::min<int64_t>(config_.max_positions, std::max<int64_t>(positions, 2 * have));
  Tensor cos = Tensor::empty(Shape{rows, r}), sin = Tensor::empty(Shape{rows, r});
  float *pc = cos.data<float>(), *ps = sin.data<float>();
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t j = 0; j < r; ++j) {
      const float angle = static_cast<float>(t) * rotary_inv_freq_[static_cast<size_t>(j)];
      pc[t * r + j] = static_cast<float>(std::cos(static_cast<double>(angle)));
      ps[t * r + j] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  rotary_cos_ = cos.to(device_);
  rotary_sin_ = sin.to(device_);
}

// ---------------------------------------------------------------- accessors

void DecoderModel::reserve(int64_t max_tokens) {
  if (max_tokens <= workspace_->tokens) return;
  if (max_tokens > config_.max_positions)
    throw DataError(cat(config_.family, " ", source_, ": cannot reserve ", max_tokens,
                        " tokens, the model has ", config_.max_positions, " positions"));
  const int64_t t = max_tokens, d = config_.hidden_size, h = config_.num_heads, f = config_.intermediate_size;
  const int64_t a = config_.attention_width();
  Workspace& w = *workspace_;
  w = Workspace{};  // release the old buffers first
  auto buffer = [&](int64_t n) { return Tensor::empty(Shape{n}, DType::F32, device_); };
  w.ids = Tensor::empty(Shape{t}, DType::I32, device_);
  w.residual = buffer(t * d);
  w.normed = buffer(t * d);
  w.mlp_input = buffer(t * d);
  w.mean = buffer(t);
  w.rstd = buffer(t);
  w.qkv = buffer(t * config_.qkv_width());
  w.heads = buffer(t * config_.qkv_width());
  w.scores = buffer(h * t * t);
  w.context = buffer(t * a);
  w.merged = buffer(t * a);
  w.attn_out = buffer(t * d);
  w.mlp_out = buffer(t * d);
  w.mlp = buffer(t * (config_.gated_mlp() ? 2 * f : f));
  if (config_.gated_mlp()) w.gated = buffer(t * f);
  w.tokens = t;
}

int64_t DecoderModel::workspace_tokens() const { return workspace_->tokens; }

const Tensor& DecoderModel::parameter(const std::string& name) const {
  auto it = parameters_.find(name);
  if (it == parameters_.end())
    throw Error(cat(config_.family, " ", source_, ": no parameter '", printable(name), "' (loaded: ", loaded_blocks_,
                    " blocks", has_head_ ? " and the head" : "", ")"));
  return it->second;
}

const Tensor& DecoderModel::unembedding() const {
  if (!has_head_)
    throw UsageError(cat(config_.family, " ", source_, ": the unembedding was not loaded (the model was loaded up to "
                         "block ", loaded_blocks_, " only)"));
  return unembed_;
}

std::vector<std::string> DecoderModel::parameter_names() const {
  std::vector<std::string> names;
  for (const auto& [name, tensor] : parameters_) names.push_back(name);
  return names;
}

HookSite resolve_hook_site(const DecoderConfig& config, const HookSite& site, const std::string& what) {
  const int64_t layers = config.num_layers;
  HookSite s = site;
  if (s.point == HookPoint::FinalOutput) {
    if (s.layer > layers)
      throw UsageError(cat(what, what == "--layer" ? cat(" ", s.layer) : cat(" hidden_states[", s.layer, "]"),
                           ": hidden_states index ", s.layer, " is outside 0..", layers, " (the model, ", config.family,
                           ", has ", layers, " blocks: hidden states 0 to ", layers, ")"));
    s = hidden_states_site(s.layer, layers);
  } else if (s.layer >= layers) {
    throw UsageError(cat(what, " ", hook_name(s), ": the model (", config.family, ") has blocks 0 to ", layers - 1));
  }
  if (s.point == HookPoint::ResidMid && config.residual == ResidualWiring::Parallel)
    throw UsageError(cat(what, " ", hook_name(s), ": ", config.family,
                         " runs attention and MLP in parallel (use_parallel_residual), so a block has no "
                         "resid_mid; use hook_resid_pre, hook_attn_out, hook_mlp_out or hook_resid_post"));
  return s;
}

HookSite DecoderModel::resolve(const HookSite& site, const std::string& what) const {
  return resolve_hook_site(config_, site, what);
}

void DecoderModel::require_loaded(const HookSite& site) const {
  const int64_t need = blocks_needed(site, config_.num_layers);
  const bool need_head = site.point == HookPoint::FinalOutput;
  if (need > loaded_blocks_ || (need_head && !has_head_))
    throw UsageError(cat(config_.family, " ", source_, ": ", hook_name(site), " needs ", need, " blocks",
                         need_head ? " and the final norm" : "", ", but only ", loaded_blocks_,
                         " were loaded"));
}

void DecoderModel::check_ids(const std::vector<int32_t>& ids, int64_t first_position) const {
  const std::string who = cat(config_.family, " ", source_);
  if (ids.empty()) throw DataError(cat(who, ": empty token sequence"));
  const int64_t end = first_position + static_cast<int64_t>(ids.size());
  if (end > config_.max_positions) {
    if (first_position == 0)
      throw DataError(cat(who, ": a sequence of ", ids.size(), " tokens is longer than max_position_embeddings ",
                          config_.max_positions));
    throw DataError(cat(who, ": ", ids.size(), " more tokens after ", first_position,
                        " would pass max_position_embeddings ", config_.max_positions));
  }
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= config_.vocab_size)
      throw DataError(cat(who, ": token id ", ids[i], " at position ", first_position + int64_t(i),
                          " is outside the vocabulary [0, ", config_.vocab_size, ")"));
}

// ---------------------------------------------------------------- forward

void DecoderModel::norm_(Tensor& out, const Tensor& x, const Tensor& weight, const Tensor& bias) {
  Workspace& w = *workspace_;
  const int64_t t = x.size(0);
  Tensor rstd = view(w.rstd, Shape{t});
  if (config_.norm == NormKind::RMSNorm) {
    rms_norm_(out, rstd, x, weight, config_.norm_eps);
  } else {
    Tensor mean = view(w.mean, Shape{t});
    layer_norm_(out, mean, rstd, x, weight, bias, config_.norm_eps);
  }
}

void DecoderModel::cap_logits_(Tensor& logits) const {
  if (config_.final_softcap > 0) soft_cap_(logits, logits, config_.final_softcap);
}

bool DecoderModel::run_block(size_t index, int64_t t, int64_t past, KvCache* cache, Run& run) {
  const Block& block = blocks_[index];
  const int64_t layer = static_cast<int64_t>(index);
  Workspace& w = *workspace_;
  const int64_t d = config_.hidden_size, h = config_.num_heads, hd = config_.head_dim, kv = config_.kv_heads();
  const int64_t group = h / kv;  // query heads per key/value head (their rows run group by group)
  const int64_t f = config_.intermediate_size, aw = config_.attention_width();
  const bool parallel = config_.residual == ResidualWiring::Parallel;
  const bool post_norms = config_.post_norms;
  Tensor x = view(w.residual, Shape{t, d}), a = view(w.normed, Shape{t, d}), m = view(w.mlp_input, Shape{t, d});

  // The MLP's input norm2(x): normalised, hooked there when asked (ln2.hook_normalized), then its
  // weight (and bias); the same two steps whether hooked or not, so the rounding does not depend on
  // the hooks.
  auto mlp_input = [&]() {
    norm_(m, x, unit_weight_, zero_bias_);
    if (run.wants(layer, HookPoint::Ln2Normalized) && run.at(layer, HookPoint::Ln2Normalized, m)) return true;
    binary_(BinaryOp::mul, m, m, block.ln2_weight);
    if (block.ln2_bias.defined()) add_(m, block.ln2_bias);
    return false;
  };

  if (parallel && mlp_input()) return false;  // the block's input feeds both branches

  // attention: heads [H + 2 KV, T, hd] hold the queries, then the keys, then the values
  norm_(a, x, block.ln1_weight, block.ln1_bias);
  Tensor qkv = view(w.qkv, Shape{t, config_.qkv_width()});
  matmul_(qkv, a, false, block.qkv_weight, true);
  if (block.qkv_bias.defined()) add_(qkv, block.qkv_bias);
  Tensor heads = view(w.heads, Shape{h + 2 * kv, t, hd});
  swap_axes01_(heads, qkv.reshape(Shape{t, h + 2 * kv, hd}));
  if (config_.positions == PositionKind::Rotary) {
    Tensor qk = heads.slice_rows(0, h + kv);
    extend_rotary(past + t);
    rotary_(qk, qk, rotary_cos_.slice_rows(past, past + t), rotary_sin_.slice_rows(past, past + t));
  }
  Tensor q = heads.slice_rows(0, h), k = heads.slice_rows(h, h + kv), v = heads.slice_rows(h + kv, h + 2 * kv);
  const int64_t window = block.attention.window;
  int64_t keys = t;
  Tensor scores;
  if (cache == nullptr) {
    scores = view(w.scores, Shape{h, t, t});
  } else {
    // The new rows' keys and values join the cache (as rows [T, KV, hd]); the queries then attend to
    // the cached rows they may see: all of them (global), or the last `window` before each query.
    Tensor cached_k = cache->keys_[index].slice_rows(past, past + t).reshape(Shape{t, kv, hd});
    Tensor cached_v = cache->values_[index].slice_rows(past, past + t).reshape(Shape{t, kv, hd});
    swap_axes01_(cached_k, k);
    swap_axes01_(cached_v, v);
    const int64_t first_key = window > 0 ? std::max<int64_t>(0, past - window + 1) : 0;
    keys = past + t - first_key;
    k = view(cache->key_heads_, Shape{kv, keys, hd});
    v = view(cache->value_heads_, Shape{kv, keys, hd});
    swap_axes01_(k, cache->keys_[index].slice_rows(first_key, past + t).reshape(Shape{keys, kv, hd}));
    swap_axes01_(v, cache->values_[index].slice_rows(first_key, past + t).reshape(Shape{keys, kv, hd}));
    if (cache->scores_.numel() < h * t * keys) cache->scores_ = Tensor::empty(Shape{h * t * keys}, DType::F32, device_);
    scores = view(cache->scores_, Shape{h, t, keys});
  }
  // The `group` query heads of one key/value head are consecutive rows: one batch entry of
  // [group T] query rows per key/value head.
  Tensor grouped_scores = scores.reshape(Shape{kv, group * t, keys});
  batched_matmul_(grouped_scores, q.reshape(Shape{kv, group * t, hd}), false, k, true, block.attention.score_scale);
  if (config_.attn_softcap > 0) soft_cap_(scores, scores, config_.attn_softcap);
  // attention_mask takes the queries as the last t of the keys' positions, which they are.
  attention_mask_(scores, scores, window);
  softmax_(scores, scores);
  Tensor context = view(w.context, Shape{h, t, hd});
  Tensor grouped_context = context.reshape(Shape{kv, group * t, hd});
  batched_matmul_(grouped_context, grouped_scores, false, v, false);
  Tensor merged = view(w.merged, Shape{t, h, hd});
  swap_axes01_(merged, context);
  Tensor z = merged.reshape(Shape{t, aw});
  if (run.wants(layer, HookPoint::AttnZ) && run.at(layer, HookPoint::AttnZ, z)) return false;

  // The attention's output in its own buffer (post-normed when post_norms), then added: the same
  // rounding whether it is hooked or not.
  Tensor attn_out = view(w.attn_out, Shape{t, d});
  matmul_(attn_out, z, false, block.out_weight, true);
  if (block.out_bias.defined()) add_(attn_out, block.out_bias);
  if (post_norms) norm_(attn_out, attn_out, block.post1_weight, Tensor());
  if (run.wants(layer, HookPoint::AttnOut) && run.at(layer, HookPoint::AttnOut, attn_out)) return false;
  if (!parallel) add_(x, attn_out);
  if (!parallel) {
    if (run.wants(layer, HookPoint::ResidMid) && run.at(layer, HookPoint::ResidMid, x)) return false;
    if (mlp_input()) return false;
  }

  // MLP
  Tensor hidden;
  if (config_.gated_mlp()) {
    Tensor both = view(w.mlp, Shape{t, 2 * f});
    matmul_(both, m, false, block.in_weight, true);
    if (block.in_bias.defined()) add_(both, block.in_bias);
    hidden = view(w.gated, Shape{t, f});
    glu_(hidden, both, config_.activation == MlpActivation::SwiGlu ? GluActivation::silu : GluActivation::gelu_tanh);
  } else {
    hidden = view(w.mlp, Shape{t, f});
    matmul_(hidden, m, false, block.in_weight, true);
    if (block.in_bias.defined()) add_(hidden, block.in_bias);
    unary_(config_.activation == MlpActivation::GeluNew ? UnaryOp::gelu_new : UnaryOp::gelu, hidden, hidden);
  }
  if (parallel) add_(x, attn_out);  // the attention's output joins now that the MLP has its input
  Tensor mlp_out = view(w.mlp_out, Shape{t, d});
  matmul_(mlp_out, hidden, false, block.out2_weight, true);
  if (block.out2_bias.defined()) add_(mlp_out, block.out2_bias);
  if (post_norms) norm_(mlp_out, mlp_out, block.post2_weight, Tensor());
  if (run.wants(layer, HookPoint::MlpOut) && run.at(layer, HookPoint::MlpOut, mlp_out)) return false;
  add_(x, mlp_out);
  if (run.wants(layer, HookPoint::ResidPost) && run.at(layer, HookPoint::ResidPost, x)) return false;
  return true;
}

Tensor DecoderModel::run(const std::vector<int32_t>& ids, const HookSite& stop, const SiteHooks& hooks,
                         KvCache* cache) {
  require_loaded(stop);
  const int64_t past = cache ? cache->length_ : 0;
  check_ids(ids, past);
  const int64_t t = static_cast<int64_t>(ids.size()), d = config_.hidden_size, layers = config_.num_layers;
  reserve(t);
  Workspace& w = *workspace_;
  Run r;
  r.hooks = &hooks;
  r.stop = stop;

  Tensor id_view = view(w.ids, Shape{t});
  if (device_ == Device::CPU)
    std::copy(ids.begin(), ids.end(), id_view.data<int32_t>());
  else
    cuda_copy_to_device(id_view.raw(), ids.data(), ids.size() * sizeof(int32_t));

  Tensor x = view(w.residual, Shape{t, d});
  embedding_(x, embed_tokens_, id_view);
  if (config_.embed_scale != 1.0f) affine_(x, x, config_.embed_scale, 0.0);
  if (config_.positions == PositionKind::Learned) add_(x, embed_positions_.slice_rows(past, past + t));
  const int64_t blocks = stop.point == HookPoint::FinalOutput ? layers : blocks_needed(stop, layers);
  for (int64_t i = 0; i < blocks; ++i) {
    if (r.at(i, HookPoint::ResidPre, x)) return r.stopped_at;
    if (!run_block(static_cast<size_t>(i), t, past, cache, r)) return r.stopped_at;
  }
  if (stop.point != HookPoint::FinalOutput) {
    r.at(stop.layer, stop.point, x);  // resid_pre of the block after the last one run
    return x;
  }
  Tensor y = view(w.normed, Shape{t, d});
  norm_(y, x, final_weight_, final_bias_);
  r.at(layers, HookPoint::FinalOutput, y);
  return y;
}

SiteHooks DecoderModel::hidden_state_hooks(const ResidualHook& hook, int64_t up_to) const {
  SiteHooks hooks;
  if (!hook) return hooks;
  for (int64_t k = 0; k <= up_to; ++k)
    hooks.at.emplace_back(hidden_states_site(k, config_.num_layers),
                          [hook, k](Tensor& state) { hook(static_cast<int>(k), state); });
  return hooks;
}

Tensor DecoderModel::forward_to_site(const std::vector<int32_t>& ids, const HookSite& site, const SiteHooks& hooks) {
  return run(ids, resolve(site), hooks, nullptr);
}

Tensor DecoderModel::logits_with(const std::vector<int32_t>& ids, const SiteHooks& hooks) {
  const Tensor y = run(ids, HookSite{config_.num_layers, HookPoint::FinalOutput}, hooks, nullptr);
  Tensor logits = matmul(y, unembedding(), false, true);
  cap_logits_(logits);
  return logits;
}

void DecoderModel::logits_into(Tensor& out, const std::vector<int32_t>& ids, const SiteHooks& hooks) {
  const Tensor y = run(ids, HookSite{config_.num_layers, HookPoint::FinalOutput}, hooks, nullptr);
  const Shape shape{y.size(0), config_.vocab_size};
  if (!out.defined() || out.shape() != shape || out.device() != device_ || out.dtype() != DType::F32)
    out = Tensor::empty(shape, DType::F32, device_);
  matmul_(out, y, false, unembedding(), true);
  cap_logits_(out);
}

Tensor DecoderModel::forward_to(const std::vector<int32_t>& ids, int layer, const ResidualHook& hook) {
  const int64_t layers = config_.num_layers;
  if (layer < 0 || layer > layers)
    throw UsageError(cat(config_.family, " ", source_, ": hidden_states index ", layer, " is outside 0..", layers));
  return run(ids, hidden_states_site(layer, layers), hidden_state_hooks(hook, layer), nullptr);
}

Tensor DecoderModel::hidden_states(const std::vector<int32_t>& ids, int layer) {
  return forward_to(ids, layer).clone();
}

Tensor DecoderModel::logits(const std::vector<int32_t>& ids, const ResidualHook& hook) {
  return logits_with(ids, hidden_state_hooks(hook, config_.num_layers));
}

// ---------------------------------------------------------------- generation with a KV cache

KvCache DecoderModel::new_cache(int64_t capacity) const {
  if (capacity < 1 || capacity > config_.max_positions)
    throw DataError(cat(config_.family, " ", source_, ": a cache of ", capacity, " positions (it must hold 1..",
                        config_.max_positions, ", the model's positions)"));
  const int64_t a = config_.kv_width();
  KvCache cache;
  cache.owner_ = workspace_.get();
  cache.capacity_ = capacity;
  for (int64_t i = 0; i < loaded_blocks_; ++i) {
    cache.keys_.push_back(Tensor::empty(Shape{capacity, a}, DType::F32, device_));
    cache.values_.push_back(Tensor::empty(Shape{capacity, a}, DType::F32, device_));
  }
  cache.key_heads_ = Tensor::empty(Shape{capacity * a}, DType::F32, device_);
  cache.value_heads_ = Tensor::empty(Shape{capacity * a}, DType::F32, device_);
  return cache;
}

Tensor DecoderModel::logits_cached(const std::vector<int32_t>& ids, KvCache& cache, const SiteHooks& hooks,
                                   bool last_only) {
  if (cache.owner_ != workspace_.get())
    throw UsageError(cat(config_.family, " ", source_, ": the KV cache was made by another model"));
  const int64_t n = static_cast<int64_t>(ids.size());
  if (cache.length_ + n > cache.capacity_)
    throw DataError(cat(config_.family, " ", source_, ": the KV cache holds ", cache.length_, " of ",
                        cache.capacity_, " positions, no room for ", n, " more"));
  Tensor y = run(ids, HookSite{config_.num_layers, HookPoint::FinalOutput}, hooks, &cache);
  cache.length_ += n;  // only now: a throw above leaves the cache as it was (rows past length_ are unused)
  if (last_only) y = y.slice_rows(n - 1, n);
  Tensor logits = matmul(y, unembedding(), false, true);
  cap_logits_(logits);
  return logits;
}

Tensor DecoderModel::logits_cached(const std::vector<int32_t>& ids, KvCache& cache, const ResidualHook& hook,
                                   bool last_only) {
  return logits_cached(ids, cache, hidden_state_hooks(hook, config_.num_layers), last_only);
}

}  // namespace sae
