// The feature browser's data (see browser.h); the page itself is in browser_page.cpp.
#include "sae/features/browser.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "lm/model_loader.h"
#include "lm/tokenizer.h"
#include "sae/data/synthetic.h"
#include "sae/features/token_text.h"
#include "sae/features/top_stories.h"
#include "sae/step/feature_stats_math.h"
#include "sae/train/checkpoint.h"
#include "sae/train/dictionary_learning_file.h"
#include "sae/train/metrics.h"
#include "sae/train/train_config.h"
#include "tensor/ops.h"

namespace fs = std::filesystem;

namespace sae {

PromotedTokens promoted_tokens(const Tensor& W_dec, const Tensor& unembedding, int64_t count) {
  const Tensor dec = W_dec.to(Device::CPU), unembed = unembedding.to(Device::CPU);
  if (dec.ndim() != 2 || unembed.ndim() != 2 || dec.size(1) != unembed.size(1))
    throw DataError(cat("promoted tokens: the decoder ", dec.describe(), " and the unembedding ", unembed.describe(),
                        " differ in width"));
  const int64_t features = dec.size(0), vocab = unembed.size(0), n = std::min(count, vocab);
  PromotedTokens out;
  out.promoted.reserve(static_cast<size_t>(features));
  out.suppressed.reserve(static_cast<size_t>(features));
  constexpr int64_t kBlock = 256;  // features per GEMM: bounds the [block, V] logits
  std::vector<int64_t> order(static_cast<size_t>(vocab));
  for (int64_t f0 = 0; f0 < features; f0 += kBlock) {
    const int64_t rows = std::min(kBlock, features - f0);
    const Tensor logits = matmul(dec.slice_rows(f0, f0 + rows), unembed, false, true);  // [rows, V]
    const float* p = logits.data<float>();
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = p + r * vocab;
      // A row that moves every logit alike (a zero row: all 0) promotes and suppresses nothing. Our
      // logits are not centred over the vocabulary (docs/contract.md), so their sign says nothing.
      const auto [low, high] = std::minmax_element(row, row + vocab);
      const bool flat = vocab == 0 || *low == *high;
      auto pick = [&](bool largest) {
        std::vector<TokenLogit> list;
        if (flat) return list;
        for (int64_t v = 0; v < vocab; ++v) order[v] = v;
        std::partial_sort(order.begin(), order.begin() + n, order.end(), [&](int64_t a, int64_t b) {
          if (row[a] != row[b]) return largest ? row[a] > row[b] : row[a] < row[b];
          return a < b;
        });
        for (int64_t j = 0; j < n; ++j) list.push_back({static_cast<int32_t>(order[j]), row[order[j]]});
        return list;
      };
      out.promoted.push_back(pick(true));
      out.suppressed.push_back(pick(false));
    }
  }
  return out;
}

namespace {

// A number for the page: 4 significant digits, null when not a number (not known).
Json compact(double v) { return std::isfinite(v) ? Json(round_significant(v, 4)) : Json(); }

bool has_model_files(const fs::path& dir) {
  return fs::exists(dir / "config.json") && fs::exists(dir / "model.safetensors");
}

}  // namespace

