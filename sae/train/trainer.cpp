// The training loop (see trainer.h).
#include "sae/train/trainer.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "nn/adam.h"
#include "sae/data/batches.h"
#include "sae/train/checkpoint.h"
#include "sae/data/prefetch.h"
#include "sae/step/sae_step.h"
#include "sae/data/synthetic.h"
#include "io/atomic_file.h"
#include "tensor/cuda/backend.h"
#include "tensor/ops.h"

namespace fs = std::filesystem;

namespace sae {

double metric(const MetricRow& row, const std::string& name) {
  for (const auto& [key, value] : row)
    if (key == name) return value;
  throw Error(cat("metric '", name, "' was not logged"));
}

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError(cat(path, ": cannot open"));
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// On --resume, the run's own config.json decides everything but the options that only change how
// far and how it is watched.
TrainConfig resumed_config(const TrainConfig& cli, const std::string& run_dir) {
  const std::string path = (fs::path(run_dir) / "config.json").string();
  TrainConfig c;
  try {
    c = TrainConfig::from_json(Json::parse(read_text(path)));
  } catch (const DataError& e) {
    throw DataError(cat(path, ": ", e.what()));
  }
  c.steps = cli.steps;
  c.log_every = cli.log_every;
  c.checkpoint_every = cli.checkpoint_every;
  c.progress = cli.progress;
  c.device = cli.device;
  c.tf32 = cli.tf32;
  c.prefetch = cli.prefetch;
  c.out = run_dir;
  c.resume = cli.resume;
  return c;
}

// The run directory of a --resume argument (a run dir, or a checkpoint inside one).
std::string run_dir_of(const std::string& resume, const std::string& checkpoint) {
  if (fs::exists(fs::path(resume) / "config.json")) return resume;
  fs::path p = fs::path(checkpoint);
  for (int up = 0; up < 3 && p.has_parent_path(); ++up) {
    p = p.parent_path();
    if (fs::exists(p / "config.json")) return p.string();
  }
  throw DataError(cat("--resume ", resume, ": cannot find the run's config.json"));
}

Json run_description(const TrainConfig& c, const ActivationSource& source, double dataset_scale, int64_t step,
                      int64_t tokens) {
  Json j = Json::object();
  j["normalization"] = c.normalize;
  j["dataset_scale"] = dataset_scale;
  j["input_note"] = c.normalize == "story"   ? "inputs must be normalised per story: (x - mean) / std * sqrt(d_in)"
                    : c.normalize == "dataset" ? "inputs must be multiplied by dataset_scale"
                                              : "raw activations";
  j["l1_coefficient"] = c.l1;
  j["lr"] = c.lr;
  j["steps"] = step;
  j["tokens"] = tokens;
  j["batch"] = c.batch_name();
  j["seed"] = static_cast<int64_t>(c.seed);
  j["data"] = source.describe();
  return j;
}

}  // namespace

