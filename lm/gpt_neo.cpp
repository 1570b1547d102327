// GPT-Neo: config.json rules, weight loading and checks, and the forward pass over one workspace.
// Letters as in gpt_neo.h: T tokens, d hidden, H heads, hd head size, f MLP width, V vocabulary,
// P positions, L layers.
//
// One block, as docs/gpt_neo.md section 3 (every op from tensor/ops.h, so CPU and CUDA alike):
//   a = LN(x; ln_1)
//   qkv [T, 3d] = a @ [Wq; Wk; Wv]^T          one GEMM: the three weights are stacked at load
//   heads [3H, T, hd] = swap_axes01(qkv viewed [T, 3H, hd]);  q, k, v = heads rows 0..H-1, H.., 2H..
//   scores [H, T, T] = q k^T                   no 1/sqrt(hd) scaling
//   scores = mask(scores) (-inf outside causal / window), softmax in place
//   context [H, T, hd] = scores v;  merged [T, d] = swap_axes01(context)
//   x += merged @ Wo^T  (the residual add is the GEMM's beta = 1), then x += bo
//   m = LN(x; ln_2);  h [T, f] = gelu_new(m @ Wfc^T + bfc);  x += h @ Wproj^T, then x += bproj
// With a KV cache (generation) the T rows are the new positions; their k and v rows are appended to
// the cache and the queries attend to the cached rows instead (run_block).
#include "lm/gpt_neo.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <set>

#include "io/safetensors.h"
#include "tensor/cuda/backend.h"
#include "tensor/ops.h"

