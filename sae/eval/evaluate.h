// sae_eval's computation (docs/contract.md §6): an SAE spliced into the language model at its layer,
// scored over the stories of a corpus the way SAELens's evals score it (sae_lens/evals.py,
// get_recons_loss and get_sparsity_and_variance_metrics):
//   runs         clean; SAE (the state at its hook point replaced by the SAE's reconstruction,
//                brought back to raw scale); zero ablation (replaced by 0); mean ablation (replaced
//                by the mean of that state over every evaluated token, computed in a first pass)
//   CE           mean over every predicted token (position t predicts token t + 1 of its story) of
//                -log p(next); pooled over all stories
//   KL           mean over every position of KL(p_clean || p_run) (sum over the vocabulary)
//   scores       ce_score = (CE_zero - CE_sae) / (CE_zero - CE_clean); kl_score = (KL_zero - KL_sae)
//                / KL_zero; the same against mean ablation; NaN when the denominator is below 1e-6
//                (rounding's size; a mean KL below 0, rounding too, is reported as 0)
//   FVU          sum ||x - x_hat||^2 / sum ||x - mean||^2 over all tokens, raw scale
//   L0, density  mean active features per token; per feature the fraction of tokens it is nonzero
//                on; dead = never nonzero; dense = density > dense_threshold
// Stories are cut into windows (lm/text_windows.h: of P positions, or --context-size; each starting
// with the BOS when one is prepended), each run (and normalised) on its own. The SAE and mean
// ablation replace the document's rows only (a BOS row is left as the model computed it); zero
// ablation zeroes every row, the BOS's too, as SAELens's evals do. The statistics (FVU, L0,
// densities, the mean, KL) are over the document's tokens; CE counts the predictions made from
// document tokens, not the one from the BOS (SAELens masks it).
// A crosscoder (evaluate_crosscoder; docs/contract.md §6, docs/architectures.md §2.13) is spliced in
// at each of its hooks. Acausal, it needs every source before it encodes, so each window is run in
// two passes: a clean pass of each model (its logits are the clean run's) reads all the sources, the
// concatenated sources are encoded once and each source's reconstruction decoded; then each model is
// run again with EACH of its hooks replaced by its reconstruction (computed from the clean
// activations, not from the spliced run's own), and with each of its hooks zero- and mean-ablated.
// The scores are per model (model diffing: the model with its sources, the second model with its);
// FVU per source and over all; L0 and densities of the one encoding.
// Letters: T tokens, D width at the hook point, F features, V vocabulary, S sources, d a source's width.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/json.h"
#include "lm/decoder_model.h"
#include "lm/tokenizer.h"
#include "sae/eval/sae_at_layer.h"
#include "sae/report/plot.h"
#include "sae/report/run_log.h"
#include "sae/report/table.h"

