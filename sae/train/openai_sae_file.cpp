// OpenAI's sparse_autoencoder .pt (see openai_sae_file.h).
#include "sae/train/openai_sae_file.h"

#include <cmath>
#include <set>

#include "sae/arch/registry.h"
#include "sae/train/saelens_view.h"
#include "tensor/ops.h"

namespace sae {

bool is_openai_sae(const TorchFile& file) { return file.has("pre_bias") && file.has("latent_bias"); }

Checkpoint load_openai_sae(const TorchFile& file, Device device) {
  const std::string& path = file.path();
  const auto& strings = file.strings();
  const auto string_or = [&](const std::string& name, const std::string& otherwise) {
    const auto it = strings.find(name);
    return it == strings.end() ? otherwise : it->second;
  };
  const std::string activation = string_or("activation", "ReLU");
  if (activation != "ReLU" && activation != "TopK")
    throw DataError(cat(path, ": activation \"", printable(activation), "\" is not read (ReLU and TopK are)"));
  const bool topk = activation == "TopK";
  const bool tied = file.has("decoder.linear.weight");
  std::set<std::string> expected = {"pre_bias", "latent_bias", "encoder.weight",
                                    tied ? "decoder.linear.weight" : "decoder.weight"};
  for (const char* buffer : {"stats_last_nonzero", "latents_activation_frequency", "latents_mean_square"})
    if (file.has(buffer)) expected.insert(buffer);
  for (const std::string& name : file.names())
    if (!expected.count(name))
      throw DataError(cat(path, ": tensor '", printable(name), "' is not one of OpenAI's Autoencoder (pre_bias, "
                                "latent_bias, encoder.weight, decoder.weight and its statistics)"));
  for (const std::string& name : expected)
    if (!file.has(name)) throw DataError(cat(path, ": OpenAI's Autoencoder needs tensor '", name, "'"));

  // Each tensor read as the file names and lays it out (a value that is not finite is named there,
  // before the view below renames and transposes it).
  auto finite = [path](const std::string& name, const Tensor& t) {
    const float* p = t.data<float>();
    const int64_t at = first_non_finite(p, t.numel());
    if (at >= 0) throw DataError(cat(path, ": ", name, " holds ", p[at], " at element ", at));
    return t;
  };
  const Tensor encoder = finite("encoder.weight", file.read_f32("encoder.weight"));
  if (encoder.ndim() != 2 || encoder.size(0) < 1 || encoder.size(1) < 1)
    throw DataError(cat(path, ": encoder.weight must be [latents, inputs], got ", encoder.describe()));
  const int64_t f = encoder.size(0), d = encoder.size(1);
  auto shaped = [&file, path, finite](const std::string& name, Shape shape) {
    const Tensor t = file.read_f32(name);
    if (t.shape() != shape)
      throw DataError(cat(path, ": ", name, " must be ", Tensor::empty(shape).describe(), ", got ", t.describe()));
    return finite(name, t);
  };
  SaelensView view(path);
  view.add("W_enc", [encoder] { return transpose(encoder); });
  if (tied) {  // TiedTranspose: decoder(f) = f @ encoder.weight, the one parameter saved under two names
    const Tensor decoder = shaped("decoder.linear.weight", Shape{f, d});
    if (decoder.to_vector() != encoder.to_vector())
      throw DataError(cat(path, ": decoder.linear.weight (a tied decoder) differs from encoder.weight, whose "
                                "parameter it is"));
    view.add("W_dec", [encoder] { return encoder; });
  } else {
    view.add("W_dec", [shaped, d, f] { return transpose(shaped("decoder.weight", Shape{d, f})); });
  }
  view.add("b_enc", [shaped, f] { return shaped("latent_bias", Shape{f}); });
  view.add("b_dec", [shaped, d] { return shaped("pre_bias", Shape{d}); });

  Checkpoint out;
  out.cfg = Json::object();
  Json ours = Json::object();
  if (topk) {
    const auto k = file.scalars().find("activation_state_dict.k");
    if (k == file.scalars().end())
      throw DataError(cat(path, file.has("activation_state_dict.k") || strings.count("activation_state_dict.k")
                                    ? ": activation_state_dict.k must be a number"
                                    : ": activation TopK without activation_state_dict.k"));
    if (!(k->second >= 1 && k->second <= double(f) && k->second == std::floor(k->second)))
      throw DataError(cat(path, ": activation_state_dict.k must be a whole number in 1..", f, ", got ", k->second));
    const std::string post = string_or("activation_state_dict.postact_fn", "ReLU");
    if (post != "ReLU")
      throw DataError(cat(path, ": TopK's postact_fn \"", printable(post), "\" is not read (ReLU is: its top k "
                                "values rectified)"));
    out.cfg["k"] = static_cast<int64_t>(k->second);
  }
  const ArchUnit& unit = arch_unit(topk ? "topk" : "standard");
  out.cfg["architecture"] = unit.saelens_architecture();
  out.cfg["apply_b_dec_to_input"] = true;  // x - pre_bias
  ours["training_architecture"] = unit.name();
  out.cfg["sae_cpp"] = ours;
  out.params = unit.import_saelens(view, out.cfg, path);
  out.cfg["d_in"] = out.params.d_in();
  out.cfg["d_sae"] = out.params.d_sae();
  out.cfg["dtype"] = "float32";
  // Its from_state_dict: `normalize = activation_class_name == "TopK"`.
  out.cfg["normalize_activations"] = topk ? "layer_norm" : "none";
  out.cfg["apply_b_dec_to_input"] = false;  // folded into the encoder's biases by the import
  out.cfg["metadata"] = Json::object();
  Json origin = Json::object();
  origin["activation"] = activation;
  origin["tied"] = tied;
  out.cfg["openai_sparse_autoencoder"] = origin;
  out.params = out.params.to(device);
  return out;
}

}  // namespace sae