namespace sae {

namespace {

// Larger than any GPT-Neo and small enough that no product of two sizes overflows anything.
constexpr int64_t kMaxSize = int64_t(1) << 24;
constexpr int64_t kMaxLayers = 4096;

// ---------------------------------------------------------------- config.json

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// A key that must hold a positive integer (not a bool, not a string, not null).
int64_t positive_int(const Json& config, const std::string& key, const std::string& source) {
  if (!config.has(key)) throw DataError(cat(source, ": missing '", key, "'"));
  const Json& value = config.at(key);
  if (!value.is_number() || value.as_number() != std::floor(value.as_number()))
    throw DataError(cat(source, ": '", key, "' must be a positive integer, got ", value.dump()));
  const double number = value.as_number();
  if (number <= 0) throw DataError(cat(source, ": '", key, "' must be a positive integer, got ", value.dump()));
  if (number > static_cast<double>(kMaxSize))
    throw DataError(cat(source, ": '", key, "' is ", value.dump(), ", above the supported ", kMaxSize));
  return static_cast<int64_t>(number);
}

// HF's aliases (GPTNeoConfig.attribute_map): either spelling; both must then agree.
int64_t aliased_int(const Json& config, const std::string& key, const std::string& alias, const std::string& source) {
  const bool has_key = config.has(key), has_alias = config.has(alias);
  if (!has_key && !has_alias) throw DataError(cat(source, ": missing '", key, "'"));
  if (has_key && has_alias && config.at(key) != config.at(alias))
    throw DataError(cat(source, ": '", alias, "' (", config.at(alias).dump(), ") and '", key, "' (",
                        config.at(key).dump(), ") disagree"));
  return positive_int(config, has_key ? key : alias, source);
}

AttentionKind attention_kind(const Json& value, const std::string& where, const std::string& source) {
  if (value.is_string() && value.as_string() == "global") return AttentionKind::Global;
  if (value.is_string() && value.as_string() == "local") return AttentionKind::Local;
  throw DataError(cat(source, ": ", where, ": attention type ", value.dump(), " is not \"global\" or \"local\""));
}

// attention_types [[[kind, ...], repeat], ...]: each entry's kinds repeated `repeat` times, in order.
std::vector<AttentionKind> expand_attention_types(const Json& types, const std::string& source) {
  const std::string shape_hint = "'attention_types' must be [[[\"global\"|\"local\", ...], count], ...]";
  if (!types.is_array()) throw DataError(cat(source, ": ", shape_hint, ", got ", types.dump()));
  std::vector<AttentionKind> layers;
  for (const Json& entry : types.elements()) {
    if (!entry.is_array() || entry.size() != 2 || !entry.at(size_t(0)).is_array())
      throw DataError(cat(source, ": ", shape_hint, "; entry ", entry.dump(), " is not"));
    const Json& repeat = entry.at(size_t(1));
    if (!repeat.is_number() || repeat.as_number() < 0 || repeat.as_number() != std::floor(repeat.as_number()) ||
        repeat.as_number() > static_cast<double>(kMaxLayers))
      throw DataError(cat(source, ": 'attention_types': bad repeat count ", repeat.dump()));
    std::vector<AttentionKind> kinds;
    for (const Json& kind : entry.at(size_t(0)).elements())
      kinds.push_back(attention_kind(kind, "'attention_types'", source));
    for (int64_t r = 0; r < static_cast<int64_t>(repeat.as_number()); ++r) {
      layers.insert(layers.end(), kinds.begin(), kinds.end());
      if (static_cast<int64_t>(layers.size()) > kMaxLayers)
        throw DataError(cat(source, ": 'attention_types' gives more than ", kMaxLayers, " layers"));
    }
  }
  return layers;
}

bool is_rotary_or_other_position_scheme(const std::string& key) {
  return key.rfind("rope", 0) == 0 || key.find("rotary") != std::string::npos || key.rfind("alibi", 0) == 0;
}

// ---------------------------------------------------------------- weights

// transformer.h.{i}.attn.attention.bias or .masked_bias with i < layers: the mask buffers older
// transformers versions saved; Hugging Face ignores them and so do we.
bool is_legacy_mask_buffer(const std::string& name, int64_t layers) {
  const std::string prefix = "transformer.h.";
  if (name.rfind(prefix, 0) != 0) return false;
  size_t pos = prefix.size(), digits = 0;
  int64_t layer = 0;
  while (pos < name.size() && std::isdigit(static_cast<unsigned char>(name[pos])) && digits < 6) {
    layer = layer * 10 + (name[pos++] - '0');
    ++digits;
  }
  if (digits == 0 || layer >= layers) return false;
  const std::string rest = name.substr(pos);
  return rest == ".attn.attention.bias" || rest == ".attn.attention.masked_bias";
}

std::vector<int64_t> shape_of(const Tensor& t) {
  std::vector<int64_t> s;
  for (int i = 0; i < t.ndim(); ++i) s.push_back(t.size(i));
  return s;
}

// Flat 1-D workspace buffer -> a contiguous view of its first shape.numel() elements.
Tensor view(const Tensor& flat, const Shape& shape) { return flat.slice_rows(0, shape.numel()).reshape(shape); }

}  // namespace

GptNeoConfig GptNeoConfig::from_json(const Json& json, const std::string& source) {
  if (!json.is_object()) throw DataError(cat(source, ": expected a JSON object, got a ", json.type_name()));
  GptNeoConfig c;
  c.source = source;
  if (!json.has("model_type") || !json.at("model_type").is_string() || json.at("model_type").as_string() != "gpt_neo")
    throw DataError(cat(source, ": 'model_type' must be \"gpt_neo\", got ",
                        json.has("model_type") ? json.at("model_type").dump() : "nothing"));
  if (json.has("activation_function") &&
      !(json.at("activation_function").is_string() && json.at("activation_function").as_string() == "gelu_new"))
    throw DataError(cat(source, ": 'activation_function' ", json.at("activation_function").dump(),
                        " is not supported (only \"gelu_new\")"));
  for (const auto& [key, value] : json.items())
    if (is_rotary_or_other_position_scheme(key))
      throw DataError(cat(source, ": key '", key, "' asks for a position scheme GPT-Neo does not have"));

  c.vocab_size = positive_int(json, "vocab_size", source);
  c.hidden_size = positive_int(json, "hidden_size", source);
  c.num_layers = aliased_int(json, "num_layers", "num_hidden_layers", source);
  c.num_heads = aliased_int(json, "num_heads", "num_attention_heads", source);
  if (!json.has("max_position_embeddings")) throw DataError(cat(source, ": missing 'max_position_embeddings'"));
  c.max_positions = positive_int(json, "max_position_embeddings", source);
  if (c.num_layers > kMaxLayers) throw DataError(cat(source, ": 'num_layers' ", c.num_layers, " is above ", kMaxLayers));
  if (c.hidden_size % c.num_heads != 0)
    throw DataError(cat(source, ": 'hidden_size' ", c.hidden_size, " is not divisible by 'num_heads' ", c.num_heads));
  if (json.has("window_size")) c.window_size = positive_int(json, "window_size", source);
  c.intermediate_size = 4 * c.hidden_size;
  if (json.has("intermediate_size") && !json.at("intermediate_size").is_null())
    c.intermediate_size = positive_int(json, "intermediate_size", source);
  if (json.has("layer_norm_epsilon")) {
    const Json& eps = json.at("layer_norm_epsilon");
    if (!eps.is_number() || !(eps.as_number() > 0) || std::isinf(eps.as_number()))
      throw DataError(cat(source, ": 'layer_norm_epsilon' must be a positive number, got ", eps.dump()));
    c.layer_norm_epsilon = eps.as_number();
  }
  if (json.has("tie_word_embeddings")) {
    if (!json.at("tie_word_embeddings").is_bool())
      throw DataError(cat(source, ": 'tie_word_embeddings' must be true or false, got ",
                          json.at("tie_word_embeddings").dump()));
    c.tie_word_embeddings = json.at("tie_word_embeddings").as_bool();
  }

  // attention_types, expanded; attention_layers (what save_pretrained also writes) must agree.
  const bool has_types = json.has("attention_types") && !json.at("attention_types").is_null();
  const bool has_layers = json.has("attention_layers") && !json.at("attention_layers").is_null();
  if (!has_types && !has_layers) throw DataError(cat(source, ": neither 'attention_types' nor 'attention_layers'"));
  std::vector<AttentionKind> saved;
  if (has_layers) {
    const Json& layers = json.at("attention_layers");
    if (!layers.is_array())
      throw DataError(cat(source, ": 'attention_layers' must be a list of \"global\"/\"local\", got ", layers.dump()));
    for (const Json& kind : layers.elements()) saved.push_back(attention_kind(kind, "'attention_layers'", source));
  }
  c.attention_layers = has_types ? expand_attention_types(json.at("attention_types"), source) : saved;
  if (static_cast<int64_t>(c.attention_layers.size()) != c.num_layers)
    throw DataError(cat(source, ": the attention types give ", c.attention_layers.size(), " layers, 'num_layers' is ",
                        c.num_layers));
  if (has_types && has_layers && saved != c.attention_layers)
    throw DataError(cat(source, ": 'attention_layers' disagrees with the expansion of 'attention_types' (Hugging Face "
                        "would silently use 'attention_layers'; fix the file)"));
  return c;
}

GptNeoConfig GptNeoConfig::load(const std::string& path) { return from_json(read_json_file(path), path); }

std::vector<std::pair<std::string, std::vector<int64_t>>> GptNeoConfig::parameter_shapes() const {
  const int64_t d = hidden_size, f = intermediate_size;
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {
      {"transformer.wte.weight", {vocab_size, d}}, {"transformer.wpe.weight", {max_positions, d}}};
  for (int64_t i = 0; i < num_layers; ++i) {
    const std::string b = cat("transformer.h.", i, ".");
    const std::vector<std::pair<std::string, std::vector<int64_t>>> block = {
        {b + "ln_1.weight", {d}},
        {b + "ln_1.bias", {d}},
        {b + "attn.attention.q_proj.weight", {d, d}},
        {b + "attn.attention.k_proj.weight", {d, d}},
        {b + "attn.attention.v_proj.weight", {d, d}},
        {b + "attn.attention.out_proj.weight", {d, d}},
        {b + "attn.attention.out_proj.bias", {d}},
        {b + "ln_2.weight", {d}},
        {b + "ln_2.bias", {d}},
        {b + "mlp.c_fc.weight", {f, d}},
        {b + "mlp.c_fc.bias", {f}},
        {b + "mlp.c_proj.weight", {d, f}},
        {b + "mlp.c_proj.bias", {d}}};
    shapes.insert(shapes.end(), block.begin(), block.end());
  }
  shapes.push_back({"transformer.ln_f.weight", {d}});
  shapes.push_back({"transformer.ln_f.bias", {d}});
  if (!tie_word_embeddings) shapes.push_back({"lm_head.weight", {vocab_size, d}});
  return shapes;
}

// ---------------------------------------------------------------- the model's buffers

struct GptNeo::Block {
  Tensor ln_1_weight, ln_1_bias, qkv_weight, out_weight, out_bias, ln_2_weight, ln_2_bias, fc_weight, fc_bias,
      proj_weight, proj_bias;
  int64_t window = 0;  // 0: global
};

// Flat 1-D buffers sized for `tokens`; the forward pass takes views of their first elements.
struct GptNeo::Workspace {
  int64_t tokens = 0;
  Tensor ids;                   // int32 [T]
  Tensor residual, normed;      // [T, d]
  Tensor mean, rstd;            // [T]
  Tensor qkv, heads;            // [T, 3d], [3H, T, hd]
  Tensor scores;                // [H, T, T]
  Tensor context, merged;       // [H, T, hd], [T, d]
  Tensor mlp;                   // [T, f]
};

GptNeo::GptNeo() = default;
GptNeo::GptNeo(GptNeo&&) noexcept = default;
GptNeo& GptNeo::operator=(GptNeo&&) noexcept = default;
GptNeo::~GptNeo() = default;

GptNeo GptNeo::from_tensors(GptNeoConfig config, const NamedTensors& weights, Device device,
                            const std::string& source) {
  const auto expected = config.parameter_shapes();
  std::set<std::string> expected_names;
  for (const auto& [name, shape] : expected) expected_names.insert(name);
  for (const auto& [name, tensor] : weights)
    if (!expected_names.count(name) && name != "lm_head.weight" && !is_legacy_mask_buffer(name, config.num_layers))
      throw DataError(cat(source, ": unexpected tensor '", name, "' (not a GPT-Neo parameter of this config)"));

  // Every expected tensor: present, the right shape, finite; float32 on the host for the checks.
  std::map<std::string, Tensor> host;
  auto take = [&](const std::string& name, const std::vector<int64_t>& shape) {
    auto found = weights.find(name);
    if (found == weights.end() || !found->second.defined())
      throw DataError(cat(source, ": missing tensor '", name, "' ", shape_text(shape)));
    if (shape_of(found->second) != shape)
      throw DataError(cat(source, ": tensor '", name, "' has shape ", shape_text(shape_of(found->second)),
                          ", expected ", shape_text(shape), " for ", config.source));
    if (found->second.dtype() == DType::I32)
      throw DataError(cat(source, ": tensor '", name, "' is int32, expected floating point"));
    Tensor t = found->second.to(Device::CPU).to(DType::F32);
    const float* p = t.data<float>();
    const int64_t n = t.numel();
    int64_t bad = -1;
    for (int64_t i = 0; i < n && bad < 0; ++i)
      if (!std::isfinite(p[i])) bad = i;
    if (bad >= 0)
      throw DataError(cat(source, ": tensor '", name, "' holds a non-finite value (", p[bad], ") at flat index ", bad));
    host[name] = t;
  };
  for (const auto& [name, shape] : expected) take(name, shape);
  if (config.tie_word_embeddings && weights.count("lm_head.weight"))
    take("lm_head.weight", {config.vocab_size, config.hidden_size});

  GptNeo model;
  model.config_ = std::move(config);
  model.device_ = device;
  model.source_ = source;
  const GptNeoConfig& c = model.config_;
  const int64_t d = c.hidden_size;
  auto on_device = [&](const std::string& name) { return host.at(name).to(device); };
  model.wte_ = on_device("transformer.wte.weight");
  model.wpe_ = on_device("transformer.wpe.weight");
  model.ln_f_weight_ = on_device("transformer.ln_f.weight");
  model.ln_f_bias_ = on_device("transformer.ln_f.bias");
  // docs/gpt_neo.md section 2: the file's lm_head.weight when it has one, else the tied wte.
  model.lm_head_ = host.count("lm_head.weight") ? on_device("lm_head.weight") : model.wte_;
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string b = cat("transformer.h.", i, ".");
    Block block;
    block.ln_1_weight = on_device(b + "ln_1.weight");
    block.ln_1_bias = on_device(b + "ln_1.bias");
    Tensor qkv = Tensor::empty(Shape{3 * d, d});
    const char* parts[] = {"q_proj", "k_proj", "v_proj"};
    for (int p = 0; p < 3; ++p) {
      Tensor rows = qkv.slice_rows(p * d, (p + 1) * d);
      copy_(rows, host.at(b + "attn.attention." + parts[p] + ".weight"));
    }
    block.qkv_weight = qkv.to(device);
    block.out_weight = on_device(b + "attn.attention.out_proj.weight");
    block.out_bias = on_device(b + "attn.attention.out_proj.bias");
    block.ln_2_weight = on_device(b + "ln_2.weight");
    block.ln_2_bias = on_device(b + "ln_2.bias");
    block.fc_weight = on_device(b + "mlp.c_fc.weight");
    block.fc_bias = on_device(b + "mlp.c_fc.bias");
    block.proj_weight = on_device(b + "mlp.c_proj.weight");
    block.proj_bias = on_device(b + "mlp.c_proj.bias");
    block.window = c.attention_layers[i] == AttentionKind::Local ? c.window_size : 0;
    model.blocks_.push_back(std::move(block));
  }
  model.workspace_ = std::make_unique<Workspace>();
  return model;
}

