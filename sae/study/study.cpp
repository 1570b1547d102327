// Studies: run lists and metrics read-back (see study.h).
#include "sae/study/study.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include "sae/train/checkpoint.h"
#include "sae/data/synthetic.h"
#include "sae/report/table.h"
#include "sae/train/options.h"
#include "sae/train/run_start.h"
#include "sae/train/trainer.h"
#include "io/atomic_file.h"
#include "io/file_lock.h"
#include "io/json.h"
#include "io/mapped_file.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;

namespace sae {

namespace {

constexpr const char* kBranchFile = "continued_from.json";  // a continuation's {"run": NAME, "step": S}

// A folder that already holds a run must hold this run; anything else is refused as sae_train
// refuses a run into a folder that holds another (UsageError: exit 2).
void check_same_run(const std::string& dir, const TrainConfig& wanted) {
  const std::string path = (fs::path(dir) / "config.json").string();
  const Json have = run_identity(TrainConfig::from_json(read_json_file(path))), want = run_identity(wanted);
  for (const auto& [key, value] : want.items())
    if (!have.has(key) || have.at(key) != value)
      throw UsageError(cat(path, ": this folder holds a run with ", key, " = ",
                          have.has(key) ? have.at(key).dump() : "(absent)", ", but the study asks for ", value.dump(),
                          "; use another --out or remove the folder"));
}

// Empty, or only the lock a run takes before it writes anything (a study killed as its runs started).
// A run folder a kill stopped before the trainer wrote config.json: its lock, its pending options,
// and config.json's temporary file when the kill came while it was written.
bool holds_only_a_lock(const std::string& dir) {
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name != ".lock" && name.rfind(kPendingConfigFile, 0) != 0 && name.rfind("config.json.tmp-", 0) != 0)
      return false;
  }
  return true;
}

// Whether the run in DIR has a complete checkpoint (a damaged newest one is an error, not "none":
// the run would be started again over it).
bool has_checkpoint(const std::string& dir) { return fs::is_directory(dir) && latest_checkpoint_in_run(dir).has_value(); }

int64_t checkpoint_step(const std::string& checkpoint_dir) {
  SafetensorsFile file = SafetensorsFile::open((fs::path(checkpoint_dir) / "training_state.safetensors").string());
  auto meta = file.metadata().find("training_state");
  if (meta == file.metadata().end()) return -1;
  return Json::parse(meta->second).at("step").as_int();
}

Json concepts_json(const std::optional<ConceptRecovery>& c) {
  if (!c) return Json();
  Json j = Json::object();
  j["mmcs"] = c->mmcs;
  j["recovered"] = c->recovered;
  j["purity"] = c->purity;
  j["concepts"] = c->concepts;
  j["alive_features"] = c->alive_features;
  return j;
}

std::optional<ConceptRecovery> concepts_from_json(const Json& j) {
  if (j.is_null()) return std::nullopt;
  ConceptRecovery c;
  c.mmcs = j.at("mmcs").as_number();
  c.recovered = j.at("recovered").as_number();
  c.purity = j.at("purity").as_number();
  c.concepts = j.at("concepts").as_int();
  c.alive_features = j.at("alive_features").as_int();
  return c;
}

void write_run_summary(const RunOutcome& r) {
  Json j = Json::object();
  j["name"] = r.name;
  j["steps"] = r.steps;
  j["tokens"] = r.tokens;
  j["d"] = r.d;
  j["seconds"] = r.seconds;
  j["concepts"] = concepts_json(r.concepts);
  write_file_atomic((fs::path(r.dir) / "summary.json").string(), j.dump(2) + "\n");
}

