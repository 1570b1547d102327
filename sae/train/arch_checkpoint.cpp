// The architectures' SAELens export and import, and the training state's extras (see arch_checkpoint.h).
#include "sae/train/arch_checkpoint.h"

#include <cmath>
#include <cstring>

#include "tensor/ops.h"

namespace sae {

namespace {
Tensor host_f32(const Tensor& t) { return t.to(Device::CPU).to(DType::F32); }

Tensor read_tensor(const SafetensorsFile& weights, const std::string& name, const std::string& where) {
  if (!weights.has(name)) throw DataError(cat(where, ": missing tensor ", name));
  const Tensor t = weights.read_f32(name);
  const float* p = t.data<float>();
  for (int64_t k = 0; k < t.numel(); ++k)
    if (!std::isfinite(p[k])) throw DataError(cat(where, ": ", name, " holds ", p[k], " at element ", k));
  return t;
}

std::string training_architecture(const Json& cfg) {
  if (cfg.has("sae_cpp") && cfg.at("sae_cpp").is_object() && cfg.at("sae_cpp").has("training_architecture"))
    return cfg.at("sae_cpp").at("training_architecture").as_string();
  return "";
}
}  // namespace

std::vector<std::pair<std::string, Tensor>> saelens_weights(const SaeParams& p) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& [name, tensor] : p.present())
    if (std::string(name) != "log_threshold") out.push_back({name, host_f32(*tensor)});
  if (p.architecture == Architecture::JumpReLU) out.push_back({"threshold", exp(host_f32(p.log_threshold))});
  if (p.architecture == Architecture::BatchTopK)
    out.push_back({"threshold", Tensor::full(Shape{p.d_sae()}, p.batchtopk_threshold, DType::F32)});
  return out;
}

void set_architecture_keys(Json& cfg, const SaeParams& p) {
  const Architecture a = p.architecture;
  cfg["architecture"] = a == Architecture::BatchTopK ? "jumprelu" : architecture_name(a);
  if (a == Architecture::TopK) {
    cfg["k"] = p.k;  // required: SAELens silently uses k = 100 without it
    cfg["rescale_acts_by_decoder_norm"] = false;
  }
  Json& ours = cfg["sae_cpp"];
  ours["training_architecture"] = architecture_name(a);
  if (a == Architecture::BatchTopK) {
    ours["k"] = p.k;
    ours["batchtopk_threshold"] = p.batchtopk_threshold;
  }
}