GptNeo GptNeo::load(const std::string& model_dir, Device device) {
  GptNeoConfig config = GptNeoConfig::load(model_dir + "/config.json");
  const std::string path = model_dir + "/model.safetensors";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    const bool has_bin = std::filesystem::exists(model_dir + "/pytorch_model.bin", ec);
    throw DataError(cat(model_dir, ": no model.safetensors",
                        has_bin ? " (only safetensors weights are read, not pytorch_model.bin: convert it with "
                                  "transformers' save_pretrained(safe_serialization=True))"
                                : ""));
  }
  SafetensorsFile file = SafetensorsFile::open(path);
  NamedTensors weights;
  const auto expected = config.parameter_shapes();
  std::set<std::string> expected_names;
  for (const auto& [name, shape] : expected) expected_names.insert(name);
  for (const std::string& name : file.names()) {
    if (is_legacy_mask_buffer(name, config.num_layers)) continue;
    if (!expected_names.count(name) && name != "lm_head.weight")
      throw DataError(cat(path, ": unexpected tensor '", name, "' (not a GPT-Neo parameter of ", config.source, ")"));
    // The shape before reading: a misshapen tensor is reported without converting it.
    std::vector<int64_t> want = {config.vocab_size, config.hidden_size};
    for (const auto& [n, shape] : expected)
      if (n == name) want = shape;
    if (file.entry(name).shape != want)
      throw DataError(cat(path, ": tensor '", name, "' has shape ", shape_text(file.entry(name).shape), ", expected ",
                          shape_text(want), " for ", config.source));
    weights[name] = file.read_f32(name);
  }
  return from_tensors(std::move(config), weights, device, path);
}