TrainResult train(TrainConfig config) {
  // ---- resolve the run: fresh, --init, or --resume ----
  std::optional<Checkpoint> resume_from;
  if (!config.resume.empty()) {
    const std::string checkpoint_dir = find_latest_checkpoint(config.resume);
    config = resumed_config(config, run_dir_of(config.resume, checkpoint_dir));
    resume_from = load_checkpoint(checkpoint_dir, Device::CPU);
    if (!resume_from->state) throw DataError(cat(checkpoint_dir, ": has no training state to resume from"));
  }
  config.validate();
  const Device device = resolve_device(config.device);
  if (device == Device::CUDA) cuda_set_tf32(config.tf32);
  std::unique_ptr<ActivationSource> source = open_activations(config.data, config.synthetic);
  const int64_t d = source->d();

  std::unique_ptr<SparseAutoencoder> model;
  if (resume_from) {
    model = std::move(resume_from->model);
  } else if (!config.init.empty()) {
    Checkpoint init = load_checkpoint(config.init, Device::CPU);
    model = std::move(init.model);
  } else {
    Rng rng(config.seed);
    model = std::make_unique<SparseAutoencoder>(d, config.features, rng);
  }
  if (model->d_in() != d)
    throw DataError(cat(resume_from ? "--resume" : "--init", " checkpoint has d_in ", model->d_in(), " but the data has d = ", d));
  if (!config.init.empty()) config.features = model->d_sae();
  if (model->d_sae() != config.features)
    throw DataError(cat("checkpoint has d_sae ", model->d_sae(), " but --features is ", config.features));
  if (device != Device::CPU) {
    for (Variable& p : model->parameters()) p.data() = p.data().to(device);
  }

  const Normalization normalization = parse_normalization(config.normalize);
  double dataset_scale = 1.0;
  if (resume_from)
    dataset_scale = resume_from->state->dataset_scale;
  else if (normalization == Normalization::Dataset)
    dataset_scale = estimate_dataset_scale(*source);

  Batcher batcher(*source, config.batch_tokens, normalization, dataset_scale, config.seed);
  const int64_t max_tokens = batcher.max_batch_tokens();
  if (max_tokens > 65536)
    throw UsageError(cat("the longest story has ", max_tokens, " tokens; story batches above 65536 tokens are not "
                         "supported: use --batch N"));

  nn::AdamOptions adam_options;
  adam_options.lr = config.lr;
  adam_options.beta1 = config.beta1;
  adam_options.beta2 = config.beta2;
  adam_options.eps = config.eps;
  nn::Adam adam(model->parameters(), adam_options);
  DeadFeatureTracker dead(model->d_sae(), config.dead_window);
  int64_t step = 0, tokens = 0;
  if (resume_from) {
    TrainingState& st = *resume_from->state;
    step = st.step;
    tokens = st.tokens;
    for (size_t i = 0; i < st.adam_m.size(); ++i) {
      copy_(adam.first_moments()[i], st.adam_m[i].to(device));
      copy_(adam.second_moments()[i], st.adam_v[i].to(device));
    }
    adam.set_steps_taken(st.adam_steps);
    batcher.restore(st.batcher);
    dead.last_fired() = st.last_fired;
    if (step >= config.steps)
      throw UsageError(cat("--resume: the run is already at step ", step, "; pass --steps larger than that"));
  }

  // ---- outputs ----
  fs::create_directories(config.out);
  {
    Json cfg = config.to_json();
    cfg["resolved"] = Json::object();
    cfg["resolved"]["device"] = device_name(device);
    cfg["resolved"]["d_in"] = d;
    cfg["resolved"]["dataset_scale"] = dataset_scale;
    cfg["resolved"]["data"] = source->describe();
    cfg["resolved"]["max_batch_tokens"] = max_tokens;
    write_file_atomic((fs::path(config.out) / "config.json").string(), cfg.dump(2) + "\n");
  }
  RunLog log(config.out, step);
  SyntheticSource* synthetic = dynamic_cast<SyntheticSource*>(source.get());

  // ---- buffers, allocated once ----
  SaeStep sae_step(max_tokens, d, model->d_sae(), DType::F32, device, parse_sparse_mode(config.sparse));
  Tensor x_device = device == Device::CPU ? Tensor() : Tensor::empty(Shape{max_tokens, d}, DType::F32, device);
  Tensor counts_host = Tensor::empty(Shape{model->d_sae()});
  Tensor reconstruction_host = Tensor::empty(Shape{max_tokens, d});

  // The next batch is prepared on a worker thread while a GPU step runs (--prefetch auto).
  const bool background = config.prefetch == "on" || (config.prefetch == "auto" && device != Device::CPU);
  Json data_position = batcher.state();  // after the last batch trained on (read before the worker starts)
  BatchPrefetcher prefetcher(batcher, d, background);

  auto training_state = [&]() {
    TrainingState st;
    st.step = step;
    st.tokens = tokens;
    st.adam_steps = adam.steps_taken();
    st.dataset_scale = dataset_scale;
    st.batcher = data_position;
    st.last_fired = dead.last_fired();
    for (size_t i = 0; i < adam.first_moments().size(); ++i) {
      st.adam_m.push_back(adam.first_moments()[i].to(Device::CPU));
      st.adam_v.push_back(adam.second_moments()[i].to(Device::CPU));
    }
    return st;
  };
  Progress progress(config.progress, config.steps, step);
  auto report_concepts = [&](const char* when) -> ConceptRecovery {
    ConceptRecovery r = concept_recovery(synthetic->concepts(), model->W_dec.data(), dead.alive(tokens));
    char line[200];
    std::snprintf(line, sizeof line, "%s step %lld: concept recovery MMCS %.3f, recovered %.1f%%, purity %.1f%%", when,
                  (long long)step, r.mmcs, 100 * r.recovered, 100 * r.purity);
    progress.message(line);
    return r;
  };

  TrainResult result;
  result.device = device;
  result.out_dir = config.out;
  const auto loop_begin = std::chrono::steady_clock::now();
  const int64_t first_step = step;
  while (step < config.steps) {
    const PreparedBatch& batch = prefetcher.next();
    const int64_t n = batch.tokens;
    const BatchStats& stats = batch.stats;
    const Tensor& normalized = batch.normalized;
    Tensor x = normalized.slice_rows(0, n);
    if (device != Device::CPU) {
      x = x_device.slice_rows(0, n);
      cuda_copy_to_device(x.raw(), normalized.raw(), n * d * sizeof(float));
    }
    const int64_t this_step = step + 1;
    const double lambda = config.l1_at(this_step), lr = config.lr_at(this_step);
    StepSums sums = sae_step.train_step(*model, x, lambda, adam, lr);  // forward, backward, Adam
    if (!std::isfinite(sums.loss) || !std::isfinite(sums.rec) || !std::isfinite(sums.l1))
      throw TrainingDiverged(cat("training diverged at step ", this_step, ": loss is ", sums.loss, " (rec ", sums.rec,
                                 ", l1 ", sums.l1, "); the last good checkpoint is kept. Try a lower --lr."));
    step = this_step;
    data_position = batch.position;
    tokens += n;
    const Tensor& counts = sae_step.feature_counts();
    const float* fired = counts.data<float>();
    if (device != Device::CPU) {  // into the buffer made once, no allocation per step
      cuda_copy_to_host(counts_host.raw(), counts.raw(), counts.nbytes());
      fired = counts_host.data<float>();
    }
    dead.update(fired, tokens);

    const double elements = double(n) * double(d);
    const double l0 = sums.active / double(n);
    const bool log_now = step % config.log_every == 0 || step == config.steps;
    if (log_now) {
      Tensor x_hat = sae_step.reconstruction();
      const float* recon = x_hat.data<float>();
      if (device != Device::CPU) {
        cuda_copy_to_host(reconstruction_host.raw(), x_hat.raw(), n * d * sizeof(float));
        recon = reconstruction_host.data<float>();
      }
      const MeanStd normalized_stats = mean_std(normalized.data<float>(), n * d), recon_stats = mean_std(recon, n * d);
      MetricRow row = {
          {"step", double(step)},
          {"tokens", double(tokens)},
          {"loss", sums.loss},
          {"rec_loss", sums.rec},
          {"l1", sums.l1},
          {"loss_per_element", sums.loss / elements},
          {"rec_loss_per_element", sums.rec / elements},
          {"l1_per_element", sums.l1 / elements},
          {"l1_coefficient", lambda},
          {"lr", lr},
          {"nonzero_proportion", sums.active / (double(n) * double(model->d_sae()))},
          {"l0", l0},
          {"dead_features", double(dead.dead(tokens))},
          {"fvu", fraction_of_variance_unexplained(normalized.data<float>(), recon, n, d)},
          {"raw_mean", stats.raw_mean},
          {"raw_std", stats.raw_std},
          {"normalized_mean", normalized_stats.mean},
          {"normalized_std", normalized_stats.std},
          {"reconstructed_mean", recon_stats.mean},
          {"reconstructed_std", recon_stats.std},
      };
      log.write(row);
      result.last_row = row;
    }
    progress.update(step, tokens, sums.loss, l0);
    if (step % config.checkpoint_every == 0 && step < config.steps) {
      log.flush();
      TrainingState st = training_state();
      save_checkpoint((fs::path(config.out) / "checkpoints" / ("step_" + std::to_string(step))).string(), *model,
                      run_description(config, *source, dataset_scale, step, tokens), &st);
      if (synthetic) report_concepts("checkpoint");
    }
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - loop_begin).count();
  progress.finish();
  log.flush();

  // ---- final model: sae/ (SAELens layout + training state, so it can be extended with --resume) ----
  TrainingState st = training_state();
  result.model_dir = (fs::path(config.out) / "sae").string();
  save_checkpoint(result.model_dir, *model, run_description(config, *source, dataset_scale, step, tokens), &st);
  result.steps = step;
  result.tokens = tokens;
  result.metrics_csv = log.csv_path();
  result.tensorboard_file = log.tensorboard_path();
  if (!result.last_row.empty()) {
    result.fvu = metric(result.last_row, "fvu");
    result.l0 = metric(result.last_row, "l0");
    result.nonzero_proportion = metric(result.last_row, "nonzero_proportion");
  }
  result.dead_features = dead.dead(tokens);
  if (synthetic) result.concepts = report_concepts("final");
  (void)first_step;
  return result;
}

