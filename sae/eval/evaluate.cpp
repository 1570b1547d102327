// evaluate_sae and its reports (see evaluate.h). T tokens, D width, F features, V vocabulary, P
// positions, L the SAE's hidden_states index.
#include "sae/eval/evaluate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>

#include "lm/text_data.h"
#include "lm/text_windows.h"
#include "sae/data/text_batches.h"
#include "sae/eval/next_token.h"
#include "tensor/ops.h"

namespace sae {

namespace {


double total(const std::vector<double>& values) {
  double s = 0;
  for (double v : values) s += v;
  return s;
}

double ratio_or_nan(double numerator, double denominator) {
  return denominator == 0 ? NAN : numerator / denominator;
}

// Every value of t is finite (its largest and smallest are).
bool all_finite(const Tensor& t) {
  return std::isfinite(reduce(ReduceOp::max, t).item()) && std::isfinite(reduce(ReduceOp::min, t).item());
}

// The squared norm in double (a float32 sum of squares overflows above ~3e38).
double squared_norm(const Tensor& t) {
  const double norm = reduce(ReduceOp::norm2, t).item();
  return norm * norm;
}

Json number_or_null(double value) { return std::isfinite(value) ? Json(value) : Json(); }

// The stories of the corpus as windows (lm/text_windows.h): of at most P positions (or
// --context-size), a BOS first when asked for.
struct Pieces {
  std::vector<TokenWindow> windows;
  int64_t stories = 0, tokens = 0, predictions = 0;  // tokens: the document tokens (no BOS)
};

Pieces read_pieces(const BpeTokenizer& tokenizer, const EvalOptions& options, const WindowOptions& windows) {
  Pieces p;
  StoryReader reader(options.text, options.text_field);
  TextStory story;
  while ((options.max_stories == 0 || p.stories < options.max_stories) && reader.next(story)) {
    const std::vector<int32_t> ids = tokenizer.encode(story.text, story.where);
    if (ids.empty()) continue;
    ++p.stories;
    const int64_t count = window_count(static_cast<int64_t>(ids.size()), windows);
    for (int64_t k = 0; k < count; ++k) {
      p.windows.push_back(document_window(ids, k, windows));
      p.tokens += p.windows.back().tokens;
      p.predictions += static_cast<int64_t>(p.windows.back().input.size()) - 1;
    }
  }
  if (p.windows.empty()) throw DataError(cat(options.text, ": no story with any token to evaluate"));
  if (p.predictions == 0)
    throw DataError(cat(options.text, ": every story is one token long, so there is no next token to predict"));
  return p;
}

}  // namespace

EvalResult evaluate_sae(DecoderModel& model, const BpeTokenizer& tokenizer, const SaeAtLayer& sae,
                        const EvalOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  const DecoderConfig& config = model.config();
  check_tokenizer_fits_model(tokenizer, config);
  if (!(options.dense_threshold >= 0 && options.dense_threshold <= 1))
    throw UsageError(cat("--dense-threshold must be in [0, 1], got ", options.dense_threshold));
  if (sae.params.device() != model.device())
    throw UsageError("evaluate_sae: the SAE and the model must be on one device");
  const HookSite site = sae.site;
  const int64_t d = config.hook_width(site), features = sae.params.d_sae();
  if (options.context_size > config.max_positions)
    throw UsageError(cat("--context-size ", options.context_size, " is more than the model's ", config.max_positions,
                         " positions"));
  const WindowOptions windows{options.bos, options.context_size > 0 ? options.context_size : config.max_positions};
  check_window_options(windows);
  const Pieces pieces = read_pieces(tokenizer, options, windows);
  int64_t longest = 0;
  for (const TokenWindow& w : pieces.windows) longest = std::max<int64_t>(longest, static_cast<int64_t>(w.input.size()));
  model.reserve(longest);

  EvalResult r;
  r.stories = pieces.stories;
  r.pieces = static_cast<int64_t>(pieces.windows.size());
  r.tokens = pieces.tokens;
  r.predictions = pieces.predictions;
  r.dense_threshold = options.dense_threshold;
  Progress progress(options.progress, 2 * r.pieces, 0, "sae_eval");

  // Pass 1: the mean of the hooked state over every token, the mean-ablation vector.
  std::vector<double> mean_sum(d, 0.0);
  int64_t done = 0, tokens_done = 0;
  // The rows of a window's state that are the document's tokens (the BOS row is left as it is).
  int64_t skip = 0;
  const auto document_rows = [&](const Tensor& x) { return x.slice_rows(skip, x.size(0)); };
  for (const TokenWindow& w : pieces.windows) {
    skip = w.bos ? 1 : 0;
    const std::vector<double> column_sums = sum(document_rows(model.forward_to_site(w.input, site)), 0).to_vector();
    for (int64_t j = 0; j < d; ++j) mean_sum[j] += column_sums[j];
    tokens_done += static_cast<int64_t>(w.input.size());
    ++done;
    progress.update_position(done, tokens_done, cat("mean pass, piece ", done, "/", r.pieces));
  }
  r.mean_activation.resize(d);
  for (int64_t j = 0; j < d; ++j) r.mean_activation[j] = mean_sum[j] / static_cast<double>(r.tokens);
  const Tensor mean = Tensor::from_vector(r.mean_activation, Shape{d}, DType::F32, model.device());

  // Pass 2: the four runs of every piece, and the SAE's statistics inside the spliced run.
  double ce_clean = 0, ce_spliced = 0, ce_zero = 0, ce_mean = 0, kl_spliced = 0, kl_zero = 0, kl_mean = 0;
  double squared_error = 0, variance = 0, active = 0;
  std::vector<double> fired(features, 0.0);
  // A transcoder reads its input hook on the way (a copy: the model reuses the buffer) and replaces
  // its output hook with its prediction; an SAE reads and replaces one hook.
  const bool transcoder = sae.params.transcoder;
  Tensor input;
  SiteHooks splice;
  if (transcoder) splice.at.emplace_back(sae.input_site, [&](Tensor& state) { input = document_rows(state).clone(); });
  splice.at.emplace_back(site, [&](Tensor& state) {
    Tensor x = document_rows(state);
    Tensor f;
    const Tensor x_hat = reconstruct(sae, transcoder ? input : x, &f);
    if (!all_finite(x_hat))  // never a silent NaN in the scores: an SAE whose weights overflow float32
      throw DataError(cat(sae.dir, ": the SAE's reconstruction of ", hook_name(site), " is not finite on piece ",
                          done - r.pieces + 1, " of ", options.text, " (its weights overflow float32)"));
    squared_error += squared_norm(sub(x, x_hat));
    variance += squared_norm(sub(x, mean));
    active += reduce(ReduceOp::count_nonzero, f).item();
    const std::vector<double> counts = reduce(ReduceOp::count_nonzero, f, 0).to_vector();
    for (int64_t i = 0; i < features; ++i) fired[i] += counts[i];
    copy_(x, x_hat);
  });
  const SiteHooks zero(site, [&](Tensor& state) {
    Tensor x = document_rows(state);
    fill_(x, 0.0);
  });
  const SiteHooks mean_ablate(site, [&](Tensor& state) {
    Tensor x = document_rows(state);
    fill_(x, 0.0);
    add_(x, mean);
  });
  Tensor run_logits;  // [T, V], reused by the three hooked runs of each window
  for (const TokenWindow& w : pieces.windows) {
    const std::vector<int32_t>& ids = w.input;
    skip = w.bos ? 1 : 0;
    if (model.device() == Device::CPU) {
      // Fused (next_token.h): one pass per row for each run's normaliser, the clean run's
      // probabilities kept for the KLs.
      const CleanScores clean = score_clean_run(model.logits_with(ids, {}), ids);
      ce_clean += clean.ce;
      model.logits_into(run_logits, ids, splice);
      RunScoreSums run = score_run(run_logits, ids, clean);
      ce_spliced += run.ce, kl_spliced += run.kl;
      model.logits_into(run_logits, ids, zero);
      run = score_run(run_logits, ids, clean);
      ce_zero += run.ce, kl_zero += run.kl;
      model.logits_into(run_logits, ids, mean_ablate);
      run = score_run(run_logits, ids, clean);
      ce_mean += run.ce, kl_mean += run.kl;
    } else {
      const Tensor log_p = log_softmax_rows(model.logits_with(ids, {}));
      ce_clean += total(next_token_losses(log_p, ids));
      const Tensor log_spliced = log_softmax_rows(model.logits_with(ids, splice));
      ce_spliced += total(next_token_losses(log_spliced, ids));
      kl_spliced += total(kl_per_position(log_p, log_spliced));
      const Tensor log_zero = log_softmax_rows(model.logits_with(ids, zero));
      ce_zero += total(next_token_losses(log_zero, ids));
      kl_zero += total(kl_per_position(log_p, log_zero));
      const Tensor log_mean = log_softmax_rows(model.logits_with(ids, mean_ablate));
      ce_mean += total(next_token_losses(log_mean, ids));
      kl_mean += total(kl_per_position(log_p, log_mean));
    }
    tokens_done += static_cast<int64_t>(ids.size());
    ++done;
    progress.update_position(done, tokens_done, cat("piece ", done - r.pieces, "/", r.pieces));
  }
  progress.finish();

  for (const auto& [name, value] : {std::pair<const char*, double>{"the reconstruction error", squared_error},
                                    {"the clean next-token loss", ce_clean},
                                    {"the next-token loss with the SAE", ce_spliced},
                                    {"the KL divergence with the SAE", kl_spliced},
                                    {"the zero-ablated loss", ce_zero + kl_zero},
                                    {"the mean-ablated loss", ce_mean + kl_mean}})
    if (!std::isfinite(value))
      throw DataError(cat(sae.dir, ": ", name, " over ", options.text, " is not finite (", value,
                          "); no score can be computed"));
  const double predictions = static_cast<double>(r.predictions), tokens = static_cast<double>(r.tokens);
  r.clean = {ce_clean / predictions, 0.0};
  r.spliced = {ce_spliced / predictions, kl_spliced / tokens};
  r.zero_ablated = {ce_zero / predictions, kl_zero / tokens};
  r.mean_ablated = {ce_mean / predictions, kl_mean / tokens};
  r.ce_score = ratio_or_nan(r.zero_ablated.ce - r.spliced.ce, r.zero_ablated.ce - r.clean.ce);
  r.kl_score = ratio_or_nan(r.zero_ablated.kl - r.spliced.kl, r.zero_ablated.kl);
  r.ce_score_mean = ratio_or_nan(r.mean_ablated.ce - r.spliced.ce, r.mean_ablated.ce - r.clean.ce);
  r.kl_score_mean = ratio_or_nan(r.mean_ablated.kl - r.spliced.kl, r.mean_ablated.kl);
  r.fvu = ratio_or_nan(squared_error, variance);
  r.l0 = active / tokens;
  r.density.resize(features);
  for (int64_t i = 0; i < features; ++i) {
    r.density[i] = fired[i] / tokens;
    r.dead += fired[i] == 0;
    r.dense += r.density[i] > options.dense_threshold;
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

Json eval_json(const EvalResult& r, const SaeAtLayer& sae, const std::string& model_dir, const EvalOptions& options) {
  Json j = Json::object();
  j["format"] = "sae-cpp-eval";
  j["version"] = 1;
  j["model"] = model_dir;
  j["sae"] = sae.dir;
  j["text"] = options.text;
  j["max_stories"] = options.max_stories;
  j["prepend_bos"] = options.bos >= 0;
  j["context_size"] = options.context_size;
  j["hook_name"] = hook_name(sae.site);
  if (sae.layer >= 0) j["layer"] = sae.layer;
  j["layer_from"] = sae.layer_source;
  if (sae.layer >= 0) j["hidden_states"] = cat("hidden_states[", sae.layer, "]");
  j["architecture"] = sae.params.kind;
  j["d_in"] = sae.params.d_in();
  if (sae.params.transcoder) {
    j["transcoder"] = true;
    j["hook_name_in"] = hook_name(sae.input_site);
    j["d_out"] = sae.params.d_out();
  }
  j["d_sae"] = sae.params.d_sae();
  j["normalization"] = normalization_name(sae.normalization);
  j["dataset_scale"] = sae.dataset_scale;
  j["stories"] = r.stories;
  j["pieces"] = r.pieces;
  j["tokens"] = r.tokens;
  j["predicted_tokens"] = r.predictions;
  Json ce = Json::object();
  ce["clean"] = number_or_null(r.clean.ce);
  ce["sae"] = number_or_null(r.spliced.ce);
  ce["zero_ablation"] = number_or_null(r.zero_ablated.ce);
  ce["mean_ablation"] = number_or_null(r.mean_ablated.ce);
  j["ce_loss"] = ce;
  Json kl = Json::object();
  kl["sae"] = number_or_null(r.spliced.kl);
  kl["zero_ablation"] = number_or_null(r.zero_ablated.kl);
  kl["mean_ablation"] = number_or_null(r.mean_ablated.kl);
  j["kl_div"] = kl;
  j["ce_loss_score"] = number_or_null(r.ce_score);
  j["kl_div_score"] = number_or_null(r.kl_score);
  j["ce_loss_score_mean_ablation"] = number_or_null(r.ce_score_mean);
  j["kl_div_score_mean_ablation"] = number_or_null(r.kl_score_mean);
  j["fvu"] = number_or_null(r.fvu);
  j["explained_variance"] = number_or_null(1.0 - r.fvu);
  j["l0"] = number_or_null(r.l0);
  j["dead_features"] = r.dead;
  j["dense_features"] = r.dense;
  j["dense_threshold"] = r.dense_threshold;
  Json density = Json::array();
  for (double v : r.density) density.push_back(v);
  j["feature_density"] = density;
  Json mean = Json::array();
  for (double v : r.mean_activation) mean.push_back(v);
  j["mean_activation"] = mean;
  j["seconds"] = r.seconds;
  return j;
}

std::string eval_report(const EvalResult& r, const SaeAtLayer& sae) {
  auto number = [](double v) { return std::isfinite(v) ? format_number(v, 5) : std::string("n/a"); };
  std::string out = cat("sae_eval: ", sae.dir, " (", sae.params.kind, ", d_sae ",
                        sae.params.d_sae(), sae.params.transcoder ? cat(", a transcoder from ", hook_name(sae.input_site)) : "",
                        ") spliced at ", hook_name(sae.site),
                        sae.layer >= 0 ? cat(" = hidden_states[", sae.layer, "]") : std::string(), " (", sae.layer_source,
                        "), inputs normalised: ", normalization_name(sae.normalization), "\n");
  out += cat("  ", r.stories, " stories (", r.pieces, " pieces), ", r.tokens, " tokens, ", r.predictions,
             " next-token predictions, ", format_number(r.seconds, 3), " s\n\n");
  Table table;
  table.header = {"run", "CE loss", "KL vs clean"};
  table.rows = {{"clean", number(r.clean.ce), "0"},
                {"SAE spliced", number(r.spliced.ce), number(r.spliced.kl)},
                {"zero ablation", number(r.zero_ablated.ce), number(r.zero_ablated.kl)},
                {"mean ablation", number(r.mean_ablated.ce), number(r.mean_ablated.kl)}};
  out += markdown(table) + "\n";
  out += cat("CE loss score ", number(r.ce_score), " (vs zero ablation), ", number(r.ce_score_mean),
             " (vs mean ablation); KL score ", number(r.kl_score), " (vs zero), ", number(r.kl_score_mean),
             " (vs mean)\n");
  out += cat("FVU ", number(r.fvu), " | L0 ", number(r.l0), " | dead features ", r.dead, " of ", r.density.size(),
             " | dense features (density > ", format_number(r.dense_threshold), ") ", r.dense, "\n");
  return out;
}

Figure density_histogram(const EvalResult& r, const std::string& sae_name) {
  constexpr double kBin = 0.25;  // decades
  std::vector<double> logs;
  for (double v : r.density)
    if (v > 0) logs.push_back(std::log10(v));
  Figure figure;
  figure.title = cat("Feature density of ", sae_name, " over ", r.tokens, " tokens (", logs.size(), " fired, ", r.dead,
                     " dead not shown)");
  figure.xlabel = "log10(fraction of tokens the feature is active on)";
  figure.ylabel = "features";
  figure.xmarks = {std::log10(std::max(r.dense_threshold, 1e-300))};
  Series bars{"features per 0.25-decade bin", {}, {}};
  if (!logs.empty()) {
    // Bins [lo + k b, lo + (k + 1) b) ending at 0 (density 1); drawn as the outline of bars.
    const double lo = std::floor(*std::min_element(logs.begin(), logs.end()) / kBin) * kBin;
    const int64_t bins = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(-lo / kBin - 1e-9)));
    std::vector<double> counts(bins, 0.0);
    for (double v : logs) counts[std::clamp<int64_t>(static_cast<int64_t>(std::floor((v - lo) / kBin)), 0, bins - 1)] += 1;
    for (int64_t k = 0; k < bins; ++k) {
      const double left = lo + k * kBin, right = left + kBin;
      bars.x.insert(bars.x.end(), {left, left, right, right});
      bars.y.insert(bars.y.end(), {0.0, counts[k], counts[k], 0.0});
    }
    figure.xmin = lo;
    figure.xmax = lo + bins * kBin;
  }
  figure.series = {bars};
  return figure;
}

}  // namespace sae