// ---------------------------------------------------------------- forward

void GptNeo::reserve(int64_t max_tokens) {
  if (max_tokens <= workspace_->tokens) return;
  if (max_tokens > config_.max_positions)
    throw DataError(cat("GPT-Neo ", source_, ": cannot reserve ", max_tokens, " tokens, max_position_embeddings is ",
                        config_.max_positions));
  const int64_t t = max_tokens, d = config_.hidden_size, h = config_.num_heads, f = config_.intermediate_size;
  Workspace& w = *workspace_;
  w = Workspace{};  // release the old buffers first
  auto buffer = [&](int64_t n) { return Tensor::empty(Shape{n}, DType::F32, device_); };
  w.ids = Tensor::empty(Shape{t}, DType::I32, device_);
  w.residual = buffer(t * d);
  w.normed = buffer(t * d);
  w.mean = buffer(t);
  w.rstd = buffer(t);
  w.qkv = buffer(t * 3 * d);
  w.heads = buffer(t * 3 * d);
  w.scores = buffer(h * t * t);
  w.context = buffer(t * d);
  w.merged = buffer(t * d);
  w.mlp = buffer(t * f);
  w.tokens = t;
}

int64_t GptNeo::workspace_tokens() const { return workspace_->tokens; }

const Tensor& GptNeo::parameter(const std::string& name) const {
  if (name == "wte") return wte_;
  if (name == "wpe") return wpe_;
  if (name == "ln_f.weight") return ln_f_weight_;
  if (name == "ln_f.bias") return ln_f_bias_;
  if (name == "lm_head") return lm_head_;  // [V, d]: the tied wte unless the file has lm_head.weight
  // "h.{i}.<part>"
  const size_t dot = name.find('.', 2);
  if (name.rfind("h.", 0) == 0 && dot != std::string::npos) {
    const std::string index = name.substr(2, dot - 2), part = name.substr(dot + 1);
    int64_t i = -1;
    if (!index.empty() && index.size() < 6 && index.find_first_not_of("0123456789") == std::string::npos)
      i = std::stoll(index);
    if (i >= 0 && i < static_cast<int64_t>(blocks_.size())) {
      const Block& b = blocks_[static_cast<size_t>(i)];
      const std::pair<const char*, const Tensor*> parts[] = {
          {"ln_1.weight", &b.ln_1_weight}, {"ln_1.bias", &b.ln_1_bias},        {"qkv", &b.qkv_weight},
          {"out_proj.weight", &b.out_weight}, {"out_proj.bias", &b.out_bias},  {"ln_2.weight", &b.ln_2_weight},
          {"ln_2.bias", &b.ln_2_bias},        {"mlp.c_fc.weight", &b.fc_weight}, {"mlp.c_fc.bias", &b.fc_bias},
          {"mlp.c_proj.weight", &b.proj_weight}, {"mlp.c_proj.bias", &b.proj_bias}};
      for (const auto& [key, tensor] : parts)
        if (part == key) return *tensor;
    }
  }
  throw Error(cat("GPT-Neo ", source_, ": no parameter '", printable(name), "'"));
}

