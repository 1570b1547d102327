// dictionary_learning's ae.pt (see dictionary_learning_file.h).
#include "sae/train/dictionary_learning_file.h"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <regex>
#include <set>

#include "io/torch_pickle.h"
#include "io/zip_archive.h"
#include "sae/arch/registry.h"
#include "sae/train/saelens_view.h"
#include "tensor/ops.h"

namespace fs = std::filesystem;

namespace sae {

namespace {

struct ClassLayout {
  const char* dict_class;
  const char* unit;
  std::vector<std::string> tensors;  // the state dict's, exactly
};
const ClassLayout kClasses[] = {
    {"AutoEncoder", "standard", {"bias", "decoder.weight", "encoder.bias", "encoder.weight"}},
    {"AutoEncoderNew", "standard", {"decoder.bias", "decoder.weight", "encoder.bias", "encoder.weight"}},
    {"AutoEncoderTopK", "topk", {"b_dec", "decoder.weight", "encoder.bias", "encoder.weight", "k", "threshold"}},
    {"BatchTopKSAE", "batchtopk", {"b_dec", "decoder.weight", "encoder.bias", "encoder.weight", "k", "threshold"}},
    {"MatryoshkaBatchTopKSAE",
     "matryoshka_batchtopk",
     {"W_dec", "W_enc", "b_dec", "b_enc", "group_sizes", "k", "threshold"}},
    {"JumpReluAutoEncoder", "jumprelu", {"W_dec", "W_enc", "b_dec", "b_enc", "threshold"}},
    {"GatedAutoEncoder",
     "gated",
     {"decoder.weight", "decoder_bias", "encoder.weight", "gate_bias", "mag_bias", "r_mag"}},
};

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

// config.json of the save dir: beside ae.pt, or above checkpoints/ae_STEP.pt ("" when there is none).
std::string trainer_config_path(const fs::path& pt) {
  fs::path dir = pt.has_parent_path() ? pt.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::exists(dir / "config.json", ec) && dir.filename() == "checkpoints") dir = dir.parent_path();
  return fs::exists(dir / "config.json", ec) ? (dir / "config.json").string() : "";
}

// The config (a null Json when there is none).
Json trainer_config(const std::string& path) {
  if (path.empty()) return Json();
  const Json config = read_json_file(path);
  if (!config.is_object() || !config.has("trainer") || !config.at("trainer").is_object())
    throw DataError(cat(path, ": expected dictionary_learning's config.json, an object with a \"trainer\" object"));
  // The keys read, type-checked here so that an error names this file.
  const Json& trainer = config.at("trainer");
  try {
    if (trainer.has("dict_class")) trainer.at("dict_class").as_string();
    for (const char* key : {"k", "activation_dim", "dict_size"})
      if (trainer.has(key)) trainer.at(key).as_int();
  } catch (const DataError& e) {
    throw DataError(cat(path, ": trainer: ", e.what()));
  }
  return config;
}

}  // namespace

bool is_torch_file(const std::string& path) {
  const fs::path p(path);
  if (p.extension() == ".pt" || p.extension() == ".pth") return true;
  if (p.extension() == ".npz") return false;  // named as NumPy's
  try {
    const ZipArchive archive = ZipArchive::open(path, "a zip archive");
    for (const ZipEntry& e : archive.entries()) {
      const size_t slash = e.name.find('/');
      if (slash != std::string::npos && e.name.compare(slash, std::string::npos, "/data.pkl") == 0) return true;
    }
  } catch (const Error&) {
  }
  return false;
}

bool is_dictionary_learning_save_dir(const std::string& dir) {
  std::error_code ec;
  const fs::path config = fs::path(dir) / "config.json";
  if (!fs::is_regular_file(config, ec)) return false;
  try {
    const Json j = read_json_file(config.string());
    return j.is_object() && j.has("trainer") && j.at("trainer").is_object() && j.at("trainer").has("dict_class");
  } catch (const Error&) {
    return false;
  }
}

std::string dictionary_learning_save_dir_message(const std::string& dir) {
  return cat(dir, ": a dictionary_learning save folder without ae.pt (written when its training ends): give one "
                  "of its checkpoints/ae_STEP.pt");
}