// A finished run from an earlier invocation: its summary.json, or (when the process was killed
// between the final model and the summary) the same facts recomputed from the final model.
RunOutcome finished_outcome(const std::string& name, const std::string& dir, const TrainConfig& config) {
  RunOutcome r;
  r.name = name;
  r.dir = dir;
  r.action = "skipped";
  const fs::path summary = fs::path(dir) / "summary.json";
  if (fs::exists(summary)) {
    const Json j = read_json_file(summary.string());
    r.steps = j.at("steps").as_int();
    r.tokens = j.at("tokens").as_int();
    r.d = j.at("d").as_int();
    r.concepts = concepts_from_json(j.at("concepts"));
    if (r.steps == finished_step(dir)) return r;  // else: stale (the run was extended since)
  }
  Checkpoint final_model = load_checkpoint((fs::path(dir) / "sae").string(), Device::CPU);
  r.steps = final_model.state->step;
  r.tokens = final_model.state->tokens;
  r.d = final_model.params.d_in();
  r.concepts.reset();
  if (config.data == "synthetic") {
    SyntheticSource source(config.synthetic);
    const DeadFeatureTracker dead(config.dead_window, final_model.state->last_fired, r.tokens);
    r.concepts = concept_recovery(source.concepts(), final_model.params.W_dec, dead.alive());
  }
  write_run_summary(r);
  return r;
}

// A run made ready to train: its config (out, resume set) and what will be done; or, when it is
// finished already, its outcome.
struct PreparedRun {
  std::optional<RunOutcome> finished;
  TrainConfig config;
  std::string action;
  int64_t start_step = 0;
};

PreparedRun prepare_run(const StudyRun& run, const std::string& out_root) {
  PreparedRun p;
  const std::string dir = (fs::path(out_root) / run.name).string();
  TrainConfig& config = p.config;
  config = run.config;
  config.out = dir;
  config.resume = "";
  give_every_control(config);  // the study's steps and intervals hold when its run is resumed
  // Nothing of the folder is touched while another process trains in it: its lock, held here only
  // (the trainer takes it for itself), and a save a kill interrupted put back or cleared.
  std::optional<FileLock> lock;
  if (fs::exists(dir)) {
    lock.emplace((fs::path(dir) / ".lock").string());
    recover_interrupted_saves(dir);
    remove_interrupted_saves(dir);
  }
  if (fs::exists(fs::path(dir) / "config.json"))
    check_same_run(dir, config);
  else if (fs::exists(dir) && !holds_only_a_lock(dir))
    throw DataError(cat(dir, ": exists but holds no run (no config.json); use another --out or remove it"));
  if (finished_step(dir) >= config.steps) {
    p.finished = finished_outcome(run.name, dir, config);
    return p;
  }
  p.action = "trained";
  if (has_checkpoint(dir)) {
    config.resume = dir;
    p.start_step = checkpoint_step(find_latest_checkpoint(dir));
    p.action = cat("resumed from step ", p.start_step);
  } else if (!run.continue_from.empty()) {
    // Start from a copy of the finished run (copied to a temporary name, then renamed: a kill
    // mid-copy leaves no half-made run folder).
    if (finished_step(run.continue_from) < 0)
      throw DataError(cat(run.continue_from, ": has no finished model to continue from"));
    const fs::path temp = dir + ".tmp-copy";
    fs::remove_all(temp);
    fs::create_directories(temp);
    for (const char* part : {"config.json", "metrics.csv", "sae", "tensorboard"})
      if (fs::exists(fs::path(run.continue_from) / part))
        copy_tree((fs::path(run.continue_from) / part).string(), (temp / part).string());
    Json branch = Json::object();  // where it branched: a later study whose source ends elsewhere refuses it
    branch["run"] = fs::path(run.continue_from).filename().string();
    branch["step"] = finished_step(run.continue_from);
    write_file_atomic((temp / kBranchFile).string(), branch.dump() + "\n");
    sync_tree(temp.string());  // on disk before it takes the run's name (a power cut: no empty files)
    fs::remove_all(dir);
    fs::rename(temp, dir);
    sync_directory(fs::path(dir).parent_path().string());
    config.resume = dir;
    p.start_step = finished_step(dir);
    p.action = cat("continued ", fs::path(run.continue_from).filename().string(), " from step ", p.start_step);
  } else if (fs::exists(dir)) {
    fs::remove_all(dir);  // our own run (checked above), killed before its first checkpoint
  }
  return p;
}

