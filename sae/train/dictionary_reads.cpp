// A run's reads (see dictionary_reads.h).
#include "sae/train/dictionary_reads.h"

#include <algorithm>

#include "lm/decoder_model.h"
#include "lm/model_loader.h"
#include "sae/arch/registry.h"
#include "sae/data/activations.h"
#include "sae/data/synthetic.h"
#include "sae/train/arch_config.h"
#include "sae/train/train_config.h"

namespace sae {

namespace {
void require(bool ok, const std::string& message) {
  if (!ok) throw UsageError(message);
}

const char kModelB[] = "model_b:";

std::vector<std::string> comma_list(const std::string& text, const std::string& option) {
  std::vector<std::string> out;
  size_t begin = 0;
  while (true) {
    const size_t comma = text.find(',', begin);
    out.push_back(text.substr(begin, comma == std::string::npos ? std::string::npos : comma - begin));
    require(!out.back().empty(), cat(option, " '", printable(text), "': an empty entry in the list"));
    if (comma == std::string::npos) break;
    begin = comma + 1;
  }
  return out;
}

void require_distinct(const std::vector<std::string>& reads, const std::string& option) {
  for (size_t i = 0; i < reads.size(); ++i)
    for (size_t j = i + 1; j < reads.size(); ++j)
      require(reads[i] != reads[j], cat(option, ": ", printable(reads[i]), " is read twice"));
}
}  // namespace

const char* dictionary_kind_name(DictionaryKind kind) {
  switch (kind) {
    case DictionaryKind::Transcoder: return "transcoder";
    case DictionaryKind::Crosscoder: return "crosscoder";
    default: return "sae";
  }
}

std::string text_read_name(int model, const std::string& hook) { return model == 1 ? kModelB + hook : hook; }

TextReadName parse_text_read(const std::string& read) {
  TextReadName out;
  std::string hook = read;
  if (read.rfind(kModelB, 0) == 0) {
    out.model = 1;
    hook = read.substr(sizeof kModelB - 1);
  }
  out.site = parse_hook_name(hook, "a read");
  return out;
}

DictionaryReads dictionary_reads(const TrainConfig& c) {
  DictionaryReads r;
  r.text = c.data == "text";
  const bool transcoder =
      c.transcoder_block >= 0 || !c.hook_in.empty() || !c.hook_out.empty() || !c.target_data.empty();
  if (!r.text) refuse_path_with_comma("--data", c.data);
  if (!c.target_data.empty()) refuse_path_with_comma("--target-data", c.target_data);
  const bool crosscoder = !c.hooks.empty() || !c.model_b.empty() || (!r.text && c.data.find(',') != std::string::npos);
  require(!(transcoder && crosscoder),
          "a run trains a transcoder (--transcoder, --hook-in/--hook-out, --target-data) or a crosscoder (--hooks, "
          "--model-b, --data A,B,...), not both");
  require(c.transcoder_block >= -1 && c.transcoder_block <= 1024,
          cat("--transcoder must be a block index >= 0 (-1: none), got ", c.transcoder_block));
  const bool where_given = !c.hook.empty() || c.was_given("layer");
  const std::string sae_hook = c.hook.empty() ? hook_name(HookSite{c.layer, HookPoint::FinalOutput}) : c.hook;
  if (transcoder) {
    r.kind = DictionaryKind::Transcoder;
    if (r.text) {
      require(c.target_data.empty(), "--target-data is for activation files and caches; from text a transcoder "
                                     "reads --hook-in and --hook-out (or --transcoder L)");
      require(!where_given, "--hook and --layer say where an SAE reads; a transcoder reads --hook-in and --hook-out "
                            "(or --transcoder L)");
      require(c.trained_before || c.transcoder_block < 0 || c.hook_in.empty() || c.hook_out.empty(),  // (older runs resume)
              cat("--transcoder ", c.transcoder_block, " names both hooks, which --hook-in and --hook-out replace: give "
                  "one of the two ways (--transcoder L with one of --hook-in, --hook-out to change that one)"));
      const std::string L = std::to_string(c.transcoder_block);
      const std::string in = !c.hook_in.empty() ? c.hook_in
                             : c.transcoder_block >= 0 ? "blocks." + L + ".ln2.hook_normalized" : "";
      const std::string out = !c.hook_out.empty() ? c.hook_out : c.transcoder_block >= 0 ? "blocks." + L + ".hook_mlp_out" : "";
      require(!in.empty() && !out.empty(), "a transcoder from text needs --hook-in and --hook-out, or --transcoder L");
      parse_hook_name(in, "--hook-in");
      parse_hook_name(out, "--hook-out");
      require(in != out, cat("--hook-in and --hook-out are both ", printable(in), ": that is an SAE (--hook)"));
      r.in = {in};
      r.out = {out};
    } else {
      require(c.data != "synthetic", "a transcoder reads activation files or caches (--data X --target-data Y) or "
                                     "text (--model, --text, --hook-in, --hook-out), not synthetic data");
      require(c.transcoder_block < 0 && c.hook_in.empty() && c.hook_out.empty(),
              "--transcoder, --hook-in and --hook-out read hooks of a model (--model, --text); from activation "
              "files a transcoder takes --data X --target-data Y");
      require(c.target_data != c.data, cat("--target-data is --data (", printable(c.data), "): that is an SAE"));
      r.in = {c.data};
      r.out = {c.target_data};
    }
  } else if (crosscoder) {
    r.kind = DictionaryKind::Crosscoder;
    if (r.text) {
      require(c.hooks.empty() || !where_given, "--hooks lists a crosscoder's hooks: give it or --hook / --layer, not both");
      const std::vector<std::string> hooks = c.hooks.empty() ? std::vector<std::string>{sae_hook} : comma_list(c.hooks, "--hooks");
      for (const std::string& h : hooks) parse_hook_name(h, "--hooks");
      for (const std::string& h : hooks) r.in.push_back(text_read_name(0, h));
      if (!c.model_b.empty())
        for (const std::string& h : hooks) r.in.push_back(text_read_name(1, h));
      require(r.in.size() >= 2, "a crosscoder reads two activations or more: --hooks a,b,... or --model-b DIR");
      require_distinct(r.in, "--hooks");
    } else {
      require(c.hooks.empty() && c.model_b.empty(), "--hooks and --model-b read hooks of models (--model, --text); "
                                                    "a crosscoder over activation files takes --data A,B,...");
      r.in = comma_list(c.data, "--data");
      for (const std::string& f : r.in)
        require(f != "synthetic" && f != "text", cat("--data ", printable(c.data), ": a crosscoder's sources are "
                                                     "activation files or caches"));
      require_distinct(r.in, "--data");
    }
    r.out = r.in;
  } else {
    r.in = {r.text ? sae_hook : c.data};
    r.out = r.in;
  }
  const ArchUnit* unit = find_arch_unit(c.architecture);
  if (unit && r.kind == DictionaryKind::Transcoder)
    require(unit->trains_transcoders(), cat("--architecture ", c.architecture, " does not train transcoders (",
                                            units_that(&ArchUnit::trains_transcoders), " do)"));
  if (unit && r.kind == DictionaryKind::Crosscoder) {
    require(unit->trains_crosscoders(), cat("--architecture ", c.architecture, " does not train crosscoders (",
                                            units_that(&ArchUnit::trains_crosscoders), " do)"));
    unit->validate_crosscoder(arch_settings(c));
  }
  require(!c.skip || r.kind == DictionaryKind::Transcoder,
          "--skip adds a skip path to a transcoder (--transcoder, --hook-in/--hook-out or --target-data)");
  require(r.kind == DictionaryKind::Sae || !per_token(c.normalize),
          cat("--normalize ", normalization_name(c.normalize), " normalises each token of an SAE's input; a ",
              dictionary_kind_name(r.kind), " takes --normalize dataset (each activation scaled on its own) or none"));
  require(r.kind == DictionaryKind::Sae || c.normalize != Normalization::Story,
          cat("--normalize story is the study's per-story normalisation of an SAE's input; a ",
              dictionary_kind_name(r.kind), " takes --normalize dataset (each activation scaled on its own) or none"));
  return r;
}

int64_t dictionary_read_width(const TrainConfig& c) {
  if (c.data == "synthetic") return c.synthetic.d;
  const DictionaryReads reads = dictionary_reads(c);
  if (!reads.text) return open_activations(reads.in.front(), c.synthetic)->d();
  const TextReadName read = parse_text_read(reads.in.front());
  const ModelFolder folder = read_model_config(read.model == 0 ? c.model : c.model_b);
  return folder.config.hook_width(resolve_hook_site(folder.config, read.site));
}

void resolve_expansion_factor(TrainConfig& c) {
  if (c.expansion_factor == 0 || !c.resume.empty()) return;
  require(c.expansion_factor > 0, cat("--expansion-factor must be >= 1 (0: --features), got ", c.expansion_factor));
  const bool features_given =
      c.was_given("features") && std::find(c.from_profile.begin(), c.from_profile.end(), "features") == c.from_profile.end();
  require(!features_given, "give --features or --expansion-factor, not both");
  require(c.init.empty(), "--expansion-factor with --init: the SAE it starts from sets the width");
  const int64_t d = dictionary_read_width(c);
  require(c.expansion_factor <= 10000000 / std::max<int64_t>(d, 1),
          cat("--expansion-factor ", c.expansion_factor, " x d ", d, " is more than 1e7 features"));
  c.features = c.expansion_factor * d;
}

}  // namespace sae