void GptNeo::check_ids(const std::vector<int32_t>& ids, int64_t first_position) const {
  if (ids.empty()) throw DataError(cat("GPT-Neo ", source_, ": empty token sequence"));
  const int64_t end = first_position + static_cast<int64_t>(ids.size());
  if (end > config_.max_positions) {
    if (first_position == 0)
      throw DataError(cat("GPT-Neo ", source_, ": a sequence of ", ids.size(),
                          " tokens is longer than max_position_embeddings ", config_.max_positions));
    throw DataError(cat("GPT-Neo ", source_, ": ", ids.size(), " more tokens after ", first_position,
                        " would pass max_position_embeddings ", config_.max_positions));
  }
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= config_.vocab_size)
      throw DataError(cat("GPT-Neo ", source_, ": token id ", ids[i], " at position ", first_position + int64_t(i),
                          " is outside the vocabulary [0, ", config_.vocab_size, ")"));
}

void GptNeo::run_block(const Block& block, size_t index, int64_t t, KvCache* cache) {
  Workspace& w = *workspace_;
  const int64_t d = config_.hidden_size, h = config_.num_heads, hd = config_.head_dim();
  const int64_t f = config_.intermediate_size;
  Tensor x = view(w.residual, Shape{t, d}), a = view(w.normed, Shape{t, d});
  Tensor mean = view(w.mean, Shape{t}), rstd = view(w.rstd, Shape{t});

  // attention
  layer_norm_(a, mean, rstd, x, block.ln_1_weight, block.ln_1_bias, config_.layer_norm_epsilon);
  Tensor qkv = view(w.qkv, Shape{t, 3 * d});
  matmul_(qkv, a, false, block.qkv_weight, true);
  Tensor heads = view(w.heads, Shape{3 * h, t, hd});
  swap_axes01_(heads, qkv.reshape(Shape{t, 3 * h, hd}));
  Tensor q = heads.slice_rows(0, h), k = heads.slice_rows(h, 2 * h), v = heads.slice_rows(2 * h, 3 * h);
  Tensor scores;
  if (cache == nullptr) {
    scores = view(w.scores, Shape{h, t, t});
  } else {
    // The new rows' keys and values join the cache (as rows [T, H, hd]); the queries then attend to
    // the cached rows they may see: all of them (global), or the last `window` before each query
    // (local: the first query, at position `past`, sees no key before past - window + 1).
    const int64_t past = cache->length_;
    Tensor cached_k = cache->keys_[index].slice_rows(past, past + t).reshape(Shape{t, h, hd});
    Tensor cached_v = cache->values_[index].slice_rows(past, past + t).reshape(Shape{t, h, hd});
    swap_axes01_(cached_k, k);
    swap_axes01_(cached_v, v);
    const int64_t first_key = block.window > 0 ? std::max<int64_t>(0, past - block.window + 1) : 0;
    const int64_t keys = past + t - first_key;
    k = view(cache->key_heads_, Shape{h, keys, hd});
    v = view(cache->value_heads_, Shape{h, keys, hd});
    swap_axes01_(k, cache->keys_[index].slice_rows(first_key, past + t).reshape(Shape{keys, h, hd}));
    swap_axes01_(v, cache->values_[index].slice_rows(first_key, past + t).reshape(Shape{keys, h, hd}));
    if (cache->scores_.numel() < h * t * keys) cache->scores_ = Tensor::empty(Shape{h * t * keys}, DType::F32, device_);
    scores = view(cache->scores_, Shape{h, t, keys});
  }
  // attention_mask takes the queries as the last t of the keys' positions, which they are.
  batched_matmul_(scores, q, false, k, true);
  attention_mask_(scores, scores, block.window);
  softmax_(scores, scores);
  Tensor context = view(w.context, Shape{h, t, hd});
  batched_matmul_(context, scores, false, v, false);
  Tensor merged = view(w.merged, Shape{t, h, hd});
  swap_axes01_(merged, context);
  matmul_(x, merged.reshape(Shape{t, d}), false, block.out_weight, true, 1.0, 1.0);
  add_(x, block.out_bias);

  // MLP
  layer_norm_(a, mean, rstd, x, block.ln_2_weight, block.ln_2_bias, config_.layer_norm_epsilon);
  Tensor hidden = view(w.mlp, Shape{t, f});
  matmul_(hidden, a, false, block.fc_weight, true);
  add_(hidden, block.fc_bias);
  unary_(UnaryOp::gelu_new, hidden, hidden);
  matmul_(x, hidden, false, block.proj_weight, true, 1.0, 1.0);
  add_(x, block.proj_bias);
}

