// The training loop (see trainer.h): start (run_start.h) -> data -> outputs -> steps, each logged and
// checkpointed -> the final model.
#include "sae/train/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <cmath>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <functional>

#include "io/atomic_file.h"
#include "io/csv.h"
#include "io/file_fingerprint.h"
#include "io/mapped_file.h"
#include "lm/text_data.h"
#include "sae/data/prefetch.h"
#include "sae/data/synthetic.h"
#include "sae/arch/sae_step.h"
#include "sae/train/batch_upload.h"
#include "sae/train/arch_config.h"
#include "sae/train/checkpoint.h"
#include "sae/train/dictionary_reads.h"
#include "sae/train/interrupt.h"
#include "sae/train/l0_controller.h"
#include "sae/train/memory_check.h"
#include "sae/train/options.h"
#include "sae/train/run_feature_stats.h"
#include "sae/train/run_start.h"
#include "sae/train/sharded_checkpoint.h"
#include "sae/train/training_data.h"
#include "tensor/cuda/backend.h"
#include "tensor/cpu_runtime.h"
#include "tensor/ops.h"
#include "tensor/threads.h"

namespace fs = std::filesystem;

namespace sae {

double metric(const MetricRow& row, const std::string& name) {
  for (const auto& [key, value] : row)
    if (key == name) return value;
  throw Error(cat("metric '", name, "' was not logged"));
}

namespace {

// The ranks of a distributed run, or null for one process (no ranks, or one).
Collectives* several_ranks(Collectives* ranks) { return ranks != nullptr && ranks->ranks() > 1 ? ranks : nullptr; }
// Runs `phase` on every rank (Collectives::agree), or here when there are none.
void agree_on(Collectives* dist, const std::function<void()>& phase) {
  if (dist)
    dist->agree(phase);
  else
    phase();
}

// Everything a checkpoint saves and a resumed run restores. The tensors live on the run's device.
struct RunState {
  SaeParams params;
  SaeAdamState adam;
  int64_t step = 0, tokens = 0;
  DatasetScales dataset_scale;  // of its columns (RunColumns::scales)
  Json data_position;  // Batcher::state() after the last batch trained on
  DeadFeatureTracker dead;
  std::optional<L0Controller> controller;  // --target-l0

