// sae_train's lists and OUT/sweep.json (see run_list.h).
#include "sae/cli/run_list.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <optional>
#include <stdexcept>

#include "io/atomic_file.h"
#include "io/json.h"
#include "io/mapped_file.h"
#include "lm/decoder_model.h"
#include "lm/hook_points.h"
#include "lm/model_loader.h"
#include "sae/arch/registry.h"
#include "sae/cli/cli.h"
#include "sae/report/table.h"
#include "sae/train/arch_config.h"
#include "sae/train/dictionary_reads.h"
#include "sae/train/options.h"
#include "sae/train/run_start.h"

namespace sae {
namespace {

namespace fs = std::filesystem;

constexpr const char* kSweepFile = "sweep.json";

// The list options and what each value sets.
const char* const kListOptions[] = {"l1", "k", "layer", "transcoder", "hook"};

// One config per value of --l1-list, --k-list, --layer-list (an SAE at hidden_states[L]),
// --transcoder-list (a transcoder of block L's MLP) or --hook-list (an SAE at each hook point), each
// into OUT/<option>_<value>/ (layer_<L>/ for the layer and transcoder lists, hook_<name>/).
std::vector<TrainConfig> configs_of(const TrainConfig& base, const std::string& option,
                                    const std::vector<std::string>& values) {
  std::vector<TrainConfig> configs;
  for (const std::string& value : values) {
    TrainConfig c = base;
    std::string name;
    if (option == "l1") {
      c.l1 = std::stod(value);
      name = "l1_" + format_number(c.l1, 6);
    } else if (option == "k") {
      const int64_t k = std::stoll(value);
      c.arch.set("k", Json(k));
      name = "k_" + std::to_string(k);
    } else if (option == "hook") {
      c.hook = value;
      c.given.push_back("hook");
      name = "hook_" + value;
    } else {
      const int64_t block = std::stoll(value);
      if (option == "layer") c.layer = block;
      else c.transcoder_block = block;
      c.given.push_back(option);
      name = "layer_" + std::to_string(block);
    }
    if (option == "hook" || option == "layer" || option == "transcoder") resolve_expansion_factor(c);  // its own d
    c.out = (fs::path(base.out) / name).string();
    configs.push_back(c);
  }
  return configs;
}

// Block indices of --layer-list / --transcoder-list: non-negative integers, increasing.
std::vector<std::string> block_list(const std::string& option, const std::string& text) {
  std::vector<std::string> out;
  for (double v : parse_increasing_number_list(option, text)) {
    if (v != static_cast<double>(static_cast<int64_t>(v)) || v > 1024)
      throw UsageError(cat("--", option, ": ", v, " is not a block index"));
    out.push_back(std::to_string(static_cast<int64_t>(v)));
  }
  return out;
}

// The hook points of --hook-list: each one we read (lm/hook_points.h), none twice, also not by
// another name of the same activation (blocks.0.hook_resid_post is hidden_states[1]) where the
// model's config.json can be read (otherwise the run says what is wrong with it).
std::vector<std::string> hook_list(const std::string& text, const std::string& model_dir) {
  const std::vector<std::string> names = split_option_list("hook-list", text);
  std::optional<DecoderConfig> model;
  try {
    model = read_model_config(model_dir).config;
  } catch (const Error&) {
  }
  std::vector<HookSite> sites;
  for (size_t i = 0; i < names.size(); ++i) {
    HookSite site = parse_hook_name(names[i], "--hook-list");
    for (size_t j = 0; j < i; ++j)
      if (names[j] == names[i]) throw UsageError(cat("--hook-list names ", names[i], " twice"));
    if (!model) continue;
    site = canonical_site(resolve_hook_site(*model, site, "--hook-list " + names[i]), model->num_layers);
    for (size_t j = 0; j < sites.size(); ++j)
      if (sites[j] == site)
        throw UsageError(cat("--hook-list: ", names[j], " and ", names[i], " are the same activations (",
                             hook_name(site), ")"));
    sites.push_back(site);
  }
  return names;
}

// A file's identity (an atomic write makes a new one): inode and change time, or "" when absent.
std::string stamp(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return "";
  return cat(st.st_ino, ":", st.st_ctim.tv_sec, ".", st.st_ctim.tv_nsec);
}

std::unique_ptr<FileLock> lock_folder(const std::string& out) {
  return std::make_unique<FileLock>((fs::path(out) / ".lock").string());
}

}  // namespace

ListFolder::~ListFolder() {
  if (file_.empty()) return;  // a --resume: its sweep.json is the list's own
  for (size_t i = 0; i < paths_.size(); ++i)
    if (stamp(paths_[i]) != stamps_[i]) return;  // an SAE began: the list is this one now
  try {
    if (replaced_) write_file_atomic(file_, *replaced_);
    else fs::remove(file_);
  } catch (const std::exception&) {
    return;  // left as it is (the list's own command starts it again)
  }
  remove_made_folders(made_);
}

std::vector<TrainConfig> list_configs(const TrainConfig& base, const ListOptions& lists, bool owner,
                                      std::unique_ptr<ListFolder>& held) {
  const bool l1s = lists.l1s.has_value(), ks = lists.ks.has_value(), layers = lists.layers.has_value(),
             transcoders = lists.transcoders.has_value(), hooks = lists.hooks.has_value();
  if (int(l1s) + int(ks) + int(layers) + int(transcoders) + int(hooks) > 1)
    throw UsageError("give one of --l1-list, --k-list, --layer-list, --transcoder-list and --hook-list");
  if (l1s && base.was_given("l1")) throw UsageError("give --l1 or --l1-list, not both");
  if (ks && base.was_given("k")) throw UsageError("give --k or --k-list, not both");
  if (ks) {  // (the check of each SAE's --k would name an option the command line does not give)
    const std::vector<std::string> reads = run_unit(base).reads();
    if (std::find(reads.begin(), reads.end(), "k") == reads.end())
      throw UsageError(cat("--k-list trains one SAE per k: --architecture ", base.architecture, " has no k (",
                           units_reading("k"), " have one)"));
  }
  if (layers && (base.was_given("layer") || base.was_given("hook") || base.was_given("transcoder")))
    throw UsageError("--layer-list trains an SAE at hidden_states[L] for each L: give it without --layer, "
                     "--hook and --transcoder");
  if (transcoders && base.was_given("transcoder"))
    throw UsageError("give --transcoder or --transcoder-list, not both");
  if (transcoders && base.was_given("hook-in") && base.was_given("hook-out"))  // each the same, labelled by a block it did not read
    throw UsageError("--transcoder-list trains a transcoder at each block it names: --hook-in and --hook-out together "
                     "would replace both of its hooks (give at most one of them)");
  if (hooks && (base.was_given("layer") || base.was_given("hook") || base.was_given("transcoder")))
    throw UsageError("--hook-list trains an SAE at each hook point it names: give it without --layer, --hook and "
                     "--transcoder");
  if (!l1s && !ks && !layers && !transcoders && !hooks) return {};
  if ((layers || transcoders || hooks) && base.data != "text")  // each SAE the same, labelled by a hook it did not read
    throw UsageError(cat("--", layers ? "layer" : transcoders ? "transcoder" : "hook", "-list reads the model's ",
                         "blocks: it trains from text (--model, --text), not --data ", base.data));
  std::vector<std::string> values;
  if (l1s)
    for (double l1 : parse_increasing_number_list("l1-list", *lists.l1s))
      values.push_back(format_number(l1, 17));
  if (ks)
    for (int64_t k : parse_increasing_int_list("k-list", *lists.ks))
      values.push_back(std::to_string(k));
  if (layers) values = block_list("layer-list", *lists.layers);
  if (transcoders) values = block_list("transcoder-list", *lists.transcoders);
  if (hooks) values = hook_list(*lists.hooks, base.model);
  const std::string option = l1s ? "l1" : ks ? "k" : layers ? "layer" : transcoders ? "transcoder" : "hook";
  if (!base.resume.empty())
    throw UsageError(cat("--", option, "-list and --resume: --resume OUT continues the SAEs its list started "
                         "(OUT/sweep.json); give it alone"));
  refuse_options_without_effect(base);  // said before OUT and its sweep.json are made (its SAEs share them)
  if (!owner) return configs_of(base, option, values);
  refuse_study_folder(base.out);
  const fs::path file = fs::path(base.out) / kSweepFile;
  auto folder = std::make_unique<ListFolder>();
  folder->made_ = missing_folders(base.out);
  fs::create_directories(base.out);
  folder->lock_ = lock_folder(base.out);
  // A list stopped before any of its SAEs began (bad data, say) holds no SAE yet: started again.
  const bool begun = !run_folders_under(base.out).empty();
  if (fs::exists(file) && begun && !base.overwrite)
    throw UsageError(cat("--out ", base.out, " already holds SAEs trained together (", file.string(),
                         "); continue them with --resume ", base.out,
                         ", replace them with --overwrite, or choose another --out"));
  Json sweep = Json::object();
  sweep["option"] = option;
  Json list = Json::array();
  for (const std::string& v : values) list.push_back(v);
  sweep["values"] = list;
  sweep["config"] = base.to_json();
  const std::vector<TrainConfig> configs = configs_of(base, option, values);
  std::error_code ec;
  if (fs::exists(file, ec)) folder->replaced_ = read_small_file(file.string());
  for (const TrainConfig& c : configs) {
    folder->paths_.push_back((fs::path(c.out) / "config.json").string());
    folder->stamps_.push_back(stamp(folder->paths_.back()));
  }
  folder->file_ = file.string();
  held = std::move(folder);  // from here on, a list that never begins is undone
  write_file_atomic(file.string(), sweep.dump(2) + "\n");
  return configs;
}

// --resume OUT of a list's run (see run_list.h).
std::vector<TrainConfig> resumed_list_configs(const TrainConfig& cli, bool owner, std::unique_ptr<ListFolder>& held) {
  if (cli.resume.empty()) return {};
  std::vector<TrainConfig> configs;
  const fs::path file = fs::path(cli.resume) / kSweepFile;
  if (fs::exists(file) && owner) {
    held = std::make_unique<ListFolder>();
    held->lock_ = lock_folder(cli.resume);
  }
  if (!fs::exists(file)) {
    for (const std::string& run : run_folders_under(cli.resume)) {
      TrainConfig c = cli;
      c.resume = run;
      configs.push_back(c);
    }
    return configs;
  }
  const Json sweep = read_json_file(file.string());
  std::vector<std::string> values;
  TrainConfig base;
  try {
    const std::string option = sweep.at("option").as_string();
    if (std::find(std::begin(kListOptions), std::end(kListOptions), option) == std::end(kListOptions))
      throw DataError("option must be \"l1\", \"k\", \"layer\", \"transcoder\" or \"hook\"");
    for (const Json& v : sweep.at("values").elements()) values.push_back(v.as_string());
    base = resumed_config(sweep.at("config"), cli);
    refuse_conflicts(cli, base, file.string());  // (as each begun SAE's resume does: none is dropped silently)
    base.out = cli.resume;
    base.resume.clear();
    base.given = cli.given;
    for (TrainConfig& c : configs_of(base, option, values)) {
      if (fs::exists(fs::path(c.out) / "config.json")) {  // begun: continued
        TrainConfig resumed = cli;
        resumed.resume = c.out;
        configs.push_back(resumed);
      } else {
        configs.push_back(c);  // killed before it began: started
      }
    }
  } catch (const std::invalid_argument&) {
    throw DataError(cat(file.string(), ": a value is not a number"));
  } catch (const DataError& e) {
    throw DataError(cat(file.string(), ": ", e.what()));
  }
  return configs;
}

}  // namespace sae
