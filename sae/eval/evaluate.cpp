// evaluate_sae and its reports (see evaluate.h). T tokens, D width, F features, V vocabulary, P
// positions, L the SAE's hidden_states index.
#include "sae/eval/evaluate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <optional>

#include "lm/text_data.h"
#include "lm/text_windows.h"
#include "sae/data/text_batches.h"
#include "sae/eval/next_token.h"
#include "tensor/ops.h"

namespace sae {

namespace {


double total(const std::vector<double>& values, int64_t first = 0) {
  double s = 0;
  for (size_t i = static_cast<size_t>(first); i < values.size(); ++i) s += values[i];
  return s;
}

double ratio_or_nan(double numerator, double denominator) {
  return denominator == 0 ? NAN : numerator / denominator;
}

// A CE or KL score whose denominator is below this many nats: the size of float32 rounding in the
// logits, not a difference the splice can be scored against. The score is NaN (null / n/a), as for 0.
constexpr double kScoreFloor = 1e-6;

double score_or_nan(double numerator, double denominator) {
  return !(std::fabs(denominator) >= kScoreFloor) ? NAN : numerator / denominator;
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
      // Predictions made from a document token: not the one from the BOS (SAELens masks it).
      p.predictions += static_cast<int64_t>(p.windows.back().input.size()) - 1 - (p.windows.back().bos ? 1 : 0);
    }
  }
  if (p.windows.empty()) throw DataError(cat(options.text, ": no story with any token to evaluate"));
  if (p.predictions == 0 && windows.bos >= 0 && windows.context <= 2)
    throw UsageError(cat("--context-size ", windows.context, " with a BOS leaves one token of a story per window: "
                         "no next token to predict (give 3 or more)"));
  if (p.predictions == 0 && windows.context <= 1)
    throw UsageError(cat("--context-size ", windows.context, " leaves one token per window: no next token to predict "
                         "(give 2 or more)"));
  if (p.predictions == 0)
    throw DataError(cat(options.text, ": every story is one token long, so there is no next token to predict"));
  return p;
}

// A window's clean run: its summed CE and what the hooked runs' KL is measured against (on the host
// the fused scores of next_token.h, on a device the log-probabilities). `hooks` only read. The sums
// start at position `first`: 1 with a BOS, whose prediction and KL SAELens's evals leave out.
struct CleanRun {
  double ce = 0;
  CleanScores host;
  Tensor log_p;
  int64_t first = 0;
};

CleanRun clean_run(DecoderModel& model, const std::vector<int32_t>& ids, const SiteHooks& hooks, int64_t first) {
  CleanRun c;
  c.first = first;
  if (model.device() == Device::CPU) {
    c.host = score_clean_run(model.logits_with(ids, hooks), ids, first);
    c.ce = c.host.ce;
  } else {
    c.log_p = log_softmax_rows(model.logits_with(ids, hooks));
    c.ce = total(next_token_losses(c.log_p, ids), first);
  }
  return c;
}

// A hooked run's summed CE and KL against the clean run (`logits`: reused between the runs on the host).
RunScoreSums hooked_run(DecoderModel& model, const std::vector<int32_t>& ids, const SiteHooks& hooks,
                        const CleanRun& clean, Tensor& logits) {
  if (model.device() == Device::CPU) {
    model.logits_into(logits, ids, hooks);
    return score_run(logits, ids, clean.host, clean.first);
  }
  const Tensor log_q = log_softmax_rows(model.logits_with(ids, hooks));
  return RunScoreSums{total(next_token_losses(log_q, ids), clean.first),
                      total(kl_per_position(clean.log_p, log_q), clean.first)};
}

// The summed CE and KL of one model's runs over the windows.
struct RunSums {
  double ce_clean = 0, ce_spliced = 0, ce_zero = 0, ce_mean = 0, kl_spliced = 0, kl_zero = 0, kl_mean = 0;

  // One window: its clean run and the spliced, zero- and mean-ablated runs.
  void add(DecoderModel& model, const std::vector<int32_t>& ids, const CleanRun& clean, const SiteHooks& splice,
           const SiteHooks& zero, const SiteHooks& mean, Tensor& logits) {
    ce_clean += clean.ce;
    RunScoreSums run = hooked_run(model, ids, splice, clean, logits);
    ce_spliced += run.ce, kl_spliced += run.kl;
    run = hooked_run(model, ids, zero, clean, logits);
    ce_zero += run.ce, kl_zero += run.kl;
    run = hooked_run(model, ids, mean, clean, logits);
    ce_mean += run.ce, kl_mean += run.kl;
  }
};

