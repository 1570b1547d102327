// The training loop (see trainer.h): start (run_start.h) -> data -> outputs -> steps, each logged and
// checkpointed -> the final model.
#include "sae/train/trainer.h"

#include <chrono>
#include <cmath>
#include <filesystem>

#include "io/atomic_file.h"
#include "sae/data/prefetch.h"
#include "sae/data/synthetic.h"
#include "sae/step/sae_step.h"
#include "sae/train/checkpoint.h"
#include "sae/train/run_start.h"
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

// Everything a checkpoint saves and a resumed run restores. The tensors live on the run's device.
struct RunState {
  SaeParams params;
  SaeAdamState adam;
  int64_t step = 0, tokens = 0;
  double dataset_scale = 1.0;
  Json data_position;  // Batcher::state() after the last batch trained on
  DeadFeatureTracker dead;

  TrainingState saved() const {
    TrainingState st;
    st.step = step;
    st.tokens = tokens;
    st.dataset_scale = dataset_scale;
    st.batcher = data_position;
    st.last_fired = dead.last_fired();
    st.adam.m = adam.m.to(Device::CPU);
    st.adam.v = adam.v.to(Device::CPU);
    st.adam.steps = adam.steps;
    return st;
  }
};

// What cfg.json records about the run under "sae_cpp" (SAELens ignores it).
Json run_description(const TrainConfig& c, const ActivationSource& source, const RunState& run) {
  Json j = Json::object();
  j["normalization"] = normalization_name(c.normalize);
  j["dataset_scale"] = run.dataset_scale;
  j["input_note"] = c.normalize == Normalization::Story ? "inputs must be normalised per story: (x - mean) / std * sqrt(d_in)"
                    : c.normalize == Normalization::Dataset ? "inputs must be multiplied by dataset_scale"
                                                            : "raw activations";
  j["l1_coefficient"] = c.l1;
  j["lr"] = c.lr;
  j["steps"] = run.step;
  j["tokens"] = run.tokens;
  j["batch"] = c.batch_name();
  j["seed"] = static_cast<int64_t>(c.seed);
  j["data"] = source.describe();
  return j;
}

// config.json: every option plus what was resolved at start.
void write_run_config(const TrainConfig& c, Device device, const ActivationSource& source, double dataset_scale,
                      int64_t max_tokens) {
  Json cfg = c.to_json();
  cfg["resolved"] = Json::object();
  cfg["resolved"]["device"] = device_name(device);
  cfg["resolved"]["d_in"] = source.d();
  cfg["resolved"]["dataset_scale"] = dataset_scale;
  cfg["resolved"]["data"] = source.describe();
  cfg["resolved"]["max_batch_tokens"] = max_tokens;
  write_file_atomic((fs::path(c.out) / "config.json").string(), cfg.dump(2) + "\n");
}

// The row metrics.csv and TensorBoard get at a logged step. x and x_hat are host [n, d].
MetricRow metric_row(const RunState& run, const StepSums& sums, const BatchStats& stats, const float* x,
                     const float* x_hat, int64_t n, int64_t d, double lambda, double lr) {
  const double elements = double(n) * double(d);
  const MeanStd normalized = mean_std(x, n * d), reconstructed = mean_std(x_hat, n * d);
  return {
      {"step", double(run.step)},
      {"tokens", double(run.tokens)},
      {"loss", sums.loss},
      {"rec_loss", sums.rec},
      {"l1", sums.l1},
      {"loss_per_element", sums.loss / elements},
      {"rec_loss_per_element", sums.rec / elements},
      {"l1_per_element", sums.l1 / elements},
      {"l1_coefficient", lambda},
      {"lr", lr},
      {"nonzero_proportion", sums.active / (double(n) * double(run.params.d_sae()))},
      {"l0", sums.active / double(n)},
      {"dead_features", double(run.dead.dead(run.tokens))},
      {"fvu", fraction_of_variance_unexplained(x, x_hat, n, d)},
      {"raw_mean", stats.raw_mean},
      {"raw_std", stats.raw_std},
      {"normalized_mean", normalized.mean},
      {"normalized_std", normalized.std},
      {"reconstructed_mean", reconstructed.mean},
      {"reconstructed_std", reconstructed.std},
  };
}

// The architectures' extra column (sae/arch.h): the auxiliary term as it enters the loss.
MetricRow with_architecture_metrics(MetricRow row, const RunState& run, const StepSums& sums) {
  if (run.params.architecture != Architecture::Standard) row.push_back({"aux_loss", sums.aux});
  return row;
}

}  // namespace