  TrainingState saved() const {
    TrainingState st;
    st.step = step;
    st.tokens = tokens;
    st.dataset_scale = dataset_scale;
    st.batcher = data_position;
    st.last_fired = dead.last_fired(tokens);
    st.adam.m = adam.m.to(Device::CPU);
    st.adam.v = adam.v.to(Device::CPU);
    st.adam.steps = adam.steps;
    if (controller) st.l0_controller = controller->state();
    return st;
  }
};

// What cfg.json records about the run under "sae_cpp" (SAELens ignores it).
Json run_description(const TrainConfig& c, const Json& data, const RunState& run) {
  Json j = Json::object();
  j["normalization"] = normalization_name(c.normalize);
  j["dataset_scale"] = run.dataset_scale.to_json();
  const bool transcoder = run.params.transcoder;
  j["input_note"] = c.normalize == Normalization::Story ? "inputs must be normalised per story: (x - mean) / std * sqrt(d_in)"
                    : c.normalize == Normalization::Dataset
                        ? (run.dataset_scale.per_block.size() == 1
                               ? "raw activations: trained on inputs times dataset_scale, folded into the weights"
                               : transcoder ? "raw activations: trained on inputs times dataset_scale[0] and the target "
                                              "times dataset_scale[1], folded into the weights"
                                            : "raw activations: trained on each source times its dataset_scale, folded "
                                              "into the weights")
                    : per_token(c.normalize)
                        ? cat("raw activations, each token normalised at inference (normalize_activations ",
                              normalization_name(c.normalize), ")")
                        : std::string("raw activations");
  if (c.apply_b_dec_to_input) j["apply_b_dec_to_input"] = true;  // the folder's cfg says so (checkpoint.cpp)
  j["l1_coefficient"] = c.l1;
  j["lr"] = c.lr;
  j["precision"] = precision_name(c.precision);  // of the GEMMs it trained with; the weights are float32
  j["steps"] = run.step;
  j["tokens"] = run.tokens;
  j["batch"] = c.batch_name();
  j["seed"] = static_cast<int64_t>(c.seed);
  j["data"] = data;
  return j;
}

// config.json: every option plus what was resolved at start.
void write_run_config(const TrainConfig& c, Device device, const TrainingData& data, const RunColumns& columns,
                      const Json& description, const DatasetScales& scales, int64_t max_tokens) {
  Json cfg = c.to_json();
  cfg["resolved"] = Json::object();
  cfg["resolved"]["device"] = device_name(device);
  cfg["resolved"]["dictionary"] = dictionary_kind_name(dictionary_kind(c));
  cfg["resolved"]["d_in"] = columns.d_in;
  if (!columns.target_is_input) cfg["resolved"]["d_out"] = columns.d_out;
  cfg["resolved"]["dataset_scale"] = scales.to_json();
  cfg["resolved"]["data"] = description;
  cfg["resolved"]["max_batch_tokens"] = max_tokens;
  cfg["resolved"]["threads"] = static_cast<int64_t>(cpu_threads());
  if (c.target_l0 > 0) {  // where the L0 controller's lambda lives (l0_controller.h)
    const double mean_squared_norm = columns.input_mean_squared_norm(data);
    cfg["resolved"]["target_l0_lambda_scale"] = lambda_scale(run_unit(c).l0_like_penalty(), mean_squared_norm, c.target_l0);
    cfg["resolved"]["target_l0_mean_squared_norm"] = mean_squared_norm;
  }
  cfg["resolved"]["omp_wait_policy"] = omp_wait_policy();
  write_file_atomic((fs::path(c.out) / "config.json").string(), cfg.dump(2) + "\n");
  std::error_code ec;
  fs::remove(fs::path(c.out) / kPendingConfigFile, ec);  // config.json says all it said
}

// The row metrics.csv and TensorBoard get at a logged step: sums of its n tokens (the whole batch's,
// on several ranks), `raw` the run's own blocks' raw moments, `batch` the input's, the
// reconstruction's and the FVU of the target (the input for an SAE) of width d; dead of features
// latents.
MetricRow metric_row(const RunState& run, const StepSums& sums, const MeanStd& raw, const BatchMetrics& batch,
                     int64_t n, int64_t d, int64_t features, int64_t dead, double lambda, double lr) {
  const double elements = double(n) * double(d);
  const MeanStd &normalized = batch.normalized, &reconstructed = batch.reconstructed;
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
      {"nonzero_proportion", sums.active / (double(n) * double(features))},
      {"l0", sums.active / double(n)},
      {"dead_features", double(dead)},
      {"fvu", batch.fvu},
      {"raw_mean", raw.mean},
      {"raw_std", raw.std},
      {"normalized_mean", normalized.mean},
      {"normalized_std", normalized.std},
      {"reconstructed_mean", reconstructed.mean},
      {"reconstructed_std", reconstructed.std},
  };
}

// The unit's extra column: its auxiliary terms as they enter the loss.
MetricRow with_architecture_metrics(MetricRow row, const RunState& run, const StepSums& sums) {
  if (unit_of(run.params).reports_aux()) row.push_back({"aux_loss", sums.aux});
  return row;
}

// mean_squared_norm: of the run's input (RunColumns::input_mean_squared_norm).
L0ControllerSettings l0_controller_settings(const TrainConfig& c, double mean_squared_norm) {
  L0ControllerSettings s;
  s.scale = lambda_scale(run_unit(c).l0_like_penalty(), mean_squared_norm, c.target_l0);
  s.target = c.target_l0;
  s.ki = c.target_l0_ki;
  s.kp = c.target_l0_kp;
  s.ema = c.target_l0_ema;
  s.max_change = c.target_l0_max_change;
  return s;
}

// The sparsity coefficient of a step: the schedule (--l1, its warm-up), or the L0 controller's once
// the warm-ups are over.
bool controlled(const TrainConfig& c, const RunState& run, int64_t step) {
  return run.controller && step > c.l1_warmup_steps && step > c.lr_warmup_steps;
}

// One SAE of a training process: its start, state, step buffers, logs and result.
struct Member {
  RunStart start;
  DictionaryReads reads;          // what it reads and reconstructs
  RunColumns columns;             // where those are in the data's rows (set once the data is open)
  Json description;               // the data as its cfg.json tells it
  Tensor x_host, target_host;     // its columns of the batch, when they are not the whole row
  Tensor x_device, target_device; // the same on a GPU
  std::optional<RunState> state;  // set once the data is open
  std::unique_ptr<SaeStep> step;
  int64_t encoder_rows = 0;       // a topk's rows of pre-activations at once, set by memory (0: its --encoder-chunk)
  std::unique_ptr<RunLog> log;
  std::unique_ptr<RunFeatureStats> feature_stats;  // what its features fire on (--feature-stats-*)
  TrainResult result;
  std::string name;  // its folder's name, shown in messages when several SAEs train together
  const TrainConfig& config() const { return start.config; }
  RunState& run() { return *state; }
};

// SAEs train together only on the same data stream: every option that shapes the batches, and the
// steps and device, must agree. UsageError naming the first that differs.
void check_same_stream(const TrainConfig& first, const TrainConfig& other) {
  const Json a = data_stream_identity(first), b = data_stream_identity(other);
  for (const auto& [key, value] : a.items())
    if (!b.has(key) || b.at(key) != value)
      throw UsageError(cat("SAEs trained together must share the data: ", other.out, " has ", key, " = ",
                           b.has(key) ? b.at(key).dump() : "(absent)", " but ", first.out, " has ", value.dump()));
}

// The bytes on `device` of what the memory count includes and a member holds already, before the
// count: a resumed (or --init) start's parameters and Adam's moments (on the CPU; `whole`: the run
// of one process takes them as they are, where several ranks each copy their part, latent_slice)
// and feature statistics made or loaded. What the process can get is measured with them resident,
// so they are added back (a resume at 2^20 latents was refused holding its own 19.3 GB).
double held_bytes(const Member& m, Device device, bool whole) {
  double bytes = 0;
  const auto add = [&](const SaeParams& p) {
    for (const auto& [name, t] : p.present())
      if (t->device() == device) bytes += double(t->nbytes());
  };
  if (m.start.params && whole) add(*m.start.params);
  if (m.start.state && whole) {
    add(m.start.state->adam.m);
    add(m.start.state->adam.v);
  }
  const FeatureStats* stats = m.feature_stats ? m.feature_stats->stats() : nullptr;
  if (stats && stats->device() == device)
    bytes += feature_stats_bytes(stats->features(), FeatureStatsOptions{stats->k(), stats->context()});
  return bytes;
}

// Whether two SAEs stand at the same step and data position (so that one pass serves both).
bool same_position(const Member& a, const Member& b) {
  const int64_t s0 = a.start.state ? a.start.state->step : 0, s1 = b.start.state ? b.start.state->step : 0;
  if (s0 != s1) return false;
  if (!a.start.state || !b.start.state) return !a.start.state && !b.start.state;
  return a.start.state->batcher == b.start.state->batcher;
}

// --eval-text where nothing evaluates the checkpoints (a study, a run under mpirun).
void refuse_evaluation(const TrainConfig& c) {
  if (!c.eval_text.empty())
    throw UsageError("--eval-text: checkpoints are evaluated during training by sae_train in one process (not under "
                     "mpirun, not in a study); evaluate them with sae_eval");
}

// --eval-text that is not a regular file (a FIFO, a directory), has no story or not the field
// (--eval-text-field) its first line: refused before the run, not at its first checkpoint.
void check_eval_text(const TrainConfig& c) {
  ::close(open_regular_file(c.eval_text));
  try {
    StoryReader reader(c.eval_text, c.eval_text_field);
    TextStory first;
    if (!reader.next(first)) throw DataError(cat(c.eval_text, ": the text holds no stories"));
  } catch (const DataError& e) {
    throw DataError(cat("--eval-text: ", e.what()));
  }
}

// How a stopped run goes on: its study's command again (the folder above holds study.json), --resume of
// its list (sweep.json), or --resume of the run itself.
std::string going_on(const std::string& out) {
  const fs::path above = fs::path(out).parent_path();
  if (fs::exists(above / kStudyRecordFile)) return "the study's command, run again, goes on from there";
  if (fs::exists(above / "sweep.json")) return cat("--resume ", above.string(), " goes on from there");
  return cat("--resume ", out, " goes on from there");
}

// TrainingInterrupted's message: where the step reached was saved, and how to go on. At the last step
// the final models are saved; what a finished run adds after them (figures, evals.csv) is made when
// it is resumed, which trains nothing more.
std::string interrupted_message(const std::vector<Member>& members, int signal, int64_t step, int64_t steps) {
  const bool last = step == steps;
  const std::string head = cat(signal_name(signal), last ? " at the end of step " : " after step ", step, " of ",
                               steps, ": saved ");
  const std::string folder = last ? std::string("sae") : cat("checkpoints/step_", step);
  const std::string out = members[0].config().out;
  const std::string then = last ? ", and draws the figures" : "";
  if (members.size() == 1)
    return cat(head, (fs::path(out) / folder).string(), " (", going_on(out), then, ")");
  return cat(head, folder, " in each of the ", members.size(), " run folders under ",
             fs::path(out).parent_path().string(), " (", going_on(out), then, ")");
}

// A pass over the data of a --distribute run (train_spread): the SAEs of a group are spread over the
// ranks, and when the language model's work is shared every rank takes part in every pass, with or
// without SAEs of its own in it (then it only computes its share of each chunk).
struct SpreadPass {
  Collectives* all = nullptr;
  std::vector<std::string> reads;  // every activation any SAE of the run reads: each chunk carries them all
  TrainConfig stream;              // the pass's data options (its first SAE's; every SAE's agree)
  Json position;                   // the saved data position it starts from (null: the data's start)
  int64_t start_step = 0;
  bool share = false;              // the model's work is split over the ranks (text, token batches)
  PassShare* out = nullptr;        // what this rank computed
};

// pass: null for one process or a grid of shards x replicas; then members is not empty.
// evaluate: the checkpoint evaluator of runs with --eval-text (null: none).
// in_mpi_job: a rank's own SAEs of a --distribute run (ranks and pass null): a signal ends it as any
// run under mpirun, not with a checkpoint of its own (Ctrl-C's checkpoint is one process's).
std::vector<TrainResult> train_members(std::vector<Member>& members, Collectives* ranks, SpreadPass* pass = nullptr,
                                       const CheckpointEvaluator* evaluate = nullptr, bool in_mpi_job = false);

// The result of a run that was at its last step already: its last logged metrics and final model.
TrainResult finished_result(const RunStart& start) {
  const TrainConfig& config = start.config;
  const TrainingState& state = *start.state;
  TrainResult r;
  r.already_finished = true;
  r.steps = state.step;
  r.tokens = state.tokens;
  r.out_dir = config.out;
  r.model_dir = start.resumed_from;
  r.saelens_note = saelens_note(config);
  r.metrics_csv = (fs::path(config.out) / "metrics.csv").string();
  r.tensorboard_file = (fs::path(config.out) / "tensorboard").string();
  r.wrote_checkpoints = fs::is_directory(fs::path(config.out) / "checkpoints");
  const CsvNumbers metrics = read_csv_numbers(r.metrics_csv);
  if (!metrics.rows.empty())
    for (size_t i = 0; i < metrics.columns.size() && i < metrics.rows.back().size(); ++i)
      r.last_row.push_back({metrics.columns[i], metrics.rows.back()[i]});
  if (!r.last_row.empty()) {
    r.fvu = metric(r.last_row, "fvu");
    r.l0 = metric(r.last_row, "l0");
    r.nonzero_proportion = metric(r.last_row, "nonzero_proportion");
  }
  const DeadFeatureTracker dead(config.dead_window, state.last_fired, state.tokens);
  r.dead_features = dead.dead();
  if (config.data == "synthetic")
    r.concepts = concept_recovery(SyntheticSource(config.synthetic).concepts(), start.params->W_dec,
                                  dead.alive());
  return r;
}

// The dataset scales of `reads` as the resumed runs saved them (each run's are its input's, then a
// transcoder's target's); none for fresh runs. unread_ones: a read no member reads (a --distribute
// pass carries other ranks' reads) gets 1 (its columns are computed and exchanged, never trained on).
std::optional<DatasetScales> saved_scales(const std::vector<Member>& members, const std::vector<std::string>& reads,
                                          bool unread_ones = false) {
  if (!members[0].start.state) return std::nullopt;
  std::vector<double> scales(reads.size(), 0.0);
  for (const Member& m : members) {
    if (!m.start.state) continue;
    std::vector<std::string> own = m.reads.in;
    if (m.reads.out != m.reads.in) own.insert(own.end(), m.reads.out.begin(), m.reads.out.end());
    const std::vector<double>& saved = m.start.state->dataset_scale.per_block;
    if (saved.size() != own.size())
      throw DataError(cat(m.start.resumed_from, ": ", saved.size(), " dataset scales saved for ", own.size(),
                          " activations read"));
    for (size_t k = 0; k < own.size(); ++k) {
      const size_t b = static_cast<size_t>(std::find(reads.begin(), reads.end(), own[k]) - reads.begin());
      if (scales[b] == 0) scales[b] = saved[k];
    }
  }
  for (size_t b = 0; b < reads.size(); ++b)
    if (scales[b] == 0 && unread_ones) {
      bool read = false;
      for (const Member& m : members) {
        read = read || std::find(m.reads.in.begin(), m.reads.in.end(), reads[b]) != m.reads.in.end();
        read = read || std::find(m.reads.out.begin(), m.reads.out.end(), reads[b]) != m.reads.out.end();
      }
      if (!read) scales[b] = 1;
    }
  for (size_t b = 0; b < reads.size(); ++b)
    if (scales[b] == 0)
      throw UsageError(cat("resume: no saved dataset scale for ", reads[b], "; resume these runs separately"));
  return DatasetScales(std::move(scales));
}

// Each SAE of a list in its own run folder (UsageError naming a shared one).
void require_own_folders(const std::vector<TrainConfig>& configs) {
  std::vector<std::string> folders;
  for (const TrainConfig& c : configs) {
    const std::string folder = fs::weakly_canonical(c.resume.empty() ? c.out : c.resume).string();
    if (std::find(folders.begin(), folders.end(), folder) != folders.end())
      throw UsageError(cat("two SAEs trained together would share the folder ", folder));
    folders.push_back(folder);
  }
}

// A crosscoder's sources from text must be different activations: a hook written two ways
// (blocks.0.hook_resid_post is hidden_states[1], i.e. blocks.1.hook_resid_pre) is one source twice.
void require_distinct_sources(const TrainingData& data, const DictionaryReads& reads) {
  if (reads.kind != DictionaryKind::Crosscoder || !reads.text) return;
  std::vector<std::pair<int, HookSite>> seen;
  for (const std::string& read : reads.in) {
    const TextReadName r = parse_text_read(read);
    const DecoderModel& model = r.model == 0 ? *data.model : *data.model_b;
    const int64_t layers = model.config().num_layers;
    const HookSite site = canonical_site(model.resolve(r.site), layers);
    for (size_t i = 0; i < seen.size(); ++i)
      if (seen[i] == std::make_pair(r.model, site))
        throw UsageError(cat("--hooks: ", printable(reads.in[i]), " and ", printable(read),
                             " are the same activations (", hook_name(site), ")"));
    seen.emplace_back(r.model, site);
  }
}

// The data as a run's cfg.json tells it: the shared description with its own reads (and, from text,
// SAELens's hook_name, layer and hidden_states: the input's; a transcoder's target as hook_name_out),
// what the same run trained alone records (a list's members had recorded the list's reads and its
// first member's layer).
Json member_description(const TrainingData& data, const DictionaryReads& reads) {
  Json j = data.description;
  j["dictionary"] = dictionary_kind_name(reads.kind);
  j.erase("reads");
  if (reads.kind != DictionaryKind::Sae || reads.in.size() > 1) {
    Json in = Json::array(), out = Json::array();
    for (const std::string& r : reads.in) in.push_back(Json(r));
    for (const std::string& r : reads.out) out.push_back(Json(r));
    j["reads"] = in;
    if (reads.out != reads.in) j["target_reads"] = out;
  }
  if (!reads.text) return j;
  const HookSite in_site = data.model->resolve(parse_text_read(reads.in[0]).site);
  j["hook_name"] = hook_name(in_site);
  j.erase("layer");
  j.erase("hidden_states");
  const int64_t k = hidden_states_index(in_site, data.num_layers);
  if (k >= 0) j["layer"] = k;
  if (k >= 0) j["hidden_states"] = cat("hidden_states[", k, "]");
  if (j.has("saelens_metadata")) {
    Json& meta = j["saelens_metadata"];
    meta["hook_name"] = hook_name(in_site);
    if (reads.kind == DictionaryKind::Transcoder)
      meta["hook_name_out"] = hook_name(data.model->resolve(parse_text_read(reads.out[0]).site));
    if (reads.kind == DictionaryKind::Crosscoder) {
      Json hooks = Json::array();
      for (const std::string& r : reads.in) hooks.push_back(Json(r));
      meta["crosscoder_hooks"] = hooks;
    }
  }
  return j;
}

// Whether a description holds a file's fingerprint (io/file_fingerprint.h): runs started before
// they were recorded are resumed without the check.
bool records_fingerprints(const Json& j) {
  if (j.is_object()) {
    for (const auto& [key, value] : j.items())
      if (key == "fingerprint" || key == "text_fingerprint" || records_fingerprints(value)) return true;
  } else if (j.is_array()) {
    for (size_t i = 0; i < j.size(); ++i)
      if (records_fingerprints(j.at(i))) return true;
  }
  return false;
}

// A resumed run reads the data it started on: the files' fingerprints (and everything else the
// description says) as its config.json recorded them. DataError otherwise (a replaced or rewritten file would
// continue a run with other data, and another dataset scale, silently).
void check_same_data(const Json& saved, const Json& now, const std::string& out) {
  // What the data is, without what was read from elsewhere (the model folder a cache names may move).
  // Which of its activations the run reads is compared as the reads themselves: the input's hook_name,
  // and each read now among those recorded (a list's members recorded the list's reads and its first
  // member's layer until 2026-12-06; layer and hidden_states only restate hook_name).
  auto data_of = [](const Json& j) {
    if (!j.is_object()) return j;
    Json kept = Json::object();
    for (const auto& [key, value] : j.items())
      if (key != "saelens_metadata" && key != "reads" && key != "target_reads" && key != "layer" &&
          key != "hidden_states" && key != "dictionary")
        kept[key] = value;
    return kept;
  };
  auto reads_recorded = [&] {
    if (!saved.is_object() || !now.is_object()) return true;
    std::vector<Json> recorded;
    for (const char* key : {"reads", "target_reads"})
      if (saved.has(key) && saved.at(key).is_array())
        recorded.insert(recorded.end(), saved.at(key).elements().begin(), saved.at(key).elements().end());
    for (const char* key : {"reads", "target_reads"})
      if (now.has(key) && now.at(key).is_array())
        for (const Json& read : now.at(key).elements())
          if (std::find(recorded.begin(), recorded.end(), read) == recorded.end()) return false;
    return true;
  };
  // A run started before the models' fingerprints were recorded (2026-12-06) is compared without them.
  if (saved.is_null() || !records_fingerprints(saved)) return;
  const Json was = data_of(saved);
  Json now_compared = data_of(now);
  align_recorded_fingerprints(saved, now_compared, {"model_fingerprint", "model_b_fingerprint"});
  if (was == now_compared && reads_recorded()) return;
  const std::string what = was != now_compared
                               ? first_difference(was, now_compared)
                               : cat("reads: ", now.has("reads") ? now.at("reads").dump() : "", " (now) are not among ",
                                     saved.has("reads") ? saved.at("reads").dump() : "none", " (was)");
  throw DataError(cat("--resume ", out, ": the data is not what the run started on (config.json's resolved.data ",
                      printable(what, 400),
                      "); resume it with that data, or start a new run"));
}

// Loaded parameters (--init, --resume) must be the dictionary the options describe.
void check_dictionary_shape(const SaeParams& p, const RunColumns& columns, const DictionaryReads& reads, bool skip,
                            const std::string& out) {
  const char* kind = dictionary_kind_name(reads.kind);
  const int64_t sources = reads.kind == DictionaryKind::Crosscoder ? static_cast<int64_t>(reads.in.size()) : 1;
  if (p.d_in() != columns.d_in || p.d_out() != columns.d_out)
    throw DataError(cat(out, ": the checkpoint maps width ", p.d_in(), " to ", p.d_out(), " but this ", kind,
                        " reads ", columns.d_in, " and reconstructs ", columns.d_out));
  if (p.transcoder != (reads.kind == DictionaryKind::Transcoder) || p.sources != sources)
    throw DataError(cat(out, ": the checkpoint is ", p.transcoder ? "a transcoder" : p.sources > 1 ? "a crosscoder" : "an SAE",
                        ", the options describe a ", kind));
  if (p.W_skip.defined() != skip)
    throw DataError(cat(out, ": the checkpoint's transcoder ", p.W_skip.defined() ? "has" : "has no",
                        " skip path; give --skip ", p.W_skip.defined() ? "" : "only ", "to match it"));
}

}  // namespace