std::string format_report(const TrainResult& r) {
  char buffer[2048];
  int used = std::snprintf(buffer, sizeof buffer,
                           "trained %lld steps (%lld tokens) on %s in %s\n"
                           "  final step: FVU %.4f | L0 %.1f active features per token (proportion %.5f) | "
                           "dead features %lld\n",
                           (long long)r.steps, (long long)r.tokens, device_name(r.device),
                           format_duration(r.seconds).c_str(), r.fvu, r.l0, r.nonzero_proportion,
                           (long long)r.dead_features);
  if (r.concepts)
    used += std::snprintf(buffer + used, sizeof buffer - used,
                          "  concept recovery: MMCS %.3f | recovered (cos >= 0.9) %.1f%% of %lld concepts | "
                          "purity %.1f%% of %lld alive features\n",
                          r.concepts->mmcs, 100 * r.concepts->recovered, (long long)r.concepts->concepts,
                          100 * r.concepts->purity, (long long)r.concepts->alive_features);
  std::snprintf(buffer + used, sizeof buffer - used,
                "  files: %s/config.json, %s, %s,\n         %s/ (SAELens format), %s/checkpoints/\n",
                r.out_dir.c_str(), r.metrics_csv.c_str(), r.tensorboard_file.c_str(), r.model_dir.c_str(),
                r.out_dir.c_str());
  return buffer;
}

}  // namespace sae