// The means and scores of the sums. DataError (naming `who` and the corpus) when a sum or the
// reconstruction error is not finite.
SpliceScores splice_scores(const RunSums& s, double squared_error, double predictions, double tokens,
                           const std::string& who, const std::string& text) {
  if (!std::isfinite(s.ce_clean))  // the model alone: not the SAE's doing
    throw DataError(cat(text, ": the clean next-token loss (the model alone, without the SAE) is not finite (", s.ce_clean,
                        "); no score can be computed"));
  for (const auto& [name, value] : {std::pair<const char*, double>{"the reconstruction error", squared_error},
                                    {"the next-token loss with the SAE", s.ce_spliced},
                                    {"the KL divergence with the SAE", s.kl_spliced},
                                    {"the zero-ablated loss", s.ce_zero + s.kl_zero},
                                    {"the mean-ablated loss", s.ce_mean + s.kl_mean}})
    if (!std::isfinite(value))
      throw DataError(cat(who, ": ", name, " over ", text, " is not finite (", value, "); no score can be computed"));
  SpliceScores r;
  // KL >= 0: a mean below 0 is the rounding of logits that agree, reported as 0.
  r.clean = {s.ce_clean / predictions, 0.0};
  r.spliced = {s.ce_spliced / predictions, std::max(0.0, s.kl_spliced / tokens)};
  r.zero_ablated = {s.ce_zero / predictions, std::max(0.0, s.kl_zero / tokens)};
  r.mean_ablated = {s.ce_mean / predictions, std::max(0.0, s.kl_mean / tokens)};
  r.ce_score = score_or_nan(r.zero_ablated.ce - r.spliced.ce, r.zero_ablated.ce - r.clean.ce);
  r.kl_score = score_or_nan(r.zero_ablated.kl - r.spliced.kl, r.zero_ablated.kl);
  r.ce_score_mean = score_or_nan(r.mean_ablated.ce - r.spliced.ce, r.mean_ablated.ce - r.clean.ce);
  r.kl_score_mean = score_or_nan(r.mean_ablated.kl - r.spliced.kl, r.mean_ablated.kl);
  return r;
}

// The sums of SAELens's per-token reconstruction metrics (ReconstructionMetrics), token by token in
// double.
struct ReconstructionSums {
  double norm_in = 0, norm_out = 0, ratio = 0, l1 = 0, cos = 0, out_squared = 0, dot = 0;
  std::vector<double> squared_error;  // per part: sum ||x_s - x_hat_s||^2
  double active = 0;                  // features > 0 over every token (L0's sum)
  std::vector<double> fired;          // [F]: tokens each feature fired on (set to F zeros first)

  // x, x_hat: the [n, d_s] parts of n tokens' input and reconstruction (raw scale; one part for an
  // SAE, a crosscoder's sources); add_features: their features f [n, F] (or a block of them), for
  // L1, L0 and each feature's firings.
  void add(const std::vector<Tensor>& x, const std::vector<Tensor>& x_hat) {
    const int64_t n = x.at(0).size(0);
    std::vector<double> in(n, 0.0), out(n, 0.0), dots(n, 0.0);
    squared_error.resize(x.size(), 0.0);
    for (size_t k = 0; k < x.size(); ++k) {
      const std::vector<double> in_k = sum(mul(x[k], x[k]), 1).to_vector();
      const std::vector<double> out_k = sum(mul(x_hat[k], x_hat[k]), 1).to_vector();
      const std::vector<double> dots_k = sum(mul(x[k], x_hat[k]), 1).to_vector();
      for (int64_t t = 0; t < n; ++t) in[t] += in_k[t], out[t] += out_k[t], dots[t] += dots_k[t];
      squared_error[k] += squared_norm(sub(x[k], x_hat[k]));
    }
    for (int64_t t = 0; t < n; ++t) {
      const double norm_x = std::sqrt(in[t]), norm_x_hat = std::sqrt(out[t]);
      norm_in += norm_x;
      norm_out += norm_x_hat;
      ratio += norm_x_hat / (norm_x < 1e-4 ? 1.0 : norm_x);
      cos += dots[t] / (norm_x * norm_x_hat);  // NaN for a zero vector, as SAELens's
      out_squared += out[t];
      dot += dots[t];
    }
  }
  void add_features(const Tensor& f) {
    l1 += reduce(ReduceOp::sum, abs(f)).item();
    active += reduce(ReduceOp::count_nonzero, f).item();
    const std::vector<double> counts = reduce(ReduceOp::count_nonzero, f, 0).to_vector();
    for (size_t i = 0; i < fired.size(); ++i) fired[i] += counts[i];
  }
  ReconstructionMetrics means(int64_t tokens) const {
    const double n = static_cast<double>(tokens);
    return ReconstructionMetrics{norm_in / n, norm_out / n, ratio / n, l1 / n, total(squared_error) / n, cos / n,
                                 ratio_or_nan(out_squared, dot)};
  }
};