std::vector<TrainResult> train_together(std::vector<TrainConfig> requested, Collectives* ranks,
                                        const CheckpointEvaluator& evaluate) {
  if (requested.empty()) throw UsageError("train_together: no runs");
  // A distributed run (docs/distributed.md): rank 0 writes what one process writes (logs, the
  // folder); latents [first_latent, first_latent + F/S) are this rank's; `agree` runs a phase on
  // every rank and stops them all when it fails on one.
  Collectives* const dist = several_ranks(ranks);
  const bool lead = dist == nullptr || dist->rank() == 0;
  auto agree = [dist](const std::function<void()>& phase) { agree_on(dist, phase); };
  // ---- where each run starts ----
  require_own_folders(requested);
  for (const TrainConfig& c : requested) {
    if (!evaluate) refuse_evaluation(c);
    if (!c.eval_text.empty()) agree([&] { check_eval_text(c); });
  }
  // Runs at their last step already (a retry after a crash while the final outputs were written) are
  // not trained: their results are read back. The others train in groups that stand at the same step
  // and data position (after a crash between their checkpoints, some may be a checkpoint behind):
  // each group is one pass over the data; the results are in the order of `requested`.
  std::vector<std::optional<TrainResult>> results(requested.size());
  std::vector<std::vector<Member>> groups;
  std::vector<std::vector<size_t>> group_index;
  std::optional<TrainConfig> first;
  for (size_t i = 0; i < requested.size(); ++i) {
    // Rank 0 owns the folder (lock, recovery, overwrite); then the other ranks read it.
    RunStart start;
    agree([&] {
      if (lead) start = start_run(requested[i]);
    });
    agree([&] {
      if (!lead) start = start_run(requested[i], /*owner=*/false);
    });
    if (start.finished) {
      agree([&] { results[i] = finished_result(start); });
      // Its final model saved without evaluation (a signal at the final save): evaluated now.
      const fs::path model = fs::path(start.config.out) / "sae";
      if (evaluate && lead && !start.config.eval_text.empty() && !fs::exists(model / "eval.json")) {
        Progress progress(start.config.progress, results[i]->steps, results[i]->steps);
        try {
          progress.message(
              evaluate(start.config, model.string(), model.string(), results[i]->steps, results[i]->tokens));
        } catch (const std::exception& e) {
          progress.warning(cat("--eval-text: the final model was not evaluated (", e.what(), ")"));
        }
      }
      continue;
    }
    // A resumed run's own (--resume keeps its --eval-text unless one is given: checked above then).
    if (start.config.eval_text != requested[i].eval_text) {
      if (!evaluate) refuse_evaluation(start.config);
      if (!start.config.eval_text.empty()) agree([&] { check_eval_text(start.config); });
    }
    Member m;
    m.start = std::move(start);
    m.name = requested.size() > 1 ? fs::path(m.config().out).filename().string() : "";
    agree([&] {
      if (first) check_same_stream(*first, m.config());
    });
    if (!first) first = m.config();
    size_t g = 0;
    while (g < groups.size() && !same_position(groups[g].front(), m)) ++g;
    if (g == groups.size()) {
      groups.emplace_back();
      group_index.emplace_back();
    }
    groups[g].push_back(std::move(m));
    group_index[g].push_back(i);
  }
  for (size_t g = 0; g < groups.size(); ++g) {
    std::vector<TrainResult> trained = train_members(groups[g], ranks, nullptr, evaluate ? &evaluate : nullptr);
    for (size_t k = 0; k < trained.size(); ++k) results[group_index[g][k]] = std::move(trained[k]);
  }
  std::vector<TrainResult> out;
  for (std::optional<TrainResult>& r : results) out.push_back(std::move(*r));
  return out;
}

