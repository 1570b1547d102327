// TrainConfig: validation, schedules, JSON round trip (see train_config.h).
#include "sae/train/train_config.h"

#include <cmath>

#include "sae/data/batches.h"
#include "tensor/cuda/backend.h"

namespace sae {

namespace {
void require(bool ok, const std::string& message) {
  if (!ok) throw UsageError(message);
}
}  // namespace

void TrainConfig::validate() const {
  require(!data.empty(), "--data: expected 'synthetic' or a path to a .safetensors or .npy file");
  require(features >= 1 && features <= 10000000, cat("--features must be in [1, 1e7], got ", features));
  require(std::isfinite(l1) && l1 >= 0, cat("--l1 must be a finite number >= 0, got ", l1));
  require(std::isfinite(lr) && lr > 0 && lr < 10, cat("--lr must be in (0, 10), got ", lr));
  require(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, "--beta1 and --beta2 must be in [0, 1)");
  require(std::isfinite(eps) && eps > 0, cat("--eps must be > 0, got ", eps));
  require(steps >= 1, cat("--steps must be >= 1, got ", steps));
  require(batch_tokens >= 0, cat("--batch: expected 'story' or a positive token count, got ", batch_tokens));
  parse_normalization(normalize);
  require(!out.empty(), "--out must not be empty");
  require(device == "cpu" || device == "cuda" || device == "auto",
          cat("--device: expected cpu, cuda or auto, got '", device, "'"));
  require(sparse == "auto" || sparse == "on" || sparse == "off",
          cat("--sparse: expected auto, on or off, got '", sparse, "'"));
  require(checkpoint_every >= 1, cat("--checkpoint-every must be >= 1, got ", checkpoint_every));
  require(log_every >= 1, cat("--log-every must be >= 1, got ", log_every));
  require(lr_warmup_steps >= 0 && lr_decay_steps >= 0 && l1_warmup_steps >= 0,
          "--lr-warmup-steps, --lr-decay-steps and --l1-warmup-steps must be >= 0");
  require(dead_window >= 1, cat("--dead-window must be >= 1 token, got ", dead_window));
  require(prefetch == "auto" || prefetch == "on" || prefetch == "off",
          cat("--prefetch: expected auto, on or off, got '", prefetch, "'"));
  require(progress == "auto" || progress == "bar" || progress == "lines" || progress == "none",
          cat("--progress: expected auto, bar, lines or none, got '", progress, "'"));
  require(init.empty() || resume.empty(), "--init and --resume cannot be used together");
  if (data == "synthetic") synthetic.validate();
}

std::string TrainConfig::batch_name() const { return batch_tokens == 0 ? "story" : std::to_string(batch_tokens); }

double TrainConfig::lr_at(int64_t step) const {
  double factor = 1.0;
  if (lr_warmup_steps > 0) factor *= std::min(1.0, double(step) / double(lr_warmup_steps));
  if (lr_decay_steps > 0 && step > steps - lr_decay_steps)
    factor *= std::max(0.0, double(steps - step) / double(lr_decay_steps));
  return lr * factor;
}

double TrainConfig::l1_at(int64_t step) const {
  if (l1_warmup_steps <= 0) return l1;
  return l1 * std::min(1.0, double(step) / double(l1_warmup_steps));
}

Json TrainConfig::to_json() const {
  Json j = Json::object();
  j["data"] = data;
  j["synthetic"] = synthetic.to_json();
  j["features"] = features;
  j["l1"] = l1;
  j["lr"] = lr;
  j["beta1"] = beta1;
  j["beta2"] = beta2;
  j["eps"] = eps;
  j["steps"] = steps;
  j["batch"] = batch_name();
  j["normalize"] = normalize;
  j["init"] = init;
  j["out"] = out;
  j["seed"] = static_cast<int64_t>(seed);
  j["device"] = device;
  j["tf32"] = tf32;
  j["sparse"] = sparse;
  j["prefetch"] = prefetch;
  j["checkpoint_every"] = checkpoint_every;
  j["log_every"] = log_every;
  j["lr_warmup_steps"] = lr_warmup_steps;
  j["lr_decay_steps"] = lr_decay_steps;
  j["l1_warmup_steps"] = l1_warmup_steps;
  j["dead_window"] = dead_window;
  j["progress"] = progress;
  return j;
}

TrainConfig TrainConfig::from_json(const Json& j) {
  TrainConfig c;
  c.data = j.at("data").as_string();
  const Json& s = j.at("synthetic");
  c.synthetic.d = s.at("d").as_int();
  c.synthetic.concepts = s.at("concepts").as_int();
  c.synthetic.story_concepts = s.at("story_concepts").as_int();
  c.synthetic.stories = s.at("stories").as_int();
  c.synthetic.mean_length = s.at("mean_length").as_number();
  c.synthetic.active = s.at("active").as_number();
  c.synthetic.story_active = s.at("story_active").as_int();
  c.synthetic.story_presence = s.at("story_presence").as_number();
  c.synthetic.zipf = s.at("zipf").as_number();
  c.synthetic.magnitude = s.at("magnitude").as_number();
  c.synthetic.mean_norm = s.at("mean_norm").as_number();
  c.synthetic.noise = s.at("noise").as_number();
  c.synthetic.seed = static_cast<uint64_t>(s.at("seed").as_int());
  c.features = j.at("features").as_int();
  c.l1 = j.at("l1").as_number();
  c.lr = j.at("lr").as_number();
  c.beta1 = j.at("beta1").as_number();
  c.beta2 = j.at("beta2").as_number();
  c.eps = j.at("eps").as_number();
  c.steps = j.at("steps").as_int();
  c.batch_tokens = parse_batch(j.at("batch").as_string());
  c.normalize = j.at("normalize").as_string();
  c.init = j.at("init").as_string();
  c.out = j.at("out").as_string();
  c.seed = static_cast<uint64_t>(j.at("seed").as_int());
  c.device = j.at("device").as_string();
  c.tf32 = j.has("tf32") && j.at("tf32").as_bool();
  c.sparse = j.has("sparse") ? j.at("sparse").as_string() : "off";  // runs from before --sparse were dense
  if (j.has("prefetch")) c.prefetch = j.at("prefetch").as_string();
  c.checkpoint_every = j.at("checkpoint_every").as_int();
  c.log_every = j.at("log_every").as_int();
  c.lr_warmup_steps = j.at("lr_warmup_steps").as_int();
  c.lr_decay_steps = j.at("lr_decay_steps").as_int();
  c.l1_warmup_steps = j.at("l1_warmup_steps").as_int();
  c.dead_window = j.at("dead_window").as_int();
  c.progress = j.at("progress").as_string();
  return c;
}

int64_t parse_batch(const std::string& text) {
  if (text == "story") return 0;
  size_t used = 0;
  long long value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || value <= 0)
    throw UsageError(cat("--batch: expected 'story' or a positive token count, got '", text, "'"));
  return value;
}

Device resolve_device(const std::string& name) {
  if (name == "cpu") return Device::CPU;
  if (name == "cuda") {
    if (!cuda_built()) throw UsageError("--device cuda: this build has no CUDA support (nvcc was not found at build time)");
    if (!cuda_available()) throw UsageError("--device cuda: no CUDA GPU is available on this machine");
    return Device::CUDA;
  }
  if (name == "auto") return cuda_available() ? Device::CUDA : Device::CPU;
  throw UsageError(cat("--device: expected cpu, cuda or auto, got '", name, "'"));
}

}  // namespace sae