TrainResult train(TrainConfig requested) {
  // ---- where the run starts, and its data ----
  const RunStart start = start_run(std::move(requested));
  const TrainConfig& config = start.config;
  const Device device = resolve_device(config.device);
  if (device == Device::CUDA) cuda_set_tf32(config.tf32);
  std::unique_ptr<ActivationSource> source = open_activations(config.data, config.synthetic);
  const int64_t d = source->d();
  // The scale first: a fresh b_dec at the geometric median is taken from normalised tokens.
  const double dataset_scale = start.state ? start.state->dataset_scale
                               : config.normalize == Normalization::Dataset ? estimate_dataset_scale(*source)
                                                                            : 1.0;
  const SaeParams first = start.params ? initial_params(start, d) : fresh_params(config, *source, dataset_scale);
  RunState run{first.to(device), {}, 0, 0, dataset_scale, Json(),
               DeadFeatureTracker(config.features, config.dead_window)};
  run.adam = SaeAdamState::zeros_like(run.params, config.beta1, config.beta2, config.eps);
  if (start.state) {
    const TrainingState& st = *start.state;
    run.step = st.step;
    run.tokens = st.tokens;
    run.adam.m = st.adam.m.to(device);
    run.adam.v = st.adam.v.to(device);
    run.adam.steps = st.adam.steps;
    run.dead.last_fired() = st.last_fired;
  }
  Batcher batcher(*source, config.batch_tokens, config.normalize, run.dataset_scale, config.seed);
  if (start.state) batcher.restore(start.state->batcher);
  const int64_t max_tokens = batcher.max_batch_tokens();
  if (max_tokens > 65536)
    throw UsageError(cat("the longest story has ", max_tokens, " tokens; story batches above 65536 tokens are not "
                         "supported: use --batch N"));

  // ---- outputs ----
  fs::create_directories(config.out);
  write_run_config(config, device, *source, run.dataset_scale, max_tokens);
  RunLog log(config.out, run.step);
  SyntheticSource* synthetic = dynamic_cast<SyntheticSource*>(source.get());
  Progress progress(config.progress, config.steps, run.step);
  auto report_concepts = [&](const char* when) {
    ConceptRecovery r = concept_recovery(synthetic->concepts(), run.params.W_dec, run.dead.alive(run.tokens));
    char line[200];
    std::snprintf(line, sizeof line, "%s step %lld: concept recovery MMCS %.3f, recovered %.1f%%, purity %.1f%%", when,
                  (long long)run.step, r.mmcs, 100 * r.recovered, 100 * r.purity);
    progress.message(line);
    return r;
  };
  auto save = [&](const std::string& dir) {
    const TrainingState st = run.saved();
    save_checkpoint(dir, run.params, run_description(config, *source, run), &st);
  };

  // ---- buffers, allocated once ----
  SaeStep sae_step(max_tokens, d, config.features, DType::F32, device, config.sparse, arch_options(config, d));
  set_dead_clock(sae_step.tokens_since_fired(), run.dead.last_fired(), run.tokens);  // AuxK's, from the tracker
  Tensor x_device = device == Device::CPU ? Tensor() : Tensor::empty(Shape{max_tokens, d}, DType::F32, device);
  Tensor counts_host = Tensor::empty(Shape{config.features});
  Tensor reconstruction_host = Tensor::empty(Shape{max_tokens, d});
  // The next batch is prepared on a worker thread while a GPU step runs (--prefetch auto).
  const bool background =
      config.prefetch == PrefetchMode::On || (config.prefetch == PrefetchMode::Auto && device != Device::CPU);
  run.data_position = batcher.state();  // read before the worker starts
  BatchPrefetcher prefetcher(batcher, d, background);

  // ---- the loop ----
  TrainResult result;
  result.device = device;
  result.out_dir = config.out;
  const auto loop_begin = std::chrono::steady_clock::now();
  while (run.step < config.steps) {
    const PreparedBatch& batch = prefetcher.next();
    const int64_t n = batch.tokens;
    Tensor x = batch.normalized.slice_rows(0, n);
    if (device != Device::CPU) {
      x = x_device.slice_rows(0, n);
      cuda_copy_to_device(x.raw(), batch.normalized.raw(), n * d * sizeof(float));
    }
    const int64_t this_step = run.step + 1;
    const double lambda = config.l1_at(this_step), lr = config.lr_at(this_step);
    const StepSums sums = sae_step.train_step(run.params, run.adam, x, lambda, lr);  // forward, backward, Adam
    if (!std::isfinite(sums.loss) || !std::isfinite(sums.rec) || !std::isfinite(sums.l1) || !std::isfinite(sums.aux))
      throw TrainingDiverged(cat("training diverged at step ", this_step, ": loss is ", sums.loss, " (rec ", sums.rec,
                                 ", l1 ", sums.l1, "); the last good checkpoint is kept. Try a lower --lr."));
    run.step = this_step;
    run.data_position = batch.position;
    run.tokens += n;
    const Tensor& counts = sae_step.feature_counts();
    const float* fired = counts.data<float>();
    if (device != Device::CPU) {  // into the buffer made once, no allocation per step
      cuda_copy_to_host(counts_host.raw(), counts.raw(), counts.nbytes());
      fired = counts_host.data<float>();
    }
    run.dead.update(fired, run.tokens);

    if (run.step % config.log_every == 0 || run.step == config.steps) {
      Tensor x_hat = sae_step.reconstruction();
      const float* recon = x_hat.data<float>();
      if (device != Device::CPU) {
        cuda_copy_to_host(reconstruction_host.raw(), x_hat.raw(), n * d * sizeof(float));
        recon = reconstruction_host.data<float>();
      }
      result.last_row = with_architecture_metrics(
          metric_row(run, sums, batch.stats, batch.normalized.data<float>(), recon, n, d, lambda, lr), run, sums);
      log.write(result.last_row);
    }
    progress.update(run.step, run.tokens, sums.loss, sums.active / double(n));
    if (run.step % config.checkpoint_every == 0 && run.step < config.steps) {
      log.flush();
      save((fs::path(config.out) / "checkpoints" / ("step_" + std::to_string(run.step))).string());
      if (synthetic) report_concepts("checkpoint");
    }
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - loop_begin).count();
  progress.finish();
  log.flush();

  // ---- final model: sae/ (SAELens layout + training state, so it can be extended with --resume) ----
  result.model_dir = (fs::path(config.out) / "sae").string();
  save(result.model_dir);
  result.steps = run.step;
  result.tokens = run.tokens;
  result.metrics_csv = log.csv_path();
  result.tensorboard_file = log.tensorboard_path();
  if (!result.last_row.empty()) {
    result.fvu = metric(result.last_row, "fvu");
    result.l0 = metric(result.last_row, "l0");
    result.nonzero_proportion = metric(result.last_row, "nonzero_proportion");
  }
  result.dead_features = run.dead.dead(run.tokens);
  if (synthetic) result.concepts = report_concepts("final");
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