Tensor GptNeo::forward_to(const std::vector<int32_t>& ids, int layer, const ResidualHook& hook) {
  return forward_rows(ids, layer, hook, nullptr);
}

Tensor GptNeo::forward_rows(const std::vector<int32_t>& ids, int layer, const ResidualHook& hook, KvCache* cache) {
  const int64_t layers = config_.num_layers;
  if (layer < 0 || layer > layers)
    throw UsageError(cat("GPT-Neo ", source_, ": hidden_states index ", layer, " is outside 0..", layers));
  const int64_t past = cache ? cache->length_ : 0;
  check_ids(ids, past);
  const int64_t t = static_cast<int64_t>(ids.size()), d = config_.hidden_size;
  reserve(t);
  Workspace& w = *workspace_;

  Tensor id_view = view(w.ids, Shape{t});
  if (device_ == Device::CPU)
    std::copy(ids.begin(), ids.end(), id_view.data<int32_t>());
  else
    cuda_copy_to_device(id_view.raw(), ids.data(), ids.size() * sizeof(int32_t));

  // A hook must leave the state where it found it (it may change the values, not the tensor).
  auto call_hook = [&](int k, Tensor& state) {
    if (!hook) return;
    const void* where = state.raw();
    const Shape shape = state.shape();
    hook(k, state);
    if (!state.defined() || state.raw() != where || state.shape() != shape)
      throw UsageError(cat("GPT-Neo: the hook at layer ", k, " replaced the state tensor; write into it instead"));
  };

  Tensor x = view(w.residual, Shape{t, d});
  embedding_(x, wte_, id_view);
  add_(x, wpe_.slice_rows(past, past + t));
  call_hook(0, x);
  for (int i = 0; i < layer; ++i) {
    run_block(blocks_[i], static_cast<size_t>(i), t, cache);
    if (i + 1 < layers) call_hook(i + 1, x);
  }
  if (layer < layers) return x;
  Tensor y = view(w.normed, Shape{t, d}), mean = view(w.mean, Shape{t}), rstd = view(w.rstd, Shape{t});
  layer_norm_(y, mean, rstd, x, ln_f_weight_, ln_f_bias_, config_.layer_norm_epsilon);
  call_hook(layers, y);
  return y;
}