// L0, densities, dead and dense features from the per-feature firing counts.
template <typename Result>
void feature_statistics(Result& r, double active, const std::vector<double>& fired, double threshold) {
  const double tokens = static_cast<double>(r.tokens);
  r.l0 = active / tokens;
  r.density.resize(fired.size());
  for (size_t i = 0; i < fired.size(); ++i) {
    r.density[i] = fired[i] / tokens;
    r.dead += fired[i] == 0;
    r.dense += r.density[i] > threshold;
  }
}

// Checks shared by the evaluations; the windows of the corpus, the model reserved for the longest.
Pieces prepare(DecoderModel& model, const BpeTokenizer& tokenizer, const SaeAtLayer& sae, const EvalOptions& options) {
  const DecoderConfig& config = model.config();
  check_tokenizer_fits_model(tokenizer, config);
  if (!(options.dense_threshold >= 0 && options.dense_threshold <= 1))
    throw UsageError(cat("--dense-threshold must be in [0, 1], got ", options.dense_threshold));
  if (sae.params.device() != model.device())
    throw UsageError("evaluate_sae: the SAE and the model must be on one device");
  if (options.context_size > config.max_positions)
    throw UsageError(cat("--context-size ", options.context_size, " is more than the model's ", config.max_positions,
                         " positions"));
  const WindowOptions windows{options.bos, options.context_size > 0 ? options.context_size : config.max_positions};
  check_window_options(windows);
  Pieces pieces = read_pieces(tokenizer, options, windows);
  int64_t longest = 0;
  for (const TokenWindow& w : pieces.windows) longest = std::max<int64_t>(longest, static_cast<int64_t>(w.input.size()));
  model.reserve(longest);
  return pieces;
}

}  // namespace