SpreadResult train_spread(const std::vector<TrainConfig>& requested, Collectives& all) {
  if (requested.empty()) throw UsageError("train_spread: no runs");
  const size_t count = requested.size();
  const int ranks = all.ranks();
  auto mine = [&](size_t i) { return static_cast<int>(i % static_cast<size_t>(ranks)) == all.rank(); };
  for (const TrainConfig& c : requested) refuse_evaluation(c);
  // ---- where each SAE starts: its rank owns its folder (lock, recovery, overwrite) ----
  std::vector<std::optional<RunStart>> starts(count);
  all.agree([&] {
    require_own_folders(requested);
    for (size_t i = 0; i < count; ++i)
      if (mine(i)) starts[i] = start_run(requested[i]);
  });
  // Every rank learns every SAE's configuration and position (each rank's, broadcast in turn).
  Json own = Json::array();
  for (size_t i = 0; i < count; ++i) {
    if (!mine(i)) continue;
    const RunStart& start = *starts[i];
    Json e = Json::object();
    e["index"] = static_cast<int64_t>(i);
    e["finished"] = start.finished;
    e["resumed"] = start.state.has_value();
    e["step"] = start.state ? start.state->step : int64_t{0};
    e["position"] = start.state ? start.state->batcher : Json();
    e["config"] = start.config.to_json();
    own.push_back(e);
  }
  std::vector<Json> entries(count);
  for (int r = 0; r < ranks; ++r) {
    const Json part = Json::parse(all.broadcast(own.dump(), r));
    for (const Json& e : part.elements()) entries[static_cast<size_t>(e.at("index").as_int())] = e;
  }
  std::vector<TrainConfig> configs(count);
  std::vector<size_t> training;  // those not at their last step already, in order
  SpreadResult out;
  std::vector<std::optional<TrainResult>> results(count);
  all.agree([&] {
    for (size_t i = 0; i < count; ++i) {
      configs[i] = TrainConfig::from_json(entries[i].at("config"));
      if (entries[i].at("finished").as_bool()) {
        if (mine(i)) results[i] = finished_result(*starts[i]);
        continue;
      }
      if (!training.empty()) check_same_stream(configs[training.front()], configs[i]);
      training.push_back(i);
    }
  });
  // The passes: SAEs standing at the same step and data position train in one (a crash between
  // their checkpoints may leave some a checkpoint behind), in the order of their first SAE.
  std::vector<std::string> keys;
  std::vector<std::vector<size_t>> groups;
  for (size_t i : training) {
    const Json& e = entries[i];
    const std::string key =
        e.at("resumed").as_bool() ? cat(e.at("step").as_int(), "|", e.at("position").dump()) : std::string("fresh");
    const size_t g = static_cast<size_t>(std::find(keys.begin(), keys.end(), key) - keys.begin());
    if (g == keys.size()) {
      keys.push_back(key);
      groups.emplace_back();
    }
    groups[g].push_back(i);
  }
  // Text through the model in token batches: the ranks share its work, so every rank takes part in
  // every pass. Otherwise each rank reads the data for its own SAEs alone.
  const bool share = ranks > 1 && !training.empty() && configs[training.front()].data == "text" &&
                     configs[training.front()].batch_tokens > 0;
  std::vector<std::string> reads;  // every activation any SAE reads, in the order of the SAEs
  for (size_t i : training) {
    const DictionaryReads r = dictionary_reads(configs[i]);
    for (const std::vector<std::string>* list : {&r.in, &r.out})
      for (const std::string& read : *list)
        if (std::find(reads.begin(), reads.end(), read) == reads.end()) reads.push_back(read);
  }
  for (const std::vector<size_t>& group : groups) {
    std::vector<Member> members;
    std::vector<size_t> index;
    for (size_t i : group) {
      if (!mine(i)) continue;
      Member m;
      m.start = std::move(*starts[i]);
      m.name = count > 1 ? fs::path(m.config().out).filename().string() : "";
      members.push_back(std::move(m));
      index.push_back(i);
    }
    if (!share) {  // this rank's SAEs alone, as one process trains them
      if (members.empty()) continue;
      std::vector<TrainResult> trained = train_members(members, nullptr, nullptr, nullptr, /*in_mpi_job=*/true);
      for (size_t k = 0; k < trained.size(); ++k) results[index[k]] = std::move(trained[k]);
      continue;
    }
    SpreadPass pass;
    pass.all = &all;
    pass.reads = reads;
    pass.stream = configs[group.front()];
    pass.position = entries[group.front()].at("position");
    pass.start_step = entries[group.front()].at("step").as_int();
    pass.share = share;
    out.passes.emplace_back();
    pass.out = &out.passes.back();
    std::vector<TrainResult> trained = train_members(members, nullptr, &pass);
    for (size_t k = 0; k < trained.size(); ++k) results[index[k]] = std::move(trained[k]);
  }
  for (size_t i = 0; i < count; ++i)
    if (mine(i)) out.results.push_back(std::move(*results[i]));
  return out;
}