RunOutcome trained_outcome(const StudyRun& run, const PreparedRun& p, const TrainResult& result) {
  RunOutcome r;
  r.name = run.name;
  r.dir = p.config.out;
  r.action = p.action;
  r.steps = result.steps;
  r.tokens = result.tokens;
  r.d = read_json_file((fs::path(r.dir) / "config.json").string()).at("resolved").at("d_in").as_int();
  r.seconds = result.seconds;
  r.concepts = result.concepts;
  write_run_summary(r);
  return r;
}

}  // namespace

int64_t finished_step(const std::string& run_dir) {
  const fs::path sae = fs::path(run_dir) / "sae";
  if (!fs::exists(sae / "training_state.safetensors") || !fs::exists(sae / "sae_weights.safetensors")) return -1;
  try {
    return checkpoint_step(sae.string());
  } catch (const Error&) {
    return -1;
  }
}

namespace {

// OUT/study.json names the study a folder belongs to: another study's folder (its summary would be
// replaced), or a run's of sae_train (config.json, sweep.json: the study's runs would nest in it), is
// refused; a folder of a study from before study.json is known by its summary.md's heading.
void claim_study_folder(const std::string& study, const std::string& out_root) {
  const fs::path root(out_root);
  for (const char* file : {"config.json", "sweep.json"})
    if (fs::exists(root / file))
      throw UsageError(cat("--out ", out_root, " holds sae_train's output (", file, "): give the study its own folder"));
  const fs::path record = root / kStudyRecordFile;
  std::string owner;
  if (fs::exists(record)) {
    const Json j = read_json_file(record.string());
    if (!j.is_object() || !j.has("study") || !j.at("study").is_string())
      throw DataError(cat(record.string(), ": expected {\"study\": NAME}"));
    owner = j.at("study").as_string();
  } else if (fs::exists(root / "summary.md")) {
    std::string head = read_file_head((root / "summary.md").string(), 200);
    head = head.substr(0, head.find('\n'));  // its heading: "# STUDY: what it shows"
    const size_t colon = head.find(':');
    if (head.rfind("# ", 0) == 0 && colon != std::string::npos) owner = head.substr(2, colon - 2);
  }
  if (!owner.empty() && owner != study)
    throw UsageError(cat("--out ", out_root, " holds a ", printable(owner), " study: give this ", study,
                         " study its own folder"));
  if (!fs::exists(record)) {
    Json j = Json::object();
    j["study"] = study;
    write_file_atomic(record.string(), j.dump() + "\n");
  }
}

// The step a continuation starts from: its source's length in this study (`runs` in `out_root`), or
// the step the source finished at when the study does not train it.
int64_t branch_step(const StudyRun& run, const std::vector<StudyRun>& runs, const std::string& out_root) {
  for (const StudyRun& source : runs)
    if (fs::path(out_root) / source.name == fs::path(run.continue_from)) return source.config.steps;
  return std::max<int64_t>(0, finished_step(run.continue_from));
}

// Steps a run has done already: its newest checkpoint's, or, for a continuation not started yet,
// the step it starts from: that of the run it continues (`runs` in `out_root`), finished or not.
int64_t steps_done(const StudyRun& run, const std::vector<StudyRun>& runs, const std::string& out_root) {
  const std::string dir = (fs::path(out_root) / run.name).string();
  int64_t done = std::max<int64_t>(0, finished_step(dir));
  if (done == 0 && has_checkpoint(dir)) done = checkpoint_step(find_latest_checkpoint(dir));
  if (done != 0 || run.continue_from.empty()) return done;
  return branch_step(run, runs, out_root);
}

// A continuation made from its source at another step (a study run again with other --steps) holds
// another run's numbers: refused before anything is trained. (Continuations made before
// continued_from.json are not checked.)
void check_branch_points(const std::vector<StudyRun>& runs, const std::string& out_root) {
  for (const StudyRun& run : runs) {
    if (run.continue_from.empty()) continue;
    const fs::path record = fs::path(out_root) / run.name / kBranchFile;
    if (!fs::exists(record)) continue;
    const Json j = read_json_file(record.string());
    if (!j.is_object() || !j.has("step") || !j.at("step").is_number())
      throw DataError(cat(record.string(), ": expected {\"run\": NAME, \"step\": S}"));
    const int64_t made_at = j.at("step").as_int(), wanted = branch_step(run, runs, out_root);
    if (made_at != wanted)
      throw UsageError(cat((fs::path(out_root) / run.name).string(), " continued ",
                           fs::path(run.continue_from).filename().string(), " from step ", made_at,
                           ", but this study's run ends at step ", wanted,
                           ": give the --steps it was made with, remove that folder, or give another --out"));
  }
}

// Whether a run's recorded length differs from the study's (a study run again with more --steps):
// a cosine or a decay is then recomputed over the new length (as `sae_train --resume --steps`).
bool extends_with_new_schedule(const StudyRun& run, const std::string& out_root) {
  if (run.config.lr_schedule == LrSchedule::Constant && run.config.lr_decay_steps == 0) return false;
  const fs::path config = fs::path(out_root) / run.name / "config.json";
  if (!fs::exists(config)) return false;
  return TrainConfig::from_json(read_json_file(config.string())).steps != run.config.steps;
}

// Says what the study will do, with the time it will take here: each run's steps to go and an
// estimate from dense steps of the run's own configuration timed on this machine (sparse steps,
// once the features are sparse enough, are faster, so this is an upper bound).
void say_plan(const std::vector<StudyRun>& runs, const std::string& out_root,
              const std::function<void(const std::string&)>& say) {
  say(cat("plan: ", runs.size(), " runs in ", out_root));
  double seconds = 0;
  std::map<std::string, double> step_seconds;  // by what sets a dense step's cost
  for (const StudyRun& run : runs) {
    const int64_t done = steps_done(run, runs, out_root);
    const int64_t to_go = std::max<int64_t>(0, run.config.steps - done);
    char line[600];
    std::snprintf(line, sizeof line, "  %s: F = %lld, lambda = %g, steps %lld to %lld%s", run.name.c_str(),
                  (long long)run.config.features, run.config.l1, (long long)done, (long long)run.config.steps,
                  to_go == 0                                                  ? " (finished)"
                  : done > 0 && extends_with_new_schedule(run, out_root) ? " (a new length: its lr schedule is "
                                                                              "recomputed over it from here on)"
                                                                            : "");
    say(line);
    if (to_go == 0) continue;
    const std::string key = cat(run.config.data, "|", run.config.features, "|", run.config.batch_tokens, "|",
                                run.config.synthetic.d, "|", device_choice_name(run.config.device));
    if (!step_seconds.count(key)) step_seconds[key] = measure_step_seconds(run.config);
    seconds += double(to_go) * step_seconds[key];
  }
  if (seconds > 0) {
    std::string rates;
    for (const auto& [key, s] : step_seconds) rates += cat(rates.empty() ? "" : ", ", format_number(1000 * s, 3), " ms");
    say(cat("estimated: at most ", format_duration(seconds), " of training here (dense steps measured at ", rates,
            "; steps whose features are sparse take the faster sparse path)"));
  }
}

}  // namespace

