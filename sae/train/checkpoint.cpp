// Checkpoint save/load in SAELens layout with crash-proof directory replacement, and the recovery
// and sweeping of what an interrupted save leaves (see checkpoint.h).
#include "sae/train/checkpoint.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>

#include "io/atomic_file.h"
#include "io/file_fingerprint.h"
#include "io/mapped_file.h"
#include "io/npz.h"
#include "io/safetensors.h"
#include "lm/model_loader.h"
#include "sae/arch/registry.h"
#include "sae/train/sharded_checkpoint.h"
#include "sae/train/dictionary_learning_file.h"
#include "sae/train/interrupt.h"
#include "sae/train/openai_sae_file.h"
#include "sae/train/sparsify_folder.h"
#include "tensor/ops.h"

namespace fs = std::filesystem;

namespace sae {

namespace {
constexpr const char* kWeightsFile = "sae_weights.safetensors";
constexpr const char* kConfigFile = "cfg.json";
constexpr const char* kStateFile = "training_state.safetensors";
constexpr const char* kStateFormat = "sae-cpp-training-state";
constexpr const char* kNpzFile = "params.npz";  // Gemma Scope's release format
constexpr const char* kTorchFile = "ae.pt";       // dictionary_learning's
constexpr double kMaxExactInt = 9007199254740992.0;  // 2^53

Tensor int_vector_as_f64(const std::vector<int64_t>& v) {
  std::vector<double> d(v.begin(), v.end());
  return Tensor::from_vector(d, Shape{static_cast<int64_t>(v.size())}, DType::F64);
}

// Test hook: SAE_TEST_NO_RENAME_EXCHANGE=1 takes the two-rename path that file systems without
// RENAME_EXCHANGE get.

// Puts the complete directory `temp` at `target`. With an existing target the two are exchanged
// in one atomic step (renameat2 RENAME_EXCHANGE), so a complete target exists at every moment;
// the old one (now at `temp`) is removed after. Where the file system cannot exchange, the old
// target is moved aside to `old` first: a crash between the two renames leaves no target but two
// complete copies, which recover_interrupted_saves() puts back.
void swap_into_place(const fs::path& temp, const fs::path& target, const fs::path& old) {
  std::error_code ec;
  if (!fs::exists(target)) {
    fs::rename(temp, target, ec);
    if (ec) throw DataError(cat("checkpoint: cannot move ", temp.string(), " to ", target.string(), ": ", ec.message()));
    return;
  }
  const bool exchange_allowed = std::getenv("SAE_TEST_NO_RENAME_EXCHANGE") == nullptr;
  if (exchange_allowed && ::renameat2(AT_FDCWD, temp.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) == 0) {
    test_kill_point("after-exchange");
    fs::remove_all(temp, ec);
    return;
  }
  fs::rename(target, old, ec);
  if (ec) throw DataError(cat("checkpoint: cannot move ", target.string(), " aside: ", ec.message()));
  test_kill_point("between-renames");
  fs::rename(temp, target, ec);
  if (ec) throw DataError(cat("checkpoint: cannot move ", temp.string(), " to ", target.string(), ": ", ec.message()));
  fs::remove_all(old, ec);
}

// The step recorded in DIR/training_state.safetensors, or -1 when DIR is not a complete,
// resumable checkpoint (any file missing or unreadable); `why` then says what is wrong.
int64_t complete_checkpoint_step(const fs::path& dir, std::string* why = nullptr) {
  auto incomplete = [&](const std::string& reason) {
    if (why) *why = reason;
    return int64_t{-1};
  };
  for (const char* file : {kStateFile, kWeightsFile, kConfigFile})
    if (!fs::exists(dir / file)) return incomplete(cat(file, " is missing"));
  try {
    SafetensorsFile file = SafetensorsFile::open((dir / kStateFile).string());
    auto meta = file.metadata().find("training_state");
    if (meta == file.metadata().end()) return incomplete(cat(kStateFile, " has no training_state metadata"));
    SafetensorsFile::open((dir / kWeightsFile).string());
    read_json_file((dir / kConfigFile).string());
    const Json info = Json::parse(meta->second);
    if (!shard_files_complete(dir.string(), info))  // a distributed run's optimizer shards
      return incomplete("a shard's optimizer file is missing or unreadable");
    return info.at("step").as_int();
  } catch (const Error& e) {
    return incomplete(e.what());
  }
}

// "sae.tmp-123" -> "sae"; "" when the name is not one a save leaves behind.
std::string interrupted_save_target(const std::string& name) {
  for (const char* marker : {".tmp-", ".old-"}) {
    const size_t at = name.find(marker);
    if (at != std::string::npos && at > 0) return name.substr(0, at);
  }
  return "";
}

// The folders where checkpoints live in a run: the run itself (sae/) and checkpoints/.
std::vector<fs::path> checkpoint_folders(const fs::path& run_dir) {
  std::vector<fs::path> folders = {run_dir};
  if (fs::is_directory(run_dir / "checkpoints")) folders.push_back(run_dir / "checkpoints");
  return folders;
}

void require(bool ok, const std::string& path, const std::string& what) {
  if (!ok) throw DataError(cat(path, ": ", what));
}

}  // namespace

namespace {
// The scales a folder of `extra` (sae_cpp) folds into its weights, in and out per block; none
// unless dataset-normalised.
std::optional<std::pair<std::vector<double>, std::vector<double>>> folded_scales(const SaeParams& p, const Json& extra) {
  if (!extra.is_object() || !extra.has("normalization") || extra.at("normalization") != Json("dataset") ||
      !extra.has("dataset_scale"))
    return std::nullopt;
  const std::vector<double> scales = DatasetScales::from_json(extra.at("dataset_scale")).per_block;
  if (p.transcoder) {
    if (scales.size() != 2) throw Error(cat("checkpoint: a transcoder's dataset_scale has ", scales.size(), " entries"));
    return std::make_pair(std::vector<double>{scales[0]}, std::vector<double>{scales[1]});
  }
  if (static_cast<int64_t>(scales.size()) != p.sources)
    throw Error(cat("checkpoint: dataset_scale has ", scales.size(), " entries for ", p.sources, " sources"));
  return std::make_pair(scales, scales);
}
}  // namespace

std::vector<std::pair<std::string, Tensor>> folder_weights(const SaeParams& params, const Json& extra) {
  const auto scales = folded_scales(params, extra);
  const ArchUnit& unit = unit_of(params);
  return unit.saelens_weights(scales ? fold_input_scales(params, scales->first, scales->second, false) : params);
}

namespace {
// A run trained with --apply-b-dec-to-input (run_description says so).
bool centred_run(const Json& extra) {
  return extra.is_object() && extra.has("apply_b_dec_to_input") && extra.at("apply_b_dec_to_input") == Json(true);
}
}  // namespace

void add_exact_params(const SaeParams& params, const Json& extra, std::vector<std::pair<std::string, Tensor>>& tensors) {
  const bool folded = folded_scales(params, extra).has_value(), centred = centred_run(extra);
  auto held = [&](const std::string& key) {  // a unit's save_state may keep one itself (log_threshold)
    return std::any_of(tensors.begin(), tensors.end(), [&](const auto& entry) { return entry.first == key; });
  };
  for (const auto& [name, t] : params.present())
    if (((folded && SaeParams::scale_dependent(name)) || (centred && t->ndim() == 1)) && !held("param." + name))
      tensors.push_back({"param." + name, t->to(Device::CPU).to(DType::F32)});
}

Json saelens_config(const SaeParams& params, const Json& extra) {
  const ArchUnit& unit = unit_of(params);
  Json cfg = Json::object();
  cfg["architecture"] = unit.folder_architecture(params);
  cfg["d_in"] = params.d_in();
  cfg["d_sae"] = params.d_sae();
  if (params.transcoder) cfg["d_out"] = params.d_out();
  cfg["dtype"] = "float32";
  cfg["device"] = "cpu";
  // Trained centred, the folder says so and its weights are as trained (SAELens centres as it loads
  // them; so does load_checkpoint, by folding b_dec W_enc into the encoder's biases).
  cfg["apply_b_dec_to_input"] = centred_run(extra);
  // SAELens's name for the run's normalisation where it has one that it applies at inference.
  const std::string trained =
      extra.is_object() && extra.has("normalization") && extra.at("normalization").is_string()
          ? extra.at("normalization").as_string() : "none";
  cfg["normalize_activations"] = trained == "story" ? "per_story"
                                 : trained == "layer_norm" || trained == "constant_norm_rescale" ? trained : "none";
  cfg["reshape_activations"] = "none";
  Json metadata = Json::object();
  metadata["sae_lens_version"] = "6.0.0";
  metadata["sae_lens_training_version"] = "6.0.0";
  // A run from text says where its activations came from as SAELens does (model_name, hook_name,
  // hook_head_index, context_size, prepend_bos): the data description carries them.
  if (extra.is_object() && extra.has("data") && extra.at("data").is_object() &&
      extra.at("data").has("saelens_metadata") && extra.at("data").at("saelens_metadata").is_object())
    for (const auto& [key, value] : extra.at("data").at("saelens_metadata").items()) metadata[key] = value;
  cfg["metadata"] = metadata;
  // An attn.hook_z SAE reads the heads flattened, which SAELens says so.
  if (metadata.has("hook_name") && metadata.at("hook_name").is_string() &&
      metadata.at("hook_name").as_string().find("hook_z") != std::string::npos)
    cfg["reshape_activations"] = "hook_z";
  cfg["sae_cpp"] = extra;
  Json& ours = cfg["sae_cpp"];
  ours["training_architecture"] = unit.name();
  if (params.sources > 1) ours["sources"] = params.sources;
  if (folded_scales(params, extra)) ours["dataset_scale_folded"] = true;
  unit.set_cfg_keys(params, cfg, ours);
  return cfg;
}

void check_adam_moment(const Tensor& moment, bool second, const std::string& where, const std::string& name) {
  const float* p = moment.data<float>();
  int64_t k = -1;  // the first element that is not finite (or, for v, negative)
  for (int64_t i = 0; i < moment.numel() && k < 0; ++i)
    if (!std::isfinite(p[i]) || (second && p[i] < 0)) k = i;
  if (k >= 0)
    throw DataError(cat(where, ": Adam's ", second ? "adam_v." : "adam_m.", name, " holds ", p[k], " at element ", k,
                        second ? " (must be finite and >= 0)" : " (must be finite)"));
}

namespace {
DataError non_finite_weight(const std::string& dir, const std::string& name, float value, int64_t k) {
  return DataError(cat(dir, ": not saved: the SAE's ", name, " holds ", value, " at element ", k,
                       " (training made a weight that is not finite; the checkpoints saved before are kept)"));
}
}  // namespace

void require_finite_weights(std::vector<std::pair<std::string, Tensor>>& weights, const std::string& dir) {
  for (auto& [name, tensor] : weights) {
    tensor = tensor.to(Device::CPU);
    const Tensor values = tensor.dtype() == DType::F32 ? tensor : tensor.to(DType::F32);
    const float* v = values.data<float>();
    const int64_t k = first_non_finite(v, values.numel());
    if (k >= 0) throw non_finite_weight(dir, name, v[k], k);
  }
}

FolderWeightsPlan plan_folder_weights(const SaeParams& params, const Json& extra) {
  const auto scales = folded_scales(params, extra);
  const ArchUnit& unit = unit_of(params);
  FolderWeightsPlan plan;
  if (!scales) {
    plan.tensors = unit.saelens_weights(params);
    return plan;
  }
  if (params.W_enc.device() != Device::CPU) {  // the export copies it to the host anyway: the whole fold
    plan.tensors = folder_weights(params, extra);
    return plan;
  }
  const InputScaleFold fold = input_scale_fold(params, scales->first, scales->second, false);
  SaeParams partly_folded = params;  // b_dec and W_skip folded now (small), W_enc and W_dec while written
  partly_folded.b_dec = scaled_host(params.b_dec, {}, fold.out_columns);
  if (params.W_skip.defined()) partly_folded.W_skip = scaled_host(params.W_skip, fold.in_rows, fold.out_columns);
  plan.tensors = unit.saelens_weights(partly_folded);
  bool all_f32 = true;
  for (const auto& [name, t] : plan.tensors) {
    all_f32 = all_f32 && t.dtype() == DType::F32;
    const Tensor* param = name == "W_enc" ? &params.W_enc : name == "W_dec" ? &params.W_dec : nullptr;
    if (param != nullptr && param->device() == Device::CPU && t.device() == Device::CPU && t.ndim() == 2 &&
        t.shape() == param->shape() && t.raw() == param->raw())
      plan.scaled_while_written[name] = name == "W_enc" ? std::make_pair(fold.in_rows, std::vector<double>{})
                                                        : std::make_pair(std::vector<double>{}, fold.out_columns);
  }
  if (plan.scaled_while_written.size() != 2 || !all_f32) {  // the unit exports them otherwise: the whole fold
    plan.scaled_while_written.clear();
    plan.tensors.clear();  // before the fold's copies are made
    plan.tensors = folder_weights(params, extra);
  }
  return plan;
}

namespace {
// The weights file of a folder as plan_folder_weights plans it: byte for byte the file
// write_safetensors(path, folder_weights(params, extra)) writes after require_finite_weights. The
// tensors scaled while written are checked as they are, after the others (so with several tensors
// not finite, the one named may differ from the whole fold's).
void write_folder_weights(const std::string& path, const SaeParams& params, const Json& extra, const std::string& dir) {
  FolderWeightsPlan plan = plan_folder_weights(params, extra);
  const auto& scaled = plan.scaled_while_written;
  if (scaled.empty()) {
    require_finite_weights(plan.tensors, dir);
    write_safetensors(path, plan.tensors);
    return;
  }
  // Here every tensor is a host one (plan_folder_weights scales only a host SAE's while written).
  std::vector<SafetensorsSpec> specs;
  std::vector<std::pair<std::string, Tensor>> unscaled;
  for (const auto& [name, t] : plan.tensors) {
    SafetensorsSpec spec{name, "F32", {}};
    for (int i = 0; i < t.ndim(); ++i) spec.shape.push_back(t.size(i));
    specs.push_back(spec);
    if (!scaled.count(name)) unscaled.push_back({name, t});
  }
  require_finite_weights(unscaled, dir);
  const std::map<std::string, Tensor> by_name(plan.tensors.begin(), plan.tensors.end());
  write_safetensors_streamed(path, specs, {}, [&](const std::string& name, const SafetensorsSink& write) {
    const Tensor& t = by_name.at(name);
    const auto factors = scaled.find(name);
    if (factors == scaled.end()) {
      write(t.raw(), t.nbytes());
      return;
    }
    const auto& [row, col] = factors->second;
    const int64_t rows = t.size(0), cols = t.size(1);
    const int64_t block = std::max<int64_t>(1, (int64_t(16) << 20) / std::max<int64_t>(1, cols * 4));
    std::vector<float> out(static_cast<size_t>(std::min(block, rows) * cols));
    const float* in = t.data<float>();
    for (int64_t r0 = 0; r0 < rows; r0 += block) {
      const int64_t n = std::min(block, rows - r0);
      for (int64_t r = 0; r < n; ++r)
        for (int64_t c = 0; c < cols; ++c) {
          const int64_t at = (r0 + r) * cols + c;
          const float v = static_cast<float>(static_cast<double>(in[at]) * scale_factor(row, col, r0 + r, c));
          if (!std::isfinite(v)) throw non_finite_weight(dir, name, v, at);
          out[static_cast<size_t>(r * cols + c)] = v;
        }
      write(out.data(), static_cast<size_t>(n * cols) * sizeof(float));
    }
  });
}
}  // namespace

void test_kill_point(const char* point) {
  const char* at = std::getenv("SAE_TEST_KILL_AT");
  if (at != nullptr && std::strcmp(at, point) == 0) ::raise(SIGKILL);
}

std::string checkpoint_temp_folder(const std::string& dir) {
  const fs::path target(dir);
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  return (parent / (target.filename().string() + ".tmp-" + std::to_string(::getpid()))).string();
}

void install_checkpoint_folder(const std::string& temp, const std::string& dir) {
  const fs::path target(dir);
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const fs::path old = parent / (target.filename().string() + ".old-" + std::to_string(::getpid()));
  sync_directory(temp);
  swap_into_place(temp, target, old);
  sync_directory(parent.string());
}

Json training_state_info(const SaeParams& params, const TrainingState& state,
                         std::vector<std::pair<std::string, Tensor>>& tensors) {
  const ArchUnit& unit = unit_of(params);
  for (const auto& [name, m] : state.adam.m.present()) tensors.push_back({std::string("adam_m.") + name, *m});
  for (const auto& [name, v] : state.adam.v.present()) tensors.push_back({std::string("adam_v.") + name, *v});
  tensors.push_back({"last_fired", int_vector_as_f64(state.last_fired)});
  Json info = Json::object();
  info["architecture"] = unit.name();
  unit.save_state(params, tensors, info);
  info["format"] = kStateFormat;
  info["version"] = 1;
  info["step"] = state.step;
  info["tokens"] = state.tokens;
  info["adam_steps"] = state.adam.steps;
  info["dataset_scale"] = state.dataset_scale.to_json();
  info["batcher"] = state.batcher;
  if (!state.l0_controller.is_null()) info["l0_controller"] = state.l0_controller;
  return info;
}

void save_checkpoint(const std::string& dir, const SaeParams& params, const Json& extra, const TrainingState* state,
                     const std::function<void(const std::string& folder)>& write_more) {
  const fs::path target(dir);
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const fs::path temp = checkpoint_temp_folder(dir);
  std::error_code ec;
  fs::create_directories(parent, ec);
  fs::remove_all(temp, ec);
  if (!fs::create_directories(temp, ec) && ec)
    throw DataError(cat("checkpoint: cannot create ", temp.string(), ": ", ec.message()));
  try {
    // A weight that is not finite is never saved (a run whose loss stayed finite, as JumpReLU's
    // with NaN thresholds that switch their features off, is caught here): the checkpoints saved
    // before are kept.
    write_folder_weights((temp / kWeightsFile).string(), params, extra, dir);
    test_signal_point("mid-save");
    write_file_atomic((temp / kConfigFile).string(), saelens_config(params, extra).dump(2) + "\n");
    // The training state is written last: a folder holding it is complete (complete_checkpoint_step),
    // so a crash while the folder is built never lets recover_interrupted_saves put a part of it in place.
    if (write_more) write_more(temp.string());
    if (state) {
      std::vector<std::pair<std::string, Tensor>> tensors;
      const Json info = training_state_info(params, *state, tensors);
      add_exact_params(params, extra, tensors);
      write_safetensors((temp / kStateFile).string(), tensors, {{"training_state", info.dump()}});
    }
    install_checkpoint_folder(temp.string(), dir);  // sync, swap into place, sync the parent
  } catch (...) {
    fs::remove_all(temp, ec);  // a failed save (disk full, ...) leaves nothing of its own behind
    throw;
  }
}

std::string gemma_scope_npz(const std::string& path) {
  const fs::path p(path);
  std::error_code ec;
  if (fs::is_directory(p, ec)) {
    if (!fs::exists(p / kConfigFile, ec) && fs::exists(p / kNpzFile, ec)) return (p / kNpzFile).string();
    return "";
  }
  if (!fs::is_regular_file(p, ec) || is_torch_file(path)) return "";
  if (p.extension() == ".npz") return path;
  // Any other name (params.NPZ, a renamed download): a ZIP archive by its first bytes, as
  // activation files are recognised by theirs.
  return read_file_head(path, 4) == std::string("PK\x03\x04", 4) ? path : "";
}

std::string single_file_sae_name(const std::string& path) {
  return is_torch_file(single_file_sae(path)) ? "a torch.save .pt (dictionary_learning's ae.pt or OpenAI's)"
                                              : "a Gemma Scope params.npz";
}

std::string single_file_sae(const std::string& path) {
  const fs::path p(path);
  std::error_code ec;
  if (fs::is_directory(p, ec) && !fs::exists(p / kConfigFile, ec) && fs::exists(p / kTorchFile, ec))
    return (p / kTorchFile).string();
  if (fs::is_regular_file(p, ec) && is_torch_file(path)) return path;
  return gemma_scope_npz(path);
}

namespace {
// A Gemma Scope params.npz as a JumpReLU SAE: W_enc [D, F], W_dec [F, D], b_enc [F], b_dec [D],
// threshold [F] (import_saelens checks the names, shapes and values), with a cfg.json made for it.
Checkpoint load_npz(const std::string& path, Device device) {
  const NpzFile file = NpzFile::open(path);
  // Recognised by its ZIP signature alone, a torch.save file or another archive holds none of the
  // arrays: named as what it is not, rather than by the first array missing.
  bool any = false;
  for (const char* name : {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}) any = any || file.has(name);
  if (!any)
    throw DataError(cat(path, ": a ZIP archive without W_enc, W_dec, b_enc, b_dec or threshold arrays: not a Gemma "
                              "Scope params.npz (a torch.save file is a ZIP archive too: dictionary_learning's and "
                              "OpenAI's are read under a .pt name)"));
  Checkpoint out;
  out.npz = path;
  out.cfg = Json::object();
  out.cfg["architecture"] = "jumprelu";
  out.cfg["apply_b_dec_to_input"] = false;  // as SAELens's Gemma Scope loader says
  const ArchUnit& unit = arch_unit("jumprelu");
  out.params = unit.import_saelens(file, out.cfg, path);
  if (out.params.d_in() < 1 || out.params.d_sae() < 1)
    throw DataError(cat(path, ": an SAE needs d_in >= 1 and d_sae >= 1, W_enc is [", out.params.d_in(), ", ",
                        out.params.d_sae(), "]"));
  out.cfg["d_in"] = out.params.d_in();
  out.cfg["d_sae"] = out.params.d_sae();
  out.cfg["dtype"] = "float32";
  out.cfg["normalize_activations"] = "none";
  out.cfg["reshape_activations"] = "none";
  // The windows Gemma Scope trained on, as SAELens's Gemma Scope loader states them: 1024 tokens
  // after a BOS (the programs' defaults; a model with fewer positions clamps them).
  Json metadata = Json::object();
  metadata["context_size"] = 1024;
  metadata["prepend_bos"] = true;
  out.cfg["metadata"] = metadata;
  out.params = out.params.to(device);
  return out;
}
}  // namespace

namespace {
// normalize_activations: none; expected_average_only_in, whose scale SAELens folds into a final save
// (load_checkpoint folds a training checkpoint's or refuses it); the per-token layer_norm and
// constant_norm_rescale, which SAELens applies to every input at inference and so do we
// (trained_normalization); and our per_story beside sae_cpp's story normalisation. Whitening, which
// only a training checkpoint keeps apart from its weights, is refused.
void check_input_normalization(const Json& cfg) {
  if (!cfg.has("normalize_activations")) return;
  const std::string kind = cfg.at("normalize_activations").as_string();
  const bool story = cfg.has("sae_cpp") && cfg.at("sae_cpp").has("normalization") &&
                     cfg.at("sae_cpp").at("normalization") == Json("story");
  if (kind == "none" || kind == "expected_average_only_in") return;
  if (kind == "covariance_whitening")
    throw DataError("normalize_activations \"covariance_whitening\" is a SAELens training checkpoint's, whose "
                    "whitening is kept apart from the weights (its final save folds it in); not supported");
  if (kind == "layer_norm" || kind == "constant_norm_rescale") {
    if (cfg.has("sae_cpp") && cfg.at("sae_cpp").has("normalization") && cfg.at("sae_cpp").at("normalization") != Json(kind))
      throw DataError(cat("normalize_activations \"", kind, "\" and sae_cpp.normalization ",
                          printable(cfg.at("sae_cpp").at("normalization").dump()), " disagree (one normalisation)"));
    return;
  }
  if (kind == "per_story" && story) return;
  if (kind == "per_story")
    throw DataError("normalize_activations \"per_story\" goes with sae_cpp.normalization \"story\" (ours, per-story "
                    "normalisation), which this cfg.json does not say");
  throw DataError(cat("normalize_activations \"", printable(kind), "\" is not supported (we read none, ",
                      "expected_average_only_in, layer_norm, constant_norm_rescale, and our ",
                      "per_story)"));
}
}  // namespace

namespace {
// Whether a SAELens cfg.json predates 6 (no sae_lens_version at the top or in metadata, or below 6).
bool saelens_before_6(const Json& cfg) {
  const bool had_metadata = cfg.has("metadata") && cfg.at("metadata").is_object();
  const Json* version = cfg.has("sae_lens_version") ? &cfg.at("sae_lens_version")
                        : had_metadata && cfg.at("metadata").has("sae_lens_version") ? &cfg.at("metadata").at("sae_lens_version")
                                                                                      : nullptr;
  return version == nullptr || !version->is_string() || std::atoi(version->as_string().c_str()) < 6;
}

// SAELens before 6 said where the SAE reads with hook_point (and hook_point_head_index), and
// normalize_activations with a bool or null: read as SAELens's handle_pre_6_0_config reads them
// (false and null are "none", true "expected_average_only_in").
void read_pre_6_keys(Json& cfg) {
  for (const auto& [old_key, key] : {std::pair<const char*, const char*>{"hook_point", "hook_name"},
                                     {"hook_point_head_index", "hook_head_index"}})
    if (cfg.has(old_key) && !cfg.has(key)) cfg[key] = cfg.at(old_key);
  // Before 6 (no sae_lens_version, or below 6) the model's keys sat at the top level, where 6 reads
  // them from metadata: copied there (never over one metadata has), and a flat cfg.json without
  // prepend_bos says true, as SAELens's conversion defaults it (a run had gone without the BOS and
  // at the model's positions where SAELens reads prepend_bos true and the folder's context_size).
  const bool had_metadata = cfg.has("metadata") && cfg.at("metadata").is_object();
  if (!saelens_before_6(cfg)) return;
  Json metadata = had_metadata ? cfg.at("metadata") : Json::object();
  for (const char* key : {"model_name", "hook_name", "hook_head_index", "prepend_bos", "context_size", "dataset_path",
                          "hook_name_out", "hook_head_index_out", "model_class_name", "exclude_special_tokens"})
    if (cfg.has(key) && !metadata.has(key)) metadata[key] = cfg.at(key);
  if (!had_metadata && !metadata.has("prepend_bos")) metadata["prepend_bos"] = true;
  cfg["metadata"] = metadata;
  if (cfg.has("normalize_activations")) {
    const Json kind = cfg.at("normalize_activations");
    if (kind.is_null() || kind == Json(false)) cfg["normalize_activations"] = "none";
    if (kind == Json(true)) cfg["normalize_activations"] = "expected_average_only_in";
  }
}

// SAELens before 6 named TopK by activation_fn "topk" (or activation_fn_str) and its k in
// activation_fn_kwargs: made architecture topk with k, as SAELens's handle_pre_6_0_config does.
// Another activation than relu is refused.
void read_pre_6_activation(Json& cfg) {
  for (const char* key : {"activation_fn", "activation_fn_str"}) {
    if (!cfg.has(key) || cfg.at(key).is_null()) continue;
    const std::string fn = cfg.at(key).as_string();
    if (fn == "relu") continue;
    const std::string arch = cfg.has("architecture") ? cfg.at("architecture").as_string() : "standard";
    if (fn != "topk" || (arch != "standard" && arch != "topk"))  // 5.x's runner wrote topk with it
      throw DataError(cat(key, " \"", printable(fn), "\" with architecture \"", printable(arch),
                          "\" is not supported (SAELens before 6 said relu, or topk with activation_fn_kwargs.k)"));
    const Json& kwargs = cfg.has("activation_fn_kwargs") ? cfg.at("activation_fn_kwargs") : Json();
    if (!kwargs.is_object() || !kwargs.has("k")) throw DataError(cat(key, " \"topk\" needs activation_fn_kwargs.k"));
    cfg["architecture"] = "topk";
    cfg["k"] = kwargs.at("k");
  }
}
}  // namespace

Checkpoint load_checkpoint(const std::string& dir, Device device, bool with_state) {
  const fs::path root(dir);
  const std::string single = single_file_sae(dir);  // weights only: never a training state
  if (!single.empty() && is_torch_file(single)) {
    const TorchFile file = TorchFile::open(single);
    return is_openai_sae(file) ? load_openai_sae(file, device) : load_dictionary_learning(file, device);
  }
  if (!single.empty()) return load_npz(single, device);
  if (!fs::is_directory(root))
    throw DataError(cat(dir, ": not a checkpoint directory (an SAE is a folder with cfg.json and "
                             "sae_weights.safetensors, or sparsify's with cfg.json and sae.safetensors, or a Gemma "
                             "Scope params.npz, or a torch.save .pt: dictionary_learning's ae.pt, OpenAI's)"));
  const fs::path cfg_path = root / kConfigFile, weights_path = root / kWeightsFile;
  if (!fs::exists(cfg_path) && is_dictionary_learning_save_dir(dir)) throw DataError(dictionary_learning_save_dir_message(dir));
  if (!fs::exists(cfg_path))
    throw DataError(cat(dir, ": missing ", kConfigFile, " (an SAE folder holds cfg.json and sae_weights.safetensors, "
                        "sparsify's cfg.json and sae.safetensors, a Gemma Scope params.npz, or a torch.save .pt: "
                        "dictionary_learning's ae.pt, OpenAI's)"));
  if (is_sparsify_folder(dir)) return load_sparsify_folder(dir, device);  // weights only, as an npz
  if (!fs::exists(weights_path)) throw DataError(cat(dir, ": missing ", kWeightsFile));
  Checkpoint out;
  out.cfg = read_json_file(cfg_path.string());
  require(out.cfg.is_object(), cfg_path.string(), "expected a JSON object");
  // Every key the loader reads is type-checked first (the unit checks its own), so that an error
  // names this file.
  auto checked = [&](const std::function<void()>& check) {
    try {
      check();
    } catch (const DataError& e) {
      throw DataError(cat(cfg_path.string(), ": ", e.what()));
    }
  };
  checked([&] {
    for (const char* key : {"d_in", "d_sae"})
      if (out.cfg.has(key)) out.cfg.at(key).as_int();
    if (out.cfg.has("apply_b_dec_to_input")) out.cfg.at("apply_b_dec_to_input").as_bool();
    if (out.cfg.has("architecture")) out.cfg.at("architecture").as_string();
    if (out.cfg.has("sae_cpp")) {
      const Json& ours = out.cfg.at("sae_cpp");
      if (!ours.is_object()) throw DataError("sae_cpp must be an object");
      if (ours.has("training_architecture")) ours.at("training_architecture").as_string();
    }
  });
  checked([&] {
    read_pre_6_keys(out.cfg);
    check_input_normalization(out.cfg);
    read_pre_6_activation(out.cfg);
  });
  const ArchUnit& unit = unit_for_folder(out.cfg, cfg_path.string());
  checked([&] { unit.check_cfg(out.cfg); });
  SafetensorsFile weights = SafetensorsFile::open(weights_path.string());
  out.params = unit.import_saelens(weights, out.cfg, weights_path.string());
  if (out.params.d_in() < 1 || out.params.d_sae() < 1)
    throw DataError(cat(weights_path.string(), ": an SAE needs d_in >= 1 and d_sae >= 1, W_enc is [", out.params.d_in(),
                        ", ", out.params.d_sae(), "]"));
  if (out.cfg.has("d_in") && out.cfg.at("d_in").as_int() != out.params.d_in())
    throw DataError(cat(cfg_path.string(), ": d_in ", out.cfg.at("d_in").as_int(), " but W_enc has d_in ", out.params.d_in()));
  if (out.cfg.has("d_sae") && out.cfg.at("d_sae").as_int() != out.params.d_sae())
    throw DataError(cat(cfg_path.string(), ": d_sae ", out.cfg.at("d_sae").as_int(), " but W_enc has d_sae ",
                        out.params.d_sae()));
  // A SAELens training checkpoint (not the final save, where the statistics are folded in and the
  // field says none) keeps its inputs' scale apart, in activation_scaler.json beside cfg.json: folded
  // here as SAELens folds it (W_enc times s, W_dec and b_dec over s), so the SAE reads raw activations.
  // Without that file a 6.x folder's factor is unknown: refused.
  if (out.cfg.has("normalize_activations")) {
    const std::string kind = out.cfg.at("normalize_activations").as_string();
    const fs::path scaler = root / "activation_scaler.json";
    if (kind == "expected_average_only_in" && fs::exists(scaler)) {
      const Json factor = read_json_file(scaler.string());
      const Json* s = factor.is_object() && factor.has("scaling_factor") ? &factor.at("scaling_factor") : nullptr;
      if (!s || !(s->is_null() || (s->is_number() && std::isfinite(s->as_number()) && s->as_number() > 0)))
        throw DataError(cat(scaler.string(), ": expected {\"scaling_factor\": a positive number or null}"));
      if (s->is_number()) {  // null: never estimated, the inputs were not scaled
        const std::vector<double> by{s->as_number()};
        out.params = fold_input_scales(std::move(out.params), by, by, false);
      }
      out.cfg["normalize_activations"] = "none";
    } else if (kind == "expected_average_only_in" && !saelens_before_6(out.cfg)) {
      throw DataError(cat(cfg_path.string(), ": normalize_activations \"expected_average_only_in\" without the "
                          "activation_scaler.json of a SAELens training checkpoint beside it: the inputs' scale is "
                          "unknown (SAELens folds it into the final save, which says none)"));
    }
  }
  // Ours of a dataset-normalised run holds the SAE of raw activations (folder_weights): back to the
  // trained parameters, which read inputs times the scales (exactly, from the state, below).
  const Json ours = out.cfg.has("sae_cpp") ? out.cfg.at("sae_cpp") : Json::object();
  const bool folded = ours.has("dataset_scale_folded") && ours.at("dataset_scale_folded") == Json(true);
  const bool centred = centred_run(ours);
  if (folded) {
    std::optional<std::pair<std::vector<double>, std::vector<double>>> scales;
    checked([&] { scales = folded_scales(out.params, ours); });
    if (!scales) throw DataError(cat(cfg_path.string(), ": dataset_scale_folded without a dataset normalisation"));
    out.params = fold_input_scales(std::move(out.params), scales->first, scales->second, true);  // in place
  }

  const fs::path state_path = root / kStateFile;
  if (with_state && fs::exists(state_path)) {
    const std::string where = state_path.string();
    SafetensorsFile file = SafetensorsFile::open(where);
    auto meta = file.metadata().find("training_state");
    require(meta != file.metadata().end(), where, "no training_state metadata");
    TrainingState st;
    Json state_info;
    try {
      Json info = Json::parse(meta->second);
      if (info.at("format").as_string() != kStateFormat || info.at("version").as_int() != 1)
        throw DataError("unknown training state format");
      st.step = info.at("step").as_int();
      st.tokens = info.at("tokens").as_int();
      st.adam.steps = info.at("adam_steps").as_int();
      st.dataset_scale = DatasetScales::from_json(info.at("dataset_scale"));
      st.batcher = info.at("batcher");
      if (!st.batcher.is_object()) throw DataError("batcher must be an object");
      if (info.has("l0_controller")) st.l0_controller = info.at("l0_controller");
      state_info = info;
    } catch (const DataError& e) {
      throw DataError(cat(where, ": training_state: ", e.what()));
    }
    require(st.step >= 0 && st.tokens >= 0 && st.adam.steps >= 0, where,
            cat("step, tokens and adam_steps must be >= 0, got ", st.step, ", ", st.tokens, ", ", st.adam.steps));
    const std::string state_arch = state_info.has("architecture") ? state_info.at("architecture").as_string() : "standard";
    require(state_arch == unit.name(), where,
            cat("training state of a ", printable(state_arch), " SAE beside a ", unit.name(), " model"));
    if (sharded_state(state_info)) {  // a distributed run's: the optimizer shards beside it
      load_sharded_state(dir, state_info, out.params, st, device, centred);
      out.state = std::move(st);
      out.params = out.params.to(device);
      return out;
    }
    unit.load_state(file, state_info, out.params);
    // A centred run's trained vectors, kept aside for a resume: the params stay the SAE of x, as the
    // import folded b_dec W_enc into its encoder's biases.
    for (const auto& [name, param] : out.params.present()) {
      if (!centred || param->ndim() != 1) continue;
      require(file.has("param." + name), where, cat("a centred (apply_b_dec_to_input) run's state must hold param.", name));
      const Tensor exact = file.read_f32("param." + name);
      require(exact.shape() == param->shape(), where, cat("param.", name, " has the wrong shape"));
      st.centred_params.push_back({name, exact});
    }
    for (const auto& [name, param] : out.params.present()) {  // a folded folder's trained tensors
      if (!folded || !SaeParams::scale_dependent(name)) continue;
      require(file.has("param." + name), where, cat("a folded folder's state must hold param.", name));
      const Tensor exact = file.read_f32("param." + name);
      require(exact.shape() == param->shape(), where, cat("param.", name, " has the wrong shape"));
      *param = exact;
    }
    st.adam.m = st.adam.v = out.params;  // the same tensors present, each replaced below
    auto params = out.params.present(), m_all = st.adam.m.present(), v_all = st.adam.v.present();
    for (size_t i = 0; i < params.size(); ++i) {
      const std::string& name = params[i].first;
      const Tensor& param = *params[i].second;
      Tensor m = file.read_f32("adam_m." + name), v = file.read_f32("adam_v." + name);
      require(m.shape() == param.shape() && v.shape() == param.shape(), where,
              cat("Adam moments of ", name, " have the wrong shape"));
      check_adam_moment(m, false, where, name);
      check_adam_moment(v, true, where, name);
      *m_all[i].second = m.to(device);
      *v_all[i].second = v.to(device);
    }
    // The dead-feature clocks: token counts, stored as F64 (exact below 2^53), each in [0, tokens].
    const SafetensorsEntry& fired = file.entry("last_fired");
    require(fired.dtype == "F64", where, cat("last_fired should be F64, got ", printable(fired.dtype)));
    require(fired.numel() == out.params.d_sae() && fired.shape.size() == 1, where,
            cat("last_fired has ", fired.numel(), " entries for ", out.params.d_sae(), " features"));
    st.last_fired.resize(static_cast<size_t>(fired.numel()));
    for (int64_t k = 0; k < fired.numel(); ++k) {
      double clock;
      std::memcpy(&clock, static_cast<const char*>(fired.data) + 8 * k, 8);
      require(clock >= 0 && clock <= double(st.tokens) && clock <= kMaxExactInt && clock == std::floor(clock), where,
              cat("last_fired[", k, "] is ", clock, ", expected a token count in [0, ", st.tokens, "]"));
      st.last_fired[k] = static_cast<int64_t>(clock);
    }
    out.state = std::move(st);
  }
  out.params = out.params.to(device);
  return out;
}

std::vector<std::pair<int64_t, std::string>> run_checkpoints(const std::string& run_dir) {
  const fs::path root(run_dir);
  std::vector<std::pair<int64_t, std::string>> found;
  auto consider = [&](const fs::path& candidate) {
    const int64_t step = complete_checkpoint_step(candidate);
    if (step >= 0) found.emplace_back(step, candidate.string());
  };
  consider(root / "sae");
  if (fs::is_directory(root / "checkpoints"))
    for (const auto& entry : fs::directory_iterator(root / "checkpoints")) {
      const std::string name = entry.path().filename().string();
      if (entry.is_directory() && name.rfind("step_", 0) == 0 && interrupted_save_target(name).empty())
        consider(entry.path());
    }
  // By step; sae/ (listed first) before a checkpoint of the same step.
  std::stable_sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return found;
}

std::optional<std::string> latest_checkpoint_in_run(const std::string& run_dir) {
  std::string best;
  int64_t best_step = -1;
  for (const auto& [step, path] : run_checkpoints(run_dir))
    if (step > best_step) best_step = step, best = path;
  // Saves put only complete folders under these names: one that is not complete was damaged after
  // it was saved. The run's newest is not silently replaced by an older one (or by a new start).
  const fs::path root(run_dir);
  std::vector<std::pair<fs::path, int64_t>> newer;  // sae/ (the final model) and step_N past the best
  if (fs::exists(root / "sae")) newer.emplace_back(root / "sae", std::numeric_limits<int64_t>::max());
  std::error_code ec;
  if (fs::is_directory(root / "checkpoints"))
    for (const auto& entry : fs::directory_iterator(root / "checkpoints", ec)) {
      const std::string name = entry.path().filename().string();
      if (!entry.is_directory() || name.rfind("step_", 0) != 0 || !interrupted_save_target(name).empty()) continue;
      char* end = nullptr;
      const long long step = std::strtoll(name.c_str() + 5, &end, 10);
      if (*end == '\0' && step > best_step) newer.emplace_back(entry.path(), step);
    }
  for (const auto& [path, step] : newer) {
    std::string why;
    if (complete_checkpoint_step(path, &why) >= 0) continue;
    throw DataError(cat(path.string(), ": not a complete checkpoint (", why, "), changed after it was saved; ",
                        best.empty() ? cat("no complete checkpoint remains: start the run again with --overwrite")
                                     : cat("resume from the newest complete one with --resume ", best,
                                           ", or move the damaged folder out of the run")));
  }
  if (best.empty()) return std::nullopt;
  return best;
}

std::string find_latest_checkpoint(const std::string& dir) {
  const fs::path root(dir);
  if (fs::exists(root / kStateFile)) return root.string();
  if (!single_file_sae(dir).empty())
    throw DataError(cat("--resume ", dir, ": ", single_file_sae_name(dir), " holds weights only, no training state to resume "
                        "from (start a run from it with --init)"));
  if (!fs::is_directory(root)) throw DataError(cat("--resume ", dir, ": no such run or checkpoint directory"));
  const std::optional<std::string> latest = latest_checkpoint_in_run(dir);
  if (!latest) throw DataError(cat("--resume ", dir, ": no complete checkpoint found"));
  return *latest;
}

std::vector<std::string> recover_interrupted_saves(const std::string& run_dir) {
  std::vector<std::string> recovered;
  for (const fs::path& folder : checkpoint_folders(run_dir)) {
    // For each target missing, the newest complete copy a save left behind under a temporary name.
    std::map<std::string, std::pair<int64_t, fs::path>> best;
    for (const auto& entry : fs::directory_iterator(folder)) {
      const std::string target = interrupted_save_target(entry.path().filename().string());
      if (target.empty() || !entry.is_directory() || fs::exists(folder / target)) continue;
      const int64_t step = complete_checkpoint_step(entry.path());
      if (step >= 0 && (!best.count(target) || step > best[target].first)) best[target] = {step, entry.path()};
    }
    for (const auto& [target, found] : best) {
      std::error_code ec;
      fs::rename(found.second, folder / target, ec);
      if (ec) throw DataError(cat("cannot recover ", found.second.string(), " as ", (folder / target).string(), ": ", ec.message()));
      recovered.push_back((folder / target).string());
    }
    if (!best.empty()) sync_directory(folder.string());
  }
  return recovered;
}

void remove_interrupted_saves(const std::string& run_dir) {
  for (const fs::path& folder : checkpoint_folders(run_dir))
    for (const auto& entry : fs::directory_iterator(folder))
      if (entry.is_directory() && !interrupted_save_target(entry.path().filename().string()).empty()) {
        std::error_code ec;
        fs::remove_all(entry.path(), ec);
      }
}

std::vector<std::string> other_model_warnings(const Json& cfg, const std::string& model_dir,
                                              const std::string& model_b_dir) {
  std::vector<std::string> warnings;
  if (!cfg.has("sae_cpp") || !cfg.at("sae_cpp").is_object() || !cfg.at("sae_cpp").has("data")) return warnings;
  const Json& data = cfg.at("sae_cpp").at("data");
  if (!data.is_object()) return warnings;
  for (const auto& [dir, trained_key] : {std::pair<std::string, std::string>{model_dir, "model"}, {model_b_dir, "model_b"}}) {
    const std::string key = trained_key + "_fingerprint";
    if (dir.empty() || !data.has(key) || !data.at(key).is_string()) continue;
    std::string now;
    try {
      now = model_weights_fingerprint(dir);
    } catch (const Error&) {  // the model's own loading says what is wrong with its files
      continue;
    }
    if (same_file_fingerprint(data.at(key).as_string(), now)) continue;
    const std::string trained = data.has(trained_key) && data.at(trained_key).is_string()
                                    ? cat(" (", data.at(trained_key).as_string(), " when it was trained)")
                                    : "";
    warnings.push_back(cat(dir, ": its weights are not those the SAE was trained on", trained,
                           ": the numbers are this model's, not the training model's"));
  }
  return warnings;
}

}  // namespace sae