EvalResult evaluate_sae(DecoderModel& model, const BpeTokenizer& tokenizer, const SaeAtLayer& sae,
                        const EvalOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  if (sae.crosscoder()) throw UsageError(cat(sae.dir, ": a crosscoder is evaluated by evaluate_crosscoder"));
  const Pieces pieces = prepare(model, tokenizer, sae, options);
  const HookSite site = sae.site;
  const int64_t d = model.config().hook_width(site), features = sae.params.d_sae();

  EvalResult r;
  r.stories = pieces.stories;
  r.pieces = static_cast<int64_t>(pieces.windows.size());
  r.tokens = pieces.tokens;
  r.predictions = pieces.predictions;
  r.dense_threshold = options.dense_threshold;
  Progress progress(options.progress, 2 * r.pieces, 0, "sae_eval ");

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
  RunSums sums;
  ReconstructionSums reconstruction;
  double variance = 0;
  reconstruction.fired.assign(static_cast<size_t>(features), 0.0);
  // A transcoder reads its input hook on the way (a copy: the model reuses the buffer) and replaces
  // its output hook with its prediction; an SAE reads and replaces one hook.
  const bool transcoder = sae.params.transcoder;
  Tensor input;
  SiteHooks splice;
  if (transcoder) splice.at.emplace_back(sae.input_site, [&](Tensor& state) { input = document_rows(state).clone(); });
  // An SAE trained per story on its BOS rows too (--bos-activations keep) normalised each window with
  // its BOS row: so here, then the BOS row's reconstruction and features are dropped (it stays spliced out).
  const bool bos_in_statistics = sae.kept_bos && sae.normalization == Normalization::Story && !transcoder;
  splice.at.emplace_back(site, [&](Tensor& state) {
    Tensor x = document_rows(state);
    const bool bos_row = bos_in_statistics && skip == 1;  // normalised with the story, then dropped
    const auto count = [&](int64_t first_row, const Tensor& block) {
      const Tensor f = bos_row && first_row == 0 ? block.slice_rows(1, block.size(0)) : block;
      if (f.size(0) > 0) reconstruction.add_features(f);
    };
    const Tensor x_hat = bos_row ? reconstruct(sae, state, count).slice_rows(1, state.size(0))
                                 : reconstruct(sae, transcoder ? input : x, count);
    if (!all_finite(x_hat))  // never a silent NaN in the scores: an SAE whose weights overflow float32
      throw DataError(cat(sae.dir, ": the SAE's reconstruction of ", hook_name(site), " is not finite on piece ",
                          done - r.pieces + 1, " of ", options.text, " (its weights overflow float32)"));
    variance += squared_norm(sub(x, mean));
    reconstruction.add({x}, {x_hat});
    copy_(x, x_hat);
  });
  // Zero ablation zeroes every row, the BOS's too, as SAELens's evals do; mean ablation (ours) and
  // the splice leave the BOS row as it is.
  const SiteHooks zero(site, [&](Tensor& state) { fill_(state, 0.0); });
  const SiteHooks mean_ablate(site, [&](Tensor& state) {
    Tensor x = document_rows(state);
    fill_(x, 0.0);
    add_(x, mean);
  });
  Tensor run_logits;  // [T, V], reused by the three hooked runs of each window
  for (const TokenWindow& w : pieces.windows) {
    const std::vector<int32_t>& ids = w.input;
    skip = w.bos ? 1 : 0;
    sums.add(model, ids, clean_run(model, ids, {}, skip), splice, zero, mean_ablate, run_logits);
    tokens_done += static_cast<int64_t>(ids.size());
    ++done;
    progress.update_position(done, tokens_done, cat("piece ", done - r.pieces, "/", r.pieces));
  }
  progress.finish();

  const SpliceScores scores = splice_scores(sums, total(reconstruction.squared_error), static_cast<double>(r.predictions),
                                           static_cast<double>(r.tokens), sae.dir, options.text);
  r.clean = scores.clean;
  r.spliced = scores.spliced;
  r.zero_ablated = scores.zero_ablated;
  r.mean_ablated = scores.mean_ablated;
  r.ce_score = scores.ce_score;
  r.kl_score = scores.kl_score;
  r.ce_score_mean = scores.ce_score_mean;
  r.kl_score_mean = scores.kl_score_mean;
  r.fvu = ratio_or_nan(total(reconstruction.squared_error), variance);
  r.reconstruction = reconstruction.means(r.tokens);
  feature_statistics(r, reconstruction.active, reconstruction.fired, options.dense_threshold);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

CrosscoderEvalResult evaluate_crosscoder(DecoderModel& model, DecoderModel* model_b, const BpeTokenizer& tokenizer,
                                         const SaeAtLayer& crosscoder, const EvalOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  const SaeAtLayer& cc = crosscoder;
  if (!cc.crosscoder()) throw UsageError(cat(cc.dir, ": not a crosscoder (sae_eval evaluates it with evaluate_sae)"));
  if (cc.reads_model_b() && !model_b)
    throw UsageError(cat(cc.dir, " is a crosscoder over two models: give --model-b"));
  if (!cc.reads_model_b() && model_b) throw UsageError(cat("--model-b: ", cc.dir, " reads hooks of one model only"));
  const Pieces pieces = prepare(model, tokenizer, cc, options);
  std::vector<DecoderModel*> models{&model};
  if (model_b) {
    check_tokenizer_fits_model(tokenizer, model_b->config());
    if (model_b->device() != model.device()) throw UsageError("evaluate_crosscoder: the two models must be on one device");
    for (const TokenWindow& w : pieces.windows)
      if (static_cast<int64_t>(w.input.size()) > model_b->config().max_positions)
        throw UsageError(cat("--model-b has ", model_b->config().max_positions, " positions, fewer than a window's ",
                             w.input.size(), " (give --context-size)"));
    int64_t longest = 0;
    for (const TokenWindow& w : pieces.windows) longest = std::max<int64_t>(longest, static_cast<int64_t>(w.input.size()));
    model_b->reserve(longest);
    models.push_back(model_b);
  }
  const int64_t sources = static_cast<int64_t>(cc.sources.size()), d = cc.params.d_in() / sources;
  const int64_t features = cc.params.d_sae();

  CrosscoderEvalResult r;
  r.stories = pieces.stories;
  r.pieces = static_cast<int64_t>(pieces.windows.size());
  r.tokens = pieces.tokens;
  r.predictions = pieces.predictions;
  r.dense_threshold = options.dense_threshold;
  Progress progress(options.progress, 2 * r.pieces, 0, "sae_eval ");
  int64_t skip = 0;  // the BOS row of a window, left as the model computed it
  const auto document_rows = [&](const Tensor& x) { return x.slice_rows(skip, x.size(0)); };

  // Pass 1: each source's mean over every token (the mean-ablation vectors), one run of each model
  // up to its last source.
  std::vector<std::vector<double>> mean_sum(sources, std::vector<double>(d, 0.0));
  int64_t done = 0, tokens_done = 0;
  for (const TokenWindow& w : pieces.windows) {
    skip = w.bos ? 1 : 0;
    for (size_t m = 0; m < models.size(); ++m) {
      SiteHooks read;
      std::optional<HookSite> last;
      for (int64_t k = 0; k < sources; ++k) {
        if (cc.sources[k].model != static_cast<int>(m)) continue;
        const HookSite site = cc.sources[k].site;
        if (!last || reached_before(*last, site, models[m]->config().residual == ResidualWiring::Parallel)) last = site;
        read.at.emplace_back(site, [&, k](Tensor& state) {
          const std::vector<double> column_sums = sum(document_rows(state), 0).to_vector();
          for (int64_t j = 0; j < d; ++j) mean_sum[k][j] += column_sums[j];
        });
      }
      if (last) models[m]->forward_to_site(w.input, *last, read);
    }
    tokens_done += static_cast<int64_t>(w.input.size());
    ++done;
    progress.update_position(done, tokens_done, cat("mean pass, piece ", done, "/", r.pieces));
  }
  std::vector<Tensor> means;
  r.mean_activation.assign(sources, std::vector<double>(d));
  for (int64_t k = 0; k < sources; ++k) {
    for (int64_t j = 0; j < d; ++j) r.mean_activation[k][j] = mean_sum[k][j] / static_cast<double>(r.tokens);
    means.push_back(Tensor::from_vector(r.mean_activation[k], Shape{d}, DType::F32, model.device()));
  }

  // Pass 2, each window: the clean run of each model reads every source; one encoding of them all;
  // each model's runs with its hooks spliced, zero- and mean-ablated.
  std::vector<RunSums> sums(models.size());
  std::vector<double> variance(sources, 0.0);
  ReconstructionSums reconstruction;
  reconstruction.fired.assign(static_cast<size_t>(features), 0.0);
  reconstruction.squared_error.assign(sources, 0.0);
  std::vector<Tensor> x(sources), x_hat;
  std::vector<SiteHooks> read(models.size()), splice(models.size()), zero(models.size()), mean_ablate(models.size());
  for (int64_t k = 0; k < sources; ++k) {
    const int m = cc.sources[k].model;
    const HookSite site = cc.sources[k].site;
    read[m].at.emplace_back(site, [&, k](Tensor& state) { x[k] = document_rows(state).clone(); });
    splice[m].at.emplace_back(site, [&, k](Tensor& state) {
      Tensor rows = document_rows(state);
      copy_(rows, x_hat[k]);
    });
    zero[m].at.emplace_back(site, [&](Tensor& state) { fill_(state, 0.0); });  // the BOS row too
    mean_ablate[m].at.emplace_back(site, [&, k](Tensor& state) {
      Tensor rows = document_rows(state);
      fill_(rows, 0.0);
      add_(rows, means[k]);
    });
  }
  Tensor run_logits;  // [T, V], reused by the hooked runs
  for (const TokenWindow& w : pieces.windows) {
    const std::vector<int32_t>& ids = w.input;
    skip = w.bos ? 1 : 0;
    std::vector<CleanRun> clean;
    for (size_t m = 0; m < models.size(); ++m) clean.push_back(clean_run(*models[m], ids, read[m], skip));
    x_hat = reconstruct_sources(cc, x, [&](int64_t, const Tensor& f) { reconstruction.add_features(f); });
    for (int64_t k = 0; k < sources; ++k) {
      if (!all_finite(x_hat[k]))  // never a silent NaN in the scores
        throw DataError(cat(cc.dir, ": the crosscoder's reconstruction of ", cc.sources[k].read,
                            " is not finite on piece ", done - r.pieces + 1, " of ", options.text,
                            " (its weights overflow float32)"));
      variance[k] += squared_norm(sub(x[k], means[k]));
    }
    reconstruction.add(x, x_hat);
    for (size_t m = 0; m < models.size(); ++m)
      sums[m].add(*models[m], ids, clean[m], splice[m], zero[m], mean_ablate[m], run_logits);
    tokens_done += static_cast<int64_t>(ids.size());
    ++done;
    progress.update_position(done, tokens_done, cat("piece ", done - r.pieces, "/", r.pieces));
  }
  progress.finish();

  const std::vector<double>& squared_error = reconstruction.squared_error;
  const double all_error = total(squared_error);
  for (size_t m = 0; m < models.size(); ++m)
    r.models.push_back(splice_scores(sums[m], all_error, static_cast<double>(r.predictions),
                                     static_cast<double>(r.tokens), cat(cc.dir, m == 1 ? " (--model-b)" : ""),
                                     options.text));
  for (int64_t k = 0; k < sources; ++k) r.fvu.push_back(ratio_or_nan(squared_error[k], variance[k]));
  r.fvu_all = ratio_or_nan(all_error, total(variance));
  r.reconstruction = reconstruction.means(r.tokens);
  feature_statistics(r, reconstruction.active, reconstruction.fired, options.dense_threshold);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

namespace {

Json numbers_json(const std::vector<double>& values) {
  Json out = Json::array();
  for (double v : values) out.push_back(v);
  return out;
}

// The keys an SAE's and a crosscoder's eval.json share after their scores.
void put_dictionary_keys(Json& j, double fvu, double l0, int64_t dead, int64_t dense, double dense_threshold,
                         const std::vector<double>& density) {
  j["fvu"] = number_or_null(fvu);
  j["explained_variance"] = number_or_null(1.0 - fvu);
  j["l0"] = number_or_null(l0);
  j["dead_features"] = dead;
  j["dense_features"] = dense;
  j["dense_threshold"] = dense_threshold;
  j["feature_density"] = numbers_json(density);
}

// SAELens's reconstruction metrics, under its names.
void put_reconstruction_keys(Json& j, const ReconstructionMetrics& m) {
  for (const auto& [key, value] : {std::pair<const char*, double>{"mse", m.mse}, {"cossim", m.cossim}, {"l1", m.l1},
                                   {"l2_norm_in", m.l2_norm_in}, {"l2_norm_out", m.l2_norm_out},
                                   {"l2_ratio", m.l2_ratio},
                                   {"relative_reconstruction_bias", m.relative_reconstruction_bias}})
    j[key] = number_or_null(value);
}

Json scores_json(const SpliceScores& s) {
  Json j = Json::object();
  Json ce = Json::object();
  ce["clean"] = number_or_null(s.clean.ce);
  ce["sae"] = number_or_null(s.spliced.ce);
  ce["zero_ablation"] = number_or_null(s.zero_ablated.ce);
  ce["mean_ablation"] = number_or_null(s.mean_ablated.ce);
  j["ce_loss"] = ce;
  Json kl = Json::object();
  kl["sae"] = number_or_null(s.spliced.kl);
  kl["zero_ablation"] = number_or_null(s.zero_ablated.kl);
  kl["mean_ablation"] = number_or_null(s.mean_ablated.kl);
  j["kl_div"] = kl;
  j["ce_loss_score"] = number_or_null(s.ce_score);
  j["kl_div_score"] = number_or_null(s.kl_score);
  j["ce_loss_score_mean_ablation"] = number_or_null(s.ce_score_mean);
  j["kl_div_score_mean_ablation"] = number_or_null(s.kl_score_mean);
  return j;
}

std::string format_or_na(double v) { return std::isfinite(v) ? format_number(v, 5) : std::string("n/a"); }

std::string reconstruction_report(const ReconstructionMetrics& m) {
  return cat("MSE ", format_or_na(m.mse), " | cosine ", format_or_na(m.cossim), " | L1 ", format_or_na(m.l1),
             " | l2 ratio ", format_or_na(m.l2_ratio), " | relative reconstruction bias ",
             format_or_na(m.relative_reconstruction_bias), "\n");
}

// The CE / KL table of the clean, spliced and ablated runs, and the scores' line.
std::string scores_report(const SpliceScores& s, const char* spliced) {
  Table table;
  table.header = {"run", "CE loss", "KL vs clean"};
  table.rows = {{"clean", format_or_na(s.clean.ce), "0"},
                {spliced, format_or_na(s.spliced.ce), format_or_na(s.spliced.kl)},
                {"zero ablation", format_or_na(s.zero_ablated.ce), format_or_na(s.zero_ablated.kl)},
                {"mean ablation", format_or_na(s.mean_ablated.ce), format_or_na(s.mean_ablated.kl)}};
  return markdown(table) + "\n" +
         cat("CE loss score ", format_or_na(s.ce_score), " (vs zero ablation), ", format_or_na(s.ce_score_mean),
             " (vs mean ablation); KL score ", format_or_na(s.kl_score), " (vs zero), ", format_or_na(s.kl_score_mean),
             " (vs mean)\n");
}

}  // namespace

Json crosscoder_eval_json(const CrosscoderEvalResult& r, const SaeAtLayer& cc, const std::string& model_dir,
                          const std::string& model_b_dir, const EvalOptions& options) {
  Json j = Json::object();
  j["format"] = "sae-cpp-eval";
  j["version"] = 1;
  j["model"] = model_dir;
  if (cc.reads_model_b()) j["model_b"] = model_b_dir;
  j["sae"] = cc.dir;
  j["text"] = options.text;
  j["max_stories"] = options.max_stories;
  j["prepend_bos"] = options.bos >= 0;
  j["context_size"] = options.context_size;
  j["crosscoder"] = true;
  j["architecture"] = cc.params.kind;
  j["d_in"] = cc.params.d_in();
  j["d_sae"] = cc.params.d_sae();
  j["normalization"] = normalization_name(cc.normalization);
  Json sources = Json::array();
  for (size_t k = 0; k < cc.sources.size(); ++k) {
    Json s = Json::object();
    s["read"] = cc.sources[k].read;
    s["model"] = cc.sources[k].model == 1 ? "model_b" : "model";
    s["hook_name"] = hook_name(cc.sources[k].site);
    s["dataset_scale"] = cc.sources[k].scale;
    s["fvu"] = number_or_null(r.fvu[k]);
    s["mean_activation"] = numbers_json(r.mean_activation[k]);
    sources.push_back(s);
  }
  j["sources"] = sources;
  j["stories"] = r.stories;
  j["pieces"] = r.pieces;
  j["tokens"] = r.tokens;
  j["predicted_tokens"] = r.predictions;
  // The model's scores at the top level as for an SAE; the second model's under "model_b_scores".
  const Json scores = scores_json(r.models.at(0));
  for (const auto& [key, value] : scores.items()) j[key] = value;
  if (r.models.size() > 1) j["model_b_scores"] = scores_json(r.models[1]);
  put_dictionary_keys(j, r.fvu_all, r.l0, r.dead, r.dense, r.dense_threshold, r.density);
  put_reconstruction_keys(j, r.reconstruction);
  j["seconds"] = r.seconds;
  return j;
}

std::string crosscoder_eval_report(const CrosscoderEvalResult& r, const SaeAtLayer& cc) {
  std::string reads;
  for (const CrosscoderSource& s : cc.sources) reads += cat(reads.empty() ? "" : ", ", s.read);
  std::string out = cat("sae_eval: ", cc.dir, " (a ", cc.params.kind, " crosscoder, d_sae ", cc.params.d_sae(), ", ",
                        cc.sources.size(), " sources: ", reads, ") spliced at each of its hooks (reconstructions from "
                        "the clean run), inputs normalised: ", normalization_name(cc.normalization), "\n");
  out += cat("  ", r.stories, " stories (", r.pieces, " pieces), ", r.tokens, " tokens, ", r.predictions,
             " next-token predictions, ", format_number(r.seconds, 3), " s\n\n");
  for (size_t m = 0; m < r.models.size(); ++m) {
    const SpliceScores& s = r.models[m];
    if (r.models.size() > 1) out += m == 0 ? "--model, with its sources spliced:\n" : "--model-b, with its sources spliced:\n";
    out += scores_report(s, "crosscoder spliced") + "\n";
  }
  for (size_t k = 0; k < cc.sources.size(); ++k) out += cat("FVU of ", cc.sources[k].read, " ", format_or_na(r.fvu[k]), "\n");
  out += cat("FVU ", format_or_na(r.fvu_all), " (all sources) | L0 ", format_or_na(r.l0), " | dead features ", r.dead,
             " of ", r.density.size(), " | dense features (density > ", format_number(r.dense_threshold), ") ", r.dense,
             "\n");
  out += reconstruction_report(r.reconstruction);
  return out;
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
  // A transcoder's two scales, input and target, as its cfg.json lists them (the target's undoes the
  // normalisation of what is spliced in).
  Json scales = Json::array();
  scales.push_back(sae.dataset_scale);
  scales.push_back(sae.output_scale);
  j["dataset_scale"] = sae.params.transcoder ? scales : Json(sae.dataset_scale);
  j["stories"] = r.stories;
  j["pieces"] = r.pieces;
  j["tokens"] = r.tokens;
  j["predicted_tokens"] = r.predictions;
  const SpliceScores scores{r.clean, r.spliced, r.zero_ablated, r.mean_ablated,
                            r.ce_score, r.kl_score, r.ce_score_mean, r.kl_score_mean};
  const Json score_keys = scores_json(scores);  // a temporary's items() would dangle in the loop
  for (const auto& [key, value] : score_keys.items()) j[key] = value;
  put_dictionary_keys(j, r.fvu, r.l0, r.dead, r.dense, r.dense_threshold, r.density);
  put_reconstruction_keys(j, r.reconstruction);
  j["mean_activation"] = numbers_json(r.mean_activation);
  j["seconds"] = r.seconds;
  return j;
}

std::string eval_report(const EvalResult& r, const SaeAtLayer& sae) {
  std::string out = cat("sae_eval: ", sae.dir, " (", sae.params.kind, ", d_sae ",
                        sae.params.d_sae(), sae.params.transcoder ? cat(", a transcoder from ", hook_name(sae.input_site)) : "",
                        ") spliced at ", spliced_site_text(sae), " (", sae.layer_source,
                        "), inputs normalised: ", normalization_name(sae.normalization), "\n");
  out += cat("  ", r.stories, " stories (", r.pieces, " pieces), ", r.tokens, " tokens, ", r.predictions,
             " next-token predictions, ", format_number(r.seconds, 3), " s\n\n");
  out += scores_report(SpliceScores{r.clean, r.spliced, r.zero_ablated, r.mean_ablated, r.ce_score, r.kl_score,
                                    r.ce_score_mean, r.kl_score_mean},
                       "SAE spliced");
  out += cat("FVU ", format_or_na(r.fvu), " | L0 ", format_or_na(r.l0), " | dead features ", r.dead, " of ", r.density.size(),
             " | dense features (density > ", format_number(r.dense_threshold), ") ", r.dense, "\n");
  out += reconstruction_report(r.reconstruction);
  return out;
}

Figure density_histogram(const EvalResult& r, const std::string& sae_name) {
  return density_histogram(r.density, r.tokens, r.dead, r.dense_threshold, sae_name);
}

Figure density_histogram(const std::vector<double>& density, int64_t tokens, int64_t dead, double dense_threshold,
                         const std::string& sae_name) {
  struct {
    const std::vector<double>& density;
    int64_t tokens, dead;
    double dense_threshold;
  } r{density, tokens, dead, dense_threshold};
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