Checkpoint load_dictionary_learning(const TorchFile& file, Device device) {
  const std::string& pt_path = file.path();
  const std::string config_path = trainer_config_path(fs::path(pt_path));
  const Json config = trainer_config(config_path);

  // A training backup (ae.pt while the loop runs): {"step", "ae", "optimizer", "config", "norm_factor"}.
  std::string prefix;
  if (file.has("ae.encoder.weight") || file.has("ae.W_enc") || file.has("ae.decoder_bias")) {
    prefix = "ae.";
    if (file.scalars().count("norm_factor"))
      throw DataError(cat(pt_path, ": a training backup of a run that normalised its activations (norm_factor ",
                          file.scalars().at("norm_factor"), "): its weights take activations divided by norm_factor. "
                          "The finished ae.pt and checkpoints/ae_STEP.pt take raw activations: read one of those"));
  }
  std::vector<std::string> tensors;  // sorted, as names() are
  for (const std::string& name : file.names())
    if (name.rfind(prefix, 0) == 0) tensors.push_back(name.substr(prefix.size()));

  // The class: config.json's, or the one whose tensors these are.
  std::string dict_class;
  if (!config.is_null() && config.at("trainer").has("dict_class")) {
    dict_class = config.at("trainer").at("dict_class").as_string();
  } else {
    std::vector<std::string> matches;
    for (const ClassLayout& c : kClasses)
      if (c.tensors == tensors) matches.push_back(c.dict_class);
    if (matches.size() > 1)
      throw DataError(cat(pt_path, ": its tensors are those of both ", joined(matches),
                          ", which encode differently: dictionary_learning's config.json (trainer.dict_class) beside it "
                          "says which"));
    if (matches.empty())
      throw DataError(cat(pt_path, ": tensors [", printable(joined(tensors)),
                          "] are not a dictionary_learning SAE's state dict (AutoEncoder, AutoEncoderNew, "
                          "AutoEncoderTopK, BatchTopKSAE, MatryoshkaBatchTopKSAE, JumpReluAutoEncoder, GatedAutoEncoder)"));
    dict_class = matches[0];
  }
  // dictionary_learning's standard trainers write dict_class "AutoEncoder" whatever class they
  // trained (standard.py, p_anneal.py): AutoEncoderNew's tensors under that name are AutoEncoderNew.
  if (dict_class == "AutoEncoder" && tensors == kClasses[1].tensors) dict_class = kClasses[1].dict_class;
  const ClassLayout* layout = nullptr;
  for (const ClassLayout& c : kClasses)
    if (dict_class == c.dict_class) layout = &c;
  if (layout == nullptr)
    throw DataError(cat(pt_path, ": dictionary_learning's ", printable(dict_class),
                        " is not read (AutoEncoder, AutoEncoderNew, AutoEncoderTopK, BatchTopKSAE, "
                        "MatryoshkaBatchTopKSAE, JumpReluAutoEncoder and GatedAutoEncoder are)"));
  if (tensors != layout->tensors)
    throw DataError(cat(pt_path, ": ", dict_class, " holds ", joined(layout->tensors), "; this file holds [",
                        printable(joined(tensors)), "]"));

  auto read = [&](const std::string& name) { return file.read_f32(prefix + name); };
  auto transposed = [&](const std::string& name) {
    return [&file, prefix, name, pt_path] {
      const Tensor t = file.read_f32(prefix + name);
      if (t.ndim() != 2) throw DataError(cat(pt_path, ": ", name, " must be 2-D, got ", t.describe()));
      return transpose(t);
    };
  };
  auto as_is = [&](const std::string& name) { return [read, name] { return read(name); }; };
  auto one_integer = [&](const std::string& name) {
    const std::vector<int64_t> v = file.read_integers(prefix + name);
    if (v.size() != 1) throw DataError(cat(pt_path, ": ", name, " must hold one integer"));
    return v[0];
  };

  SaelensView view(pt_path);
  Checkpoint out;
  out.cfg = Json::object();
  Json ours = Json::object();
  const std::string klass = dict_class;
  const bool linear_layout = !file.has(prefix + "W_enc");  // encoder.weight: nn.Linear's [out, in]
  if (linear_layout) {
    view.add("W_enc", transposed("encoder.weight"));
    view.add("W_dec", transposed("decoder.weight"));
  } else {
    view.add("W_enc", as_is("W_enc"));
    view.add("W_dec", as_is("W_dec"));
  }
  bool centred = true;
  if (klass == "AutoEncoder") {
    view.add("b_enc", as_is("encoder.bias"));
    view.add("b_dec", as_is("bias"));
  } else if (klass == "AutoEncoderNew") {
    view.add("b_enc", as_is("encoder.bias"));
    view.add("b_dec", as_is("decoder.bias"));
    centred = false;
  } else if (klass == "GatedAutoEncoder") {
    view.add("b_dec", as_is("decoder_bias"));
    view.add("b_gate", as_is("gate_bias"));
    view.add("b_mag", as_is("mag_bias"));
    view.add("r_mag", as_is("r_mag"));
  } else if (klass == "JumpReluAutoEncoder") {
    view.add("b_enc", as_is("b_enc"));
    view.add("b_dec", as_is("b_dec"));
    // relu(P (P > t)) is relu(P) for any t < 0, as t = 0 gives: its trainer learns t itself, which
    // can go below 0 (SAELens's thresholds, and so ours, are >= 0).
    view.add("threshold", [read] {
      Tensor t = read("threshold");
      for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = std::max(t.data<float>()[i], 0.0f);
      return t;
    });
    centred = false;  // the class's apply_b_dec_to_input is False
  } else {  // the k classes
    view.add("b_enc", as_is(linear_layout ? "encoder.bias" : "b_enc"));
    view.add("b_dec", as_is("b_dec"));
    const int64_t k = one_integer("k");
    if (k < 1) throw DataError(cat(pt_path, ": k must be >= 1, got ", k));
    if (!config.is_null() && config.at("trainer").has("k") && config.at("trainer").at("k").as_int() != k)
      throw DataError(cat(pt_path, ": k is ", k, " but config.json's trainer.k is ", config.at("trainer").at("k").as_int()));
    if (klass == "AutoEncoderTopK") {
      out.cfg["k"] = k;  // its threshold serves encode(use_threshold=True) only, not its default
    } else {
      const Tensor threshold = read("threshold");
      if (threshold.numel() != 1) throw DataError(cat(pt_path, ": threshold must be one number"));
      const double theta = std::max(0.0, threshold.to_vector()[0]);  // before training set it: -1, every relu(P) kept
      ours["k"] = k;
      ours["batchtopk_threshold"] = theta;
      const TorchTensorEntry& encoder = file.entry(prefix + (linear_layout ? "encoder.weight" : "W_enc"));
      const int64_t features = encoder.shape.size() == 2 ? encoder.shape[linear_layout ? 0 : 1] : 0;
      view.add("threshold", [theta, features] { return Tensor::full(Shape{features}, theta, DType::F32); });
      if (klass == "MatryoshkaBatchTopKSAE") {
        Json widths = Json::array();
        int64_t sum = 0;
        for (int64_t size : file.read_integers(prefix + "group_sizes")) {
          if (size < 1) throw DataError(cat(pt_path, ": group_sizes must be >= 1, got ", size));
          sum += size;
          widths.push_back(sum);
        }
        const TorchTensorEntry& encoder_entry = file.entry(prefix + "W_enc");
        if (encoder_entry.shape.size() == 2 && sum != encoder_entry.shape[1])
          throw DataError(cat(pt_path, ": group_sizes sum to ", sum, ", not to the ", encoder_entry.shape[1], " latents"));
        ours["matryoshka_widths"] = widths;
      }
    }
  }
  const ArchUnit& unit = arch_unit(layout->unit);
  out.cfg["architecture"] = unit.saelens_architecture();
  out.cfg["apply_b_dec_to_input"] = centred;
  ours["training_architecture"] = unit.name();
  out.cfg["sae_cpp"] = ours;
  out.params = unit.import_saelens(view, out.cfg, pt_path);
  if (out.params.d_in() < 1 || out.params.d_sae() < 1)
    throw DataError(cat(pt_path, ": an SAE needs d_in >= 1 and d_sae >= 1, W_enc is [", out.params.d_in(), ", ",
                        out.params.d_sae(), "]"));
  const Json* trainer = config.is_null() ? nullptr : &config.at("trainer");
  for (const char* key : {"activation_dim", "dict_size"}) {
    const int64_t have = std::string(key) == "activation_dim" ? out.params.d_in() : out.params.d_sae();
    if (trainer && trainer->has(key) && trainer->at(key).as_int() != have)
      throw DataError(cat(config_path, ": trainer.", key, " is ", trainer->at(key).as_int(), " but ", pt_path,
                          " holds ", have));
  }
  out.cfg["d_in"] = out.params.d_in();
  out.cfg["d_sae"] = out.params.d_sae();
  out.cfg["dtype"] = "float32";
  out.cfg["normalize_activations"] = "none";
  out.cfg["apply_b_dec_to_input"] = false;  // folded into the encoder's biases by the import
  // Where it reads: dictionary_learning's submodule names of the form resid_post_layer_N.
  Json metadata = Json::object();
  if (trainer && trainer->has("submodule_name") && trainer->at("submodule_name").is_string()) {
    static const std::regex form("(resid_post|mlp_out|attn_out)_layer_([0-9]{1,4})");
    std::smatch m;
    const std::string submodule = trainer->at("submodule_name").as_string();
    if (std::regex_match(submodule, m, form))
      metadata["hook_name"] = cat("blocks.", m[2].str(), ".hook_", m[1].str());
  }
  out.cfg["metadata"] = metadata;
  out.cfg["dictionary_learning"] = config.is_null() ? Json::object() : config;
  out.cfg["dictionary_learning"]["dict_class"] = dict_class;
  out.params = out.params.to(device);
  return out;
}

}  // namespace sae
