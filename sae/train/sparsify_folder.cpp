// sparsify's SAE folders (see sparsify_folder.h).
#include "sae/train/sparsify_folder.h"

#include <filesystem>
#include <set>

#include "io/safetensors.h"
#include "lm/hook_points.h"
#include "sae/arch/registry.h"
#include "tensor/ops.h"

namespace fs = std::filesystem;

namespace sae {

namespace {

constexpr const char* kSparsifyWeights = "sae.safetensors";

// sae.safetensors under SAELens's names: W_enc is encoder.weight transposed, b_enc encoder.bias; the
// others keep theirs (W_skip is [D_out, D] in both). Any other tensor keeps its name, so the import
// refuses it as unexpected.
class SparsifyTensors : public NamedTensorFile {
 public:
  explicit SparsifyTensors(const SafetensorsFile& file) : file_(file) {}
  const std::string& path() const override { return file_.path(); }
  bool has(const std::string& name) const override { return file_.has(stored(name)); }
  std::vector<std::string> names() const override {
    std::set<std::string> out;
    for (const std::string& name : file_.names())
      out.insert(name == "encoder.weight" ? "W_enc" : name == "encoder.bias" ? "b_enc" : name);
    return {out.begin(), out.end()};
  }
  Tensor read_f32(const std::string& name) const override {
    const Tensor t = file_.read_f32(stored(name));
    if (name != "W_enc") return t;
    if (t.ndim() != 2) throw DataError(cat(path(), ": encoder.weight must be 2-D, got ", t.describe()));
    return transpose(t);
  }

 private:
  static std::string stored(const std::string& name) {
    return name == "W_enc" ? "encoder.weight" : name == "b_enc" ? "encoder.bias" : name;
  }
  const SafetensorsFile& file_;
};

}  // namespace

bool is_sparsify_folder(const std::string& dir) {
  const fs::path root(dir);
  std::error_code ec;
  return fs::is_directory(root, ec) && fs::exists(root / "cfg.json", ec) && fs::exists(root / kSparsifyWeights, ec) &&
         !fs::exists(root / "sae_weights.safetensors", ec);
}

Checkpoint load_sparsify_folder(const std::string& dir, Device device) {
  const fs::path root(dir);
  // The folder's own name, as given (h.1/, ./h.1/. and . name it too; a link keeps its own name).
  fs::path named = fs::absolute(root).lexically_normal();
  if (named.filename().empty()) named = named.parent_path();
  const std::string cfg_path = (root / "cfg.json").string(), weights_path = (root / kSparsifyWeights).string();
  const Json given = read_json_file(cfg_path);
  Checkpoint out;
  bool transcode = false, skip = false;
  try {
    if (!given.is_object()) throw DataError("expected a JSON object");
    const std::string activation = given.has("activation") ? given.at("activation").as_string() : "topk";
    if (activation != "topk")
      throw DataError(cat("sparsify's activation \"", printable(activation), "\" is not supported (topk is)"));
    // Keys of other versions that change what the coder computes (EleutherAI's older sae package:
    // signed, top k of |latents| with their signs kept; a later gram_lookup, an n-gram table subtracted
    // from the input): refused rather than run as a plain top k.
    for (const char* key : {"signed", "gram_lookup"})
      if (given.has(key) && !given.at(key).is_null() && given.at(key) != Json(false))
        throw DataError(cat("'", key, "' ", printable(given.at(key).dump(), 80),
                            " is not supported (it changes the encoder; sparsify's topk without it is)"));
    if (!given.has("k")) throw DataError("a sparsify cfg.json needs k");
    if (given.at("k").as_int() < 1) throw DataError(cat("k must be >= 1, got ", given.at("k").as_int()));
    transcode = given.has("transcode") && given.at("transcode").as_bool();
    skip = given.has("skip_connection") && given.at("skip_connection").as_bool();
    if (skip && !transcode)
      throw DataError("skip_connection on an autoencoder (transcode false) is not supported");
    out.cfg = Json::object();
    out.cfg["architecture"] = transcode ? (skip ? "topk_skip_transcoder" : "topk_transcoder") : "topk";
    out.cfg["k"] = given.at("k").as_int();
    out.cfg["apply_b_dec_to_input"] = !transcode;  // sparsify's encode centres an autoencoder's input
    if (given.has("d_in")) out.cfg["d_in"] = given.at("d_in").as_int();
  } catch (const DataError& e) {
    throw DataError(cat(cfg_path, ": ", e.what()));
  }
  const SafetensorsFile file = SafetensorsFile::open(weights_path);
  // The tensors sparsify writes, by its names (the import would name SAELens's).
  for (const char* name : {"encoder.weight", "encoder.bias", "W_dec", "b_dec"})
    if (!file.has(name)) throw DataError(cat(weights_path, ": missing tensor ", name));
  if (skip != file.has("W_skip"))
    throw DataError(cat(weights_path, skip ? ": skip_connection without W_skip" : ": W_skip without skip_connection"));
  for (const std::string& name : file.names())
    if (name != "encoder.weight" && name != "encoder.bias" && name != "W_dec" && name != "b_dec" && name != "W_skip")
      throw DataError(cat(weights_path, ": unexpected tensor ", printable(name),
                          " (sparsify writes encoder.weight, encoder.bias, W_dec, b_dec and W_skip)"));
  const SparsifyTensors tensors(file);
  const ArchUnit& unit = arch_unit("topk");
  out.params = unit.import_saelens(tensors, out.cfg, weights_path);
  if (out.cfg.has("d_in") && out.cfg.at("d_in").as_int() != out.params.d_in())
    throw DataError(cat(cfg_path, ": d_in ", out.cfg.at("d_in").as_int(), " but encoder.weight has d_in ",
                        out.params.d_in()));
  out.cfg["d_in"] = out.params.d_in();
  out.cfg["d_sae"] = out.params.d_sae();
  out.cfg["dtype"] = "float32";
  out.cfg["normalize_activations"] = "none";
  out.cfg["apply_b_dec_to_input"] = false;  // folded into b_enc by the import
  // sparsify names each folder after its hookpoint: a block (layers.N, h.N) is read at its output.
  Json metadata = Json::object();
  const std::optional<ModulePath> module = parse_module_path(named.filename().string());
  if (!transcode && module && module->rest.empty())
    metadata["hook_name"] = cat("blocks.", module->layer, ".hook_resid_post");
  out.cfg["metadata"] = metadata;
  out.cfg["sparsify"] = given;
  out.params = out.params.to(device);
  return out;
}

}  // namespace sae