std::vector<RunOutcome> run_study(const std::string& study, const std::vector<StudyRun>& runs,
                                  const std::string& out_root, const std::function<void(const std::string&)>& say,
                                  const std::function<void(const std::vector<RunOutcome>&)>& summarise) {
  // One study at a time in a folder: two would prepare the same runs (a continuation's copy, a
  // killed run's removal) under each other.
  if (fs::exists(out_root) && !fs::is_directory(out_root))
    throw UsageError(cat("--out ", out_root, " is a file, not a folder"));
  fs::create_directories(out_root);
  const FileLock study_lock((fs::path(out_root) / ".study.lock").string());
  claim_study_folder(study, out_root);
  // A run trained beyond this study's steps holds another run's numbers (its model, its schedule):
  // refused rather than summarised at a step it passed.
  for (const StudyRun& run : runs) {
    const std::string dir = (fs::path(out_root) / run.name).string();
    const int64_t finished = finished_step(dir);
    if (finished > run.config.steps)
      throw UsageError(cat(dir, " was trained to step ", finished, ", beyond this study's ", run.config.steps,
                           " steps: give --steps (or --continue-steps) of at least that, or another --out"));
  }
  check_branch_points(runs, out_root);
  say_plan(runs, out_root, say);
  const size_t total = runs.size();
  std::vector<std::optional<RunOutcome>> outcomes(total);
  auto report = [&](size_t i, const RunOutcome& r) {
    if (r.action == "skipped")
      say(cat("[", i + 1, "/", total, "] ", r.name, ": skipped (already finished at step ", r.steps, ")"));
    else
      say(cat("[", i + 1, "/", total, "] ", r.name, ": ", r.action, ", ", r.steps, " steps (", r.tokens, " tokens) in ",
              format_duration(r.seconds)));
    outcomes[i] = r;
  };
  // Runs that start from the same step on the same data stream train together (one pass over the
  // data for all of them); a continuation waits for the run it continues.
  std::vector<std::vector<size_t>> groups;
  std::vector<PreparedRun> prepared(total);
  std::map<std::string, size_t> group_of;
  for (size_t i = 0; i < total; ++i) {
    if (!runs[i].continue_from.empty()) continue;
    prepared[i] = prepare_run(runs[i], out_root);
    if (prepared[i].finished) {
      report(i, *prepared[i].finished);
      continue;
    }
    const std::string key = cat(prepared[i].start_step, "|", data_stream_identity(runs[i].config).dump());
    if (!group_of.count(key)) {
      group_of[key] = groups.size();
      groups.emplace_back();
    }
    groups[group_of[key]].push_back(i);
  }
  for (size_t i = 0; i < total; ++i)
    if (!runs[i].continue_from.empty()) groups.push_back({i});
  for (const std::vector<size_t>& group : groups) {
    std::vector<TrainConfig> configs;
    std::string names;
    for (size_t i : group) {
      if (!runs[i].continue_from.empty()) {
        prepared[i] = prepare_run(runs[i], out_root);
        if (prepared[i].finished) {
          report(i, *prepared[i].finished);
          continue;
        }
      }
      configs.push_back(prepared[i].config);
      names += cat(names.empty() ? "" : ", ", runs[i].name);
    }
    if (configs.empty()) continue;
    say(cat("[", group.front() + 1, "/", total, "] ", names, ": ", configs.front().steps, " steps",
            configs.size() > 1 ? ", trained together" : ""));
    const std::vector<TrainResult> results = train_together(configs);
    size_t k = 0;
    for (size_t i : group)
      if (!outcomes[i]) report(i, trained_outcome(runs[i], prepared[i], results[k++]));
  }
  std::vector<RunOutcome> out;
  for (const std::optional<RunOutcome>& r : outcomes) out.push_back(*r);
  if (summarise) summarise(out);  // study_lock is still held
  return out;
}

// ---- metrics.csv ----

Metrics read_metrics(const std::string& csv_path) {
  Metrics m;
  static_cast<CsvNumbers&>(m) = read_csv_numbers(csv_path);
  if (m.columns.empty() || m.columns[0] != "step") throw DataError(cat(csv_path, ": the first column should be 'step'"));
  if (m.rows.empty()) throw DataError(cat(csv_path, ": no logged steps"));
  return m;
}

size_t Metrics::row_at_or_below(int64_t step) const {
  size_t found = rows.size();
  for (size_t i = 0; i < rows.size(); ++i)
    if (rows[i][0] <= double(step)) found = i;
  if (found == rows.size()) throw DataError(cat(path, ": no logged step at or below ", step));
  return found;
}

double Metrics::tail_mean(const std::string& name, size_t last, double fraction) const {
  const std::vector<double> values = column(name);
  const size_t count = std::max<size_t>(1, static_cast<size_t>((last + 1) * fraction));
  double sum = 0;
  for (size_t i = last + 1 - count; i <= last; ++i) sum += values[i];
  return sum / double(count);
}

}  // namespace sae
