// A distributed run's checkpoints (see sharded_checkpoint.h).
#include "sae/train/sharded_checkpoint.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "sae/arch/registry.h"
#include "tensor/ops.h"

namespace fs = std::filesystem;

namespace sae {

namespace {

constexpr const char* kWeightsFile = "sae_weights.safetensors";
constexpr const char* kStateFile = "training_state.safetensors";

std::string shard_file(int64_t shard) { return cat("training_state.shard_", shard, ".safetensors"); }

// The axis along which an exported tensor runs over the latents (SaeParams::latent_axis by name),
// or -1 when it has none of this shard's size there (a tensor every shard holds whole).
int exported_axis(const std::string& name, const Tensor& t, int64_t shard_latents) {
  const int axis = SaeParams::latent_axis(name);
  if (axis < 0 || axis >= t.ndim() || t.size(axis) != shard_latents) return -1;
  return axis;
}

void write_all(int fd, const void* data, size_t bytes, uint64_t at, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t done = ::pwrite(fd, p, bytes, static_cast<off_t>(at));
    if (done <= 0) throw DataError(cat("checkpoint: cannot write ", path, ": ", std::strerror(errno)));
    p += done;
    at += static_cast<uint64_t>(done);
    bytes -= static_cast<size_t>(done);
  }
}

// Test hook (tests/dist): SAE_TEST_KILL_RANK_IN_SAVE=<rank>:<step> kills that rank with SIGKILL in
// the middle of the save of that step's checkpoint (its weight slices written, its optimizer shard
// not), as a crash would.
void test_kill_in_save(int rank, int64_t step) {
  const char* at = std::getenv("SAE_TEST_KILL_RANK_IN_SAVE");
  if (at != nullptr && cat(rank, ":", step) == at) ::raise(SIGKILL);
}

}  // namespace

void save_sharded_checkpoint(Collectives& c, const std::string& dir, const SaeParams& shard_params,
                             int64_t first_latent, int64_t latents, const Json& extra, const TrainingState& state) {
  const int64_t shard_latents = shard_params.d_sae();
  const bool owner = c.replica() == 0;  // replicas hold the same slice: replica 0 writes it
  // The weights as SAELens stores them (this shard's part), and the whole file's layout.
  const std::vector<std::pair<std::string, Tensor>> weights = folder_weights(shard_params, extra);
  std::vector<SafetensorsSpec> specs;
  for (const auto& [name, t] : weights) {
    SafetensorsSpec spec{name, "F32", {}};
    const int axis = exported_axis(name, t, shard_latents);
    for (int i = 0; i < t.ndim(); ++i) spec.shape.push_back(i == axis ? latents : t.size(i));
    specs.push_back(spec);
  }
  c.agree([&] {  // every shard's part finite, or no rank writes (as save_checkpoint)
    std::vector<std::pair<std::string, Tensor>> host = weights;
    require_finite_weights(host, dir);
  });
  const std::string temp = c.broadcast(checkpoint_temp_folder(dir), 0);
  const std::string weights_path = (fs::path(temp) / kWeightsFile).string();
  const SafetensorsLayout layout = safetensors_layout(specs, {}, weights_path);
  c.agree([&] {
    if (c.rank() != 0) return;
    std::error_code ec;
    fs::create_directories(fs::path(temp).parent_path(), ec);
    fs::remove_all(temp, ec);
    if (!fs::create_directories(temp, ec) && ec)
      throw DataError(cat("checkpoint: cannot create ", temp, ": ", ec.message()));
    const int fd = ::open(weights_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) throw DataError(cat("checkpoint: cannot create ", weights_path, ": ", std::strerror(errno)));
    const bool sized = ::ftruncate(fd, static_cast<off_t>(layout.file_bytes)) == 0;
    if (sized) write_all(fd, layout.header.data(), layout.header.size(), 0, weights_path);
    ::close(fd);
    if (!sized) throw DataError(cat("checkpoint: cannot size ", weights_path, ": ", std::strerror(errno)));
  });
  // Each owner writes its slices and its optimizer shard.
  c.agree([&] {
    if (!owner) return;
    const int fd = ::open(weights_path.c_str(), O_WRONLY);
    if (fd < 0) throw DataError(cat("checkpoint: cannot open ", weights_path, ": ", std::strerror(errno)));
    try {
      for (const auto& [name, tensor] : weights) {
        const Tensor t = tensor.to(Device::CPU).to(DType::F32);
        const int axis = exported_axis(name, t, shard_latents);
        const uint64_t begin = layout.begin.at(name);
        if (axis < 0) {  // held whole by every shard: shard 0 writes it
          if (c.shard() == 0) write_all(fd, t.raw(), t.nbytes(), begin, weights_path);
        } else if (axis == 0) {  // rows [first, first + F/S)
          write_all(fd, t.raw(), t.nbytes(), begin + uint64_t(first_latent) * (t.nbytes() / shard_latents),
                    weights_path);
        } else {  // axis 1 of [rows, F]: a piece of every row
          const int64_t rows = t.size(0);
          const size_t piece = static_cast<size_t>(shard_latents) * sizeof(float);
          for (int64_t r = 0; r < rows; ++r)
            write_all(fd, t.data<float>() + r * shard_latents, piece,
                      begin + (uint64_t(r) * latents + first_latent) * sizeof(float), weights_path);
        }
      }
      sync_fd(fd, weights_path);
    } catch (...) {
      ::close(fd);
      throw;
    }
    ::close(fd);
    test_kill_in_save(c.rank(), state.step);
    std::vector<std::pair<std::string, Tensor>> tensors;
    Json info = training_state_info(shard_params, state, tensors);
    add_exact_params(shard_params, extra, tensors);
    info["shard"] = c.shard();
    info["first_latent"] = first_latent;
    write_safetensors((fs::path(temp) / shard_file(c.shard())).string(), tensors, {{"training_state", info.dump()}});
  });
  // Rank 0: cfg.json, the state's metadata, and the folder into place.
  c.agree([&] {
    if (c.rank() != 0) return;
    Json cfg = saelens_config(shard_params, extra);
    cfg["d_sae"] = latents;
    write_file_atomic((fs::path(temp) / "cfg.json").string(), cfg.dump(2) + "\n");
    TrainingState whole = state;
    whole.adam.m = whole.adam.v = SaeParams{};  // in the shard files (adam.steps stays)
    whole.last_fired.clear();
    std::vector<std::pair<std::string, Tensor>> none;
    Json info = training_state_info(shard_params, whole, none);
    info["shards"] = c.shards();
    info["latents"] = latents;
    write_safetensors((fs::path(temp) / kStateFile).string(), {}, {{"training_state", info.dump()}});
    install_checkpoint_folder(temp, dir);
  });
}

