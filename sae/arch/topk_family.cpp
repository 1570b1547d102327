// The TopK family's options, step and AuxK reference (see topk_family.h), in the order they run.
#include "sae/arch/topk_family.h"

#include <algorithm>
#include <cmath>

#include "sae/arch/dictionary.h"
#include "sae/step/sae_ops.h"
#include "tensor/dispatch.h"
#include "tensor/ops.h"
#include "tensor/precision.h"

namespace sae {

namespace {
void require(bool ok, const std::string& message) {
  if (!ok) throw UsageError(message);
}

Tensor zero_indices(int64_t count, Device device) {
  return Tensor::from_vector(std::vector<double>(count, 0.0), Shape{count}, DType::I32, device);
}

int32_t read_index(const Tensor& row_ptr, int64_t at) {
  return static_cast<int32_t>(row_ptr.slice_rows(at, at + 1).item());
}

}  // namespace

// ---------------------------------------------------------------- options

TopKSettings topk_settings(const ArchSettings& s, int64_t d_out) {
  TopKSettings o;
  o.k = s.integer("k");
  o.auxk_coefficient = s.number("auxk-coefficient");
  o.auxk_k = s.integer("auxk-k") > 0 ? s.integer("auxk-k") : std::max<int64_t>(1, d_out / 2);
  o.dead_tokens = s.integer("dead-window");
  o.unit_norm_decoder = s.toggle("unit-norm-decoder", true);
  o.encoder_chunk = s.has("encoder-chunk") ? s.integer("encoder-chunk") : 0;
  return o;
}

int64_t topk_encoder_rows(int64_t encoder_chunk, int64_t max_tokens) {
  const int64_t whole = std::max<int64_t>(max_tokens, 1);
  return encoder_chunk > 0 ? std::min(encoder_chunk, whole) : whole;
}

std::vector<ArchOption> topk_family_rows() {
  return {{"k", "k",
           "(--k or -k) topk: latents kept per token; batchtopk, matryoshka: their mean (k N per batch); required",
           ArchValueType::Integer, "0"},
          {"auxk-coefficient", "auxk_coefficient", "AuxK's alpha (dead latents predict the residual e; the loss is alpha N sum (e_hat - e)^2 / "
           "sum (e - mean e)^2 over the batch's N tokens, dictionary_learning's normalisation: SAELens's aux_loss_coefficient is not normalised, "
           "sparsify's auxk_alpha divides by the input's variance); 0 = off",
           ArchValueType::Number, "0.03125"},
          {"auxk-k", "auxk_k", "AuxK's k_aux, dead latents per token (0 = half the reconstructed width, d_out / 2); dead = --dead-window tokens "
           "without firing", ArchValueType::Integer, "0"},
          unit_norm_decoder_row(), init_tied_row(), init_b_dec_row()};
}

std::vector<std::string> topk_family_reads() {
  return {"k", "auxk-coefficient", "auxk-k", "dead-window", "unit-norm-decoder", "init-tied", "init-b-dec"};
}

void validate_topk_family(const ArchSettings& s, int64_t d_sae, const std::string& unit) {
  const int64_t k = s.integer("k");
  require(k != 0, cat("--k is required with --architecture ", unit, " (latents per token, 1 to --features)"));
  require(k >= 1 && k <= d_sae, cat("--k must be in [1, ", d_sae, "] (at most --features), got ", k));
  const double alpha = s.number("auxk-coefficient");
  require(std::isfinite(alpha) && alpha >= 0, cat("--auxk-coefficient must be a finite number >= 0, got ", alpha));
  const int64_t k_aux = s.integer("auxk-k");
  require(k_aux >= 0 && k_aux <= d_sae, cat("--auxk-k must be in [0, ", d_sae, "] (0 = d_out / 2), got ", k_aux));
}

DictionaryInit topk_family_dictionary_init(const ArchSettings& s) {
  return resolve_dictionary_init(s, /*unit_norm_when_auto=*/true, /*tied_when_auto=*/true,
                                 /*median_when_auto=*/true);
}

// ---------------------------------------------------------------- the step

TopKFamilyStep::TopKFamilyStep(const TopKSettings& settings, const StepShape& shape, DType dtype, Device device,
                               const std::string& unit, bool by_batch)
    : settings_(settings), max_tokens_(shape.max_tokens), d_in_(shape.d_in), d_out_(shape.d_out), d_sae_(shape.d_sae),
      first_latent_(shape.first_latent) {
  const int64_t max_tokens = shape.max_tokens, d_sae = shape.d_sae, d_out = shape.d_out;
  const int64_t latents = shape.total_latents();
  const bool auxk = settings.auxk_coefficient > 0;
  if (settings.k < 1 || settings.k > latents)
    throw UsageError(cat("--k must be in [1, ", latents, "] (the number of features), got ", settings.k));
  k_aux_ = auxk ? std::min(latents, settings.auxk_k) : 0;
  chunk_rows_ = by_batch ? std::max<int64_t>(max_tokens, 1) : topk_encoder_rows(settings.encoder_chunk, max_tokens);
  pre_ = Tensor::empty(Shape{chunk_rows_, d_sae}, activation_dtype(dtype), device);  // written before read
  x_hat_ = Tensor::zeros(Shape{max_tokens, d_out}, dtype, device);
  grad_x_hat_ = Tensor::zeros(Shape{2 * max_tokens, d_out}, dtype, device);
  scratch_rows_ = Tensor::zeros(Shape{max_tokens, d_out}, dtype, device);
  col_mean_ = Tensor::zeros(Shape{d_out}, dtype, device);
  zero_d_ = Tensor::zeros(Shape{d_out}, dtype, device);
  for (Tensor* t : {&col_sum_, &col_count_, &all_sum_, &all_count_, &norms_, &dead_flags_})
    *t = Tensor::zeros(Shape{d_sae}, dtype, device);
  sums_ = Tensor::zeros(Shape{1}, dtype, device);
  // A shard keeps at most k (k_aux) of its latents per token; selected by batch, at most k N of the
  // whole batch, which may be more than k per token of its own when the replicas' tokens count too.
  const int64_t batch_tokens = std::max(shape.max_tokens, shape.all_tokens);
  const int64_t main_room = by_batch ? std::min(settings.k * batch_tokens, max_tokens * d_sae)
                                     : max_tokens * std::min(settings.k, d_sae);
  const int64_t capacity = main_room + max_tokens * std::min(k_aux_, d_sae);
  // Entry positions are int32 (the dense pre-activations [N, F] are indexed in int64: 4096 tokens
  // x 2^20 latents is fine).
  if (capacity >= (int64_t(1) << 31) || d_sae >= (int64_t(1) << 31))
    throw UsageError(cat("--architecture ", unit, ": ", max_tokens, " tokens x ", std::min(settings.k, d_sae) + k_aux_,
                         " kept latents do not fit int32 entry indices; use smaller batches"));
  lists_.col_ptr = zero_indices(d_sae + 1, device);
  lists_.row_ptr = zero_indices(2 * max_tokens + 1, device);
  lists_.rows = zero_indices(capacity, device);
  lists_.cols = zero_indices(capacity, device);
  lists_.vals = Tensor::zeros(Shape{capacity}, dtype, device);
  lists_.row_vals = Tensor::zeros(Shape{capacity}, dtype, device);
  dpre_ = Tensor::zeros(Shape{capacity}, dtype, device);
  if (auxk) {
    clock_ = Tensor::zeros(Shape{d_sae}, DType::F64, device);
    clock_before_ = Tensor::zeros(Shape{d_sae}, DType::F64, device);
  }
}

SparseFeatures TopKFamilyStep::lists(int64_t row0, int64_t rows) const {
  SparseFeatures s = lists_;
  s.row_ptr = lists_.row_ptr.slice_rows(row0, row0 + rows + 1);
  return s;
}

Tensor TopKFamilyStep::pre_activations(int64_t n) {
  const DType want = activation_dtype(x_hat_.dtype());
  if (pre_.dtype() != want) {
    pre_ = Tensor();  // the old buffer goes first
    pre_ = Tensor::empty(Shape{chunk_rows_, d_sae_}, want, x_hat_.device());
  }
  return pre_.slice_rows(0, n);
}

Tensor TopKFamilyStep::encode_rows(const Tensor& x, const Tensor& W_enc, int64_t row0, int64_t rows) {
  Tensor pre = pre_activations(rows);
  matmul_(pre, rows == x.size(0) ? x : x.slice_rows(row0, row0 + rows), false, W_enc, false);
  return pre;
}

void TopKFamilyStep::decode(Tensor& x_hat, const SparseFeatures& entries, const SaeParams& params) {
  if (!spans(collectives_, Group::Shards)) {
    sparse_decode_(x_hat, entries, params.W_dec, params.b_dec);
    return;
  }
  sparse_decode_(x_hat, entries, params.W_dec, zero_d_);
  collectives_->sum(Group::Shards, x_hat);
  add_(x_hat, params.b_dec);
}

StepSums TopKFamilyStep::forward(const SaeParams& params, const Tensor& x, const Tensor& target, double lambda,
                                 bool train) {
  Collectives* c = collectives_;
  const bool sharded = spans(c, Group::Shards), replicated = spans(c, Group::Replicas);
  const int64_t n = x.size(0);
  tokens_ = n;
  all_tokens_ = sum_over(c, Group::Replicas, n);
  aux_ = 0;
  clock_moved_ = false;
  Tensor x_hat = x_hat_.slice_rows(0, n), r = grad_x_hat_.slice_rows(0, n);
  reduce_axis_(ReduceOp::norm2, norms_, params.W_dec, 1);
  // The kept latents: rows 0 .. N-1 of the lists, chunk by chunk (one chunk unless the batch's P
  // would not fit: topk_encoder_rows); then by feature (which also counts them).
  SparseFeatures main = lists(0, n);
  const bool one_chunk = n <= chunk_rows_;
  // At --precision bf16 each GEMM would round W_enc into a bf16 copy of its own: the chunks share one
  // (the same rounding: the product is the same).
  const Tensor W_enc = !one_chunk && matmul_precision() == Precision::BF16 && params.W_enc.dtype() == DType::F32
                           ? params.W_enc.to(DType::BF16)
                           : params.W_enc;
  for (int64_t row0 = 0; row0 < n || row0 == 0; row0 += chunk_rows_) {
    const int64_t rows = std::min(chunk_rows_, n - row0);
    select(main, encode_rows(x, W_enc, row0, rows), params.b_enc, row0);
  }
  finish_selection(main, n);
  main_entries_ = all_entries_ = read_index(lists_.row_ptr, n);
  sparse_by_feature_(main, col_sum_, col_count_);
  decode(x_hat, main, params);
  binary_(BinaryOp::sub, r, x_hat, target);
  reduce_all_(ReduceOp::sum_squares, sums_, r);
  rec_ = sums_.item();
  aux_rows_ = false;
  auto sums = [&] {
    StepSums s;
    s.rec = rec_;
    s.aux = aux_;
    s.loss = rec_ + lambda * 0.0 + aux_;
    s.active = double(main_entries_);
    s.tokens = tokens_;
    s.sparse = true;
    complete_step_sums(c, s, lambda, 0.0);
    return s;
  };
  if (k_aux_ == 0) return sums();

  // AuxK: the dead mask counts this batch's firings (every replica's); the dead latents' k_aux
  // largest P per token (of every shard's dead latents).
  // On the step's device (latent_clock: dead_after_batch's rule); one count read back.
  Tensor counts = col_count_;
  if (replicated) {
    if (!fired_.defined()) fired_ = Tensor::zeros(col_count_.shape(), col_count_.dtype(), col_count_.device());
    copy_(fired_, col_count_);
    c->sum(Group::Replicas, fired_);
    counts = fired_;
  }
  copy_(clock_before_, clock_);
  clock_moved_ = train;
  latent_clock_(train ? clock_ : clock_before_, dead_flags_, counts, double(all_tokens_),
                double(settings_.dead_tokens));
  reduce_all_(ReduceOp::sum, sums_, dead_flags_);
  int64_t n_dead = static_cast<int64_t>(sums_.item());
  n_dead = sum_over(c, Group::Shards, n_dead);
  if (n_dead == 0 || all_tokens_ == 0) return sums();
  SparseFeatures all = lists(0, 2 * n);
  const int64_t k_dead = std::min(k_aux_, n_dead);
  if (one_chunk) {  // pre_ still holds the batch's P
    topk_select_(all, pre_activations(n), params.b_enc, dead_flags_, k_dead, n);
  } else {  // each chunk's P again
    for (int64_t row0 = 0; row0 < n; row0 += chunk_rows_) {
      const int64_t rows = std::min(chunk_rows_, n - row0);
      topk_select_(all, encode_rows(x, W_enc, row0, rows), params.b_enc, dead_flags_, k_dead, n + row0);
    }
  }
  if (sharded) shard_topk_cut(*c, lists_, n, n, k_dead, first_latent_);
  all_entries_ = read_index(lists_.row_ptr, 2 * n);
  if (sum_over(c, Group::All, all_entries_ - main_entries_) == 0) return sums();
  // e_hat = a W_dec (no b_dec) in the rows below r; Z = sum (e - mean_t e)^2 = sum (r - mean_t r)^2.
  Tensor e_hat = grad_x_hat_.slice_rows(n, 2 * n), centred = scratch_rows_.slice_rows(0, n);
  SparseFeatures aux = lists(n, n);
  sparse_decode_(e_hat, aux, params.W_dec, zero_d_);
  sum_over(c, Group::Shards, e_hat);
  if (replicated) {  // the whole batch's column means
    reduce_axis_(ReduceOp::sum, col_mean_, r, 0);
    c->sum(Group::Replicas, col_mean_);
    affine_(col_mean_, col_mean_, 1.0 / double(all_tokens_), 0.0);
  } else {
    reduce_axis_(ReduceOp::mean, col_mean_, r, 0);
  }
  binary_(BinaryOp::sub, centred, r, col_mean_);
  reduce_all_(ReduceOp::sum_squares, sums_, centred);
  const double Z = sum_over(c, Group::Replicas, sums_.item());
  if (!(Z > 0)) return sums();  // the peers' nan_to_num: no term
  binary_(BinaryOp::add, e_hat, e_hat, r);  // e_hat - e, with e = -r
  reduce_all_(ReduceOp::sum_squares, sums_, e_hat);
  const double scale = settings_.auxk_coefficient * double(all_tokens_) / Z;
  aux_ = scale * sums_.item();
  affine_(e_hat, e_hat, 2.0 * scale, 0.0);  // dL/de_hat
  sparse_by_feature_(all, all_sum_, all_count_);  // both blocks of rows, for the backward
  aux_rows_ = true;
  return sums();
}

std::vector<std::string> TopKFamilyStep::backward(const SaeParams& params, const Tensor& x, double, SaeParams& grads,
                                                  const FusedAdam* fused) {
  const int64_t n = tokens_;
  Tensor dx = grad_x_hat_.slice_rows(0, n);
  affine_(dx, dx, 2.0, 0.0);
  reduce_axis_(ReduceOp::sum, grads.b_dec, dx, 0);
  // With AuxK rows the lists, the output gradients and the inputs are two stacked blocks of N rows.
  const int64_t rows = aux_rows_ ? 2 * n : n;
  Tensor inputs = x;
  if (aux_rows_) {
    if (!x_stacked_.defined()) x_stacked_ = Tensor::zeros(Shape{2 * max_tokens_, d_in_}, x.dtype(), x.device());
    Tensor top = x_stacked_.slice_rows(0, n), bottom = x_stacked_.slice_rows(n, 2 * n);
    copy_(top, x);
    copy_(bottom, x);
    inputs = x_stacked_.slice_rows(0, 2 * n);
  }
  const SparseFeatures by_feature = lists(0, rows);
  const SaeAdamState* adam = fused ? fused->adam : nullptr;
  ParamUpdate W_dec = param_update(params.W_dec, grads.W_dec, adam ? adam->m.W_dec : Tensor(),
                                   adam ? adam->v.W_dec : Tensor(), fused);
  ParamUpdate W_enc = param_update(params.W_enc, grads.W_enc, adam ? adam->m.W_enc : Tensor(),
                                   adam ? adam->v.W_enc : Tensor(), fused);
  ParamUpdate b_enc = param_update(params.b_enc, grads.b_enc, adam ? adam->m.b_enc : Tensor(),
                                   adam ? adam->v.b_enc : Tensor(), fused);
  sparse_decoder_backward_(dpre_, W_dec, grad_x_hat_.slice_rows(0, rows), by_feature, norms_,
                           aux_rows_ ? all_sum_ : col_sum_, 0.0, settings_.unit_norm_decoder);
  sparse_encoder_backward_(W_enc, b_enc, inputs, by_feature, dpre_);
  // Adam fused in renormalises a unit-norm decoder's rows itself; otherwise after the update.
  normalize_after_update_ = settings_.unit_norm_decoder && !fused;
  if (fused) return {"W_enc", "b_enc", "W_dec"};
  return {};
}

void TopKFamilyStep::undo_forward() {
  if (clock_moved_) copy_(clock_, clock_before_);
  clock_moved_ = false;
}

std::optional<std::vector<int64_t>> TopKFamilyStep::dead_clock() const {
  if (!clock_.defined()) return std::nullopt;
  const std::vector<double> c = clock_.to_vector();
  return std::vector<int64_t>(c.begin(), c.end());
}

void TopKFamilyStep::set_dead_clock(const std::vector<int64_t>& clock) {
  if (!clock_.defined()) return;
  if (int64_t(clock.size()) != d_sae_)
    throw Error(cat("set_dead_clock: ", clock.size(), " clocks for ", d_sae_, " latents"));
  copy_(clock_, Tensor::from_vector(std::vector<double>(clock.begin(), clock.end()), Shape{d_sae_}, DType::F64)
                    .to(clock_.device()));
}

std::vector<uint8_t> TopKFamilyStep::dead_mask() const {
  const std::vector<double> d = dead_flags_.to_vector();
  return std::vector<uint8_t>(d.begin(), d.end());
}

void TopKFamilyStep::after_update(SaeParams& params) {
  if (normalize_after_update_) decoder_normalize_(params.W_dec);
}

StepFeatures TopKFamilyStep::step_features() const {
  StepFeatures out;
  out.tokens = tokens_;
  out.sparse = true;
  out.lists = lists_;  // by feature: rows >= tokens_ are AuxK's when aux_rows_
  return out;
}

Tensor dense_from_lists(const SparseFeatures& s, int64_t row0, int64_t rows, int64_t features, const Tensor& like) {
  // Scattered where the lists are, in their values' dtype (no copy of [N, F] between host and GPU).
  Tensor out = Tensor::zeros(Shape{rows, features}, s.row_vals.dtype(), s.row_vals.device());
  sparse_scatter_(out, s, row0);
  return out.to(like.device()).to(like.dtype());
}

Tensor TopKFamilyStep::features() const { return dense_from_lists(lists_, 0, tokens_, d_sae_, x_hat_); }

Tensor TopKFamilyStep::aux_activations() const {
  if (all_entries_ == main_entries_) return Tensor::zeros(Shape{tokens_, d_sae_}, x_hat_.dtype(), x_hat_.device());
  return dense_from_lists(lists_, tokens_, tokens_, d_sae_, x_hat_);
}

// ---------------------------------------------------------------- selection by batch

double batch_threshold(const SaeParams& p) {
  return p.settings.has("threshold") ? p.settings.at("threshold").as_number() : 0.0;
}

BatchTopKStep::BatchTopKStep(const TopKSettings& settings, double rate, const StepShape& shape, DType dtype,
                             Device device, const std::string& unit)
    : TopKFamilyStep(settings, shape, dtype, device, unit, /*by_batch=*/true), rate_(rate) {}

void BatchTopKStep::select(SparseFeatures& main, const Tensor& pre, const Tensor& b_enc, int64_t) {
  if (collectives_ != nullptr && collectives_->ranks() > 1)
    distributed_batchtopk_select(*collectives_, main, pre, b_enc, settings_.k * all_tokens_, all_tokens_);
  else
    batchtopk_select_(main, pre, b_enc, settings_.k * pre.size(0));
}

StepSums BatchTopKStep::forward(const SaeParams& params, const Tensor& x, const Tensor& target, double lambda,
                                bool train) {
  const StepSums sums = TopKFamilyStep::forward(params, x, target, lambda, train);
  if (main_entries_ > 0) {
    reduce_all_(ReduceOp::min, sums_, lists_.row_vals.slice_rows(0, main_entries_));
    min_positive_ = sums_.item();
  }
  selected_any_ = sums.active > 0;  // sums.active counts every rank's entries
  if (selected_any_ && collectives_ != nullptr && collectives_->ranks() > 1)
    min_positive_ = collectives_->min(Group::All, main_entries_ > 0 ? min_positive_ : HUGE_VAL);
  return sums;
}

// The inference threshold, from this step's f (the parameters before the update).
void BatchTopKStep::after_update(SaeParams& params) {
  TopKFamilyStep::after_update(params);
  if (!selected_any_) return;
  const double theta = batch_threshold(params);
  params.settings["threshold"] = theta > 0 ? (1.0 - rate_) * theta + rate_ * min_positive_ : min_positive_;
}

std::vector<ArchOption> BatchThresholdUnit::option_rows() const {
  std::vector<ArchOption> rows = topk_family_rows();
  rows.push_back({"batchtopk-threshold-lr", "batchtopk_threshold_lr",
                  "rate of the inference threshold's moving average of the smallest kept activation",
                  ArchValueType::Number, "0.01"});
  return rows;
}

std::vector<std::string> BatchThresholdUnit::reads() const {
  std::vector<std::string> names = topk_family_reads();
  names.push_back("batchtopk-threshold-lr");
  return names;
}

void BatchThresholdUnit::validate(const ArchSettings& s, int64_t d_sae) const {
  validate_topk_family(s, d_sae, name());
  const double rate = s.number("batchtopk-threshold-lr");
  require(rate > 0 && rate <= 1, cat("--batchtopk-threshold-lr must be in (0, 1], got ", rate));
}

void BatchThresholdUnit::init_own(SaeParams& p, const ArchSettings& s) const {
  p.settings["k"] = s.integer("k");
  p.settings["threshold"] = 0.0;
}

Tensor BatchThresholdUnit::encode(const SaeParams& p, const Tensor& x) const {
  check(p);
  const Tensor P = add(matmul(x, p.W_enc), p.b_enc);
  return mul(relu(P), gt(P, Tensor::full(Shape{1}, batch_threshold(p), P.dtype(), P.device())));
}

std::vector<std::pair<std::string, Tensor>> BatchThresholdUnit::saelens_weights(const SaeParams& p) const {
  std::vector<std::pair<std::string, Tensor>> out = ArchUnit::saelens_weights(p);
  out.push_back({"threshold", Tensor::full(Shape{p.d_sae()}, batch_threshold(p), DType::F32)});
  return out;
}

void BatchThresholdUnit::set_cfg_keys(const SaeParams& p, Json&, Json& ours) const {
  ours["k"] = p.settings.at("k");
  ours["batchtopk_threshold"] = batch_threshold(p);
}

void BatchThresholdUnit::check_cfg(const Json& cfg) const {
  const Json& ours = cfg.at("sae_cpp");
  if (ours.has("k")) ours.at("k").as_int();
  if (ours.has("batchtopk_threshold")) ours.at("batchtopk_threshold").as_number();
}

// One threshold for every latent (in full precision in sae_cpp).
void BatchThresholdUnit::import_rest(const NamedTensorFile& weights, const Json& cfg, const std::string& where,
                                     SaeParams& p) const {
  if (!weights.has("threshold")) throw DataError(cat(where, ": missing tensor threshold"));
  const Tensor threshold = weights.read_f32("threshold");
  if (threshold.shape() != Shape{p.d_sae()})
    throw DataError(cat(where, ": threshold should be [", p.d_sae(), "], got ", threshold.describe()));
  const std::vector<double> theta = threshold.to_vector();
  for (double v : theta)
    if (v != theta[0]) throw DataError(cat(where, ": a ", name(), " SAE has one threshold for every latent"));
  const Json& ours = cfg.at("sae_cpp");
  p.settings["threshold"] = ours.has("batchtopk_threshold") ? ours.at("batchtopk_threshold").as_number() : theta[0];
  p.settings["k"] = ours.has("k") ? ours.at("k").as_int() : int64_t(0);
}

void BatchThresholdUnit::save_state(const SaeParams& p, std::vector<std::pair<std::string, Tensor>>&, Json& info) const {
  info["batchtopk_threshold"] = batch_threshold(p);
}

void BatchThresholdUnit::load_state(const SafetensorsFile&, const Json& info, SaeParams& p) const {
  if (info.has("batchtopk_threshold")) p.settings["threshold"] = info.at("batchtopk_threshold").as_number();
}

// ---------------------------------------------------------------- the reference

ReferenceLoss topk_family_reference(const TopKSettings& o, const std::vector<uint8_t>& kept, const ArchVariables& p,
                                    const Tensor& x, const Tensor& target, double lambda,
                                    const std::vector<uint8_t>* dead, const ArchFrozen* frozen) {
  const Variable X = p.encoder_input(x);
  const int64_t n = x.size(0), features = p.W_enc.shape()[1];
  ReferenceLoss out;
  const Variable P = ag::matmul(X, p.W_enc) + p.b_enc;
  out.pre = P.data();
  const Variable f = ag::relu(P) * Variable(flags_tensor(kept, P.shape(), x));
  finish_reference(out, p, x, target, f, lambda);
  // AuxK: the k_aux largest P of each token among the dead latents predict the (constant) residual.
  if (o.auxk_coefficient > 0 && dead) {
    for (uint8_t d : *dead) out.n_dead += d;
    if (out.n_dead > 0) {
      const int64_t k_aux = std::min(o.auxk_k, out.n_dead);
      const Tensor selected =
          flags_tensor(top_k_per_row(P.data().to_vector(), n, features, k_aux, dead), P.shape(), x);
      const Variable a = ag::relu(P) * Variable(selected);
      out.aux_acts = a.data();
      const Tensor e = frozen && frozen->residual.defined() ? frozen->residual : sub(target, out.x_hat);
      const double Z = sum(square(sub(e, mean(e, 0, true)))).item();
      if (Z > 0) {
        const Variable e_hat = ag::matmul(a, p.W_dec);
        out.aux = ag::sum(ag::square(e_hat - Variable(e))) * (o.auxk_coefficient * double(n) / Z);
        out.total = out.rec + out.sparsity * lambda + out.aux;
      }
    }
  }
  return out;
}

}  // namespace sae