namespace sae {

struct EvalOptions {
  std::string text;               // corpus: .txt (stories separated by <|endoftext|>) or .jsonl (.gz, .zst)
  std::string text_field = "text";  // JSON lines: the field with the text
  int64_t max_stories = 0;        // the first N non-empty stories; 0: all of them
  int32_t bos = -1;               // put before every window (lm/text_windows.h resolve_bos); -1: none
  int64_t context_size = 0;       // positions per window (0: the model's)
  double dense_threshold = 0.1;   // a feature firing on more than this fraction of tokens is dense
  ProgressMode progress = ProgressMode::None;
};

// The runs' next-token numbers: CE over the predicted tokens, KL against the clean run over all.
struct RunScores {
  double ce = 0, kl = 0;
};

// SAELens's reconstruction metrics (evals.get_sparsity_and_variance_metrics), raw scale, means over
// the evaluated tokens of: ||x||, ||x_hat||, ||x_hat|| / ||x|| (||x|| < 1e-4 counted as 1),
// sum_i |f_i|, ||x - x_hat||^2 and cos(x, x_hat); relative_reconstruction_bias = mean ||x_hat||^2 /
// mean x . x_hat over all tokens (SAELens averages that ratio over its batches). A crosscoder's x and
// x_hat are its sources' concatenated.
struct ReconstructionMetrics {
  double l2_norm_in = 0, l2_norm_out = 0, l2_ratio = 0, l1 = 0, mse = 0, cossim = 0;
  double relative_reconstruction_bias = 0;
};

struct EvalResult {
  int64_t stories = 0, pieces = 0, tokens = 0, predictions = 0;
  RunScores clean, spliced, zero_ablated, mean_ablated;
  double ce_score = 0, kl_score = 0;                  // against zero ablation (SAELens's)
  double ce_score_mean = 0, kl_score_mean = 0;        // against mean ablation
  double fvu = 0, l0 = 0;
  ReconstructionMetrics reconstruction;
  std::vector<double> density;                        // [F]
  int64_t dead = 0, dense = 0;
  double dense_threshold = 0.1;
  std::vector<double> mean_activation;                // [D]: the mean-ablation vector
  double seconds = 0;
};

// One model's runs and their scores: against zero ablation (SAELens's) and against mean ablation;
// NaN when the denominator is below 1e-6 nats.
struct SpliceScores {
  RunScores clean, spliced, zero_ablated, mean_ablated;
  double ce_score = 0, kl_score = 0, ce_score_mean = 0, kl_score_mean = 0;
};

struct CrosscoderEvalResult {
  int64_t stories = 0, pieces = 0, tokens = 0, predictions = 0;
  std::vector<SpliceScores> models;                   // the model, then the second model when it has sources
  std::vector<double> fvu;                            // [S]: sum ||x_s - x_hat_s||^2 / sum ||x_s - mean_s||^2
  double fvu_all = 0;                                 // the same sums over all sources
  double l0 = 0;
  ReconstructionMetrics reconstruction;               // over the concatenated sources
  std::vector<double> density;                        // [F]
  int64_t dead = 0, dense = 0;
  double dense_threshold = 0.1;
  std::vector<std::vector<double>> mean_activation;   // [S][d]: each source's mean-ablation vector
  double seconds = 0;
};

// Runs the evaluation. The tokenizer's ids must fit the model's vocabulary. DataError for an empty
// corpus (no story with a token), a corpus without a single next-token prediction (every piece one
// token long), or anything the reader, the tokenizer or the model refuses.
EvalResult evaluate_sae(DecoderModel& model, const BpeTokenizer& tokenizer, const SaeAtLayer& sae,
                        const EvalOptions& options);

// The crosscoder's evaluation (see the top). `model_b` is the second model, required when a source
// reads it (UsageError otherwise, as for a second model given to a crosscoder of one model); its
// vocabulary must hold the tokenizer's ids. DataError as evaluate_sae.
CrosscoderEvalResult evaluate_crosscoder(DecoderModel& model, DecoderModel* model_b, const BpeTokenizer& tokenizer,
                                         const SaeAtLayer& crosscoder, const EvalOptions& options);
// Its eval.json (docs/contract.md §6) and printed report.
Json crosscoder_eval_json(const CrosscoderEvalResult& result, const SaeAtLayer& crosscoder, const std::string& model_dir,
                          const std::string& model_b_dir, const EvalOptions& options);
std::string crosscoder_eval_report(const CrosscoderEvalResult& result, const SaeAtLayer& crosscoder);
Figure density_histogram(const std::vector<double>& density, int64_t tokens, int64_t dead, double dense_threshold,
                         const std::string& sae_name);

// eval.json: the result with what was evaluated (docs/contract.md §6 lists the keys). NaN -> null.
Json eval_json(const EvalResult& result, const SaeAtLayer& sae, const std::string& model_dir, const EvalOptions& options);
// The printed report: a table of the four runs (CE, KL) and the lines of scores and SAE statistics.
std::string eval_report(const EvalResult& result, const SaeAtLayer& sae);
// The histogram of log10 feature density over the features that fired (dead ones are counted in
// the title), 0.25-decade bins, a dashed line at the dense threshold.
Figure density_histogram(const EvalResult& result, const std::string& sae_name);

}  // namespace sae
