// Checkpoint save/load in SAELens layout with atomic directory replacement (see checkpoint.h).
#include "sae/train/checkpoint.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "io/atomic_file.h"
#include "sae/train/arch_checkpoint.h"
#include "tensor/ops.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;

namespace sae {

namespace {
constexpr const char* kWeightsFile = "sae_weights.safetensors";
constexpr const char* kConfigFile = "cfg.json";
constexpr const char* kStateFile = "training_state.safetensors";
constexpr const char* kStateFormat = "sae-cpp-training-state";

Tensor int_vector_as_f64(const std::vector<int64_t>& v) {
  std::vector<double> d(v.begin(), v.end());
  return Tensor::from_vector(d, Shape{static_cast<int64_t>(v.size())}, DType::F64);
}
}  // namespace

Json saelens_config(const SaeParams& params, const Json& extra) {
  Json cfg = Json::object();
  cfg["architecture"] = "standard";
  cfg["d_in"] = params.d_in();
  cfg["d_sae"] = params.d_sae();
  cfg["dtype"] = "float32";
  cfg["device"] = "cpu";
  cfg["apply_b_dec_to_input"] = false;
  cfg["normalize_activations"] = "none";
  cfg["reshape_activations"] = "none";
  Json metadata = Json::object();
  metadata["sae_lens_version"] = "6.0.0";
  metadata["sae_lens_training_version"] = "6.0.0";
  cfg["metadata"] = metadata;
  cfg["sae_cpp"] = extra;
  set_architecture_keys(cfg, params);
  return cfg;
}

void save_checkpoint(const std::string& dir, const SaeParams& params, const Json& extra, const TrainingState* state) {
  const fs::path target(dir);
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const fs::path temp = parent / (target.filename().string() + ".tmp-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::create_directories(parent, ec);
  fs::remove_all(temp, ec);
  if (!fs::create_directories(temp, ec) && ec)
    throw DataError(cat("checkpoint: cannot create ", temp.string(), ": ", ec.message()));

  write_safetensors((temp / kWeightsFile).string(), saelens_weights(params));
  write_file_atomic((temp / kConfigFile).string(), saelens_config(params, extra).dump(2) + "\n");
  if (state) {
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const auto& [name, m] : state->adam.m.present()) tensors.push_back({std::string("adam_m.") + name, *m});
    for (const auto& [name, v] : state->adam.v.present()) tensors.push_back({std::string("adam_v.") + name, *v});
    tensors.push_back({"last_fired", int_vector_as_f64(state->last_fired)});
    Json info = Json::object();
    add_training_state_extras(tensors, info, params);
    info["format"] = kStateFormat;
    info["version"] = 1;
    info["step"] = state->step;
    info["tokens"] = state->tokens;
    info["adam_steps"] = state->adam.steps;
    info["dataset_scale"] = state->dataset_scale;
    info["batcher"] = state->batcher;
    write_safetensors((temp / kStateFile).string(), tensors, {{"training_state", info.dump()}});
  }
  sync_directory(temp.string());
  // Swap into place: an existing directory is moved aside first and removed after.
  const fs::path old = parent / (target.filename().string() + ".old-" + std::to_string(::getpid()));
  const bool had_old = fs::exists(target);
  if (had_old) {
    fs::rename(target, old, ec);
    if (ec) throw DataError(cat("checkpoint: cannot replace ", target.string(), ": ", ec.message()));
  }
  fs::rename(temp, target, ec);
  if (ec) throw DataError(cat("checkpoint: cannot move ", temp.string(), " to ", target.string(), ": ", ec.message()));
  sync_directory(parent.string());
  if (had_old) fs::remove_all(old, ec);
}

Checkpoint load_checkpoint(const std::string& dir, Device device) {
  const fs::path root(dir);
  if (!fs::is_directory(root)) throw DataError(cat(dir, ": not a checkpoint directory"));
  const fs::path cfg_path = root / kConfigFile, weights_path = root / kWeightsFile;
  if (!fs::exists(cfg_path)) throw DataError(cat(dir, ": missing ", kConfigFile));
  if (!fs::exists(weights_path)) throw DataError(cat(dir, ": missing ", kWeightsFile));
  Checkpoint out;
  out.cfg = read_json_file(cfg_path.string());
  if (!out.cfg.is_object()) throw DataError(cat(cfg_path.string(), ": expected a JSON object"));
  SafetensorsFile weights = SafetensorsFile::open(weights_path.string());
  out.params = saelens_params(weights, out.cfg, weights_path.string());
  if (out.cfg.has("d_in") && out.cfg.at("d_in").as_int() != out.params.d_in())
    throw DataError(cat(dir, ": cfg.json d_in ", out.cfg.at("d_in").as_int(), " but W_enc has d_in ", out.params.d_in()));
  if (out.cfg.has("d_sae") && out.cfg.at("d_sae").as_int() != out.params.d_sae())
    throw DataError(cat(dir, ": cfg.json d_sae ", out.cfg.at("d_sae").as_int(), " but W_enc has d_sae ",
                        out.params.d_sae()));
  out.params = out.params.to(device);

  const fs::path state_path = root / kStateFile;
  if (fs::exists(state_path)) {
    SafetensorsFile file = SafetensorsFile::open(state_path.string());
    auto meta = file.metadata().find("training_state");
    if (meta == file.metadata().end()) throw DataError(cat(state_path.string(), ": no training_state metadata"));
    Json info = Json::parse(meta->second);
    if (info.at("format").as_string() != kStateFormat || info.at("version").as_int() != 1)
      throw DataError(cat(state_path.string(), ": unknown training state format"));
    TrainingState st;
    st.step = info.at("step").as_int();
    st.tokens = info.at("tokens").as_int();
    st.adam.steps = info.at("adam_steps").as_int();
    st.dataset_scale = info.at("dataset_scale").as_number();
    st.batcher = info.at("batcher");
    st.adam.m = st.adam.v = out.params;  // the same tensors present, each replaced below
    for (int i = 0; i < 8; ++i) {
      const Tensor& param = *out.params.slots()[i];
      if (!param.defined()) continue;
      const std::string name = SaeParams::kSlotNames[i];
      Tensor m = file.read_f32("adam_m." + name), v = file.read_f32("adam_v." + name);
      if (m.shape() != param.shape() || v.shape() != param.shape())
        throw DataError(cat(state_path.string(), ": Adam moments of ", name, " have the wrong shape"));
      *st.adam.m.slots()[i] = m.to(device);
      *st.adam.v.slots()[i] = v.to(device);
    }
    read_training_state_extras(file, info, out.params);
    const SafetensorsEntry& fired = file.entry("last_fired");  // F64: token counts, exact below 2^53
    if (fired.dtype != "F64") throw DataError(cat(state_path.string(), ": last_fired should be F64, got ", fired.dtype));
    std::vector<double> clocks(fired.numel());
    std::memcpy(clocks.data(), fired.data, fired.bytes);
    st.last_fired.assign(clocks.begin(), clocks.end());
    if (static_cast<int64_t>(st.last_fired.size()) != out.params.d_sae())
      throw DataError(cat(state_path.string(), ": last_fired has ", st.last_fired.size(), " entries"));
    out.state = std::move(st);
  }
  return out;
}

std::string find_latest_checkpoint(const std::string& dir) {
  const fs::path root(dir);
  if (fs::exists(root / kStateFile)) return root.string();
  if (!fs::is_directory(root)) throw DataError(cat("--resume ", dir, ": no such run or checkpoint directory"));
  std::string best;
  int64_t best_step = -1;
  auto consider = [&](const fs::path& candidate) {
    if (!fs::exists(candidate / kStateFile) || !fs::exists(candidate / kWeightsFile)) return;
    try {
      SafetensorsFile file = SafetensorsFile::open((candidate / kStateFile).string());
      auto meta = file.metadata().find("training_state");
      if (meta == file.metadata().end()) return;
      const int64_t step = Json::parse(meta->second).at("step").as_int();
      if (step > best_step) {
        best_step = step;
        best = candidate.string();
      }
    } catch (const Error&) {
      // an unreadable candidate is skipped; an older good one may remain
    }
  };
  consider(root / "sae");
  if (fs::is_directory(root / "checkpoints"))
    for (const auto& entry : fs::directory_iterator(root / "checkpoints"))
      if (entry.is_directory() && entry.path().filename().string().rfind("step_", 0) == 0 &&
          entry.path().filename().string().find(".tmp") == std::string::npos)
        consider(entry.path());
  if (best.empty()) throw DataError(cat("--resume ", dir, ": no complete checkpoint found"));
  return best;
}

}  // namespace sae