bool sharded_state(const Json& info) { return info.has("shards"); }
int64_t state_shards(const Json& info) { return sharded_state(info) ? info.at("shards").as_int() : 1; }

bool shard_files_complete(const std::string& dir, const Json& info) {
  if (!sharded_state(info)) return true;  // one process's state holds everything
  const int64_t shards = state_shards(info);
  for (int64_t s = 0; s < shards; ++s) {
    try {
      const SafetensorsFile file = SafetensorsFile::open((fs::path(dir) / shard_file(s)).string());
      if (file.metadata().find("training_state") == file.metadata().end()) return false;
    } catch (const Error&) {
      return false;
    }
  }
  return true;
}

void load_sharded_state(const std::string& dir, const Json& info, SaeParams& params, TrainingState& st,
                        Device device, bool centred) {
  const int64_t shards = state_shards(info), latents = params.d_sae();
  const std::string state_path = (fs::path(dir) / kStateFile).string();
  if (shards < 1 || latents % shards != 0)
    throw DataError(cat(state_path, ": ", shards, " shards of ", latents, " latents"));
  if (info.has("latents") && info.at("latents").as_int() != latents)
    throw DataError(cat(state_path, ": a state of ", info.at("latents").as_int(), " latents beside an SAE of ", latents));
  const int64_t per = latents / shards;
  const ArchUnit& unit = unit_of(params);
  st.adam.m = SaeParams::zeros_like(params);
  st.adam.v = SaeParams::zeros_like(params);
  st.last_fired.assign(static_cast<size_t>(latents), 0);
  auto params_all = params.present(), m_all = st.adam.m.present(), v_all = st.adam.v.present();
  for (int64_t s = 0; s < shards; ++s) {
    const std::string path = (fs::path(dir) / shard_file(s)).string();
    if (!fs::exists(path)) throw DataError(cat(dir, ": missing ", shard_file(s), " (a state of ", shards, " shards)"));
    const SafetensorsFile file = SafetensorsFile::open(path);
    if (centred)  // a centred run's state holds its trained vectors, each shard its part
      for (const auto& [name, t] : params.present())
        if (t->ndim() == 1 && !file.has("param." + name))
          throw DataError(cat(path, ": a centred (apply_b_dec_to_input) run's state must hold param.", name));
    auto meta = file.metadata().find("training_state");
    if (meta == file.metadata().end()) throw DataError(cat(path, ": no training_state metadata"));
    const Json shard_info = Json::parse(meta->second);
    // The file must be this shard of this checkpoint: one renamed or copied in from another shard or
    // step would put its latents (and its param.* tensors) in the wrong place without a word.
    auto recorded = [](const Json& j, const char* key) {
      return j.is_object() && j.has(key) && j.at(key).is_number() ? j.at(key).as_int() : int64_t(-1);
    };
    const int64_t step = recorded(info, "step"), its_step = recorded(shard_info, "step");
    if ((shard_info.has("shard") && recorded(shard_info, "shard") != s) ||
        (shard_info.has("first_latent") && recorded(shard_info, "first_latent") != s * per) ||
        (step >= 0 && shard_info.has("step") && its_step != step))
      throw DataError(cat(path, ": records shard ", recorded(shard_info, "shard"), " (first latent ",
                          recorded(shard_info, "first_latent"), ") at step ", its_step, ", but is this checkpoint's shard ",
                          s, " (first latent ", s * per, ") at step ", step));
    // The unit's state of this slice, read by the unit, put back into the whole SAE.
    SaeParams slice = params.latent_slice(s * per, (s + 1) * per);
    unit.load_state(file, shard_info, slice);
    params.settings = slice.settings;
    auto slice_all = slice.present();
    for (size_t i = 0; i < params_all.size(); ++i)
      if (SaeParams::latent_axis(params_all[i].first) == 0) {
        Tensor rows = params_all[i].second->slice_rows(s * per, (s + 1) * per);
        copy_(rows, *slice_all[i].second);
      }
    // Adam's moments: this shard's slice, and the whole ones (b_dec, W_skip) from shard 0; and a
    // folded folder's trained tensors (param.<name>, checkpoint.h folder_weights) the same way.
    for (size_t i = 0; i < params_all.size(); ++i) {
      const std::string& name = params_all[i].first;
      const int axis = SaeParams::latent_axis(name);
      if (axis < 0 && s > 0) continue;
      for (const std::string prefix : {"adam_m.", "adam_v.", "param."}) {
        if (prefix == "param." && !file.has(prefix + name)) continue;
        const Tensor part = file.read_f32(prefix + name);
        Tensor& whole = *(prefix == "param." ? params_all : prefix == "adam_m." ? m_all : v_all)[i].second;
        const Tensor& want = *slice_all[i].second;
        if (part.shape() != want.shape())
          throw DataError(cat(path, ": ", prefix, name, " has the wrong shape ", part.describe()));
        if (prefix != "param.") check_adam_moment(part, prefix == "adam_v.", path, name);
        if (axis < 0) {
          whole = part.clone();
        } else if (axis == 0) {
          Tensor rows = whole.slice_rows(s * per, (s + 1) * per);
          copy_(rows, part);
        } else {  // W_enc's columns
          const int64_t rows = whole.size(0);
          float* to = whole.data<float>();
          const float* from = part.data<float>();
          for (int64_t r = 0; r < rows; ++r) std::memcpy(to + r * latents + s * per, from + r * per, per * sizeof(float));
        }
      }
    }
    // The dead-feature clocks of this shard's latents.
    const SafetensorsEntry& fired = file.entry("last_fired");
    if (fired.dtype != "F64" || fired.numel() != per)
      throw DataError(cat(path, ": last_fired should be F64 [", per, "], got ", fired.dtype, " of ", fired.numel()));
    for (int64_t k = 0; k < per; ++k) {
      double clock;
      std::memcpy(&clock, static_cast<const char*>(fired.data) + 8 * k, 8);
      if (!(clock >= 0 && clock <= double(st.tokens) && clock == std::floor(clock)))
        throw DataError(cat(path, ": last_fired[", k, "] is ", clock, ", expected a token count in [0, ", st.tokens, "]"));
      st.last_fired[s * per + k] = static_cast<int64_t>(clock);
    }
  }
  if (centred) {  // the param.* vectors (checked above) are the trained ones: kept aside, the shift folded back in
    for (const auto& [name, t] : params.present())
      if (t->ndim() == 1) st.centred_params.push_back({name, t->clone()});
    unit.fold_input_shift(params, input_shift(params));
  }
  for (auto& [name, t] : st.adam.m.present()) *t = t->to(device);
  for (auto& [name, t] : st.adam.v.present()) *t = t->to(device);
}

}  // namespace sae