BrowserData browser_data(const BrowserOptions& options, std::string* notes) {
  auto note = [&](const std::string& line) {
    if (notes) *notes += line + "\n";
  };
  // A Gemma Scope params.npz or an ae.pt given as the file: its folder plays the run folder.
  const bool npz_file = !fs::is_directory(options.run) && !single_file_sae(options.run).empty();
  const fs::path given(options.run);
  const fs::path run = npz_file ? (given.has_parent_path() ? given.parent_path() : fs::path(".")) : given;
  if (!fs::is_directory(run)) throw DataError(cat(options.run, ": no such run folder"));
  if (!options.model.empty() && !fs::is_directory(options.model))
    throw DataError(cat("--model ", options.model, ": no such folder"));
  // The SAE: RUN/sae, the folder itself (SAELens's layout, or one holding a params.npz), or the .npz.
  const fs::path sae_dir = npz_file ? given : fs::exists(run / "sae" / "cfg.json") ? run / "sae" : run;
  if (!npz_file && sae_dir == run && single_file_sae(run.string()).empty() && is_dictionary_learning_save_dir(run.string()))
    throw DataError(dictionary_learning_save_dir_message(options.run));
  if (!npz_file && sae_dir == run && fs::exists(run / "config.json") && !fs::exists(run / "cfg.json") &&
      single_file_sae(run.string()).empty())  // a training run's folder, before its end wrote sae/
    throw DataError(cat(options.run, ": the run has no final SAE yet (RUN/sae/ is written when it ends); give --run ",
                        "RUN/checkpoints/step_N for one of its checkpoints"));
  const Checkpoint sae = load_checkpoint(sae_dir.string(), Device::CPU, /*with_state=*/false);
  const int64_t features = sae.params.d_sae();
  const std::string stats_path =
      options.stats.empty() ? ((npz_file ? run : sae_dir) / "feature_stats.safetensors").string() : options.stats;
  if (!fs::exists(stats_path))
    throw DataError(cat(stats_path, ": no feature statistics. Runs gather them with --feature-stats-steps (on by "
                        "default); for another SAE or text, sae_features --stats-out writes them"));
  const FeatureStats stats = FeatureStats::load(stats_path);
  if (stats.features() != features)
    throw DataError(cat(stats_path, ": statistics of ", stats.features(), " features for an SAE with ", features));
  std::optional<Json> config;
  if (fs::exists(run / "config.json")) config = read_json_file((run / "config.json").string());

  // The model: its tokenizer names the tokens, its lm_head gives the promoted ones.
  std::string model_dir = options.model;
  if (model_dir.empty() && config && config->has("model") && config->at("model").is_string())
    model_dir = config->at("model").as_string();
  std::unique_ptr<BpeTokenizer> tokenizer;
  std::optional<PromotedTokens> promoted;
  if (!model_dir.empty()) {
    if (!fs::is_directory(model_dir)) {
      note(cat("the run's model folder ", model_dir, " is gone: tokens are shown as ids, no promoted tokens "
               "(give --model DIR)"));
    } else {
      // Token ids named by another model's tokenizer, tokens promoted by its unembedding: said.
      for (const std::string& warning : other_model_warnings(sae.cfg, model_dir)) note(cat("warning: ", warning));
      tokenizer = std::make_unique<BpeTokenizer>(BpeTokenizer::from_model_dir(model_dir));
      // Promoted tokens (W_dec W_U^T) mean something where the SAE writes into the residual stream's
      // space: not at attn.hook_z (per-head outputs) or ln2.hook_normalized (before the norm's weights).
      std::string hook = options.hook;
      if (!hook.empty()) parse_hook_name(hook, "--hook");  // a UsageError for a name we do not read
      if (hook.empty() && config && config->has("hook") && config->at("hook").is_string())
        hook = config->at("hook").as_string();
      // A transcoder's decoder writes where its target is: metadata.hook_name_out.
      const char* written_key = sae.params.transcoder ? "hook_name_out" : "hook_name";
      if (hook.empty() && sae.cfg.has("metadata") && sae.cfg.at("metadata").is_object() &&
          sae.cfg.at("metadata").has(written_key) && sae.cfg.at("metadata").at(written_key).is_string())
        hook = sae.cfg.at("metadata").at(written_key).as_string();
      const bool residual_space = hook.empty() || (hook.find("hook_z") == std::string::npos &&
                                                   hook.find("hook_normalized") == std::string::npos);
      if (sae.params.sources > 1) {
        note("a crosscoder's decoder rows span its sources: no promoted tokens (each feature shows its decoder "
             "norm per source)");
      } else if (!residual_space) {
        note(cat("the SAE reads ", hook, ", not the residual stream's space: no promoted tokens"));
      } else if (has_model_files(model_dir)) {
        // Only the unembedding and the final norm's weight are read; the blocks are left on disk.
        const Tensor unembedding = load_unembedding(model_dir);
        if (unembedding.size(1) != sae.params.d_out())
          throw DataError(cat(model_dir, ": the model's width ", unembedding.size(1), " is not the width the SAE's "
                              "decoder writes (", sae.params.d_out(), ")",
                              hook.empty() ? " (an SAE that names no hook is taken to write the residual stream; one "
                                             "at attn.hook_z, as Gemma Scope's -att- SAEs: give --hook)"
                                           : ""));
        promoted = promoted_tokens(sae.params.W_dec, unembedding, options.top_tokens);
      } else {
        note(cat(model_dir, " has no config.json + model.safetensors: no promoted tokens"));
      }
    }
  }

  // Synthetic data: the planted concepts, regenerated from the run's generator options.
  std::optional<std::vector<ConceptMatch>> concepts;
  if (config && config->has("data") && config->at("data").is_string() && config->at("data").as_string() == "synthetic") {
    TrainConfig c;
    try {
      c = TrainConfig::from_json(*config);
    } catch (const Error& e) {
      throw DataError(cat((run / "config.json").string(), ": ", e.what()));
    }
    c.synthetic.stories = 1;  // the concepts depend on the seed and sizes only, not on the story count
    const SyntheticSource source(c.synthetic);
    if (source.d() != sae.params.d_in())
      throw DataError(cat((run / "config.json").string(), ": synthetic width ", source.d(), " is not the SAE's d_in ",
                          sae.params.d_in()));
    concepts = best_concept_per_feature(source.concepts(), sae.params.W_dec);
  }

  // A crosscoder: each feature's decoder norm per source (W_dec[i, s d:(s+1) d]), for model diffing.
  const int64_t sources = sae.params.sources;
  const std::vector<double> source_norms = source_decoder_norms(sae.params);

  // Features, and the tokens they mention.
  std::set<int32_t> used;
  const std::vector<double> histogram = stats.histogram(), counts = stats.counts();
  const double tokens = double(stats.tokens());
  std::vector<std::string> list;  // each feature built as a small Json, kept as its text
  list.reserve(static_cast<size_t>(features));
  for (int64_t i = 0; i < features; ++i) {
    Json f = Json::object();
    f["n"] = counts[i];
    f["d"] = compact(tokens > 0 ? counts[i] / tokens : 0.0);
    Json bins = Json::array();  // [bin, count] for the non-empty bins
    for (int b = 0; b < kHistogramBins; ++b) {
      const double v = histogram[i * kHistogramBins + b];
      if (v == 0) continue;
      Json pair = Json::array();
      pair.push_back(b);
      pair.push_back(v);
      bins.push_back(std::move(pair));
    }
    f["h"] = bins;
    Json tops = Json::array();
    for (int32_t r = 0; r < stats.top_count(i); ++r) {
      const FeatureTop t = stats.top(i, r);
      Json e = Json::object();
      e["v"] = compact(t.value);
      e["s"] = t.story;
      e["p"] = t.position;
      e["st"] = t.step;
      Json ids = Json::array(), values = Json::array();
      for (size_t o = 0; o < t.tokens.size(); ++o) {
        ids.push_back(static_cast<int64_t>(t.tokens[o]));
        values.push_back(compact(t.values[o]));
        if (t.tokens[o] >= 0) used.insert(t.tokens[o]);
      }
      e["t"] = ids;
      e["a"] = values;
      tops.push_back(std::move(e));
    }
    f["top"] = tops;
    if (promoted) {
      auto pairs = [&](std::vector<TokenLogit>& tokens) {  // [[id, logit], ...]; freed once written
        Json out = Json::array();
        for (const TokenLogit& t : tokens) {
          Json pair = Json::array();
          pair.push_back(t.id);
          pair.push_back(compact(t.logit));
          out.push_back(std::move(pair));
          used.insert(t.id);
        }
        std::vector<TokenLogit>().swap(tokens);
        return out;
      };
      f["up"] = pairs(promoted->promoted.at(static_cast<size_t>(i)));
      f["down"] = pairs(promoted->suppressed.at(static_cast<size_t>(i)));
    }
    if (sources > 1) {
      Json norms = Json::array();
      for (int64_t src = 0; src < sources; ++src) norms.push_back(compact(source_norms[static_cast<size_t>(i * sources + src)]));
      f["sn"] = norms;
    }
    if (concepts) {
      Json match = Json::array();
      match.push_back((*concepts)[i].index);
      match.push_back(compact((*concepts)[i].cosine));
      f["c"] = match;
    }
    list.push_back(f.dump());
  }
  Json vocab = Json::object();
  for (int32_t id : used) {
    // (an id the tokenizer does not know, data from elsewhere: shown as the id)
    vocab[std::to_string(id)] = tokenizer && tokenizer->has_id(id) ? display_token(tokenizer->token_text(id))
                                                                   : cat("[", id, "]");
  }

  std::vector<double> edges;
  for (int b = 0; b < kHistogramBins; ++b) edges.push_back(histogram_lower_edge(b));
  Json edge_list = Json::array();
  for (double e : edges) edge_list.push_back(e);

  Json data = Json::object();
  data["title"] = display_token(options.run);  // paths shown as text: controls and bidi overrides escaped
  Json about = Json::object();
  about["architecture"] = sae.params.kind;
  about["d_in"] = sae.params.d_in();
  about["d_sae"] = features;
  if (sources > 1) {
    Json names = Json::array();
    const Json* meta = sae.cfg.has("metadata") && sae.cfg.at("metadata").is_object() ? &sae.cfg.at("metadata") : nullptr;
    for (int64_t src = 0; src < sources; ++src) {
      const bool named = meta && meta->has("crosscoder_hooks") && meta->at("crosscoder_hooks").is_array() &&
                         static_cast<int64_t>(meta->at("crosscoder_hooks").elements().size()) == sources &&
                         meta->at("crosscoder_hooks").elements()[static_cast<size_t>(src)].is_string();
      names.push_back(named ? display_token(meta->at("crosscoder_hooks").elements()[static_cast<size_t>(src)].as_string())
                            : cat("source ", src));
    }
    about["sources"] = names;
  }
  about["sae"] = sae_dir.string();
  about["stats"] = stats_path;
  about["model"] = tokenizer ? display_token(model_dir) : std::string();
  // What the statistics were gathered on: sae_features records it (any run's statistics given with
  // --stats may be of other data than the run's); else the run's data (its config.json).
  std::string data_label = "(unknown)";
  const Json* gathered = stats.source().has("data") && stats.source().at("data").is_object() ? &stats.source().at("data") : nullptr;
  const auto text_of = [](const Json& j, const char* key) {
    return j.has(key) && j.at(key).is_string() ? j.at(key).as_string() : std::string();
  };
  if (gathered && !text_of(*gathered, "text").empty()) {
    std::string models = text_of(*gathered, "model");
    if (!text_of(*gathered, "model_b").empty()) models += " and " + text_of(*gathered, "model_b");
    std::string hook = text_of(*gathered, "hook_name");
    if (hook.empty() && gathered->has("crosscoder_hooks") && gathered->at("crosscoder_hooks").is_array())
      for (const Json& h : gathered->at("crosscoder_hooks").elements())
        if (h.is_string()) hook += (hook.empty() ? "" : ", ") + h.as_string();
    data_label = display_token(cat(text_of(*gathered, "text"), " through ", models, hook.empty() ? "" : " at " + hook));
  } else if (gathered && !text_of(*gathered, "data").empty()) {
    data_label = display_token(text_of(*gathered, "data"));
  } else if (config && config->has("data") && config->at("data").is_string()) {
    data_label = display_token(config->at("data").as_string());
  }
  about["data"] = data_label;
  about["first_step"] = stats.first_step();
  about["last_step"] = stats.last_step();
  about["steps"] = stats.steps();
  about["tokens"] = stats.tokens();
  about["k"] = stats.k();
  about["context"] = stats.context();
  about["gathered_by"] = stats.source().has("gathered_by") && stats.source().at("gathered_by").is_string()
                             ? display_token(stats.source().at("gathered_by").as_string())
                             : std::string("(unknown)");
  data["about"] = about;
  data["has_tokens"] = stats.has_token_ids();
  data["has_text"] = tokenizer != nullptr;
  data["has_promoted"] = promoted.has_value();
  data["has_concepts"] = concepts.has_value();
  data["edges"] = edge_list;
  data["vocab"] = vocab;
  return BrowserData{std::move(data), std::move(list)};
}

std::string json_for_script(const std::string& text) {
  std::string out;
  out.reserve(text.size() + text.size() / 16);
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    // Outside strings JSON has none of these characters, so replacing them everywhere is safe.
    if (c == '<')
      out += "\\u003c";
    else if (c == '>')
      out += "\\u003e";
    else if (c == '&')
      out += "\\u0026";
    else if (static_cast<unsigned char>(c) == 0xE2 && i + 2 < text.size() && static_cast<unsigned char>(text[i + 1]) == 0x80 &&
             (static_cast<unsigned char>(text[i + 2]) == 0xA8 || static_cast<unsigned char>(text[i + 2]) == 0xA9)) {
      out += static_cast<unsigned char>(text[i + 2]) == 0xA8 ? "\\u2028" : "\\u2029";  // line separators
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace sae