Tensor GptNeo::hidden_states(const std::vector<int32_t>& ids, int layer) { return forward_to(ids, layer).clone(); }

Tensor GptNeo::logits(const std::vector<int32_t>& ids, const ResidualHook& hook) {
  const Tensor y = forward_to(ids, static_cast<int>(config_.num_layers), hook);
  return matmul(y, lm_head_, false, true);
}

// ---------------------------------------------------------------- generation with a KV cache

KvCache::KvCache() = default;
KvCache::KvCache(KvCache&&) noexcept = default;
KvCache& KvCache::operator=(KvCache&&) noexcept = default;
KvCache::~KvCache() = default;

KvCache GptNeo::new_cache(int64_t capacity) const {
  if (capacity < 1 || capacity > config_.max_positions)
    throw DataError(cat("GPT-Neo ", source_, ": a cache of ", capacity, " positions (it must hold 1..",
                        config_.max_positions, ", max_position_embeddings)"));
  const int64_t d = config_.hidden_size;
  KvCache cache;
  cache.owner_ = workspace_.get();
  cache.capacity_ = capacity;
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    cache.keys_.push_back(Tensor::empty(Shape{capacity, d}, DType::F32, device_));
    cache.values_.push_back(Tensor::empty(Shape{capacity, d}, DType::F32, device_));
  }
  cache.key_heads_ = Tensor::empty(Shape{capacity * d}, DType::F32, device_);
  cache.value_heads_ = Tensor::empty(Shape{capacity * d}, DType::F32, device_);
  return cache;
}

Tensor GptNeo::logits_cached(const std::vector<int32_t>& ids, KvCache& cache, const ResidualHook& hook,
                             bool last_only) {
  if (cache.owner_ != workspace_.get()) throw UsageError(cat("GPT-Neo ", source_, ": the KV cache was made by another model"));
  const int64_t n = static_cast<int64_t>(ids.size());
  if (cache.length_ + n > cache.capacity_)
    throw DataError(cat("GPT-Neo ", source_, ": the KV cache holds ", cache.length_, " of ", cache.capacity_,
                        " positions, no room for ", n, " more"));
  Tensor y = forward_rows(ids, static_cast<int>(config_.num_layers), hook, &cache);
  cache.length_ += n;  // only now: a throw above leaves the cache as it was (rows past length_ are unused)
  if (last_only) y = y.slice_rows(n - 1, n);
  return matmul(y, lm_head_, false, true);
}

}  // namespace sae
