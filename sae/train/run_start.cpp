// start_run and initial_params (see run_start.h).
#include "sae/train/run_start.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <optional>

#include "io/atomic_file.h"
#include "io/mapped_file.h"
#include "lm/decoder_model.h"
#include "lm/hook_points.h"
#include "lm/model_loader.h"
#include "sae/report/run_log.h"
#include "sae/train/arch_config.h"
#include "sae/train/dictionary_learning_file.h"
#include "sae/train/dictionary_reads.h"
#include "sae/train/options.h"
#include "tensor/ops.h"

namespace fs = std::filesystem;

namespace sae {

namespace {

// What a training run writes into its folder (docs/contract.md §4).
const char* const kRunFiles[] = {"config.json", kPendingConfigFile, "metrics.csv", "sae", "checkpoints", "tensorboard",
                                 "figures", "summary.json", "superseded"};

bool holds_a_run(const fs::path& dir) {
  for (const char* name : {"config.json", "metrics.csv", "sae", "checkpoints"})
    if (fs::exists(dir / name)) return true;
  return false;
}

}  // namespace

void refuse_study_folder(const std::string& out) {
  if (fs::exists(fs::path(out) / kStudyRecordFile))
    throw UsageError(cat("--out ", out, " is a study's folder (", kStudyRecordFile,
                         "): its runs are the study's; give this run its own folder"));
}

namespace {

// The run directory of a --resume argument (a run dir, or a checkpoint inside one).
std::string run_dir_of(const std::string& resume) {
  if (!single_file_sae(resume).empty() || is_dictionary_learning_save_dir(resume))
    throw DataError(cat("--resume ", resume, ": ",
                        single_file_sae(resume).empty() ? "a dictionary_learning save folder" : single_file_sae_name(resume),
                        " holds weights only, no training state to resume from (start a run from one with --init)"));
  if (fs::exists(fs::path(resume) / "config.json") || fs::exists(fs::path(resume) / kPendingConfigFile)) return resume;
  fs::path p = fs::path(resume);
  for (int up = 0; up < 4 && p.has_parent_path() && p != p.parent_path(); ++up) {
    if (p.filename() == "superseded")  // a continuation a rewind set aside: not the run's own
      throw UsageError(cat("--resume ", resume, ": a checkpoint a rewinding --resume set aside (", p.string(),
                           "); copy the run with it in place of its own checkpoints to continue it"));
    p = p.parent_path();
    if (fs::exists(p / "config.json")) return p.string();
  }
  if (!fs::exists(resume)) throw DataError(cat("--resume ", resume, ": no such run or checkpoint directory"));
  throw DataError(cat("--resume ", resume, ": cannot find the run's config.json (a run stopped before it wrote its "
                      "options has nothing to resume: start it again with its own command)"));
}

// The paths config.json records are as they were given: a relative one is relative to the folder
// the run was started from. DataError saying so when one the resume reads is not found from here (it
// read as a missing file, "cannot open models/gpt2/config.json", from another folder). `reads_init`:
// the run starts again from its --init (no checkpoint yet).
void refuse_relative_paths_not_found(const TrainConfig& run, const std::string& config_path, bool reads_init) {
  const std::pair<const char*, std::string> paths[] = {
      {"data", run.data == "synthetic" || run.data == "text" ? std::string() : run.data},
      {"target-data", run.target_data}, {"model", run.model}, {"model-b", run.model_b}, {"text", run.text},
      {"init", reads_init ? run.init : std::string()}};
  for (const auto& [option, value] : paths)
    for (size_t begin = 0; begin < value.size();) {
      const size_t end = std::min(value.find(',', begin), value.size());
      const fs::path path(value.substr(begin, end - begin));
      std::error_code ec;
      if (!path.empty() && path.is_relative() && !fs::exists(path, ec))
        throw DataError(cat(config_path, ": --", option, " ", path.string(), " is a relative path, as given when the "
                            "run started, and is not found from ", fs::current_path(ec).string(),
                            ": resume from the folder the run was started from, or put it back there"));
      begin = end + 1;
    }
}

}  // namespace

void refuse_conflicts(const TrainConfig& cli, const TrainConfig& run, const std::string& config_path) {
  for (const TrainOption& o : train_options()) {
    if (o.role != OptionRole::Defines || !cli.was_given(o.name)) continue;
    const std::string had = o.text(run);
    if (o.text(cli) != had)
      throw UsageError(cat("--", o.name, " ", printable(o.text(cli)), " contradicts the run being resumed (",
                           config_path, " has ", had.empty() ? std::string("none") : printable(had),
                           "); --resume continues a run as it was started: drop the option, or start a new run"));
  }
}

namespace {

// A resume from an earlier checkpoint than the run's newest rewinds the run: what it saved after that
// step (later checkpoints, a final sae/) belongs to the continuation being replaced, and a later plain
// --resume would pick it up. It is moved, newest first, into RUN/superseded/from_step_S (-2, -3, ...
// for another rewind to S) with a copy of metrics.csv as it stood (the resumed run drops its rows
// after S), so nothing written is lost. The moves are recorded first (kRewindRecord): a rewind a
// crash stopped half-way is finished by the next --resume of the run, into the same folder.
// Returns that folder, or "" when nothing came after S.
constexpr const char* kRewindRecord = "superseded/rewinding.json";

std::string set_aside_later_checkpoints(const std::string& run_dir, int64_t step) {
  const fs::path record = fs::path(run_dir) / kRewindRecord;
  std::error_code ec;
  std::vector<std::pair<int64_t, std::string>> later;
  for (const auto& checkpoint : run_checkpoints(run_dir))
    if (checkpoint.first > step) later.push_back(checkpoint);
  if (later.empty()) {
    fs::remove(record, ec);
    return "";
  }
  fs::path aside;
  if (fs::exists(record)) {
    const Json was = read_json_file(record.string());
    if (was.has("step") && was.at("step") == Json(step) && was.has("to") && was.at("to").is_string())
      aside = was.at("to").as_string();
  }
  if (aside.empty()) {
    const fs::path base = fs::path(run_dir) / "superseded" / cat("from_step_", step);
    aside = base;
    for (int k = 2; fs::exists(aside); ++k) aside = fs::path(cat(base.string(), "-", k));
  }
  fs::create_directories(aside / "checkpoints", ec);
  if (ec) throw DataError(cat(aside.string(), ": cannot create it: ", ec.message()));
  Json intent = Json::object();
  intent["step"] = step;
  intent["to"] = aside.string();
  write_file_atomic(record.string(), intent.dump() + "\n");
  if (fs::exists(fs::path(run_dir) / "metrics.csv") && !fs::exists(aside / "metrics.csv")) {
    // Copied under a temporary name, then renamed: a kill mid-copy leaves no partial metrics.csv that
    // the retry would take for the whole one.
    fs::copy_file(fs::path(run_dir) / "metrics.csv", aside / "metrics.csv.partial", fs::copy_options::overwrite_existing,
                  ec);
    if (!ec) sync_file((aside / "metrics.csv.partial").string());  // its bytes on disk before the run's are cut
    if (!ec) fs::rename(aside / "metrics.csv.partial", aside / "metrics.csv", ec);
  }
  for (auto it = later.rbegin(); !ec && it != later.rend(); ++it) {
    const fs::path from(it->second);
    const bool final_model = from.filename() == "sae" && from.parent_path() == fs::path(run_dir);
    fs::rename(from, final_model ? aside / "sae" : aside / "checkpoints" / from.filename(), ec);
  }
  if (ec) throw DataError(cat(aside.string(), ": cannot set aside the checkpoints after step ", step, ": ", ec.message()));
  // Every folder a name left or entered, on disk before the run goes on without them (a power cut
  // must not find the moved checkpoints, or the copy of metrics.csv, in neither place).
  for (const fs::path& folder : {aside / "checkpoints", aside, fs::path(run_dir) / "checkpoints",
                                 fs::path(run_dir) / "superseded"})
    if (fs::is_directory(folder)) sync_directory(folder.string());
  sync_directory(run_dir);
  fs::remove(record, ec);
  return aside.string();
}

// A rewind a crash stopped half-way (its record still there): its remaining moves.
void finish_interrupted_rewind(const std::string& run_dir) {
  const fs::path record = fs::path(run_dir) / kRewindRecord;
  if (!fs::exists(record)) return;
  const Json was = read_json_file(record.string());
  if (!was.has("step") || !was.at("step").is_number())
    throw DataError(cat(record.string(), ": no step (the record of an interrupted rewind)"));
  set_aside_later_checkpoints(run_dir, was.at("step").as_int());
}

}  // namespace

namespace {

// An SAE from text at another hook point than the one its folder says it was trained at
// (metadata.hook_name, SAELens's) would start from features of other activations: with neither
// --hook nor --layer given a fresh run is refused, naming the hook to give; otherwise it is said.
// Transcoders and crosscoders name their hooks otherwise; a model folder that cannot be read is left
// to the run's own error.
void check_init_hook(RunStart& start, const TrainConfig& config, const Json& cfg) {
  if (config.model.empty()) return;
  try {
    if (dictionary_kind(config) != DictionaryKind::Sae) return;
  } catch (const Error&) {
    return;  // options that contradict each other: said by the run itself
  }
  if (!cfg.has("metadata") || !cfg.at("metadata").is_object() || !cfg.at("metadata").has("hook_name") ||
      !cfg.at("metadata").at("hook_name").is_string())
    return;
  const std::string init_hook = cfg.at("metadata").at("hook_name").as_string();
  DecoderConfig model;
  HookSite run;
  try {
    model = read_model_config(config.model).config;
    run = resolve_hook_site(model, config.hook.empty() ? HookSite{config.layer, HookPoint::FinalOutput}
                                                       : parse_hook_name(config.hook));
  } catch (const Error&) {
    return;  // no model, or a hook it does not have: said by the run itself
  }
  // A hook this model does not have (or one we do not read) is never the run's.
  std::optional<HookSite> trained;
  try {
    trained = resolve_hook_site(model, parse_hook_name(init_hook, "hook_name"), "hook_name");
  } catch (const Error&) {
  }
  if (trained && canonical_site(*trained, model.num_layers) == canonical_site(run, model.num_layers)) return;
  const std::string where = config.hook.empty() ? cat("hidden_states[", config.layer, "]") : config.hook;
  // (A resumed run was judged when it started: its options are not given again.)
  if (config.resume.empty() && !config.was_given("hook") && !config.was_given("layer"))
    throw UsageError(cat("--init ", config.init, " was trained at ", init_hook, " (its cfg.json's hook_name) and this run ",
                         "would read ", where, " (the default --layer ", config.layer, "): give --hook ", init_hook,
                         " (or --hook / --layer to train it at another hook point)"));
  start.warnings.push_back(cat("--init ", config.init, " was trained at ", init_hook, ": this run trains it at ", where));
}

// --init: the checkpoint a fresh run starts from; its width and architecture become the run's.
void load_init(RunStart& start, TrainConfig& config) {
  Checkpoint loaded = load_checkpoint(config.init, Device::CPU, /*with_state=*/false);
  start.params = std::move(loaded.params);
  // One of our folders was trained on inputs normalised as its sae_cpp.normalization says, and its
  // weights are read back in that space: another normalisation would start from another function.
  // A folder without it (SAELens's, Gemma Scope's params.npz, one made by hand) reads raw
  // activations, as sae_apply and sae_eval apply it: a run that normalises them starts from the same
  // weights on inputs scaled otherwise (what a hand-made starting point may want), so it is said.
  // One that normalises each token (SAELens's layer_norm, OpenAI's TopK) says so itself: the run must too.
  const Normalization read_as = trained_normalization(loaded.cfg, config.init + "/cfg.json").kind;
  if (per_token(read_as) && start.params->transcoder)  // (--normalize layer_norm trains SAEs only)
    throw UsageError(cat("--init ", config.init, " is a transcoder that normalises each token of its input "
                         "(normalize_activations \"", normalization_name(read_as), "\"): training one so is not "
                         "supported (sae_apply, sae_eval and sae_features read it)"));
  if (per_token(read_as) && read_as != config.normalize)  // (SAELens's and OpenAI's declare it too)
    throw UsageError(cat("--init ", config.init, " normalises each token (normalize_activations \"",
                         normalization_name(read_as), "\") and the run normalises with --normalize ",
                         normalization_name(config.normalize), ": give --normalize ", normalization_name(read_as),
                         " (its weights read those inputs)"));
  if (loaded.cfg.has("sae_cpp") && loaded.cfg.at("sae_cpp").is_object() &&
      loaded.cfg.at("sae_cpp").has("normalization")) {
    if (read_as != config.normalize)
      throw UsageError(cat("--init ", config.init, " was trained with --normalize ", normalization_name(read_as),
                           " and the run normalises with --normalize ", normalization_name(config.normalize),
                           ": give --normalize ", normalization_name(read_as), " (its weights read those inputs)"));
  } else if (config.normalize != Normalization::None && config.normalize != read_as) {
    start.warnings.push_back(cat(
        "--init ", config.init, " has no sae_cpp.normalization, so its weights read raw activations "
        "(SAELens's and Gemma Scope's do), and this run normalises its inputs with --normalize ",
        normalization_name(config.normalize), ": it starts from these weights on inputs scaled otherwise, not from "
        "the SAE's function (--normalize none starts from that)"));
  }
  check_init_hook(start, config, loaded.cfg);
  // What it trains must be finite (a JumpReLU threshold of 0, which inference takes, is a
  // log_threshold of -inf).
  for (const auto& [name, t] : start.params->present()) {
    const float* v = t->data<float>();  // host float32, as load_checkpoint makes them
    const int64_t k = first_non_finite(v, t->numel());
    if (k >= 0)
      throw DataError(cat("--init ", config.init, ": the trained ", name, " would start at ", v[k], " (element ", k,
                          name == "log_threshold" ? ", a threshold of 0" : "", "): it cannot be trained from"));
  }
  if (config.was_given("features") && config.features != start.params->d_sae())
    throw UsageError(cat("--features ", config.features, " contradicts --init ", config.init, ", whose SAE has d_sae ",
                         start.params->d_sae(), " (leave --features out to take it from the checkpoint)"));
  config.features = start.params->d_sae();
  adopt_init_architecture(config, *start.params);
  // Loaded SAEs encode x (a centred one's shift folded into its biases): a run that centres starts
  // from the same function with the shift taken back out, b_enc = b_enc' + b_dec W_enc.
  // (Not for what validate() refuses next: a transcoder, a skip path, a crosscoder.)
  if (config.apply_b_dec_to_input && !start.params->transcoder && start.params->sources == 1 &&
      !start.params->W_skip.defined() && start.params->d_in() == start.params->d_out()) {
    run_unit(config).fold_input_shift(*start.params, mul_scalar(input_shift(*start.params), -1.0));
  }
  // A run that keeps decoder rows at norm 1 renormalises them at its first update: rows of another
  // norm are folded first where the unit allows it, so that the loaded SAE computes what it did.
  const ArchUnit& unit = run_unit(config);
  if (!unit.dictionary_init(arch_settings(config)).unit_norm_decoder) return;
  SaeParams& p = *start.params;
  std::vector<double> norms = reduce(ReduceOp::norm2, p.W_dec, 1).to_vector();
  double worst = 0;
  for (double& n : norms) {
    if (n == 0) n = 1;  // a zero row stays as it is
    worst = std::max(worst, std::abs(n - 1.0));
  }
  if (worst <= 1e-4) return;
  if (!unit.fold_decoder_norms(p, norms))
    throw UsageError(cat("--init ", config.init, ": its decoder rows are not at norm 1 (one is off by ", worst,
                         ") and --architecture ", config.architecture, " puts them there at its first update, which "
                         "changes the latents it selects; give --unit-norm-decoder=off"));
}

}  // namespace

RunStart start_run(TrainConfig config, bool owner) {
  if (!config.init.empty() && !config.resume.empty())
    throw UsageError("--init and --resume cannot be used together");
  RunStart start;
  if (!config.resume.empty()) {
    const std::string run_dir = run_dir_of(config.resume);
    // A resumed run continues in its own folder: an --out elsewhere would be silently ignored.
    if (config.was_given("out") && fs::weakly_canonical(config.out) != fs::weakly_canonical(run_dir))
      throw UsageError(cat("--out ", config.out, ": --resume continues ", run_dir,
                           " in place (copy that folder to ", config.out, " and resume the copy to fork it)"));
    if (config.was_given("overwrite") && config.overwrite)
      throw UsageError("--overwrite and --resume cannot be used together (--resume continues the run's own files)");
    if (owner) {
      start.lock = std::make_unique<FileLock>((fs::path(run_dir) / ".lock").string());
      recover_interrupted_saves(run_dir);
      finish_interrupted_rewind(run_dir);
    }
    // A run killed before its first checkpoint: resumed from its start (its config.json).
    const bool from_the_start = fs::weakly_canonical(config.resume) == fs::weakly_canonical(run_dir) &&
                                !latest_checkpoint_in_run(run_dir).has_value();
    if (!from_the_start) start.resumed_from = find_latest_checkpoint(config.resume);
    // A run stopped before the trainer wrote config.json has only its options (kPendingConfigFile).
    const bool pending = !fs::exists(fs::path(run_dir) / "config.json");
    const std::string config_path = (fs::path(run_dir) / (pending ? kPendingConfigFile : "config.json")).string();
    const TrainConfig cli = config;
    try {
      const Json saved = read_json_file(config_path);
      // The file's own values first, alone: a bad one is the file's error (exit 1, naming it), not
      // the command line's.
      try {
        TrainConfig own = resumed_config(saved, TrainConfig{});
        own.resume = cli.resume;
        own.trained_before = !from_the_start;
        own.validate();
      } catch (const UsageError& e) {
        throw DataError(cat("a value the file holds: ", e.what()));
      }
      config = resumed_config(saved, cli);
      if (saved.has("resolved") && saved.at("resolved").is_object() && saved.at("resolved").has("data"))
        start.resolved_data = saved.at("resolved").at("data");
    } catch (const DataError& e) {
      throw DataError(cat(config_path, ": ", e.what()));
    }
    refuse_conflicts(cli, config, config_path);
    config.out = run_dir;
    config.resume = cli.resume;
    config.given = cli.given;
    config.from_profile = cli.from_profile;
    config.trained_before = !from_the_start;
    if (from_the_start) {
      if (!config.init.empty()) load_init(start, config);
    } else {
      Checkpoint checkpoint = load_checkpoint(start.resumed_from, Device::CPU);
      if (!checkpoint.state) throw DataError(cat(start.resumed_from, ": has no training state to resume from"));
      // What the checkpoint was trained on must be what config.json (perhaps edited) says: another
      // normalisation would go on with a dataset scale never estimated, or none.
      const Normalization trained =
          trained_normalization(checkpoint.cfg, (fs::path(start.resumed_from) / "cfg.json").string()).kind;
      if (trained != config.normalize)
        throw DataError(cat(config_path, ": normalize is ", normalization_name(config.normalize), " but ",
                            start.resumed_from, " was trained with ", normalization_name(trained),
                            " (cfg.json sae_cpp.normalization): the run's files disagree"));
      // Centred or not, the checkpoint must say what config.json says: its folder's SAE is folded
      // (the SAE of x) and only a centred state holds the trained vectors to go on from.
      const bool centred_state = !checkpoint.state->centred_params.empty();
      if (centred_state != config.apply_b_dec_to_input)
        throw DataError(cat(config_path, ": apply_b_dec_to_input is ", config.apply_b_dec_to_input ? "true" : "false",
                            " but ", start.resumed_from, (centred_state ? " was" : " was not"),
                            " trained with it (cfg.json sae_cpp.apply_b_dec_to_input): the run's files disagree"));
      start.params = std::move(checkpoint.params);
      start.state = std::move(checkpoint.state);
      for (const auto& [name, exact] : start.state->centred_params)  // a centred run's biases as trained
        for (auto& [have, param] : start.params->present())
          if (have == name) *param = exact;
      if (start.state->step > config.steps)
        throw UsageError(cat("--resume: the run is already at step ", start.state->step, "; pass --steps ",
                             start.state->step, " or more"));
      std::error_code ec;
      const fs::path final_model = fs::path(run_dir) / "sae";
      const bool from_final = fs::equivalent(start.resumed_from, final_model, ec);
      // The options judged before anything of the run's folder is changed (again below); a resume that
      // only ends the run at this step trains nothing, and its schedules are not judged.
      config.ends_at_resume = start.state->step == config.steps;
      config.validate();
      if (start.state->step == config.steps && !from_final) {
        // At its last step from a checkpoint, not from sae/: a run killed after its final model was
        // moved aside for an extension (keep_final_model) is finished (its sae/ made again from the
        // checkpoint); a rewind to exactly that step would train nothing.
        const std::optional<std::string> newest = latest_checkpoint_in_run(run_dir);
        if (!newest || !fs::equivalent(*newest, start.resumed_from, ec))
          throw UsageError(cat("--resume ", config.resume, ": the checkpoint is at step ", start.state->step,
                               ", which --steps ", config.steps, " asks the run to end at: nothing to train; give "
                               "--steps beyond it"));
        if (owner) {
          // The run ends here: what it logged past this step goes (metrics.csv's rows, TensorBoard's
          // points), before sae/ says the run is finished (a kill between: the next resume does both).
          RunLog(run_dir, start.state->step);
          const std::string temp = checkpoint_temp_folder(final_model.string());
          fs::remove_all(temp, ec);
          copy_tree(start.resumed_from, temp);
          sync_tree(temp);  // the copy's bytes on disk before it takes sae/'s name
          install_checkpoint_folder(temp, final_model.string());
          start.resumed_from = final_model.string();
        }
      }
      start.finished = start.state->step == config.steps;
      if (owner) start.superseded = set_aside_later_checkpoints(run_dir, start.state->step);
      // Extending a finished run: its final model is kept as the checkpoint of its step (the run's
      // sae/ becomes the new end's), moved there once the run's data is open (keep_final_model).
      start.keep_final = owner && !start.finished && from_final &&
                         !fs::exists(fs::path(run_dir) / "checkpoints" / cat("step_", start.state->step));
    }
    if (!start.finished) refuse_relative_paths_not_found(config, config_path, from_the_start);  // (a finished run reads none)
    if (owner) remove_interrupted_saves(run_dir);
  } else if (!owner) {
    if (!config.init.empty()) load_init(start, config);
  } else {
    refuse_study_folder(config.out);
    auto cleanup = std::make_unique<FreshRunCleanup>(config.out);  // before the folder is made
    std::error_code ec;
    fs::create_directories(config.out, ec);
    if (ec) throw DataError(cat(config.out, ": cannot create the output directory: ", ec.message()));
    try {
      start.lock = std::make_unique<FileLock>((fs::path(config.out) / ".lock").string());
    } catch (...) {
      cleanup->keep_folders();  // made a moment ago by the process that holds them now
      throw;
    }
    start.cleanup = std::move(cleanup);
    if (holds_a_run(config.out)) {
      if (!config.overwrite)
        throw UsageError(cat("--out ", config.out, " already holds a run; continue it with --resume ", config.out,
                             ", replace it with --overwrite, or choose another --out"));
      start.replaces_run = true;  // deleted once the new run's data is open (remove_replaced_run)
      recover_interrupted_saves(config.out);  // kept whole until then
    }
    remove_interrupted_saves(config.out);
    if (!config.init.empty()) load_init(start, config);
  }
  config.validate();
  if (config.resume.empty() && config.l1 == 0 && !config.was_given("l1") && config.target_l0 == 0 &&
      run_unit(config).needs_lambda())
    start.warnings.push_back(cat("--architecture ", config.architecture, " with --l1 0 (the default) and no --target-l0 "
                                 "trains without its sparsity penalty (SAELens's coefficient defaults to 1): give "
                                 "--l1 or --target-l0"));
  if (config.resume.empty() && config.batch_tokens > 0 && config.dead_window < config.batch_tokens)
    start.warnings.push_back(cat("--dead-window ", config.dead_window, " is less than one batch (", config.batch_tokens,
                                 " tokens): a feature counts as dead when it did not fire in the last batch (the "
                                 "window counts tokens; SAELens's dead_feature_window counts steps: steps x batch "
                                 "tokens here)"));
  if (owner && config.resume.empty()) {
    start.cleanup->write_pending(config.to_json().dump(2) + "\n");
    test_kill_point("after-pending-config");
  }
  start.config = std::move(config);
  return start;
}

void FreshRunCleanup::write_pending(const std::string& options) {
  const std::string path = (fs::path(out_) / kPendingConfigFile).string();
  std::error_code ec;
  if (fs::exists(path, ec)) replaced_pending_ = read_small_file(path);
  write_file_atomic(path, options);
  wrote_pending_ = true;
}

FreshRunCleanup::~FreshRunCleanup() {
  // This run's pending options are gone once config.json is written (the run began: a --resume
  // continues it); still there, they are a run that never began: the options it replaced come back.
  const fs::path pending = fs::path(out_) / kPendingConfigFile;
  std::error_code ec;
  if (wrote_pending_ && fs::exists(pending, ec)) {
    try {
      if (replaced_pending_) write_file_atomic(pending.string(), *replaced_pending_);
      else fs::remove(pending, ec);
    } catch (const std::exception&) {
      return;  // left as it is: a fresh command into the folder starts again
    }
  }
}

void keep_final_model(RunStart& start) {
  if (!start.keep_final) return;
  const fs::path run_dir = fs::path(start.config.out);
  const fs::path kept = run_dir / "checkpoints" / cat("step_", start.state->step);
  std::error_code ec;
  fs::create_directories(kept.parent_path(), ec);
  if (!ec) fs::rename(run_dir / "sae", kept, ec);
  if (ec) throw DataError(cat(kept.string(), ": cannot keep the run's final model there: ", ec.message()));
  sync_directory(run_dir.string());
  sync_directory(kept.parent_path().string());
  test_kill_point("after-keep-final");
  start.resumed_from = kept.string();
  start.kept_final = kept.string();
  start.keep_final = false;
}

void remove_replaced_run(const std::string& out) {
  // config.json last: while any of the old run's files are there, its config.json says what they are
  // (a kill here must not leave the new run's pending options beside the old checkpoints, which a
  // --resume would then continue under the new options).
  for (const char* name : kRunFiles)
    if (std::string(name) != kPendingConfigFile && std::string(name) != "config.json")
      fs::remove_all(fs::path(out) / name);
  sync_directory(out);
  test_kill_point("overwrite-before-config");
  fs::remove(fs::path(out) / "config.json");
}

std::vector<std::string> run_folders_under(const std::string& dir) {
  std::vector<std::string> runs;
  std::error_code ec;
  if (fs::exists(fs::path(dir) / "config.json") || !fs::is_directory(dir, ec)) return runs;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.is_directory() && fs::exists(entry.path() / "config.json")) runs.push_back(entry.path().string());
  std::sort(runs.begin(), runs.end());
  return runs;
}

SaeParams initial_params(const RunStart& start, int64_t d) {
  if (!start.params) {
    Rng rng(start.config.seed);
    return SaeParams::standard_init(d, start.config.features, rng);
  }
  const SaeParams& p = *start.params;
  if (p.d_in() != d)
    throw DataError(cat(start.state ? "--resume" : "--init", " checkpoint has d_in ", p.d_in(), " but the data has d = ", d));
  if (p.d_sae() != start.config.features)
    throw DataError(cat("checkpoint has d_sae ", p.d_sae(), " but --features is ", start.config.features));
  return p;
}

}  // namespace sae