SaeParams saelens_params(const SafetensorsFile& weights, const Json& cfg, const std::string& where) {
  const std::string arch = cfg.has("architecture") ? cfg.at("architecture").as_string() : "standard";
  SaeParams p;
  if (arch == "standard" || arch == "topk" || arch == "jumprelu") {
    p.architecture = arch == "standard" ? Architecture::Standard : arch == "topk" ? Architecture::TopK
                                                                                  : Architecture::JumpReLU;
    p.b_enc = read_tensor(weights, "b_enc", where);
  } else if (arch == "gated") {
    p.architecture = Architecture::Gated;
    if (weights.has("b_enc")) throw DataError(cat(where, ": a gated SAE has no b_enc (it has b_gate and b_mag)"));
    p.b_gate = read_tensor(weights, "b_gate", where);
    p.b_mag = read_tensor(weights, "b_mag", where);
    p.r_mag = read_tensor(weights, "r_mag", where);
  } else {
    throw DataError(cat(where, ": architecture '", printable(arch), "' is not supported (standard, topk, jumprelu, gated)"));
  }
  p.W_enc = read_tensor(weights, "W_enc", where);
  p.W_dec = read_tensor(weights, "W_dec", where);
  p.b_dec = read_tensor(weights, "b_dec", where);
  if (p.W_enc.ndim() != 2) throw DataError(cat(where, ": W_enc must be 2-D, got ", p.W_enc.describe()));
  const int64_t features = p.W_enc.size(1);
  if (arch == "topk") {
    if (!cfg.has("k") || !cfg.at("k").is_number()) throw DataError(cat(where, ": a topk cfg.json needs an integer k"));
    p.k = cfg.at("k").as_int();
  }
  if (arch == "jumprelu") {
    const Tensor threshold = read_tensor(weights, "threshold", where);
    if (threshold.shape() != Shape{features})
      throw DataError(cat(where, ": threshold should be [", features, "], got ", threshold.describe()));
    const std::vector<double> theta = threshold.to_vector();
    if (training_architecture(cfg) == "batchtopk") {
      // Our BatchTopK: one threshold for every latent (in full precision in sae_cpp).
      for (double v : theta)
        if (v != theta[0]) throw DataError(cat(where, ": a batchtopk SAE has one threshold for every latent"));
      p.architecture = Architecture::BatchTopK;
      const Json& ours = cfg.at("sae_cpp");
      p.batchtopk_threshold = ours.has("batchtopk_threshold") ? ours.at("batchtopk_threshold").as_number() : theta[0];
      p.k = ours.has("k") ? ours.at("k").as_int() : 0;
    } else {
      for (double v : theta)
        if (v < 0) throw DataError(cat(where, ": jumprelu thresholds must be >= 0, got ", v));
      p.log_threshold = log(threshold);  // exp(log(theta)) is theta to rounding; our training state keeps it exactly
    }
  }
  try {
    p.check();
  } catch (const DataError& e) {
    throw DataError(cat(where, ": ", e.what()));
  }
  // Folds SAELens's input centring: (x - b_dec) W + b = x W + (b - b_dec W), per bias that sees it.
  if (cfg.has("apply_b_dec_to_input") && cfg.at("apply_b_dec_to_input").as_bool()) {
    const Tensor shift = matmul(p.b_dec.reshape(Shape{1, p.d_in()}), p.W_enc).reshape(Shape{features});
    if (p.architecture == Architecture::Gated) {
      p.b_gate = sub(p.b_gate, shift);
      p.b_mag = sub(p.b_mag, mul(shift, exp(p.r_mag)));
    } else {
      p.b_enc = sub(p.b_enc, shift);
    }
  }
  // Folds topk's rescale_acts_by_decoder_norm: select on P n_i and divide by n_i again in decode is
  // our topk with W_enc[:, i] n_i, b_enc n_i and W_dec[i, :] / n_i.
  if (arch == "topk" && cfg.has("rescale_acts_by_decoder_norm") && cfg.at("rescale_acts_by_decoder_norm").as_bool()) {
    const Tensor n = norm2(p.W_dec, 1);
    if (!(reduce(ReduceOp::min, n).item() > 0))
      throw DataError(cat(where, ": rescale_acts_by_decoder_norm with a zero decoder row"));
    p.W_enc = mul(p.W_enc, n.reshape(Shape{1, features}));
    p.b_enc = mul(p.b_enc, n);
    p.W_dec = div(p.W_dec, n.reshape(Shape{features, 1}));
  }
  return p;
}

void add_training_state_extras(std::vector<std::pair<std::string, Tensor>>& tensors, Json& info,
                               const SaeParams& p) {
  info["architecture"] = architecture_name(p.architecture);
  if (p.log_threshold.defined()) tensors.push_back({"param.log_threshold", p.log_threshold.to(Device::CPU)});
  if (p.architecture == Architecture::BatchTopK) info["batchtopk_threshold"] = p.batchtopk_threshold;
}

void read_training_state_extras(const SafetensorsFile& file, const Json& info, SaeParams& p) {
  const std::string arch = info.has("architecture") ? info.at("architecture").as_string() : "standard";
  if (arch != architecture_name(p.architecture))
    throw DataError(cat(file.path(), ": training state of a ", arch, " SAE beside a ",
                        architecture_name(p.architecture), " model"));
  if (p.log_threshold.defined()) {
    const Tensor exact = file.read_f32("param.log_threshold");
    if (exact.shape() != p.log_threshold.shape())
      throw DataError(cat(file.path(), ": param.log_threshold is ", exact.describe()));
    p.log_threshold = exact.to(p.log_threshold.device());
  }
  if (p.architecture == Architecture::BatchTopK && info.has("batchtopk_threshold"))
    p.batchtopk_threshold = info.at("batchtopk_threshold").as_number();
}

}  // namespace sae