namespace {

// One pass over the data for SAEs at the same step and data position.
// ranks: as train_together's; every rank trains the same group.
// pass: a --distribute pass (SpreadPass); members are this rank's SAEs of it (maybe none).
std::vector<TrainResult> train_members(std::vector<Member>& members, Collectives* ranks, SpreadPass* pass,
                                       const CheckpointEvaluator* evaluate, bool in_mpi_job) {
  // A distributed run (docs/distributed.md): rank 0 writes what one process writes (logs, the
  // folder); latents [first_latent, first_latent + F/S) are this rank's; `agree` runs a phase on
  // every rank and stops them all when it fails on one. A --distribute pass: every rank writes its
  // own SAEs' folders, and every rank of the run agrees on each phase (each makes the same calls,
  // whatever its number of SAEs).
  Collectives* const dist = several_ranks(ranks);
  const bool lead = dist == nullptr || dist->rank() == 0;
  Collectives* const agreeing = dist ? dist : pass ? several_ranks(pass->all) : nullptr;
  auto agree = [agreeing](const std::function<void()>& phase) { agree_on(agreeing, phase); };
  if (members.empty() && !pass) throw Error("train_members: no SAEs");
  const TrainConfig& shared = members.empty() ? pass->stream : members[0].config();
  const int64_t shards = dist ? dist->shards() : 1;
  agree([&] {
    for (const Member& m : members)
      if (m.config().features % shards != 0)
        throw UsageError(cat("--shards ", shards, " does not divide --features ", m.config().features,
                             " (each shard holds F / S latents)"));
    if (spans(dist, Group::Replicas) && shared.device_data == DeviceDataMode::On)
      throw UsageError("--device-data on cannot split batches between data-parallel replicas yet (their batch metrics "
                       "are summed on the host): leave it at auto or off");
  });
  // Where the pass starts: the saved data position of its resumed SAEs (null: the data's start).
  const Json resume_position = pass ? pass->position
                               : members[0].start.state ? members[0].start.state->batcher
                                                        : Json();
  if (shared.threads > 0) set_cpu_threads(static_cast<int>(shared.threads));
  const Device device = resolve_device(shared.device);
  const ScopedMatmulPrecision precision(shared.precision);  // the run's GEMMs (tensor/precision.h); put back after
  // Every activation any of them reads, once: one pass of the data (of each model) serves them all.
  std::vector<std::string> reads;
  auto add_read = [&](const std::string& r) {
    if (std::find(reads.begin(), reads.end(), r) == reads.end()) reads.push_back(r);
  };
  if (pass) reads = pass->reads;  // every rank's: the chunks carry them all
  for (Member& m : members) {
    m.reads = dictionary_reads(m.config());
    for (const std::string& r : m.reads.in) add_read(r);
    for (const std::string& r : m.reads.out) add_read(r);
  }
  if (pass && reads.size() != pass->reads.size()) throw Error("train_members: an SAE reads what the pass does not");
  TrainingData data;
  agree([&] {
    // A rank without SAEs in the pass normalises nothing it trains on: no dataset scale to estimate.
    const std::optional<DatasetScales> scales =
        members.empty() ? std::optional<DatasetScales>(DatasetScales(std::vector<double>(reads.size(), 1.0)))
                        : saved_scales(members, reads, /*unread_ones=*/pass != nullptr);
    data = open_training_data(shared, reads, device, scales);
  });
  const int64_t d = data.d;
  BatchSource& batcher = *data.batches;
  const int64_t batch_max_tokens = batcher.max_batch_tokens();  // the whole batch's, before a replica's part
  if (batch_max_tokens > 65536)
    throw UsageError(cat("the longest story has ", batch_max_tokens, " tokens; story batches above 65536 tokens are not "
                         "supported: use --batch N (N <= 65536)"));
  const SyntheticSource* synthetic = data.synthetic;
  // Before any batch is drawn (the geometric median's, a restore): the batches record their origins.
  // (Several ranks: not gathered; docs/distributed.md.)
  for (Member& m : members) {
    TrainConfig watched = m.config();
    if (dist) watched.feature_stats_steps = 0;
    m.feature_stats = std::make_unique<RunFeatureStats>(watched, device, batcher, m.start.resumed_from,
                                                        m.start.state ? m.start.state->step : 0,
                                                        member_description(data, m.reads));
  }

  // What each SAE's step will hold (memory_check.h). A topk SAE whose --encoder-chunk is 0 computes
  // its pre-activations in chunks when with the whole batch's the run would need more than 90% of what
  // the process can get (of a GPU's free memory), counting 3.5 copies of the parameters on the CPU (4
  // at bf16 and on a GPU; one more for a step that keeps every gradient), the feature statistics and,
  // on the CPU, a 1 GB margin (ChunkBudget). A run that cannot fit even so is refused before its SAEs
  // are made; on a GPU they live there, and the device's allocator says so itself.
  {
    std::vector<SaeFootprint> footprints;
    std::vector<bool> chunkable;
    const int64_t replicas = dist ? dist->replicas() : 1;
    for (const Member& m : members) {
      const RunColumns columns = run_columns(data, m.reads.in, m.reads.out);
      const int64_t features = m.start.params ? m.start.params->d_sae() : m.config().features;
      const int64_t latents = features / shards, tokens = (batch_max_tokens + replicas - 1) / replicas;
      const ArchUnit& unit = run_unit(m.config());
      const int64_t rows = unit.pre_activation_rows(arch_settings(m.config()), tokens);
      footprints.push_back({columns.d_in, columns.d_out, latents, rows, shared.precision == Precision::BF16 ? 2 : 4});
      footprints.back().fewer_rows = unit.chunks_encoder() && rows > 1;
      footprints.back().gradient_copies =
          SaeStep::keeps_every_gradient(replicas > 1, m.config().max_grad_norm, m.config().apply_b_dec_to_input) ? 1.0
                                                                                                                 : 0.0;
      if (!dist && m.config().feature_stats_steps > 0)  // (several ranks gather none)
        footprints.back().stats_bytes = feature_stats_bytes(
            latents, FeatureStatsOptions{m.config().feature_stats_k, m.config().feature_stats_context});
      chunkable.push_back(unit.chunks_encoder() && m.config().encoder_chunk == 0);
    }
    agree([&] {
      HostMemory host = device == Device::CPU ? available_host_memory() : HostMemory{};
      double held = 0;
      for (const Member& m : members) held += held_bytes(m, device, dist == nullptr);
      if (host.bytes >= 0 && held > 0) {
        host.bytes += held;
        host.source += ", and what the run holds already";
      }
      const double can_get = device == Device::CPU ? host.bytes : double(cuda_free_bytes()) + held;
      ChunkBudget budget;
      budget.bytes = can_get < 0 ? -1.0 : 0.9 * can_get;
      budget.parameter_copies = device == Device::CPU && shared.precision != Precision::BF16 ? 3.5 : 4.0;
      budget.other_bytes = device == Device::CPU ? 1e9 : 0.0;
      const std::vector<int64_t> rows = pre_activation_rows_that_fit(footprints, chunkable, budget);
      double whole = budget.other_bytes;  // what the budget counts with every SAE's whole batch
      for (const SaeFootprint& s : footprints) whole += chunk_budget_need(s, s.tokens, budget);
      for (size_t i = 0; i < members.size(); ++i) {
        if (rows[i] == footprints[i].tokens) continue;
        members[i].encoder_rows = rows[i];
        members[i].result.memory_note =
            cat("the encoder's pre-activations in chunks of ", rows[i], " of the batch's ", footprints[i].tokens,
                " tokens (--encoder-chunk 0: with the whole batch's the run would need about ", format_bytes(whole),
                ", more than 90% of the ", format_bytes(can_get), " ",
                device == Device::CPU ? "this process can get" : "free on the GPU", ")");
        footprints[i].tokens = rows[i];
        footprints[i].fewer_rows = rows[i] > 1;
      }
      if (device == Device::CPU) check_host_memory(footprints, host);
    });
  }

  // Every rank makes the whole SAE's first parameters (the same numbers as one process: a fresh b_dec
  // at the geometric median of the whole first batches) and keeps its latents; then a replica reads
  // only its part of each batch.
  std::vector<SaeParams> firsts;
  agree([&] {  // one phase for all of them (a --distribute pass: every rank agrees as often)
    for (Member& m : members) {
      m.columns = run_columns(data, m.reads.in, m.reads.out);
      const RunColumns& columns = m.columns;
      // --target-l0 without --l1: the controller starts at the data's scale, which the run records as its l1.
      if (m.config().target_l0 > 0 && m.config().l1 == 0)
        m.start.config.l1 = l0_controller_settings(m.config(), columns.input_mean_squared_norm(data)).scale;
      if (m.reads.kind == DictionaryKind::Crosscoder)
        for (size_t b : columns.in)
          if (data.widths[b] != data.widths[columns.in[0]])
            throw DataError(cat("a crosscoder's sources must have one width: ", data.reads[columns.in[0]], " has ",
                                data.widths[columns.in[0]], ", ", data.reads[b], " has ", data.widths[b]));
      require_distinct_sources(data, m.reads);
      m.description = member_description(data, m.reads);
      check_same_data(m.start.resolved_data, m.description, m.config().out);
      // A fresh b_dec at the geometric median is taken from the first normalised batches.
      firsts.push_back(m.start.params ? initial_params(m.start, columns.d_in) : fresh_params(m.config(), data, columns));
      check_dictionary_shape(firsts.back(), columns, m.reads, m.config().skip,
                             m.config().init.empty() ? m.config().out : m.config().init);
    }
  });
  // A replica reads its rows of each batch; text sources run the model on their share of the text and
  // complete the rest by a sum over the replicas (host floats through a tensor).
  auto sum_over_replicas = [dist](float* values, int64_t count) {
    Tensor t = Tensor::from_data(values, Shape{count});
    dist->sum(Group::Replicas, t);
    std::memcpy(values, t.data<float>(), sizeof(float) * static_cast<size_t>(count));
  };
  if (dist) agree([&] { batcher.set_part(dist->replica(), dist->replicas(), sum_over_replicas); });
  // A --distribute pass: every rank runs the model on its share of each chunk's windows and one sum
  // over all of them completes the chunk (after the geometric median's sample above, which each rank
  // that needs it draws alone, before anything is shared; the source is back at its start then).
  auto sum_over_all = [pass](float* values, int64_t count) {
    Tensor t = Tensor::from_data(values, Shape{count});
    pass->all->sum(Group::All, t);
    std::memcpy(values, t.data<float>(), sizeof(float) * static_cast<size_t>(count));
  };
  if (pass && pass->share)
    agree([&] {
      if (!batcher.share_computation(pass->all->rank(), pass->all->ranks(), sum_over_all))
        throw Error("train_members: the data cannot share its computation over the ranks");
    });
  const int64_t max_tokens = batcher.max_batch_tokens();

  for (size_t i = 0; i < members.size(); ++i) {
    Member& m = members[i];
    const TrainConfig& config = m.config();
    const int64_t latents = config.features / shards, first_latent = dist ? dist->shard() * latents : 0;
    auto mine = [&](const SaeParams& whole) { return dist ? whole.latent_slice(first_latent, first_latent + latents) : whole; };
    const RunColumns& columns = m.columns;
    const SaeParams first = mine(firsts[i]);
    m.state = RunState{first.to(device), {}, 0, 0, columns.scales(data), Json(),
                     DeadFeatureTracker(latents, config.dead_window), std::nullopt};
    RunState& run = m.run();
    // Fresh moments, or (below) the resumed ones, never both at once: at 2^20 latents each pair is 12.9 GB.
    if (!m.start.state) run.adam = SaeAdamState::zeros_like(run.params, config.beta1, config.beta2, config.eps);
    run.adam.beta1 = config.beta1;
    run.adam.beta2 = config.beta2;
    run.adam.eps = config.eps;
    if (config.target_l0 > 0) run.controller.emplace(l0_controller_settings(config, columns.input_mean_squared_norm(data)), config.l1);
    if (m.start.state) {
      const TrainingState& st = *m.start.state;
      if (st.dataset_scale.per_block != run.dataset_scale.per_block)
        throw UsageError(cat("SAEs trained together must share the dataset scale: ", config.out, " has ",
                             st.dataset_scale.to_json().dump(), ", ", shared.out, " has ",
                             run.dataset_scale.to_json().dump()));
      run.step = st.step;
      run.tokens = st.tokens;
      run.adam.m = mine(st.adam.m).to(device);
      run.adam.v = mine(st.adam.v).to(device);
      run.adam.steps = st.adam.steps;
      m.start.state->adam.m = m.start.state->adam.v = SaeParams();  // the run's own now (a copy on a GPU or a shard)
      run.dead = DeadFeatureTracker(config.dead_window,
                                    std::vector<int64_t>(st.last_fired.begin() + first_latent,
                                                         st.last_fired.begin() + first_latent + latents),
                                    run.tokens);
      if (run.controller) {
        if (st.l0_controller.is_null())
          throw DataError(cat(m.start.resumed_from, ": --target-l0 run without the controller's state"));
        try {
          run.controller->restore(st.l0_controller);
        } catch (const DataError& e) {
          throw DataError(cat(m.start.resumed_from, "/training_state.safetensors: ", e.what()));
        }
      }
    }
    const StepShape shape{max_tokens, columns.d_in, columns.d_out, latents, first_latent, config.features, batch_max_tokens};
    ArchSettings settings = arch_settings(config);
    if (m.encoder_rows > 0) settings.set("encoder-chunk", Json(m.encoder_rows));  // the rows that fit (above)
    m.step = std::make_unique<SaeStep>(run_unit(config), settings, shape, DType::F32, device);
    m.step->set_collectives(dist);
    m.step->set_max_grad_norm(config.max_grad_norm);
    m.step->set_input_centring(config.apply_b_dec_to_input);
    m.step->set_dead_clock(run.dead.clocks());  // AuxK's, from the tracker
    // Buffers for its own columns, made once.
    if (!columns.whole_row) m.x_host = Tensor::empty(Shape{max_tokens, columns.d_in});
    if (!columns.target_is_input) m.target_host = Tensor::empty(Shape{max_tokens, columns.d_out});
    if (device != Device::CPU && !columns.whole_row)
      m.x_device = Tensor::empty(Shape{max_tokens, columns.d_in}, DType::F32, device);
    if (device != Device::CPU && !columns.target_is_input)
      m.target_device = Tensor::empty(Shape{max_tokens, columns.d_out}, DType::F32, device);
  }
  if (!resume_position.is_null()) batcher.restore(resume_position);  // a shared pass: re-fills its chunk together

  // ---- outputs (rank 0's) ----
  agree([&] {
    if (!lead) return;
    for (Member& m : members) {
      fs::create_directories(m.config().out);
      if (m.start.replaces_run) remove_replaced_run(m.config().out);
      keep_final_model(m.start);
      write_run_config(m.config(), device, data, m.columns, m.description, m.run().dataset_scale, batch_max_tokens);
      m.log = std::make_unique<RunLog>(m.config().out, m.run().step);
    }
  });
  for (Member& m : members) {
    m.result.device = device;
    m.result.out_dir = m.config().out;
  }
  // A fresh run that fails before its first step (a story longer than the context, an empty corpus)
  // leaves no run behind: the corrected command would be refused as "already holds a run".
  struct UnstartedRuns {
    std::vector<Member>& members;
    bool lead;
    ~UnstartedRuns() {
      if (!lead || std::uncaught_exceptions() == 0) return;
      for (Member& m : members) {
        if (m.start.state || !m.config().resume.empty() || m.run().step > 0) continue;
        // Its own files only: another run's event files may share tensorboard/.
        std::error_code ec;
        const fs::path out(m.config().out);
        for (const char* name : {"config.json", "metrics.csv"}) fs::remove(out / name, ec);
        if (m.log) fs::remove(m.log->tensorboard_path(), ec);
        fs::remove(out / "tensorboard", ec);  // only when that left it empty
      }
    }
  } unstarted_runs{members, lead};
  const int64_t start_step = members.empty() ? pass->start_step : members[0].run().step, steps = shared.steps;
  Progress progress(lead && !members.empty() ? shared.progress : ProgressMode::None, steps, start_step,
                    members.size() > 1 ? cat(members.size(), " SAEs, shown: ", members[0].name) : "");
  if (lead)
    for (Member& m : members)
      for (const std::string& warning : m.start.warnings) progress.warning(m.name.empty() ? warning : m.name + ": " + warning);
  if (dist && lead && !members.empty() && members[0].config().was_given("feature-stats-steps") &&
      members[0].config().feature_stats_steps > 0)
    progress.warning("--feature-stats-steps: feature statistics are not gathered by a run over several ranks "
                     "(--shards, replicas; --distribute gathers them): none are written");
  auto dead_features = [&](Member& m) { return sum_over(dist, Group::Shards, m.run().dead.dead()); };
  auto report_concepts = [&](Member& m, const char* when) {
    ConceptRecovery r = concept_recovery(synthetic->concepts(), m.run().params.W_dec, m.run().dead.alive(),
                                         0.9, dist);
    char line[300];
    std::snprintf(line, sizeof line, "%s%s%s step %lld: concept recovery MMCS %.3f, recovered %.1f%%, purity %.1f%%",
                  m.name.c_str(), m.name.empty() ? "" : ": ", when, (long long)m.run().step, r.mmcs, 100 * r.recovered,
                  100 * r.purity);
    if (lead) progress.message(line);
    return r;
  };
  // evaluated: --eval-text's evaluation of the folder (not for the checkpoint a signal asks for: a
  // scheduler's grace period is short). A failing evaluation costs its eval.json only (a warning).
  auto save = [&](Member& m, const std::string& dir, bool evaluated = true) {
    const TrainingState st = m.run().saved();
    const Json description = run_description(m.config(), m.description, m.run());
    if (dist) {
      const int64_t latents = m.config().features / shards;
      save_sharded_checkpoint(*dist, dir, m.run().params, dist->shard() * latents, m.config().features, description,
                              st);
      return;
    }
    save_checkpoint(dir, m.run().params, description, &st, [&](const std::string& folder) {
      m.feature_stats->write(folder);
      if (!evaluate || m.config().eval_text.empty() || !evaluated) return;
      const std::string who = m.name.empty() ? "" : m.name + ": ";
      try {
        progress.message(who + (*evaluate)(m.config(), folder, dir, st.step, st.tokens));
      } catch (const std::exception& e) {  // (an allocation too: the checkpoint is what matters)
        progress.warning(cat(who, "--eval-text: step ", st.step, " was not evaluated (", e.what(),
                             "); its checkpoint is saved without eval.json"));
      }
    });
  };

  // ---- buffers, allocated once ----
  // --device-data: batches reach the device through a BatchUpload (or are made there), and the batch
  // metrics are computed there (sae/train/batch_upload.h); otherwise a plain copy into x_device. Only
  // when every dictionary reads the whole row as its input and target (SAEs, crosscoders): the
  // column gathers of transcoders read the host batch, and they take the plain path.
  const bool whole_rows_only = std::all_of(members.begin(), members.end(), [](const Member& m) {
    return m.columns.whole_row && m.columns.target_is_input;
  });
  // Data-parallel replicas take the plain path too (their metrics are summed over them on the host).
  const bool device_data = whole_rows_only && !spans(dist, Group::Replicas) && (shared.device_data == DeviceDataMode::On ||
                                               (shared.device_data == DeviceDataMode::Auto && device != Device::CPU));
  std::unique_ptr<BatchUpload> upload = device_data ? make_batch_upload(device, max_tokens, d) : nullptr;
  // With --device-data the steps' loss sums stay on the device too (read back in the loop where they
  // are needed), except where the L0 controller reads them every step.
  for (Member& m : members) m.step->set_sums_on_device(device_data && !m.run().controller);
  batcher.set_generate_on_device(device_data);
  Tensor x_device = device == Device::CPU || device_data ? Tensor() : Tensor::empty(Shape{max_tokens, d}, DType::F32, device);
  int64_t widest_out = 0;
  for (const Member& m : members) widest_out = std::max(widest_out, m.columns.d_out);
  Tensor reconstruction_host = device_data ? Tensor() : Tensor::empty(Shape{max_tokens, widest_out});
  std::vector<Tensor> replica_counts;  // the firing counts summed over replicas, made once
  for (const Member& m : members) {
    const bool replicated = spans(dist, Group::Replicas);
    replica_counts.push_back(replicated ? Tensor::empty(Shape{m.config().features / shards}, DType::F32, device) : Tensor());
  }
  const bool whole_rows_used =
      std::any_of(members.begin(), members.end(), [](const Member& m) { return m.columns.whole_row; });
  // The next batch is prepared on a worker thread while a GPU step runs (--prefetch auto). Not when
  // that means running the language model on the GPU from a second thread (one stream, one handle),
  // nor when text batches make collective calls (replicas), which must come from this thread.
  const bool background =
      (shared.prefetch == PrefetchMode::On || (shared.prefetch == PrefetchMode::Auto && device != Device::CPU)) &&
      !(data.model && device != Device::CPU) && !(data.model && spans(dist, Group::Replicas)) &&
      !(pass && pass->share);
  const Json start_position = batcher.state();  // read before the worker starts
  for (Member& m : members) m.run().data_position = start_position;
  // (destroyed before `upload`; one batch per step to go: none is prepared past the last step)
  BatchPrefetcher prefetcher(batcher, d, background, upload.get(), std::max<int64_t>(0, steps - start_step));

  // ---- the loop: each batch goes through every SAE ----
  // Ctrl-C or a scheduler's SIGTERM (interrupt.h): the step under way when the loop sees it is saved
  // as a checkpoint of every SAE, then TrainingInterrupted. One process only: ranks would first have
  // to agree on the step (a run under mpirun, even of one rank, ends on the signal as before: --resume
  // goes on from its last checkpoint).
  std::optional<StopOnSignal> stop_on_signal;
  if (ranks == nullptr && pass == nullptr && !in_mpi_job) stop_on_signal.emplace();
  if (dist) dist->reset_stats();
  const auto loop_begin = std::chrono::steady_clock::now();
  for (int64_t this_step = start_step + 1; this_step <= steps; ++this_step) {
    const PreparedBatch& batch = prefetcher.next();
    const int signal_seen = stop_on_signal ? stop_on_signal->requested() : 0;
    const bool stopping = signal_seen != 0 && this_step < steps;
    const int64_t n = batch.tokens;
    Tensor rows = upload ? batch.device.slice_rows(0, n) : batch.normalized.slice_rows(0, n);
    if (!upload && device != Device::CPU && whole_rows_used) {
      rows = x_device.slice_rows(0, n);
      cuda_copy_to_device(rows.raw(), batch.normalized.raw(), n * d * sizeof(float));
    }
    for (size_t i = 0; i < members.size(); ++i) {
      Member& m = members[i];
      const TrainConfig& config = m.config();
      const RunColumns& columns = m.columns;
      RunState& run = m.run();
      // Its input and target: the whole row, or its columns of it.
      const float* x_host = upload ? nullptr : batch.normalized.data<float>();  // --device-data: rows are on the device
      const float* target_host = x_host;
      Tensor x = rows, target;
      if (!columns.whole_row) {
        columns.gather_input(data, batch.normalized.data<float>(), n, m.x_host.data<float>());
        x_host = target_host = m.x_host.data<float>();
        x = m.x_host.slice_rows(0, n);
        if (device != Device::CPU) {
          x = m.x_device.slice_rows(0, n);
          cuda_copy_to_device(x.raw(), m.x_host.raw(), n * columns.d_in * sizeof(float));
        }
      }
      if (!columns.target_is_input) {
        columns.gather_target(data, batch.normalized.data<float>(), n, m.target_host.data<float>());
        target_host = m.target_host.data<float>();
        target = m.target_host.slice_rows(0, n);
        if (device != Device::CPU) {
          target = m.target_device.slice_rows(0, n);
          cuda_copy_to_device(target.raw(), m.target_host.raw(), n * columns.d_out * sizeof(float));
        }
      }
      const bool control = controlled(config, run, this_step);
      const double lambda = control ? run.controller->lambda() : config.l1_at(this_step);
      const double lr = config.lr_at(this_step);
      StepSums sums = target.defined() ? m.step->train_step(run.params, run.adam, x, target, lambda, lr)
                                       : m.step->train_step(run.params, run.adam, x, lambda, lr);
      // Pending sums (--device-data: still on the device) are read back only where something needs
      // them: the metrics row, the L0 controller, a redraw of the progress line, and before every
      // save, so that a diverged run never writes its weights. The step has applied its update by
      // then; a non-finite loss sum of any step since the last read makes the read's loss NaN
      // (UnitStep::pending_sums), even where the later steps' losses are finite.
      const bool log_step = this_step % config.log_every == 0 || this_step == steps;
      const bool save_step =
          (this_step % config.checkpoint_every == 0 && this_step < steps) || this_step == steps || stopping;
      const bool was_pending = sums.pending;
      if (sums.pending && (control || log_step || save_step || (i == 0 && progress.due(this_step))))
        sums = m.step->read_sums();
      if (!sums.pending && !finite(sums)) {
        // What to do next depends on what was saved: --resume keeps the run's --lr, so a lower one
        // is a new run from the newest checkpoint (--init); with none, the data's scale may be it.
        auto shown = [](double v) {
          char text[32];
          std::snprintf(text, sizeof text, "%.6g", std::isnan(v) ? std::fabs(v) : v);  // "nan", never "-nan"
          return std::string(text);
        };
        std::string newest;
        try {
          newest = latest_checkpoint_in_run(m.config().out).value_or("");
        } catch (const Error&) {
        }
        throw TrainingDiverged(cat(
            m.name, m.name.empty() ? "" : ": ", "training diverged ", was_pending ? "by step " : "at step ",
            this_step, ": loss is ", shown(sums.loss), " (rec ", shown(sums.rec), ", l1 ", shown(sums.l1), "); ",
            newest.empty()
                ? std::string("no checkpoint was saved: lower --lr (or --l1), or look at the data's scale "
                              "(--normalize dataset or story)")
                : cat("nothing was saved after ", newest, ": start a run from it with a lower learning rate "
                      "(--init ", newest, " --lr ...; --resume keeps the run's --lr)")));
      }
      run.step = this_step;
      run.data_position = batch.position;
      const int64_t batch_tokens = dist ? sums.tokens : n;  // every replica's (the sums are the whole batch's)
      run.tokens += batch_tokens;
      if (control) run.controller->update(sums.active / double(batch_tokens));
      Tensor counts = m.step->feature_counts();  // on the step's device: nothing read back here
      if (spans(dist, Group::Replicas)) {  // a latent fired if it fired on any replica's tokens
        copy_(replica_counts[i], counts);
        dist->sum(Group::Replicas, replica_counts[i]);
        counts = replica_counts[i];
      }
      run.dead.update(counts, batch_tokens);
      m.feature_stats->add(*m.step, batch, run.step);

      if (log_step) {
        Tensor x_hat = m.step->reconstruction();
        BatchStats stats = batch.stats;
        BatchMetrics batch_columns;
        MeanStd raw;
        if (upload) {  // on the device; the one read-back of the batch's statistics (x is the target)
          if (batch.on_device) read_device_stats(batch.device_stats, stats);
          batch_columns = batch_metrics(x, x_hat);
          const RawMoments moments = columns.raw_moments(stats);
          raw = {moments.mean, moments.std};
        } else {  // on the host; with replicas, the whole batch's
          const float* recon = x_hat.data<float>();
          if (device != Device::CPU) {
            cuda_copy_to_host(reconstruction_host.raw(), x_hat.raw(), n * columns.d_out * sizeof(float));
            recon = reconstruction_host.data<float>();
          }
          const BatchSummary summary = summarize_batch(
              dist, BatchRows{columns.raw_moments(stats), x_host, columns.d_in, target_host, recon, columns.d_out}, n);
          batch_columns = {summary.normalized, summary.reconstructed, summary.fvu};
          raw = summary.raw;
        }
        m.result.last_row = with_architecture_metrics(
            metric_row(run, sums, raw, batch_columns, batch_tokens, columns.d_out, config.features, dead_features(m),
                       lambda, lr),
            run, sums);
        if (run.controller) m.result.last_row.push_back({"l0_smoothed", run.controller->smoothed_l0()});
        if (m.log) m.log->write(m.result.last_row);
      }
      if (i == 0 && sums.pending) progress.seen(run.tokens);
      if (i == 0 && !sums.pending) progress.update(run.step, run.tokens, sums.loss, sums.active / double(batch_tokens));
      if ((run.step % config.checkpoint_every == 0 && run.step < steps) || stopping) {
        if (m.log) m.log->flush();
        save(m, (fs::path(config.out) / "checkpoints" / ("step_" + std::to_string(run.step))).string(), !stopping);
        if (synthetic && !stopping) report_concepts(m, "checkpoint");
      }
    }
    if (stopping) {
      progress.finish();
      throw TrainingInterrupted(signal_seen, interrupted_message(members, signal_seen, this_step, steps));
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - loop_begin).count();
  const CollectiveStats loop_collectives = dist ? dist->stats() : CollectiveStats{};
  progress.finish();
  if (pass && pass->out) {
    pass->out->first_step = start_step;
    pass->out->last_step = steps;
    pass->out->shared = pass->share;
    pass->out->saes_here = static_cast<int64_t>(members.size());
    pass->out->counts = batcher.compute_counts();
  }

  // ---- final models: sae/ (SAELens layout + training state, so it can be extended with --resume) ----
  test_signal_point("final-save");
  std::vector<TrainResult> results;
  for (Member& m : members) {
    if (m.log) m.log->flush();
    TrainResult& result = m.result;
    result.seconds = seconds;
    result.collectives = loop_collectives;
    result.model_dir = (fs::path(m.config().out) / "sae").string();
    result.saelens_note = saelens_note(m.config());
    save(m, result.model_dir, !(stop_on_signal && stop_on_signal->requested()));
    result.steps = m.run().step;
    result.tokens = m.run().tokens;
    result.metrics_csv = (fs::path(m.config().out) / "metrics.csv").string();
    if (m.log) {
      result.metrics_csv = m.log->csv_path();
      result.tensorboard_file = m.log->tensorboard_path();
    }
    if (!result.last_row.empty()) {
      result.fvu = metric(result.last_row, "fvu");
      result.l0 = metric(result.last_row, "l0");
      result.nonzero_proportion = metric(result.last_row, "nonzero_proportion");
    }
    result.dead_features = dead_features(m);
    result.wrote_checkpoints = fs::is_directory(fs::path(m.config().out) / "checkpoints");
    result.superseded = m.start.superseded;
    result.kept_final = m.start.kept_final;
    if (synthetic) result.concepts = report_concepts(m, "final");
    results.push_back(std::move(result));
  }
  // A signal in the last step or the final saves: the run is complete, but nothing after it starts
  // (another group of a list, the next run of a study).
  if (stop_on_signal && stop_on_signal->requested())
    throw TrainingInterrupted(stop_on_signal->requested(), interrupted_message(members, stop_on_signal->requested(),
                                                                              steps, steps));
  return results;
}

}  // namespace

TrainResult train(TrainConfig config, Collectives* ranks, const CheckpointEvaluator& evaluate) {
  std::vector<TrainConfig> one;
  one.push_back(std::move(config));
  return std::move(train_together(std::move(one), ranks, evaluate).front());
}

double measure_step_seconds(const TrainConfig& config) {
  constexpr int kTimedSteps = 3;
  const Device device = resolve_device(config.device);
  const ScopedMatmulPrecision precision(config.precision);
  // A scale of 1 for each of the run's reads (a transcoder's input and target, a crosscoder's sources).
  const std::vector<std::string> reads = own_reads(config);
  TrainingData data = open_training_data(config, reads, device, DatasetScales(std::vector<double>(reads.size(), 1.0)));
  const int64_t d = data.d;
  BatchSource& batcher = *data.batches;
  Rng rng(config.seed);
  SaeParams params = SaeParams::standard_init(d, config.features, rng).to(device);
  SaeAdamState adam = SaeAdamState::zeros_like(params, config.beta1, config.beta2, config.eps);
  const int64_t max_tokens = batcher.max_batch_tokens();
  TrainConfig dense;  // the study's step: the standard SAE, dense
  dense.arch.set("sparse", Json("off"));
  SaeStep step(arch_unit("standard"), arch_settings(dense), max_tokens, d, config.features, DType::F32, device);
  Tensor raw = Tensor::empty(Shape{max_tokens, d}), normalized = Tensor::empty(Shape{max_tokens, d});
  BatchStats stats;
  auto one_step = [&] {
    const int64_t n = batcher.next(raw.data<float>(), normalized.data<float>(), stats);
    step.train_step(params, adam, normalized.slice_rows(0, n).to(device), config.l1, config.lr);
  };
  one_step();
  const auto begin = std::chrono::steady_clock::now();
  for (int i = 0; i < kTimedSteps; ++i) one_step();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count() / kTimedSteps;
}

std::string saelens_note(const TrainConfig& config) {
  const DictionaryKind kind = dictionary_kind(config);
  if (kind == DictionaryKind::Crosscoder) return "SAELens's layout; SAELens has no crosscoder class: docs/architectures.md";
  if (kind == DictionaryKind::Transcoder && run_unit(config).saelens_transcoder_architecture(config.skip).empty())
    return cat("SAELens's layout; SAELens has no ", config.architecture, " transcoder class: docs/architectures.md");
  if (config.normalize == Normalization::Story)
    return "SAELens's layout; SAELens does not load per-story normalisation: --normalize dataset or none";
  return "SAELens format";
}

std::string format_report(const TrainResult& r) {
  char buffer[2048];
  int used = r.already_finished
                 ? std::snprintf(buffer, sizeof buffer,
                                 "%s was trained to step %lld (%lld tokens) already: nothing to train\n"
                                 "  final step: FVU %.4f | L0 %.1f active features per token (proportion %.5f) | "
                                 "dead features %lld\n",
                                 r.out_dir.c_str(), (long long)r.steps, (long long)r.tokens, r.fvu, r.l0,
                                 r.nonzero_proportion, (long long)r.dead_features)
                 : std::snprintf(buffer, sizeof buffer,
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
  std::snprintf(buffer + used, sizeof buffer - used, "  files: %s/config.json, %s, %s,\n         %s/ (%s)%s\n",
                r.out_dir.c_str(), r.metrics_csv.c_str(), r.tensorboard_file.c_str(), r.model_dir.c_str(),
                r.saelens_note.c_str(),
                r.wrote_checkpoints ? (", " + r.out_dir + "/checkpoints/").c_str() : "");
  std::string text = buffer;
  if (!r.superseded.empty())
    text += "  the checkpoints the run had saved after the one it resumed from, and its metrics.csv as it stood,\n"
            "  are in " + r.superseded + "/\n";
  if (!r.kept_final.empty()) text += "  the run's final model before it was extended is kept as " + r.kept_final + "/\n";
  if (!r.memory_note.empty()) text += "  " + r.memory_note + "\n";
  return text;
}

}  // namespace sae
